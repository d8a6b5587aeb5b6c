package sdk

import (
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

// A Lock is a handle on the distributed lock of a name, held for its Client's session: while it
// is held, no other session, in this Pod or another, holds the same name in the same namespace.
//
// A Lock is safe for concurrent use by multiple goroutines, but it is one hold, not a queue:
// Acquire through a Lock that holds, or is acquiring, fails with ErrHeld, and so does Acquire
// through another Lock of the same name on the same Client. Create Locks with NewLock or
// Client.NewLock; the zero value is not usable.
type Lock struct {
	c    *Client
	name string

	mu sync.Mutex   // protects op and the released flag of h
	op lockOp       // the operation in progress: a second Acquire or Release fails meanwhile
	h  atomic.Value // *hold: the current or last hold; nil before the first
}

type lockOp int

const (
	opNone lockOp = iota
	opAcquiring
	opReleasing
)

// hold is one tenure of a lock, from grant to release or loss.
type hold struct {
	token uint64
	s     *session
	lost  chan struct{} // closed when the hold ends, once err is set

	released bool // Release was called for this hold (guarded by the Lock's mu)

	mu     sync.Mutex  // protects err, the closing of lost, until and expiry
	err    error       // why it ended: nil if released, matching ErrLost if lost
	until  time.Time   // the hold is trusted until then; zero: no validity known (older side-car)
	expiry *time.Timer // calls the expiry function at until
}

// trusted returns until when the hold is trusted; zero when no validity is known.
func (h *hold) trusted() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.until
}

// trustUntil extends the hold's validity to t, if that is later than what it has, and makes
// expired run when it runs out.
func (h *hold) trustUntil(t time.Time, expired func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if isClosed(h.lost) || !t.After(h.until) {
		return
	}
	h.until = t
	if h.expiry != nil {
		h.expiry.Stop()
	}
	h.expiry = time.AfterFunc(time.Until(t), expired)
}

// end ends the hold for err (nil: released) and reports whether this call ended it.
func (h *hold) end(err error) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if isClosed(h.lost) {
		return false
	}
	h.err = err
	close(h.lost)
	if h.expiry != nil {
		h.expiry.Stop()
	}
	return true
}

// ended reports whether the hold ended and why.
func (h *hold) ended() (bool, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return isClosed(h.lost), h.err
}

// isClosed reports whether ch is closed.
func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// closed is the Lost channel of a Lock that holds nothing.
var closed = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// errVoid says a grant arrived already lost; the acquire is tried again.
var errVoid = errors.New("the grant was reported lost as it arrived")

// NewLock returns a handle on the lock of the given name, on DefaultClient. It does no I/O; an
// invalid name is reported by Acquire.
func NewLock(name string) *Lock { return DefaultClient().NewLock(name) }

// NewLock returns a handle on the lock of the given name, held for c's session. It does no I/O;
// an invalid name (see wire.ValidateName) is reported by Acquire.
func (c *Client) NewLock(name string) *Lock { return &Lock{c: c, name: name} }

// Name returns the lock's name.
func (l *Lock) Name() string { return l.name }

// Acquire blocks until the lock is held or ctx ends. The side-car wakes it as soon as the lock is
// released or its holder's session ends; there is no polling. On success, Token returns the new
// hold's fencing token and Lost a channel closed when the hold ends; a hold can be lost at any
// moment, even as Acquire returns, so check Lost rather than assume.
//
// Acquire fails with ErrHeld if the lock is held or being acquired through this Lock or another
// Lock of the same name on the same Client, with ctx's error if ctx ends first (if ctx has a
// deadline, the side-car is told it), and with ErrClosed if the Client is closed. Transient errors
// are retried; a session lost while waiting is replaced and the wait goes on.
func (l *Lock) Acquire(ctx context.Context) error {
	_, err := l.acquire(ctx, false)
	return err
}

