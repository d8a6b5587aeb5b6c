package elector

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	coordinationv1client "k8s.io/client-go/kubernetes/typed/coordination/v1"
	k8stesting "k8s.io/client-go/testing"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/metaparticle-io/sync/wire"
)

// This file holds the unit-test bed: a fake clientset whose Lease writes behave like the API
// server's on etcd (every write gets the next revision as resourceVersion; an Update whose
// resourceVersion is not the stored one fails with Conflict), a fake clock, and helpers.

const testNS = "team-a"

var leasesGVR = schema.GroupVersionResource{Group: "coordination.k8s.io", Version: "v1", Resource: "leases"}

// fakeAPI is a fake API server for Leases.
type fakeAPI struct {
	t  *testing.T
	cs *fake.Clientset

	mu     sync.Mutex // protects the fields below
	rev    uint64
	writes []string                                           // "create <lease>", "update <lease>"
	hooks  []func(verb string, l *coordinationv1.Lease) error // run before each write; a non-nil error fails it
	rvText func(uint64) string                                // formats resourceVersions; default decimal
}

func newFakeAPI(t *testing.T) *fakeAPI {
	f := &fakeAPI{t: t, cs: fake.NewSimpleClientset(), rev: 100}
	f.cs.PrependReactor("create", "leases", f.create)
	f.cs.PrependReactor("update", "leases", f.update)
	for _, verb := range []string{"patch", "delete", "deletecollection"} {
		f.cs.PrependReactor(verb, "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
			t.Errorf("unexpected API call: %s %s", a.GetVerb(), a.GetResource().Resource)
			return true, nil, fmt.Errorf("unexpected %s", a.GetVerb())
		})
	}
	return f
}

func (f *fakeAPI) nextRV() string {
	f.rev++
	if f.rvText != nil {
		return f.rvText(f.rev)
	}
	return strconv.FormatUint(f.rev, 10)
}

func (f *fakeAPI) runHooks(verb string, l *coordinationv1.Lease) error {
	for _, h := range f.hooks {
		if err := h(verb, l); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeAPI) create(a k8stesting.Action) (bool, runtime.Object, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	l := a.(k8stesting.CreateAction).GetObject().(*coordinationv1.Lease).DeepCopy()
	f.writes = append(f.writes, "create "+l.Name)
	if err := f.runHooks("create", l); err != nil {
		return true, nil, err
	}
	if _, err := f.cs.Tracker().Get(leasesGVR, a.GetNamespace(), l.Name); err == nil {
		return true, nil, apierrors.NewAlreadyExists(leasesGVR.GroupResource(), l.Name)
	}
	l.ResourceVersion = f.nextRV()
	l.UID = types.UID("uid-" + l.ResourceVersion)
	if err := f.cs.Tracker().Create(leasesGVR, l, a.GetNamespace()); err != nil {
		return true, nil, err
	}
	return true, l.DeepCopy(), nil
}

func (f *fakeAPI) update(a k8stesting.Action) (bool, runtime.Object, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	l := a.(k8stesting.UpdateAction).GetObject().(*coordinationv1.Lease).DeepCopy()
	f.writes = append(f.writes, "update "+l.Name)
	if err := f.runHooks("update", l); err != nil {
		return true, nil, err
	}
	return f.updateLocked(a.GetNamespace(), l)
}

func (f *fakeAPI) updateLocked(ns string, l *coordinationv1.Lease) (bool, runtime.Object, error) {
	cur, err := f.cs.Tracker().Get(leasesGVR, ns, l.Name)
	if err != nil {
		return true, nil, err
	}
	if rv := cur.(*coordinationv1.Lease).ResourceVersion; l.ResourceVersion != rv {
		return true, nil, apierrors.NewConflict(leasesGVR.GroupResource(), l.Name,
			fmt.Errorf("the object has been modified (resourceVersion %s, stored %s)", l.ResourceVersion, rv))
	}
	l.ResourceVersion = f.nextRV()
	if err := f.cs.Tracker().Update(leasesGVR, l, ns); err != nil {
		return true, nil, err
	}
	return true, l.DeepCopy(), nil
}

// hook adds a function run before every write, under the fake's lock.
func (f *fakeAPI) hook(h func(verb string, l *coordinationv1.Lease) error) {
	f.mu.Lock()
	f.hooks = append(f.hooks, h)
	f.mu.Unlock()
}

// failUpdates makes every Update of lease fail with err until the returned func is called.
func (f *fakeAPI) failUpdates(lease string, err error) (restore func()) {
	var mu sync.Mutex
	on := true
	f.hook(func(verb string, l *coordinationv1.Lease) error {
		mu.Lock()
		defer mu.Unlock()
		if on && verb == "update" && l.Name == lease {
			return err
		}
		return nil
	})
	return func() { mu.Lock(); on = false; mu.Unlock() }
}

// writeCount returns the number of writes so far.
func (f *fakeAPI) writeCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.writes)
}

