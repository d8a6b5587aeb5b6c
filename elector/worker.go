package elector

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/wire"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"
)

// The worker of a name is the only goroutine that writes its Lease. It loops:
//
//  1. Under the name's lock, plan the next write from the state: release or renew the local
//     hold, or grant the Lease to the first eligible local contender; or, if there is nothing
//     to write now, compute when there might be (the next renewal, the renew deadline, the
//     expiry of another holder's Lease, the end of a resigner's pause).
//  2. Without the lock, do the write: a conditional Update based on the version the plan saw,
//     or a Create.
//  3. Under the lock, apply the result: record the new version, grant, or note a conflict and
//     wait for the informer to deliver the version that won.
//  4. With nothing to write, sleep until woken (an input changed the state) or until the time
//     computed in step 1. The worker never polls the API server: waiting for a Lease held
//     elsewhere costs nothing until the watch reports a change or the Lease expires.
//
// The worker exits when nothing local depends on the name any more.

type op int

const (
	opCreate  op = iota // create the absent Lease for a contender, then stamp its token
	opTake              // take over a free or expired Lease for a contender
	opRenew             // renew the local hold
	opRelease           // clear the holder of the local hold
)

func (o op) String() string {
	return [...]string{"create", "take", "renew", "release"}[o]
}

func (o op) verb() string {
	if o == opCreate {
		return "create"
	}
	return "update"
}

// action is one planned write.
type action struct {
	op       op
	c        *contender            // create, take: the contender it is for
	h        *hold                 // renew, release: the hold
	base     *coordinationv1.Lease // take, renew, release: a copy of the version it is based on
	baseRV   uint64                // the resourceVersion known when planning
	floor    uint64                // create: the highest token granted here before; the new one must exceed it
	start    time.Time
	deadline time.Time // the write is abandoned at this time
}

// result is the outcome of an action.
type result struct {
	obj   *coordinationv1.Lease // the version written (or created, if stamping failed)
	token uint64
	err   error
}

// errFatal marks errors that retrying cannot fix.
var errFatal = errors.New("fatal")

// belowFloor is the error of a grant refused because its token would not exceed one already
// granted by this side-car.
func belowFloor(floor, token uint64) error {
	return fmt.Errorf("%w: %w", errBelowFloor, wire.Errorf(wire.CodeUnavailable, "the API server's resourceVersions went backwards (was etcd restored from a backup?): this grant's token would be %d, "+
		"but this side-car already granted token %d for the name, and tokens must only grow. The name is refused until its Lease's versions pass %d (see docs/api.md, Restoring etcd)",
		token, floor, floor))
}

// errBelowFloor marks belowFloor's errors.
var errBelowFloor = errors.New("token below the floor")

// isRefusal reports the errors with which the Engine refuses to grant a name for good (until
// its Lease changes): a foreign Lease, a token below the floor.
func isRefusal(err error) bool {
	return wire.CodeOf(err) == wire.CodeForeignLease || errors.Is(err, errBelowFloor)
}

// refuse fails the lock waiters of n with err, a refusal, and answers every acquire with it
// until a retry period has passed or the Lease changes.
func (n *nameState) refuse(err error, now time.Time) {
	n.retryAt, n.refused, n.failed = now.Add(n.e.cfg.RetryPeriod), err, nil
	n.e.log.Error(err, "refusing to grant", "kind", n.kind, "name", n.name, "lease", n.lease)
	n.failWaiters(err, "failed")
}

// foreign checks, after a Create answered AlreadyExists (exists), whether the existing Lease of
// the name is one the side-car manages. It returns exists if it is (or if it cannot tell), and
// otherwise a wire.CodeForeignLease error that names the Lease and the fix. It lists by name:
// the side-car's Role grants list, not get.
func (n *nameState) foreign(ctx context.Context, exists error) error {
	l, err := n.e.getLease(ctx, n.lease)
	if err != nil || l == nil {
		return exists
	}
	if l.Labels[contract.LabelManagedBy] == contract.ManagedByValue && l.Labels[contract.LabelKind] == string(n.kind) {
		return exists
	}
	return wire.Errorf(wire.CodeForeignLease, "Lease %s/%s, where %s %q lives, exists but is not labelled %s=%s and %s=%s: it was made by something else, or its labels were removed by hand, "+
		"so this side-car cannot see its changes and will not use it. Delete it (kubectl delete lease -n %s %s) once nothing uses it, and the next acquire creates it afresh",
		n.e.cfg.Namespace, n.lease, n.kind, n.name, contract.LabelManagedBy, contract.ManagedByValue, contract.LabelKind, n.kind, n.e.cfg.Namespace, n.lease)
}

