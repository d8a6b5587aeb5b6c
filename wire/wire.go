// Package wire is the contract between an application and its Metaparticle Sync side-car: the
// environment variables, the default address, the HTTP paths and the JSON bodies of version 1 of
// the side-car's API. It imports only the standard library, so that any client (the Go SDK, a
// test, another language's port reading docs/api.md) can depend on it without pulling in
// Kubernetes.
//
// # Protocol in brief
//
// A client first opens a session (POST [PathSessions]). A session is the unit of ownership: a
// Lease held for a session names the Pod and the session, so two sessions in one Pod exclude each
// other. The session lives while the client keeps it alive, either by calling
// [SessionKeepAlivePath] at least once per [Session.TTLMillis], or by holding its event stream
// ([SessionEventsPath]) open and calling keep-alive; when the stream's connection closes, or the
// keep-alive is missed, or the client deletes the session, every hold of the session is released.
//
// Locks are acquired by POST to [SessionLockPath] (blocking, with a timeout, or a single try) and
// released by DELETE on the same path. Elections are joined by PUT on [SessionElectionPath], left
// by DELETE, and leadership is reported on the session's event stream. Anyone can read a lock or
// an election ([LockPath], [ElectionPath]) and follow an election's leader ([ElectionWatchPath]).
//
// Every error is an [Error] body with a stable [ErrorCode].
package wire

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"
)

// Environment variables and defaults shared by the injector, the side-car and the SDKs.
const (
	// EnvAddress names the environment variable that tells an application where its side-car's
	// lock API listens, as host:port. The injector sets it in every application container.
	EnvAddress = "METAPARTICLE_SYNC_ADDR"

	// DefaultPort is the original Metaparticle elector's port, kept for familiarity.
	DefaultPort = 13131

	// DefaultAddress is where clients look when EnvAddress is unset: loopback only, since the
	// side-car shares the Pod's network namespace with its application.
	DefaultAddress = "127.0.0.1:13131"

	// MaxNameLength is the longest lock or election name accepted, in bytes.
	MaxNameLength = 253

	// MaxRequestBytes is the largest request body the side-car reads.
	MaxRequestBytes = 64 << 10

	// MaxTimeout is the longest acquire timeout a client may ask for.
	MaxTimeout = 24 * time.Hour

	// MinSessionTTL and MaxSessionTTL bound Session.TTLMillis.
	MinSessionTTL = 1 * time.Second
	MaxSessionTTL = 5 * time.Minute

	// DefaultSessionTTL is the session TTL when a client does not ask for one.
	DefaultSessionTTL = 10 * time.Second
)

// Paths of version 1 of the API. Names in paths are URL path-escaped (url.PathEscape), except
// that the names "." and ".." are written "%2E" and "%2E%2E" (see EscapeName).
const (
	PathPrefix   = "/v1"
	PathSessions = PathPrefix + "/sessions"
)

// EscapeName returns name escaped as one path segment: url.PathEscape(name), except that "."
// and ".." become "%2E" and "%2E%2E", because clients and servers remove the dot-segments "."
// and ".." from paths before routing them.
func EscapeName(name string) string {
	if name == "." || name == ".." {
		return strings.ReplaceAll(name, ".", "%2E")
	}
	return url.PathEscape(name)
}

// SessionPath is the path of one session: DELETE ends it.
func SessionPath(session string) string {
	return PathSessions + "/" + url.PathEscape(session)
}

// SessionKeepAlivePath is POSTed to extend a session's life by its TTL.
func SessionKeepAlivePath(session string) string { return SessionPath(session) + "/keepalive" }

// SessionEventsPath is the session's event stream: newline-delimited JSON [Event] values.
func SessionEventsPath(session string) string { return SessionPath(session) + "/events" }

// SessionLockPath is POSTed to acquire a lock for the session, DELETEd to release it.
func SessionLockPath(session, name string) string {
	return SessionPath(session) + "/locks/" + EscapeName(name)
}

// QueryToken names, on DELETE SessionLockPath, the fencing token of the hold to release:
// "?token=<token>". When the session's hold of the lock has another token (a later hold, after
// a loss and a new grant) the release answers 409 CodeNotHeld and changes nothing, so a late or
// repeated DELETE never releases a later hold. Without it the DELETE releases whatever hold of
// the lock the session has. Clients should always send it.
const QueryToken = "token"

