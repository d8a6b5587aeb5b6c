package sdk

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/metaparticle-io/sync/wire"
)

const (
	// DefaultRetryTimeout is how long a call retries transient errors unless WithRetryTimeout
	// says otherwise: long enough for a side-car that starts after its application.
	DefaultRetryTimeout = 30 * time.Second

	// DefaultBackoffMin and DefaultBackoffMax bound the exponential back-off between retries.
	DefaultBackoffMin = 100 * time.Millisecond
	DefaultBackoffMax = 3 * time.Second

	// attemptTimeout bounds one short request (everything but a blocking acquire and the
	// streams), so that a stuck side-car does not hold a caller without a deadline forever.
	attemptTimeout = 10 * time.Second

	// cleanupTimeout bounds the requests the SDK makes on its own behalf after the caller's
	// context ended: releasing a lock an abandoned acquire may have won, leaving an election,
	// ending the session on Close.
	cleanupTimeout = 5 * time.Second

	// maxResponseBytes caps the body read from a short response (a stream's lines are capped by
	// maxLineBytes).
	maxResponseBytes = 1 << 20
)

// An Option configures a Client.
type Option func(*config)

type config struct {
	addr         string
	addrSource   string
	ttl          time.Duration
	retryTimeout time.Duration
	backoffMin   time.Duration
	backoffMax   time.Duration
	hc           *http.Client
}

// WithAddress sets the side-car's address, host:port. The default is the value of
// $METAPARTICLE_SYNC_ADDR ([wire.EnvAddress]) when set, otherwise [wire.DefaultAddress].
func WithAddress(hostport string) Option {
	return func(c *config) { c.addr, c.addrSource = hostport, "set by WithAddress" }
}

// WithSessionTTL asks the side-car for a session TTL: how long the session, and so every hold of
// the Client, survives after the SDK stops hearing from the side-car. Zero, the default, takes
// the side-car's default ([wire.DefaultSessionTTL], 10 s); otherwise it must lie within
// [wire.MinSessionTTL] and [wire.MaxSessionTTL]. A shorter TTL hands a dead process's locks over
// sooner and costs more keep-alives (one every TTL/3, or more often when the side-car asks, to
// confirm the validity of holds: see the package documentation).
func WithSessionTTL(d time.Duration) Option { return func(c *config) { c.ttl = d } }

// WithRetryTimeout bounds how long one call keeps retrying transient errors (connection refused,
// HTTP 5xx) after the first one; the caller's context bounds it too. The default is
// DefaultRetryTimeout. Zero disables retries.
func WithRetryTimeout(d time.Duration) Option { return func(c *config) { c.retryTimeout = d } }

// WithBackoff sets the first and the longest pause between retries; pauses double from first
// to longest, each drawn at random from its upper half (jitter). The defaults are
// DefaultBackoffMin and DefaultBackoffMax.
func WithBackoff(first, longest time.Duration) Option {
	return func(c *config) { c.backoffMin, c.backoffMax = first, longest }
}

// WithHTTPClient sets the HTTP client used to reach the side-car. Its Timeout must be zero,
// since blocking acquires and event streams last as long as they need; the default client uses
// no proxy and no timeout.
func WithHTTPClient(hc *http.Client) Option { return func(c *config) { c.hc = hc } }

// A Client is a connection to the side-car and the owner of one session with it: every Lock and
// Election made from a Client holds as the same identity. It opens the session when a lock or
// election first needs it, keeps it alive and follows its event stream; when the session ends for
// any reason, every hold is reported lost and the next call opens a new session.
//
// A Client is safe for concurrent use by multiple goroutines. Its zero value is not usable: call
// NewClient, or use DefaultClient.
type Client struct {
	cfg    config
	base   string        // "http://host:port"
	err    error         // configuration error of a DefaultClient, returned by every call
	label  string        // sent as OpenSessionRequest.Client
	opener chan struct{} // one slot, held while a session is being opened

	mu     sync.Mutex // protects sess and closed
	sess   *session   // the current session; nil before first use and after it ended
	closed bool
}