func (n *nameState) run() {
	defer signal(n.e.workerExited)
	var timer clock.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		now := n.e.clock.Now()
		n.mu.Lock()
		a, wake := n.plan(now)
		if a == nil && !n.interested() {
			n.running = false
			removable := n.obj == nil
			n.mu.Unlock()
			if removable {
				n.e.maybeRemove(n)
			}
			return
		}
		n.mu.Unlock()

		if a != nil {
			n.mu.Lock()
			n.writing = true
			n.mu.Unlock()
			r := n.do(a)
			n.mu.Lock()
			n.writing = false
			n.apply(a, r, n.e.clock.Now())
			n.mu.Unlock()
			continue
		}

		var fire <-chan time.Time
		if !wake.IsZero() {
			timer = n.e.clock.NewTimer(wake.Sub(now))
			fire = timer.C()
		}
		select {
		case <-n.kick:
		case <-fire:
		case <-n.e.ctx.Done():
			n.mu.Lock()
			n.running = false
			n.mu.Unlock()
			return
		}
		if timer != nil {
			timer.Stop()
			timer = nil
		}
	}
}

// plan returns the next write, or when to look again (zero: only when woken). A returned wake
// time is always after now.
func (n *nameState) plan(now time.Time) (*action, time.Time) {
	if !n.synced {
		// The first list wakes the worker. Until then tries are answered with its failure, or
		// when it has taken firstListWait; blocking acquires and candidates wait, as they do
		// through any API trouble.
		return nil, n.answerTriesUnlisted(now)
	}
	n.publish(now)
	cfg := n.e.cfg

	// 1. The local hold: lose it at its renew deadline, release it, or renew it.
	if h := n.hold; h != nil {
		deadline := h.renewStart.Add(cfg.RenewDeadline)
		switch {
		case n.obj == nil:
			n.lose(h, lossDeleted, "the Lease was deleted", now)
		case !now.Before(deadline):
			n.lose(h, lossDeadline, fmt.Sprintf("could not renew the Lease within the renew deadline (%s after the last successful write)", cfg.RenewDeadline), now)
		case now.Before(h.next):
			return nil, earliest(h.next, deadline)
		case h.release:
			return &action{op: opRelease, h: h, base: n.obj.DeepCopy(), baseRV: n.rv, start: now, deadline: deadline}, time.Time{}
		default:
			return &action{op: opRenew, h: h, base: n.obj.DeepCopy(), baseRV: n.rv, start: now, deadline: deadline}, time.Time{}
		}
		if n.hold != nil {
			return nil, time.Time{} // unreachable: lose cleared it
		}
	}

	// 2. No local hold: offer the Lease to the first eligible contender.
	for {
		c, wake := n.eligible(now)
		if c == nil {
			return nil, earliest(wake, n.watchExpiry(now))
		}
		if err := n.mismatch(n.kind, n.name); err != nil {
			n.failWaiters(err, "failed")
			n.e.log.Error(err, "refusing to use a Lease", "kind", n.kind, "name", n.name, "lease", n.lease)
			return nil, wake
		}
		if n.refused != nil && now.Before(n.retryAt) && n.kind == wire.KindLock {
			n.answer(c, wire.Grant{}, n.refused, "failed")
			continue
		}
		if n.stale || now.Before(n.retryAt) {
			if c.try && !n.stale && n.failed != nil {
				n.answer(c, wire.Grant{}, n.failed, "failed") // the trouble, not "taken"
				continue
			}
			if c.try {
				n.answer(c, wire.Grant{}, wire.Errorf(wire.CodeNotAcquired, "lock %q is being taken by someone else", n.name), "failed")
				continue
			}
			if n.stale {
				if n.goneFromCache(n.rv) {
					// Deleted after a version this side-car learned only from its own write,
					// while its watch was down: no event will ever say so.
					n.obj, n.stale = nil, false
					n.publish(now)
					continue
				}
				// The informer will deliver the version that won; look at its cache again
				// after a retry period, in case its watch is down and the Lease is gone.
				return nil, earliest(wake, now.Add(cfg.RetryPeriod))
			}
			return nil, earliest(wake, n.retryAt)
		}
		if n.obj == nil {
			return &action{op: opCreate, c: c, baseRV: n.rv, floor: n.e.createFloor(n.lease), start: now, deadline: now.Add(cfg.RenewDeadline)}, time.Time{}
		}
		if n.free(now, c) {
			if floor := n.e.issuedFloor(n.lease); n.rv+1 <= floor {
				n.refuse(belowFloor(floor, n.rv+1), now)
				if n.kind != wire.KindLock {
					return nil, earliest(wake, n.retryAt) // candidates stay and try again
				}
				continue // every waiter was answered
			}
			return &action{op: opTake, c: c, base: n.obj.DeepCopy(), baseRV: n.rv, start: now, deadline: now.Add(cfg.RenewDeadline)}, time.Time{}
		}
		if c.try {
			n.answer(c, wire.Grant{}, wire.Errorf(wire.CodeNotAcquired, "lock %q is held by %q", n.name, holderOf(n.obj)), "failed")
			continue
		}
		return nil, earliest(wake, n.expiry().Add(time.Nanosecond))
	}
}

