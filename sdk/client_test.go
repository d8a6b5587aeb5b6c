package sdk_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/metaparticle-io/sync/sdk"
	"github.com/metaparticle-io/sync/wire"
)

// closedAddr returns a loopback address where nothing listens.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// operations are the calls that reach the side-car, each as a function of a Client.
var operations = []struct {
	name string
	call func(ctx context.Context, c *sdk.Client) error
}{
	{"Acquire", func(ctx context.Context, c *sdk.Client) error { return c.NewLock("test").Acquire(ctx) }},
	{"TryAcquire", func(ctx context.Context, c *sdk.Client) error {
		_, err := c.NewLock("test").TryAcquire(ctx)
		return err
	}},
	{"Run", func(ctx context.Context, c *sdk.Client) error { return c.NewElection("test", nil, nil).Run(ctx) }},
	{"Leader", func(ctx context.Context, c *sdk.Client) error {
		_, err := c.NewElection("test", nil, nil).Leader(ctx)
		return err
	}},
	{"Watch", func(ctx context.Context, c *sdk.Client) error {
		return c.NewElection("test", nil, nil).Watch(ctx, func(sdk.Leader) {})
	}},
}

// TestUnreachable: every call to a side-car that is not there fails with an error that names
// the address and where it came from, and asks about the annotation.
func TestUnreachable(t *testing.T) {
	addr := closedAddr(t)
	sources := []struct {
		name       string
		env        string
		opts       []sdk.Option
		wantSource string
	}{
		{name: "WithAddress", opts: []sdk.Option{sdk.WithAddress(addr)}, wantSource: "set by WithAddress"},
		{name: "environment", env: addr, wantSource: "from $" + wire.EnvAddress},
	}
	for _, src := range sources {
		for _, op := range operations {
			t.Run(src.name+"/"+op.name, func(t *testing.T) {
				t.Setenv(wire.EnvAddress, src.env)
				opts := append([]sdk.Option{sdk.WithRetryTimeout(0)}, src.opts...)
				c, err := sdk.NewClient(opts...)
				if err != nil {
					t.Fatalf("NewClient: %v", err)
				}
				defer c.Close()
				err = op.call(testCtx(t), c)
				if !errors.Is(err, sdk.ErrUnreachable) {
					t.Fatalf("got %v; want an error matching ErrUnreachable", err)
				}
				for _, want := range []string{addr, src.wantSource, `metaparticle.io/sync: "true"`, "connection refused"} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("got error %q; want it to contain %q", err, want)
					}
				}
			})
		}
	}
}

// TestUnreachableDefaultAddress: with nothing configured, the SDK tries wire.DefaultAddress and
// says that it did.
func TestUnreachableDefaultAddress(t *testing.T) {
	t.Setenv(wire.EnvAddress, "")
	c, err := sdk.NewClient(sdk.WithRetryTimeout(0))
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	defer c.Close()
	if got := c.Address(); got != wire.DefaultAddress {
		t.Fatalf("got address %q; want %q", got, wire.DefaultAddress)
	}
	if ln, err := net.Listen("tcp", wire.DefaultAddress); err != nil {
		t.Skipf("something listens on %s on this machine: %v", wire.DefaultAddress, err)
	} else {
		ln.Close()
	}
	err = c.NewLock("test").Acquire(testCtx(t))
	if want := "sdk: cannot reach the Metaparticle Sync side-car at 127.0.0.1:13131 (the default; $METAPARTICLE_SYNC_ADDR is unset)"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("got error %v; want it to contain %q", err, want)
	}
}

