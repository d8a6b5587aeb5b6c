package elector

import (
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/metaparticle-io/sync/wire"
)

// Settings is everything the elector command reads from its flags and environment.
type Settings struct {
	Config
	// Kubeconfig is a kubeconfig file to use instead of the in-cluster configuration, to run
	// the side-car outside a cluster. Empty means in-cluster.
	Kubeconfig string
	// LogLevel is the log verbosity: 0 logs every state change, 1 adds lost races, 2 every
	// renewal.
	LogLevel int
	// KubeAPIQPS and KubeAPIBurst limit the side-car's requests to the API server (client-go's
	// token bucket). Defaults DefaultKubeAPIQPS and DefaultKubeAPIBurst.
	KubeAPIQPS   int
	KubeAPIBurst int
}

// Default API server rate limits: a held lock costs 12 writes a minute at default timings, so
// 50 requests a second serve about 250 held locks with room for grants and releases; raise them
// for side-cars that hold more.
const (
	DefaultKubeAPIQPS   = 50
	DefaultKubeAPIBurst = 100
	EnvKubeAPIQPS       = "METAPARTICLE_SYNC_KUBE_API_QPS"
	EnvKubeAPIBurst     = "METAPARTICLE_SYNC_KUBE_API_BURST"
)

// setting is one flag with its environment variable.
type setting struct {
	flag, env, arg, help string
	value                func(*Settings) flag.Value
}

func settingsTable() []setting {
	return []setting{
		{"pod-name", EnvPodName, "name", "Name of this Pod (downward API metadata.name). Lease holder identities are <pod-name>/<session>. Default: the host name, which is the Pod name unless spec.hostname is set.",
			func(s *Settings) flag.Value { return (*stringValue)(&s.PodName) }},
		{"namespace", EnvPodNamespace, "name", "Namespace of this Pod (downward API metadata.namespace); the Leases live there. Default: the service account's namespace file.",
			func(s *Settings) flag.Value { return (*stringValue)(&s.Namespace) }},
		{"pod-uid", EnvPodUID, "uid", "UID of this Pod (downward API metadata.uid). Optional; only logged.",
			func(s *Settings) flag.Value { return (*stringValue)(&s.PodUID) }},
		{"listen", wire.EnvAddress, "host:port", "Address of the lock API. Loopback only (127.0.0.1, ::1 or localhost): the API has no authentication. Default " + wire.DefaultAddress + ".",
			func(s *Settings) flag.Value { return (*stringValue)(&s.ListenAddress) }},
		{"health-listen", EnvHealthAddress, "host:port", "Address of /healthz, /readyz and /metrics. Default " + DefaultHealthAddress + ".",
			func(s *Settings) flag.Value { return (*stringValue)(&s.HealthAddress) }},
		{"lease-duration", EnvLeaseDuration, "duration", "How long others wait, from their last observation of a change, before taking over a Lease whose holder stopped renewing. Whole seconds. Default " + DefaultLeaseDuration.String() + ".",
			func(s *Settings) flag.Value { return (*durationValue)(&s.LeaseDuration) }},
		{"renew-deadline", EnvRenewDeadline, "duration", "A holder that cannot renew declares its hold lost this long after the start of its last successful write. Less than --lease-duration. Default " + DefaultRenewDeadline.String() + ".",
			func(s *Settings) flag.Value { return (*durationValue)(&s.RenewDeadline) }},
		{"renew-period", EnvRenewPeriod, "duration", "Interval between renewals of a held Lease. Less than --renew-deadline. Default " + DefaultRenewPeriod.String() + ".",
			func(s *Settings) flag.Value { return (*durationValue)(&s.RenewPeriod) }},
		{"retry-period", EnvRetryPeriod, "duration", "Pause after a failed write, and how long a resigned leader stays out of its election. At most --renew-period, at least 10ms. Default " + DefaultRetryPeriod.String() + ".",
			func(s *Settings) flag.Value { return (*durationValue)(&s.RetryPeriod) }},
		{"shutdown-timeout", EnvShutdownTimeout, "duration", "Bound on the orderly shutdown after SIGTERM (release every hold, finish requests). Keep it below the Pod's terminationGracePeriodSeconds. Default " + DefaultShutdownTimeout.String() + ".",
			func(s *Settings) flag.Value { return (*durationValue)(&s.ShutdownTimeout) }},
		{"kube-api-qps", EnvKubeAPIQPS, "n", "Requests per second the side-car may send to the API server (sustained). Default " + strconv.Itoa(DefaultKubeAPIQPS) + ".",
			func(s *Settings) flag.Value { return (*intValue)(&s.KubeAPIQPS) }},
		{"kube-api-burst", EnvKubeAPIBurst, "n", "Requests the side-car may send to the API server in a burst. Default " + strconv.Itoa(DefaultKubeAPIBurst) + ".",
			func(s *Settings) flag.Value { return (*intValue)(&s.KubeAPIBurst) }},
		{"kubeconfig", "KUBECONFIG", "file", "Kubeconfig file, to run outside a cluster. Default: the in-cluster service account.",
			func(s *Settings) flag.Value { return (*stringValue)(&s.Kubeconfig) }},
		{"v", EnvLogLevel, "level", "Log verbosity: 0 logs every state change, 1 adds lost races, 2 every renewal. Default 0.",
			func(s *Settings) flag.Value { return (*intValue)(&s.LogLevel) }},
	}
}

