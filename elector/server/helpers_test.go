package server

import (
	"context"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	coordinationv1 "k8s.io/api/coordination/v1"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/klog/v2"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/metaparticle-io/sync/elector"
	"github.com/metaparticle-io/sync/elector/internal/leasefake"
	"github.com/metaparticle-io/sync/internal/pipenet"
	"github.com/metaparticle-io/sync/wire"
)

// This file holds the unit-test bed of the transports: an Engine on a fake Lease API
// (elector/internal/leasefake) with a fake clock, used through its exported API only, and its
// HTTP handlers served over in-memory connections.
//
// Every unit test that starts an Engine or serves HTTP runs in a testing/synctest bubble
// (synctest.Test), as the Engine's own unit tests do (elector/fakeapi_test.go), so the tests wait
// on events, never on time: synctest.Wait returns when every goroutine of the bubble (the
// Engine's workers, its informer and the fake clientset's watch, the HTTP server's and client's
// connection goroutines, the test's callers) is durably blocked, and the Engine's own timers run
// on a FakeClock that only the test moves (see bed.step). A bubble must not call t.Run, so table
// tests open one bubble per subtest. HTTP goes over net.Pipe connections (see newPipeServer):
// operations on sockets do not block durably, so a bubble with a socket in use never settles.
// Halt, in the Cleanup of newBed, ends the Engine's goroutines, and the Cleanup of newPipeServer
// ends the connections; one goroutine left blocked after them makes synctest.Test panic with a
// deadlock, so a leak fails the run.
//
// The integration tests (integration_test.go) run outside bubbles, on a real API server over
// sockets, and have real-time helpers of their own: await and eventually.

const testNS = leasefake.Namespace

func init() {
	// apimachinery's HandleError, which client-go's informer calls on a failed list or watch,
	// rate-limits with a process-wide timestamp and a time.Sleep; across bubbles, whose clocks
	// are independent, that sleep can outlast the bubble, which then panics with goroutines
	// still blocked. Log as its default handler does, without the rate limit (1 ms).
	utilruntime.ErrorHandlers = []utilruntime.ErrorHandler{func(ctx context.Context, err error, msg string, kv ...any) {
		klog.LoggerWithName(klog.FromContext(ctx).WithCallDepth(3), "UnhandledError").Error(err, msg, kv...)
	}}
}

var epoch = time.Date(2030, 5, 1, 12, 0, 0, 0, time.UTC)

// bed is one side-car engine on a fake API with a fake clock.
type bed struct {
	t     *testing.T
	api   *leasefake.API
	clock *testingclock.FakeClock
	e     *elector.Engine
	reg   *prometheus.Registry

	secrets sync.Map // session ID → secret, of the sessions open opened
}

// newBed starts an Engine for pod on api (a new fake if nil) with clock (a new one if nil).
// Call it inside the test's synctest bubble, which the Engine's goroutines and channels then
// belong to; api, if given, must be made there too.
func newBed(t *testing.T, pod string, api *leasefake.API, clk *testingclock.FakeClock) *bed {
	t.Helper()
	return newBedConfig(t, elector.Config{PodName: pod, Namespace: testNS}, api, clk)
}

