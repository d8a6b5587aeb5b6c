package syncctl

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/spf13/cobra"

	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/wire"
)

// The sidecars command shows what only the side-cars know: whether each one serves, and the API
// server trouble it has seen (an RBAC change, throttling, a cut connection), which never shows in
// its Pod's readiness. It reads each side-car's /readyz?verbose through the API server's proxy to
// the Pod (the pods/proxy subresource), so it needs no route to the Pods' network.

// SidecarHealth is one side-car's health as it reports it: the JSON and YAML form, and a row of
// the table.
type SidecarHealth struct {
	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
	// Serving is "ok", or why the side-car does not serve (not synced yet, shutting down).
	Serving string `json:"serving,omitempty"`
	// APIServer is "ok", or the API server trouble the side-car has seen and its sessions were
	// told of (their degraded event).
	APIServer string `json:"apiServer,omitempty"`
	// Error says why the side-car's health could not be read; the other fields are then empty.
	Error string `json:"error,omitempty"`
}

// SidecarList is the JSON and YAML form of the sidecars command's answer.
type SidecarList struct {
	Items []SidecarHealth `json:"items"`
}

type sidecarsOptions struct {
	allNamespaces bool
	format        string
}

func (c *cli) sidecarsCommand() *cobra.Command {
	var o sidecarsOptions
	cmd := &cobra.Command{
		Use:     "sidecars",
		Aliases: []string{"health"},
		Short:   "Show each side-car's health: serving, and the API server trouble it has seen",
		Long: fmt.Sprintf(`Show the health of each side-car of the namespace (each running Pod with a container
named %s) as the side-car reports it: SERVING says whether it serves its Pod's
applications, API SERVER the trouble it has seen with the API server (RBAC forbids its writes,
the API server does not answer), of which its sessions were told. Neither is part of the Pod's
readiness: a lock helper never takes its application out of its Services.

It reads each side-car's /readyz?verbose through the API server's proxy to the Pod, so it needs
list on pods and get on pods/proxy.`, contract.SidecarContainer),
		Example: c.examples(`
  %[1]s sidecars -n shop
  %[1]s sidecars -A -o json | jq -r '.items[] | select(.apiServer != "ok") | .pod'`),
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return c.sidecars(cmd.Context(), o) },
	}
	f := cmd.Flags()
	f.BoolVarP(&o.allNamespaces, "all-namespaces", "A", false, "Side-cars of every namespace")
	f.StringVarP(&o.format, "output", "o", "", "Output format: json or yaml (default: a table)")
	return cmd
}

func (c *cli) sidecars(ctx context.Context, o sidecarsOptions) error {
	if err := documentFormat(o.format); err != nil {
		return err
	}
	cs, err := c.client()
	if err != nil {
		return err
	}
	ns := ""
	if !o.allNamespaces {
		if ns, err = c.namespace(); err != nil {
			return err
		}
	}
	cctx, cancel := c.callContext(ctx)
	pods, err := cs.CoreV1().Pods(ns).List(cctx, metav1.ListOptions{FieldSelector: "status.phase=Running"})
	cancel()
	if err != nil {
		return c.explainNeeding(err, sidecarsNeeds)
	}
	// A few side-cars at a time, so that unreachable Pods cost about their number over
	// sidecarsAtOnce timeouts, not one each.
	list := SidecarList{Items: []SidecarHealth{}}
	var targets []*corev1.Pod
	var ports []int32
	for i := range pods.Items {
		if port, ok := healthPort(&pods.Items[i]); ok {
			targets, ports = append(targets, &pods.Items[i]), append(ports, port)
		}
	}
	list.Items = make([]SidecarHealth, len(targets))
	errs := make([]error, len(targets))
	sem := make(chan struct{}, sidecarsAtOnce)
	var wg sync.WaitGroup
	for i, p := range targets {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			list.Items[i], errs[i] = c.sidecarHealth(ctx, cs, p, ports[i])
		})
	}
	wg.Wait()
	var forbidden error
	for _, err := range errs {
		if apierrors.IsForbidden(err) {
			forbidden = err
		}
	}
	if forbidden != nil && !slices.ContainsFunc(list.Items, func(h SidecarHealth) bool { return h.Error == "" }) {
		// Not one side-car could be asked: say why, as the other commands do, not in every row.
		return c.explainNeeding(forbidden, sidecarsNeeds)
	}
	slices.SortFunc(list.Items, func(a, b SidecarHealth) int {
		return strings.Compare(a.Namespace+"/"+a.Pod, b.Namespace+"/"+b.Pod)
	})
	switch o.format {
	case formatJSON:
		return writeJSON(c.out, list, false)
	case formatYAML:
		return writeYAML(c.out, list, false)
	}
	if len(list.Items) == 0 {
		_, err := fmt.Fprintln(c.errOut, "No resources found.")
		return err
	}
	return printSidecars(c.out, list.Items, o.allNamespaces)
}

