package server

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/metaparticle-io/sync/elector"
	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/wire"
)

// This file serves the original Metaparticle elector's protocol, which the 2017 SDKs (Python,
// JavaScript, Java, .NET, Go) speak, beside version 1 and on the same port:
//
//	GET /locks/<name>  404 {"code":"not_found","message":"Not found."} when the lock's Lease
//	                   does not exist;
//	                   200 with the lock object otherwise (held or not, like the original).
//	PUT /locks/<name>  acquire or heartbeat: 200 with the lock object when this Pod holds the
//	                   lock (now or after this call); 409 with the lock object when someone else
//	                   does.
//
// A legacy lock is a version-1 lock of the same name, on the same Lease, so legacy clients and
// version-1 clients exclude each other. The lock object has the original's shape:
//
//	{"kind":"Lock","apiVersion":"metaparticle.io/v1",
//	 "metadata":{"name":"test","namespace":"default","resourceVersion":"4711"},
//	 "spec":{"owner":"web-0/5f0c…","expiry":"2030-05-01T12:00:30.000Z"}}
//
// # Identity
//
// The original identified the caller by the Pod's host name: every process of a Pod was the
// same owner. The protocol carries nothing else (no session, no client ID), and the caller's
// source address does not help: every caller is on loopback, from a new ephemeral port per
// connection. So the legacy identity is the Pod, as before: one legacy holder per side-car and
// name. A PUT that finds the lock held by this Pod's legacy holder is a heartbeat and answers 200,
// whichever process sent it; two processes of one Pod that both PUT both "hold" the lock. That is
// the original's unsafety, kept for compatibility and documented in docs/api.md.
//
// # Mapping onto the Engine
//
// Each legacy hold is a session of its own, opened by the first successful PUT with a TTL of
// the legacy TTL (30 s, the original's), whose holder identity is "<pod>/<session>". Every later
// PUT is that session's keep-alive, and answers 200 only when the keep-alive's answer shows the
// Engine still holding that very grant with validity left (notHeld); otherwise the PUT answers
// 409 first and then closes the session. When PUTs stop for the TTL the session ends and the
// Engine releases the Lease at once (the original let it expire). A PUT that finds the lock
// taken makes one try (wire.AcquireRequest.Try) and answers 409 if it fails. A follower reads
// the session's events: when the Engine reports the hold lost, the session is ended and the
// next PUT, if it comes within the TTL, answers 409, so a heartbeating legacy client learns of
// the loss at its next heartbeat instead of silently re-taking the lock.
//
// # Shutdown
//
// The original SDKs learn of a loss only from a 409 (some ignore a refused connection, see
// docs/api.md). In classic mode (contract.ModeClassic) the application may outlive the
// side-car's SIGTERM, so legacy sessions are opened with elector.SessionOptions.OutlivesShutdown:
// the Engine keeps them through Shutdown, and a PUT during the shutdown answers 409 and then
// closes its session, which releases the hold. In native mode the application has exited
// before the side-car is stopped, and Shutdown releases legacy holds with every other.

// LegacyTTL is how long a lock taken with the original protocol is kept without a PUT: the
// original elector's 30 s. Its SDKs send a PUT every 10 s.
const LegacyTTL = 30 * time.Second

// LegacyPathPrefix is where the original protocol's locks live.
const LegacyPathPrefix = "/locks/"

// legacyMessageNotFound is the original's body for an unknown lock.
const legacyMessageNotFound = "Not found."

// legacyLock is the original elector's lock object.
type legacyLock struct {
	Kind       string         `json:"kind"`
	APIVersion string         `json:"apiVersion"`
	Metadata   legacyMetadata `json:"metadata"`
	Spec       legacySpec     `json:"spec"`
}

type legacyMetadata struct {
	Name            string `json:"name"`
	Namespace       string `json:"namespace,omitempty"`
	ResourceVersion string `json:"resourceVersion,omitempty"`
}

type legacySpec struct {
	// Owner is the Lease's holder identity, "" when nobody holds it.
	Owner string `json:"owner"`
	// Expiry is when the hold ends if it is not renewed (ISO 8601, UTC, milliseconds); in the
	// past when the lock is free or its holder has gone.
	Expiry string `json:"expiry,omitempty"`
}

// legacyTimeFormat is ISO 8601 with milliseconds, as the original's Joda-Time printed it.
const legacyTimeFormat = "2006-01-02T15:04:05.000Z07:00"

// legacyAPI serves the original protocol for one Engine.
type legacyAPI struct {
	e   *elector.Engine
	ttl time.Duration
	// streamEvents is e.StreamEvents; tests delay the events a follower reads with it.
	streamEvents func(ctx context.Context, k wire.SessionKey, emit func(wire.Event) error) error

	mu    sync.Mutex             // protects names and every legacyName's refs
	names map[string]*legacyName // names in use by a request or with a hold
}

