package server

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/metaparticle-io/sync/elector"
	"github.com/metaparticle-io/sync/elector/internal/leasefake"
	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/wire"
)

// checkFunc checks one aspect of a response.
type checkFunc func(t *testing.T, resp *http.Response, body []byte)

func hasStatus(want int) checkFunc {
	return func(t *testing.T, resp *http.Response, body []byte) {
		t.Helper()
		if resp.StatusCode != want {
			t.Errorf("got status %d (body %s); want %d", resp.StatusCode, body, want)
		}
	}
}

// hasCode checks for a wire.Error body with code, a message, a JSON content type and the status
// that goes with the code.
func hasCode(want wire.ErrorCode) checkFunc {
	return func(t *testing.T, resp *http.Response, body []byte) {
		t.Helper()
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("got Content-Type %q; want application/json", ct)
		}
		var e wire.Error
		if err := json.Unmarshal(body, &e); err != nil {
			t.Fatalf("got body %s (%v); want a wire.Error", body, err)
		}
		if e.Code != want || e.Message == "" {
			t.Errorf("got error %+v; want code %s with a message", e, want)
		}
		if got := statusOf(want); resp.StatusCode != got {
			t.Errorf("got status %d; want %d for code %s", resp.StatusCode, got, want)
		}
	}
}

func hasHeader(key, want string) checkFunc {
	return func(t *testing.T, resp *http.Response, body []byte) {
		t.Helper()
		if got := resp.Header.Get(key); got != want {
			t.Errorf("got header %s %q; want %q", key, got, want)
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
			t.Fatalf("got body %s (%v); want a %T", body, err, v)
		}
		check(t, v)
	}
}

// httpBed is an Engine on a fake API behind the lock API handler, served in the test's bubble.
type httpBed struct {
	*bed
	srv *pipeServer
}

func newHTTPBed(t *testing.T) *httpBed {
	b := newBed(t, "pod-a", nil, nil)
	return &httpBed{bed: b, srv: newPipeServer(t, NewHandler(b.e))}
}

func (h *httpBed) do(t *testing.T, method, path, contentType, body string) (*http.Response, []byte) {
	t.Helper()
	return h.doAuth(t, method, path, contentType, body, "")
}

// doAuth is do with the Authorization header auth (see httpRequestCase.auth).
func (h *httpBed) doAuth(t *testing.T, method, path, contentType, body, auth string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, h.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatalf("NewRequest(%s %s): got %v; want nil", method, path, err)
	}
	switch auth {
	case "":
		h.authorize(req, path)
	case "-":
	default:
		req.Header.Set(wire.HeaderAuthorization, auth)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := h.srv.Client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: got %v; want a response", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: got %v; want nil", method, path, err)
	}
	return resp, data
}

const jsonType = "application/json"

// httpRequestCase is one request of TestHTTPRequests.
type httpRequestCase struct {
	name, method, path, ct, body string
	// auth is the Authorization header: "" for the secret of the session in the path, as its
	// client sends it; "-" for none.
	auth string
	// before, if set, makes the state the request is about, beyond that of newRequestsBed;
	// after, if set, checks the state the request left.
	before, after func(t *testing.T, h *httpBed)
	checks        []checkFunc
}

// newRequestsBed is the bed of TestHTTPRequests: owner holds the lock "held", leads the
// election "e" and streams its events; other is a second session.
func newRequestsBed(t *testing.T) (h *httpBed, owner, other wire.Session) {
	t.Helper()
	h = newHTTPBed(t)
	owner, other = h.open(), h.open()
	h.mustAcquire(owner.Key(), "held")
	if _, err := h.e.Join(owner.Key(), "e"); err != nil {
		t.Fatalf("Join: got %v; want nil", err)
	}
	settled(t, "leader of e", func() string { return holderOfStored(h.api, contract.LeaseName(wire.KindElection, "e")) }, owner.Holder)
	streamCtx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	h.streamAttached(streamCtx, owner.Key())
	return h, owner, other
}

