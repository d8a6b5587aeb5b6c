package contract

import (
	"fmt"
	"time"
)

// Timing is a side-car's Lease timing. The injector writes it into the side-car's environment
// (from its flags and the Pod's annotations) and the side-car runs with it; both validate it with
// Validate, so a timing the side-car would refuse is denied at admission with the same message.
//
// The zero value of a field means its default (see WithDefaults).
type Timing struct {
	// LeaseDuration is written to leaseDurationSeconds of every Lease the side-car takes: how
	// long others wait, from when they last saw the Lease change, before taking it over. A whole
	// number of seconds within [MinLeaseDuration, MaxLeaseDuration]. Default 15s.
	LeaseDuration time.Duration
	// RenewDeadline is how long after the start of its last successful write a holder that
	// cannot renew keeps its hold; at that instant the hold is declared lost. Less than
	// LeaseDuration, so that the loss is declared before anyone else can take the Lease.
	// Default 10s.
	RenewDeadline time.Duration
	// RenewPeriod is the interval between renewals of a held Lease. Less than RenewDeadline.
	// Default 5s (12 writes a minute per hold).
	RenewPeriod time.Duration
	// RetryPeriod is the pause after a failed write before the next attempt, and how long a
	// resigned leader stays out of its election. At most RenewPeriod and at least
	// MinRetryPeriod. Default 1s.
	RetryPeriod time.Duration
}

// Defaults of Timing, with the reasons for them.
const (
	// DefaultLeaseDuration is client-go's value: long enough to ride out an API server hiccup,
	// short enough that a crashed Pod's holds move on quickly. Orderly endings (release, session
	// end, SIGTERM) do not wait for it at all.
	DefaultLeaseDuration = 15 * time.Second
	// DefaultRenewDeadline leaves 5 s between "lost" and the earliest possible takeover, for
	// clock rate differences and for the application to stop working.
	DefaultRenewDeadline = 10 * time.Second
	// DefaultRenewPeriod leaves room for one more attempt after a failed renew before the
	// renew deadline.
	DefaultRenewPeriod = 5 * time.Second
	// DefaultRetryPeriod paces retries of failed writes. Waiting for a held Lease never polls:
	// it is woken by the watch.
	DefaultRetryPeriod = 1 * time.Second
)

// DefaultTiming is the timing of a side-car that is given none.
var DefaultTiming = Timing{
	LeaseDuration: DefaultLeaseDuration,
	RenewDeadline: DefaultRenewDeadline,
	RenewPeriod:   DefaultRenewPeriod,
	RetryPeriod:   DefaultRetryPeriod,
}

// Limits checked by Validate.
const (
	// MinRetryPeriod keeps a failing side-car from hammering the API server.
	MinRetryPeriod = 10 * time.Millisecond
	// MinLeaseDuration and MaxLeaseDuration bound LeaseDuration, which must also be a whole
	// number of seconds because Lease.spec.leaseDurationSeconds is.
	MinLeaseDuration = 1 * time.Second
	MaxLeaseDuration = 1 * time.Hour
)

// WithDefaults returns t with every zero field set to its default.
func (t Timing) WithDefaults() Timing {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&t.LeaseDuration, DefaultLeaseDuration)
	def(&t.RenewDeadline, DefaultRenewDeadline)
	def(&t.RenewPeriod, DefaultRenewPeriod)
	def(&t.RetryPeriod, DefaultRetryPeriod)
	return t
}

// Validate reports the first rule that t (with defaults applied) breaks, saying what to change.
// The rule is client-go's leader election's, made strict:
//
//	LeaseDuration > RenewDeadline > RenewPeriod >= RetryPeriod >= 10ms
func (t Timing) Validate() error {
	t = t.WithDefaults()
	switch {
	case t.LeaseDuration < 0 || t.RenewDeadline < 0 || t.RenewPeriod < 0 || t.RetryPeriod < 0:
		return fmt.Errorf("durations must not be negative (lease duration %s, renew deadline %s, renew period %s, retry period %s)",
			t.LeaseDuration, t.RenewDeadline, t.RenewPeriod, t.RetryPeriod)
	case t.LeaseDuration < MinLeaseDuration || t.LeaseDuration > MaxLeaseDuration:
		return fmt.Errorf("lease duration %s must lie within [%s, %s]", t.LeaseDuration, MinLeaseDuration, MaxLeaseDuration)
	case t.LeaseDuration%time.Second != 0:
		return fmt.Errorf("lease duration %s must be a whole number of seconds (Lease.spec.leaseDurationSeconds is an integer)", t.LeaseDuration)
	case t.RenewDeadline >= t.LeaseDuration:
		return fmt.Errorf("renew deadline %s must be less than lease duration %s, or a holder that cannot renew could be taken over before it knows it lost the hold",
			t.RenewDeadline, t.LeaseDuration)
	case t.RenewPeriod >= t.RenewDeadline:
		return fmt.Errorf("renew period %s must be less than renew deadline %s, or a hold is lost before its first renewal", t.RenewPeriod, t.RenewDeadline)
	case t.RetryPeriod > t.RenewPeriod:
		return fmt.Errorf("retry period %s must not exceed renew period %s", t.RetryPeriod, t.RenewPeriod)
	case t.RetryPeriod < MinRetryPeriod:
		return fmt.Errorf("retry period %s must be at least %s", t.RetryPeriod, MinRetryPeriod)
	}
	return nil
}