// TryAcquire makes one attempt to acquire the lock and reports whether it is now held. It returns
// false and no error when another session holds the lock. Its errors are Acquire's.
func (l *Lock) TryAcquire(ctx context.Context) (bool, error) { return l.acquire(ctx, true) }

func (l *Lock) acquire(ctx context.Context, try bool) (bool, error) {
	if err := l.c.usable(); err != nil {
		return false, l.errorf("acquiring", err)
	}
	if err := wire.ValidateName(l.name); err != nil {
		return false, fmt.Errorf("acquiring lock: invalid name: %w", err)
	}
	l.mu.Lock()
	switch h := l.current(); {
	case l.op == opAcquiring:
		l.mu.Unlock()
		return false, l.errorf("acquiring", fmt.Errorf("%w: another Acquire of this Lock is in progress", ErrHeld))
	case l.op == opReleasing:
		l.mu.Unlock()
		return false, l.errorf("acquiring", fmt.Errorf("%w: a Release of this Lock is in progress", ErrHeld))
	case h != nil:
		if done, _ := h.ended(); !done {
			l.mu.Unlock()
			return false, l.errorf("acquiring", fmt.Errorf("%w: this Lock holds it (token %d); Release it first", ErrHeld, h.token))
		}
	}
	l.op = opAcquiring
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		l.op = opNone
		l.mu.Unlock()
	}()

	bo := l.c.newBackoff()
	for {
		s, err := l.c.session(ctx)
		if err != nil {
			return false, l.errorf("acquiring", err)
		}
		h, err := s.acquire(ctx, l, try)
		switch {
		case err == nil && h != nil:
			l.h.Store(h)
			return true, nil
		case err == nil:
			return false, nil
		case errors.Is(err, errVoid) && try:
			return false, nil
		case errors.Is(err, errSessionEnded), errors.Is(err, errVoid):
			if !sleep(ctx, bo.next()) {
				return false, l.errorf("acquiring", ctx.Err())
			}
		default:
			return false, l.errorf("acquiring", err)
		}
	}
}

// acquire asks the side-car for the lock on this session. It returns the hold; nil and no error
// when a try found the lock held elsewhere; errSessionEnded or errVoid when the caller should try
// again on a live session.
func (s *session) acquire(ctx context.Context, l *Lock, try bool) (*hold, error) {
	s.mu.Lock()
	if !s.alive() {
		s.mu.Unlock()
		return nil, errSessionEnded
	}
	if le := s.locks[l.name]; le != nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: another Lock of this Client holds it, or is acquiring or releasing it; a Client is one holder", ErrHeld)
	}
	le := &lockEntry{}
	s.locks[l.name] = le
	s.mu.Unlock()

	rctx, cancel := s.bind(ctx)
	defer cancel()
	path := wire.SessionLockPath(s.id, l.name)
	cleanup := func(ctx context.Context) error { return s.cleanup(ctx, l.name) }
	for attempt := 0; ; attempt++ {
		req := wire.AcquireRequest{Try: try}
		if dl, ok := ctx.Deadline(); ok && !try {
			ms := time.Until(dl).Milliseconds()
			if ms <= 0 {
				s.forget(le)
				return nil, context.DeadlineExceeded
			}
			req.TimeoutMillis = min(ms, wire.MaxTimeout.Milliseconds())
		}
		var g wire.Grant
		var sent time.Time
		_, err := s.c.do(rctx, request{method: http.MethodPost, path: path, secret: s.secret, body: req, out: &g, long: !try, beforeRetry: cleanup, sent: &sent})
		if err == nil {
			h, err := s.granted(le, l.name, g, sent)
			if h != nil && g.ValidForMillis > 0 && h.trusted().IsZero() {
				// The wait ate into the validity counted from the request: confirm the hold from
				// now instead, before the application starts working; unconfirmed, it is lost.
				s.confirmOnce(rctx)
				if h.trusted().IsZero() {
					s.unconfirmed(l.name, h)
				}
			}
			return h, err
		}
		switch {
		case code(err) == wire.CodeNotAcquired:
			s.forget(le)
			if try {
				return nil, nil
			}
			if req.TimeoutMillis > 0 {
				return nil, context.DeadlineExceeded
			}
			return nil, errVoid // a bound we did not ask for: wait again
		case code(err) == wire.CodeAlreadyHeld && attempt == 0:
			// The session holds it without this SDK knowing: an earlier acquire's answer was lost.
			// Give it back and ask again, so that the token is known.
			if err := s.cleanup(rctx, l.name); err != nil {
				s.forget(le)
				return nil, err
			}
			continue
		case code(err) == wire.CodeNoSession:
			s.end(fmt.Errorf("the side-car no longer knows the session: %v", err))
			return nil, errSessionEnded
		case errors.Is(context.Cause(rctx), errSessionEnded):
			return nil, errSessionEnded
		case isStatus(err) || isDial(err) || errors.Is(err, ErrUnreachable):
			// The side-car answered, or was never reached: nothing was granted.
			s.forget(le)
			return nil, err
		default:
			// The caller gave up, or the answer was lost or unreadable: the side-car may have
			// granted the lock. Give it back before letting the name go.
			dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
			cerr := s.cleanup(dctx, l.name)
			dcancel()
			s.forget(le)
			if cerr != nil {
				return nil, errors.Join(err, cerr)
			}
			return nil, err
		}
	}
}