// httpRequestCases returns the cases of TestHTTPRequests for a bed made by newRequestsBed.
func httpRequestCases(owner, other wire.Session) []httpRequestCase {
	oth := wire.SessionPath(other.ID)
	hexID := regexp.MustCompile(`^[0-9a-f]{32}$`)
	return []httpRequestCase{
		{name: "open session, no body", method: "POST", path: wire.PathSessions, checks: []checkFunc{hasStatus(201), decodesTo(func(t *testing.T, s wire.Session) {
			if !hexID.MatchString(s.ID) || s.Holder != "pod-a/"+s.ID || s.TTLMillis != wire.DefaultSessionTTL.Milliseconds() {
				t.Errorf("got session %+v; want a 32-hex ID, holder pod-a/<id> and the default TTL", s)
			}
		})}},
		{name: "open session with TTL", method: "POST", path: wire.PathSessions, ct: "application/json; charset=utf-8", body: `{"ttlMillis":5000,"client":"test"}`, checks: []checkFunc{hasStatus(201), decodesTo(func(t *testing.T, s wire.Session) {
			if s.TTLMillis != 5000 {
				t.Errorf("got TTL %d; want 5000", s.TTLMillis)
			}
		})}},
		{name: "wrong content type", method: "POST", path: wire.PathSessions, ct: "text/plain", body: `{}`, checks: []checkFunc{hasCode(wire.CodeUnsupportedType)}},
		{name: "body without content type", method: "POST", path: wire.PathSessions, body: `{}`, checks: []checkFunc{hasCode(wire.CodeUnsupportedType)}},
		{name: "unknown field", method: "POST", path: wire.PathSessions, ct: jsonType, body: `{"ttl":5}`, checks: []checkFunc{hasCode(wire.CodeBadRequest)}},
		{name: "TTL too short", method: "POST", path: wire.PathSessions, ct: jsonType, body: `{"ttlMillis":10}`, checks: []checkFunc{hasCode(wire.CodeInvalidTimeout)}},
		{name: "TTL too long", method: "POST", path: wire.PathSessions, ct: jsonType, body: `{"ttlMillis":300001}`, checks: []checkFunc{hasCode(wire.CodeInvalidTimeout)}},
		{name: "TTL of the wrong type", method: "POST", path: wire.PathSessions, ct: jsonType, body: `{"ttlMillis":"5s"}`, checks: []checkFunc{hasCode(wire.CodeBadRequest)}},
		{name: "two JSON values", method: "POST", path: wire.PathSessions, ct: jsonType, body: `{} {}`, checks: []checkFunc{hasCode(wire.CodeBadRequest)}},
		{name: "not JSON", method: "POST", path: wire.PathSessions, ct: jsonType, body: `ttl=5`, checks: []checkFunc{hasCode(wire.CodeBadRequest)}},
		{name: "body too large", method: "POST", path: wire.PathSessions, ct: jsonType, body: `{"client":"` + strings.Repeat("x", wire.MaxRequestBytes) + `"}`, checks: []checkFunc{hasCode(wire.CodeTooLarge)}},
		{name: "wrong method on sessions", method: "GET", path: wire.PathSessions, checks: []checkFunc{hasCode(wire.CodeMethod), hasHeader("Allow", "POST")}},
		{name: "close unknown session", method: "DELETE", path: wire.SessionPath("nope"), checks: []checkFunc{hasCode(wire.CodeNoSession)}},
		{name: "keep-alive unknown session", method: "POST", path: wire.SessionKeepAlivePath("nope"), checks: []checkFunc{hasCode(wire.CodeNoSession)}},
		{name: "keep-alive", method: "POST", path: wire.SessionKeepAlivePath(other.ID), checks: []checkFunc{hasStatus(200), decodesTo(func(t *testing.T, r wire.KeepAliveResponse) {
			if r.Holds == nil || len(r.Holds) != 0 {
				t.Errorf("got holds %+v; want an empty list", r.Holds)
			}
		})}},
		{name: "keep-alive of a holder", method: "POST", path: wire.SessionKeepAlivePath(owner.ID), checks: []checkFunc{hasStatus(200), decodesTo(func(t *testing.T, r wire.KeepAliveResponse) {
			if len(r.Holds) != 2 || r.Holds[0].Kind != wire.KindElection || r.Holds[0].Name != "e" || r.Holds[1].Kind != wire.KindLock || r.Holds[1].Name != "held" {
				t.Fatalf("got holds %+v; want election e and lock held", r.Holds)
			}
			for _, h := range r.Holds {
				if h.Token == "" || h.ValidForMillis != contract.DefaultRenewDeadline.Milliseconds() {
					t.Errorf("got hold %+v; want a token and validity %d (the renew deadline: the clock has not moved)", h, contract.DefaultRenewDeadline.Milliseconds())
				}
			}
		})}},
		{name: "events of unknown session", method: "GET", path: wire.SessionEventsPath("nope"), checks: []checkFunc{hasCode(wire.CodeNoSession)}},
		{name: "second event stream", method: "GET", path: wire.SessionEventsPath(owner.ID), checks: []checkFunc{hasCode(wire.CodeAlreadyHeld)}},
		{name: "acquire in unknown session", method: "POST", path: wire.SessionLockPath("nope", "x"), checks: []checkFunc{hasCode(wire.CodeNoSession)}},
		{name: "control character in name", method: "POST", path: wire.SessionLockPath(other.ID, "bad\x01name"), checks: []checkFunc{hasCode(wire.CodeInvalidName)}},
		{name: "name too long", method: "POST", path: wire.SessionLockPath(other.ID, strings.Repeat("n", wire.MaxNameLength+1)), checks: []checkFunc{hasCode(wire.CodeInvalidName)}},
		{name: "invalid UTF-8 name", method: "POST", path: oth + "/locks/%FF", checks: []checkFunc{hasCode(wire.CodeInvalidName)}},
		{name: "negative timeout", method: "POST", path: wire.SessionLockPath(other.ID, "x"), ct: jsonType, body: `{"timeoutMillis":-1}`, checks: []checkFunc{hasCode(wire.CodeInvalidTimeout)}},
		{name: "timeout above maximum", method: "POST", path: wire.SessionLockPath(other.ID, "x"), ct: jsonType, body: `{"timeoutMillis":86400001}`, checks: []checkFunc{hasCode(wire.CodeInvalidTimeout)}},
		{name: "try with timeout", method: "POST", path: wire.SessionLockPath(other.ID, "x"), ct: jsonType, body: `{"try":true,"timeoutMillis":5}`, checks: []checkFunc{hasCode(wire.CodeInvalidTimeout)}},
		{name: "try of the wrong type", method: "POST", path: wire.SessionLockPath(other.ID, "x"), ct: jsonType, body: `{"try":"yes"}`, checks: []checkFunc{hasCode(wire.CodeBadRequest)}},
		{name: "try a held lock", method: "POST", path: wire.SessionLockPath(other.ID, "held"), ct: jsonType, body: `{"try":true}`, checks: []checkFunc{hasCode(wire.CodeNotAcquired)}},
		{name: "acquire a lock already held", method: "POST", path: wire.SessionLockPath(owner.ID, "held"), checks: []checkFunc{hasCode(wire.CodeAlreadyHeld)}},
		{name: "try a free lock", method: "POST", path: wire.SessionLockPath(other.ID, "free"), ct: jsonType, body: `{"try":true}`, checks: []checkFunc{hasStatus(200), decodesTo(func(t *testing.T, g wire.Grant) {
			if g.Name != "free" || g.Holder != other.Holder || g.Token == "" || g.Lease != contract.LeaseName(wire.KindLock, "free") {
				t.Errorf("got grant %+v; want free held by %s with a token", g, other.Holder)
			}
		})}},
		{name: "release a lock not held", method: "DELETE", path: wire.SessionLockPath(other.ID, "held"), checks: []checkFunc{hasCode(wire.CodeNotHeld)}},
		// The holder identity is public (GET lock state, kubectl get lease): its session ID
		// alone must not let another process act for the session.
		{name: "release with the holder's ID and no secret", method: "DELETE", path: wire.SessionLockPath(owner.ID, "held"), auth: "-",
			checks: []checkFunc{hasCode(wire.CodeUnauthorized), hasHeader("WWW-Authenticate", `Bearer realm="metaparticle-sync session"`)}, after: ownerStillHolds(owner)},
		{name: "release with another session's secret", method: "DELETE", path: wire.SessionLockPath(owner.ID, "held"), auth: other.Key().Authorization(),
			checks: []checkFunc{hasCode(wire.CodeUnauthorized)}, after: ownerStillHolds(owner)},
		{name: "close with a malformed Authorization", method: "DELETE", path: wire.SessionPath(owner.ID), auth: "Basic " + owner.Secret,
			checks: []checkFunc{hasCode(wire.CodeUnauthorized)}, after: ownerStillHolds(owner)},
		{name: "events with no secret", method: "GET", path: wire.SessionEventsPath(other.ID), auth: "-", checks: []checkFunc{hasCode(wire.CodeUnauthorized)}},
		{name: "keep-alive with no secret", method: "POST", path: wire.SessionKeepAlivePath(other.ID), auth: "-", checks: []checkFunc{hasCode(wire.CodeUnauthorized)}},
		{name: "release", method: "DELETE", path: wire.SessionLockPath(other.ID, "free"), before: func(t *testing.T, h *httpBed) {
			h.mustAcquire(other.Key(), "free")
		}, checks: []checkFunc{hasStatus(204)}},
		{name: "wrong method on a lock", method: "PUT", path: wire.SessionLockPath(other.ID, "x"), checks: []checkFunc{hasCode(wire.CodeMethod), hasHeader("Allow", "DELETE, POST")}},
		{name: "stand in an election", method: "PUT", path: wire.SessionElectionPath(other.ID, "e"), checks: []checkFunc{hasStatus(200), decodesTo(func(t *testing.T, st wire.ElectionState) {
			if !st.Held || st.Holder != owner.Holder || st.Name != "e" {
				t.Errorf("got state %+v; want e led by %s", st, owner.Holder)
			}
		})}},
		{name: "resign without leading", method: "POST", path: wire.SessionResignPath(other.ID, "e"), before: func(t *testing.T, h *httpBed) {
			if _, err := h.e.Join(other.Key(), "e"); err != nil {
				t.Fatalf("Join: got %v; want nil", err)
			}
		}, checks: []checkFunc{hasCode(wire.CodeNotHeld)}},
		{name: "leave an election not joined", method: "DELETE", path: wire.SessionElectionPath(other.ID, "never"), checks: []checkFunc{hasCode(wire.CodeNotHeld)}},
		{name: "wrong method on resign", method: "GET", path: wire.SessionResignPath(owner.ID, "e"), checks: []checkFunc{hasCode(wire.CodeMethod), hasHeader("Allow", "POST")}},
		{name: "lock state", method: "GET", path: wire.LockPath("held"), checks: []checkFunc{hasStatus(200), decodesTo(func(t *testing.T, st wire.LockState) {
			if !st.Held || st.Holder != owner.Holder || st.Token == "" || st.LeaseDurationSeconds != 15 || st.AcquireTime == nil {
				t.Errorf("got state %+v; want held by %s with token, times and duration", st, owner.Holder)
			}
		})}},
		{name: "state of a dot-dot name", method: "GET", path: wire.LockPath(".."), checks: []checkFunc{hasStatus(200), decodesTo(func(t *testing.T, st wire.LockState) {
			if st.Name != ".." || st.Held {
				t.Errorf("got state %+v; want the free lock \"..\"", st)
			}
		})}},
		{name: "election state", method: "GET", path: wire.ElectionPath("e"), checks: []checkFunc{hasStatus(200), decodesTo(func(t *testing.T, st wire.ElectionState) {
			if st.Holder != owner.Holder {
				t.Errorf("got leader %q; want %q", st.Holder, owner.Holder)
			}
		})}},
		{name: "state with invalid name", method: "GET", path: wire.LockPath("a\x7fb"), checks: []checkFunc{hasCode(wire.CodeInvalidName)}},
		{name: "wrong method on lock state", method: "POST", path: wire.LockPath("x"), checks: []checkFunc{hasCode(wire.CodeMethod), hasHeader("Allow", "GET")}},
		{name: "unknown path", method: "GET", path: "/v1/nothing", checks: []checkFunc{hasCode(wire.CodeNotFound)}},
		{name: "unversioned path", method: "GET", path: "/locks/x", checks: []checkFunc{hasCode(wire.CodeNotFound)}},
		{name: "close a session", method: "DELETE", path: oth, checks: []checkFunc{hasStatus(204)}},
		{name: "use a closed session", method: "POST", path: wire.SessionKeepAlivePath(other.ID), before: func(t *testing.T, h *httpBed) {
			if err := h.e.CloseSession(other.Key()); err != nil {
				t.Fatalf("CloseSession: got %v; want nil", err)
			}
		}, checks: []checkFunc{hasCode(wire.CodeNoSession)}},
	}
}

