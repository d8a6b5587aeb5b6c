package elector

import (
	"context"
	"sync"
	"time"

	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/wire"
	coordinationv1 "k8s.io/api/coordination/v1"
)

// nameState is everything this side-car knows and wants about one lock or election: the latest
// version of its Lease, when that version was first seen here, the local hold, the local
// contenders and watchers. Inputs (informer events, requests, session ends) change it under mu
// and wake its worker (see worker.go), which alone writes the Lease, one write at a time.
type nameState struct {
	e     *Engine
	lease string    // the Lease's name
	kind  wire.Kind // lock or election
	kick  chan struct{}

	w *nameWatch // the informer of the Lease (WatchNames); nil with WatchNamespace

	mu      sync.Mutex // protects the fields below
	name    string     // the name as clients give it; "" until known
	removed bool       // forgotten by the Engine; look the name up again
	synced  bool       // the informer has listed the Lease: obj == nil means there is none
	listErr error      // until synced: why the informer's last list failed
	usedAt  time.Time  // the last local use seen (a request, or interest at a sweep)

	obj        *coordinationv1.Lease // latest known version; nil when absent. Read-only.
	rv         uint64                // resourceVersion of obj, or of the last deletion seen
	observedAt time.Time             // when this side-car first saw obj (local clock)
	stale      bool                  // a write conflicted: wait for a version newer than staleRV
	staleRV    uint64
	retryAt    time.Time // after a failed write: no acquiring write before this
	refused    error     // until retryAt: why the last acquiring write was refused for good (a foreign Lease)
	failed     error     // until retryAt: the API trouble that failed the last acquiring write, for tries

	hold     *hold                 // the local hold, if a local session holds it
	queue    []*contender          // lock waiters (FIFO) or election candidates (join order)
	watchers map[*watcher]struct{} // streams following its state
	running  bool                  // a worker goroutine runs
	writing  bool                  // the worker's write is in flight: a new version may be its own
	raced    string                // an idle deletion of this resourceVersion was refused: wait for another
	wakes    int                   // times wake was called (for tests)
}

// contender is a local session that wants the Lease: one pending lock acquire, or one election
// candidacy (which lasts until the session leaves the election).
type contender struct {
	s         *session
	since     time.Time // start of the current wait, for the wait-time histogram
	notBefore time.Time // candidates: not eligible before this (after a resign)

	// Lock waiters only.
	try      bool
	reply    chan acquireResult // capacity 1; receives exactly one result
	answered bool
}

// hold is the local hold of the Lease by a session.
type hold struct {
	s          *session
	c          *contender // elections: the leading candidate; nil for locks
	grant      wire.Grant
	renewStart time.Time // start of the last successful write of the Lease; the hold is lost at renewStart+RenewDeadline
	next       time.Time // next renewal (or release) attempt

	release  bool          // to be released (unlock, resign, leave, session end)
	reason   string        // why it is released, for logs
	released chan struct{} // closed when the hold ends (released, given up or lost)
}

// validFor returns, in milliseconds, how long after now hold h is guaranteed: until its renew
// deadline, when this side-car declares it lost, which is before anyone else may take the
// Lease (they wait LeaseDuration from when they first saw the write that began at
// renewStart). Called with n.mu held.
func (n *nameState) validFor(h *hold, now time.Time) int64 {
	return max(0, h.renewStart.Add(n.e.cfg.RenewDeadline).Sub(now).Milliseconds())
}

func newNameState(e *Engine, lease string, kind wire.Kind, name string) *nameState {
	return &nameState{
		e:        e,
		lease:    lease,
		kind:     kind,
		name:     name,
		kick:     make(chan struct{}, 1),
		watchers: map[*watcher]struct{}{},
		usedAt:   e.clock.Now(),
	}
}

// interested reports whether anything local depends on n.
func (n *nameState) interested() bool {
	return n.hold != nil || len(n.queue) > 0 || len(n.watchers) > 0
}

// poke makes a running worker re-evaluate n, so that it exits when nothing depends on n any
// more. Every input that removes interest pokes.
func (n *nameState) poke() {
	if n.running {
		signal(n.kick)
	}
}

// wake makes the worker re-evaluate n, starting it if needed.
func (n *nameState) wake() {
	n.wakes++
	if n.running {
		signal(n.kick)
		return
	}
	n.running = true
	go n.run()
}

// mismatch reports a Lease that belongs to another name: the Engine refuses to touch it.
func (n *nameState) mismatch(kind wire.Kind, name string) error {
	if n.name != name {
		return wire.Errorf(wire.CodeInternal, "%s names %q and %q map to the same Lease %s (a hash collision); refusing both", kind, n.name, name, n.lease)
	}
	if n.obj == nil {
		return nil
	}
	got, ok := n.obj.Annotations[contract.AnnotationName]
	if !ok || got != name || n.obj.Labels[contract.LabelKind] != string(kind) {
		return wire.Errorf(wire.CodeInternal, "Lease %s/%s is annotated %s=%q and labelled %s=%q, not %q and %q: a hash collision or a Lease this side-car did not write; refusing to use it",
			n.e.cfg.Namespace, n.lease, contract.AnnotationName, got, contract.LabelKind, n.obj.Labels[contract.LabelKind], name, kind)
	}
	return nil
}

// holdOp runs op, which gives up something session k has in lock or election name, and waits
// until its write is done (or given up), ctx ends or the Engine halts.
func (e *Engine) holdOp(ctx context.Context, kind wire.Kind, k wire.SessionKey, name string, op func(*nameState, *session, time.Time) (<-chan struct{}, error)) error {
	if err := wire.ValidateName(name); err != nil {
		return wire.Errorf(wire.CodeInvalidName, "invalid %s name: %v", kind, err)
	}
	s, err := e.session(k)
	if err != nil {
		return err
	}
	n, err := e.peekName(kind, name)
	if err != nil {
		return err
	}
	if n == nil {
		if kind == wire.KindLock {
			return wire.Errorf(wire.CodeNotHeld, "session %s does not hold lock %q", k.ID, name)
		}
		return wire.Errorf(wire.CodeNotHeld, "session %s is not a candidate in election %q", k.ID, name)
	}
	done, err := op(n, s, e.clock.Now())
	n.mu.Unlock()
	if err != nil {
		return err
	}
	return waitDone(ctx, done, e.ctx.Done())
}

func waitDone(ctx context.Context, done <-chan struct{}, halted <-chan struct{}) error {
	select {
	case <-done:
	case <-ctx.Done():
	case <-halted:
	}
	return nil
}

// requestRelease marks h to be released by the worker and returns a channel closed when that
// is done.
func (n *nameState) requestRelease(h *hold, reason string, now time.Time) <-chan struct{} {
	if !h.release {
		h.release = true
		h.reason = reason
		h.next = now
		n.e.log.Info("releasing", "kind", n.kind, "name", n.name, "lease", n.lease, "session", h.s.id, "token", h.grant.Token, "reason", reason)
		n.wake()
	}
	return h.released
}