// NewClient returns a Client of the side-car found from the options and the environment. It does
// no I/O: the session is opened by the first call that needs it. It fails only on invalid
// options or an invalid $METAPARTICLE_SYNC_ADDR.
func NewClient(opts ...Option) (*Client, error) {
	cfg := config{
		retryTimeout: DefaultRetryTimeout,
		backoffMin:   DefaultBackoffMin,
		backoffMax:   DefaultBackoffMax,
	}
	if a := os.Getenv(wire.EnvAddress); a != "" {
		cfg.addr, cfg.addrSource = a, "from $"+wire.EnvAddress
	} else {
		cfg.addr, cfg.addrSource = wire.DefaultAddress, "the default; $"+wire.EnvAddress+" is unset"
	}
	for _, o := range opts {
		o(&cfg)
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.hc == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.Proxy = nil // the side-car shares the Pod's network namespace
		tr.MaxIdleConnsPerHost = 16
		cfg.hc = &http.Client{Transport: tr}
	}
	return &Client{
		cfg:    cfg,
		base:   "http://" + cfg.addr,
		label:  fmt.Sprintf("go-sdk pid=%d %s", os.Getpid(), filepath.Base(os.Args[0])),
		opener: make(chan struct{}, 1),
	}, nil
}

func (c *config) validate() error {
	host, port, err := net.SplitHostPort(c.addr)
	if err != nil {
		return fmt.Errorf("sdk: side-car address %q (%s) is not host:port: %v", c.addr, c.addrSource, err)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 || host == "" {
		return fmt.Errorf("sdk: side-car address %q (%s) is not host:port with a port in 1-65535", c.addr, c.addrSource)
	}
	if c.ttl != 0 && (c.ttl < wire.MinSessionTTL || c.ttl > wire.MaxSessionTTL) {
		return fmt.Errorf("sdk: session TTL %s is outside [%s, %s]", c.ttl, wire.MinSessionTTL, wire.MaxSessionTTL)
	}
	if c.retryTimeout < 0 {
		return fmt.Errorf("sdk: retry timeout %s is negative", c.retryTimeout)
	}
	if c.backoffMin <= 0 || c.backoffMax < c.backoffMin {
		return fmt.Errorf("sdk: back-off bounds %s, %s: want 0 < min <= max", c.backoffMin, c.backoffMax)
	}
	if c.hc != nil && c.hc.Timeout != 0 {
		return fmt.Errorf("sdk: the HTTP client's Timeout is %s; it must be zero (blocking acquires wait as long as their context)", c.hc.Timeout)
	}
	return nil
}

var defaultClient struct {
	once sync.Once
	c    *Client
}

// DefaultClient returns the Client used by NewLock and NewElection, creating it on first call
// with no options: the side-car at $METAPARTICLE_SYNC_ADDR, or else at wire.DefaultAddress. If
// that address is invalid, every call made through the returned Client fails with the reason.
// Closing it ends its session for good: later calls fail with ErrClosed.
func DefaultClient() *Client {
	defaultClient.once.Do(func() {
		c, err := NewClient()
		if err != nil {
			c = &Client{err: err}
		}
		defaultClient.c = c
	})
	return defaultClient.c
}

// Degraded reports the API server trouble that the side-car last reported on the Client's
// session, as a *[wire.Error] whose Code is [wire.CodeForbidden] (RBAC) or
// [wire.CodeUnavailable], or nil: no trouble, or no session open. It is for health pages and
// logs; it changes nothing by itself, and every loss the trouble causes is reported as always
// (Lost, the elected context).
func (c *Client) Degraded() error {
	if s := c.current(); s != nil {
		if we := s.degraded.Load(); we != nil {
			return we
		}
	}
	return nil
}

// Address returns the side-car address the Client uses, host:port.
func (c *Client) Address() string { return c.cfg.addr }

// usable returns the error every call must fail with, if any.
func (c *Client) usable() error {
	if c.err != nil {
		return c.err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	return nil
}

// Close ends the Client's session, which releases every lock and election it holds: their Lost
// channels are closed and elected contexts cancelled before the side-car is told. Later calls
// fail with ErrClosed. Close returns an error only if the side-car could not be told; the session
// then ends anyway, as the side-car sees its event stream close. Closing twice is a no-op.
func (c *Client) Close() error {
	if c.err != nil {
		return nil
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	s := c.sess
	c.sess = nil
	c.mu.Unlock()
	if s == nil {
		return nil
	}
	s.markEnded(ErrClosed)
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	_, err := c.do(ctx, request{method: http.MethodDelete, path: wire.SessionPath(s.id), secret: s.secret, noRetry: true})
	s.stop(ErrClosed)
	if err != nil && code(err) != wire.CodeNoSession {
		return fmt.Errorf("sdk: ending session %s: %w", s.id, err)
	}
	return nil
}

// session returns the live session, opening one if there is none.
func (c *Client) session(ctx context.Context) (*session, error) {
	if err := c.usable(); err != nil {
		return nil, err
	}
	if s := c.current(); s != nil {
		return s, nil
	}
	// One opener at a time; the others wait for its session.
	select {
	case c.opener <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-c.opener }()
	if err := c.usable(); err != nil {
		return nil, err
	}
	if s := c.current(); s != nil {
		return s, nil
	}
	s, err := c.openSession(ctx)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		s.stop(ErrClosed)
		return nil, ErrClosed
	}
	c.sess = s
	c.mu.Unlock()
	return s, nil
}

// current returns the live session or nil.
func (c *Client) current() *session {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sess != nil && c.sess.alive() {
		return c.sess
	}
	return nil
}

// forget drops s as the current session once it ended.
func (c *Client) forget(s *session) {
	c.mu.Lock()
	if c.sess == s {
		c.sess = nil
	}
	c.mu.Unlock()
}

// request describes one call to the side-car.
type request struct {
	method, path string
	// secret is the session's secret, for calls on a session ("" for the others).
	secret string
	body   any // JSON-encoded when non-nil
	out    any // decoded from a 2xx body when non-nil
	// long lifts the per-attempt timeout: a blocking acquire waits as long as its context.
	long bool
	// stream returns a 2xx response with its body unread, for the caller to read and close.
	stream bool
	// noRetry makes a single attempt.
	noRetry bool
	// sent, when non-nil, is set to the time of the last attempt's sending.
	sent *time.Time
	// beforeRetry, when set, is called before retrying after an error that leaves it unknown
	// whether the request took effect (the connection broke after the request was sent). It
	// should undo the request; if it fails, do returns its error. Without beforeRetry such errors
	// are retried as they are.
	beforeRetry func(ctx context.Context) error
}

// do sends r, retrying transient errors with back-off for up to the retry timeout or until ctx
// ends. It returns the response (non-nil only for a 2xx stream) and an error that is, or wraps,
// an *apiError for a non-2xx status, a *malformedError for an unusable 2xx body, an
// *unreachableError when no connection could be made, a *transportError when a request got no
// response, ctx's error when ctx ended the call, or beforeRetry's error.
func (c *Client) do(ctx context.Context, r request) (*http.Response, error) {
	var body []byte
	if r.body != nil {
		b, err := json.Marshal(r.body)
		if err != nil {
			return nil, fmt.Errorf("encoding %s %s: %w", r.method, r.path, err)
		}
		body = b
	}
	bo := c.newBackoff()
	var giveUpAt time.Time
	var last error // the last transient error
	for {
		resp, retry, err := c.attempt(ctx, r, body)
		if last != nil && ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			return nil, c.giveUp(r, last, ctx.Err())
		}
		if !retry || r.noRetry {
			if err != nil && ctx.Err() == nil && isDial(err) {
				return nil, c.unreachable(err, nil)
			}
			return resp, err
		}
		last = err
		if ctx.Err() != nil {
			return nil, c.giveUp(r, err, ctx.Err())
		}
		now := time.Now()
		if giveUpAt.IsZero() {
			giveUpAt = now.Add(c.cfg.retryTimeout)
		}
		if !now.Before(giveUpAt) {
			return nil, c.giveUp(r, err, nil)
		}
		t := time.NewTimer(min(bo.next(), giveUpAt.Sub(now)))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, c.giveUp(r, err, ctx.Err())
		}
		if r.beforeRetry != nil && !isDial(err) && !isStatus(err) {
			if err := r.beforeRetry(ctx); err != nil {
				return nil, err
			}
		}
	}
}

