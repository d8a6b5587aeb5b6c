package elector

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/metaparticle-io/sync/wire"
	"k8s.io/utils/clock"
)

// maxQueuedEvents bounds the events queued for a session whose client does not read its event
// stream. A session that overflows it is ended: its client cannot be told what happened to its
// holds, so it must not keep them.
const maxQueuedEvents = 1024

// session is one client of the side-car (an SDK instance in a process). It owns holds, lock
// waits and election candidacies, all of which end when it ends.
type session struct {
	id     string
	secret string // the session's credential; compared in constant time, never logged
	holder string // "<pod>/<id>", the Lease holder identity of its holds
	client string // free-form label from the client, for logs
	ttl    time.Duration
	opts   SessionOptions

	notify  chan struct{} // capacity 1: signalled when events are queued or the session ends
	flushed chan struct{} // closed once the event stream has written EventClosed

	mu        sync.Mutex          // protects the fields below
	ended     bool                // set once, by Engine.endSession
	endReason string              // why it ended, for EventClosed and errors
	endCode   wire.ErrorCode      // error code for calls racing with the end
	gen       uint64              // keep-alive generation: a timer of an older generation is stale
	expiry    clock.Timer         // ends the session when no keep-alive arrives in time
	streaming bool                // an event stream is attached
	events    []wire.Event        // queued for the event stream
	interests map[*nameState]bool // names where it holds, waits or stands
}

// ---- Sessions ----

// SessionOptions are settings of a session that its client does not choose: the transport that
// opens it on the client's behalf does. The zero value is a version-1 session's.
type SessionOptions struct {
	// OutlivesShutdown keeps the session, and its holds, through Shutdown until the session is
	// closed or expires (its TTL without a keep-alive), or until Shutdown's context ends, when
	// the Engine stops without releasing them and they expire after their lease duration. It is
	// for clients that can learn of a loss only in the answer to their next request (the
	// original protocol): the transport tells them there, then closes the session. Without it,
	// Shutdown ends the session and tells the client on its event stream before releasing.
	OutlivesShutdown bool
	// Polled says the client learns of a loss only in the answer to its next request (the
	// original protocol), never from an event stream: its holds are never released early by
	// the next side-car of the Pod (restart.go), however it runs.
	Polled bool
}

// OpenSession opens a session for a client. See wire.OpenSessionRequest.
func (e *Engine) OpenSession(req wire.OpenSessionRequest) (wire.Session, error) {
	return e.OpenSessionWith(req, SessionOptions{})
}

// OpenSessionWith is OpenSession with options.
func (e *Engine) OpenSessionWith(req wire.OpenSessionRequest, opts SessionOptions) (wire.Session, error) {
	ttl := wire.DefaultSessionTTL
	if req.TTLMillis != 0 {
		ttl = time.Duration(req.TTLMillis) * time.Millisecond
		if req.TTLMillis < wire.MinSessionTTL.Milliseconds() || req.TTLMillis > wire.MaxSessionTTL.Milliseconds() {
			return wire.Session{}, wire.Errorf(wire.CodeInvalidTimeout, "ttlMillis %d is out of range: use 0 for the default (%d) or a value within [%d, %d]",
				req.TTLMillis, wire.DefaultSessionTTL.Milliseconds(), wire.MinSessionTTL.Milliseconds(), wire.MaxSessionTTL.Milliseconds())
		}
	}
	if err := e.accepting(); err != nil {
		return wire.Session{}, err
	}
	// The ID is public (it is part of the Lease holder identity); the secret, 256 random bits,
	// is the credential, returned once and never logged.
	var b [16 + 32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return wire.Session{}, wire.Errorf(wire.CodeInternal, "generating a session ID: %v", err)
	}
	id := hex.EncodeToString(b[:16])
	s := &session{
		id:        id,
		secret:    hex.EncodeToString(b[16:]),
		holder:    e.cfg.PodName + "/" + id,
		client:    req.Client,
		ttl:       ttl,
		opts:      opts,
		notify:    make(chan struct{}, 1),
		flushed:   make(chan struct{}),
		interests: map[*nameState]bool{},
	}
	e.dmu.Lock()
	e.smu.Lock()
	if e.closing.Load() {
		e.smu.Unlock()
		e.dmu.Unlock()
		return wire.Session{}, wire.Errorf(wire.CodeShuttingDown, "the side-car is shutting down")
	}
	if max := e.cfg.Limits.MaxSessions; len(e.sessions) >= max {
		e.smu.Unlock()
		e.dmu.Unlock()
		return wire.Session{}, wire.Errorf(wire.CodeTooMany, "the side-car has %d sessions open, its limit (--max-sessions): close the sessions that are not used, or raise the limit", max)
	}
	e.sessions[id] = s
	e.smu.Unlock()
	e.tellDegraded(s)
	e.dmu.Unlock()
	s.mu.Lock()
	s.expiry = e.clock.AfterFunc(ttl, e.expireFunc(s, 0))
	s.mu.Unlock()
	e.log.Info("session opened", "session", id, "holder", s.holder, "client", req.Client, "ttl", ttl)
	// Keep-alives must come often enough for the session (a third of its TTL) and for its
	// holds: a renewed hold is valid for at least RenewDeadline - RenewPeriod.
	every := min(ttl/3, (e.cfg.RenewDeadline-e.cfg.RenewPeriod)/2)
	return wire.Session{ID: id, Secret: s.secret, Holder: s.holder, TTLMillis: ttl.Milliseconds(), KeepAliveMillis: every.Milliseconds()}, nil
}