// ownerStillHolds checks that a refused request changed nothing for owner: it still holds
// "held" and its session is open.
func ownerStillHolds(owner wire.Session) func(t *testing.T, h *httpBed) {
	return func(t *testing.T, h *httpBed) {
		h.settle()
		if got := holderOfStored(h.api, contract.LeaseName(wire.KindLock, "held")); got != owner.Holder {
			t.Errorf("got holder %q of held; want the owner %q", got, owner.Holder)
		}
		if _, err := h.e.KeepAlive(owner.Key()); err != nil {
			t.Errorf("owner's keep-alive: got %v; want nil", err)
		}
	}
}

// TestHTTPRequests makes each request in a bubble of its own, on a bed of newRequestsBed; a
// request about what an earlier one did (release what a try took, resign after standing, use a
// closed session) makes that state first, with before.
func TestHTTPRequests(t *testing.T) {
	for i, tc := range httpRequestCases(wire.Session{}, wire.Session{}) {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h, owner, other := newRequestsBed(t)
				tc := httpRequestCases(owner, other)[i]
				if tc.before != nil {
					tc.before(t, h)
					h.settle()
				}
				resp, body := h.doAuth(t, tc.method, tc.path, tc.ct, tc.body, tc.auth)
				for _, check := range tc.checks {
					check(t, resp, body)
				}
				if tc.after != nil {
					tc.after(t, h)
				}
			})
		})
	}
}

