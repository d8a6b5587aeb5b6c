package sdk

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/metaparticle-io/sync/wire"
)

// Errors a caller can test for with errors.Is.
var (
	// ErrClosed is returned by Acquire, TryAcquire, Run, Leader and Watch once their Client is
	// closed. (Release of a hold that Close ended returns an error matching ErrLost.)
	ErrClosed = errors.New("sdk: client closed")

	// ErrHeld is returned by Acquire when the lock is already held, or being acquired or
	// released, through the same Lock or another Lock of the same name on the same Client.
	ErrHeld = errors.New("sdk: lock already held through this client")

	// ErrNotHeld is returned by Release when the Lock holds nothing, and by Resign when the
	// Election does not lead.
	ErrNotHeld = errors.New("sdk: not held")

	// ErrLost is the cause of a lost hold: Release returns an error matching it when the hold ended
	// before Release was called (or while it ran), and the context given to an elected function is
	// cancelled with a cause matching it when leadership is lost or given up. (When Run's own
	// context ends, the elected function's context ends with that context's cause.)
	ErrLost = errors.New("sdk: hold lost")

	// ErrRunning is returned by Run when the Election, or another Election of the same name on the
	// same Client, is already running.
	ErrRunning = errors.New("sdk: election already running")

	// ErrUnreachable matches errors returned when no connection to the side-car could be made.
	ErrUnreachable = errors.New("sdk: side-car unreachable")
)

// unreachableError says that the side-car could not be reached and what to check.
type unreachableError struct {
	addr   string // host:port tried
	source string // where addr came from
	last   error  // the last dial error
	ctxErr error  // the context's error, when the caller's context ended the retries
}

func (e *unreachableError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "sdk: cannot reach the Metaparticle Sync side-car at %s (%s): %v", e.addr, e.source, e.last)
	if e.ctxErr != nil {
		fmt.Fprintf(&b, " (gave up: %v)", e.ctxErr)
	}
	b.WriteString(`; is the side-car running, and does the Pod carry the annotation metaparticle.io/sync: "true"?`)
	return b.String()
}

func (e *unreachableError) Is(target error) bool { return target == ErrUnreachable }

func (e *unreachableError) Unwrap() []error {
	if e.ctxErr != nil {
		return []error{e.last, e.ctxErr}
	}
	return []error{e.last}
}

// apiError is a non-2xx response of the side-car. It unwraps to the *wire.Error of the body.
type apiError struct {
	method, path string
	status       int
	body         *wire.Error // never nil: synthesised when the body is not a wire.Error
}

func (e *apiError) Error() string {
	return fmt.Sprintf("%s %s: %d %s: %s", e.method, e.path, e.status, e.body.Code, e.body.Message)
}

func (e *apiError) Unwrap() error { return e.body }

// code returns the side-car's error code of err, or "" if err is not a side-car error.
func code(err error) wire.ErrorCode {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.body.Code
	}
	return ""
}

// newAPIError builds the error of a non-2xx response from its body. A body that is not a
// wire.Error (a proxy's page, another program on the port) gets a synthetic code so that callers
// still see the status and the start of the body.
func newAPIError(method, path string, status int, data []byte) *apiError {
	e := &apiError{method: method, path: path, status: status}
	var we wire.Error
	if err := json.Unmarshal(data, &we); err == nil && we.Code != "" {
		e.body = &we
		return e
	}
	c := wire.ErrorCode(strings.ToLower(strings.ReplaceAll(http.StatusText(status), " ", "_")))
	if c == "" {
		c = "unknown"
	}
	e.body = &wire.Error{Code: c, Message: fmt.Sprintf("response is not a side-car error body: %q", snippet(data))}
	return e
}

// malformedError is a 2xx response whose body the SDK cannot use.
type malformedError struct {
	method, path string
	err          error
	data         []byte
}

func (e *malformedError) Error() string {
	return fmt.Sprintf("%s %s: malformed response (is the side-car on this address?): %v: %q", e.method, e.path, e.err, snippet(e.data))
}

func (e *malformedError) Unwrap() error { return e.err }

// snippet returns data, cut to its first 120 bytes and "..." if longer, for error messages.
func snippet(data []byte) string {
	const n = 120
	if len(data) > n {
		return string(data[:n]) + "..."
	}
	return string(data)
}

// errSessionEnded is returned internally when a request's session ended under it; the caller
// retries on a new session.
var errSessionEnded = errors.New("sdk: session ended")
