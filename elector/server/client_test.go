package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/metaparticle-io/sync/wire"
)

// apiClient is a minimal client of the lock API, written from wire and docs/api.md, as an
// application's SDK would use it.
type apiClient struct {
	t    *testing.T
	base string
	hc   *http.Client

	mu      sync.Mutex
	secrets map[string]string // by session ID: the client sends its own sessions' secrets
}

func newAPIClient(t *testing.T, base string) *apiClient {
	return &apiClient{t: t, base: base, hc: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}, secrets: map[string]string{}}
}

// authorize sets the Authorization header of a call on one of the client's own sessions.
func (c *apiClient) authorize(req *http.Request, path string) {
	rest, ok := strings.CutPrefix(path, wire.PathSessions+"/")
	if !ok {
		return
	}
	id, _, _ := strings.Cut(rest, "/")
	c.mu.Lock()
	secret := c.secrets[id]
	c.mu.Unlock()
	if secret != "" {
		req.Header.Set(wire.HeaderAuthorization, wire.SessionKey{ID: id, Secret: secret}.Authorization())
	}
}

// call sends a JSON request and decodes a 2xx response into out; a non-2xx response is returned
// as its *wire.Error.
func (c *apiClient) call(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	c.authorize(req, path)
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		var we wire.Error
		if err := json.Unmarshal(data, &we); err != nil {
			return fmt.Errorf("%s %s: status %d with a body that is not a wire.Error: %q", method, path, resp.StatusCode, data)
		}
		return &we
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

func (c *apiClient) open(ttl time.Duration) wire.Session {
	c.t.Helper()
	var s wire.Session
	if err := c.call(context.Background(), "POST", wire.PathSessions, wire.OpenSessionRequest{TTLMillis: ttl.Milliseconds(), Client: c.t.Name()}, &s); err != nil {
		c.t.Fatalf("opening a session: got %v; want a session", err)
	}
	c.mu.Lock()
	c.secrets[s.ID] = s.Secret
	c.mu.Unlock()
	return s
}

func (c *apiClient) acquire(ctx context.Context, sid, name string, req wire.AcquireRequest) (wire.Grant, error) {
	var g wire.Grant
	err := c.call(ctx, "POST", wire.SessionLockPath(sid, name), req, &g)
	return g, err
}

func (c *apiClient) mustAcquire(sid, name string) wire.Grant {
	c.t.Helper()
	g, err := c.acquire(context.Background(), sid, name, wire.AcquireRequest{})
	if err != nil {
		c.t.Fatalf("acquiring %q: got %v; want a grant", name, err)
	}
	return g
}

func (c *apiClient) release(sid, name string) error {
	return c.call(context.Background(), "DELETE", wire.SessionLockPath(sid, name), nil, nil)
}

func (c *apiClient) join(sid, name string) error {
	return c.call(context.Background(), "PUT", wire.SessionElectionPath(sid, name), nil, nil)
}

func (c *apiClient) resign(sid, name string) error {
	return c.call(context.Background(), "POST", wire.SessionResignPath(sid, name), nil, nil)
}

func (c *apiClient) state(kind wire.Kind, name string) (wire.LockState, error) {
	var st wire.LockState
	path := wire.LockPath(name)
	if kind == wire.KindElection {
		path = wire.ElectionPath(name)
	}
	err := c.call(context.Background(), "GET", path, nil, &st)
	return st, err
}

// stamped is a value with the time it was received.
type stamped[T any] struct {
	v  T
	at time.Time
}

// ndjson GETs an NDJSON stream and returns its values with their arrival times; the channel
// closes when the stream ends.
func ndjson[T any](c *apiClient, ctx context.Context, path string) <-chan stamped[T] {
	c.t.Helper()
	req, _ := http.NewRequestWithContext(ctx, "GET", c.base+path, nil)
	c.authorize(req, path)
	resp, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatalf("GET %s: got %v; want a response", path, err)
	}
	if resp.StatusCode != 200 {
		data, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		c.t.Fatalf("GET %s: got %d %s; want 200", path, resp.StatusCode, data)
	}
	ch := make(chan stamped[T], 1000)
	go func() {
		defer close(ch)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			var v T
			if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
				return
			}
			ch <- stamped[T]{v, time.Now()}
		}
	}()
	return ch
}

// events opens a session's event stream, checks the ready event and returns the rest without
// pings.
func (c *apiClient) events(ctx context.Context, sid string) <-chan stamped[wire.Event] {
	c.t.Helper()
	raw := ndjson[wire.Event](c, ctx, wire.SessionEventsPath(sid))
	first, ok := <-raw
	if !ok || first.v.Type != wire.EventReady {
		c.t.Fatalf("got first event %+v; want ready", first.v)
	}
	out := make(chan stamped[wire.Event], 1000)
	go func() {
		defer close(out)
		for ev := range raw {
			if ev.v.Type != wire.EventPing {
				out <- ev
			}
		}
	}()
	return out
}

// tcpProxy forwards TCP connections to a target until it is cut. Cutting drops the connections
// to the target but leaves the clients' connections open and silent, and accepts new ones
// without answering: to its clients, the target hangs, as an unreachable API server does.
type tcpProxy struct {
	ln     net.Listener
	target string

	mu   sync.Mutex // protects the fields below
	cut  bool
	down []net.Conn // client side
	up   []net.Conn // target side
}

func newTCPProxy(t *testing.T, target string) *tcpProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("Listen: got %v; want nil", err)
	}
	p := &tcpProxy{ln: ln, target: target}
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *tcpProxy) addr() string { return p.ln.Addr().String() }

func (p *tcpProxy) isCut() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cut
}

func (p *tcpProxy) serve() {
	for {
		down, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		p.down = append(p.down, down)
		cut := p.cut
		p.mu.Unlock()
		if cut {
			continue // hold it open, say nothing
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			down.Close()
			continue
		}
		p.mu.Lock()
		p.up = append(p.up, up)
		p.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			_, _ = io.Copy(dst, src)
			if !p.isCut() {
				dst.Close()
				src.Close()
			}
		}
		go pipe(up, down)
		go pipe(down, up)
	}
}

// cutOff makes the target unreachable for the proxy's clients.
func (p *tcpProxy) cutOff() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for _, c := range p.up {
		c.Close()
	}
}

func (p *tcpProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range append(p.up, p.down...) {
		c.Close()
	}
}
