package elector

import (
	"context"
	"fmt"
	"time"

	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/wire"
	coordinationv1 "k8s.io/api/coordination/v1"
)

// ---- Reading ----

// State returns the state of lock or election name as this side-car observes it.
func (e *Engine) State(kind wire.Kind, name string) (wire.LockState, error) {
	if err := wire.ValidateName(name); err != nil {
		return wire.LockState{}, wire.Errorf(wire.CodeInvalidName, "invalid %s name: %v", kind, err)
	}
	if !e.synced.Load() {
		return wire.LockState{}, e.accepting()
	}
	n, err := e.readName(kind, name)
	if err != nil {
		return wire.LockState{}, err
	}
	if n == nil {
		return wire.LockState{Name: name, Lease: contract.LeaseName(kind, name)}, nil
	}
	defer n.mu.Unlock()
	st := n.state(e.clock.Now())
	st.Name = name
	return st, nil
}

// Watch writes the state of lock or election name with emit: the current state first, then
// one state per change of holder, held flag or token, in the order this side-car observed them.
// Changes that happen while its watch of the API server is interrupted may be coalesced. It
// returns when ctx ends, emit fails, or the Engine shuts down.
func (e *Engine) Watch(ctx context.Context, kind wire.Kind, name string, emit func(wire.LockState) error) error {
	if err := wire.ValidateName(name); err != nil {
		return wire.Errorf(wire.CodeInvalidName, "invalid %s name: %v", kind, err)
	}
	if err := e.accepting(); err != nil {
		return err
	}
	if max := e.cfg.Limits.MaxWatches; e.watches.Add(1) > int64(max) {
		e.watches.Add(-1)
		return wire.Errorf(wire.CodeTooMany, "the side-car has %d watches open, its limit (--max-watches): close some, or raise the limit", max)
	}
	defer e.watches.Add(-1)
	n, err := e.useSynced(kind, name)
	if err != nil {
		return err
	}
	if e.closing.Load() {
		n.mu.Unlock()
		return wire.Errorf(wire.CodeShuttingDown, "the side-car is shutting down")
	}
	w := &watcher{notify: make(chan struct{}, 1)}
	n.watchers[w] = struct{}{}
	n.publish(e.clock.Now())
	n.wake()
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		delete(n.watchers, w)
		n.poke()
		idle := !n.interested() && !n.running
		n.mu.Unlock()
		if idle {
			e.maybeRemove(n)
		}
	}()
	for {
		n.mu.Lock()
		states, closed := w.queue, w.closed
		w.queue = nil
		n.mu.Unlock()
		for _, st := range states {
			st.Name = name
			if err := emit(st); err != nil {
				return err
			}
		}
		if closed != "" {
			return wire.Errorf(wire.CodeShuttingDown, "%s", closed)
		}
		select {
		case <-w.notify:
		case <-ctx.Done():
			return nil
		case <-e.ctx.Done():
			return wire.Errorf(wire.CodeShuttingDown, "the side-car stopped")
		}
	}
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

