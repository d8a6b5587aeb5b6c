package elector

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/metaparticle-io/sync/wire"
)

// checkFunc checks one aspect of a response.
type checkFunc func(t *testing.T, resp *http.Response, body []byte)

func hasStatus(want int) checkFunc {
	return func(t *testing.T, resp *http.Response, body []byte) {
		t.Helper()
		if resp.StatusCode != want {
			t.Errorf("status %d; want %d (body %s)", resp.StatusCode, want, body)
		}
	}
}

// hasCode checks for a wire.Error body with code, a message, a JSON content type and the status
// that goes with the code.
func hasCode(want wire.ErrorCode) checkFunc {
	return func(t *testing.T, resp *http.Response, body []byte) {
		t.Helper()
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type %q; want application/json", ct)
		}
		var e wire.Error
		if err := json.Unmarshal(body, &e); err != nil {
			t.Fatalf("body %s is not a wire.Error: %v", body, err)
		}
		if e.Code != want || e.Message == "" {
			t.Errorf("error %+v; want code %s with a message", e, want)
		}
		if got := statusOf(want); resp.StatusCode != got {
			t.Errorf("status %d; want %d for code %s", resp.StatusCode, got, want)
		}
	}
}

func hasHeader(key, want string) checkFunc {
	return func(t *testing.T, resp *http.Response, body []byte) {
		t.Helper()
		if got := resp.Header.Get(key); got != want {
			t.Errorf("header %s = %q; want %q", key, got, want)
		}
	}
}