// newBedConfig is newBed with a configuration of its own.
func newBedConfig(t *testing.T, cfg elector.Config, api *leasefake.API, clk *testingclock.FakeClock) *bed {
	t.Helper()
	if api == nil {
		api = leasefake.New(t)
	}
	if clk == nil {
		clk = testingclock.NewFakeClock(epoch)
	}
	reg := prometheus.NewRegistry()
	e, err := elector.NewEngine(cfg, api.Leases(testNS), elector.Options{Clock: clk, Registerer: reg, Log: leasefake.Logger(t)})
	if err != nil {
		t.Fatalf("NewEngine: got %v; want nil", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.Start(ctx); err != nil {
		t.Fatalf("Start: got %v; want nil", err)
	}
	t.Cleanup(e.Halt)
	return &bed{t: t, api: api, clock: clk, e: e, reg: reg}
}

// open opens a session whose TTL outlasts the clock steps of the tests.
func (b *bed) open() wire.Session {
	b.t.Helper()
	s, err := b.e.OpenSession(wire.OpenSessionRequest{TTLMillis: wire.MaxSessionTTL.Milliseconds(), Client: b.t.Name()})
	if err != nil {
		b.t.Fatalf("OpenSession: got %v; want nil", err)
	}
	b.secrets.Store(s.ID, s.Secret)
	return s
}

// authorize sets the Authorization header of a request on one of the bed's sessions, as the
// client that opened it would.
func (b *bed) authorize(req *http.Request, path string) {
	rest, ok := strings.CutPrefix(path, wire.PathSessions+"/")
	if !ok {
		return
	}
	id, _, _ := strings.Cut(rest, "/")
	if secret, ok := b.secrets.Load(id); ok {
		req.Header.Set(wire.HeaderAuthorization, wire.SessionKey{ID: id, Secret: secret.(string)}.Authorization())
	}
}

// acquire starts Acquire in the background.
func (b *bed) acquire(id wire.SessionKey, name string, req wire.AcquireRequest) <-chan acquireOutcome {
	ch := make(chan acquireOutcome, 1)
	go func() {
		g, err := b.e.Acquire(context.Background(), id, name, req)
		ch <- acquireOutcome{g, err}
	}()
	return ch
}

// mustAcquire acquires at once or fails the test.
func (b *bed) mustAcquire(id wire.SessionKey, name string) wire.Grant {
	b.t.Helper()
	o := wait(b.t, b.acquire(id, name, wire.AcquireRequest{}))
	if o.err != nil {
		b.t.Fatalf("Acquire(%q): got %v; want a grant", name, o.err)
	}
	return o.g
}

// waiting returns the number of local lock waiters or election candidates not holding.
func (b *bed) waiting(kind wire.Kind) int {
	return int(gauge(b.t, b.reg, "metaparticle_sync_waiting", kind))
}

// holds returns the number of local holds of kind.
func (b *bed) holds(kind wire.Kind) int {
	return int(gauge(b.t, b.reg, "metaparticle_sync_holds", kind))
}

// gauge reads the value of a side-car gauge with label kind from g.
func gauge(t *testing.T, g prometheus.Gatherer, name string, kind wire.Kind) float64 {
	t.Helper()
	return sample(t, g, name, "kind", string(kind))
}

// sample returns the value of the gauge or counter name whose label has value (the unlabelled
// one when label is "").
func sample(t *testing.T, g prometheus.Gatherer, name, label, value string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("Gather: got %v; want nil", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := label == "" && len(m.GetLabel()) == 0
			for _, l := range m.GetLabel() {
				match = match || l.GetName() == label && l.GetValue() == value
			}
			if !match {
				continue
			}
			if m.Counter != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("got no %s{%s=%q}; want one", name, label, value)
	return 0
}

// settle returns when every goroutine of the test's bubble is durably blocked: each worker
// parked on its kick channel, a fake-clock timer or a blocked write, the informer waiting for a
// watch event, HTTP connections waiting for bytes, callers waiting for their answers. Nothing
// happens after it until the test acts: the Engine's timers run on the fake clock, which only
// the test moves, and the bubble's own clock (client-go's timers, the deadlines of API calls and
// connections) does not advance during synctest.Wait.
func (b *bed) settle() {
	b.t.Helper()
	synctest.Wait()
}

// step advances the fake clock once everything has settled, and returns when everything it set
// off has settled again. Timers due within d all fire at the new time, as with FakeClock.Step.
func (b *bed) step(d time.Duration) {
	b.t.Helper()
	synctest.Wait()
	b.clock.Step(d)
	synctest.Wait()
}

// streamAttached starts session id's event stream, discarding its events, and returns once
// the stream is attached (its ready event was written). The stream ends with ctx.
func (b *bed) streamAttached(ctx context.Context, id wire.SessionKey) {
	b.t.Helper()
	ready := make(chan struct{})
	go func() {
		_ = b.e.StreamEvents(ctx, id, func(ev wire.Event) error {
			if ev.Type == wire.EventReady {
				close(ready)
			}
			return nil
		})
	}()
	wait(b.t, ready)
}

func holderOf(l *coordinationv1.Lease) string {
	if l == nil || l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

func holderOfStored(f *leasefake.API, lease string) string { return holderOf(f.Get(lease)) }

func tokenNum(t *testing.T, s string) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		t.Fatalf("got token %q; want a uint64 (%v)", s, err)
	}
	return v
}

// wait returns what ch holds once every goroutine has parked. When nothing is there, nothing can
// arrive without the test acting, so it fails at once. Call it inside a bubble only; the
// integration tests use await.
func wait[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	synctest.Wait()
	select {
	case v := <-ch:
		return v
	default:
		var zero T
		t.Fatalf("got nothing with every goroutine parked; want one %T", zero)
		return zero
	}
}

// quiet fails the test if ch holds something once every goroutine has parked: exact, since
// nothing can arrive later without the test acting.
func quiet[T any](t *testing.T, ch <-chan T, what string) {
	t.Helper()
	synctest.Wait()
	select {
	case v := <-ch:
		t.Fatalf("%s: got %+v; want nothing", what, v)
	default:
	}
}

// settled fails the test unless get, called once every goroutine has parked, returns want.
func settled[T comparable](t *testing.T, what string, get func() T, want T) {
	t.Helper()
	synctest.Wait()
	if got := get(); got != want {
		t.Fatalf("%s: got %v; want %v", what, got, want)
	}
}

type acquireOutcome struct {
	g   wire.Grant
	err error
}

// pipeServer serves an HTTP handler inside a bubble, over in-memory connections (net.Pipe),
// whose reads and writes block durably, unlike a socket's. Its Client dials it whatever the
// host of the URL.
type pipeServer struct {
	URL    string
	Client *http.Client
}

// newPipeServer serves h until the test ends; the Cleanup closes every connection and waits
// until the server and each of its connections have stopped (a connection that answered an
// error may linger in net/http's delay before the close, on the bubble's clock, which only runs
// while the Cleanup waits). Call it inside the test's bubble.
func newPipeServer(t *testing.T, h http.Handler) *pipeServer {
	ln := pipenet.NewListener(nil)
	var conns sync.WaitGroup
	srv := &http.Server{Handler: h, ConnState: func(_ net.Conn, st http.ConnState) {
		switch st {
		case http.StateNew:
			conns.Add(1)
		case http.StateClosed, http.StateHijacked:
			conns.Done()
		}
	}}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(ln)
	}()
	tr := ln.Transport()
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		_ = srv.Close() // closes the listener and the server's end of every connection
		<-served
		conns.Wait()
	})
	return &pipeServer{URL: "http://side-car.test", Client: &http.Client{Transport: tr}}
}

// second returns the error of a call that also returns a value.
func second[T any](_ T, err error) error { return err }
