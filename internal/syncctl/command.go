package syncctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
)

// PluginName is the executable name under which kubectl runs the CLI as "kubectl sync".
const PluginName = "kubectl-sync"

// defaultCallTimeout bounds each request (but not a watch) when --request-timeout is not given,
// so that an unreachable cluster ends in an error instead of a hang.
const defaultCallTimeout = 30 * time.Second

// Run runs the command line args (without the program name) of the program named program
// (os.Args[0]) and returns the exit code: 0 on success, 1 when the command failed (no cluster,
// forbidden, not found), 2 for a usage error (bad flags or arguments). Results go to stdout;
// an error is one line on stderr. A program named kubectl-sync shows its usage as "kubectl sync".
// A watch (-w) ends without error when ctx ends; a request cut short by the end of ctx exits
// with 130 (as for SIGINT) and no message. Run has no process-wide side effects (see Main).
func Run(ctx context.Context, program string, args []string, stdout, stderr io.Writer) int {
	return newCLI(program, stdout, stderr, clock.RealClock{}).run(ctx, args)
}

// cli is one invocation of the command.
type cli struct {
	display string // the command as the user types it: "syncctl" or "kubectl sync"
	out     io.Writer
	errOut  io.Writer
	clock   clock.Clock
	// kubeconfig and overrides are kubectl's connection flags (--kubeconfig, --context, -n,
	// --server, --request-timeout…), bound by client-go's clientcmd as kubectl binds them.
	kubeconfig string
	overrides  clientcmd.ConfigOverrides
	host       string // the API server's URL, once the configuration is loaded
}

func newCLI(program string, stdout, stderr io.Writer, clk clock.Clock) *cli {
	return &cli{display: displayName(program), out: stdout, errOut: stderr, clock: clk}
}

// displayName is how the user invokes program: "kubectl sync" for the plugin, the base name of
// the executable otherwise.
func displayName(program string) string {
	base := strings.TrimSuffix(filepath.Base(program), ".exe")
	switch base {
	case PluginName:
		return "kubectl sync"
	case "", ".", string(filepath.Separator):
		return "syncctl"
	}
	return base
}

// usageError marks an error in the command line: exit code 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// Main is the whole program: it silences client-go's logging (klog; process-wide, so it is done
// here and not in Run), runs the command line of the process until SIGINT or SIGTERM, and exits
// with Run's exit code.
func Main() {
	// client-go logs through klog (retries, watch errors): none of that belongs on a CLI's
	// terminal. Errors are reported, once and in one line, by the commands.
	klog.SetLogger(logr.Discard())
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := Run(ctx, os.Args[0], os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func (c *cli) run(ctx context.Context, args []string) int {
	root := c.rootCommand()
	root.SetArgs(args)
	root.SetOut(c.out)
	root.SetErr(c.errOut)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return 0
	}
	msg := oneLine(err.Error())
	var ue usageError
	if errors.As(err, &ue) {
		if cmd == nil {
			cmd = root
		}
		fmt.Fprintf(c.errOut, "error: %s (see '%s --help')\n", msg, cmd.CommandPath())
		return 2
	}
	if ctx.Err() != nil {
		// Interrupted (Ctrl-C) during a request: the request's error would only say so
		// confusingly. Exit as a shell does for SIGINT.
		return 130
	}
	fmt.Fprintf(c.errOut, "error: %s\n", msg)
	return 1
}

func (c *cli) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "syncctl",
		Short: "Show who holds the locks and leads the elections of Metaparticle Sync",
		Long: fmt.Sprintf(`Show who holds the locks and leads the elections of Metaparticle Sync: the holder's
Pod and session, since when, with which fencing token, and when the hold expires.

It reads the coordination.k8s.io/v1 Leases labelled
  %s
with the kubeconfig and context kubectl would use (--kubeconfig, $KUBECONFIG, ~/.kube/config;
--context, -n). It needs get, list and watch on leases, get on pods for describe, and list
on pods and get on pods/proxy for sidecars, which asks each side-car of the namespace for its
health: whether it serves, and the API server trouble it has seen. check tests the install and
a namespace (see its --help for what it reads).

To use it as the kubectl plugin "kubectl sync", build it as %s into a directory on
your PATH:
  go build -o ~/.local/bin/kubectl-sync ./cmd/syncctl`, selectorAll(), PluginName),
		Example: c.examples(`
  # Locks in the current namespace: who holds them, since when, with which token
  %[1]s locks

  # Leaders of every election in every namespace, updated live
  %[1]s elections -A --watch

  # One lock in detail, with the Pod that holds it
  %[1]s describe orders/eu -n shop

  # Each side-car's health, and the API server trouble it has seen
  %[1]s sidecars -n shop

  # Does the install work, and can the Pods of namespace shop use it?
  %[1]s check -n shop

  # For scripts: the token of every held lock
  %[1]s locks -o json | jq -r '.items[] | select(.held) | .name + " " + .token'`),
		SilenceErrors: true,
		SilenceUsage:  true,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return nil
			}
			if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
				return usagef("unknown command %q (did you mean %q?)", args[0], s[0])
			}
			return usagef("unknown command %q", args[0])
		},
		RunE: func(*cobra.Command, []string) error {
			return usagef("missing command: locks, elections, describe, sidecars, check or version")
		},
	}
	root.SuggestionsMinimumDistance = 2
	root.Annotations = map[string]string{cobra.CommandDisplayNameAnnotation: c.display}
	root.CompletionOptions.HiddenDefaultCmd = true
	// No SetUsageTemplate or SetHelpTemplate: a custom template makes cobra render usage with
	// text/template, whose method calls by name keep every exported method of every linked
	// type in the binary (47 MB instead of 26 MB; TestSyncctlLinksNoSidecar keeps it out).
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })

	root.PersistentFlags().StringVar(&c.kubeconfig, clientcmd.RecommendedConfigPathFlag, "", "Path to the kubeconfig file to use for CLI requests.")
	clientcmd.BindOverrideFlags(&c.overrides, root.PersistentFlags(), clientcmd.RecommendedConfigOverrideFlags(""))

	root.AddCommand(c.listCommand(kindLock), c.listCommand(kindElection), c.describeCommand(), c.sidecarsCommand(), c.checkCommand(), c.versionCommand())
	return root
}

