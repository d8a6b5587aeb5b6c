package sdk_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/metaparticle-io/sync/sdk"
	"github.com/metaparticle-io/sync/wire"
)

func TestLockAcquireRelease(t *testing.T) {
	f := newFake(t)
	c := f.client()
	ctx := testCtx(t)
	l := c.NewLock("test")

	if got := l.Token(); got != 0 {
		t.Errorf("before Acquire: got token %d; want 0", got)
	}
	if !isClosed(l.Lost()) {
		t.Errorf("before Acquire: got Lost open; want closed (nothing held)")
	}
	for round, wantToken := range []uint64{1, 2} {
		if err := l.Acquire(ctx); err != nil {
			t.Fatalf("round %d: Acquire: %v", round, err)
		}
		if got := l.Token(); got != wantToken {
			t.Errorf("round %d: got token %d; want %d", round, got, wantToken)
		}
		lost := l.Lost()
		if isClosed(lost) {
			t.Errorf("round %d: got Lost closed while held; want open", round)
		}
		if got, want := f.holder("test"), f.sessionIDs()[0]; got != want {
			t.Errorf("round %d: side-car says holder %q; want %q", round, got, want)
		}
		if err := l.Release(ctx); err != nil {
			t.Fatalf("round %d: Release: %v", round, err)
		}
		if !isClosed(lost) {
			t.Errorf("round %d: got Lost open after Release; want closed", round)
		}
		if got := f.holder("test"); got != "" {
			t.Errorf("round %d: side-car says holder %q after Release; want none", round, got)
		}
		if got := l.Token(); got != 0 {
			t.Errorf("round %d: got token %d after Release; want 0", round, got)
		}
	}
	if got := len(f.sessionIDs()); got != 1 {
		t.Errorf("got %d sessions opened; want 1 (the session is reused)", got)
	}
}

func TestLockContention(t *testing.T) {
	f := newFake(t)
	ctx := testCtx(t)
	a, b := f.client().NewLock("test"), f.client().NewLock("test")

	if err := a.Acquire(ctx); err != nil {
		t.Fatalf("a.Acquire: %v", err)
	}
	ok, err := b.TryAcquire(ctx)
	if err != nil || ok {
		t.Fatalf("b.TryAcquire while a holds: got %v, %v; want false, nil", ok, err)
	}
	acquired := make(chan error, 1)
	go func() { acquired <- b.Acquire(ctx) }()
	waitUntil(t, "b's blocking acquire to reach the side-car", func() bool { return f.count("POST lock") >= 3 })
	select {
	case err := <-acquired:
		t.Fatalf("b.Acquire returned %v while a holds; want it to block", err)
	default:
	}
	aToken := a.Token()
	if err := a.Release(ctx); err != nil {
		t.Fatalf("a.Release: %v", err)
	}
	if err := <-acquired; err != nil {
		t.Fatalf("b.Acquire after a released: %v", err)
	}
	if got := b.Token(); got <= aToken {
		t.Errorf("got b's token %d; want more than a's %d", got, aToken)
	}
}

// TestLockMisuse covers the errors of using a Lock the wrong way.
func TestLockMisuse(t *testing.T) {
	tests := []struct {
		name    string
		run     func(ctx context.Context, c *sdk.Client) error
		wantIs  error
		wantMsg string
	}{
		{
			name: "acquire twice",
			run: func(ctx context.Context, c *sdk.Client) error {
				l := c.NewLock("test")
				if err := l.Acquire(ctx); err != nil {
					return err
				}
				return l.Acquire(ctx)
			},
			wantIs: sdk.ErrHeld, wantMsg: "Release it first",
		},
		{
			name: "try twice",
			run: func(ctx context.Context, c *sdk.Client) error {
				l := c.NewLock("test")
				if err := l.Acquire(ctx); err != nil {
					return err
				}
				_, err := l.TryAcquire(ctx)
				return err
			},
			wantIs: sdk.ErrHeld,
		},
		{
			name: "two Locks of one name on one Client",
			run: func(ctx context.Context, c *sdk.Client) error {
				if err := c.NewLock("test").Acquire(ctx); err != nil {
					return err
				}
				return c.NewLock("test").Acquire(ctx)
			},
			wantIs: sdk.ErrHeld, wantMsg: "another Lock of this Client",
		},
		{
			name:   "release never acquired",
			run:    func(ctx context.Context, c *sdk.Client) error { return c.NewLock("test").Release(ctx) },
			wantIs: sdk.ErrNotHeld, wantMsg: `lock "test"`,
		},
		{
			name: "release twice",
			run: func(ctx context.Context, c *sdk.Client) error {
				l := c.NewLock("test")
				if err := l.Acquire(ctx); err != nil {
					return err
				}
				if err := l.Release(ctx); err != nil {
					return err
				}
				return l.Release(ctx)
			},
			wantIs: sdk.ErrNotHeld,
		},
		{
			name:    "empty name",
			run:     func(ctx context.Context, c *sdk.Client) error { return c.NewLock("").Acquire(ctx) },
			wantMsg: "name must not be empty",
		},
		{
			name: "acquire after Close",
			run: func(ctx context.Context, c *sdk.Client) error {
				c.Close()
				return c.NewLock("test").Acquire(ctx)
			},
			wantIs: sdk.ErrClosed,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			err := tt.run(testCtx(t), f.client())
			if err == nil {
				t.Fatalf("got nil error; want one")
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("got error %q; want it to match %q", err, tt.wantIs)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("got error %q; want it to contain %q", err, tt.wantMsg)
			}
		})
	}
}

