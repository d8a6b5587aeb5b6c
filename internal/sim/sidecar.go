package sim

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"

	"github.com/metaparticle-io/sync/elector"
	"github.com/metaparticle-io/sync/elector/server"
	"github.com/metaparticle-io/sync/internal/pipenet"
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
	ln    *pipenet.Listener

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
	sc.ln = pipenet.NewListener(func(c net.Conn) net.Conn { return &gatedConn{Conn: c, sc: sc} })
	h := server.NewHandler(e)
	if w.cfg.OldSidecar {
		h = withoutValidity(h)
	}
	sc.srv = &http.Server{Handler: h}
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
	_ = sc.srv.Close() // closes the server's end of every connection
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

// httpClient returns an HTTP client whose connections go to sc.
func (sc *sidecar) httpClient() *http.Client { return &http.Client{Transport: sc.ln.Transport()} }

// withoutValidity wraps a side-car's handler to answer as a side-car from before hold validity:
// it removes keepAliveMillis from new sessions and validForMillis from grants, and answers
// keep-alives with 204 and no body. Streams pass through.
func withoutValidity(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			h.ServeHTTP(w, r)
			return
		}
		rec := &recorder{header: http.Header{}, status: http.StatusOK}
		h.ServeHTTP(rec, r)
		body := rec.body.Bytes()
		status := rec.status
		var m map[string]any
		if status/100 == 2 && json.Unmarshal(body, &m) == nil {
			delete(m, "keepAliveMillis")
			delete(m, "validForMillis")
			body, _ = json.Marshal(m)
			if strings.HasSuffix(r.URL.Path, "/keepalive") {
				status, body = http.StatusNoContent, nil
			}
		}
		for k, v := range rec.header {
			w.Header()[k] = v
		}
		w.Header().Del("Content-Length")
		w.WriteHeader(status)
		_, _ = w.Write(body)
	})
}

// recorder buffers a response that is not a stream.
type recorder struct {
	header http.Header
	body   bytes.Buffer
	status int
}

func (r *recorder) Header() http.Header         { return r.header }
func (r *recorder) Write(p []byte) (int, error) { return r.body.Write(p) }
func (r *recorder) WriteHeader(status int)      { r.status = status }