// decodesTo checks that the body decodes strictly into T and passes check.
func decodesTo[T any](check func(t *testing.T, v T)) checkFunc {
	return func(t *testing.T, resp *http.Response, body []byte) {
		t.Helper()
		var v T
		dec := json.NewDecoder(strings.NewReader(string(body)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("body %s does not decode into %T: %v", body, v, err)
		}
		check(t, v)
	}
}

// httpBed is an Engine on a fake API behind the lock API handler.
type httpBed struct {
	*bed
	srv *httptest.Server
}

func newHTTPBed(t *testing.T) *httpBed {
	b := newBed(t, "pod-a", nil, nil)
	srv := httptest.NewServer(NewHandler(b.e))
	t.Cleanup(srv.Close)
	return &httpBed{bed: b, srv: srv}
}

func (h *httpBed) do(t *testing.T, method, path, contentType, body string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, h.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, data
}

const jsonType = "application/json"

func TestHTTPRequests(t *testing.T) {
	h := newHTTPBed(t)
	owner, other := h.open(), h.open()
	h.mustAcquire(owner.ID, "held")
	if _, err := h.e.Join(owner.ID, "e"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "owner to lead", func() bool { return holderOfStored(h.api, LeaseName(wire.KindElection, "e")) == owner.Holder })
	streamCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go h.e.StreamEvents(streamCtx, owner.ID, func(wire.Event) error { return nil })
	eventually(t, "owner's stream", func() bool {
		s, _ := h.e.session(owner.ID)
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.streaming
	})

	oth := wire.SessionPath(other.ID)
	hexID := regexp.MustCompile(`^[0-9a-f]{32}$`)
	for _, tc := range []struct {
		name, method, path, ct, body string
		checks                       []checkFunc
	}{
		{"open session, no body", "POST", wire.PathSessions, "", "", []checkFunc{hasStatus(201), decodesTo(func(t *testing.T, s wire.Session) {
			if !hexID.MatchString(s.ID) || s.Holder != "pod-a/"+s.ID || s.TTLMillis != wire.DefaultSessionTTL.Milliseconds() {
				t.Errorf("session %+v; want a 32-hex ID, holder pod-a/<id> and the default TTL", s)
			}
		})}},
		{"open session with TTL", "POST", wire.PathSessions, "application/json; charset=utf-8", `{"ttlMillis":5000,"client":"test"}`, []checkFunc{hasStatus(201), decodesTo(func(t *testing.T, s wire.Session) {
			if s.TTLMillis != 5000 {
				t.Errorf("TTL %d; want 5000", s.TTLMillis)
			}
		})}},
		{"wrong content type", "POST", wire.PathSessions, "text/plain", `{}`, []checkFunc{hasCode(wire.CodeUnsupportedType)}},
		{"body without content type", "POST", wire.PathSessions, "", `{}`, []checkFunc{hasCode(wire.CodeUnsupportedType)}},
		{"unknown field", "POST", wire.PathSessions, jsonType, `{"ttl":5}`, []checkFunc{hasCode(wire.CodeBadRequest)}},
		{"TTL too short", "POST", wire.PathSessions, jsonType, `{"ttlMillis":10}`, []checkFunc{hasCode(wire.CodeInvalidTimeout)}},
		{"TTL too long", "POST", wire.PathSessions, jsonType, `{"ttlMillis":300001}`, []checkFunc{hasCode(wire.CodeInvalidTimeout)}},
		{"TTL of the wrong type", "POST", wire.PathSessions, jsonType, `{"ttlMillis":"5s"}`, []checkFunc{hasCode(wire.CodeBadRequest)}},
		{"two JSON values", "POST", wire.PathSessions, jsonType, `{} {}`, []checkFunc{hasCode(wire.CodeBadRequest)}},
		{"not JSON", "POST", wire.PathSessions, jsonType, `ttl=5`, []checkFunc{hasCode(wire.CodeBadRequest)}},
		{"body too large", "POST", wire.PathSessions, jsonType, `{"client":"` + strings.Repeat("x", wire.MaxRequestBytes) + `"}`, []checkFunc{hasCode(wire.CodeTooLarge)}},
		{"wrong method on sessions", "GET", wire.PathSessions, "", "", []checkFunc{hasCode(wire.CodeMethod), hasHeader("Allow", "POST")}},
		{"close unknown session", "DELETE", wire.SessionPath("nope"), "", "", []checkFunc{hasCode(wire.CodeNoSession)}},
		{"keep-alive unknown session", "POST", wire.SessionKeepAlivePath("nope"), "", "", []checkFunc{hasCode(wire.CodeNoSession)}},
		{"keep-alive", "POST", wire.SessionKeepAlivePath(other.ID), "", "", []checkFunc{hasStatus(204)}},
		{"events of unknown session", "GET", wire.SessionEventsPath("nope"), "", "", []checkFunc{hasCode(wire.CodeNoSession)}},
		{"second event stream", "GET", wire.SessionEventsPath(owner.ID), "", "", []checkFunc{hasCode(wire.CodeAlreadyHeld)}},
		{"acquire in unknown session", "POST", wire.SessionLockPath("nope", "x"), "", "", []checkFunc{hasCode(wire.CodeNoSession)}},
		{"control character in name", "POST", wire.SessionLockPath(other.ID, "bad\x01name"), "", "", []checkFunc{hasCode(wire.CodeInvalidName)}},
		{"name too long", "POST", wire.SessionLockPath(other.ID, strings.Repeat("n", wire.MaxNameLength+1)), "", "", []checkFunc{hasCode(wire.CodeInvalidName)}},
		{"invalid UTF-8 name", "POST", oth + "/locks/%FF", "", "", []checkFunc{hasCode(wire.CodeInvalidName)}},
		{"negative timeout", "POST", wire.SessionLockPath(other.ID, "x"), jsonType, `{"timeoutMillis":-1}`, []checkFunc{hasCode(wire.CodeInvalidTimeout)}},
		{"timeout above maximum", "POST", wire.SessionLockPath(other.ID, "x"), jsonType, `{"timeoutMillis":86400001}`, []checkFunc{hasCode(wire.CodeInvalidTimeout)}},
		{"try with timeout", "POST", wire.SessionLockPath(other.ID, "x"), jsonType, `{"try":true,"timeoutMillis":5}`, []checkFunc{hasCode(wire.CodeInvalidTimeout)}},
		{"try of the wrong type", "POST", wire.SessionLockPath(other.ID, "x"), jsonType, `{"try":"yes"}`, []checkFunc{hasCode(wire.CodeBadRequest)}},
		{"try a held lock", "POST", wire.SessionLockPath(other.ID, "held"), jsonType, `{"try":true}`, []checkFunc{hasCode(wire.CodeNotAcquired)}},
		{"acquire a lock already held", "POST", wire.SessionLockPath(owner.ID, "held"), "", "", []checkFunc{hasCode(wire.CodeAlreadyHeld)}},
		{"try a free lock", "POST", wire.SessionLockPath(other.ID, "free"), jsonType, `{"try":true}`, []checkFunc{hasStatus(200), decodesTo(func(t *testing.T, g wire.Grant) {
			if g.Name != "free" || g.Holder != other.Holder || g.Token == "" || g.Lease != LeaseName(wire.KindLock, "free") {
				t.Errorf("grant %+v; want free held by %s with a token", g, other.Holder)
			}
		})}},
		{"release a lock not held", "DELETE", wire.SessionLockPath(other.ID, "held"), "", "", []checkFunc{hasCode(wire.CodeNotHeld)}},
		{"release", "DELETE", wire.SessionLockPath(other.ID, "free"), "", "", []checkFunc{hasStatus(204)}},
		{"wrong method on a lock", "PUT", wire.SessionLockPath(other.ID, "x"), "", "", []checkFunc{hasCode(wire.CodeMethod), hasHeader("Allow", "DELETE, POST")}},
		{"stand in an election", "PUT", wire.SessionElectionPath(other.ID, "e"), "", "", []checkFunc{hasStatus(200), decodesTo(func(t *testing.T, st wire.ElectionState) {
			if !st.Held || st.Holder != owner.Holder || st.Name != "e" {
				t.Errorf("state %+v; want e led by %s", st, owner.Holder)
			}
		})}},
		{"resign without leading", "POST", wire.SessionResignPath(other.ID, "e"), "", "", []checkFunc{hasCode(wire.CodeNotHeld)}},
		{"leave an election not joined", "DELETE", wire.SessionElectionPath(other.ID, "never"), "", "", []checkFunc{hasCode(wire.CodeNotHeld)}},
		{"wrong method on resign", "GET", wire.SessionResignPath(owner.ID, "e"), "", "", []checkFunc{hasCode(wire.CodeMethod), hasHeader("Allow", "POST")}},
		{"lock state", "GET", wire.LockPath("held"), "", "", []checkFunc{hasStatus(200), decodesTo(func(t *testing.T, st wire.LockState) {
			if !st.Held || st.Holder != owner.Holder || st.Token == "" || st.LeaseDurationSeconds != 15 || st.AcquireTime == nil {
				t.Errorf("state %+v; want held by %s with token, times and duration", st, owner.Holder)
			}
		})}},
		{"state of a dot-dot name", "GET", wire.LockPath(".."), "", "", []checkFunc{hasStatus(200), decodesTo(func(t *testing.T, st wire.LockState) {
			if st.Name != ".." || st.Held {
				t.Errorf("state %+v; want the free lock \"..\"", st)
			}
		})}},
		{"election state", "GET", wire.ElectionPath("e"), "", "", []checkFunc{hasStatus(200), decodesTo(func(t *testing.T, st wire.ElectionState) {
			if st.Holder != owner.Holder {
				t.Errorf("leader %q; want %q", st.Holder, owner.Holder)
			}
		})}},
		{"state with invalid name", "GET", wire.LockPath("a\x7fb"), "", "", []checkFunc{hasCode(wire.CodeInvalidName)}},
		{"wrong method on lock state", "POST", wire.LockPath("x"), "", "", []checkFunc{hasCode(wire.CodeMethod), hasHeader("Allow", "GET")}},
		{"unknown path", "GET", "/v1/nothing", "", "", []checkFunc{hasCode(wire.CodeNotFound)}},
		{"unversioned path", "GET", "/locks/x", "", "", []checkFunc{hasCode(wire.CodeNotFound)}},
		{"close a session", "DELETE", oth, "", "", []checkFunc{hasStatus(204)}},
		{"use a closed session", "POST", wire.SessionKeepAlivePath(other.ID), "", "", []checkFunc{hasCode(wire.CodeNoSession)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := h.do(t, tc.method, tc.path, tc.ct, tc.body)
			for _, check := range tc.checks {
				check(t, resp, body)
			}
		})
	}
}

// readLines returns the NDJSON values of a streaming response, decoded into T, on a channel.
func readLines[T any](t *testing.T, body io.Reader) <-chan T {
	ch := make(chan T, 100)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(body)
		for sc.Scan() {
			var v T
			if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
				t.Errorf("stream line %q: %v", sc.Text(), err)
				return
			}
			ch <- v
		}
	}()
	return ch
}