// eligible returns the first contender that may take the Lease now, and otherwise the earliest
// time one becomes eligible. Lock waiters are served strictly in arrival order. Contenders of
// ended sessions are passed over: their session's end removes them soon (after its stream is
// told, on shutdown), and a grant to them would only be given back, again and again until then.
func (n *nameState) eligible(now time.Time) (*contender, time.Time) {
	var wake time.Time
	for _, c := range n.queue {
		if c.s.hasEnded() {
			continue
		}
		if n.kind == wire.KindLock {
			return c, time.Time{}
		}
		if c.notBefore.After(now) {
			wake = earliest(wake, c.notBefore)
			continue
		}
		return c, wake
	}
	return nil, wake
}

// free reports whether contender c may take the Lease now (there is no local hold): it has no
// holder; or its holder is c's own session, which was told it lost it; or this side-car has not
// seen it change for its lease duration. Another session of this side-car whose hold was lost
// is treated like a foreign Pod: it was told "lost" at its renew deadline, and the lease duration
// that others wait out keeps that notice ahead of any new grant.
func (n *nameState) free(now time.Time, c *contender) bool {
	holder := holderOf(n.obj)
	if holder == "" || holder == c.s.holder {
		return true
	}
	return now.After(n.expiry())
}

// do performs a write. It runs without n.mu.
func (n *nameState) do(a *action) result {
	ctx, cancel := context.WithTimeout(n.e.ctx, a.deadline.Sub(a.start))
	defer cancel()
	cfg := n.e.cfg
	leases := n.e.leases
	switch a.op {
	case opCreate:
		// The token of a created Lease is its creation revision, which only the API server
		// knows: create with the holder set, then stamp the token with a conditional Update.
		// The grant counts only once both succeeded.
		l := newLease(cfg.Namespace, n.lease, n.kind, n.name, a.c.s.holder, a.start, cfg.LeaseDuration)
		n.e.stampPod(l, a.c.s)
		created, err := leases.Create(ctx, l, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			// The informer knows no Lease of that name, yet one exists: either the informer
			// lags (the winner's version is on its way), or the Lease is not one the informer
			// can see, so nobody here would ever be woken.
			return result{err: n.foreign(ctx, err)}
		}
		if err != nil {
			return result{err: err}
		}
		token, err := parseRV(created)
		if err != nil {
			return result{obj: created, err: fmt.Errorf("%w: %v", errFatal, err)}
		}
		if token <= a.floor {
			// The store went back in time (etcd restored): this token was granted before.
			// Give the Lease back at once rather than grant it again.
			released, rerr := leases.Update(ctx, releaseLease(created.DeepCopy(), a.start), metav1.UpdateOptions{})
			if rerr != nil {
				released = created
			}
			return result{obj: released, err: belowFloor(a.floor, token)}
		}
		stamped, err := leases.Update(ctx, stampToken(created.DeepCopy(), token), metav1.UpdateOptions{})
		if err != nil {
			return result{obj: created, err: fmt.Errorf("writing the fencing token of a created Lease: %w", err)}
		}
		return result{obj: stamped, token: token}
	case opTake:
		rv, err := parseRV(a.base)
		if err != nil {
			return result{err: fmt.Errorf("%w: %v", errFatal, err)}
		}
		token := rv + 1
		l := takeLease(a.base, n.kind, n.name, a.c.s.holder, token, a.start, cfg.LeaseDuration)
		n.e.stampPod(l, a.c.s)
		updated, err := leases.Update(ctx, l, metav1.UpdateOptions{})
		return result{obj: updated, token: token, err: err}
	case opRenew:
		updated, err := n.e.renewals.Update(ctx, renewLease(a.base, a.start, cfg.LeaseDuration), metav1.UpdateOptions{})
		return result{obj: updated, err: err}
	case opRelease:
		updated, err := leases.Update(ctx, releaseLease(a.base, a.start), metav1.UpdateOptions{})
		return result{obj: updated, err: err}
	}
	return result{err: fmt.Errorf("unknown op %v", a.op)}
}

