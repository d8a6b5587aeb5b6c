package sdk_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/metaparticle-io/sync/sdk"
	"github.com/metaparticle-io/sync/wire"
)

// fakeSidecar speaks the side-car's API (package wire) from memory, with hooks to inject faults:
// enough of the protocol to exercise the SDK's error paths without Kubernetes. Locks and
// elections are granted in the order asked, with tokens that grow per name.
type fakeSidecar struct {
	t   *testing.T
	srv *httptest.Server
	// ttl is the session TTL granted (default wire.DefaultSessionTTL).
	ttl time.Duration
	// validity, when set, is the validity the fake gives every grant and every keep-alive
	// (as the side-car does since hold validity); zero answers as an older side-car.
	validity time.Duration

	mu        sync.Mutex // protects everything below
	intercept func(w http.ResponseWriter, r *http.Request) bool
	sessions  map[string]*fakeSession
	nextID    int
	locks     map[string]*fakeHold // name -> holder
	tokens    map[string]uint64    // name -> last token granted
	elections map[string]*fakeElection
	changed   chan struct{} // closed and replaced on every change of locks or elections
	calls     map[string]int
	opened    []string // session ids in order of opening
}

type fakeSession struct {
	id     string
	events chan []byte   // lines of the event stream
	gone   chan struct{} // closed when the session ends
	drop   chan struct{} // closed to break the event stream without a closed event
	silent bool          // no pings
	ended  string        // why it ended
}

type fakeHold struct {
	session string
	token   uint64
}

type fakeElection struct {
	candidates []string // session ids in order of standing
	leader     string
	token      uint64
}

func newFake(t *testing.T) *fakeSidecar {
	t.Helper()
	f := &fakeSidecar{
		t:         t,
		ttl:       wire.DefaultSessionTTL,
		sessions:  map[string]*fakeSession{},
		locks:     map[string]*fakeHold{},
		tokens:    map[string]uint64{},
		elections: map[string]*fakeElection{},
		changed:   make(chan struct{}),
		calls:     map[string]int{},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/sessions", f.openSession)
	mux.HandleFunc("DELETE /v1/sessions/{id}", f.deleteSession)
	mux.HandleFunc("POST /v1/sessions/{id}/keepalive", f.keepAlive)
	mux.HandleFunc("GET /v1/sessions/{id}/events", f.events)
	mux.HandleFunc("POST /v1/sessions/{id}/locks/{name}", f.acquire)
	mux.HandleFunc("DELETE /v1/sessions/{id}/locks/{name}", f.release)
	mux.HandleFunc("PUT /v1/sessions/{id}/elections/{name}", f.stand)
	mux.HandleFunc("DELETE /v1/sessions/{id}/elections/{name}", f.leave)
	mux.HandleFunc("POST /v1/sessions/{id}/elections/{name}/resign", f.resign)
	mux.HandleFunc("GET /v1/elections/{name}", f.electionState)
	mux.HandleFunc("GET /v1/elections/{name}/watch", f.watch)
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.calls[r.Method+" "+route(r.URL.Path)]++
		hook := f.intercept
		f.mu.Unlock()
		if hook != nil && hook(w, r) {
			return
		}
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		f.mu.Lock()
		for _, s := range f.sessions {
			f.endLocked(s, "test over")
		}
		f.mu.Unlock()
		f.srv.CloseClientConnections()
		f.srv.Close()
	})
	return f
}

// route names a path by its shape, for counting calls: /v1/sessions/{id}/locks/{name} -> "lock".
func route(path string) string {
	parts := splitPath(path)
	switch {
	case len(parts) == 2:
		return "sessions"
	case len(parts) == 3 && parts[1] == "sessions":
		return "session"
	case len(parts) == 4 && parts[1] == "sessions":
		return parts[3] // keepalive, events
	case len(parts) == 5 && parts[3] == "locks":
		return "lock"
	case len(parts) == 5 && parts[3] == "elections":
		return "election"
	case len(parts) == 6:
		return "resign"
	case len(parts) == 3:
		return "state"
	default:
		return "watch"
	}
}

