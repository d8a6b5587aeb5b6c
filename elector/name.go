package elector

import (
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"

	"github.com/metaparticle-io/sync/wire"
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

	mu      sync.Mutex // protects the fields below
	name    string     // the name as clients give it; "" until known
	removed bool       // forgotten by the Engine; look the name up again

	obj        *coordinationv1.Lease // latest known version; nil when absent. Read-only.
	rv         uint64                // resourceVersion of obj, or of the last deletion seen
	observedAt time.Time             // when this side-car first saw obj (local clock)
	stale      bool                  // a write conflicted: wait for a version newer than staleRV
	staleRV    uint64
	retryAt    time.Time // after a failed write: no acquiring write before this

	hold     *hold                 // the local hold, if a local session holds it
	queue    []*contender          // lock waiters (FIFO) or election candidates (join order)
	watchers map[*watcher]struct{} // streams following its state
	running  bool                  // a worker goroutine runs
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

type acquireResult struct {
	grant wire.Grant
	err   error
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

// watcher is one stream following the state of a name. Its fields are protected by the
// nameState's mu.
type watcher struct {
	notify chan struct{}
	queue  []wire.LockState
	last   *wire.LockState
	closed string // non-empty: the watch ended for this reason
}

// maxWatchQueue bounds the states queued for a slow watcher; a watcher that falls further
// behind is closed and must reconnect.
const maxWatchQueue = 256

func newNameState(e *Engine, lease string, kind wire.Kind, name string) *nameState {
	return &nameState{
		e:        e,
		lease:    lease,
		kind:     kind,
		name:     name,
		kick:     make(chan struct{}, 1),
		watchers: map[*watcher]struct{}{},
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
	if n.running {
		signal(n.kick)
		return
	}
	n.running = true
	n.e.workerStarted()
	go n.run()
}

// mismatch reports a Lease that belongs to another name: the Engine refuses to touch it.
func (n *nameState) mismatch(kind wire.Kind, name string) error {
	if n.name != name {
		return errorf(wire.CodeInternal, "%s names %q and %q map to the same Lease %s (a hash collision); refusing both", kind, n.name, name, n.lease)
	}
	if n.obj == nil {
		return nil
	}
	got, ok := n.obj.Annotations[AnnotationName]
	if !ok || got != name || n.obj.Labels[LabelKind] != string(kind) {
		return errorf(wire.CodeInternal, "Lease %s/%s is annotated %s=%q and labelled %s=%q, not %q and %q: a hash collision or a Lease this side-car did not write; refusing to use it",
			n.e.cfg.Namespace, n.lease, AnnotationName, got, LabelKind, n.obj.Labels[LabelKind], name, kind)
	}
	return nil
}

// observe takes in an informer event. Only versions newer than the one known are used, so the
// Engine's own writes, which it learns from their responses, are not undone by late events.
func (n *nameState) observe(l *coordinationv1.Lease, deleted bool, now time.Time) {
	rv, err := parseRV(l)
	if err != nil {
		n.e.log.Error(err, "ignoring a Lease", "lease", l.Name)
		return
	}
	if deleted {
		if rv < n.rv {
			return
		}
		n.obj, n.rv, n.observedAt, n.stale = nil, rv, now, false
		if h := n.hold; h != nil {
			n.lose(h, lossDeleted, "the Lease was deleted", now)
		}
		n.publish(now)
	} else {
		if rv <= n.rv {
			return
		}
		n.learn(l, rv, now)
		if n.name == "" {
			if name := l.Annotations[AnnotationName]; LeaseName(n.kind, name) == n.lease {
				n.name = name
			}
		}
		if h := n.hold; h != nil && holderOf(l) != h.s.holder {
			if h.release && holderOf(l) == "" {
				// The release landed; the watch was faster than the write's response.
				n.dropHold(h)
				n.e.log.Info("released", "kind", n.kind, "name", n.name, "lease", n.lease, "session", h.s.id, "token", h.grant.Token, "reason", h.reason)
			} else {
				n.lose(h, lossTaken, fmt.Sprintf("the Lease is now held by %q", holderOf(l)), now)
			}
		}
	}
	if n.interested() {
		n.wake()
	}
}

// learn records a newer version of the Lease.
func (n *nameState) learn(l *coordinationv1.Lease, rv uint64, now time.Time) {
	n.obj, n.rv, n.observedAt = l, rv, now
	if n.stale && rv > n.staleRV {
		n.stale = false
	}
	// Publish every version learned, not only the one the worker finds when it next runs, so
	// that watchers see each change of holder in order even when versions arrive in a burst.
	n.publish(now)
}

// expiry returns when the current holder of the Lease, who is not holding it for this
// side-car, is considered gone: LeaseDuration after this side-car first saw the current
// version. The holder's own clock and the times it wrote are never used.
func (n *nameState) expiry() time.Time {
	return n.observedAt.Add(durationOf(n.obj, n.e.cfg.LeaseDuration))
}

// state returns the name's state at now.
func (n *nameState) state(now time.Time) wire.LockState {
	st := wire.LockState{Name: n.name, Lease: n.lease}
	l := n.obj
	if l == nil {
		return st
	}
	st.Token = tokenOf(l)
	if l.Spec.LeaseDurationSeconds != nil {
		st.LeaseDurationSeconds = *l.Spec.LeaseDurationSeconds
	}
	holder := holderOf(l)
	if holder == "" || st.Token == "" {
		return st // free, or being created: no grant until its token is written
	}
	ours := n.hold != nil && n.hold.s.holder == holder
	if !ours && now.After(n.expiry()) {
		return st
	}
	st.Held = true
	st.Holder = holder
	if t := l.Spec.AcquireTime; t != nil {
		st.AcquireTime = ptr(t.Time)
	}
	if t := l.Spec.RenewTime; t != nil {
		st.RenewTime = ptr(t.Time)
	}
	return st
}

// publish queues the current state for every watcher that has not seen it.
func (n *nameState) publish(now time.Time) {
	if len(n.watchers) == 0 {
		return
	}
	st := n.state(now)
	for w := range n.watchers {
		if w.closed != "" {
			continue
		}
		if w.last != nil && w.last.Held == st.Held && w.last.Holder == st.Holder && w.last.Token == st.Token {
			continue
		}
		if len(w.queue) >= maxWatchQueue {
			w.closed = "the watcher fell too far behind; reconnect"
		} else {
			w.queue = append(w.queue, st)
			w.last = &st
		}
		signal(w.notify)
	}
}

// closeWatchers ends every watch (shutdown).
func (n *nameState) closeWatchers() {
	for w := range n.watchers {
		w.closed = "the side-car is shutting down"
		signal(w.notify)
	}
}

// ---- Locks ----

// enqueueLock adds a lock waiter for s.
func (n *nameState) enqueueLock(s *session, try bool, now time.Time) (*contender, error) {
	if h := n.hold; h != nil && h.s == s && !h.release {
		return nil, errorf(wire.CodeAlreadyHeld, "session %s already holds lock %q (token %s)", s.id, n.name, h.grant.Token)
	}
	if try && (len(n.queue) > 0 || (n.hold != nil && n.hold.s != s)) {
		n.e.m.waits.WithLabelValues(string(n.kind), "failed").Inc()
		return nil, errorf(wire.CodeNotAcquired, "lock %q is held or awaited by another session of this Pod", n.name)
	}
	if !s.addInterest(n) {
		return nil, s.endErr()
	}
	c := &contender{s: s, since: now, try: try, reply: make(chan acquireResult, 1)}
	n.queue = append(n.queue, c)
	n.wake()
	return c, nil
}

// answer ends lock waiter c's wait with a result and removes it from the queue.
func (n *nameState) answer(c *contender, g wire.Grant, err error, result string) {
	if c.answered {
		return
	}
	c.answered = true
	c.reply <- acquireResult{grant: g, err: err}
	n.queue = slices.DeleteFunc(n.queue, func(x *contender) bool { return x == c })
	n.e.m.waits.WithLabelValues(string(n.kind), result).Inc()
	n.forgetIfIdle(c.s)
	n.poke()
}

// withdraw ends waiter c's wait on the waiter's side (timeout or client gone). If a grant won
// the race, it is returned on timeout; when the client is gone it is released instead.
func (n *nameState) withdraw(c *contender, result string, gone bool) (wire.Grant, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !c.answered {
		n.answer(c, wire.Grant{}, nil, result)
		<-c.reply
		if gone {
			return wire.Grant{}, errorf(wire.CodeNotAcquired, "the client went away")
		}
		return wire.Grant{}, errorf(wire.CodeNotAcquired, "lock %q was not acquired within the timeout", n.name)
	}
	r := <-c.reply
	if gone && r.err == nil && n.hold != nil && n.hold.s == c.s && n.hold.grant.Token == r.grant.Token {
		n.requestRelease(n.hold, "the client went away as the lock was granted", n.e.clock.Now())
		return wire.Grant{}, errorf(wire.CodeNotAcquired, "the client went away")
	}
	return r.grant, r.err
}

// releaseLock releases s's hold.
func (n *nameState) releaseLock(s *session, now time.Time) (<-chan struct{}, error) {
	h := n.hold
	if h == nil || h.s != s || h.release {
		return nil, errorf(wire.CodeNotHeld, "session %s does not hold lock %q", s.id, n.name)
	}
	return n.requestRelease(h, "released by the client", now), nil
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

// ---- Elections ----

func (n *nameState) candidate(s *session) *contender {
	for _, c := range n.queue {
		if c.s == s {
			return c
		}
	}
	return nil
}

// join makes s a candidate.
func (n *nameState) join(s *session, now time.Time) error {
	if n.candidate(s) != nil {
		return nil
	}
	if !s.addInterest(n) {
		return s.endErr()
	}
	n.queue = append(n.queue, &contender{s: s, since: now})
	n.e.log.Info("candidate joined", "kind", n.kind, "name", n.name, "lease", n.lease, "session", s.id)
	n.wake()
	return nil
}

// leave ends s's candidacy, releasing leadership if s leads.
func (n *nameState) leave(s *session, now time.Time) (<-chan struct{}, error) {
	c := n.candidate(s)
	if c == nil {
		return nil, errorf(wire.CodeNotHeld, "session %s is not a candidate in election %q", s.id, n.name)
	}
	n.queue = slices.DeleteFunc(n.queue, func(x *contender) bool { return x == c })
	n.e.log.Info("candidate left", "kind", n.kind, "name", n.name, "lease", n.lease, "session", s.id)
	var done <-chan struct{}
	if h := n.hold; h != nil && h.s == s && !h.release {
		n.depose(h, "left the election")
		done = n.requestRelease(h, "left the election", now)
	} else {
		closed := make(chan struct{})
		close(closed)
		done = closed
		n.forgetIfIdle(s)
	}
	n.wake()
	return done, nil
}

// resign gives up s's leadership; s stays a candidate but waits RetryPeriod.
func (n *nameState) resign(s *session, now time.Time) (<-chan struct{}, error) {
	h := n.hold
	if h == nil || h.s != s || h.release {
		return nil, errorf(wire.CodeNotHeld, "session %s does not lead election %q", s.id, n.name)
	}
	if c := h.c; c != nil {
		c.notBefore = now.Add(n.e.cfg.RetryPeriod)
		c.since = now
		n.queue = append(slices.DeleteFunc(n.queue, func(x *contender) bool { return x == c }), c)
	}
	n.depose(h, "resigned")
	return n.requestRelease(h, "resigned", now), nil
}

// depose tells a leader's session it no longer leads, before anything else can happen.
func (n *nameState) depose(h *hold, reason string) {
	n.post(h.s, wire.Event{Type: wire.EventDeposed, Kind: n.kind, Grant: ptr(h.grant), Reason: reason})
}

// post queues ev for s; a session whose queue overflows is ended (asynchronously: the caller
// holds n.mu, and ending a session takes it).
func (n *nameState) post(s *session, ev wire.Event) {
	if !s.post(ev) {
		go n.e.endSession(s, "its event queue overflowed: the client does not read its event stream", wire.CodeNoSession)
	}
}

// ---- Sessions ----

// sessionEnded drops everything of s: its waits fail, its candidacies end, its hold is
// released.
func (n *nameState) sessionEnded(s *session) {
	n.mu.Lock()
	defer n.mu.Unlock()
	now := n.e.clock.Now()
	err := s.endErr()
	for _, c := range slices.Clone(n.queue) {
		if c.s != s {
			continue
		}
		if n.kind == wire.KindLock {
			n.answer(c, wire.Grant{}, err, "cancelled")
		} else {
			n.queue = slices.DeleteFunc(n.queue, func(x *contender) bool { return x == c })
		}
	}
	if h := n.hold; h != nil && h.s == s {
		n.requestRelease(h, "session ended", now)
	}
	n.wake()
}

// forgetIfIdle drops n from s's interests when s has nothing left in n.
func (n *nameState) forgetIfIdle(s *session) {
	if n.hold != nil && n.hold.s == s {
		return
	}
	for _, c := range n.queue {
		if c.s == s {
			return
		}
	}
	s.dropInterest(n)
}

func formatToken(t uint64) string { return strconv.FormatUint(t, 10) }