// granted registers the grant g, answering a request sent at sent, as a hold, unless the session
// ended or a loss of it was reported while the acquire was in flight. The hold is trusted for
// the grant's validity from sent, and then as long as keep-alives confirm it.
func (s *session) granted(le *lockEntry, name string, g wire.Grant, sent time.Time) (*hold, error) {
	tok, err := strconv.ParseUint(g.Token, 10, 64)
	if err != nil {
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		cerr := s.cleanup(ctx, name)
		s.forget(le)
		return nil, errors.Join(&malformedError{method: http.MethodPost, path: wire.SessionLockPath(s.id, name),
			err: fmt.Errorf("fencing token %q is not a decimal uint64", g.Token)}, cerr)
	}
	s.mu.Lock()
	if !s.alive() {
		s.mu.Unlock()
		return nil, errSessionEnded
	}
	if le.lostAny || (le.lostUpTo != 0 && tok <= le.lostUpTo) {
		delete(s.locks, name)
		s.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		if err := s.cleanup(ctx, name); err != nil {
			return nil, err
		}
		return nil, errVoid
	}
	h := &hold{token: tok, s: s, lost: make(chan struct{})}
	le.hold = h
	// Counted from the request, the grant's validity is trusted if more than half of it is
	// left; otherwise (a long wait) the caller confirms it with a keep-alive.
	if v := time.Duration(g.ValidForMillis) * time.Millisecond; v > 0 && time.Since(sent) < v/2 {
		h.trustUntil(sent.Add(v), func() { s.unconfirmed(name, h) })
	}
	s.mu.Unlock()
	return h, nil
}

// cleanup releases name on the session, in case the side-car granted it without the SDK knowing.
// If the side-car cannot say, the session is ended, which releases everything it holds.
func (s *session) cleanup(ctx context.Context, name string) error {
	_, err := s.c.do(ctx, request{method: http.MethodDelete, path: wire.SessionLockPath(s.id, name), secret: s.secret, noRetry: true})
	switch {
	case err == nil, code(err) == wire.CodeNotHeld:
		return nil
	case code(err) == wire.CodeNoSession:
		s.end(fmt.Errorf("the side-car no longer knows the session: %v", err))
		return nil
	default:
		s.end(fmt.Errorf("could not release lock %q after an abandoned acquire: %v", name, err))
		return nil
	}
}

// forget removes le from the session, if it is still there.
func (s *session) forget(le *lockEntry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, e := range s.locks {
		if e == le {
			delete(s.locks, name)
		}
	}
}