// readLines returns the NDJSON values of a streaming response, decoded into T, on a channel
// that closes when the stream ends.
func readLines[T any](t *testing.T, body io.Reader) <-chan T {
	ch := make(chan T, 100)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(body)
		for sc.Scan() {
			var v T
			if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
				t.Errorf("stream line %q: got %v; want a %T", sc.Text(), err, v)
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
	h.authorize(req, path)
	resp, err := h.srv.Client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: got %v; want a response", path, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func TestHTTPEventStream(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHTTPBed(t)
		s := h.open()
		resp := h.get(t, context.Background(), wire.SessionEventsPath(s.ID))
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ndjson" {
			t.Fatalf("events: got status %d, Content-Type %q; want 200 application/x-ndjson", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		evs := readLines[wire.Event](t, resp.Body)
		if ev := wait(t, evs); ev.Type != wire.EventReady {
			t.Fatalf("got first event %+v; want ready", ev)
		}
		if r, body := h.do(t, "PUT", wire.SessionElectionPath(s.ID, "e"), "", ""); r.StatusCode != 200 {
			t.Fatalf("join: got %d %s; want 200", r.StatusCode, body)
		}
		if ev := wait(t, evs); ev.Type != wire.EventElected || ev.Kind != wire.KindElection || ev.Grant.Name != "e" {
			t.Fatalf("got event %+v; want elected in e", ev)
		}
		if r, body := h.do(t, "POST", wire.SessionResignPath(s.ID, "e"), "", ""); r.StatusCode != 204 {
			t.Fatalf("resign: got %d %s; want 204", r.StatusCode, body)
		}
		if ev := wait(t, evs); ev.Type != wire.EventDeposed || ev.Reason != "resigned" {
			t.Fatalf("got event %+v; want deposed (resigned)", ev)
		}
		if r, body := h.do(t, "DELETE", wire.SessionPath(s.ID), "", ""); r.StatusCode != 204 {
			t.Fatalf("close: got %d %s; want 204", r.StatusCode, body)
		}
		if ev := wait(t, evs); ev.Type != wire.EventClosed {
			t.Fatalf("got event %+v; want closed", ev)
		}
		synctest.Wait()
		select {
		case ev, open := <-evs:
			if open {
				t.Errorf("got event %+v after the closed event; want the stream ended", ev)
			}
		default:
			t.Errorf("got the stream still open after the closed event; want it ended")
		}
	})
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
			settled(t, "keep-alive of the holder's session", func() wire.ErrorCode { return codeOf(second(h.e.KeepAlive(holder.Key()))) }, wire.CodeNoSession)
			settled(t, "holder of d", func() string { return holderOfStored(h.api, contract.LeaseName(wire.KindLock, "d")) }, "")
		}},
		{"blocking acquire abandoned", func(h *httpBed, ctx context.Context, _, waiter wire.Session) {
			go func() {
				req, _ := http.NewRequestWithContext(ctx, "POST", h.srv.URL+wire.SessionLockPath(waiter.ID, "d"), nil)
				req.Header.Set(wire.HeaderAuthorization, waiter.Key().Authorization())
				if resp, err := h.srv.Client.Do(req); err == nil {
					resp.Body.Close()
				}
			}()
			settled(h.t, "waiters", func() int { return h.waiting(wire.KindLock) }, 1)
		}, func(t *testing.T, h *httpBed, holder, waiter wire.Session) {
			settled(t, "waiters after the client went", func() int { return h.waiting(wire.KindLock) }, 0)
			if _, err := h.e.KeepAlive(waiter.Key()); err != nil {
				t.Errorf("keep-alive of the waiter's session: got %v; want nil (the session lives on)", err)
			}
			if got := holderOfStored(h.api, contract.LeaseName(wire.KindLock, "d")); got != holder.Holder {
				t.Errorf("got holder %q; want %q", got, holder.Holder)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := newHTTPBed(t)
				holder, waiter := h.open(), h.open()
				h.mustAcquire(holder.Key(), "d")
				ctx, cancel := context.WithCancel(context.Background())
				tc.start(h, ctx, holder, waiter)
				cancel()
				tc.check(t, h, holder, waiter)
			})
		})
	}
}