// expireFunc returns the keep-alive timer function of generation gen of s. It ends the session
// in a goroutine of its own: fake clocks run timer functions while holding their lock, and
// ending a session stops its timer.
func (e *Engine) expireFunc(s *session, gen uint64) func() {
	return func() {
		go func() {
			s.mu.Lock()
			stale := s.gen != gen
			s.mu.Unlock()
			if !stale {
				e.endSession(s, fmt.Sprintf("no keep-alive within its TTL of %s", s.ttl), wire.CodeNoSession)
			}
		}()
	}
}

// session returns the open session that k names, if k carries its secret. The secret is
// compared in constant time; a wrong one is refused before anything is looked at or changed.
func (e *Engine) session(k wire.SessionKey) (*session, error) {
	e.smu.Lock()
	s := e.sessions[k.ID]
	e.smu.Unlock()
	if s == nil {
		if e.closing.Load() {
			return nil, wire.Errorf(wire.CodeShuttingDown, "the side-car is shutting down")
		}
		return nil, wire.Errorf(wire.CodeNoSession, "no session %q: it was never opened, or it ended (closed, its event stream closed, or no keep-alive within its TTL)", k.ID)
	}
	if k.Secret == "" {
		return nil, wire.Errorf(wire.CodeUnauthorized, "a call on session %s needs the session's secret (%s: Bearer <secret>, as returned when the session was opened)", k.ID, wire.HeaderAuthorization)
	}
	if subtle.ConstantTimeCompare([]byte(k.Secret), []byte(s.secret)) != 1 {
		return nil, wire.Errorf(wire.CodeUnauthorized, "the secret given for session %s is not its secret: only the client that opened a session can use it", k.ID)
	}
	return s, nil
}

// KeepAlive extends the life of session k by its TTL.
func (e *Engine) KeepAlive(k wire.SessionKey) (wire.KeepAliveResponse, error) {
	s, err := e.session(k)
	if err != nil {
		return wire.KeepAliveResponse{}, err
	}
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return wire.KeepAliveResponse{}, s.endErr()
	}
	s.gen++
	s.expiry.Stop()
	s.expiry = e.clock.AfterFunc(s.ttl, e.expireFunc(s, s.gen))
	names := make([]*nameState, 0, len(s.interests))
	for n := range s.interests {
		names = append(names, n)
	}
	s.mu.Unlock()
	// Lock order: a nameState's mu before a session's; s.mu is not held here.
	resp := wire.KeepAliveResponse{Holds: []wire.HoldValidity{}}
	now := e.clock.Now()
	for _, n := range names {
		n.mu.Lock()
		if h := n.hold; h != nil && h.s == s && !h.release {
			resp.Holds = append(resp.Holds, wire.HoldValidity{Kind: n.kind, Name: n.name, Token: h.grant.Token, ValidForMillis: n.validFor(h, now)})
		}
		n.mu.Unlock()
	}
	slices.SortFunc(resp.Holds, func(a, b wire.HoldValidity) int {
		return cmp.Or(cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Name, b.Name))
	})
	return resp, nil
}

// CloseSession ends session k, releasing all its holds.
func (e *Engine) CloseSession(k wire.SessionKey) error {
	s, err := e.session(k)
	if err != nil {
		return err
	}
	e.endSession(s, "closed by the client", wire.CodeNoSession)
	return nil
}

// StreamEvents writes session k's events with emit: wire.EventReady first, then lost, elected,
// deposed and ping events, and wire.EventClosed last if the session ends. It returns when the
// session ends, when emit fails, or when ctx ends; in the last two cases it ends the session,
// because a client that stops reading its stream is taken for dead. A session has at most one
// stream at a time (wire.CodeAlreadyHeld otherwise).
func (e *Engine) StreamEvents(ctx context.Context, k wire.SessionKey, emit func(wire.Event) error) error {
	s, err := e.session(k)
	if err != nil {
		return err
	}
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return s.endErr()
	}
	if s.streaming {
		s.mu.Unlock()
		return wire.Errorf(wire.CodeAlreadyHeld, "session %s already has an event stream; a session has at most one", k.ID)
	}
	s.streaming = true
	s.mu.Unlock()
	return e.stream(ctx, s, emit)
}