func splitPath(p string) []string {
	var out []string
	start := 1
	for i := 1; i <= len(p); i++ {
		if i == len(p) || p[i] == '/' {
			out = append(out, p[start:i])
			start = i + 1
		}
	}
	return out
}

// client returns a Client of the fake with quick back-off.
func (f *fakeSidecar) client(opts ...sdk.Option) *sdk.Client {
	f.t.Helper()
	opts = append([]sdk.Option{sdk.WithAddress(f.srv.Listener.Addr().String()), sdk.WithBackoff(time.Millisecond, 20*time.Millisecond)}, opts...)
	c, err := sdk.NewClient(opts...)
	if err != nil {
		f.t.Fatalf("NewClient: %v", err)
	}
	f.t.Cleanup(func() { c.Close() })
	return c
}

// setIntercept installs a hook that sees every request first; it returns true if it answered.
func (f *fakeSidecar) setIntercept(h func(w http.ResponseWriter, r *http.Request) bool) {
	f.mu.Lock()
	f.intercept = h
	f.mu.Unlock()
}

func (f *fakeSidecar) count(call string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[call]
}

// sessionIDs returns the ids of the sessions opened so far, in order.
func (f *fakeSidecar) sessionIDs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.opened...)
}

// holder returns the session holding lock name, or "".
func (f *fakeSidecar) holder(name string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if h := f.locks[name]; h != nil {
		return h.session
	}
	return ""
}

// leader returns the session leading election name, or "".
func (f *fakeSidecar) leader(name string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if e := f.elections[name]; e != nil {
		return e.leader
	}
	return ""
}

// send pushes ev on the event stream of session id.
func (f *fakeSidecar) send(id string, ev wire.Event) { f.sendRaw(id, line(ev)) }

// sendRaw pushes a raw line on the event stream of session id.
func (f *fakeSidecar) sendRaw(id string, l []byte) {
	f.mu.Lock()
	s := f.sessions[id]
	f.mu.Unlock()
	if s == nil {
		f.t.Fatalf("fake: no session %s", id)
	}
	s.events <- l
}

func line(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// forget drops session id and its holds without telling its stream, as a side-car that lost its
// state would: later requests for it get 404 no_session.
func (f *fakeSidecar) forget(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.sessions, id)
	f.releaseAllLocked(id)
}

// dropStream breaks the event stream of session id without a closed event.
func (f *fakeSidecar) dropStream(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s := f.sessions[id]; s != nil {
		close(s.drop)
	}
}

// silence stops the pings of session id.
func (f *fakeSidecar) silence(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s := f.sessions[id]; s != nil {
		s.silent = true
	}
}

// loseLock takes lock name from its holder, as a side-car that could not renew it would.
func (f *fakeSidecar) loseLock(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	h := f.locks[name]
	if h == nil {
		f.t.Fatalf("fake: lock %s not held", name)
	}
	delete(f.locks, name)
	if s := f.sessions[h.session]; s != nil {
		s.events <- line(wire.Event{Type: wire.EventLost, Kind: wire.KindLock, Reason: "renew deadline passed",
			Grant: &wire.Grant{Name: name, Token: strconv.FormatUint(h.token, 10)}})
	}
	f.changedLocked()
}

// depose takes leadership of election name from its leader and elects the next candidate.
func (f *fakeSidecar) depose(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e := f.elections[name]
	if e == nil || e.leader == "" {
		f.t.Fatalf("fake: election %s has no leader", name)
	}
	f.deposeLocked(name, e, "renew deadline passed")
	f.electLocked(name, e)
}

