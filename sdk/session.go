package sdk

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/metaparticle-io/sync/wire"
)

// A session is one session with the side-car, from its opening to its end. It ends, exactly once,
// when its event stream breaks, reports it closed or sends what the SDK cannot use (a malformed
// line, a loss or an election event without its grant, an election token that is not a number),
// when the side-car does not acknowledge a keep-alive or stays silent for too long, when a request
// says the side-car no longer knows it, when a lock or an election cannot be given up otherwise
// (Release, Resign, leaving an election or undoing an abandoned acquire failed: ending the session
// gives them up), or when the Client is closed. Ending reports every hold lost before anything
// else happens.
type session struct {
	c      *Client
	id     string
	secret string // sent with every call on the session; never logged
	ttl    time.Duration
	// every is how often keep-alives go out: what the side-car asked for (often enough to
	// confirm each hold's validity in time), and at most a third of the TTL.
	every time.Duration
	// confirmNow (capacity 1) asks the keep-alive loop for a keep-alive at once, to confirm
	// the validity of a leadership that an event reported.
	confirmNow chan struct{}

	// ctx ends, with the reason as its cause, when the session ends: requests made for the
	// session are abandoned and its keep-alives stop. Only markEnded cancels it, holding mu,
	// once every hold has been reported lost: to a holder of mu, alive says whether the session
	// has ended and cause why.
	ctx    context.Context
	cancel context.CancelCauseFunc
	// conn ends when the session's connections are closed (the event stream, whose closing ends
	// the session at the side-car): after ctx once the session is open; while it opens, the
	// caller's context or the wait for the ready event may end conn first, which fails the
	// opening.
	conn      context.Context
	closeConn context.CancelCauseFunc
	wg        sync.WaitGroup // the stream reader and the keep-alive loop

	// degraded is the API trouble the side-car last reported on the stream (EventDegraded), or
	// nil: none, or it reported EventRecovered.
	degraded atomic.Pointer[wire.Error]

	mu        sync.Mutex // protects locks, elections and the two timers; orders the end of ctx
	locks     map[string]*lockEntry
	elections map[string]*Election
	silence   *time.Timer // ends the session when the event stream is silent for too long
	unacked   *time.Timer // ends the session when no keep-alive is acknowledged for too long
}

// lockEntry is this session's use of a lock name, from the start of an acquire to the end of the
// hold. While it exists, no other acquire of the name may start on the session.
type lockEntry struct {
	hold      *hold // nil while acquiring
	releasing bool  // Release is telling the side-car; losses no longer matter
	// While acquiring, losses reported for the name: a grant with a token at most lostUpTo (or
	// any grant, if lostAny) is already lost when it arrives.
	lostUpTo uint64
	lostAny  bool
}

// deadline returns how long the SDK trusts the session without hearing from the side-car: three
// quarters of its TTL, leaving a quarter for the side-car's own timing, so that holds are
// reported lost before the side-car can end the session and hand them to someone else.
func (s *session) deadline() time.Duration { return s.ttl * 3 / 4 }