// healthPort returns the port of p's side-car health endpoint, if p runs a side-car: its
// container port named contract.HealthPortName, or else the default one.
func healthPort(p *corev1.Pod) (int32, bool) {
	for _, ct := range append(slices.Clone(p.Spec.InitContainers), p.Spec.Containers...) {
		if ct.Name != contract.SidecarContainer {
			continue
		}
		for _, port := range ct.Ports {
			if port.Name == contract.HealthPortName {
				return port.ContainerPort, true
			}
		}
		return contract.HealthPort(wire.DefaultPort), true
	}
	return 0, false
}

// sidecarsAtOnce bounds the side-cars the sidecars command asks at once.
const sidecarsAtOnce = 8

// sidecarsNeeds are the permissions of the sidecars command.
const sidecarsNeeds = "list on pods and get on pods/proxy"

// sidecarHealth asks the side-car of p for /readyz?verbose through the API server, and returns
// the error of the request too when its health could not be read.
func (c *cli) sidecarHealth(ctx context.Context, cs kubernetes.Interface, p *corev1.Pod, port int32) (SidecarHealth, error) {
	h := SidecarHealth{Namespace: p.Namespace, Pod: p.Name}
	cctx, cancel := c.callContext(ctx)
	defer cancel()
	body, err := cs.CoreV1().Pods(p.Namespace).ProxyGet("http", p.Name, strconv.Itoa(int(port)), "readyz", map[string]string{"verbose": ""}).DoRaw(cctx)
	h.Serving, h.APIServer = parseReadyz(string(body))
	if h.Serving == "" {
		// The API server's own answer (forbidden, a refused connection) is a Status, which the
		// client does not decode for a proxied request.
		if st := (metav1.Status{}); json.Unmarshal(body, &st) == nil && st.Kind == "Status" && st.Message != "" {
			err = apierrors.FromObject(&st)
		}
		msg := "no answer"
		if err != nil {
			msg = oneLine(apiMessage(err))
		}
		h.Error = "cannot read its health port " + strconv.Itoa(int(port)) + " through the API server: " + msg
		h.APIServer = ""
		return h, err
	}
	return h, nil
}

// parseReadyz reads the checks of the side-car's /readyz?verbose answer (elector/server's health
// handler): "[+]name ok" or "[-]name: reason", one a line. A side-car older than ?verbose
// answers "ok" or "not ready: reason".
func parseReadyz(body string) (serving, api string) {
	switch b := strings.TrimSpace(body); {
	case b == "ok":
		serving = "ok"
	case strings.HasPrefix(b, "not ready: "):
		serving = strings.TrimPrefix(b, "not ready: ")
	}
	for line := range strings.SplitSeq(body, "\n") {
		var ok bool
		var rest string
		switch {
		case strings.HasPrefix(line, "[+]"):
			ok, rest = true, line[3:]
		case strings.HasPrefix(line, "[-]"):
			rest = line[3:]
		default:
			continue
		}
		name, reason, _ := strings.Cut(rest, ": ")
		if ok {
			name, reason = strings.TrimSuffix(rest, " ok"), "ok"
		}
		switch name {
		case "serving":
			serving = reason
		case "api-server (informational)":
			api = reason
		}
	}
	if serving != "" && api == "" {
		api = "unknown (the side-car is older than this command)"
	}
	return serving, api
}

// printSidecars writes the side-cars as a table: POD, SERVING, API SERVER, and ERROR when one
// could not be read. What a side-car says is escaped like every text that comes from a Pod.
func printSidecars(w io.Writer, items []SidecarHealth, allNamespaces bool) error {
	tw := tabwriter.NewWriter(w, 6, 4, 3, ' ', 0)
	header := []string{"POD", "SERVING", "API SERVER"}
	failed := slices.ContainsFunc(items, func(h SidecarHealth) bool { return h.Error != "" })
	if failed {
		header = append(header, "ERROR")
	}
	if allNamespaces {
		header = append([]string{"NAMESPACE"}, header...)
	}
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, h := range items {
		row := []string{h.Pod, printable(h.Serving), printable(h.APIServer)}
		if h.Error != "" {
			row = []string{h.Pod, "unknown", "unknown"}
		}
		if failed {
			row = append(row, printable(h.Error))
		}
		if allNamespaces {
			row = append([]string{h.Namespace}, row...)
		}
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	return tw.Flush()
}
