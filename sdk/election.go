package sdk

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/metaparticle-io/sync/wire"
)

// An Election is a candidacy in the leader election of a name, for its Client's session, and a
// view of who leads it. At most one session leads a name at a time; when the leader's session
// ends or the side-car cannot renew its leadership, another candidate is elected.
//
// An Election is safe for concurrent use by multiple goroutines; Run may be called again after it
// returned. Create Elections with NewElection or Client.NewElection; the zero value is not usable.
type Election struct {
	c         *Client
	name      string
	onElected func(context.Context)
	onLost    func()

	mu      sync.Mutex // protects the fields below
	running bool
	s       *session // the session this Election stands on; nil when not standing
	leading bool     // the side-car last said this session leads s...
	token   uint64   // ... with this token
	// resigned is the token of the last term given up by Resign: a late elected event for it
	// must not start it again.
	resigned    uint64
	hasResigned bool
	term        *term         // the term whose elected function runs; nil when none
	notify      chan struct{} // capacity 1: the state above changed
	// pending is the token of an elected event that no keep-alive has confirmed yet.
	pending    uint64
	hasPending bool
	until      time.Time   // leadership is trusted until then (zero: no validity known)
	expiry     *time.Timer // deposes at until
}

// term is one tenure of leadership as the elected function sees it.
type term struct {
	token  uint64
	cancel context.CancelCauseFunc
	done   chan struct{} // closed when the elected function returned
}

type tokenKey struct{}

// LeaderToken returns the fencing token of the term whose context ctx is (or derives from), as
// given to an elected function. Like a lock's token, it only grows from one term to the next:
// pass it with every write that only the leader may make.
func LeaderToken(ctx context.Context) (uint64, bool) {
	t, ok := ctx.Value(tokenKey{}).(uint64)
	return t, ok
}

// NewElection returns a candidacy in the election of the given name on DefaultClient: see
// Client.NewElection.
func NewElection(name string, elected func(ctx context.Context), lost func()) *Election {
	return DefaultClient().NewElection(name, elected, lost)
}

// NewElection returns a candidacy in the election of the given name, for c's session. Run calls
// elected when this session becomes the leader, with a context that is cancelled the moment
// leadership is lost; after elected has returned and leadership is lost, Run calls lost. Either
// function may be nil; an Election used only to read or follow the leader needs neither. It does
// no I/O; an invalid name is reported by Run, Leader and Watch.
func (c *Client) NewElection(name string, elected func(ctx context.Context), lost func()) *Election {
	return &Election{c: c, name: name, onElected: elected, onLost: lost, notify: make(chan struct{}, 1)}
}

// Name returns the election's name.
func (e *Election) Name() string { return e.name }

// Run stands as a candidate until ctx ends, then leaves the election and returns nil.
//
// Each time this session is elected, Run calls the elected function in a new goroutine with a
// context that carries the term's token (LeaderToken) and is cancelled the moment the side-car
// reports that leadership is lost, Resign gives it up or the session ends, with a cause matching
// ErrLost, or when ctx ends, with ctx's cause. When leadership is lost, Run waits for the elected
// function to return, then calls the lost function, and goes on standing: a replica that lost
// leadership can be elected again. The elected function may return before leadership is lost;
// the lost function is still called when it is. It must return promptly once its context is
// cancelled: until it does, Run neither calls the lost function nor, when ctx ends, leaves the
// election, so that no other candidate is elected while it still works.
//
// If the session ends, Run opens a new one and stands again. Run returns an error matching
// ErrRunning if this Election, or another of the same name on the same Client, is already running,
// ErrClosed if the Client is closed, and the error of a call that failed for good (an invalid
// name, a side-car unreachable for longer than the retry timeout).
func (e *Election) Run(ctx context.Context) error {
	if err := e.c.usable(); err != nil {
		return e.errorf("running", err)
	}
	if err := wire.ValidateName(e.name); err != nil {
		return fmt.Errorf("running election: invalid name: %w", err)
	}
	e.mu.Lock()
	if e.running {
		e.mu.Unlock()
		return e.errorf("running", ErrRunning)
	}
	e.running = true
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		e.running = false
		e.mu.Unlock()
	}()

	var t *term
	defer func() {
		if t != nil {
			e.endTerm(t, context.Cause(ctx))
		}
	}()
	bo := e.c.newBackoff()
	for {
		if ctx.Err() != nil {
			return nil
		}
		s, err := e.c.session(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return e.errorf("running", err)
		}
		if err := e.stand(ctx, s); err != nil {
			switch {
			case ctx.Err() != nil:
				return nil
			case errors.Is(err, errSessionEnded):
				sleep(ctx, bo.next())
				continue
			default:
				return e.errorf("running", err)
			}
		}
		bo = e.c.newBackoff()
		t = e.follow(ctx, s, t)
		if ctx.Err() != nil {
			if t != nil {
				e.endTerm(t, context.Cause(ctx))
				t = nil
			}
			e.leave(ctx, s)
			return nil
		}
		// The session ended and follow ended its term: stand again on a new session, after a
		// pause so that a session that keeps ending does not spin.
		sleep(ctx, bo.next())
	}
}