// observe takes in an informer event. Only versions newer than the one known are used, so the
// Engine's own writes, which it learns from their responses, are not undone by late events.
func (n *nameState) observe(l *coordinationv1.Lease, deleted, regressed bool, now time.Time) {
	rv, err := parseRV(l)
	if err != nil {
		n.e.log.Error(err, "ignoring a Lease", "lease", l.Name)
		return
	}
	if regressed && !deleted {
		// The store went back in time: forget what came after, and the hold with it.
		n.rv, n.stale = 0, false
		if h := n.hold; h != nil {
			n.learn(l, rv, now)
			n.lose(h, lossRegressed, "the Lease went back to an older resourceVersion ("+l.ResourceVersion+"): the API server's storage was restored", now)
			if n.interested() {
				n.wake()
			}
			return
		}
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
		renewal := n.renewedElsewhere(l)
		n.learn(l, rv, now)
		if n.name == "" {
			if name := l.Annotations[contract.AnnotationName]; contract.LeaseName(n.kind, name) == n.lease {
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
		} else if h != nil && !n.writing {
			// A version of the held Lease that this side-car did not write (it learns its own
			// writes from their responses, and none is in flight): someone edited it, perhaps
			// its lease duration, which others now count with. The hold can no longer be
			// trusted. (A write of ours that timed out and landed later looks the same; losing
			// the hold then costs availability, never safety.)
			n.lose(h, lossEdited, "the Lease was changed by someone else (resourceVersion "+l.ResourceVersion+")", now)
		}
		if renewal {
			return
		}
	}
	if n.interested() {
		n.wake()
	}
}

// renewedElsewhere reports whether l, a newer version of n's Lease, only renews a hold of
// another side-car that n already knows: same holder, token and lease duration, no local hold,
// and no conflict waiting for a newer version. Such a version changes nothing a running worker
// is waiting for (its timer is set to an expiry that the renewal only postpones: when it fires,
// the worker sees the new one and sleeps again), so the worker is not woken for it: waiters and
// candidates cost one wake-up a lease duration, not one a renewal. Called with n.mu held,
// before l is learnt.
func (n *nameState) renewedElsewhere(l *coordinationv1.Lease) bool {
	o := n.obj
	if o == nil || n.hold != nil || n.stale || !n.running || !n.synced {
		return false
	}
	h := holderOf(l)
	return h != "" && h == holderOf(o) && tokenOf(l) == tokenOf(o) &&
		durationOf(l, n.e.cfg.LeaseDuration) == durationOf(o, n.e.cfg.LeaseDuration)
}

// learn records a newer version of the Lease.
func (n *nameState) learn(l *coordinationv1.Lease, rv uint64, now time.Time) {
	n.obj, n.rv, n.observedAt, n.refused = l, rv, now, nil
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
	if len(n.watchers) == 0 || !n.synced {
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

// watchExpiry returns when a watched Lease held elsewhere expires, so watchers are told.
func (n *nameState) watchExpiry(now time.Time) time.Time {
	if len(n.watchers) == 0 || n.obj == nil || holderOf(n.obj) == "" || n.hold != nil {
		return time.Time{}
	}
	if exp := n.expiry(); !now.After(exp) {
		return exp.Add(time.Nanosecond)
	}
	return time.Time{}
}

// Observation is what this side-car last saw of the Lease of a lock or election.
type Observation struct {
	// ResourceVersion is that version's resourceVersion.
	ResourceVersion string
	// Holder is its spec.holderIdentity, "" when the Lease is free.
	Holder string
	// ObservedAt is when this side-car first saw that version, on the Engine's clock.
	ObservedAt time.Time
	// Expiry is when this side-car takes a holder that stopped renewing for gone: ObservedAt
	// plus the Lease's duration. It is the same for a hold of this side-car, which knows its
	// own holds better (see the package documentation, "Lost before stolen").
	Expiry time.Time
}

// Observe returns what this side-car knows of the Lease of lock or election name, and false
// when it knows of no such Lease. It fails with wire.CodeUnavailable until the Engine has
// synced, and for a Lease that belongs to another name.
func (e *Engine) Observe(kind wire.Kind, name string) (Observation, bool, error) {
	if err := wire.ValidateName(name); err != nil {
		return Observation{}, false, wire.Errorf(wire.CodeInvalidName, "invalid %s name: %v", kind, err)
	}
	if !e.synced.Load() {
		return Observation{}, false, e.accepting()
	}
	n, err := e.readName(kind, name)
	if err != nil || n == nil {
		return Observation{}, false, err
	}
	defer n.mu.Unlock()
	if n.obj == nil {
		return Observation{}, false, nil
	}
	return Observation{ResourceVersion: n.obj.ResourceVersion, Holder: holderOf(n.obj), ObservedAt: n.observedAt, Expiry: n.expiry()}, true, nil
}
