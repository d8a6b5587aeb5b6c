package elector

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/wire"
)

// DefaultHealthAddress serves /healthz, /readyz and /metrics on every interface, for the
// kubelet and Prometheus.
const DefaultHealthAddress = ":13132"

// DefaultShutdownTimeout bounds the orderly shutdown on SIGTERM (releasing every hold and
// finishing in-flight requests). Keep it below the Pod's terminationGracePeriodSeconds.
const DefaultShutdownTimeout = 10 * time.Second

// Config is the side-car's configuration. The zero value of every field except PodName and
// Namespace means its default; NewEngine applies the defaults and validates the result, so an
// invalid Config is refused at start-up rather than discovered later.
type Config struct {
	// PodName names the Pod; Lease holder identities are "<PodName>/<session ID>". Required.
	PodName string
	// Namespace is the Pod's namespace, where the Leases live. Required.
	Namespace string
	// PodUID is the Pod's UID. Optional. It is logged, to tell apart Pods that reuse a name, and
	// lets a restarted side-car release the holds its Pod's previous side-car left once their
	// validity has run out (without it they expire after the lease duration, as when the whole
	// Pod dies).
	PodUID string

	// ListenAddress is where the lock API listens. It must be a loopback address: the API is
	// meant for the containers of this Pod only, and anyone who reaches it may open sessions and
	// read state (only session calls need a credential, the session's secret). Default
	// wire.DefaultAddress (127.0.0.1:13131).
	ListenAddress string
	// HealthAddress is where /healthz, /readyz and /metrics are served. Default ":13132".
	HealthAddress string

	// LeaseDuration, RenewDeadline, RenewPeriod and RetryPeriod are the side-car's Lease
	// timing, with the meanings, defaults and rules of contract.Timing (the injector validates
	// them with the same rules). A zero value means the default.
	LeaseDuration time.Duration
	RenewDeadline time.Duration
	RenewPeriod   time.Duration
	RetryPeriod   time.Duration

	// ShutdownTimeout bounds the orderly shutdown. Default 10s.
	ShutdownTimeout time.Duration

	// Mode is how the side-car runs in its Pod: contract.ModeNative or contract.ModeClassic
	// (the injector sets it). In classic mode the applications may outlive the side-car's
	// SIGTERM, so the transports open the sessions of clients that can learn of a loss only at
	// their next request (the original protocol) with SessionOptions.OutlivesShutdown. Default
	// classic, the safe choice for a side-car listed by hand.
	Mode string

	// DeleteIdleAfter is how long a Lease must have been idle before the side-car deletes it:
	// not held (released, or expired a lease duration after its holder's last write that this
	// side-car saw) and not used by any local session or watch. Otherwise a pattern of one lock
	// per order or per job would fill the namespace (and, with WatchNamespace, every side-car's
	// cache) without end. The deletion is conditional on the
	// resourceVersion this side-car saw idle, so it can never undo a grant; fencing tokens keep
	// growing across the next create. Zero means DefaultDeleteIdleAfter (or LeaseDuration, if
	// longer); a negative value never deletes. Positive values must be at least LeaseDuration.
	DeleteIdleAfter time.Duration

	// WatchScope is which Leases the side-car watches: WatchNames, only those of the names its
	// sessions use (one watch each, kept for a while after the last use, see leasewatch.go); or
	// WatchNamespace, every managed Lease of the namespace in one watch, which sends every
	// renewal of every lock to every side-car and so costs the API server a number of watch
	// events that grows with the square of the namespace's opted-in Pods (docs/scaling.md).
	// Default WatchNames.
	WatchScope string

	// MetricNames bounds the names exported one by one in the gauge metaparticle_sync_held
	// (labels kind and name): the names with a local hold, waiter or candidate, in name order,
	// at most this many; the others are counted in metaparticle_sync_held_names_omitted. Each
	// name costs one time series per Pod in Prometheus. Zero means DefaultMetricNames; a
	// negative value exports no names (only the per-kind gauges).
	MetricNames int

	// Limits bound what one side-car keeps for its Pod's processes, so that a runaway client
	// cannot grow it until it is OOM-killed (which would cost every hold of the Pod). A request
	// beyond a limit changes nothing and is refused with wire.CodeTooMany (HTTP 429). Zero
	// means the default; a negative value is refused.
	Limits Limits
}

// Limits are the side-car's caps (Config.Limits). The holds of a side-car are bounded by
// MaxSessions × MaxNamesPerSession, and its event streams by MaxSessions (one per session).
type Limits struct {
	// MaxSessions bounds the open sessions. Default DefaultMaxSessions.
	MaxSessions int
	// MaxNamesPerSession bounds the names one session holds, waits for or stands in at once.
	// Default DefaultMaxNamesPerSession.
	MaxNamesPerSession int
	// MaxPendingAcquires bounds the lock acquires waiting at once, over all sessions. Default
	// DefaultMaxPendingAcquires.
	MaxPendingAcquires int
	// MaxWatches bounds the lock and election watch streams open at once. Default
	// DefaultMaxWatches.
	MaxWatches int
	// MaxNames bounds the names whose Lease the side-car watches at once (WatchNames): each
	// costs a watch and about 165 KiB. A new name beyond it first evicts the name least
	// recently used of those nothing uses now, and is refused when every one is in use.
	// Default DefaultMaxNames. Not used with WatchNamespace.
	MaxNames int
}

// DefaultMetricNames is Config.MetricNames's default.
const DefaultMetricNames = 50

// DefaultDeleteIdleAfter is Config.DeleteIdleAfter's default: a lock unused for ten minutes
// costs one create more at its next use, and a namespace that creates a name a second keeps
// about 600 idle Leases.
const DefaultDeleteIdleAfter = 10 * time.Minute

