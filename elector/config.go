package elector

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/metaparticle-io/sync/wire"
)

// Environment variables the side-car reads. The injector sets the first three from the downward
// API (fieldRef metadata.name, metadata.namespace, metadata.uid); the others mirror the flags of
// the elector command (see ParseSettings). The listen address is read from wire.EnvAddress, the
// same variable that tells the application where the side-car is.
const (
	EnvPodName         = "METAPARTICLE_SYNC_POD_NAME"
	EnvPodNamespace    = "METAPARTICLE_SYNC_POD_NAMESPACE"
	EnvPodUID          = "METAPARTICLE_SYNC_POD_UID"
	EnvHealthAddress   = "METAPARTICLE_SYNC_HEALTH_ADDR"
	EnvLeaseDuration   = "METAPARTICLE_SYNC_LEASE_DURATION"
	EnvRenewDeadline   = "METAPARTICLE_SYNC_RENEW_DEADLINE"
	EnvRenewPeriod     = "METAPARTICLE_SYNC_RENEW_PERIOD"
	EnvRetryPeriod     = "METAPARTICLE_SYNC_RETRY_PERIOD"
	EnvShutdownTimeout = "METAPARTICLE_SYNC_SHUTDOWN_TIMEOUT"
	EnvLogLevel        = "METAPARTICLE_SYNC_LOG_LEVEL"
)

// Defaults of Config, with the reasons for them.
const (
	// DefaultLeaseDuration is how long other side-cars wait, from their last observation of a
	// change to a held Lease, before they take it over. 15 s is client-go's value: long enough to
	// ride out an API server hiccup, short enough that a crashed Pod's holds move on quickly.
	// Orderly endings (release, session end, SIGTERM) do not wait for it at all.
	DefaultLeaseDuration = 15 * time.Second
	// DefaultRenewDeadline is when a holder that cannot renew declares its hold lost, counted from
	// the start of its last successful write. 10 s leaves 5 s between "lost" and the earliest
	// possible takeover, for clock rate differences and for the application to stop working.
	DefaultRenewDeadline = 10 * time.Second
	// DefaultRenewPeriod is how often a held Lease is renewed: at most 12 writes per minute per
	// hold, and a renew deadline that leaves room for one more attempt after a failed renew.
	DefaultRenewPeriod = 5 * time.Second
	// DefaultRetryPeriod is the pause after a failed write (renew, release or acquire) before the
	// next attempt. Waiting for a held Lease never polls: it is woken by the watch.
	DefaultRetryPeriod = 1 * time.Second
	// DefaultHealthAddress serves /healthz, /readyz and /metrics on every interface, for the
	// kubelet and Prometheus.
	DefaultHealthAddress = ":13132"
	// DefaultShutdownTimeout bounds the orderly shutdown on SIGTERM (releasing every hold and
	// finishing in-flight requests). Keep it below the Pod's terminationGracePeriodSeconds.
	DefaultShutdownTimeout = 10 * time.Second
)

// Limits checked by Config.Validate.
const (
	// MinRetryPeriod keeps a failing side-car from hammering the API server.
	MinRetryPeriod = 10 * time.Millisecond
	// MinLeaseDuration and MaxLeaseDuration bound LeaseDuration, which must also be a whole
	// number of seconds because Lease.spec.leaseDurationSeconds is.
	MinLeaseDuration = 1 * time.Second
	MaxLeaseDuration = 1 * time.Hour
)

// Config is the side-car's configuration. The zero value of every field except PodName and
// Namespace means its default; NewEngine applies the defaults and validates the result, so an
// invalid Config is refused at start-up rather than discovered later.
type Config struct {
	// PodName names the Pod; Lease holder identities are "<PodName>/<session ID>". Required.
	PodName string
	// Namespace is the Pod's namespace, where the Leases live. Required.
	Namespace string
	// PodUID is the Pod's UID. Optional; it is only logged, to tell apart Pods that reuse a name.
	PodUID string

	// ListenAddress is where the lock API listens. It must be a loopback address: the API has no
	// authentication and is meant for the containers of this Pod only. Default
	// wire.DefaultAddress (127.0.0.1:13131).
	ListenAddress string
	// HealthAddress is where /healthz, /readyz and /metrics are served. Default ":13132".
	HealthAddress string

	// LeaseDuration is written to leaseDurationSeconds of every Lease this side-car takes: how
	// long others wait, from when they last saw the Lease change, before taking it over. A whole
	// number of seconds in [1s, 1h]. Default 15s.
	LeaseDuration time.Duration
	// RenewDeadline is how long after the start of its last successful write a holder that
	// cannot renew keeps its hold; at that instant the hold is declared lost. It must be less
	// than LeaseDuration so that the loss is declared before anyone else can take the Lease.
	// Default 10s.
	RenewDeadline time.Duration
	// RenewPeriod is the interval between renewals of a held Lease. Less than RenewDeadline.
	// Default 5s.
	RenewPeriod time.Duration
	// RetryPeriod is the pause after a failed write before the next attempt, and how long a
	// resigned leader stays out of its election so another candidate can take over. At most
	// RenewPeriod and at least 10ms. Default 1s.
	RetryPeriod time.Duration

	// ShutdownTimeout bounds the orderly shutdown. Default 10s.
	ShutdownTimeout time.Duration
}

