package elector

import (
	"context"
	"slices"
	"time"

	"github.com/metaparticle-io/sync/wire"
)

// ---- Elections ----

// Join makes session k a candidate in election name and returns the election's state. It
// returns at once; leadership is reported on the session's event stream. Joining twice is
// harmless.
func (e *Engine) Join(k wire.SessionKey, name string) (wire.ElectionState, error) {
	if err := wire.ValidateName(name); err != nil {
		return wire.ElectionState{}, wire.Errorf(wire.CodeInvalidName, "invalid election name: %v", err)
	}
	s, err := e.session(k)
	if err != nil {
		return wire.ElectionState{}, err
	}
	if err := e.accepting(); err != nil {
		return wire.ElectionState{}, err
	}
	n, err := e.lockName(wire.KindElection, name)
	if err != nil {
		return wire.ElectionState{}, err
	}
	defer n.mu.Unlock()
	now := e.clock.Now()
	if err := n.join(s, now); err != nil {
		return wire.ElectionState{}, err
	}
	return n.state(now), nil
}

// Leave ends session k's candidacy in election name, releasing leadership if it leads.
func (e *Engine) Leave(ctx context.Context, k wire.SessionKey, name string) error {
	return e.holdOp(ctx, wire.KindElection, k, name, func(n *nameState, s *session, now time.Time) (<-chan struct{}, error) {
		return n.leave(s, now)
	})
}

// Resign gives up session k's leadership of election name; it stays a candidate, but does not
// contend again for RetryPeriod, so that another candidate takes over.
func (e *Engine) Resign(ctx context.Context, k wire.SessionKey, name string) error {
	return e.holdOp(ctx, wire.KindElection, k, name, func(n *nameState, s *session, now time.Time) (<-chan struct{}, error) {
		return n.resign(s, now)
	})
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
	if err := s.addInterest(n); err != nil {
		return err
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
		return nil, wire.Errorf(wire.CodeNotHeld, "session %s is not a candidate in election %q", s.id, n.name)
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
		return nil, wire.Errorf(wire.CodeNotHeld, "session %s does not lead election %q", s.id, n.name)
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
