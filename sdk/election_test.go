package sdk_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/metaparticle-io/sync/sdk"
	"github.com/metaparticle-io/sync/wire"
)

// recorder records what an Election's functions saw, in order.
type recorder struct {
	mu      sync.Mutex
	log     []string
	ctxs    []context.Context
	elected chan struct{} // receives on every elected call
	lost    chan struct{} // receives on every lost call
}

func newRecorder() *recorder {
	return &recorder{elected: make(chan struct{}, 16), lost: make(chan struct{}, 16)}
}

// onElected records the term and waits for its context to end, as a well-behaved leader does.
func (r *recorder) onElected(ctx context.Context) {
	tok, _ := sdk.LeaderToken(ctx)
	r.mu.Lock()
	r.log = append(r.log, fmt.Sprintf("elected %d", tok))
	r.ctxs = append(r.ctxs, ctx)
	r.mu.Unlock()
	r.elected <- struct{}{}
	<-ctx.Done()
}

func (r *recorder) onLost() {
	r.mu.Lock()
	r.log = append(r.log, "lost")
	r.mu.Unlock()
	r.lost <- struct{}{}
}

func (r *recorder) events() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.log)
}

func (r *recorder) ctx(i int) context.Context {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ctxs[i]
}

func recv(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		<-ch
		close(done)
	}()
	waitClosed(t, done, "the wait for "+what)
}

// runElection runs e in the background; the returned function stops it and returns Run's error.
func runElection(t *testing.T, e *sdk.Election) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			err = <-done
		})
		return err
	}
	t.Cleanup(func() { stop() })
	return stop
}

// TestElectionLifecycle: elected, deposed (the context is cancelled with ErrLost, then lost is
// called), elected again while standing, and on stop lost once more and the candidacy withdrawn.
func TestElectionLifecycle(t *testing.T) {
	tests := []struct {
		name string
		// depose makes the side-car take leadership away from session id.
		depose func(f *fakeSidecar, id string)
		// newSession says whether leadership comes back on a new session.
		newSession bool
		ttl        int64 // milliseconds; 0: the default
	}{
		{name: "deposed", depose: func(f *fakeSidecar, id string) { f.depose("test") }},
		{name: "event stream dropped", newSession: true, depose: func(f *fakeSidecar, id string) { f.dropStream(id) }},
		{name: "session closed by the side-car", newSession: true, depose: func(f *fakeSidecar, id string) {
			f.send(id, wire.Event{Type: wire.EventClosed, Reason: "side-car restarted"})
		}},
		{name: "session forgotten by the side-car (404 on keep-alive)", newSession: true, ttl: 2000,
			depose: func(f *fakeSidecar, id string) { f.forget(id) }},
		{name: "deposed without a token", depose: func(f *fakeSidecar, id string) {
			f.send(id, wire.Event{Type: wire.EventDeposed, Kind: wire.KindElection, Grant: &wire.Grant{Name: "test"}})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			if tt.ttl != 0 {
				f.ttl = msec(tt.ttl)
			}
			c := f.client()
			r := newRecorder()
			stop := runElection(t, c.NewElection("test", r.onElected, r.onLost))

			recv(t, r.elected, "the first election")
			first := r.ctx(0)
			id := f.sessionIDs()[0]
			if tok, ok := sdk.LeaderToken(first); !ok || tok != 1 {
				t.Errorf("got LeaderToken %d, %v; want 1, true", tok, ok)
			}
			tt.depose(f, id)
			recv(t, r.lost, "lost")
			if first.Err() == nil {
				t.Fatalf("got the first term's context alive after lost; want it cancelled")
			}
			if cause := context.Cause(first); !errors.Is(cause, sdk.ErrLost) {
				t.Errorf("got cause %v; want ErrLost", cause)
			}
			if tt.name == "deposed without a token" {
				// The fake still counts this session as the leader: depose it for real.
				f.depose("test")
			}
			recv(t, r.elected, "the second election")
			if r.ctx(1).Err() != nil {
				t.Errorf("got the second term's context cancelled; want alive")
			}
			wantSessions := 1
			if tt.newSession {
				wantSessions = 2
			}
			if got := len(f.sessionIDs()); got != wantSessions {
				t.Errorf("got %d sessions; want %d", got, wantSessions)
			}
			if err := stop(); err != nil {
				t.Fatalf("Run: got %v; want nil after its context ended", err)
			}
			ev := r.events()
			if len(ev) != 4 || !strings.HasPrefix(ev[0], "elected") || ev[1] != "lost" || !strings.HasPrefix(ev[2], "elected") || ev[3] != "lost" {
				t.Errorf("got calls %q; want [elected N, lost, elected M, lost]", ev)
			}
			if got := f.leader("test"); got != "" {
				t.Errorf("side-car says %q leads after Run returned; want nobody", got)
			}
		})
	}
}