func (f *fakeAPI) writesSince(n int) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.writes[n:]...)
}

// put stores l as the next version, as another side-car (or a person) would.
func (f *fakeAPI) put(l *coordinationv1.Lease) *coordinationv1.Lease {
	f.t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	l = l.DeepCopy()
	if l.Namespace == "" {
		l.Namespace = testNS
	}
	cur, err := f.cs.Tracker().Get(leasesGVR, l.Namespace, l.Name)
	if err != nil {
		l.ResourceVersion = f.nextRV()
		if err := f.cs.Tracker().Create(leasesGVR, l, l.Namespace); err != nil {
			f.t.Fatalf("creating Lease %s: %v", l.Name, err)
		}
		return l
	}
	l.ResourceVersion = cur.(*coordinationv1.Lease).ResourceVersion
	if _, _, err := f.updateLocked(l.Namespace, l); err != nil {
		f.t.Fatalf("updating Lease %s: %v", l.Name, err)
	}
	return f.getLocked(l.Name)
}

// remove deletes a Lease, as a person with kubectl would.
func (f *fakeAPI) remove(name string) {
	f.t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.cs.Tracker().Delete(leasesGVR, testNS, name); err != nil {
		f.t.Fatalf("deleting Lease %s: %v", name, err)
	}
}

// get returns the stored Lease, or nil.
func (f *fakeAPI) get(name string) *coordinationv1.Lease {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.getLocked(name)
}

func (f *fakeAPI) getLocked(name string) *coordinationv1.Lease {
	obj, err := f.cs.Tracker().Get(leasesGVR, testNS, name)
	if err != nil {
		return nil
	}
	return obj.(*coordinationv1.Lease).DeepCopy()
}

// foreignLease returns a Lease for kind/name held by holder, as another side-car writes it.
func foreignLease(kind wire.Kind, name, holder string, d time.Duration) *coordinationv1.Lease {
	old := time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC) // a wall clock far off: must not matter
	l := newLease(testNS, LeaseName(kind, name), kind, name, holder, old, d)
	if holder == "" {
		l.Spec.HolderIdentity = nil
	}
	l.Annotations[AnnotationToken] = "7"
	return l
}

// bed is one side-car engine on a fakeAPI with a fake clock.
type bed struct {
	t     *testing.T
	api   *fakeAPI
	clock *testingclock.FakeClock
	e     *Engine
	reg   *prometheus.Registry
}

var epoch = time.Date(2030, 5, 1, 12, 0, 0, 0, time.UTC)