func codeOf(err error) wire.ErrorCode {
	if err == nil {
		return ""
	}
	return wire.CodeOf(err)
}

func TestHTTPWatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHTTPBed(t)
		s := h.open()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		resp := h.get(t, ctx, wire.ElectionWatchPath("w"))
		states := readLines[wire.ElectionState](t, resp.Body)
		if st := wait(t, states); st.Held || st.Name != "w" {
			t.Fatalf("got first state %+v; want w free", st)
		}
		if _, err := h.e.Join(s.Key(), "w"); err != nil {
			t.Fatalf("Join: got %v; want nil", err)
		}
		if st := wait(t, states); !st.Held || st.Holder != s.Holder {
			t.Fatalf("got state %+v; want led by %s", st, s.Holder)
		}
	})
}

func TestHTTPUnavailableAndShuttingDown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		api := leasefake.New(t)
		e, err := elector.NewEngine(elector.Config{PodName: "pod-a", Namespace: testNS}, api.Leases(testNS), elector.Options{})
		if err != nil {
			t.Fatalf("NewEngine: got %v; want nil", err)
		}
		t.Cleanup(e.Halt)
		h := &httpBed{bed: &bed{t: t, api: api, e: e}, srv: newPipeServer(t, NewHandler(e))}

		resp, body := h.do(t, "POST", wire.PathSessions, "", "")
		hasCode(wire.CodeUnavailable)(t, resp, body)

		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := e.Start(ctx); err != nil {
			t.Fatalf("Start: got %v; want nil", err)
		}
		resp, body = h.do(t, "POST", wire.PathSessions, "", "")
		hasStatus(201)(t, resp, body)
		if err := e.Shutdown(ctx); err != nil {
			t.Fatalf("Shutdown: got %v; want nil", err)
		}
		resp, body = h.do(t, "POST", wire.PathSessions, "", "")
		hasCode(wire.CodeShuttingDown)(t, resp, body)
	})
}