// TestElectionHandsOver: three candidates on three Clients; deposing or stopping the leader
// elects another, and observers see every leader.
func TestElectionHandsOver(t *testing.T) {
	f := newFake(t)
	ctx := testCtx(t)
	observer := f.client().NewElection("test", nil, nil)
	seen := make(chan sdk.Leader, 16)
	watchCtx, stopWatch := context.WithCancel(ctx)
	watched := make(chan error, 1)
	go func() { watched <- observer.Watch(watchCtx, func(l sdk.Leader) { seen <- l }) }()
	if l := <-seen; l.Holder != "" {
		t.Fatalf("got first observed leader %+v; want none", l)
	}

	var recs []*recorder
	var stops []func() error
	for i := 0; i < 3; i++ {
		r := newRecorder()
		recs = append(recs, r)
		stops = append(stops, runElection(t, f.client().NewElection("test", r.onElected, r.onLost)))
		// The fake elects in the order candidates stood: let each stand before the next.
		waitUntil(t, "the candidate to stand", func() bool { return f.count("PUT election") == i+1 })
	}
	recv(t, recs[0].elected, "candidate 0's election")
	if l := <-seen; l.Holder == "" || l.Token != 1 {
		t.Fatalf("got observed leader %+v; want a holder with token 1", l)
	}
	first, err := observer.Leader(ctx)
	if err != nil {
		t.Fatalf("Leader: %v", err)
	}

	// The side-car deposes candidate 0: candidate 1, next in line, leads.
	f.depose("test")
	recv(t, recs[0].lost, "candidate 0's loss")
	recv(t, recs[1].elected, "candidate 1's election")
	second := <-seen
	if second.Holder == first.Holder || second.Token <= first.Token {
		t.Errorf("got observed leader %+v after %+v; want another holder with a greater token", second, first)
	}

	// Candidate 1 stops: candidate 2 leads.
	if err := stops[1](); err != nil {
		t.Fatalf("Run: %v", err)
	}
	recv(t, recs[1].lost, "candidate 1's loss")
	recv(t, recs[2].elected, "candidate 2's election")
	third := <-seen
	if third.Holder == second.Holder || third.Token <= second.Token {
		t.Errorf("got observed leader %+v after %+v; want another holder with a greater token", third, second)
	}
	if now, err := observer.Leader(ctx); err != nil || now != third {
		t.Errorf("got Leader %+v, %v; want %+v", now, err, third)
	}
	stopWatch()
	if err := <-watched; err != nil {
		t.Errorf("Watch: got %v; want nil after its context ended", err)
	}
}

// TestResign: the leader resigns; its context is cancelled before the side-car is told, lost is
// called, and the other candidate leads.
func TestResign(t *testing.T) {
	f := newFake(t)
	ctx := testCtx(t)
	ra, rb := newRecorder(), newRecorder()
	a := f.client().NewElection("test", ra.onElected, ra.onLost)
	runElection(t, a)
	recv(t, ra.elected, "a's election")
	runElection(t, f.client().NewElection("test", rb.onElected, rb.onLost))
	waitUntil(t, "b to stand", func() bool { return f.count("PUT election") == 2 })

	if err := a.Resign(ctx); err != nil {
		t.Fatalf("Resign: %v", err)
	}
	if ra.ctx(0).Err() == nil {
		t.Errorf("got a's context alive after Resign returned; want cancelled")
	}
	recv(t, ra.lost, "a's loss")
	recv(t, rb.elected, "b's election")
	if err := a.Resign(ctx); !errors.Is(err, sdk.ErrNotHeld) {
		t.Errorf("second Resign: got %v; want ErrNotHeld", err)
	}
}