// stand registers e on s and tells the side-car it stands.
func (e *Election) stand(ctx context.Context, s *session) error {
	s.mu.Lock()
	if !s.alive() {
		s.mu.Unlock()
		return errSessionEnded
	}
	if other := s.elections[e.name]; other != nil && other != e {
		s.mu.Unlock()
		return fmt.Errorf("%w: another Election of this name runs on this Client; a Client is one candidate", ErrRunning)
	}
	s.elections[e.name] = e
	e.mu.Lock()
	e.s, e.leading, e.token = s, false, 0
	e.mu.Unlock()
	s.mu.Unlock()

	rctx, cancel := s.bind(ctx)
	defer cancel()
	_, err := e.c.do(rctx, request{method: http.MethodPut, path: wire.SessionElectionPath(s.id, e.name), secret: s.secret})
	if err == nil {
		return nil
	}
	e.unregister(s)
	switch {
	case code(err) == wire.CodeNoSession:
		s.end(fmt.Errorf("the side-car no longer knows the session: %v", err))
		return errSessionEnded
	case errors.Is(context.Cause(rctx), errSessionEnded):
		return errSessionEnded
	}
	return err
}

// follow starts and ends terms as the side-car reports leadership on s, until ctx or s ends. It
// returns the term still running, if any: only when ctx ended.
func (e *Election) follow(ctx context.Context, s *session, t *term) *term {
	for {
		e.mu.Lock()
		leading, token := e.leading && e.s == s, e.token
		e.mu.Unlock()
		if t != nil && (!leading || token != t.token) {
			e.endTerm(t, nil)
			t = nil
			continue
		}
		if t == nil && leading && ctx.Err() == nil {
			t = e.startTerm(ctx, s, token)
		}
		if !s.alive() && t == nil {
			return nil
		}
		select {
		case <-e.notify:
		case <-ctx.Done():
			return t
		case <-s.ctx.Done():
		}
	}
}

// startTerm starts the elected function for the term of token, if the side-car still says so.
func (e *Election) startTerm(ctx context.Context, s *session, token uint64) *term {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.leading || e.s != s || e.token != token {
		return nil
	}
	tctx, cancel := context.WithCancelCause(context.WithValue(ctx, tokenKey{}, token))
	t := &term{token: token, cancel: cancel, done: make(chan struct{})}
	e.term = t
	go func() {
		defer close(t.done)
		if e.onElected != nil {
			e.onElected(tctx)
		}
	}()
	return t
}

// endTerm cancels t (if nothing has yet), waits for its elected function and calls the lost
// function.
func (e *Election) endTerm(t *term, cause error) {
	if cause == nil {
		cause = fmt.Errorf("%w: election %q (token %d): leadership ended", ErrLost, e.name, t.token)
	}
	t.cancel(cause)
	<-t.done
	e.mu.Lock()
	if e.term == t {
		e.term = nil
	}
	e.mu.Unlock()
	if e.onLost != nil {
		e.onLost()
	}
}