// TestLockReleaseDuringAcquire: Release while an Acquire of the same Lock waits is an error, and
// does not disturb the waiting Acquire.
func TestLockReleaseDuringAcquire(t *testing.T) {
	f := newFake(t)
	ctx := testCtx(t)
	holder := f.client().NewLock("test")
	if err := holder.Acquire(ctx); err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	l := f.client().NewLock("test")
	acquired := make(chan error, 1)
	go func() { acquired <- l.Acquire(ctx) }()
	waitUntil(t, "the blocking acquire to reach the side-car", func() bool { return f.count("POST lock") >= 2 })
	if err := l.Release(ctx); !errors.Is(err, sdk.ErrNotHeld) {
		t.Errorf("Release during Acquire: got %v; want ErrNotHeld", err)
	}
	if err := holder.Release(ctx); err != nil {
		t.Fatalf("holder.Release: %v", err)
	}
	if err := <-acquired; err != nil {
		t.Fatalf("Acquire: %v", err)
	}
}

// TestLockMutualExclusion runs many Clients that each take the lock in turn and checks that no
// two ever hold it at once and that tokens only grow. Run it with -race.
func TestLockMutualExclusion(t *testing.T) {
	f := newFake(t)
	ctx := testCtx(t)
	const clients, rounds = 5, 20
	var (
		mu        sync.Mutex
		inside    int
		lastToken uint64
		errs      []string
	)
	var wg sync.WaitGroup
	for i := 0; i < clients; i++ {
		l := f.client().NewLock("test")
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := 0; r < rounds; r++ {
				if err := l.Acquire(ctx); err != nil {
					mu.Lock()
					errs = append(errs, err.Error())
					mu.Unlock()
					return
				}
				tok := l.Token()
				_ = l.Lost() // concurrent readers, for the race detector
				mu.Lock()
				inside++
				if inside != 1 {
					errs = append(errs, "two holders at once")
				}
				if tok <= lastToken {
					errs = append(errs, "token did not grow")
				}
				lastToken = tok
				inside--
				mu.Unlock()
				if err := l.Release(ctx); err != nil {
					mu.Lock()
					errs = append(errs, err.Error())
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	if len(errs) != 0 {
		t.Fatalf("got errors %q; want none", errs)
	}
	if lastToken != clients*rounds {
		t.Errorf("got last token %d; want %d", lastToken, clients*rounds)
	}
}

// TestHoldLost covers every way a hold ends without Release: each must close Lost, zero Token,
// make Release say ErrLost, and leave the Client able to acquire again on a new session.
func TestHoldLost(t *testing.T) {
	tests := []struct {
		name string
		ttl  int64 // milliseconds; 0: the default
		lose func(f *fakeSidecar, id string)
		// newSession says whether the loss ends the session.
		newSession bool
		// reason, when set, is in the error of Release after the loss: how the loss was reported.
		reason string
	}{
		{name: "lost event", lose: func(f *fakeSidecar, id string) { f.loseLock("test") }},
		{name: "lost event with unreadable token", lose: func(f *fakeSidecar, id string) {
			f.send(id, wire.Event{Type: wire.EventLost, Kind: wire.KindLock, Grant: &wire.Grant{Name: "test", Token: "x"}})
		}},
		{name: "lost event naming nothing", newSession: true, lose: func(f *fakeSidecar, id string) {
			f.send(id, wire.Event{Type: wire.EventLost, Kind: wire.KindLock})
		}},
		{name: "stream dropped", newSession: true, lose: func(f *fakeSidecar, id string) { f.dropStream(id) }},
		{name: "closed event", newSession: true, reason: "the side-car closed the session: side-car shutting down",
			lose: func(f *fakeSidecar, id string) {
				f.send(id, wire.Event{Type: wire.EventClosed, Reason: "side-car shutting down"})
			}},
		{name: "malformed event", newSession: true, reason: `malformed event "{oops"`,
			lose: func(f *fakeSidecar, id string) { f.sendRaw(id, []byte("{oops")) }},
		{name: "event too long", newSession: true, reason: "the event stream broke: bufio.Scanner: token too long",
			lose: func(f *fakeSidecar, id string) {
				f.sendRaw(id, []byte(`{"type":"ping","reason":"`+strings.Repeat("x", 1<<20)+`"}`))
			}},
		{name: "session unknown to the side-car (404 on keep-alive)", ttl: 2000, newSession: true,
			lose: func(f *fakeSidecar, id string) { f.forget(id) }},
		{name: "stream silent", ttl: 2000, newSession: true, lose: func(f *fakeSidecar, id string) { f.silence(id) }},
		{name: "keep-alives fail", ttl: 2000, newSession: true, lose: func(f *fakeSidecar, id string) {
			f.setIntercept(func(w http.ResponseWriter, r *http.Request) bool {
				if strings.HasSuffix(r.URL.Path, "/keepalive") {
					writeErr(w, 503, wire.CodeUnavailable, "API server unreachable")
					return true
				}
				return false
			})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			if tt.ttl != 0 {
				f.ttl = msec(tt.ttl)
			}
			c := f.client()
			ctx := testCtx(t)
			l := c.NewLock("test")
			if err := l.Acquire(ctx); err != nil {
				t.Fatalf("Acquire: %v", err)
			}
			lost := l.Lost()
			tt.lose(f, f.sessionIDs()[0])
			waitClosed(t, lost, "Lost")
			if got := l.Token(); got != 0 {
				t.Errorf("got token %d after loss; want 0", got)
			}
			err := l.Release(ctx)
			if !errors.Is(err, sdk.ErrLost) {
				t.Errorf("Release after loss: got %v; want ErrLost", err)
			}
			if err != nil && !strings.Contains(err.Error(), tt.reason) {
				t.Errorf("Release after loss: got %q; want it to contain %q", err, tt.reason)
			}
			f.setIntercept(nil)
			if err := l.Acquire(ctx); err != nil {
				t.Fatalf("Acquire after loss: %v", err)
			}
			wantSessions := 1
			if tt.newSession {
				wantSessions = 2
			}
			if got := len(f.sessionIDs()); got != wantSessions {
				t.Errorf("got %d sessions; want %d", got, wantSessions)
			}
			if got, want := f.holder("test"), f.sessionIDs()[wantSessions-1]; got != want {
				t.Errorf("side-car says holder %q; want %q", got, want)
			}
		})
	}
}

// TestStaleLossIgnored: a lost event about an earlier hold of the name (lower token) leaves the
// current hold alone.
func TestStaleLossIgnored(t *testing.T) {
	f := newFake(t)
	c := f.client()
	ctx := testCtx(t)
	l, marker := c.NewLock("test"), c.NewLock("marker")
	// Hold "test" twice (tokens 1 and 2), and "marker".
	if err := l.Acquire(ctx); err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if err := l.Acquire(ctx); err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if err := marker.Acquire(ctx); err != nil {
		t.Fatalf("Acquire marker: %v", err)
	}
	if got := l.Token(); got != 2 {
		t.Fatalf("got token %d; want 2", got)
	}
	id := f.sessionIDs()[0]
	f.send(id, wire.Event{Type: wire.EventLost, Kind: wire.KindLock, Grant: &wire.Grant{Name: "test", Token: "1"}})
	// Events are handled in order: once the marker's loss is seen, so was the stale one.
	f.loseLock("marker")
	waitClosed(t, marker.Lost(), "the marker's Lost")
	if isClosed(l.Lost()) {
		t.Fatalf("got Lost closed by a loss of token 1; want the hold of token 2 kept")
	}
	if err := l.Release(ctx); err != nil {
		t.Errorf("Release: got %v; want nil", err)
	}
}

// TestCloseReleases: Close ends the session, which releases the holds, closes Lost and makes every
// later call fail with ErrClosed.
func TestCloseReleases(t *testing.T) {
	f := newFake(t)
	c := f.client()
	ctx := testCtx(t)
	l := c.NewLock("test")
	if err := l.Acquire(ctx); err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	lost := l.Lost()
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if !isClosed(lost) {
		t.Errorf("got Lost open after Close; want closed")
	}
	if got := f.count("DELETE session"); got != 1 {
		t.Errorf("got %d DELETE of the session; want 1", got)
	}
	if got := f.holder("test"); got != "" {
		t.Errorf("side-car says holder %q after Close; want none", got)
	}
	if err := l.Acquire(ctx); !errors.Is(err, sdk.ErrClosed) {
		t.Errorf("Acquire after Close: got %v; want ErrClosed", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: got %v; want nil", err)
	}
}

// TestReleaseOutcomes: what Release reports, and what becomes of the session, for each answer of
// the side-car.
func TestReleaseOutcomes(t *testing.T) {
	tests := []struct {
		name      string
		answer    func(w http.ResponseWriter, r *http.Request) // answers DELETE of the lock
		ctxDone   bool                                         // Release's context ends first
		wantIs    error
		wantMsg   string
		wantEnded bool // the session was ended, releasing the Client's other holds
	}{
		{name: "released", wantIs: nil},
		{name: "side-car no longer held it", wantIs: sdk.ErrLost, wantMsg: "no longer held it",
			answer: func(w http.ResponseWriter, r *http.Request) {
				writeErr(w, http.StatusConflict, wire.CodeNotHeld, "not held")
			}},
		{name: "session unknown to the side-car", wantIs: sdk.ErrLost, wantMsg: "session had ended", wantEnded: true,
			answer: func(w http.ResponseWriter, r *http.Request) {
				writeErr(w, http.StatusNotFound, wire.CodeNoSession, "no session")
			}},
		{name: "side-car keeps failing", wantMsg: "ended the session instead", wantEnded: true,
			answer: func(w http.ResponseWriter, r *http.Request) {
				writeErr(w, http.StatusServiceUnavailable, wire.CodeUnavailable, "API server unreachable")
			}},
		{name: "context ends first", ctxDone: true, wantIs: context.DeadlineExceeded, wantMsg: "ended the session instead", wantEnded: true,
			answer: func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			c := f.client(sdk.WithRetryTimeout(20 * time.Millisecond))
			ctx := testCtx(t)
			l, other := c.NewLock("test"), c.NewLock("other")
			for _, lk := range []*sdk.Lock{l, other} {
				if err := lk.Acquire(ctx); err != nil {
					t.Fatalf("Acquire %s: %v", lk.Name(), err)
				}
			}
			lost, otherLost := l.Lost(), other.Lost()
			if tt.answer != nil {
				f.setIntercept(func(w http.ResponseWriter, r *http.Request) bool {
					if r.Method == http.MethodDelete && r.URL.Path == wire.SessionLockPath(f.sessionIDs()[0], "test") {
						tt.answer(w, r)
						return true
					}
					return false
				})
			}
			rctx := ctx
			if tt.ctxDone {
				var cancel context.CancelFunc
				rctx, cancel = context.WithTimeout(ctx, 20*time.Millisecond)
				defer cancel()
			}
			err := l.Release(rctx)
			switch {
			case tt.wantIs == nil && tt.wantMsg == "":
				if err != nil {
					t.Fatalf("Release: got %v; want nil", err)
				}
			case err == nil:
				t.Fatalf("Release: got nil; want an error")
			case tt.wantIs != nil && !errors.Is(err, tt.wantIs):
				t.Errorf("Release: got %v; want it to match %v", err, tt.wantIs)
			case !strings.Contains(err.Error(), tt.wantMsg):
				t.Errorf("Release: got %q; want it to contain %q", err, tt.wantMsg)
			}
			if !isClosed(lost) {
				t.Errorf("got Lost open after Release; want closed")
			}
			if tt.wantEnded {
				waitClosed(t, otherLost, "the other lock's Lost")
				waitUntil(t, "the side-car to end the session", func() bool { return f.holder("other") == "" })
			} else if isClosed(otherLost) {
				t.Errorf("got the other lock lost; want it kept")
			}
			if err := l.Release(ctx); !errors.Is(err, sdk.ErrNotHeld) {
				t.Errorf("second Release: got %v; want ErrNotHeld", err)
			}
		})
	}
}

// TestHoldValidity: a side-car that gives each hold a validity keeps the hold trusted only as
// long as keep-alives confirm it. While they are answered, the hold outlives many validities;
// when they stop being answered (a paused side-car) the hold is reported lost once its validity
// runs out, long before the silence of three quarters of the session TTL would tell.
func TestHoldValidity(t *testing.T) {
	f := newFake(t)
	f.ttl = wire.MaxSessionTTL
	f.validity = 200 * time.Millisecond // keep-alives every 50 ms
	c := f.client(sdk.WithSessionTTL(wire.MaxSessionTTL))
	ctx := testCtx(t)
	l := c.NewLock("test")
	if err := l.Acquire(ctx); err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	lost := l.Lost()
	// Eight confirmations span at least 350 ms, well past the grant's own 200 ms of validity.
	waitUntil(t, "eight keep-alives", func() bool { return f.count("POST keepalive") >= 8 })
	select {
	case <-lost:
		t.Fatalf("got the hold lost while keep-alives confirmed it (%v); want it held", l.Release(ctx))
	default:
	}
	f.setIntercept(stall("POST keepalive"))
	waitClosed(t, lost, "Lost after keep-alives stopped being answered")
	err := l.Release(ctx)
	if !errors.Is(err, sdk.ErrLost) || !strings.Contains(err.Error(), "validity") {
		t.Errorf("Release after the validity ran out: got %v; want ErrLost saying the validity ran out", err)
	}
}