// openSession opens a session and its event stream, and returns once the stream said ready.
func (c *Client) openSession(ctx context.Context) (*session, error) {
	var sent time.Time // the session's TTL runs from (after) then
	var ws wire.Session
	req := wire.OpenSessionRequest{TTLMillis: c.cfg.ttl.Milliseconds(), Client: c.label}
	if _, err := c.do(ctx, request{method: http.MethodPost, path: wire.PathSessions, body: req, out: &ws, sent: &sent}); err != nil {
		return nil, fmt.Errorf("opening a session: %w", err)
	}
	if ws.ID == "" || ws.TTLMillis <= 0 {
		return nil, fmt.Errorf("opening a session: %w", &malformedError{method: http.MethodPost, path: wire.PathSessions,
			err: fmt.Errorf("session id %q, ttlMillis %d", ws.ID, ws.TTLMillis)})
	}
	s := &session{
		c: c, id: ws.ID, secret: ws.Secret, ttl: time.Duration(ws.TTLMillis) * time.Millisecond,
		locks: map[string]*lockEntry{}, elections: map[string]*Election{}, confirmNow: make(chan struct{}, 1),
	}
	s.every = s.ttl / 3
	if ka := time.Duration(ws.KeepAliveMillis) * time.Millisecond; ka > 0 {
		s.every = min(s.every, ka)
	}
	s.ctx, s.cancel = context.WithCancelCause(context.Background())
	s.conn, s.closeConn = context.WithCancelCause(context.Background())
	// Until the stream says ready, the caller's context bounds the wait; so does the retry
	// timeout plus one attempt, in case the caller's context has no deadline and the side-car
	// never speaks.
	stopCaller := context.AfterFunc(ctx, func() { s.closeConn(ctx.Err()) })
	readyWait := c.cfg.retryTimeout + attemptTimeout
	readyTimer := time.AfterFunc(readyWait, func() {
		s.closeConn(fmt.Errorf("no ready event on the event stream within %s", readyWait))
	})
	events, err := s.openStream()
	readyTimer.Stop()
	if !stopCaller() || err != nil {
		if err == nil {
			err = context.Cause(s.conn)
		}
		s.cancel(err)
		s.closeConn(err)
		// The stream's connection is closed, which ends the session; say so anyway, in case it
		// never opened.
		dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer dcancel()
		_, _ = c.do(dctx, request{method: http.MethodDelete, path: wire.SessionPath(s.id), secret: s.secret, noRetry: true})
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("opening the event stream of session %s: %w", s.id, err)
	}
	// Both timers are set under s.mu, which markEnded takes to stop them: either may fire at
	// once.
	s.mu.Lock()
	s.silence = time.AfterFunc(s.deadline(), func() {
		s.end(fmt.Errorf("the side-car sent nothing on the event stream for %s (session TTL %s)", s.deadline(), s.ttl))
	})
	s.unacked = time.AfterFunc(s.deadline()-time.Since(sent), func() {
		s.end(fmt.Errorf("no keep-alive acknowledged for %s (session TTL %s)", s.deadline(), s.ttl))
	})
	s.mu.Unlock()
	s.wg.Add(2)
	go s.read(events)
	go s.keepAlive(sent)
	return s, nil
}

// openStream opens the event stream and reads its first event, which must be ready.
func (s *session) openStream() (*ndjsonReader, error) {
	resp, err := s.c.do(s.conn, request{method: http.MethodGet, path: wire.SessionEventsPath(s.id), secret: s.secret, stream: true})
	if err != nil {
		return nil, err
	}
	r := newNDJSONReader(s.conn, resp.Body) // closed when conn ends
	if !r.next() {
		if r.err() == errEndOfStream {
			return nil, errors.New("the stream ended before its ready event")
		}
		return nil, r.err()
	}
	var ev wire.Event
	if err := r.decode(&ev); err != nil || ev.Type != wire.EventReady {
		return nil, fmt.Errorf("first event %q is not %q", snippet(r.line()), wire.EventReady)
	}
	return r, nil
}

// read follows the event stream until it ends, then ends the session.
func (s *session) read(r *ndjsonReader) {
	defer s.wg.Done()
	for r.next() {
		s.heard()
		var ev wire.Event
		if err := r.decode(&ev); err != nil {
			s.end(fmt.Errorf("malformed event %q: %v", snippet(r.line()), err))
			return
		}
		switch ev.Type {
		case wire.EventLost, wire.EventDeposed:
			s.dispatchLoss(ev)
		case wire.EventElected:
			s.dispatchElected(ev)
		case wire.EventClosed:
			s.end(fmt.Errorf("the side-car closed the session: %s", orUnknown(ev.Reason)))
			return
		case wire.EventDegraded:
			s.degraded.Store(&wire.Error{Code: cmp.Or(ev.Code, wire.CodeUnavailable), Message: orUnknown(ev.Reason)})
		case wire.EventRecovered:
			s.degraded.Store(nil)
		}
		// ready, ping and types this SDK does not know carry nothing to act on.
	}
	s.end(fmt.Errorf("the event stream broke: %v", r.err()))
}