func (f *fakeSidecar) changedLocked() {
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fakeSidecar) endLocked(s *fakeSession, why string) {
	if s.ended != "" {
		return
	}
	s.ended = why
	close(s.gone)
	delete(f.sessions, s.id)
	f.releaseAllLocked(s.id)
}

func (f *fakeSidecar) releaseAllLocked(id string) {
	for name, h := range f.locks {
		if h.session == id {
			delete(f.locks, name)
		}
	}
	for name, e := range f.elections {
		for i, c := range e.candidates {
			if c == id {
				e.candidates = append(e.candidates[:i], e.candidates[i+1:]...)
				break
			}
		}
		if e.leader == id {
			e.leader = ""
			f.electLocked(name, e)
		}
	}
	f.changedLocked()
}

// electLocked makes the first candidate the leader if there is none.
func (f *fakeSidecar) electLocked(name string, e *fakeElection) {
	if e.leader != "" || len(e.candidates) == 0 {
		return
	}
	f.tokens[name]++
	e.leader, e.token = e.candidates[0], f.tokens[name]
	if s := f.sessions[e.leader]; s != nil {
		s.events <- line(wire.Event{Type: wire.EventElected, Kind: wire.KindElection,
			Grant: &wire.Grant{Name: name, Token: strconv.FormatUint(e.token, 10), Holder: "pod/" + e.leader}})
	}
	f.changedLocked()
}

// deposeLocked tells the leader it was deposed and moves it to the end of the candidates.
func (f *fakeSidecar) deposeLocked(name string, e *fakeElection, why string) {
	id := e.leader
	e.leader = ""
	for i, c := range e.candidates {
		if c == id {
			e.candidates = append(append(e.candidates[:i:i], e.candidates[i+1:]...), id)
			break
		}
	}
	if s := f.sessions[id]; s != nil {
		s.events <- line(wire.Event{Type: wire.EventDeposed, Kind: wire.KindElection, Reason: why,
			Grant: &wire.Grant{Name: name, Token: strconv.FormatUint(e.token, 10)}})
	}
	f.changedLocked()
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, status int, code wire.ErrorCode, msg string) {
	writeJSON(w, status, wire.Error{Code: code, Message: msg})
}

// session returns the live session of the request, or answers 404 no_session, or 401
// unauthorized when the request does not carry the session's secret, as the side-car does.
func (f *fakeSidecar) sessionOf(w http.ResponseWriter, r *http.Request) *fakeSession {
	s := f.sessions[r.PathValue("id")]
	if s == nil {
		writeErr(w, http.StatusNotFound, wire.CodeNoSession, "no session "+r.PathValue("id"))
		return nil
	}
	if got := wire.SecretFromAuthorization(r.Header.Get(wire.HeaderAuthorization)); got != fakeSecret(s.id) {
		writeErr(w, http.StatusUnauthorized, wire.CodeUnauthorized, fmt.Sprintf("got secret %q for session %s; want its own", got, s.id))
		return nil
	}
	return s
}

// fakeSecret is the secret of the fake's session id.
func fakeSecret(id string) string { return "secret-of-" + id }

func (f *fakeSidecar) openSession(w http.ResponseWriter, r *http.Request) {
	var req wire.OpenSessionRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeErr(w, http.StatusBadRequest, wire.CodeBadRequest, err.Error())
		return
	}
	f.mu.Lock()
	f.nextID++
	id := fmt.Sprintf("s%d", f.nextID)
	f.sessions[id] = &fakeSession{id: id, events: make(chan []byte, 64), gone: make(chan struct{}), drop: make(chan struct{})}
	f.opened = append(f.opened, id)
	f.mu.Unlock()
	ws := wire.Session{ID: id, Secret: fakeSecret(id), Holder: "pod/" + id, TTLMillis: f.ttl.Milliseconds()}
	if f.validity > 0 {
		ws.KeepAliveMillis = (f.validity / 4).Milliseconds()
	}
	writeJSON(w, http.StatusCreated, ws)
}