// legacyName is the legacy state of one lock name.
type legacyName struct {
	refs int        // requests and followers using it; protected by legacyAPI.mu
	mu   sync.Mutex // serialises the requests of the name; protects hold
	hold *legacyHold
}

// legacyHold is this Pod's legacy hold of a lock: one Engine session.
type legacyHold struct {
	session wire.SessionKey
	grant   wire.Grant
	lastPut time.Time          // Engine clock; protected by legacyName.mu
	stop    context.CancelFunc // ends the follower, and so the session
	lost    atomic.Pointer[string]
}

// mountLegacy serves the original protocol on mux, with holds kept for ttl without a PUT.
func mountLegacy(mux *http.ServeMux, e *elector.Engine, ttl time.Duration) *legacyAPI {
	a := &legacyAPI{e: e, ttl: ttl, streamEvents: e.StreamEvents, names: map[string]*legacyName{}}
	route(mux, LegacyPathPrefix+"{name}", methods{http.MethodGet: a.get, http.MethodPut: a.put})
	return a
}

// enter returns the state of name with its mu held; leave undoes it.
func (a *legacyAPI) enter(name string) *legacyName {
	a.mu.Lock()
	ln := a.names[name]
	if ln == nil {
		ln = &legacyName{}
		a.names[name] = ln
	}
	ln.refs++
	a.mu.Unlock()
	ln.mu.Lock()
	return ln
}

func (a *legacyAPI) leave(name string, ln *legacyName) {
	ln.mu.Unlock()
	a.mu.Lock()
	ln.refs--
	// Nobody else can reach ln without a.mu, and the last user's writes happened before its
	// leave, so reading hold here is safe.
	if ln.refs == 0 && ln.hold == nil {
		delete(a.names, name)
	}
	a.mu.Unlock()
}

// get answers GET /locks/<name>: the lock object if its Lease exists, whoever holds it.
func (a *legacyAPI) get(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := wire.ValidateName(name); err != nil {
		writeError(w, wire.Errorf(wire.CodeInvalidName, "invalid lock name: %v", err))
		return
	}
	ln := a.enter(name)
	lk, ok, err := a.view(name, ln.hold)
	a.leave(name, ln)
	switch {
	case err != nil:
		writeError(w, err)
	case !ok:
		// The original's body, with the code every error of this side-car carries.
		writeJSON(w, http.StatusNotFound, &wire.Error{Code: wire.CodeNotFound, Message: legacyMessageNotFound})
	default:
		writeJSON(w, http.StatusOK, lk)
	}
}