// apply records the result of a.
func (n *nameState) apply(a *action, r result, now time.Time) {
	n.e.noteWrite(r.err)
	if r.obj != nil && r.obj.Name != "" {
		if rv, err := parseRV(r.obj); err == nil && rv > n.rv {
			n.learn(r.obj, rv, now)
		}
	}
	if r.err != nil {
		switch {
		case apierrors.IsConflict(r.err), apierrors.IsAlreadyExists(r.err):
			// Someone else wrote first; the informer will deliver their version.
			if n.rv <= a.baseRV {
				n.stale, n.staleRV = true, a.baseRV
			}
		case apierrors.IsNotFound(r.err):
			if n.rv <= a.baseRV {
				n.obj = nil
			}
		}
	}
	log := n.e.log.WithValues("kind", n.kind, "name", n.name, "lease", n.lease)
	switch a.op {
	case opCreate, opTake:
		if r.err == nil {
			n.refused = nil
			n.granted(a, r.token, now)
			return
		}
		n.grantFailed(a, r.err, now)
	case opRenew:
		h := a.h
		if n.hold != h {
			return
		}
		if r.err == nil {
			h.renewStart, h.next = a.start, a.start.Add(n.e.cfg.RenewPeriod)
			if h.release {
				h.next = now // a release was asked for while the renew was in flight
			}
			n.e.m.renewTime.WithLabelValues(string(n.kind)).Observe(now.Sub(a.start).Seconds())
			log.V(2).Info("renewed", "session", h.s.id, "token", h.grant.Token)
			return
		}
		n.e.m.renewFailures.WithLabelValues(string(n.kind)).Inc()
		switch {
		case apierrors.IsConflict(r.err):
			n.lose(h, lossConflict, "the Lease was changed by someone else: "+r.err.Error(), now)
		case apierrors.IsNotFound(r.err):
			n.lose(h, lossDeleted, "the Lease was deleted", now)
		default:
			h.next = now.Add(n.e.cfg.RetryPeriod)
			if h.release {
				h.next = now // release now rather than retry the renew
			}
			log.Error(r.err, "renewing failed; retrying until the renew deadline", "session", h.s.id, "token", h.grant.Token,
				"deadline", h.renewStart.Add(n.e.cfg.RenewDeadline))
		}
	case opRelease:
		h := a.h
		if n.hold != h {
			return
		}
		if r.err == nil || apierrors.IsConflict(r.err) || apierrors.IsNotFound(r.err) {
			n.dropHold(h)
			log.Info("released", "session", h.s.id, "token", h.grant.Token, "reason", h.reason)
			return
		}
		h.next = now.Add(n.e.cfg.RetryPeriod)
		log.Error(r.err, "releasing failed; retrying until the renew deadline, after which the Lease expires by itself", "session", h.s.id, "token", h.grant.Token)
	}
}

// granted makes a's contender the holder.
func (n *nameState) granted(a *action, token uint64, now time.Time) {
	c := a.c
	h := &hold{
		s:          c.s,
		renewStart: a.start,
		next:       a.start.Add(n.e.cfg.RenewPeriod),
		grant:      wire.Grant{Name: n.name, Lease: n.lease, Token: formatToken(token), Holder: c.s.holder},
		released:   make(chan struct{}),
	}
	n.hold = h
	n.retryAt = time.Time{}
	n.e.recordIssued(n.lease, token)
	n.e.m.grants.WithLabelValues(string(n.kind)).Inc()
	n.e.m.waitTime.WithLabelValues(string(n.kind)).Observe(now.Sub(c.since).Seconds())
	log := n.e.log.WithValues("kind", n.kind, "name", n.name, "lease", n.lease, "session", c.s.id, "token", h.grant.Token)

	wanted := !c.s.hasEnded()
	found := false
	for _, x := range n.queue {
		found = found || x == c
	}
	if !wanted || !found {
		// The contender went away during the write: give the Lease back.
		log.Info("granted to a contender that went away; releasing")
		n.requestRelease(h, "the contender went away during the grant", now)
		return
	}
	g := h.grant
	g.ValidForMillis = n.validFor(h, now)
	if n.kind == wire.KindLock {
		log.Info("lock acquired", "waited", now.Sub(c.since))
		n.answer(c, g, nil, "granted")
		for _, x := range append([]*contender(nil), n.queue...) {
			if x.s == c.s {
				n.answer(x, wire.Grant{}, wire.Errorf(wire.CodeAlreadyHeld, "session %s already holds lock %q (token %s)", c.s.id, n.name, h.grant.Token), "failed")
			}
		}
		return
	}
	h.c = c
	log.Info("elected", "waited", now.Sub(c.since))
	n.post(c.s, wire.Event{Type: wire.EventElected, Kind: n.kind, Grant: ptr(g)})
}