// SessionLockReleasePath is SessionLockPath naming the token of the hold to release.
func SessionLockReleasePath(session, name, token string) string {
	return SessionLockPath(session, name) + "?" + QueryToken + "=" + url.QueryEscape(token)
}

// SessionElectionPath is PUT to stand in an election, DELETEd to leave it.
func SessionElectionPath(session, name string) string {
	return SessionPath(session) + "/elections/" + EscapeName(name)
}

// SessionResignPath is POSTed by a leader to give up leadership while staying a candidate.
func SessionResignPath(session, name string) string {
	return SessionElectionPath(session, name) + "/resign"
}

// LockPath is the read-only state of a lock ([LockState]).
func LockPath(name string) string { return PathPrefix + "/locks/" + EscapeName(name) }

// ElectionPath is the read-only state of an election ([ElectionState]).
func ElectionPath(name string) string { return PathPrefix + "/elections/" + EscapeName(name) }

// ElectionWatchPath streams an election's [ElectionState] as newline-delimited JSON: the current
// state first, then one line per change of leader.
func ElectionWatchPath(name string) string { return ElectionPath(name) + "/watch" }

// ValidateName reports whether name is acceptable as a lock or election name: non-empty, at most
// MaxNameLength bytes, valid UTF-8 without control characters.
func ValidateName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("name must not be empty")
	case len(name) > MaxNameLength:
		return fmt.Errorf("name is %d bytes long; the limit is %d", len(name), MaxNameLength)
	case !validText(name):
		return fmt.Errorf("name %q must be valid UTF-8 without control characters", name)
	}
	return nil
}

func validText(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	return !strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f })
}

// OpenSessionRequest is the body of POST PathSessions. All fields are optional.
type OpenSessionRequest struct {
	// TTLMillis is how long the session survives without a keep-alive. Zero means
	// DefaultSessionTTL; otherwise it must lie within [MinSessionTTL, MaxSessionTTL].
	TTLMillis int64 `json:"ttlMillis,omitempty"`
	// Client is a free-form label (for example "go-sdk/1.0 pid=7") shown in logs.
	Client string `json:"client,omitempty"`
}

// Session is the response to POST PathSessions (201 Created).
type Session struct {
	// ID identifies the session in paths. It is public: it is part of Holder, which anyone
	// can read.
	ID string `json:"id"`
	// Secret is the session's credential: every call on the session carries it in the
	// Authorization header (see SessionKey.Authorization). It is sent once, in this response,
	// and shown nowhere else; a call with a wrong or missing secret changes nothing and fails
	// with CodeUnauthorized.
	Secret string `json:"secret"`
	// Holder is the Lease holder identity used for this session's holds: "<pod>/<session>".
	Holder string `json:"holder"`
	// TTLMillis is the session's TTL as granted.
	TTLMillis int64 `json:"ttlMillis"`
	// KeepAliveMillis is how often the client should call SessionKeepAlivePath: often enough
	// that the session lives (a third of its TTL) and that each hold's validity is confirmed
	// before it runs out (half the least validity a renewed hold has, the side-car's renew
	// deadline minus its renew period). Zero from a side-car older than this field.
	KeepAliveMillis int64 `json:"keepAliveMillis,omitempty"`
}

// Key returns what names s in a call.
func (s Session) Key() SessionKey { return SessionKey{ID: s.ID, Secret: s.Secret} }

// SessionKey names a session in a call: its public ID, and the secret that proves the caller
// is the client that opened it.
type SessionKey struct {
	ID, Secret string
}

// HeaderAuthorization carries a session's secret on every call on the session, as
// "Bearer <secret>".
const HeaderAuthorization = "Authorization"

// Authorization returns the value of HeaderAuthorization for k.
func (k SessionKey) Authorization() string { return "Bearer " + k.Secret }