// leave unregisters e from s and tells the side-car it no longer stands. If the side-car cannot
// be told, the session is ended, which withdraws the candidacy.
func (e *Election) leave(ctx context.Context, s *session) {
	e.unregister(s)
	if !s.alive() {
		return
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	_, err := e.c.do(dctx, request{method: http.MethodDelete, path: wire.SessionElectionPath(s.id, e.name), secret: s.secret})
	if err != nil && code(err) != wire.CodeNotFound && code(err) != wire.CodeNotHeld {
		s.end(fmt.Errorf("could not leave election %q: %v", e.name, err))
	}
}

func (e *Election) unregister(s *session) {
	s.mu.Lock()
	if s.elections[e.name] == e {
		delete(s.elections, e.name)
	}
	e.mu.Lock()
	if e.s == s {
		e.s, e.leading = nil, false
	}
	e.mu.Unlock()
	s.mu.Unlock()
}

// elected is called by s, holding s.mu, when the side-car says s leads with token.
func (e *Election) elected(s *session, token uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.electedLocked(s, token)
}

func (e *Election) electedLocked(s *session, token uint64) {
	if e.s != s || (e.hasResigned && token <= e.resigned) {
		return
	}
	if e.term != nil && e.term.token != token {
		e.term.cancel(fmt.Errorf("%w: election %q: term %d replaced by term %d", ErrLost, e.name, e.term.token, token))
	}
	e.leading, e.token = true, token
	e.signal()
}

// electedUnconfirmed is called by s, holding s.mu, for an elected event that carries a
// validity: the term waits for a keep-alive to confirm it (see confirmed).
func (e *Election) electedUnconfirmed(s *session, token uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.s != s || (e.hasResigned && token <= e.resigned) {
		return
	}
	e.pending, e.hasPending = token, true
}

// confirmed is called by s, holding s.mu, when a keep-alive confirmed that s leads with token
// until the given time: a pending term starts, a running one is trusted until then.
func (e *Election) confirmed(s *session, token uint64, until time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.s != s {
		return
	}
	switch {
	case e.hasPending && e.pending == token:
		e.hasPending = false
		e.electedLocked(s, token)
	case e.leading && e.token == token:
	default:
		return
	}
	if !e.leading || e.token != token || !until.After(e.until) {
		return
	}
	e.until = until
	if e.expiry != nil {
		e.expiry.Stop()
	}
	e.expiry = time.AfterFunc(time.Until(until), func() { e.expired(s, token) })
}

// expired runs when the leadership with token was not confirmed again before its validity ran
// out. As for a lock, the session ends: that deposes it here and, once the side-car sees the
// session end, there too, so that another candidate can lead.
func (e *Election) expired(s *session, token uint64) {
	e.mu.Lock()
	leads := e.s == s && e.leading && e.token == token
	e.mu.Unlock()
	if leads {
		s.end(fmt.Errorf("the side-car did not confirm the leadership of election %q (token %d) before its validity ran out", e.name, token))
	}
}

// deposed is called by s, holding s.mu, when the side-car says s no longer leads.
func (e *Election) deposed(s *session, token uint64, tokenOK bool, reason string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.s != s {
		return
	}
	if tokenOK && e.leading && token < e.token {
		return // about an earlier term; tokens only grow
	}
	if e.hasPending && (!tokenOK || token >= e.pending) {
		e.hasPending = false
	}
	e.stopExpiry()
	e.leading = false
	if e.term != nil {
		e.term.cancel(fmt.Errorf("%w: election %q (token %d): deposed: %s", ErrLost, e.name, e.term.token, orUnknown(reason)))
	}
	e.signal()
}

// stopExpiry forgets the validity of the current leadership. Called with e.mu held.
func (e *Election) stopExpiry() {
	if e.expiry != nil {
		e.expiry.Stop()
		e.expiry = nil
	}
	e.until = time.Time{}
}

// sessionEnded is called by s, holding s.mu, when it ends.
func (e *Election) sessionEnded(s *session, cause error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.s != s {
		return
	}
	e.hasPending = false
	e.stopExpiry()
	e.s, e.leading = nil, false
	if e.term != nil {
		e.term.cancel(fmt.Errorf("%w: election %q (token %d): session %s ended: %v", ErrLost, e.name, e.term.token, s.id, cause))
	}
	e.signal()
}

// signal wakes follow. e.mu must be held.
func (e *Election) signal() {
	select {
	case e.notify <- struct{}{}:
	default:
	}
}

// Resign gives up leadership and stays a candidate: it cancels the elected function's context,
// waits for the function to return, and asks the side-car to elect another candidate (this one
// may be elected again, for instance if it is the only one). It fails with ErrNotHeld if this
// Election does not lead. If the side-car cannot be told, Resign ends the Client's session, which
// deposes it, and returns the error.
func (e *Election) Resign(ctx context.Context) error {
	e.mu.Lock()
	s, t := e.s, e.term
	if s == nil || !e.leading {
		e.mu.Unlock()
		return e.errorf("resigning", fmt.Errorf("%w: not the leader", ErrNotHeld))
	}
	e.leading = false
	e.resigned, e.hasResigned = e.token, true
	if t != nil {
		t.cancel(fmt.Errorf("%w: election %q (token %d): resigned", ErrLost, e.name, t.token))
	}
	e.signal()
	e.mu.Unlock()
	if t != nil {
		select {
		case <-t.done:
		case <-ctx.Done():
			s.end(fmt.Errorf("resigning election %q: %v", e.name, ctx.Err()))
			return e.errorf("resigning", ctx.Err())
		}
	}
	rctx, cancel := s.bind(ctx)
	defer cancel()
	_, err := e.c.do(rctx, request{method: http.MethodPost, path: wire.SessionResignPath(s.id, e.name), secret: s.secret})
	switch {
	case err == nil, code(err) == wire.CodeNotHeld:
		return nil
	case code(err) == wire.CodeNoSession, errors.Is(context.Cause(rctx), errSessionEnded):
		s.end(fmt.Errorf("the session ended while resigning: %v", err))
		return nil
	default:
		s.end(fmt.Errorf("could not resign election %q: %v", e.name, err))
		return e.errorf("resigning", fmt.Errorf("%w; ended the session instead, which deposes it", err))
	}
}

// Leader describes the leader of an election.
type Leader struct {
	// Holder is the leader's identity, "<pod>/<session>"; empty when nobody leads.
	Holder string
	// Token is the fencing token of the leader's term; 0 for the moment between a candidate
	// winning the Lease and the side-car recording the term's token.
	Token uint64
	// Since is when the leader was elected; zero if the side-car did not say.
	Since time.Time
}

// Leader returns the current leader as the side-car last observed it. It needs no candidacy and
// opens no session.
func (e *Election) Leader(ctx context.Context) (Leader, error) {
	if err := e.c.usable(); err != nil {
		return Leader{}, e.errorf("reading the leader of", err)
	}
	if err := wire.ValidateName(e.name); err != nil {
		return Leader{}, fmt.Errorf("reading the leader of election: invalid name: %w", err)
	}
	var st wire.ElectionState
	path := wire.ElectionPath(e.name)
	if _, err := e.c.do(ctx, request{method: http.MethodGet, path: path, out: &st}); err != nil {
		return Leader{}, e.errorf("reading the leader of", err)
	}
	l, err := leaderOf(st)
	if err != nil {
		return Leader{}, e.errorf("reading the leader of", &malformedError{method: http.MethodGet, path: path, err: err})
	}
	return l, nil
}

func (l Leader) same(o Leader) bool {
	return l.Holder == o.Holder && l.Token == o.Token && l.Since.Equal(o.Since)
}

func leaderOf(st wire.ElectionState) (Leader, error) {
	if !st.Held || st.Holder == "" {
		return Leader{}, nil
	}
	l := Leader{Holder: st.Holder}
	if st.Token != "" { // empty while the side-car records the new term's token
		tok, err := strconv.ParseUint(st.Token, 10, 64)
		if err != nil {
			return Leader{}, fmt.Errorf("fencing token %q is not a decimal uint64", st.Token)
		}
		l.Token = tok
	}
	if st.AcquireTime != nil {
		l.Since = *st.AcquireTime
	}
	return l, nil
}

// Watch calls fn with the current leader, then again each time the leader, its token or its start
// time changes, until ctx ends; it then returns nil. fn is called from Watch's goroutine, one call
// at a time. A stream that ends or breaks is reopened; changes that happened meanwhile are seen as
// one change to the latest leader. Watch needs no candidacy and opens no session. It returns an
// error if the side-car stays unreachable for longer than the retry timeout, refuses the request,
// or sends a line that is not an election state.
func (e *Election) Watch(ctx context.Context, fn func(Leader)) error {
	if err := e.c.usable(); err != nil {
		return e.errorf("watching", err)
	}
	if err := wire.ValidateName(e.name); err != nil {
		return fmt.Errorf("watching election: invalid name: %w", err)
	}
	path := wire.ElectionWatchPath(e.name)
	var last *Leader
	bo := e.c.newBackoff()
	for {
		resp, err := e.c.do(ctx, request{method: http.MethodGet, path: path, stream: true})
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return e.errorf("watching", err)
		}
		r := newNDJSONReader(ctx, resp.Body)
		for r.next() {
			var st wire.ElectionState
			err := r.decode(&st)
			var l Leader
			if err == nil {
				l, err = leaderOf(st)
			}
			if err != nil {
				err = &malformedError{method: http.MethodGet, path: path, err: err, data: r.line()}
				r.close()
				return e.errorf("watching", err)
			}
			bo = e.c.newBackoff()
			if last == nil || !last.same(l) {
				last = &l
				fn(l)
			}
		}
		// The stream ended (cleanly, broken or with a line too long): reopen it after a pause,
		// unless ctx ended.
		r.close()
		if !sleep(ctx, bo.next()) {
			return nil
		}
	}
}

func (e *Election) errorf(verb string, err error) error {
	return fmt.Errorf("%s election %q: %w", verb, e.name, err)
}