func (h *httpBed) get(t *testing.T, ctx context.Context, path string) *http.Response {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, "GET", h.srv.URL+path, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func TestHTTPEventStream(t *testing.T) {
	h := newHTTPBed(t)
	s := h.open()
	resp := h.get(t, context.Background(), wire.SessionEventsPath(s.ID))
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("events: status %d, Content-Type %q; want 200 application/x-ndjson", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	evs := readLines[wire.Event](t, resp.Body)
	if ev := wait(t, evs); ev.Type != wire.EventReady {
		t.Fatalf("first event %+v; want ready", ev)
	}
	if r, body := h.do(t, "PUT", wire.SessionElectionPath(s.ID, "e"), "", ""); r.StatusCode != 200 {
		t.Fatalf("join: %d %s", r.StatusCode, body)
	}
	if ev := wait(t, evs); ev.Type != wire.EventElected || ev.Kind != wire.KindElection || ev.Grant.Name != "e" {
		t.Fatalf("event %+v; want elected in e", ev)
	}
	if r, body := h.do(t, "POST", wire.SessionResignPath(s.ID, "e"), "", ""); r.StatusCode != 204 {
		t.Fatalf("resign: %d %s", r.StatusCode, body)
	}
	if ev := wait(t, evs); ev.Type != wire.EventDeposed || ev.Reason != "resigned" {
		t.Fatalf("event %+v; want deposed (resigned)", ev)
	}
	if r, body := h.do(t, "DELETE", wire.SessionPath(s.ID), "", ""); r.StatusCode != 204 {
		t.Fatalf("close: %d %s", r.StatusCode, body)
	}
	if ev := wait(t, evs); ev.Type != wire.EventClosed {
		t.Fatalf("event %+v; want closed", ev)
	}
	if _, open := <-evs; open {
		t.Errorf("stream still open after the closed event")
	}
}

func TestHTTPClientDisconnects(t *testing.T) {
	for _, tc := range []struct {
		name  string
		start func(h *httpBed, ctx context.Context, holder, waiter wire.Session)
		check func(t *testing.T, h *httpBed, holder, waiter wire.Session)
	}{
		{"event stream closed ends the session", func(h *httpBed, ctx context.Context, holder, _ wire.Session) {
			h.get(h.t, ctx, wire.SessionEventsPath(holder.ID))
		}, func(t *testing.T, h *httpBed, holder, _ wire.Session) {
			eventually(t, "the session to end", func() bool { return codeOf(h.e.KeepAlive(holder.ID)) == wire.CodeNoSession })
			eventually(t, "the lock to be released", func() bool { return holderOfStored(h.api, LeaseName(wire.KindLock, "d")) == "" })
		}},
		{"blocking acquire abandoned", func(h *httpBed, ctx context.Context, _, waiter wire.Session) {
			go func() {
				req, _ := http.NewRequestWithContext(ctx, "POST", h.srv.URL+wire.SessionLockPath(waiter.ID, "d"), nil)
				if resp, err := http.DefaultClient.Do(req); err == nil {
					resp.Body.Close()
				}
			}()
			eventually(h.t, "the waiter to queue", func() bool { return h.waiting(wire.KindLock, "d") == 1 })
		}, func(t *testing.T, h *httpBed, holder, waiter wire.Session) {
			eventually(t, "the waiter to leave the queue", func() bool { return h.waiting(wire.KindLock, "d") == 0 })
			if err := h.e.KeepAlive(waiter.ID); err != nil {
				t.Errorf("the waiter's session ended: %v", err)
			}
			if got := holderOfStored(h.api, LeaseName(wire.KindLock, "d")); got != holder.Holder {
				t.Errorf("holder %q; want %q", got, holder.Holder)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHTTPBed(t)
			holder, waiter := h.open(), h.open()
			h.mustAcquire(holder.ID, "d")
			ctx, cancel := context.WithCancel(context.Background())
			tc.start(h, ctx, holder, waiter)
			cancel()
			tc.check(t, h, holder, waiter)
		})
	}
}

func TestHTTPWatch(t *testing.T) {
	h := newHTTPBed(t)
	s := h.open()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	resp := h.get(t, ctx, wire.ElectionWatchPath("w"))
	states := readLines[wire.ElectionState](t, resp.Body)
	if st := wait(t, states); st.Held || st.Name != "w" {
		t.Fatalf("first state %+v; want w free", st)
	}
	if _, err := h.e.Join(s.ID, "w"); err != nil {
		t.Fatal(err)
	}
	if st := wait(t, states); !st.Held || st.Holder != s.Holder {
		t.Fatalf("state %+v; want led by %s", st, s.Holder)
	}
}

func TestHTTPUnavailableAndShuttingDown(t *testing.T) {
	api := newFakeAPI(t)
	e, err := NewEngine(Config{PodName: "pod-a", Namespace: testNS}, fakeLeases(api.cs, testNS), Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(NewHandler(e))
	defer srv.Close()
	h := &httpBed{bed: &bed{t: t, api: api, e: e}, srv: srv}

	resp, body := h.do(t, "POST", wire.PathSessions, "", "")
	hasCode(wire.CodeUnavailable)(t, resp, body)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	resp, body = h.do(t, "POST", wire.PathSessions, "", "")
	hasStatus(201)(t, resp, body)
	if err := e.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	resp, body = h.do(t, "POST", wire.PathSessions, "", "")
	hasCode(wire.CodeShuttingDown)(t, resp, body)
}
