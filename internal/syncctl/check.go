package syncctl

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/metaparticle-io/sync/internal/contract"
)

// The check command says whether the install works and whether a namespace can use it, in the
// spirit of `linkerd check`: each check prints one line, √ when it passed, ‼ for a warning (it
// works, but something should be done, or could not be checked) and × when it failed, with what
// to do under it. The checks, in order:
//
//   - injector (check_injector.go): the MutatingWebhookConfiguration's webhooks exist; each
//     caBundle holds valid CA certificates; the injector's serving certificate is signed by the
//     caBundle for the name the API server calls; the injector's Deployment is ready; and, the
//     proof of all of these, a server-side dry-run Pod annotated metaparticle.io/sync: "true"
//     comes back from the API server with the side-car.
//   - namespace (check_namespace.go): each service account of the namespace's side-car Pods, and
//     those named, may use Leases as the side-car does, asked with SubjectAccessReviews; and the
//     Pods whose side-car differs from what the injector now injects.
//
// A check that cannot be made is a warning when the user's RBAC forbids it and a failure for any
// other error, and the other checks still run. It exits with 1 when a check failed, 0 otherwise
// (warnings included).

// Check statuses.
const (
	CheckPassed  = "passed"
	CheckWarning = "warning"
	CheckFailed  = "failed"
)

// CheckResult is one check: the JSON and YAML form, and a line of the text.
type CheckResult struct {
	// Section is "injector", "namespace NAME" (or "all namespaces") or "side-cars".
	Section string `json:"section"`
	Status  string `json:"status"`
	Message string `json:"message"`
	// Hint says what to do about a warning or a failure.
	Hint string `json:"hint,omitempty"`
}

// CheckReport is the JSON and YAML form of the check command's answer.
type CheckReport struct {
	Results  []CheckResult `json:"results"`
	Passed   int           `json:"passed"`
	Warnings int           `json:"warnings"`
	Failed   int           `json:"failed"`
}

func (r *CheckReport) add(section, status, message, hint string) {
	r.Results = append(r.Results, CheckResult{Section: section, Status: status, Message: message, Hint: hint})
	switch status {
	case CheckPassed:
		r.Passed++
	case CheckWarning:
		r.Warnings++
	default:
		r.Failed++
	}
}

type checkOptions struct {
	allNamespaces   bool
	serviceAccounts []string
	format          string
}

func (c *cli) checkCommand() *cobra.Command {
	var o checkOptions
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check the injector's install and whether a namespace's Pods can use it",
		Long: fmt.Sprintf(`Check that the injector works and that the namespace's Pods can use it. Each check prints
one line: √ passed, ‼ warning (it works, but something should be done, or it could not be
checked with your permissions: a check your RBAC forbids passes nothing), × failed (also when
the API server did not answer), with what to do under it. It exits with 1 when a check failed.

Injector: the MutatingWebhookConfiguration's webhooks (named *%s) exist; each
caBundle holds valid CA certificates; the injector's serving certificate (its Secret, or what
its URL serves) is signed by the caBundle for the name the API server calls; the injector's
Deployment is ready; and a server-side dry-run Pod annotated %s: "true" in the
namespace comes back with the side-car. Nothing is created: a dry run is never stored.

Namespace: the service accounts of its Pods that run a side-car, and those of --service-account
("default" when neither names one), may use Leases as the side-car does (%s),
asked with SubjectAccessReviews; and the Pods whose side-car differs from what the injector
now injects (their %s and %s annotations), with their owners to roll.

It needs list on mutatingwebhookconfigurations and clusterroles, get on services, secrets
(the serving certificate) and namespaces, list on deployments and pods, create on pods (the dry
run) and on subjectaccessreviews. A check that your permissions do not allow is a warning.`,
			contract.WebhookNameSuffix, contract.AnnotationInject, strings.Join(contract.SidecarLeaseVerbs, ", "),
			contract.AnnotationInjectorVersion, contract.AnnotationInjectedImage),
		Example: c.examples(`
  # Is the install healthy, and can the Pods of namespace shop use it?
  %[1]s check -n shop

  # The same for a service account that no Pod uses yet
  %[1]s check -n shop --service-account batch

  # Side-cars other than the injector's in every namespace (after an upgrade)
  %[1]s check -A -o json | jq -r '.results[] | select(.status != "passed") | .message'`),
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := documentFormat(o.format); err != nil {
				return err
			}
			return c.check(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&o.allNamespaces, "all-namespaces", "A", false, "Check the side-car Pods and their service accounts of every namespace (the dry run stays in the namespace of -n)")
	f.StringSliceVar(&o.serviceAccounts, "service-account", nil, "Also check these service accounts of the namespace (\"default\" when no side-car Pod names one either)")
	f.StringVarP(&o.format, "output", "o", "", "Output format: json or yaml (default: lines)")
	return cmd
}