// TestHTTPReleaseNamesItsToken: a DELETE that names a token other than the hold's changes
// nothing (409 not_held), so a late or repeated release never ends a later hold; the hold's own
// token, or none, releases it. The old side-car ignored the query and released whatever hold
// the session had.
func TestHTTPReleaseNamesItsToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHTTPBed(t)
		s := h.open()
		g := h.mustAcquire(s.Key(), "job")
		stale := wire.SessionLockReleasePath(s.ID, "job", "1")
		resp, body := h.do(t, http.MethodDelete, stale, "", "")
		if resp.StatusCode != http.StatusConflict || !strings.Contains(string(body), string(wire.CodeNotHeld)) {
			t.Fatalf("DELETE %s of a hold with token %s: got %d %s; want 409 %s", stale, g.Token, resp.StatusCode, body, wire.CodeNotHeld)
		}
		settled(t, "lock holds after a release naming another token", func() int { return h.holds(wire.KindLock) }, 1)
		own := wire.SessionLockReleasePath(s.ID, "job", g.Token)
		if resp, body := h.do(t, http.MethodDelete, own, "", ""); resp.StatusCode != http.StatusNoContent {
			t.Fatalf("DELETE %s: got %d %s; want 204", own, resp.StatusCode, body)
		}
		settled(t, "lock holds after releasing with the hold's token", func() int { return h.holds(wire.KindLock) }, 0)
		// A repeat of the same DELETE, after the session took the lock again, ends nothing.
		g2 := h.mustAcquire(s.Key(), "job")
		if resp, body := h.do(t, http.MethodDelete, own, "", ""); resp.StatusCode != http.StatusConflict {
			t.Fatalf("repeated DELETE %s with a new hold (token %s): got %d %s; want 409", own, g2.Token, resp.StatusCode, body)
		}
		settled(t, "lock holds after a repeated release", func() int { return h.holds(wire.KindLock) }, 1)
	})
}