// SecretFromAuthorization returns the secret of an Authorization header value, "" if it has
// none.
func SecretFromAuthorization(v string) string {
	scheme, secret, ok := strings.Cut(v, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(secret)
}

// AcquireRequest is the body of POST SessionLockPath. The zero value blocks until the lock is held
// or the request is abandoned by the client.
type AcquireRequest struct {
	// Try, when true, makes a single attempt: 200 if acquired, 409 with CodeNotAcquired if not.
	Try bool `json:"try,omitempty"`
	// TimeoutMillis bounds a blocking acquire: after it, 409 with CodeNotAcquired. Zero means no
	// bound (the client's disconnect ends the wait). At most MaxTimeout.
	TimeoutMillis int64 `json:"timeoutMillis,omitempty"`
}

// Validate reports, as a CodeInvalidTimeout error, a request whose fields are out of range.
func (r AcquireRequest) Validate() error {
	switch {
	case r.TimeoutMillis < 0:
		return Errorf(CodeInvalidTimeout, "timeoutMillis %d is negative: use 0 to wait without a bound", r.TimeoutMillis)
	case r.TimeoutMillis > MaxTimeout.Milliseconds():
		return Errorf(CodeInvalidTimeout, "timeoutMillis %d exceeds the maximum %d (%s)", r.TimeoutMillis, MaxTimeout.Milliseconds(), MaxTimeout)
	case r.Try && r.TimeoutMillis != 0:
		return Errorf(CodeInvalidTimeout, "timeoutMillis must be 0 when try is true: a try does not wait")
	}
	return nil
}

// Grant describes a hold: the response to a successful acquire, and the payload of
// EventElected.
type Grant struct {
	// Name is the lock or election name as the client gave it.
	Name string `json:"name"`
	// Lease is the name of the coordination.k8s.io/v1 Lease that backs it.
	Lease string `json:"lease"`
	// Token is the fencing token: strictly greater than every earlier grant of this name.
	// It is a decimal string of an unsigned 64-bit integer, to survive JSON number precision.
	Token string `json:"token"`
	// Holder is the Lease holder identity.
	Holder string `json:"holder"`
	// ValidForMillis is how long, from when the side-car sent this, the hold is guaranteed: the
	// side-car declares it lost no later, and no one else can hold it before. A client anchors
	// it at the time it sent the request this answers (acquire, keep-alive), which is earlier,
	// and treats the hold as lost when that time passes without a newer confirmation (see
	// KeepAliveResponse). In an event it is not anchored: a client confirms an elected event's
	// validity with a keep-alive. Zero from a side-car older than this field.
	ValidForMillis int64 `json:"validForMillis,omitempty"`
}

// KeepAliveResponse is the response to POST SessionKeepAlivePath (200): the session's holds,
// each with the validity the side-car guarantees from now. A hold of the client's that is
// missing has ended (its lost event is on the stream, or was).
type KeepAliveResponse struct {
	Holds []HoldValidity `json:"holds"`
}

// HoldValidity is one hold in a KeepAliveResponse.
type HoldValidity struct {
	Kind           Kind   `json:"kind"`
	Name           string `json:"name"`
	Token          string `json:"token"`
	ValidForMillis int64  `json:"validForMillis"`
}

// LockState is the response of GET LockPath and the element of an election watch.
type LockState struct {
	Name  string `json:"name"`
	Lease string `json:"lease"`
	// Held reports whether someone holds it now, as this side-car last observed.
	Held bool `json:"held"`
	// Holder is the Lease holder identity ("<pod>/<session>"), empty when free.
	Holder string `json:"holder,omitempty"`
	// Token is the fencing token of the current (or last) grant, empty if never granted.
	Token string `json:"token,omitempty"`
	// AcquireTime is when the current holder got it.
	AcquireTime *time.Time `json:"acquireTime,omitempty"`
	// RenewTime is the holder's last renewal, as the holder wrote it.
	RenewTime *time.Time `json:"renewTime,omitempty"`
	// LeaseDurationSeconds is how long others wait, from their last observation of a change,
	// before they treat the holder as gone.
	LeaseDurationSeconds int32 `json:"leaseDurationSeconds,omitempty"`
}

// ElectionState is the response of GET ElectionPath and each line of ElectionWatchPath. Its
// fields mean what LockState's do, with the holder being the leader.
type ElectionState = LockState

// EventType names the kind of an Event.
type EventType string

// Event types sent on a session's event stream.
const (
	// EventReady is the first event of every stream.
	EventReady EventType = "ready"
	// EventPing is sent periodically so a client can tell a live side-car from a stuck one.
	EventPing EventType = "ping"
	// EventLost says a lock held by this session is no longer held: the side-car could not renew
	// it before its renew deadline, or it was taken from outside. Work protected by the lock must
	// stop.
	EventLost EventType = "lost"
	// EventElected says this session now leads an election; Grant carries the token.
	EventElected EventType = "elected"
	// EventDeposed says this session no longer leads an election (it resigned, or could not renew).
	// It stays a candidate unless it left the election.
	EventDeposed EventType = "deposed"
	// EventClosed is the last event of a stream whose session ended; Reason says why.
	EventClosed EventType = "closed"
	// EventDegraded says the side-car has trouble with the API server: Code is CodeForbidden
	// (RBAC) or CodeUnavailable, Reason says what failed. It changes no hold by itself, but
	// while it lasts holds may be lost (each loss has its own event) and waits last longer. A
	// session opened during the trouble gets it after EventReady. It lasts until EventRecovered.
	EventDegraded EventType = "degraded"
	// EventRecovered says the trouble of the last EventDegraded is over.
	EventRecovered EventType = "recovered"
)

// Event is one line of a session's event stream.
type Event struct {
	Type EventType `json:"type"`
	// Kind is KindLock or KindElection for lost, elected and deposed events.
	Kind Kind `json:"kind,omitempty"`
	// Grant is the hold concerned, for lost, elected and deposed events.
	Grant *Grant `json:"grant,omitempty"`
	// Reason is a human-readable explanation for lost, deposed, closed and degraded events.
	Reason string `json:"reason,omitempty"`
	// Code is the error code of a degraded event.
	Code ErrorCode `json:"code,omitempty"`
}

// Kind tells locks from elections.
type Kind string

// Kinds of hold.
const (
	KindLock     Kind = "lock"
	KindElection Kind = "election"
)

// ErrorCode is a stable, machine-readable error identifier.
type ErrorCode string

// Error codes and the HTTP status they come with.
const (
	CodeBadRequest      ErrorCode = "bad_request"        // 400: malformed body, unknown field
	CodeInvalidName     ErrorCode = "invalid_name"       // 400: ValidateName failed
	CodeInvalidTimeout  ErrorCode = "invalid_timeout"    // 400: timeout or TTL out of range
	CodeUnauthorized    ErrorCode = "unauthorized"       // 401: a session call without its session's secret
	CodeNotFound        ErrorCode = "not_found"          // 404: no such path or object
	CodeNoSession       ErrorCode = "no_session"         // 404: unknown or ended session
	CodeMethod          ErrorCode = "method_not_allowed" // 405
	CodeNotAcquired     ErrorCode = "not_acquired"       // 409: try failed, or timeout passed
	CodeAlreadyHeld     ErrorCode = "already_held"       // 409: this session already holds it
	CodeNotHeld         ErrorCode = "not_held"           // 409: release of a lock not held
	CodeForeignLease    ErrorCode = "foreign_lease"      // 409: the name's Lease exists but is not managed by the side-car
	CodeTooLarge        ErrorCode = "too_large"          // 413: body over MaxRequestBytes
	CodeTooMany         ErrorCode = "too_many"           // 429: a limit of the side-car (sessions, names per session, pending acquires, watches)
	CodeUnsupportedType ErrorCode = "unsupported_media"  // 415: not application/json
	CodeShuttingDown    ErrorCode = "shutting_down"      // 503: side-car is stopping
	CodeUnavailable     ErrorCode = "unavailable"        // 503: API server unreachable, not ready
	CodeForbidden       ErrorCode = "forbidden"          // 503: RBAC forbids the Lease verbs
	CodeInternal        ErrorCode = "internal"           // 500
)

// Error is the body of every non-2xx response.
type Error struct {
	Code    ErrorCode `json:"code"`
	Message string    `json:"message"`
}

// Error implements the error interface.
func (e *Error) Error() string { return string(e.Code) + ": " + e.Message }

// Errorf returns an *Error with code and a formatted message.
func Errorf(code ErrorCode, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// CodeOf returns the ErrorCode of err: its own when err is (or wraps) an *Error, CodeInternal
// otherwise, and "" for a nil err.
func CodeOf(err error) ErrorCode {
	if err == nil {
		return ""
	}
	var we *Error
	if errors.As(err, &we) {
		return we.Code
	}
	return CodeInternal
}
