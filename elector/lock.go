package elector

import (
	"context"
	"slices"
	"time"

	"github.com/metaparticle-io/sync/wire"
)

// ---- Locks ----

// Acquire takes lock name for session k. See wire.AcquireRequest: with Try it makes one
// attempt; otherwise it waits, in FIFO order among this side-car's waiters, until the lock is
// held, TimeoutMillis passes (wire.CodeNotAcquired) or ctx ends (the client went away; a grant
// that races with it is released).
func (e *Engine) Acquire(ctx context.Context, k wire.SessionKey, name string, req wire.AcquireRequest) (wire.Grant, error) {
	if err := checkAcquire(name, req); err != nil {
		return wire.Grant{}, err
	}
	s, err := e.session(k)
	if err != nil {
		return wire.Grant{}, err
	}
	if err := e.accepting(); err != nil {
		return wire.Grant{}, err
	}
	n, err := e.lockName(wire.KindLock, name)
	if err != nil {
		return wire.Grant{}, err
	}
	c, err := n.enqueueLock(s, req.Try, e.clock.Now())
	n.mu.Unlock()
	if err != nil {
		return wire.Grant{}, err
	}

	var timeout <-chan time.Time
	if req.TimeoutMillis > 0 {
		t := e.clock.NewTimer(time.Duration(req.TimeoutMillis) * time.Millisecond)
		defer t.Stop()
		timeout = t.C()
	}
	select {
	case r := <-c.reply:
		if r.err == nil && ctx.Err() != nil {
			// The client went away as the grant arrived: nobody will learn of it.
			n.releaseGrant(s, r.grant, "the client went away as the lock was granted")
			return wire.Grant{}, wire.Errorf(wire.CodeNotAcquired, "the client went away")
		}
		return r.grant, r.err
	case <-timeout:
		return n.withdraw(c, "timeout", false)
	case <-ctx.Done():
		return n.withdraw(c, "cancelled", true)
	case <-e.ctx.Done():
		return wire.Grant{}, wire.Errorf(wire.CodeShuttingDown, "the side-car stopped")
	}
}

// checkAcquire validates an acquire request.
func checkAcquire(name string, req wire.AcquireRequest) error {
	if err := wire.ValidateName(name); err != nil {
		return wire.Errorf(wire.CodeInvalidName, "invalid lock name: %v", err)
	}
	return req.Validate()
}

// Release releases lock name held by session k, clearing the Lease's holder so that the next
// waiter anywhere takes it at once. A non-empty token names the hold (wire.QueryToken): when the
// session's hold has another token, nothing changes and the error is wire.CodeNotHeld. It
// returns when the Lease has been written (or the write has been given up; the Lease then
// expires by itself).
func (e *Engine) Release(ctx context.Context, k wire.SessionKey, name, token string) error {
	return e.holdOp(ctx, wire.KindLock, k, name, func(n *nameState, s *session, now time.Time) (<-chan struct{}, error) {
		return n.releaseLock(s, token, now)
	})
}

type acquireResult struct {
	grant wire.Grant
	err   error
}

// ---- Locks ----

// enqueueLock adds a lock waiter for s.
func (n *nameState) enqueueLock(s *session, try bool, now time.Time) (*contender, error) {
	if h := n.hold; h != nil && h.s == s && !h.release {
		return nil, wire.Errorf(wire.CodeAlreadyHeld, "session %s already holds lock %q (token %s)", s.id, n.name, h.grant.Token)
	}
	if try && (len(n.queue) > 0 || (n.hold != nil && n.hold.s != s)) {
		n.e.m.waits.WithLabelValues(string(n.kind), "failed").Inc()
		return nil, wire.Errorf(wire.CodeNotAcquired, "lock %q is held or awaited by another session of this Pod", n.name)
	}
	if max := n.e.cfg.Limits.MaxPendingAcquires; n.e.pending.Load() >= int64(max) {
		return nil, wire.Errorf(wire.CodeTooMany, "the side-car has %d lock acquires waiting, its limit (--max-pending-acquires): try again later, or raise the limit", max)
	}
	if err := s.addInterest(n); err != nil {
		return nil, err
	}
	c := &contender{s: s, since: now, try: try, reply: make(chan acquireResult, 1)}
	n.queue = append(n.queue, c)
	n.e.pending.Add(1)
	n.wake()
	return c, nil
}

// answer ends lock waiter c's wait with a result and removes it from the queue.
func (n *nameState) answer(c *contender, g wire.Grant, err error, result string) {
	if c.answered {
		return
	}
	c.answered = true
	n.e.pending.Add(-1)
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
			return wire.Grant{}, wire.Errorf(wire.CodeNotAcquired, "the client went away")
		}
		return wire.Grant{}, wire.Errorf(wire.CodeNotAcquired, "lock %q was not acquired within the timeout", n.name)
	}
	r := <-c.reply
	if gone && r.err == nil {
		n.releaseGrantLocked(c.s, r.grant, "the client went away as the lock was granted")
		return wire.Grant{}, wire.Errorf(wire.CodeNotAcquired, "the client went away")
	}
	return r.grant, r.err
}

// ReleaseGrant releases grant g of lock name, held by session k, because its client could not
// be told of it (the transport could not deliver the answer). Unlike Release it does not wait
// for the write, and it does nothing when the session no longer holds that very grant.
func (e *Engine) ReleaseGrant(k wire.SessionKey, name string, g wire.Grant) {
	s, err := e.session(k)
	if err != nil {
		return // an ended session has released everything
	}
	n, err := e.peekName(wire.KindLock, name)
	if err != nil || n == nil {
		return
	}
	n.releaseGrantLocked(s, g, "the grant could not be delivered to the client")
	n.mu.Unlock()
}

// releaseGrant releases s's hold if it is grant g.
func (n *nameState) releaseGrant(s *session, g wire.Grant, why string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.releaseGrantLocked(s, g, why)
}

// releaseGrantLocked is releaseGrant with n.mu held. The session is sent a lost event first:
// its client did not ask for the release, and may have learnt of the grant after all.
func (n *nameState) releaseGrantLocked(s *session, g wire.Grant, why string) {
	if h := n.hold; h != nil && h.s == s && !h.release && h.grant.Token == g.Token {
		n.e.log.Info("releasing a grant its client did not receive", "name", n.name, "session", s.id, "token", g.Token, "reason", why)
		n.e.m.losses.WithLabelValues(string(n.kind), lossUndelivered).Inc()
		n.post(s, wire.Event{Type: wire.EventLost, Kind: n.kind, Grant: ptr(h.grant), Reason: why})
		n.requestRelease(h, why, n.e.clock.Now())
	}
}

// releaseLock releases s's hold, if it has token (any token when it is "").
func (n *nameState) releaseLock(s *session, token string, now time.Time) (<-chan struct{}, error) {
	h := n.hold
	if h == nil || h.s != s || h.release {
		return nil, wire.Errorf(wire.CodeNotHeld, "session %s does not hold lock %q", s.id, n.name)
	}
	if token != "" && token != h.grant.Token {
		return nil, wire.Errorf(wire.CodeNotHeld, "session %s holds lock %q with token %s, not %s: that hold has ended", s.id, n.name, h.grant.Token, token)
	}
	return n.requestRelease(h, "released by the client", now), nil
}

// failWaiters ends every lock wait with err (elections keep their candidates and retry).
func (n *nameState) failWaiters(err error, result string) {
	if n.kind != wire.KindLock {
		return
	}
	for _, c := range append([]*contender(nil), n.queue...) {
		n.answer(c, wire.Grant{}, err, result)
	}
}
