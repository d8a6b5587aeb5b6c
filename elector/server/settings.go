package server

import (
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/metaparticle-io/sync/elector"
	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/wire"
)

// Settings is everything the elector command reads from its flags and environment.
type Settings struct {
	elector.Config
	// Kubeconfig is a kubeconfig file to use instead of the in-cluster configuration, to run
	// the side-car outside a cluster. Empty means in-cluster.
	Kubeconfig string
	// LogLevel is the log verbosity: 0 logs every state change, 1 adds lost races, 2 every
	// renewal.
	LogLevel int
	// KubeAPIQPS and KubeAPIBurst limit the side-car's requests to the API server (client-go's
	// token bucket). Zero means DefaultKubeAPIQPS and DefaultKubeAPIBurst.
	KubeAPIQPS   int
	KubeAPIBurst int
}

// Default API server rate limits of everything but renewals (creates, takeovers, releases, the
// informer's requests). The renewals of held Leases have a budget of their own, twice these
// (elector.RenewalBudget), so they never wait behind other work: a held lock costs 12 renewals
// a minute at default timings, so 100 requests a second renew about 500 held locks; raise them
// for side-cars that hold more.
const (
	DefaultKubeAPIQPS   = 50
	DefaultKubeAPIBurst = 100
)

const usageHeader = `Usage: elector [flags]

The Metaparticle Sync side-car. It serves named locks and leader elections to the containers
of its Pod over HTTP on loopback (docs/api.md), backed by coordination.k8s.io/v1 Leases in the
Pod's namespace (RBAC: deploy/rbac/sidecar-role.yaml). SIGTERM releases every hold and exits.

Every flag can also be set by the environment variable shown; the flag wins.

`