// checker runs the checks of one invocation into its report.
type checker struct {
	cli    *cli
	cs     kubernetes.Interface
	ns     string
	opts   checkOptions
	report CheckReport
	// warnings collects the API warnings of the dry run (the injector's RBAC warning).
	warnings *warningRecorder
	// What the injector injects now, learnt by the injector checks: its release and side-car image.
	injectorVersion, sidecarImage string
}

func (c *cli) check(ctx context.Context, o checkOptions) error {
	cfg, err := c.restConfig()
	if err != nil {
		return err
	}
	warnings := &warningRecorder{}
	cfg.WarningHandler = warnings
	cs, err := c.clientFor(cfg)
	if err != nil {
		return err
	}
	ns, err := c.namespace()
	if err != nil {
		return err
	}
	k := &checker{cli: c, cs: cs, ns: ns, opts: o, warnings: warnings}
	if err := k.injector(ctx); err != nil {
		return err
	}
	if err := k.namespace(ctx); err != nil {
		return err
	}
	if err := printCheckReport(c.out, o.format, &k.report); err != nil {
		return err
	}
	if k.report.Failed > 0 {
		return fmt.Errorf("%d of %d checks failed", k.report.Failed, len(k.report.Results))
	}
	return nil
}

// printCheckReport writes r: a section header and a line per check for people, or JSON/YAML.
func printCheckReport(w io.Writer, format string, r *CheckReport) error {
	switch format {
	case formatJSON:
		return writeJSON(w, r, false)
	case formatYAML:
		return writeYAML(w, r, false)
	}
	var b strings.Builder
	section := ""
	for _, res := range r.Results {
		if res.Section != section {
			if section != "" {
				b.WriteString("\n")
			}
			section = res.Section
			fmt.Fprintf(&b, "%s\n%s\n", section, strings.Repeat("-", len(section)))
		}
		fmt.Fprintf(&b, "%s %s\n", checkMark(res.Status), res.Message)
		for _, line := range strings.Split(res.Hint, "\n") {
			if line != "" {
				fmt.Fprintf(&b, "    %s\n", line)
			}
		}
	}
	fmt.Fprintf(&b, "\nStatus: %d passed, %d %s, %d failed\n", r.Passed, r.Warnings, plural(r.Warnings, "warning", "warnings"), r.Failed)
	_, err := io.WriteString(w, b.String())
	return err
}

func checkMark(status string) string {
	switch status {
	case CheckPassed:
		return "√"
	case CheckWarning:
		return "‼"
	}
	return "×"
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// warningRecorder is a rest.WarningHandler that keeps the API server's warnings, in order.
// It is safe for concurrent use.
type warningRecorder struct {
	mu   sync.Mutex
	msgs []string
}

var _ rest.WarningHandler = (*warningRecorder)(nil)

func (w *warningRecorder) HandleWarningHeader(code int, _ string, msg string) {
	if code == 299 && msg != "" {
		w.mu.Lock()
		w.msgs = append(w.msgs, msg)
		w.mu.Unlock()
	}
}

// take returns the warnings recorded since the last take.
func (w *warningRecorder) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	m := w.msgs
	w.msgs = nil
	return m
}