// TestUnreachableUntilDeadline: while the caller's deadline allows, connection refused is
// retried; the error then says both what the context said and what the side-car did not.
func TestUnreachableUntilDeadline(t *testing.T) {
	addr := closedAddr(t)
	c, err := sdk.NewClient(sdk.WithAddress(addr), sdk.WithBackoff(time.Millisecond, 5*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err = c.NewLock("test").Acquire(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, sdk.ErrUnreachable) {
		t.Errorf("got %v; want an error matching both context.DeadlineExceeded and ErrUnreachable", err)
	}
}

// TestSidecarStartsLate: connection refused while the side-car starts is retried until it
// listens.
func TestSidecarStartsLate(t *testing.T) {
	addr := closedAddr(t)
	var dials atomic.Int32
	dialer := &net.Dialer{}
	hc := &http.Client{Transport: &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			conn, err := dialer.DialContext(ctx, network, a)
			if err != nil {
				dials.Add(1)
			}
			return conn, err
		},
	}}
	c, err := sdk.NewClient(sdk.WithAddress(addr), sdk.WithHTTPClient(hc), sdk.WithBackoff(time.Millisecond, 10*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	done := make(chan error, 1)
	go func() { done <- c.NewLock("test").Acquire(testCtx(t)) }()
	waitUntil(t, "a refused connection", func() bool { return dials.Load() >= 2 })

	f := newFake(t)
	f.srv.Close()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("port %s was taken meanwhile: %v", addr, err)
	}
	late := httptest.NewUnstartedServer(f.srv.Config.Handler)
	late.Listener = ln
	late.Start()
	defer late.Close()
	if err := <-done; err != nil {
		t.Fatalf("Acquire: got %v; want it to succeed once the side-car listens", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

// failFirst returns an intercept that answers the first n requests of call (as counted by route)
// with the given status and body, and lets the rest through.
func failFirst(call string, n int, status int, body string) func(http.ResponseWriter, *http.Request) bool {
	var mu sync.Mutex
	seen := 0
	return func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method+" "+route(r.URL.Path) != call {
			return false
		}
		mu.Lock()
		defer mu.Unlock()
		if seen >= n {
			return false
		}
		seen++
		w.WriteHeader(status)
		fmt.Fprint(w, body)
		return true
	}
}

func jsonErr(code wire.ErrorCode, msg string) string {
	return string(line(wire.Error{Code: code, Message: msg}))
}

// TestTransientErrorsRetried: bursts of 5xx are retried until the side-car answers.
func TestTransientErrorsRetried(t *testing.T) {
	tests := []struct {
		name   string
		call   string
		n      int
		status int
		body   string
	}{
		{"503 unavailable opening the session", "POST sessions", 3, 503, jsonErr(wire.CodeUnavailable, "API server not ready")},
		{"500 internal opening the session", "POST sessions", 2, 500, jsonErr(wire.CodeInternal, "boom")},
		{"502 with a proxy's text body", "POST sessions", 2, 502, "<html>bad gateway</html>"},
		{"503 on the event stream", "GET events", 3, 503, jsonErr(wire.CodeUnavailable, "starting")},
		{"503 shutting down on acquire", "POST lock", 3, 503, jsonErr(wire.CodeShuttingDown, "stopping")},
		{"504 on acquire", "POST lock", 1, 504, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			f.setIntercept(failFirst(tt.call, tt.n, tt.status, tt.body))
			l := f.client().NewLock("test")
			if err := l.Acquire(testCtx(t)); err != nil {
				t.Fatalf("Acquire: %v", err)
			}
			if got, want := f.count(tt.call), tt.n+1; got < want {
				t.Errorf("got %d calls of %s; want at least %d (the failures and a success)", got, tt.call, want)
			}
			if l.Token() == 0 {
				t.Errorf("got token 0; want the hold's token")
			}
		})
	}
}

// TestPersistentErrors: when the side-car keeps failing past the retry timeout, the last error is
// returned, with the side-car's code.
func TestPersistentErrors(t *testing.T) {
	f := newFake(t)
	f.setIntercept(failFirst("POST lock", 1<<30, 503, jsonErr(wire.CodeForbidden, "RBAC forbids leases")))
	err := f.client(sdk.WithRetryTimeout(50 * time.Millisecond)).NewLock("test").Acquire(testCtx(t))
	var we *wire.Error
	if !errors.As(err, &we) || we.Code != wire.CodeForbidden {
		t.Fatalf("got %v; want a *wire.Error with code %s", err, wire.CodeForbidden)
	}
	for _, want := range []string{"gave up after retrying", "503", "RBAC forbids leases"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("got error %q; want it to contain %q", err, want)
		}
	}
}

// TestMalformedResponses: a side-car (or another program on its port) that answers nonsense
// yields an error that says so, and no hold.
func TestMalformedResponses(t *testing.T) {
	tests := []struct {
		name   string
		call   string
		status int
		body   string
		want   []string
		// released says the SDK must give back a grant it could not read.
		released bool
	}{
		{name: "session is not JSON", call: "POST sessions", status: 201, body: "{not json",
			want: []string{"malformed response", "{not json"}},
		{name: "session without id", call: "POST sessions", status: 201, body: `{"ttlMillis":1000}`,
			want: []string{"malformed response", `session id ""`}},
		{name: "first event is not ready", call: "GET events", status: 200, body: `{"type":"ping"}` + "\n",
			want: []string{"first event", "is not \"ready\""}},
		{name: "event stream is HTML", call: "GET events", status: 200, body: "<html>hello</html>",
			want: []string{"first event", "<html>"}},
		{name: "event stream ends before ready", call: "GET events", status: 200, body: "\n \n",
			want: []string{"opening the event stream", "the stream ended before its ready event"}},
		{name: "first event too long", call: "GET events", status: 200, body: strings.Repeat(" ", 1<<20) + `{"type":"ready"}` + "\n",
			want: []string{"opening the event stream", bufio.ErrTooLong.Error()}},
		{name: "grant is not JSON", call: "POST lock", status: 200, body: "granted!",
			want: []string{"malformed response", "granted!"}, released: true},
		{name: "grant token is not a number", call: "POST lock", status: 200,
			body: `{"name":"test","token":"12ab"}`, want: []string{"malformed response", `"12ab"`}, released: true},
		{name: "error body is not an error", call: "POST lock", status: 418, body: "I'm a teapot",
			want: []string{"418", "I'm a teapot"}},
		{name: "bad request from the side-car", call: "POST lock", status: 400,
			body: jsonErr(wire.CodeInvalidTimeout, "timeout out of range"), want: []string{"invalid_timeout", "timeout out of range"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			var mu sync.Mutex
			answered := false
			f.setIntercept(func(w http.ResponseWriter, r *http.Request) bool {
				if r.Method+" "+route(r.URL.Path) != tt.call {
					return false
				}
				mu.Lock()
				defer mu.Unlock()
				if answered {
					return false
				}
				answered = true
				if tt.released {
					// Take the lock for real, so that giving it back can be checked.
					f.acquire(httptest.NewRecorder(), r)
				}
				w.WriteHeader(tt.status)
				fmt.Fprint(w, tt.body)
				return true
			})
			l := f.client(sdk.WithRetryTimeout(0)).NewLock("test")
			err := l.Acquire(testCtx(t))
			if err == nil {
				t.Fatalf("got nil error; want one")
			}
			for _, want := range tt.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("got error %q; want it to contain %q", err, want)
				}
			}
			if got := l.Token(); got != 0 {
				t.Errorf("got token %d; want 0", got)
			}
			if got := f.count(tt.call); got != 1 {
				t.Errorf("got %d calls of %s; want 1 (not retried)", got, tt.call)
			}
			if tt.released {
				if got := f.holder("test"); got != "" {
					t.Errorf("side-car says %q holds the lock; want it given back", got)
				}
			}
		})
	}
}