// flagSet returns the elector command's flags bound to s, and the environment variable of each.
func flagSet(s *Settings) (*flag.FlagSet, map[string]string) {
	fs := flag.NewFlagSet("elector", flag.ContinueOnError)
	env := map[string]string{}
	// usage ends with the flag's environment variable, on a line of its own.
	usage := func(name, variable, text string) string {
		env[name] = variable
		return text + "\n$" + variable
	}
	fs.StringVar(&s.PodName, "pod-name", "", usage("pod-name", contract.EnvPodName,
		"`name` of this Pod (downward API metadata.name). Lease holder identities are\n"+
			"<pod-name>/<session>. Default: the host name, which is the Pod name unless\n"+
			"spec.hostname is set."))
	fs.StringVar(&s.Namespace, "namespace", "", usage("namespace", contract.EnvPodNamespace,
		"`name` of this Pod's namespace (downward API metadata.namespace); the Leases live there.\n"+
			"Default: the service account's namespace file."))
	fs.StringVar(&s.PodUID, "pod-uid", "", usage("pod-uid", contract.EnvPodUID,
		"`uid` of this Pod (downward API metadata.uid). Optional. With it, a restarted side-car\n"+
			"releases the holds its Pod's previous side-car left once their validity has run out,\n"+
			"before they would expire."))
	fs.StringVar(&s.ListenAddress, "listen", "", usage("listen", wire.EnvAddress,
		"`host:port` of the lock API. Loopback only (127.0.0.1, ::1 or localhost): anyone who\n"+
			"reaches it may open sessions. Default "+wire.DefaultAddress+"."))
	fs.StringVar(&s.HealthAddress, "health-listen", "", usage("health-listen", contract.EnvHealthAddress,
		"`host:port` of /healthz, /readyz and /metrics. Default "+elector.DefaultHealthAddress+"."))
	fs.DurationVar(&s.LeaseDuration, "lease-duration", 0, usage("lease-duration", contract.EnvLeaseDuration,
		"How long others wait, from their last observation of a change, before taking over a Lease\n"+
			"whose holder stopped renewing. Whole seconds. Default "+contract.DefaultLeaseDuration.String()+"."))
	fs.DurationVar(&s.RenewDeadline, "renew-deadline", 0, usage("renew-deadline", contract.EnvRenewDeadline,
		"A holder that cannot renew declares its hold lost this long after the start of its last\n"+
			"successful write. Less than --lease-duration. Default "+contract.DefaultRenewDeadline.String()+"."))
	fs.DurationVar(&s.RenewPeriod, "renew-period", 0, usage("renew-period", contract.EnvRenewPeriod,
		"Interval between renewals of a held Lease. Less than --renew-deadline. Default "+contract.DefaultRenewPeriod.String()+"."))
	fs.DurationVar(&s.RetryPeriod, "retry-period", 0, usage("retry-period", contract.EnvRetryPeriod,
		"Pause after a failed write, and how long a resigned leader stays out of its election.\n"+
			"At most --renew-period, at least "+contract.MinRetryPeriod.String()+". Default "+contract.DefaultRetryPeriod.String()+"."))
	fs.DurationVar(&s.ShutdownTimeout, "shutdown-timeout", 0, usage("shutdown-timeout", contract.EnvShutdownTimeout,
		"Bound on the orderly shutdown after SIGTERM (release every hold, finish requests). Keep it\n"+
			"below the Pod's terminationGracePeriodSeconds. Default "+elector.DefaultShutdownTimeout.String()+"."))
	fs.StringVar(&s.Mode, "mode", "", usage("mode", contract.EnvMode,
		"How the side-car runs in its Pod: native (an init container with restartPolicy Always,\n"+
			"stopped after the application) or classic (a regular container, stopped with it). In\n"+
			"classic mode a shutdown keeps each original-protocol hold until its client's next PUT\n"+
			"(answered 409) or the end of its TTL. Default "+contract.ModeClassic+"."))
	fs.IntVar(&s.KubeAPIQPS, "kube-api-qps", 0, usage("kube-api-qps", contract.EnvKubeAPIQPS,
		fmt.Sprintf("Requests per second the side-car may send to the API server (sustained), for new\n"+
			"work; the renewals of held Leases have twice this, separately. Default %d.", DefaultKubeAPIQPS)))
	fs.IntVar(&s.KubeAPIBurst, "kube-api-burst", 0, usage("kube-api-burst", contract.EnvKubeAPIBurst,
		fmt.Sprintf("Requests the side-car may send to the API server in a burst. Default %d.", DefaultKubeAPIBurst)))
	fs.IntVar(&s.Limits.MaxSessions, "max-sessions", 0, usage("max-sessions", contract.EnvMaxSessions,
		fmt.Sprintf("Sessions open at once (each with at most one event stream); beyond it 429 too_many.\nDefault %d.", elector.DefaultMaxSessions)))
	fs.IntVar(&s.Limits.MaxNamesPerSession, "max-names-per-session", 0, usage("max-names-per-session", contract.EnvMaxNamesPerSession,
		fmt.Sprintf("Names one session holds, waits for or stands in at once; beyond it 429 too_many.\nDefault %d.", elector.DefaultMaxNamesPerSession)))
	fs.IntVar(&s.Limits.MaxPendingAcquires, "max-pending-acquires", 0, usage("max-pending-acquires", contract.EnvMaxPendingAcquires,
		fmt.Sprintf("Lock acquires waiting at once, over all sessions; beyond it 429 too_many. Default %d.", elector.DefaultMaxPendingAcquires)))
	fs.IntVar(&s.Limits.MaxWatches, "max-watches", 0, usage("max-watches", contract.EnvMaxWatches,
		fmt.Sprintf("Lock and election watch streams open at once; beyond it 429 too_many. Default %d.", elector.DefaultMaxWatches)))
	fs.IntVar(&s.Limits.MaxNames, "max-names", 0, usage("max-names", contract.EnvMaxNames,
		fmt.Sprintf("Names whose Lease the side-car watches at once (--watch-scope=names), about 165 KiB\n"+
			"each; a new one evicts the least recently used name nothing uses, or is refused with 429\n"+
			"too_many. Raise the memory limit with it. Default %d.", elector.DefaultMaxNames)))
	fs.DurationVar(&s.DeleteIdleAfter, "delete-idle-leases-after", 0, usage("delete-idle-leases-after", contract.EnvDeleteIdleLeasesAfter,
		"Delete a Lease this long after its release (or a lease duration plus this long after its\n"+
			"holder's last renewal) if nothing of this Pod uses it, conditional on its resourceVersion,\n"+
			"so never one just granted; RBAC needs delete. At least --lease-duration; a negative value\n"+
			"never deletes. Default "+elector.DefaultDeleteIdleAfter.String()+" (or --lease-duration, if longer)."))
	fs.IntVar(&s.MetricNames, "metrics-names", 0, usage("metrics-names", contract.EnvMetricsNames,
		fmt.Sprintf("Names exported one by one in the gauge metaparticle_sync_held{kind,name} (1 held or\n"+
			"leading here, 0 waiting or standing): at most this many, in name order; -1 exports none.\n"+
			"Default %d.", elector.DefaultMetricNames)))
	fs.StringVar(&s.WatchScope, "watch-scope", "", usage("watch-scope", contract.EnvWatchScope,
		"Which Leases to watch: names (those of the names this Pod's processes use, one watch\n"+
			"each, kept for --delete-idle-leases-after after the last use) or namespace (every\n"+
			"managed Lease of the namespace in one watch: every renewal there reaches every side-car;\n"+
			"see docs/scaling.md). Default "+elector.WatchNames+"."))
	fs.StringVar(&s.Kubeconfig, "kubeconfig", "", usage("kubeconfig", "KUBECONFIG",
		"Kubeconfig `file`, to run outside a cluster. Default: the in-cluster service account."))
	fs.IntVar(&s.LogLevel, "v", 0, usage("v", contract.EnvLogLevel,
		"Log verbosity `level`: 0 logs every state change, 1 adds lost races, 2 every renewal. Default 0."))
	return fs, env
}

// ParseSettings reads the elector command's settings from args (without the program name) and
// from the environment through getenv. A flag on the command line wins over its environment
// variable, which wins over the default. With -h or --help it writes the usage to out and
// returns flag.ErrHelp. Values are parsed here; their consistency is checked by
// elector.Config.Validate when the Engine is made.
func ParseSettings(args []string, getenv func(string) string, out io.Writer) (Settings, error) {
	var s Settings
	fs, env := flagSet(&s)
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			fs.SetOutput(out)
			fmt.Fprint(out, usageHeader)
			fs.PrintDefaults()
		}
		return s, err
	}
	if fs.NArg() > 0 {
		return s, fmt.Errorf("unexpected arguments %q; the elector takes flags only (see --help)", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		v := getenv(env[f.Name])
		if err != nil || set[f.Name] || v == "" {
			return
		}
		if serr := fs.Set(f.Name, v); serr != nil {
			err = fmt.Errorf("environment variable %s=%q: invalid value for --%s: %v", env[f.Name], v, f.Name, serr)
		}
	})
	if err != nil {
		return s, err
	}
	if s.KubeAPIQPS < 0 || s.KubeAPIBurst < 0 {
		return s, fmt.Errorf("--kube-api-qps (%d) and --kube-api-burst (%d) must be positive; 0 means the default", s.KubeAPIQPS, s.KubeAPIBurst)
	}
	return s, nil
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