// put answers PUT /locks/<name>: a heartbeat of this Pod's hold, or one attempt to take the
// lock. The request body, if any, is ignored, as the original did.
func (a *legacyAPI) put(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := wire.ValidateName(name); err != nil {
		writeError(w, wire.Errorf(wire.CodeInvalidName, "invalid lock name: %v", err))
		return
	}
	ln := a.enter(name)
	defer a.leave(name, ln)
	now := a.e.Clock().Now()

	// 1. This Pod holds it: the PUT is a heartbeat, the session's keep-alive, and answers 200
	// only when the Engine confirms that it still holds that very grant.
	if h := ln.hold; h != nil {
		if reason := h.lost.Load(); reason != nil {
			// 2. The hold was lost since the last PUT. Tell a client that is still
			// heartbeating, once; a client that stopped for the TTL starts afresh.
			ln.hold = nil
			if now.Sub(h.lastPut) <= a.ttl {
				a.e.Logger().Info("legacy lock lost since the last PUT; answering 409", "name", name, "session", h.session.ID, "token", h.grant.Token, "reason", *reason)
				a.conflict(w, name)
				return
			}
		} else if resp, err := a.e.KeepAlive(h.session); err != nil {
			// The session ended: no PUT within the TTL, or the side-car is stopping. The
			// Engine released the hold.
			ln.hold = nil
			h.stop()
		} else if why := a.notHeld(resp, name, h); why != "" {
			// The Engine lost the grant and the follower has not seen it yet, or the side-car
			// is stopping: this answer is the only way to tell the client. Tell it first, then
			// end the session, which releases the hold if the Engine still has it.
			ln.hold = nil
			a.e.Logger().Info("legacy heartbeat of a hold that ends; answering 409", "name", name, "session", h.session.ID, "token", h.grant.Token, "reason", why)
			a.conflict(w, name)
			_ = http.NewResponseController(w).Flush()
			h.stop()
			_ = a.e.CloseSession(h.session)
			return
		} else {
			h.lastPut = now
			a.answer(w, http.StatusOK, name, h)
			return
		}
	}

	// 3. Take it: a session of its own, one try.
	// A classic-mode side-car's application may outlive its SIGTERM and keep heartbeating:
	// its hold must then outlive the shutdown until this handler has told it (see notHeld).
	opts := elector.SessionOptions{OutlivesShutdown: a.e.Config().Mode == contract.ModeClassic, Polled: true}
	s, err := a.e.OpenSessionWith(wire.OpenSessionRequest{TTLMillis: a.ttl.Milliseconds(), Client: "legacy protocol PUT " + LegacyPathPrefix + name}, opts)
	if err != nil {
		writeError(w, err)
		return
	}
	g, err := a.e.Acquire(r.Context(), s.Key(), name, wire.AcquireRequest{Try: true})
	if err != nil {
		_ = a.e.CloseSession(s.Key())
		if wire.CodeOf(err) == wire.CodeNotAcquired {
			a.conflict(w, name)
			return
		}
		writeError(w, err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &legacyHold{session: s.Key(), grant: g, lastPut: now, stop: cancel}
	ln.hold = h
	a.mu.Lock()
	ln.refs++ // the follower's
	a.mu.Unlock()
	go a.follow(ctx, name, ln, h)
	a.answer(w, http.StatusOK, name, h)
}

// notHeld says why a heartbeat of hold h must not answer 200 given the Engine's keep-alive
// response, or "" when the Engine still holds h's grant with time to spare.
func (a *legacyAPI) notHeld(resp wire.KeepAliveResponse, name string, h *legacyHold) string {
	if a.e.ShuttingDown() {
		return "the side-car is shutting down"
	}
	for _, v := range resp.Holds {
		if v.Kind == wire.KindLock && v.Name == name && v.Token == h.grant.Token {
			if v.ValidForMillis <= 0 {
				return "the side-car could not renew the Lease in time"
			}
			return ""
		}
	}
	return "the side-car no longer holds the grant"
}

// follow reads the events of hold h's session until the session ends. A lost hold ends the
// session and is remembered for the next PUT; any other end forgets the hold.
func (a *legacyAPI) follow(ctx context.Context, name string, ln *legacyName, h *legacyHold) {
	_ = a.streamEvents(ctx, h.session, func(ev wire.Event) error {
		if ev.Type == wire.EventLost {
			reason := ev.Reason
			h.lost.Store(&reason)
			h.stop()
		}
		return nil
	})
	h.stop()
	ln.mu.Lock()
	if ln.hold == h {
		if h.lost.Load() == nil {
			ln.hold = nil
		} else {
			// Kept for the next PUT to report; forgotten after the TTL if none comes.
			a.e.Clock().AfterFunc(a.ttl, func() { go a.forget(name, h) })
		}
	}
	a.leave(name, ln)
}

// forget drops a lost hold that no PUT came to collect.
func (a *legacyAPI) forget(name string, h *legacyHold) {
	ln := a.enter(name)
	if ln.hold == h {
		ln.hold = nil
	}
	a.leave(name, ln)
}

// answer writes the lock object of this Pod's hold h.
func (a *legacyAPI) answer(w http.ResponseWriter, status int, name string, h *legacyHold) {
	lk, ok, err := a.view(name, h)
	if err != nil {
		writeError(w, err)
		return
	}
	if !ok {
		// The Lease is not in the informer's cache yet: describe the hold from the grant.
		lk = a.object(name, "", h.grant.Holder, h.lastPut.Add(a.ttl))
	}
	writeJSON(w, status, lk)
}

// conflict answers 409 with the lock object as this side-car sees it.
func (a *legacyAPI) conflict(w http.ResponseWriter, name string) {
	lk, ok, err := a.view(name, nil)
	if err != nil {
		writeError(w, err)
		return
	}
	if !ok {
		lk = a.object(name, "", "", time.Time{})
	}
	writeJSON(w, http.StatusConflict, lk)
}

// view returns the lock object of name's Lease, and false if this side-car knows of no Lease.
// h is this Pod's legacy hold of name, if any: its expiry is the legacy TTL after its last PUT.
// Any other holder's expiry is when this side-car would consider it gone: the lease duration
// after it first saw the Lease's current version.
func (a *legacyAPI) view(name string, h *legacyHold) (legacyLock, bool, error) {
	o, ok, err := a.e.Observe(wire.KindLock, name)
	if err != nil || !ok {
		return legacyLock{}, false, err
	}
	expiry := o.Expiry
	switch {
	case o.Holder == "":
		expiry = o.ObservedAt // free since this version
	case h != nil && h.lost.Load() == nil && o.Holder == h.grant.Holder:
		expiry = h.lastPut.Add(a.ttl)
	}
	return a.object(name, o.ResourceVersion, o.Holder, expiry), true, nil
}

func (a *legacyAPI) object(name, rv, owner string, expiry time.Time) legacyLock {
	lk := legacyLock{
		Kind:       "Lock",
		APIVersion: "metaparticle.io/v1",
		Metadata:   legacyMetadata{Name: name, Namespace: a.e.Config().Namespace, ResourceVersion: rv},
		Spec:       legacySpec{Owner: owner},
	}
	if !expiry.IsZero() {
		lk.Spec.Expiry = expiry.UTC().Format(legacyTimeFormat)
	}
	return lk
}
