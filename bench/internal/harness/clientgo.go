package harness

import (
	"context"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// Baseline timings: client-go's documented defaults (the values its own components use).
const (
	BaselineLeaseDuration = 15 * time.Second
	BaselineRenewDeadline = 10 * time.Second
	BaselineRetryPeriod   = 2 * time.Second
)

// Candidate is one client-go leader election candidate on a LeaseLock, with its own client: the
// baseline.
type Candidate struct {
	ID string
	// Started receives the time OnStartedLeading was called.
	Started chan time.Time

	le     *leaderelection.LeaderElector
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

// CandidateOptions configure a baseline candidate.
type CandidateOptions struct {
	// ReleaseOnCancel clears the Lease when the candidate is stopped; false models a crash.
	ReleaseOnCancel bool
	// OnNewLeader is called with each new leader identity this candidate observes.
	OnNewLeader func(identity string)
	// Timings; zero means client-go's defaults.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
}

// NewCandidate prepares a candidate for Lease ns/lease; Run starts it.
func (b *Bench) NewCandidate(ns, lease, id string, counter *Counter, o CandidateOptions) (*Candidate, error) {
	cs, err := kubernetes.NewForConfig(b.RestConfig(counter, "client-go-leaderelection"))
	if err != nil {
		return nil, err
	}
	c := &Candidate{ID: id, Started: make(chan time.Time, 1), done: make(chan struct{})}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&o.LeaseDuration, BaselineLeaseDuration)
	def(&o.RenewDeadline, BaselineRenewDeadline)
	def(&o.RetryPeriod, BaselineRetryPeriod)
	c.le, err = leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock: &resourcelock.LeaseLock{
			LeaseMeta:  metav1.ObjectMeta{Namespace: ns, Name: lease},
			Client:     cs.CoordinationV1(),
			LockConfig: resourcelock.ResourceLockConfig{Identity: id},
		},
		LeaseDuration:   o.LeaseDuration,
		RenewDeadline:   o.RenewDeadline,
		RetryPeriod:     o.RetryPeriod,
		ReleaseOnCancel: o.ReleaseOnCancel,
		Name:            lease,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(context.Context) {
				select {
				case c.Started <- time.Now():
				default:
				}
			},
			OnStoppedLeading: func() {},
			OnNewLeader:      o.OnNewLeader,
		},
	})
	if err != nil {
		return nil, err
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	return c, nil
}

// Run starts the candidate's election loop in a goroutine.
func (c *Candidate) Run() {
	go func() {
		defer close(c.done)
		c.le.Run(c.ctx)
	}()
}

// Stop cancels the candidate (releasing the Lease if ReleaseOnCancel and it leads) and waits
// for its loop to end.
func (c *Candidate) Stop() {
	c.once.Do(c.cancel)
	<-c.done
}

// Cancel cancels the candidate without waiting.
func (c *Candidate) Cancel() { c.once.Do(c.cancel) }

// StartCandidate is NewCandidate followed by Run.
func (b *Bench) StartCandidate(ns, lease, id string, counter *Counter, o CandidateOptions) (*Candidate, error) {
	c, err := b.NewCandidate(ns, lease, id, counter, o)
	if err != nil {
		return nil, err
	}
	c.Run()
	return c, nil
}