// Release releases the lock and closes the Lost channel of the hold. It returns nil if the lock
// was held until Release, an error matching ErrLost if the hold had been lost before (or the
// side-car no longer held it), and one matching ErrNotHeld if the Lock holds nothing or an
// Acquire is in progress.
//
// If the side-car cannot be told (ctx ended, side-car unreachable), Release ends the Client's
// session instead, which releases every lock and election of the Client as the side-car sees the
// session's connection close, and returns the error.
func (l *Lock) Release(ctx context.Context) error {
	l.mu.Lock()
	h := l.current()
	switch {
	case l.op != opNone:
		l.mu.Unlock()
		return l.errorf("releasing", fmt.Errorf("%w: an Acquire or Release of this Lock is in progress", ErrNotHeld))
	case h == nil || h.released:
		l.mu.Unlock()
		return l.errorf("releasing", ErrNotHeld)
	}
	h.released = true
	if done, err := h.ended(); done {
		l.mu.Unlock()
		if err == nil {
			err = ErrNotHeld
		}
		return err
	}
	l.op = opReleasing
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		l.op = opNone
		l.mu.Unlock()
	}()
	return h.s.release(ctx, l.name, h)
}

// release tells the side-car to release h.
func (s *session) release(ctx context.Context, name string, h *hold) error {
	s.mu.Lock()
	le := s.locks[name]
	if !s.alive() || le == nil || le.hold != h {
		s.mu.Unlock()
		// The hold was lost before Release; the loss has ended it.
		_, err := h.ended()
		if err == nil {
			err = fmt.Errorf("%w: lock %q", ErrLost, name)
		}
		return err
	}
	le.releasing = true
	h.end(nil)
	s.mu.Unlock()
	defer s.forget(le)

	rctx, cancel := s.bind(ctx)
	defer cancel()
	// Naming the token, so that a DELETE that arrives late never releases a later hold.
	path := wire.SessionLockReleasePath(s.id, name, strconv.FormatUint(h.token, 10))
	_, err := s.c.do(rctx, request{method: http.MethodDelete, path: path, secret: s.secret})
	switch {
	case err == nil:
		return nil
	case code(err) == wire.CodeNotHeld:
		return fmt.Errorf("%w: lock %q (token %d): the side-car no longer held it when asked to release it; it may have been lost before Release", ErrLost, name, h.token)
	case code(err) == wire.CodeNoSession:
		s.end(fmt.Errorf("the side-car no longer knows the session: %v", err))
		return fmt.Errorf("%w: lock %q (token %d): the session had ended when Release was called", ErrLost, name, h.token)
	case errors.Is(context.Cause(rctx), errSessionEnded):
		return fmt.Errorf("%w: lock %q (token %d): the session ended during Release: %v", ErrLost, name, h.token, s.cause())
	default:
		s.end(fmt.Errorf("could not release lock %q: %v", name, err))
		return fmt.Errorf("releasing lock %q: %w; ended the session instead, which releases it", name, err)
	}
}

// Token returns the fencing token of the current hold, or 0 when the Lock holds nothing. Tokens
// of a name only grow: pass the token with every write the lock protects, and have the resource
// refuse a token lower than one it has seen.
func (l *Lock) Token() uint64 {
	if h := l.current(); h != nil {
		if done, _ := h.ended(); !done {
			return h.token
		}
	}
	return 0
}

// Lost returns a channel that is closed when the current hold ends: lost (the side-car could not
// keep it, the session ended, the Client was closed) or released. When the Lock holds nothing
// the channel is already closed. Call it after Acquire: each hold has its own channel.
//
// The channel is closed no later than the SDK learns of the loss, which is before the side-car
// lets anyone else hold the lock; the work the lock protects must stop when it is closed.
func (l *Lock) Lost() <-chan struct{} {
	if h := l.current(); h != nil {
		return h.lost
	}
	return closed
}

func (l *Lock) current() *hold {
	h, _ := l.h.Load().(*hold)
	return h
}

func (l *Lock) errorf(verb string, err error) error {
	return fmt.Errorf("%s lock %q: %w", verb, l.name, err)
}