// stream writes the session's events with emit until the session ends, ctx ends (the client
// went away), or emit fails. See Engine.StreamEvents.
func (e *Engine) stream(ctx context.Context, s *session, emit func(wire.Event) error) error {
	if err := emit(wire.Event{Type: wire.EventReady}); err != nil {
		e.endSession(s, "event stream write failed: "+err.Error(), wire.CodeNoSession)
		return err
	}
	ping := e.clock.NewTicker(s.ttl / 3)
	defer ping.Stop()
	for {
		s.mu.Lock()
		evs := s.events
		s.events = nil
		s.mu.Unlock()
		for _, ev := range evs {
			if err := emit(ev); err != nil {
				e.endSession(s, "event stream write failed: "+err.Error(), wire.CodeNoSession)
				return err
			}
			if ev.Type == wire.EventClosed {
				close(s.flushed)
				return nil
			}
		}
		select {
		case <-s.notify:
		case <-ping.C():
			if err := emit(wire.Event{Type: wire.EventPing}); err != nil {
				e.endSession(s, "event stream write failed: "+err.Error(), wire.CodeNoSession)
				return err
			}
		case <-ctx.Done():
			e.endSession(s, "event stream closed by the client", wire.CodeNoSession)
			return ctx.Err()
		case <-e.ctx.Done():
			return wire.Errorf(wire.CodeShuttingDown, "side-car stopped")
		}
	}
}

// endSession ends s for reason: its waits fail with code, its candidacies end and its holds are
// released. Idempotent.
func (e *Engine) endSession(s *session, reason string, code wire.ErrorCode) {
	if names, ok := e.closeSession(s, reason, code); ok {
		e.releaseSession(s, names)
	}
}

// closeSession marks s ended and queues EventClosed; it returns the names where s has interests,
// and false when s had ended already. releaseSession must follow.
func (e *Engine) closeSession(s *session, reason string, code wire.ErrorCode) ([]*nameState, bool) {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return nil, false
	}
	s.ended = true
	s.endReason = reason
	s.endCode = code
	if s.expiry != nil {
		s.expiry.Stop()
	}
	names := make([]*nameState, 0, len(s.interests))
	for n := range s.interests {
		names = append(names, n)
	}
	s.interests = nil
	s.events = append(s.events, wire.Event{Type: wire.EventClosed, Reason: reason})
	signal(s.notify)
	s.mu.Unlock()

	e.smu.Lock()
	delete(e.sessions, s.id)
	e.smu.Unlock()
	signal(e.sessionEnded)
	e.log.Info("session ended", "session", s.id, "reason", reason)
	return names, true
}

// releaseSession fails the waits of the ended session s and releases its holds in names.
func (e *Engine) releaseSession(s *session, names []*nameState) {
	for _, n := range names {
		n.sessionEnded(s)
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

// addInterest records that s waits, holds or stands in n. It fails when s has ended or would use
// more names than Limits.MaxNamesPerSession, in which case the caller must not register
// anything for s.
func (s *session) addInterest(n *nameState) error {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return s.endErr()
	}
	defer s.mu.Unlock()
	if max := n.e.cfg.Limits.MaxNamesPerSession; !s.interests[n] && len(s.interests) >= max {
		return wire.Errorf(wire.CodeTooMany, "session %s already holds, waits for or stands in %d names, its limit (--max-names-per-session): release some, or use another session", s.id, max)
	}
	s.interests[n] = true
	return nil
}

// dropInterest forgets n.
func (s *session) dropInterest(n *nameState) {
	s.mu.Lock()
	delete(s.interests, n)
	s.mu.Unlock()
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

// post queues ev for the session's event stream. It reports false when the queue is full.
// Events posted after the session ended are dropped.
func (s *session) post(ev wire.Event) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return true
	}
	if len(s.events) >= maxQueuedEvents {
		return false
	}
	s.events = append(s.events, ev)
	signal(s.notify)
	return true
}

// postHealth queues a degraded or recovered event for s in place of any such event still
// queued: only the latest state matters, so they never fill the queue, even of a session that
// has no event stream to drain it.
func (s *session) postHealth(ev wire.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return
	}
	s.events = slices.DeleteFunc(s.events, func(x wire.Event) bool {
		return x.Type == wire.EventDegraded || x.Type == wire.EventRecovered
	})
	s.events = append(s.events, ev)
	signal(s.notify)
}

// post queues ev for s; a session whose queue overflows is ended (asynchronously: the caller
// holds n.mu, and ending a session takes it).
func (n *nameState) post(s *session, ev wire.Event) { n.e.postOrEnd(s, ev) }

// postOrEnd queues ev for s; a session whose queue overflows is ended (asynchronously: the
// caller may hold locks that ending a session takes).
func (e *Engine) postOrEnd(s *session, ev wire.Event) {
	if !s.post(ev) {
		go e.endSession(s, "its event queue overflowed: the client does not read its event stream", wire.CodeNoSession)
	}
}

// hasStream reports whether an event stream is attached to s.
func (s *session) hasStream() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.streaming
}

// hasEnded reports whether s has ended.
func (s *session) hasEnded() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ended
}

// endErr is the error for calls on s after it ended.
func (s *session) endErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	code := s.endCode
	if code == "" {
		code = wire.CodeNoSession
	}
	return wire.Errorf(code, "session %s ended: %s", s.id, s.endReason)
}

// signal wakes the receiver of a capacity-1 channel without blocking.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