// grantFailed handles a failed create or take.
func (n *nameState) grantFailed(a *action, err error, now time.Time) {
	log := n.e.log.WithValues("kind", n.kind, "name", n.name, "lease", n.lease, "session", a.c.s.id)
	conflict := apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) || apierrors.IsNotFound(err)
	switch {
	case isRefusal(err):
		if a.op == opCreate && errors.Is(err, errBelowFloor) {
			// The floor came from forgotten names (createFloor): the takeovers of the Lease
			// just given back must be held to it too.
			n.e.recordIssued(n.lease, a.floor)
		}
		n.refuse(err, now)
	case conflict:
		log.V(1).Info("lost a race for the Lease; waiting for the winner's version", "op", a.op)
	case apierrors.IsForbidden(err):
		// Like any other API trouble: blocking acquires keep waiting (RBAC may be fixed, and
		// their sessions are told they are degraded); a try is answered below.
		n.retryAt, n.failed = now.Add(n.e.cfg.RetryPeriod), n.e.apiErr(a.op.verb(), err)
		log.Error(err, "RBAC forbids writing the Lease; retrying", "op", a.op, "retryAt", n.retryAt)
	case errors.Is(err, errFatal):
		n.retryAt, n.failed = now.Add(n.e.cfg.RetryPeriod), wire.Errorf(wire.CodeInternal, "%v", err)
		log.Error(err, "cannot grant")
		n.failWaiters(n.failed, "failed")
	default:
		n.retryAt, n.failed = now.Add(n.e.cfg.RetryPeriod), wire.Errorf(wire.CodeUnavailable, "could not write the Lease: %v", err)
		log.Error(err, "writing the Lease failed; retrying", "op", a.op, "retryAt", n.retryAt)
	}
	if c := a.c; c.try && !c.answered {
		switch {
		case isRefusal(err):
			n.answer(c, wire.Grant{}, err, "failed")
		case conflict:
			n.answer(c, wire.Grant{}, wire.Errorf(wire.CodeNotAcquired, "lock %q was taken by someone else first", n.name), "failed")
		default:
			n.answer(c, wire.Grant{}, n.failed, "failed") // the trouble just recorded
		}
	}
}

// lose ends hold h involuntarily and tells its session, unless the session had already given
// it up.
func (n *nameState) lose(h *hold, reason, msg string, now time.Time) {
	n.dropHold(h)
	log := n.e.log.WithValues("kind", n.kind, "name", n.name, "lease", n.lease, "session", h.s.id, "token", h.grant.Token)
	if h.release {
		log.Info("gave up releasing", "reason", msg)
		return
	}
	n.e.m.losses.WithLabelValues(string(n.kind), reason).Inc()
	ev := wire.Event{Type: wire.EventLost, Kind: n.kind, Grant: ptr(h.grant), Reason: msg}
	if n.kind == wire.KindElection {
		ev.Type = wire.EventDeposed
		if h.c != nil {
			h.c.since = now
		}
	}
	n.post(h.s, ev)
	log.Info("hold lost", "reason", msg)
}

// dropHold forgets the local hold.
func (n *nameState) dropHold(h *hold) {
	n.hold = nil
	close(h.released)
	n.forgetIfIdle(h.s)
}

// earliest returns the earlier of two times, ignoring zero times.
func earliest(a, b time.Time) time.Time {
	switch {
	case a.IsZero():
		return b
	case b.IsZero() || a.Before(b):
		return a
	}
	return b
}
