package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/metaparticle-io/sync/elector"
	"github.com/metaparticle-io/sync/wire"
)

// This file is the HTTP transport of the lock API: routing, body limits, content types, JSON
// decoding and encoding, and the mapping of wire.ErrorCode to status codes. All decisions are
// the Engine's.

// NewHandler returns version 1 of the lock API (docs/api.md), served by e, and beside it the
// original Metaparticle elector's protocol (/locks/<name>, see legacy.go) with its 30 s TTL.
// Every other path answers 404 not_found.
func NewHandler(e *elector.Engine) http.Handler { return newHandler(e, LegacyTTL) }

// newHandler is NewHandler with the legacy protocol's TTL as a parameter, for tests.
func newHandler(e *elector.Engine, legacyTTL time.Duration) http.Handler {
	a := &api{e: e}
	mux := http.NewServeMux()
	sess := wire.PathSessions + "/{id}"
	route(mux, wire.PathSessions, methods{http.MethodPost: a.openSession})
	route(mux, sess, methods{http.MethodDelete: a.closeSession})
	route(mux, sess+"/keepalive", methods{http.MethodPost: a.keepAlive})
	route(mux, sess+"/events", methods{http.MethodGet: a.events})
	route(mux, sess+"/locks/{name}", methods{http.MethodPost: a.acquire, http.MethodDelete: a.release})
	route(mux, sess+"/elections/{name}", methods{http.MethodPut: a.join, http.MethodDelete: a.leave})
	route(mux, sess+"/elections/{name}/resign", methods{http.MethodPost: a.resign})
	route(mux, wire.PathPrefix+"/locks/{name}", methods{http.MethodGet: a.lockState})
	route(mux, wire.PathPrefix+"/elections/{name}", methods{http.MethodGet: a.electionState})
	route(mux, wire.PathPrefix+"/elections/{name}/watch", methods{http.MethodGet: a.watch})
	mountLegacy(mux, e, legacyTTL)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, wire.Errorf(wire.CodeNotFound, "no such path %q; version 1 of the API lives under %s/ (see docs/api.md)", r.URL.Path, wire.PathPrefix))
	})
	return mux
}

type api struct{ e *elector.Engine }

type methods map[string]http.HandlerFunc

// route registers pattern for the given methods and answers any other method with 405 and an
// Allow header.
func route(mux *http.ServeMux, pattern string, m methods) {
	allowed := make([]string, 0, len(m))
	for k := range m {
		allowed = append(allowed, k)
	}
	slices.Sort(allowed)
	allow := strings.Join(allowed, ", ")
	mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		h, ok := m[r.Method]
		if !ok {
			w.Header().Set("Allow", allow)
			writeError(w, wire.Errorf(wire.CodeMethod, "method %s is not allowed on %s; allowed: %s", r.Method, pattern, allow))
			return
		}
		h(w, r)
	})
}

func (a *api) openSession(w http.ResponseWriter, r *http.Request) {
	var req wire.OpenSessionRequest
	if err := decodeBody(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	s, err := a.e.OpenSession(req)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, s)
}

func (a *api) closeSession(w http.ResponseWriter, r *http.Request) {
	reply(w, a.e.CloseSession(sessionKey(r)))
}

func (a *api) keepAlive(w http.ResponseWriter, r *http.Request) {
	resp, err := a.e.KeepAlive(sessionKey(r))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

func (a *api) events(w http.ResponseWriter, r *http.Request) {
	st := newStream(w)
	err := a.e.StreamEvents(r.Context(), sessionKey(r), func(ev wire.Event) error { return st.send(ev) })
	if err != nil && !st.started {
		writeError(w, err)
	}
}

func (a *api) acquire(w http.ResponseWriter, r *http.Request) {
	req, err := decodeAcquire(w, r)
	if err != nil {
		writeError(w, err)
		return
	}
	k, name := sessionKey(r), r.PathValue("name")
	g, err := a.e.Acquire(r.Context(), k, name, req)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, g)
	// A grant that cannot be delivered (the client went away as it was written) would be held
	// by nobody who knows: release it at once (the session is told it was lost). A writer that
	// cannot flush (a middleware's) has not failed to deliver.
	if err := http.NewResponseController(w).Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
		a.e.ReleaseGrant(k, name, g)
	}
}

func (a *api) release(w http.ResponseWriter, r *http.Request) {
	reply(w, a.e.Release(r.Context(), sessionKey(r), r.PathValue("name"), r.URL.Query().Get(wire.QueryToken)))
}