// keepAlive extends the session, and confirms the validity of its holds, every s.every (and
// at once when confirmNow is signalled) until it ends.
func (s *session) keepAlive(lastSent time.Time) {
	defer s.wg.Done()
	every := s.every
	bo := s.c.newBackoff()
	next := lastSent.Add(every)
	for s.waitKeepAlive(next) {
		sent := time.Now()
		ctx, cancel := context.WithTimeout(s.ctx, s.deadline())
		var resp wire.KeepAliveResponse
		_, err := s.c.do(ctx, request{method: http.MethodPost, path: wire.SessionKeepAlivePath(s.id), secret: s.secret, noRetry: true, out: &resp})
		cancel()
		switch {
		case err == nil:
			s.acked(sent)
			s.confirm(sent, resp)
			bo = s.c.newBackoff()
			next = sent.Add(every)
		case code(err) == wire.CodeNoSession:
			s.end(fmt.Errorf("the side-car no longer knows the session: %v", err))
			return
		default:
			// Try again soon; the unacked timer ends the session if this goes on.
			next = time.Now().Add(min(bo.next(), every))
		}
	}
}

// waitKeepAlive waits until next or until a keep-alive is asked for at once, and reports false
// when the session ended first.
func (s *session) waitKeepAlive(next time.Time) bool {
	t := time.NewTimer(time.Until(next))
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.confirmNow:
	case <-s.ctx.Done():
		return false
	}
	return s.alive()
}

// confirm extends the validity of every hold that the keep-alive sent at sent confirmed: each
// stays trusted until sent plus the validity the side-car gave it, which is no later than the
// side-car's own deadline for it, since the side-car measured it after sent.
func (s *session) confirm(sent time.Time, resp wire.KeepAliveResponse) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.alive() {
		return
	}
	for _, hv := range resp.Holds {
		tok, err := strconv.ParseUint(hv.Token, 10, 64)
		if err != nil {
			continue
		}
		until := sent.Add(time.Duration(hv.ValidForMillis) * time.Millisecond)
		switch hv.Kind {
		case wire.KindLock:
			if le := s.locks[hv.Name]; le != nil && le.hold != nil && le.hold.token == tok {
				h, name := le.hold, hv.Name
				h.trustUntil(until, func() { s.unconfirmed(name, h) })
			}
		case wire.KindElection:
			if e := s.elections[hv.Name]; e != nil {
				e.confirmed(s, tok, until)
			}
		}
	}
}

// unconfirmed handles hold h of lock name, whose validity ran out before the side-car confirmed
// it again: the side-car may be paused or cut off, and may no longer hold it. The session ends,
// which reports every hold lost here and, once the side-car sees it, releases them there (a
// release of this one alone could not name which hold it means).
func (s *session) unconfirmed(name string, h *hold) {
	s.mu.Lock()
	le := s.locks[name]
	current := le != nil && le.hold == h && !le.releasing
	s.mu.Unlock()
	if current {
		s.end(fmt.Errorf("the side-car did not confirm lock %q (token %d) before its validity ran out", name, h.token))
	}
}

// confirmOnce sends a keep-alive now and applies the validity it confirms.
func (s *session) confirmOnce(ctx context.Context) {
	sent := time.Now()
	ctx, cancel := context.WithTimeout(ctx, s.deadline())
	defer cancel()
	var resp wire.KeepAliveResponse
	if _, err := s.c.do(ctx, request{method: http.MethodPost, path: wire.SessionKeepAlivePath(s.id), secret: s.secret, noRetry: true, out: &resp}); err == nil {
		s.acked(sent)
		s.confirm(sent, resp)
	}
}

// askConfirm asks the keep-alive loop for a keep-alive at once.
func (s *session) askConfirm() {
	select {
	case s.confirmNow <- struct{}{}:
	default:
	}
}

// heard notes that the side-car spoke on the event stream.
func (s *session) heard() {
	s.mu.Lock()
	if s.alive() {
		s.silence.Reset(s.deadline())
	}
	s.mu.Unlock()
}

// acked notes that a keep-alive sent at sent was acknowledged.
func (s *session) acked(sent time.Time) {
	s.mu.Lock()
	if s.alive() {
		s.unacked.Reset(s.deadline() - time.Since(sent))
	}
	s.mu.Unlock()
}

// alive reports whether the session has not ended (see ctx).
func (s *session) alive() bool { return s.ctx.Err() == nil }