// TestElectionMisuse covers the errors of running Elections the wrong way.
func TestElectionMisuse(t *testing.T) {
	f := newFake(t)
	ctx := testCtx(t)
	c := f.client()
	r := newRecorder()
	e := c.NewElection("test", r.onElected, r.onLost)
	runElection(t, e)
	recv(t, r.elected, "the election")

	if err := e.Run(ctx); !errors.Is(err, sdk.ErrRunning) {
		t.Errorf("Run while running: got %v; want ErrRunning", err)
	}
	if err := c.NewElection("test", nil, nil).Run(ctx); !errors.Is(err, sdk.ErrRunning) {
		t.Errorf("second Election of the name on one Client: got %v; want ErrRunning", err)
	}
	if err := c.NewElection("other", nil, nil).Resign(ctx); !errors.Is(err, sdk.ErrNotHeld) {
		t.Errorf("Resign without running: got %v; want ErrNotHeld", err)
	}
	if err := c.NewElection("", nil, nil).Run(ctx); err == nil || !strings.Contains(err.Error(), "name must not be empty") {
		t.Errorf("Run with an empty name: got %v; want an invalid name error", err)
	}
}

// TestElectionClientClosed: closing the Client ends the term (context cancelled, lost called) and
// Run returns ErrClosed.
func TestElectionClientClosed(t *testing.T) {
	f := newFake(t)
	c := f.client()
	r := newRecorder()
	e := c.NewElection("test", r.onElected, r.onLost)
	done := make(chan error, 1)
	go func() { done <- e.Run(context.Background()) }()
	recv(t, r.elected, "the election")
	c.Close()
	recv(t, r.lost, "the loss")
	if err := <-done; !errors.Is(err, sdk.ErrClosed) {
		t.Errorf("Run: got %v; want ErrClosed", err)
	}
	if got := f.leader("test"); got != "" {
		t.Errorf("side-car says %q leads; want nobody", got)
	}
}