// examples fills the command's display name into an Example text.
func (c *cli) examples(text string) string {
	return strings.TrimPrefix(fmt.Sprintf(text, c.display), "\n")
}

// noArgs refuses positional arguments, as a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("%q takes no arguments, got %q", cmd.Name(), args[0])
	}
	return nil
}

// loader loads the kubeconfig as kubectl does: --kubeconfig, else $KUBECONFIG, else
// ~/.kube/config, with the connection flags over it.
func (c *cli) loader() clientcmd.ClientConfig {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = c.kubeconfig
	return clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &c.overrides)
}

// client loads the kubeconfig the way kubectl does and returns a clientset.
func (c *cli) client() (kubernetes.Interface, error) {
	cfg, err := c.restConfig()
	if err != nil {
		return nil, err
	}
	return c.clientFor(cfg)
}

// restConfig loads the kubeconfig the way kubectl does, with the connection flags over it; API
// warnings are not shown.
func (c *cli) restConfig() (*rest.Config, error) {
	// Like kubectl, client-go falls back to http://localhost:8080 when nothing is configured;
	// say what is missing instead of failing to connect there.
	loader := c.loader()
	raw, err := loader.RawConfig()
	if err == nil && len(raw.Clusters) == 0 && c.overrides.ClusterInfo.Server == "" && os.Getenv("KUBERNETES_SERVICE_HOST") == "" {
		return nil, errNoConfig
	}
	cfg, err := loader.ClientConfig()
	if err != nil {
		return nil, explainConfig(err)
	}
	if c.overrides.AuthInfo.Token != "" {
		cfg.BearerTokenFile = "" // --token wins over the kubeconfig's tokenFile, as in kubectl
	}
	cfg.WarningHandler = rest.NoWarnings{}
	cfg.UserAgent = "metaparticle-syncctl"
	c.host = cfg.Host
	return cfg, nil
}

// clientFor returns a clientset for cfg (from restConfig).
func (c *cli) clientFor(cfg *rest.Config) (kubernetes.Interface, error) {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, explainConfig(err)
	}
	return cs, nil
}

// namespace is the namespace of -n, or else the current context's, or else "default".
func (c *cli) namespace() (string, error) {
	ns, _, err := c.loader().Namespace()
	if err != nil {
		return "", explainConfig(err)
	}
	return ns, nil
}

// callContext bounds one request by defaultCallTimeout, unless --request-timeout bounds it.
func (c *cli) callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if c.overrides.Timeout != "" && c.overrides.Timeout != "0" {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, defaultCallTimeout)
}

// oneLine joins the lines of a message, so that every error is one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