// attempt sends r once. retry reports whether the error is transient.
func (c *Client) attempt(ctx context.Context, r request, body []byte) (resp *http.Response, retry bool, err error) {
	actx := ctx
	if !r.long && !r.stream {
		var cancel context.CancelFunc
		actx, cancel = context.WithTimeout(ctx, attemptTimeout)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(actx, r.method, c.base+r.path, bytes.NewReader(body))
	if err != nil {
		return nil, false, fmt.Errorf("%s %s: %w", r.method, r.path, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if r.secret != "" {
		req.Header.Set(wire.HeaderAuthorization, wire.SessionKey{Secret: r.secret}.Authorization())
	}
	if r.sent != nil {
		*r.sent = time.Now()
	}
	resp, err = c.cfg.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, false, ctx.Err()
		}
		return nil, true, &transportError{method: r.method, path: r.path, err: err}
	}
	if r.stream && resp.StatusCode/100 == 2 {
		return resp, false, nil
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		if ctx.Err() != nil {
			return nil, false, ctx.Err()
		}
		return nil, true, &transportError{method: r.method, path: r.path, err: err}
	}
	switch {
	case resp.StatusCode/100 == 2:
		if r.out != nil && resp.StatusCode != http.StatusNoContent {
			if err := json.Unmarshal(data, r.out); err != nil {
				return nil, false, &malformedError{method: r.method, path: r.path, err: err, data: data}
			}
		}
		return nil, false, nil
	case resp.StatusCode >= 500:
		return nil, true, newAPIError(r.method, r.path, resp.StatusCode, data)
	default:
		return nil, false, newAPIError(r.method, r.path, resp.StatusCode, data)
	}
}

// giveUp builds the error of a call whose retries ended, with err the last error and ctxErr the
// context's error if the context ended them.
func (c *Client) giveUp(r request, err, ctxErr error) error {
	if isDial(err) {
		return c.unreachable(err, ctxErr)
	}
	if ctxErr != nil {
		return fmt.Errorf("%w (while retrying after: %v)", ctxErr, err)
	}
	return fmt.Errorf("gave up after retrying for %s: %w", c.cfg.retryTimeout, err)
}

func (c *Client) unreachable(err, ctxErr error) error {
	var te *transportError
	if errors.As(err, &te) {
		err = te.err
	}
	return &unreachableError{addr: c.cfg.addr, source: c.cfg.addrSource, last: err, ctxErr: ctxErr}
}

// transportError is a request that got no response.
type transportError struct {
	method, path string
	err          error
}

func (e *transportError) Error() string { return fmt.Sprintf("%s %s: %v", e.method, e.path, e.err) }
func (e *transportError) Unwrap() error { return e.err }

// isDial reports whether err is a failure to connect, after which the request was surely not
// sent.
func isDial(err error) bool {
	var te *transportError
	if !errors.As(err, &te) {
		return false
	}
	var op *net.OpError
	return errors.As(te.err, &op) && op.Op == "dial"
}

// isStatus reports whether err is an HTTP error status.
func isStatus(err error) bool {
	var ae *apiError
	return errors.As(err, &ae)
}

// backoff yields exponentially growing pauses with jitter: each pause is drawn uniformly from
// [d/2, d], with d doubling from min to max.
type backoff struct{ d, max time.Duration }

func (c *Client) newBackoff() *backoff { return &backoff{d: c.cfg.backoffMin, max: c.cfg.backoffMax} }

func (b *backoff) next() time.Duration {
	d := b.d
	b.d = min(2*b.d, b.max)
	return d/2 + rand.N(d/2+1)
}

// sleep waits for d or until ctx ends, and reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