func (f *fakeSidecar) deleteSession(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s := f.sessionOf(w, r); s != nil {
		f.endLocked(s, "deleted by the client")
		w.WriteHeader(http.StatusNoContent)
	}
}

func (f *fakeSidecar) keepAlive(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.sessionOf(w, r)
	if s == nil {
		return
	}
	if f.validity == 0 {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	resp := wire.KeepAliveResponse{Holds: []wire.HoldValidity{}}
	for name, h := range f.locks {
		if h.session == s.id {
			resp.Holds = append(resp.Holds, wire.HoldValidity{Kind: wire.KindLock, Name: name, Token: strconv.FormatUint(h.token, 10), ValidForMillis: f.validity.Milliseconds()})
		}
	}
	writeJSON(w, http.StatusOK, resp)
}

func (f *fakeSidecar) events(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	s := f.sessionOf(w, r)
	f.mu.Unlock()
	if s == nil {
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	write := func(l []byte) {
		_, _ = w.Write(append(l, '\n'))
		w.(http.Flusher).Flush()
	}
	flush := func(ev wire.Event) { write(line(ev)) }
	flush(wire.Event{Type: wire.EventReady})
	ping := time.NewTicker(f.ttl / 3)
	defer ping.Stop()
	for {
		select {
		case l := <-s.events:
			write(l)
		case <-ping.C:
			f.mu.Lock()
			silent := s.silent
			f.mu.Unlock()
			if !silent {
				flush(wire.Event{Type: wire.EventPing})
			}
		case <-s.gone:
			f.mu.Lock()
			why := s.ended
			f.mu.Unlock()
			flush(wire.Event{Type: wire.EventClosed, Reason: why})
			return
		case <-s.drop:
			// As when the connection breaks: the side-car ends the session too.
			f.mu.Lock()
			f.endLocked(s, "event stream broke")
			f.mu.Unlock()
			return
		case <-r.Context().Done():
			// The client closed the stream: the session ends at once.
			f.mu.Lock()
			f.endLocked(s, "event stream closed")
			f.mu.Unlock()
			return
		}
	}
}

func (f *fakeSidecar) acquire(w http.ResponseWriter, r *http.Request) {
	var req wire.AcquireRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeErr(w, http.StatusBadRequest, wire.CodeBadRequest, err.Error())
		return
	}
	name := r.PathValue("name")
	var timeout <-chan time.Time
	if req.TimeoutMillis > 0 {
		t := time.NewTimer(time.Duration(req.TimeoutMillis) * time.Millisecond)
		defer t.Stop()
		timeout = t.C
	}
	for {
		f.mu.Lock()
		s := f.sessionOf(w, r)
		if s == nil {
			f.mu.Unlock()
			return
		}
		h := f.locks[name]
		switch {
		case h == nil:
			f.tokens[name]++
			f.locks[name] = &fakeHold{session: s.id, token: f.tokens[name]}
			g := wire.Grant{Name: name, Lease: "lease-" + name, Token: strconv.FormatUint(f.tokens[name], 10), Holder: "pod/" + s.id, ValidForMillis: f.validity.Milliseconds()}
			f.changedLocked()
			f.mu.Unlock()
			writeJSON(w, http.StatusOK, g)
			return
		case h.session == s.id:
			f.mu.Unlock()
			writeErr(w, http.StatusConflict, wire.CodeAlreadyHeld, "this session holds "+name)
			return
		case req.Try:
			f.mu.Unlock()
			writeErr(w, http.StatusConflict, wire.CodeNotAcquired, name+" is held by "+h.session)
			return
		}
		changed, gone := f.changed, s.gone
		f.mu.Unlock()
		select {
		case <-changed:
		case <-gone:
		case <-timeout:
			writeErr(w, http.StatusConflict, wire.CodeNotAcquired, "timeout passed")
			return
		case <-r.Context().Done():
			return
		}
	}
}

func (f *fakeSidecar) release(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.sessionOf(w, r)
	if s == nil {
		return
	}
	name := r.PathValue("name")
	if h := f.locks[name]; h == nil || h.session != s.id {
		writeErr(w, http.StatusConflict, wire.CodeNotHeld, name+" is not held by "+s.id)
		return
	}
	delete(f.locks, name)
	f.changedLocked()
	w.WriteHeader(http.StatusNoContent)
}

func (f *fakeSidecar) election(name string) *fakeElection {
	e := f.elections[name]
	if e == nil {
		e = &fakeElection{}
		f.elections[name] = e
	}
	return e
}

func (f *fakeSidecar) stand(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.sessionOf(w, r)
	if s == nil {
		return
	}
	name := r.PathValue("name")
	e := f.election(name)
	for _, c := range e.candidates {
		if c == s.id {
			w.WriteHeader(http.StatusNoContent)
			return
		}
	}
	e.candidates = append(e.candidates, s.id)
	f.electLocked(name, e)
	w.WriteHeader(http.StatusNoContent)
}

func (f *fakeSidecar) leave(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.sessionOf(w, r)
	if s == nil {
		return
	}
	name := r.PathValue("name")
	e := f.election(name)
	for i, c := range e.candidates {
		if c == s.id {
			e.candidates = append(e.candidates[:i], e.candidates[i+1:]...)
			break
		}
	}
	if e.leader == s.id {
		e.leader = ""
		f.electLocked(name, e)
	}
	f.changedLocked()
	w.WriteHeader(http.StatusNoContent)
}

func (f *fakeSidecar) resign(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.sessionOf(w, r)
	if s == nil {
		return
	}
	name := r.PathValue("name")
	e := f.election(name)
	if e.leader != s.id {
		writeErr(w, http.StatusConflict, wire.CodeNotHeld, s.id+" does not lead "+name)
		return
	}
	f.deposeLocked(name, e, "resigned")
	f.electLocked(name, e)
	w.WriteHeader(http.StatusNoContent)
}

func (f *fakeSidecar) stateLocked(name string) wire.ElectionState {
	st := wire.ElectionState{Name: name, Lease: "lease-" + name}
	if e := f.elections[name]; e != nil && e.leader != "" {
		st.Held, st.Holder, st.Token = true, "pod/"+e.leader, strconv.FormatUint(e.token, 10)
	}
	return st
}

func (f *fakeSidecar) electionState(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	st := f.stateLocked(r.PathValue("name"))
	f.mu.Unlock()
	writeJSON(w, http.StatusOK, st)
}

func (f *fakeSidecar) watch(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	w.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(w)
	var last *wire.ElectionState
	for {
		f.mu.Lock()
		st, changed := f.stateLocked(name), f.changed
		f.mu.Unlock()
		if last == nil || st.Holder != last.Holder || st.Token != last.Token {
			_ = enc.Encode(st)
			w.(http.Flusher).Flush()
			last = &st
		}
		select {
		case <-changed:
		case <-r.Context().Done():
			return
		}
	}
}

// jsonDecode decodes the body of r into v and leaves the body readable again.
func jsonDecode(r *http.Request, v any) error {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		return err
	}
	r.Body = io.NopCloser(bytes.NewReader(b))
	return json.Unmarshal(b, v)
}

func msec(ms int64) time.Duration { return time.Duration(ms) * time.Millisecond }

// waitTimeout guards waits on the SDK so that a broken test fails with a message instead of
// hanging until go test's own timeout. It is not a performance bound.
const waitTimeout = time.Minute

// waitClosed fails t unless ch is closed.
func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(waitTimeout):
		t.Fatalf("got %s still open after %s; want it closed", what, waitTimeout)
	}
}

// waitUntil polls cond until it holds.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up after %s waiting for %s", waitTimeout, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// isClosed reports whether ch is closed now.
func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}
