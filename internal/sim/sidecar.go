package sim

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/go-logr/logr"

	"github.com/metaparticle-io/sync/elector"
	"github.com/metaparticle-io/sync/elector/server"
)

// sidecar is one Pod's side-car: the real Engine and the real HTTP handler of elector/server,
// with a Clock of its own, reached by its Pod's applications over in-memory connections.
type sidecar struct {
	w     *World
	idx   int
	pod   string
	clock *Clock
	e     *elector.Engine
	srv   *http.Server
	ln    *pipeListener

	// cut and frozen are protected by w.mu. They count overlapping faults.
	cut    int // its API server connection is cut: its calls and events are held
	frozen int // the process is paused: its calls, events, timers and connections are held

	gmu  sync.Mutex    // protects gate
	gate chan struct{} // closed while the process runs; open while it is frozen
}

// isolated reports whether nothing passes between sc and the API server now. Called with w.mu
// held.
func (sc *sidecar) isolated() bool { return sc.cut > 0 || sc.frozen > 0 }

func newSidecar(w *World, idx int, pod string, cfg elector.Config, rate float64, log logr.Logger) (*sidecar, error) {
	sc := &sidecar{w: w, idx: idx, pod: pod, gate: make(chan struct{})}
	close(sc.gate)
	sc.clock = NewClock(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(idx)*time.Hour), rate)
	cfg.PodName = pod
	e, err := elector.NewEngine(cfg, Client{sc}, elector.Options{Clock: sc.clock, Log: log})
	if err != nil {
		return nil, err
	}
	sc.e = e
	sc.ln = newPipeListener(sc)
	sc.srv = &http.Server{Handler: server.NewHandler(e)}
	go func() { _ = sc.srv.Serve(sc.ln) }()
	return sc, nil
}

// start runs the Engine's informer until it synced.
func (sc *sidecar) start() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return sc.e.Start(ctx)
}

// freeze pauses the process; thaw continues it. Called with w.mu held.
func (sc *sidecar) freeze() {
	sc.frozen++
	if sc.frozen > 1 {
		return
	}
	sc.clock.Freeze()
	sc.gmu.Lock()
	sc.gate = make(chan struct{})
	sc.gmu.Unlock()
}

func (sc *sidecar) thaw() {
	sc.frozen--
	if sc.frozen > 0 {
		return
	}
	sc.gmu.Lock()
	close(sc.gate)
	sc.gmu.Unlock()
	sc.clock.Thaw()
}

// running blocks while the process is frozen.
func (sc *sidecar) running() {
	sc.gmu.Lock()
	g := sc.gate
	sc.gmu.Unlock()
	<-g
}

// stop ends the side-car abruptly, as a crash would: nothing is released.
func (sc *sidecar) stop() {
	sc.e.Halt()
	_ = sc.ln.Close()
	sc.ln.closeConns()
	_ = sc.srv.Close()
}

// pipeListener serves a side-car's HTTP on in-memory connections (net.Pipe, whose operations
// block durably inside a synctest bubble, unlike sockets).
type pipeListener struct {
	sc     *sidecar
	accept chan net.Conn
	done   chan struct{}
	once   sync.Once

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

func newPipeListener(sc *sidecar) *pipeListener {
	return &pipeListener{sc: sc, accept: make(chan net.Conn), done: make(chan struct{}), conns: map[net.Conn]struct{}{}}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.accept:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

// dial connects a client to the side-car: the server end is gated by the side-car's freezes.
func (l *pipeListener) dial(ctx context.Context) (net.Conn, error) {
	client, srv := net.Pipe()
	gc := &gatedConn{Conn: srv, sc: l.sc}
	l.mu.Lock()
	l.conns[client] = struct{}{}
	l.mu.Unlock()
	select {
	case l.accept <- gc:
		return client, nil
	case <-l.done:
		client.Close()
		srv.Close()
		return nil, errors.New("dial side-car: connection refused")
	case <-ctx.Done():
		client.Close()
		srv.Close()
		return nil, ctx.Err()
	}
}

func (l *pipeListener) closeConns() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for c := range l.conns {
		c.Close()
	}
}

// gatedConn is the side-car's end of a connection: it neither reads nor writes while the
// side-car is frozen.
type gatedConn struct {
	net.Conn
	sc *sidecar
}

func (c *gatedConn) Read(p []byte) (int, error) {
	c.sc.running()
	n, err := c.Conn.Read(p)
	c.sc.running()
	return n, err
}

func (c *gatedConn) Write(p []byte) (int, error) {
	c.sc.running()
	return c.Conn.Write(p)
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "127.0.0.1:13131" }

// httpClient returns an HTTP client whose connections go to sc.
func (sc *sidecar) httpClient() *http.Client {
	tr := &http.Transport{
		DialContext:         func(ctx context.Context, _, _ string) (net.Conn, error) { return sc.ln.dial(ctx) },
		MaxIdleConnsPerHost: 16,
	}
	return &http.Client{Transport: tr}
}