// ParseSettings reads the elector command's settings from args (without the program name) and
// from the environment through getenv. A flag on the command line wins over its environment
// variable, which wins over the default. With -h or --help it writes the usage to out and
// returns flag.ErrHelp. Values are parsed here; their consistency is checked by
// Config.Validate.
func ParseSettings(args []string, getenv func(string) string, out io.Writer) (Settings, error) {
	var s Settings
	fs := flag.NewFlagSet("elector", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	table := settingsTable()
	for _, st := range table {
		fs.Var(st.value(&s), st.flag, st.help)
	}
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			printUsage(out, table)
		}
		return s, err
	}
	if fs.NArg() > 0 {
		return s, fmt.Errorf("unexpected arguments %q; the elector takes flags only (see --help)", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for _, st := range table {
		if set[st.flag] {
			continue
		}
		if v := getenv(st.env); v != "" {
			if err := st.value(&s).Set(v); err != nil {
				return s, fmt.Errorf("environment variable %s=%q: %v", st.env, v, err)
			}
		}
	}
	if s.KubeAPIQPS < 0 || s.KubeAPIBurst < 0 {
		return s, fmt.Errorf("--kube-api-qps (%d) and --kube-api-burst (%d) must be positive; 0 means the default", s.KubeAPIQPS, s.KubeAPIBurst)
	}
	return s, nil
}

func printUsage(w io.Writer, table []setting) {
	fmt.Fprint(w, `Usage: elector [flags]

The Metaparticle Sync side-car. It serves named locks and leader elections to the containers
of its Pod over HTTP on loopback (docs/api.md), backed by coordination.k8s.io/v1 Leases in the
Pod's namespace (RBAC: deploy/rbac/sidecar-role.yaml). SIGTERM releases every hold and exits.

Every flag can also be set by the environment variable shown; the flag wins.

`)
	for _, st := range table {
		fmt.Fprintf(w, "  --%s %s\n      $%s\n", st.flag, st.arg, st.env)
		for _, line := range wrap(st.help, 90) {
			fmt.Fprintf(w, "      %s\n", line)
		}
	}
}

func wrap(s string, width int) []string {
	var lines []string
	var cur strings.Builder
	for _, word := range strings.Fields(s) {
		if cur.Len() > 0 && cur.Len()+1+len(word) > width {
			lines = append(lines, cur.String())
			cur.Reset()
		}
		if cur.Len() > 0 {
			cur.WriteByte(' ')
		}
		cur.WriteString(word)
	}
	if cur.Len() > 0 {
		lines = append(lines, cur.String())
	}
	return lines
}

// complete fills the Pod name and namespace from the Pod's environment when they were not
// given: the host name, and the service account's namespace file.
func (s *Settings) complete(readFile func(string) ([]byte, error), hostname func() (string, error)) {
	if s.Namespace == "" {
		if b, err := readFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace"); err == nil {
			s.Namespace = strings.TrimSpace(string(b))
		}
	}
	if s.PodName == "" {
		if h, err := hostname(); err == nil {
			s.PodName = h
		}
	}
}

type stringValue string

func (v *stringValue) String() string     { return string(*v) }
func (v *stringValue) Set(s string) error { *v = stringValue(s); return nil }

type durationValue time.Duration

func (v *durationValue) String() string { return time.Duration(*v).String() }
func (v *durationValue) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("not a duration (use a unit, for example 15s or 500ms): %q", s)
	}
	*v = durationValue(d)
	return nil
}

type intValue int

func (v *intValue) String() string { return strconv.Itoa(int(*v)) }
func (v *intValue) Set(s string) error {
	i, err := strconv.Atoi(s)
	if err != nil {
		return fmt.Errorf("not an integer: %q", s)
	}
	*v = intValue(i)
	return nil
}