// end ends the session for cause, if it has not ended, and closes its connections: see
// markEnded. It does not wait for the session's goroutines, which may be the caller.
func (s *session) end(cause error) {
	s.markEnded(cause)
	s.closeConn(s.cause())
}

// markEnded ends the session for cause without closing its connections: every hold is reported
// lost, every election deposed, requests made for the session are abandoned and the Client
// forgets it. It reports whether this call ended it.
func (s *session) markEnded(cause error) bool {
	s.mu.Lock()
	if !s.alive() {
		s.mu.Unlock()
		return false
	}
	if s.silence != nil {
		s.silence.Stop()
	}
	if s.unacked != nil {
		s.unacked.Stop()
	}
	locks, elections := s.locks, s.elections
	s.locks, s.elections = nil, nil
	// Report within the lock, so that no grant registers after the losses are told.
	for name, le := range locks {
		if le.hold != nil && !le.releasing {
			le.hold.end(fmt.Errorf("%w: lock %q (token %d): session %s ended: %v", ErrLost, name, le.hold.token, s.id, cause))
		}
	}
	for _, e := range elections {
		e.sessionEnded(s, cause)
	}
	s.cancel(cause) // last, so that whoever it wakes finds every hold reported lost
	s.mu.Unlock()
	s.c.forget(s)
	return true
}

// stop ends the session for cause if it has not ended, closes its connections and waits for its
// goroutines. The side-car ends a session whose event stream closes.
func (s *session) stop(cause error) {
	s.end(cause)
	s.wg.Wait()
}

// cause returns why the session ended, or nil.
func (s *session) cause() error { return context.Cause(s.ctx) }

// bind returns a context that ends with ctx or with the session, whichever ends first; its
// cause is errSessionEnded in the second case.
func (s *session) bind(ctx context.Context) (context.Context, context.CancelFunc) {
	bctx, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(s.ctx, func() { cancel(errSessionEnded) })
	return bctx, func() { stop(); cancel(context.Canceled) }
}

// dispatchLoss handles a lost or deposed event.
func (s *session) dispatchLoss(ev wire.Event) {
	if ev.Grant == nil {
		// A loss that names nothing: on doubt, everything is lost.
		s.end(fmt.Errorf("the side-car reported a %s without naming it: %s", ev.Type, orUnknown(ev.Reason)))
		return
	}
	name := ev.Grant.Name
	tok, tokErr := strconv.ParseUint(ev.Grant.Token, 10, 64)
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.alive() {
		return
	}
	if ev.Kind == wire.KindElection || (ev.Kind == "" && ev.Type == wire.EventDeposed) {
		if e := s.elections[name]; e != nil {
			e.deposed(s, tok, tokErr == nil, ev.Reason)
		}
		return
	}
	le := s.locks[name]
	if le == nil || le.releasing {
		return
	}
	if le.hold == nil {
		if tokErr != nil {
			le.lostAny = true
		} else {
			le.lostUpTo = max(le.lostUpTo, tok)
		}
		return
	}
	if tokErr == nil && tok < le.hold.token {
		return // about an earlier hold of the name; tokens only grow
	}
	delete(s.locks, name)
	le.hold.end(fmt.Errorf("%w: lock %q (token %d): %s", ErrLost, name, le.hold.token, orUnknown(ev.Reason)))
}

// dispatchElected handles an elected event.
func (s *session) dispatchElected(ev wire.Event) {
	if ev.Grant == nil {
		s.end(errors.New("the side-car reported an election without naming it"))
		return
	}
	tok, err := strconv.ParseUint(ev.Grant.Token, 10, 64)
	if err != nil {
		s.end(fmt.Errorf("the side-car reported election %q with token %q: %v", ev.Grant.Name, ev.Grant.Token, err))
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.alive() {
		return
	}
	if e := s.elections[ev.Grant.Name]; e != nil {
		if ev.Grant.ValidForMillis > 0 {
			// An event is not anchored in time: it may have waited in a paused side-car. The
			// term starts when a keep-alive, sent after now, confirms it and its validity.
			e.electedUnconfirmed(s, tok)
			s.askConfirm()
			return
		}
		e.elected(s, tok) // an older side-car, which gives no validity
	}
}

func orUnknown(reason string) string {
	if reason == "" {
		return "no reason given"
	}
	return reason
}
