package elector

import (
	"context"
	"os"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/metaparticle-io/sync/elector/internal/leasefake"
	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/wire"
)

// This file holds the unit-test bed: a fake clientset whose Lease writes behave like the API
// server's on etcd (every write gets the next revision as resourceVersion; an Update whose
// resourceVersion is not the stored one fails with Conflict), a fake clock, and helpers.
//
// Every test that starts an Engine runs in a testing/synctest bubble (synctest.Test), so the
// tests wait on events, never on time: synctest.Wait returns when every goroutine of the bubble
// (the Engine's workers, its informer and the fake clientset's watch, the test's callers) is
// durably blocked, and the Engine's own timers run on a FakeClock that only the test moves (see
// bed.step). A bubble must not call t.Run, so table tests open one bubble per subtest. Halt, in
// the Cleanup of newBed, ends the Engine's goroutines; one left blocked after it makes
// synctest.Test panic with a deadlock, so a leak fails the run.

const testNS = leasefake.Namespace

var leasesGVR = schema.GroupVersionResource{Group: "coordination.k8s.io", Version: "v1", Resource: "leases"}

// foreignLease returns a Lease for kind/name held by holder, as another side-car writes it.
func foreignLease(kind wire.Kind, name, holder string, d time.Duration) *coordinationv1.Lease {
	old := time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC) // a wall clock far off: must not matter
	l := newLease(testNS, contract.LeaseName(kind, name), kind, name, holder, old, d)
	if holder == "" {
		l.Spec.HolderIdentity = nil
	}
	l.Annotations[contract.AnnotationToken] = "7"
	return l
}

// bed is one side-car engine on a fakeAPI with a fake clock.
type bed struct {
	t     *testing.T
	api   *leasefake.API
	clock *testingclock.FakeClock
	e     *Engine
	reg   *prometheus.Registry
}

var epoch = time.Date(2030, 5, 1, 12, 0, 0, 0, time.UTC)

// newBed starts an Engine for pod on api (a new fakeAPI if nil) with clock (a new one if nil).
// Call it inside the test's synctest bubble, which the Engine's goroutines and channels then
// belong to; api, if given, must be made there too.
func newBed(t *testing.T, pod string, api *leasefake.API, clk *testingclock.FakeClock) *bed {
	t.Helper()
	return newBedWith(t, Config{PodName: pod}, api, clk)
}

// newBedWith is newBed with a Config (its Namespace is set to the bed's) and changes to the
// Engine's Options.
func newBedWith(t *testing.T, cfg Config, api *leasefake.API, clk *testingclock.FakeClock, opts ...func(*Options)) *bed {
	t.Helper()
	if api == nil {
		api = leasefake.New(t)
	}
	if clk == nil {
		clk = testingclock.NewFakeClock(epoch)
	}
	reg := prometheus.NewRegistry()
	cfg.Namespace = testNS
	if cfg.WatchScope == "" {
		cfg.WatchScope = os.Getenv("ELECTOR_TEST_WATCH_SCOPE") // make test runs the tests with each
	}
	o := Options{Clock: clk, Registerer: reg, Log: leasefake.Logger(t)}
	for _, f := range opts {
		f(&o)
	}
	e, err := NewEngine(cfg, api.Leases(testNS), o)
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
	return s
}

// events streams a session's events into a channel until the test ends, without pings and
// the reports of API trouble (see healthEvents).
func (b *bed) events(id wire.SessionKey) <-chan wire.Event {
	b.t.Helper()
	return b.streamOf(id, wire.EventPing, wire.EventDegraded, wire.EventRecovered)
}

// healthEvents is events with the reports of API trouble.
func (b *bed) healthEvents(id wire.SessionKey) <-chan wire.Event {
	b.t.Helper()
	return b.streamOf(id, wire.EventPing)
}

// streamOf streams a session's events, but those of the types in skip, into a channel until the
// test ends.
func (b *bed) streamOf(id wire.SessionKey, skip ...wire.EventType) <-chan wire.Event {
	b.t.Helper()
	ch := make(chan wire.Event, 100)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = b.e.StreamEvents(ctx, id, func(ev wire.Event) error {
			if !slices.Contains(skip, ev.Type) {
				ch <- ev
			}
			return nil
		})
	}()
	b.t.Cleanup(func() { cancel(); <-done })
	if ev := next(b.t, ch); ev.Type != wire.EventReady {
		b.t.Fatalf("got first event %+v; want ready", ev)
	}
	return ch
}

type acquireOutcome struct {
	g   wire.Grant
	err error
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

// waiting returns the number of local contenders of a name not holding it.
func (b *bed) waiting(kind wire.Kind, name string) int {
	n, _ := b.e.peekName(kind, name)
	if n == nil {
		return 0
	}
	defer n.mu.Unlock()
	c := 0
	for _, x := range n.queue {
		if n.hold == nil || n.hold.c != x {
			c++
		}
	}
	return c
}

// observed returns the holder of a name's Lease and when b first saw its current version.
func (b *bed) observed(kind wire.Kind, name string) (string, time.Time) {
	n, _ := b.e.peekName(kind, name)
	if n == nil {
		return "", time.Time{}
	}
	defer n.mu.Unlock()
	return holderOf(n.obj), n.observedAt
}

// settle returns when every goroutine of the test's bubble is durably blocked: each worker
// parked on its kick channel, a fake-clock timer or a blocked write, the informer waiting for a
// watch event, callers waiting for their answers. Nothing happens after it until the test acts:
// the Engine's timers run on the fake clock, which only the test moves, and the bubble's own
// clock (client-go's timers, the deadlines of the Engine's API calls) does not advance during
// synctest.Wait; it advances only while the test goroutine itself sleeps on it, as in Start's
// wait for the informer's sync.
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

// wait returns what ch holds once every goroutine has parked. When nothing is there, nothing can
// arrive without the test acting, so it fails at once.
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

func next(t *testing.T, ch <-chan wire.Event) wire.Event { t.Helper(); return wait(t, ch) }

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

func codeOf(err error) wire.ErrorCode {
	if err == nil {
		return ""
	}
	return wire.CodeOf(err)
}

func holderOfStored(f *leasefake.API, lease string) string { return holderOf(f.Get(lease)) }

// settled fails the test unless get, called once every goroutine has parked, returns want.
func settled[T comparable](t *testing.T, what string, get func() T, want T) {
	t.Helper()
	synctest.Wait()
	if got := get(); got != want {
		t.Fatalf("%s: got %v; want %v", what, got, want)
	}
}

// releasing reports whether the local hold of a name is marked to be released.
func (b *bed) releasing(kind wire.Kind, name string) bool {
	n, _ := b.e.peekName(kind, name)
	if n == nil {
		return false
	}
	defer n.mu.Unlock()
	return n.hold != nil && n.hold.release
}

// second returns the error of a call that also returns a value.
func second[T any](_ T, err error) error { return err }

// relisted delivers the update of a Lease from old to obj to the Engine as its informer's relist
// would.
func (b *bed) relisted(old, obj *coordinationv1.Lease) {
	b.t.Helper()
	if b.e.informer != nil {
		b.e.onLeaseEvent(obj, false, b.e.regressed(old, obj))
		return
	}
	b.e.mu.Lock()
	n := b.e.names[obj.Name]
	b.e.mu.Unlock()
	if n == nil || n.w == nil {
		b.t.Fatalf("Lease %s is not watched", obj.Name)
	}
	b.e.onNameEvent(n, n.w.inf, obj, false, b.e.regressed(old, obj))
}