// The values of Config.WatchScope.
const (
	WatchNames     = contract.WatchScopeNames
	WatchNamespace = contract.WatchScopeNamespace
)

// Default limits: far above what one Pod's processes use, far below what would exhaust a
// side-car's 64 MiB memory limit.
const (
	DefaultMaxSessions        = 1024
	DefaultMaxNamesPerSession = 1024
	DefaultMaxPendingAcquires = 4096
	DefaultMaxWatches         = 1024
	// DefaultMaxNames keeps a side-car that watches that many names within the chart's 64 MiB,
	// with room for the Go heap's headroom: make bench measured 15 MiB idle and 177 MiB for
	// 1,000 held locks, about 165 KiB a name, so 200 names take about 48 MiB.
	DefaultMaxNames = 200
)

func (l Limits) withDefaults() Limits {
	l.MaxSessions = cmp.Or(l.MaxSessions, DefaultMaxSessions)
	l.MaxNamesPerSession = cmp.Or(l.MaxNamesPerSession, DefaultMaxNamesPerSession)
	l.MaxPendingAcquires = cmp.Or(l.MaxPendingAcquires, DefaultMaxPendingAcquires)
	l.MaxWatches = cmp.Or(l.MaxWatches, DefaultMaxWatches)
	l.MaxNames = cmp.Or(l.MaxNames, DefaultMaxNames)
	return l
}

// Timing returns c's Lease timing.
func (c Config) Timing() contract.Timing {
	return contract.Timing{LeaseDuration: c.LeaseDuration, RenewDeadline: c.RenewDeadline, RenewPeriod: c.RenewPeriod, RetryPeriod: c.RetryPeriod}
}

// withDefaults returns c with every zero field set to its default.
func (c Config) withDefaults() Config {
	if c.ListenAddress == "" {
		c.ListenAddress = wire.DefaultAddress
	}
	if c.HealthAddress == "" {
		c.HealthAddress = DefaultHealthAddress
	}
	t := c.Timing().WithDefaults()
	c.LeaseDuration, c.RenewDeadline, c.RenewPeriod, c.RetryPeriod = t.LeaseDuration, t.RenewDeadline, t.RenewPeriod, t.RetryPeriod
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.Mode == "" {
		c.Mode = contract.ModeClassic
	}
	c.Limits = c.Limits.withDefaults()
	if c.DeleteIdleAfter == 0 {
		c.DeleteIdleAfter = max(DefaultDeleteIdleAfter, c.LeaseDuration)
	}
	if c.MetricNames == 0 {
		c.MetricNames = DefaultMetricNames
	}
	if c.WatchScope == "" {
		c.WatchScope = WatchNames
	}
	return c
}

// Validate reports every problem with c (after defaults are applied) in one error, each saying
// what to change. The timing rules are contract.Timing.Validate's:
//
//	LeaseDuration > RenewDeadline > RenewPeriod >= RetryPeriod >= 10ms
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if c.PodName == "" {
		bad("the Pod name is empty: set %s (downward API metadata.name) or --pod-name", contract.EnvPodName)
	} else if strings.Contains(c.PodName, "/") {
		bad("the Pod name %q must not contain '/'", c.PodName)
	}
	if msgs := validation.IsValidLabelValue(c.PodUID); len(msgs) > 0 {
		bad("the Pod UID %q is not a valid label value (it labels the Leases this Pod holds): %s", c.PodUID, strings.Join(msgs, "; "))
	}
	if c.Namespace == "" {
		bad("the namespace is empty: set %s (downward API metadata.namespace) or --namespace", contract.EnvPodNamespace)
	} else if msgs := validation.IsDNS1123Label(c.Namespace); len(msgs) > 0 {
		bad("the namespace %q is not a valid namespace name: %s", c.Namespace, strings.Join(msgs, "; "))
	}
	if err := checkLoopback(c.ListenAddress); err != nil {
		bad("listen address: %v", err)
	}
	if _, _, err := net.SplitHostPort(c.HealthAddress); err != nil {
		bad("health address %q: %v", c.HealthAddress, err)
	}

	if err := c.Timing().Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.ShutdownTimeout <= 0 {
		bad("shutdown timeout %s must be positive", c.ShutdownTimeout)
	}
	if c.Mode != contract.ModeNative && c.Mode != contract.ModeClassic {
		bad("mode %q must be %q (an init container with restartPolicy Always) or %q (a regular container)", c.Mode, contract.ModeNative, contract.ModeClassic)
	}
	if c.DeleteIdleAfter > 0 && c.DeleteIdleAfter < c.LeaseDuration {
		bad("delete-idle-leases-after %s must be at least the lease duration %s (or negative, to never delete)", c.DeleteIdleAfter, c.LeaseDuration)
	}
	if c.WatchScope != WatchNames && c.WatchScope != WatchNamespace {
		bad("watch scope %q must be %q (the Leases of the names in use) or %q (every managed Lease of the namespace)", c.WatchScope, WatchNames, WatchNamespace)
	}
	for _, l := range []struct {
		name string
		v    int
	}{{"max sessions", c.Limits.MaxSessions}, {"max names per session", c.Limits.MaxNamesPerSession},
		{"max pending acquires", c.Limits.MaxPendingAcquires}, {"max watches", c.Limits.MaxWatches}, {"max names", c.Limits.MaxNames}} {
		if l.v < 0 {
			bad("%s %d must be positive (0 means the default)", l.name, l.v)
		}
	}
	return errors.Join(errs...)
}

// checkLoopback accepts host:port where host is a loopback IP or "localhost".
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: %v", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("%q is not a loopback address; the lock API is for the containers of this Pod only (anyone who reaches it may open sessions) and must listen on 127.0.0.1, ::1 or localhost", addr)
}