// stall returns an intercept that never answers call: it waits until the client gives up.
func stall(call string) func(http.ResponseWriter, *http.Request) bool {
	return func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method+" "+route(r.URL.Path) != call {
			return false
		}
		// The server notices a client hanging up only once the body is read.
		_, _ = io.Copy(io.Discard, r.Body)
		<-r.Context().Done()
		return true
	}
}

// TestSlowResponses: a side-car that does not answer holds a call no longer than its context.
func TestSlowResponses(t *testing.T) {
	tests := []struct {
		name  string
		stall string
		op    func(ctx context.Context, c *sdk.Client) error
	}{
		{"session", "POST sessions", operations[0].call},
		{"event stream", "GET events", operations[0].call},
		{"acquire", "POST lock", operations[0].call},
		{"try", "POST lock", operations[1].call},
		{"stand", "PUT election", func(ctx context.Context, c *sdk.Client) error {
			err := c.NewElection("test", nil, nil).Run(ctx)
			if err == nil {
				return ctx.Err() // Run returns nil when ctx ends
			}
			return err
		}},
		{"leader", "GET state", operations[3].call},
		{"release", "DELETE lock", func(ctx context.Context, c *sdk.Client) error {
			l := c.NewLock("test")
			if err := l.Acquire(context.Background()); err != nil {
				return fmt.Errorf("unexpected: %w", err)
			}
			return l.Release(ctx)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			f.setIntercept(stall(tt.stall))
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			err := tt.op(ctx, f.client())
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("got %v; want an error matching context.DeadlineExceeded", err)
			}
		})
	}
}

// TestAcquireDeadlineForwarded: a blocking acquire under a deadline tells the side-car, and fails
// with context.DeadlineExceeded whoever notices first.
func TestAcquireDeadlineForwarded(t *testing.T) {
	f := newFake(t)
	ctx := testCtx(t)
	if err := f.client().NewLock("test").Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var timeouts []int64
	f.setIntercept(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodPost && route(r.URL.Path) == "lock" {
			var req wire.AcquireRequest
			_ = jsonDecode(r, &req)
			mu.Lock()
			timeouts = append(timeouts, req.TimeoutMillis)
			mu.Unlock()
			// Answer as the side-car does when the timeout passes.
			writeErr(w, http.StatusConflict, wire.CodeNotAcquired, "timeout passed")
			return true
		}
		return false
	})
	dctx, cancel := context.WithTimeout(ctx, time.Hour)
	defer cancel()
	err := f.client().NewLock("test").Acquire(dctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("got %v; want context.DeadlineExceeded", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(timeouts) != 1 || timeouts[0] <= 0 || timeouts[0] > time.Hour.Milliseconds() {
		t.Errorf("got timeoutMillis %v; want one value in (0, %d]", timeouts, time.Hour.Milliseconds())
	}
}

// TestAbandonedAcquireGivenBack: when the caller gives up on an acquire whose grant may be in
// flight, the SDK releases the name so that the session holds nothing it does not know of.
func TestAbandonedAcquireGivenBack(t *testing.T) {
	f := newFake(t)
	f.setIntercept(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodPost && route(r.URL.Path) == "lock" {
			f.acquire(httptest.NewRecorder(), r) // granted, but the answer never comes
			_, _ = io.Copy(io.Discard, r.Body)
			<-r.Context().Done()
			return true
		}
		return false
	})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := f.client().NewLock("test").Acquire(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v; want context.DeadlineExceeded", err)
	}
	if got := f.holder("test"); got != "" {
		t.Errorf("side-car says %q holds the lock; want it given back", got)
	}
	if got := f.count("DELETE lock"); got != 1 {
		t.Errorf("got %d DELETE of the lock; want 1", got)
	}
}