func (a *api) join(w http.ResponseWriter, r *http.Request) {
	st, err := a.e.Join(sessionKey(r), r.PathValue("name"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (a *api) leave(w http.ResponseWriter, r *http.Request) {
	reply(w, a.e.Leave(r.Context(), sessionKey(r), r.PathValue("name")))
}

func (a *api) resign(w http.ResponseWriter, r *http.Request) {
	reply(w, a.e.Resign(r.Context(), sessionKey(r), r.PathValue("name")))
}

func (a *api) lockState(w http.ResponseWriter, r *http.Request) {
	a.state(w, r, wire.KindLock)
}

func (a *api) electionState(w http.ResponseWriter, r *http.Request) {
	a.state(w, r, wire.KindElection)
}

func (a *api) state(w http.ResponseWriter, r *http.Request, kind wire.Kind) {
	st, err := a.e.State(kind, r.PathValue("name"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (a *api) watch(w http.ResponseWriter, r *http.Request) {
	st := newStream(w)
	err := a.e.Watch(r.Context(), wire.KindElection, r.PathValue("name"), func(s wire.LockState) error { return st.send(s) })
	if err != nil && !st.started {
		writeError(w, err)
	}
}

// sessionKey returns the session a request names: the ID in its path, the secret in its
// Authorization header.
func sessionKey(r *http.Request) wire.SessionKey {
	return wire.SessionKey{ID: r.PathValue("id"), Secret: wire.SecretFromAuthorization(r.Header.Get(wire.HeaderAuthorization))}
}

// decodeAcquire reads and checks the body of an acquire request (the name is checked by the
// Engine).
func decodeAcquire(w http.ResponseWriter, r *http.Request) (wire.AcquireRequest, error) {
	var req wire.AcquireRequest
	if err := decodeBody(w, r, &req); err != nil {
		return req, err
	}
	if err := req.Validate(); err != nil {
		return req, err
	}
	return req, nil
}

// decodeBody decodes an optional JSON body into v. An empty body leaves v as it is. A body must
// be application/json, at most wire.MaxRequestBytes, one JSON value with only known fields.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) error {
	ct := r.Header.Get("Content-Type")
	if ct != "" && !isJSON(ct) {
		return wire.Errorf(wire.CodeUnsupportedType, "Content-Type %q is not supported; send application/json", ct)
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, wire.MaxRequestBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return wire.Errorf(wire.CodeTooLarge, "the request body exceeds %d bytes", wire.MaxRequestBytes)
		}
		return wire.Errorf(wire.CodeBadRequest, "reading the request body: %v", err)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil
	}
	if ct == "" {
		return wire.Errorf(wire.CodeUnsupportedType, "a request body needs Content-Type: application/json")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return wire.Errorf(wire.CodeBadRequest, "the request body is not a valid %T: %v", v, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return wire.Errorf(wire.CodeBadRequest, "the request body must hold exactly one JSON object; found more after it")
	}
	return nil
}

func isJSON(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && mt == "application/json"
}

// statusOf maps an error code to its HTTP status (see wire.ErrorCode).
func statusOf(code wire.ErrorCode) int {
	switch code {
	case wire.CodeBadRequest, wire.CodeInvalidName, wire.CodeInvalidTimeout:
		return http.StatusBadRequest
	case wire.CodeUnauthorized:
		return http.StatusUnauthorized
	case wire.CodeNotFound, wire.CodeNoSession:
		return http.StatusNotFound
	case wire.CodeMethod:
		return http.StatusMethodNotAllowed
	case wire.CodeNotAcquired, wire.CodeAlreadyHeld, wire.CodeNotHeld, wire.CodeForeignLease:
		return http.StatusConflict
	case wire.CodeTooLarge:
		return http.StatusRequestEntityTooLarge
	case wire.CodeTooMany:
		return http.StatusTooManyRequests
	case wire.CodeUnsupportedType:
		return http.StatusUnsupportedMediaType
	case wire.CodeShuttingDown, wire.CodeUnavailable, wire.CodeForbidden:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// reply answers 204 on success, the error otherwise.
func reply(w http.ResponseWriter, err error) {
	if err != nil {
		writeError(w, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusNoContent)
}

func writeError(w http.ResponseWriter, err error) {
	var we *wire.Error
	if !errors.As(err, &we) {
		we = &wire.Error{Code: wire.CodeInternal, Message: err.Error()}
	}
	if we.Code == wire.CodeUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="metaparticle-sync session"`)
	}
	writeJSON(w, statusOf(we.Code), we)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// stream writes newline-delimited JSON, flushing after each value. The 200 status and headers
// go out with the first value, so that errors before it can still be sent as errors.
type stream struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	enc     *json.Encoder
	started bool
}

func newStream(w http.ResponseWriter) *stream {
	return &stream{w: w, rc: http.NewResponseController(w), enc: json.NewEncoder(w)}
}

func (s *stream) send(v any) error {
	if !s.started {
		s.started = true
		h := s.w.Header()
		h.Set("Content-Type", "application/x-ndjson")
		h.Set("Cache-Control", "no-store")
		h.Set("X-Content-Type-Options", "nosniff")
		s.w.WriteHeader(http.StatusOK)
	}
	if err := s.enc.Encode(v); err != nil {
		return err
	}
	return s.rc.Flush()
}