// TestWatchMalformed: a watch stream that is not ElectionState lines is an error.
func TestWatchMalformed(t *testing.T) {
	tests := []struct{ name, line, want string }{
		{"not JSON", "hello", "malformed response"},
		{"bad token", `{"name":"test","held":true,"holder":"p/s","token":"-1"}`, `fencing token "-1"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			f.setIntercept(func(w http.ResponseWriter, r *http.Request) bool {
				if route(r.URL.Path) == "watch" {
					fmt.Fprintln(w, tt.line)
					return true
				}
				return false
			})
			err := f.client().NewElection("test", nil, nil).Watch(testCtx(t), func(sdk.Leader) {})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v; want an error containing %q", err, tt.want)
			}
		})
	}
}

// TestWatchReconnects: a watch stream that ends is reopened, and an unchanged leader is not
// reported twice.
func TestWatchReconnects(t *testing.T) {
	f := newFake(t)
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	var calls []sdk.Leader
	f.setIntercept(func(w http.ResponseWriter, r *http.Request) bool {
		if route(r.URL.Path) != "watch" {
			return false
		}
		n := f.count("GET watch")
		tok := min(n, 2) // 1, 2, 2, 2...
		fmt.Fprintln(w, string(line(wire.ElectionState{Name: "test", Held: true, Holder: "p/s", Token: fmt.Sprint(tok)})))
		return true // the stream ends
	})
	err := f.client().NewElection("test", nil, nil).Watch(ctx, func(l sdk.Leader) {
		calls = append(calls, l)
		if len(calls) == 2 {
			// Let a few more reconnections happen before stopping.
			go func() {
				waitUntil(t, "reconnections", func() bool { return f.count("GET watch") >= 4 })
				cancel()
			}()
		}
	})
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	if len(calls) != 2 || calls[0].Token != 1 || calls[1].Token != 2 {
		t.Errorf("got calls %+v; want tokens 1 then 2, once each", calls)
	}
}

// TestWatchStreamBreaks: however a watch stream ends without a malformed line, Watch reopens it
// and goes on reporting the leader.
func TestWatchStreamBreaks(t *testing.T) {
	tests := []struct{ name, first string }{
		{name: "ends at once", first: ""},
		{name: "only blank lines", first: "\n \r\n\t\n"},
		{name: "line too long", first: `{"name":"test","held":true,"holder":"p/long","token":"` + strings.Repeat("9", 1<<20) + `"}` + "\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			f.setIntercept(func(w http.ResponseWriter, r *http.Request) bool {
				if route(r.URL.Path) != "watch" {
					return false
				}
				if f.count("GET watch") == 1 {
					fmt.Fprint(w, tt.first)
					return true // the first stream ends, one way or another
				}
				fmt.Fprintln(w, string(line(wire.ElectionState{Name: "test", Held: true, Holder: "p/s", Token: "7"})))
				w.(http.Flusher).Flush()
				<-r.Context().Done()
				return true
			})
			ctx, cancel := context.WithCancel(testCtx(t))
			defer cancel()
			var got []sdk.Leader
			err := f.client().NewElection("test", nil, nil).Watch(ctx, func(l sdk.Leader) {
				got = append(got, l)
				cancel()
			})
			if err != nil {
				t.Fatalf("Watch: got %v; want nil after its context ended", err)
			}
			if want := (sdk.Leader{Holder: "p/s", Token: 7}); len(got) != 1 || got[0] != want {
				t.Errorf("got calls %+v; want one, with %+v", got, want)
			}
			if n := f.count("GET watch"); n != 2 {
				t.Errorf("got %d watch streams; want 2 (the first reopened once)", n)
			}
		})
	}
}

// TestLeaderStates: Leader reads the side-car's ElectionState.
func TestLeaderStates(t *testing.T) {
	tests := []struct {
		name    string
		status  int
		body    string
		want    sdk.Leader
		wantErr string
	}{
		{name: "nobody leads", status: 200, body: `{"name":"test","held":false}`},
		{name: "last holder kept but not held", status: 200, body: `{"name":"test","held":false,"holder":"p/s","token":"9"}`},
		{name: "a leader", status: 200, body: `{"name":"test","held":true,"holder":"p/s","token":"18446744073709551615","acquireTime":"2026-01-02T03:04:05Z"}`,
			want: sdk.Leader{Holder: "p/s", Token: 18446744073709551615, Since: mustTime(t, "2026-01-02T03:04:05Z")}},
		{name: "a leader whose token is not yet recorded", status: 200, body: `{"name":"test","held":true,"holder":"p/s"}`,
			want: sdk.Leader{Holder: "p/s"}},
		{name: "token out of range", status: 200, body: `{"name":"test","held":true,"holder":"p/s","token":"18446744073709551616"}`,
			wantErr: "is not a decimal uint64"},
		{name: "not found", status: 404, body: jsonErr(wire.CodeNotFound, "no such path"), wantErr: "not_found: no such path"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			f.setIntercept(func(w http.ResponseWriter, r *http.Request) bool {
				if route(r.URL.Path) != "state" {
					return false
				}
				w.WriteHeader(tt.status)
				fmt.Fprint(w, tt.body)
				return true
			})
			got, err := f.client(sdk.WithRetryTimeout(0)).NewElection("test", nil, nil).Leader(testCtx(t))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %+v, %v; want an error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got.Holder != tt.want.Holder || got.Token != tt.want.Token || !got.Since.Equal(tt.want.Since) {
				t.Errorf("got %+v, %v; want %+v, nil", got, err, tt.want)
			}
		})
	}
}

func mustTime(t *testing.T, s string) time.Time {
	t.Helper()
	tm, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t.Fatal(err)
	}
	return tm
}