// TestNewClientOptions: invalid options are refused with a reason.
func TestNewClientOptions(t *testing.T) {
	tests := []struct {
		name string
		env  string
		opts []sdk.Option
		want string // "" for success
	}{
		{name: "defaults", want: ""},
		{name: "address without port", opts: []sdk.Option{sdk.WithAddress("localhost")}, want: "is not host:port"},
		{name: "environment without port", env: "side-car", want: "from $" + wire.EnvAddress},
		{name: "port zero", opts: []sdk.Option{sdk.WithAddress("127.0.0.1:0")}, want: "port in 1-65535"},
		{name: "TTL too short", opts: []sdk.Option{sdk.WithSessionTTL(time.Millisecond)}, want: "session TTL 1ms is outside"},
		{name: "TTL in range", opts: []sdk.Option{sdk.WithSessionTTL(2 * time.Second)}, want: ""},
		{name: "negative retry timeout", opts: []sdk.Option{sdk.WithRetryTimeout(-time.Second)}, want: "negative"},
		{name: "back-off max below min", opts: []sdk.Option{sdk.WithBackoff(time.Second, time.Millisecond)}, want: "back-off bounds"},
		{name: "HTTP client with a timeout", opts: []sdk.Option{sdk.WithHTTPClient(&http.Client{Timeout: time.Second})}, want: "Timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(wire.EnvAddress, tt.env)
			_, err := sdk.NewClient(tt.opts...)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("got %v; want no error", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("got %v; want an error containing %q", err, tt.want)
			}
		})
	}
}

// TestSessionTTLRequested: the TTL asked for reaches the side-car, and keep-alives flow.
func TestSessionTTLRequested(t *testing.T) {
	f := newFake(t)
	f.ttl = 2 * time.Second
	var got atomic.Int64
	f.setIntercept(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodPost && route(r.URL.Path) == "sessions" {
			var req wire.OpenSessionRequest
			_ = jsonDecode(r, &req)
			got.Store(req.TTLMillis)
		}
		return false
	})
	c := f.client(sdk.WithSessionTTL(2 * time.Second))
	if err := c.NewLock("test").Acquire(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if got.Load() != 2000 {
		t.Errorf("got ttlMillis %d; want 2000", got.Load())
	}
	waitUntil(t, "keep-alives", func() bool { return f.count("POST keepalive") >= 2 })
}

// TestDegradedFollowsTheStream: Degraded reports the trouble of the last degraded event, until a
// recovered event, and changes no hold.
func TestDegradedFollowsTheStream(t *testing.T) {
	f := newFake(t)
	c := f.client()
	ctx := testCtx(t)
	l := c.NewLock("test")
	if err := l.Acquire(ctx); err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if err := c.Degraded(); err != nil {
		t.Fatalf("Degraded before any report: got %v; want nil", err)
	}
	id := f.sessionIDs()[0]
	// Events are handled in order: once a marker lock's loss is seen, so was the event before.
	marker := func(name string) {
		t.Helper()
		m := c.NewLock(name)
		if err := m.Acquire(ctx); err != nil {
			t.Fatalf("Acquire %s: %v", name, err)
		}
		f.loseLock(name)
		waitClosed(t, m.Lost(), name+"'s Lost")
	}
	f.send(id, wire.Event{Type: wire.EventDegraded, Code: wire.CodeForbidden, Reason: "RBAC forbids write of leases"})
	marker("m1")
	var we *wire.Error
	if err := c.Degraded(); !errors.As(err, &we) || we.Code != wire.CodeForbidden || !strings.Contains(we.Message, "RBAC forbids") {
		t.Errorf("Degraded after a degraded event: got %v; want a *wire.Error with code %s and the event's reason", err, wire.CodeForbidden)
	}
	if isClosed(l.Lost()) {
		t.Errorf("got Lost closed by a degraded event; want the hold kept")
	}
	f.send(id, wire.Event{Type: wire.EventRecovered})
	marker("m2")
	if err := c.Degraded(); err != nil {
		t.Errorf("Degraded after a recovered event: got %v; want nil", err)
	}
}