// newBed starts an Engine for pod on api (a new fakeAPI if nil) with clock (a new one if nil).
func newBed(t *testing.T, pod string, api *fakeAPI, clk *testingclock.FakeClock) *bed {
	t.Helper()
	if api == nil {
		api = newFakeAPI(t)
	}
	if clk == nil {
		clk = testingclock.NewFakeClock(epoch)
	}
	reg := prometheus.NewRegistry()
	e, err := NewEngine(Config{PodName: pod, Namespace: testNS}, fakeLeases(api.cs, testNS), Options{Clock: clk, Registerer: reg, Log: testLogger(t)})
	if err != nil {
		t.Fatalf("NewEngine: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(e.Halt)
	return &bed{t: t, api: api, clock: clk, e: e, reg: reg}
}

// newRegistryFor returns a registry with nothing registered but e's gauges, for an Engine made
// without one.
func newRegistryFor(e *Engine) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(&gauges{e: e})
	return reg
}

// open opens a session whose TTL outlasts the clock steps of the tests.
func (b *bed) open() wire.Session {
	b.t.Helper()
	s, err := b.e.OpenSession(wire.OpenSessionRequest{TTLMillis: wire.MaxSessionTTL.Milliseconds(), Client: b.t.Name()})
	if err != nil {
		b.t.Fatalf("OpenSession: %v", err)
	}
	return s
}

// events streams a session's events into a channel until the test ends.
func (b *bed) events(id string) <-chan wire.Event {
	b.t.Helper()
	ch := make(chan wire.Event, 100)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = b.e.StreamEvents(ctx, id, func(ev wire.Event) error {
			if ev.Type != wire.EventPing {
				ch <- ev
			}
			return nil
		})
	}()
	b.t.Cleanup(func() { cancel(); <-done })
	if ev := next(b.t, ch); ev.Type != wire.EventReady {
		b.t.Fatalf("first event %+v; want ready", ev)
	}
	return ch
}

type acquireOutcome struct {
	g   wire.Grant
	err error
}

// acquire starts Acquire in the background.
func (b *bed) acquire(id, name string, req wire.AcquireRequest) <-chan acquireOutcome {
	ch := make(chan acquireOutcome, 1)
	go func() {
		g, err := b.e.Acquire(context.Background(), id, name, req)
		ch <- acquireOutcome{g, err}
	}()
	return ch
}

// mustAcquire acquires at once or fails the test.
func (b *bed) mustAcquire(id, name string) wire.Grant {
	b.t.Helper()
	o := wait(b.t, b.acquire(id, name, wire.AcquireRequest{}))
	if o.err != nil {
		b.t.Fatalf("Acquire(%q): %v", name, o.err)
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

// settle gives the workers a moment of real time to reach their sleep before or after a clock
// step.
func (b *bed) settle() {
	b.t.Helper()
	// The workers sleep on fake-clock timers or on their kick channel; give them a moment of
	// real time to reach that point. Correctness never depends on it: a worker that plans late
	// computes from the clock's current time.
	time.Sleep(20 * time.Millisecond)
}

// step advances the fake clock and lets the workers react.
func (b *bed) step(d time.Duration) {
	b.settle()
	b.clock.Step(d)
	b.settle()
}

func wait[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("nothing arrived within 10s")
	}
	var zero T
	return zero
}

func next(t *testing.T, ch <-chan wire.Event) wire.Event { t.Helper(); return wait(t, ch) }

// quiet fails the test if something arrives on ch within a short real-time window.
func quiet[T any](t *testing.T, ch <-chan T, what string) {
	t.Helper()
	select {
	case v := <-ch:
		t.Fatalf("%s: got %+v; want nothing yet", what, v)
	case <-time.After(100 * time.Millisecond):
	}
}

// eventually polls cond in real time until it holds, failing after 10s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func codeOf(err error) wire.ErrorCode {
	if err == nil {
		return ""
	}
	return CodeOf(err)
}

func holderOfStored(f *fakeAPI, lease string) string { return holderOf(f.get(lease)) }

// fakeLeases adapts the fake clientset's Leases of namespace ns to the Engine's LeaseClient,
// passing on that the fake does not support streaming lists.
func fakeLeases(cs *fake.Clientset, ns string) LeaseClient {
	return fakeLeaseClient{LeaseInterface: cs.CoordinationV1().Leases(ns), cs: cs}
}

type fakeLeaseClient struct {
	coordinationv1client.LeaseInterface
	cs *fake.Clientset
}

func (c fakeLeaseClient) IsWatchListSemanticsUnSupported() bool {
	return c.cs.IsWatchListSemanticsUnSupported()
}