// withDefaults returns c with every zero field set to its default.
func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if c.ListenAddress == "" {
		c.ListenAddress = wire.DefaultAddress
	}
	if c.HealthAddress == "" {
		c.HealthAddress = DefaultHealthAddress
	}
	def(&c.LeaseDuration, DefaultLeaseDuration)
	def(&c.RenewDeadline, DefaultRenewDeadline)
	def(&c.RenewPeriod, DefaultRenewPeriod)
	def(&c.RetryPeriod, DefaultRetryPeriod)
	def(&c.ShutdownTimeout, DefaultShutdownTimeout)
	return c
}

// Validate reports every problem with c (after defaults are applied) in one error, each saying
// what to change. The timing rule is client-go's, made strict:
//
//	LeaseDuration > RenewDeadline > RenewPeriod >= RetryPeriod >= 10ms
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if c.PodName == "" {
		bad("the Pod name is empty: set %s (downward API metadata.name) or --pod-name", EnvPodName)
	} else if strings.Contains(c.PodName, "/") {
		bad("the Pod name %q must not contain '/'", c.PodName)
	}
	if c.Namespace == "" {
		bad("the namespace is empty: set %s (downward API metadata.namespace) or --namespace", EnvPodNamespace)
	} else if msgs := validation.IsDNS1123Label(c.Namespace); len(msgs) > 0 {
		bad("the namespace %q is not a valid namespace name: %s", c.Namespace, strings.Join(msgs, "; "))
	}
	if err := checkLoopback(c.ListenAddress); err != nil {
		bad("listen address: %v", err)
	}
	if _, _, err := net.SplitHostPort(c.HealthAddress); err != nil {
		bad("health address %q: %v", c.HealthAddress, err)
	}

	switch {
	case c.LeaseDuration < 0 || c.RenewDeadline < 0 || c.RenewPeriod < 0 || c.RetryPeriod < 0:
		bad("durations must not be negative (lease duration %s, renew deadline %s, renew period %s, retry period %s)",
			c.LeaseDuration, c.RenewDeadline, c.RenewPeriod, c.RetryPeriod)
	case c.LeaseDuration < MinLeaseDuration || c.LeaseDuration > MaxLeaseDuration:
		bad("lease duration %s must lie within [%s, %s]", c.LeaseDuration, MinLeaseDuration, MaxLeaseDuration)
	case c.LeaseDuration%time.Second != 0:
		bad("lease duration %s must be a whole number of seconds (Lease.spec.leaseDurationSeconds is an integer)", c.LeaseDuration)
	case c.RenewDeadline >= c.LeaseDuration:
		bad("renew deadline %s must be less than lease duration %s, or a holder that cannot renew could be taken over before it knows it lost the hold",
			c.RenewDeadline, c.LeaseDuration)
	case c.RenewPeriod >= c.RenewDeadline:
		bad("renew period %s must be less than renew deadline %s, or a hold is lost before its first renewal", c.RenewPeriod, c.RenewDeadline)
	case c.RetryPeriod > c.RenewPeriod:
		bad("retry period %s must not exceed renew period %s", c.RetryPeriod, c.RenewPeriod)
	case c.RetryPeriod < MinRetryPeriod:
		bad("retry period %s must be at least %s", c.RetryPeriod, MinRetryPeriod)
	}
	if c.ShutdownTimeout <= 0 {
		bad("shutdown timeout %s must be positive", c.ShutdownTimeout)
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
	return fmt.Errorf("%q is not a loopback address; the lock API has no authentication and must listen on 127.0.0.1, ::1 or localhost", addr)
}
