// Package leasefake is a fake API server for Leases, for the side-car's unit tests: a client-go
// fake clientset whose Lease writes behave like the API server's on etcd (every write gets the
// next revision as its resourceVersion; an Update whose resourceVersion is not the stored one
// fails with Conflict; a Create of an existing Lease fails with AlreadyExists), with hooks that
// fail or delay writes, and a record of the writes (deletes among them). A Delete honours a
// resourceVersion precondition, as kube-apiserver does, but its watch event carries the last
// version's resourceVersion, not a revision of its own as kube-apiserver's (and internal/sim's)
// does. Any other verb fails the test.
//
// It is not a model of the API server's watch: events are delivered as client-go's fake
// delivers them, in order and at once.
package leasefake

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"

	"github.com/go-logr/logr"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	coordinationv1client "k8s.io/client-go/kubernetes/typed/coordination/v1"
	k8stesting "k8s.io/client-go/testing"
)

// Namespace is where Put, Get and Remove find Leases without a namespace of their own.
const Namespace = "team-a"

var leasesGVR = schema.GroupVersionResource{Group: "coordination.k8s.io", Version: "v1", Resource: "leases"}

// API is a fake API server for Leases. Create it with New; it is safe for concurrent use.
type API struct {
	t  testing.TB
	cs *fake.Clientset

	mu     sync.Mutex // protects the fields below
	rev    uint64
	writes []string                                           // "create <lease>", "update <lease>", "delete <lease>"
	hooks  []func(verb string, l *coordinationv1.Lease) error // run before each write; a non-nil error fails it
	rvText func(uint64) string                                // formats resourceVersions; default decimal
	log    []logged                                           // every change, oldest first, for watches that resume
	watch  map[*leaseWatch]struct{}                           // open watches
	opened []string                                           // the field selector of every watch opened
}

// logged is a change with the revision it was made at.
type logged struct {
	rev uint64
	ev  watch.Event
}

// New returns an empty fake whose next revision is 101. Unexpected API calls fail t.
func New(t testing.TB) *API {
	f := &API{t: t, cs: fake.NewSimpleClientset(), rev: 100, watch: map[*leaseWatch]struct{}{}}
	f.cs.PrependReactor("create", "leases", f.create)
	f.cs.PrependReactor("update", "leases", f.update)
	f.cs.PrependReactor("delete", "leases", f.delete)
	for _, verb := range []string{"patch", "deletecollection"} {
		f.cs.PrependReactor(verb, "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
			t.Errorf("unexpected API call: %s %s", a.GetVerb(), a.GetResource().Resource)
			return true, nil, fmt.Errorf("unexpected %s", a.GetVerb())
		})
	}
	return f
}

func (f *API) nextRV() string {
	f.rev++
	if f.rvText != nil {
		return f.rvText(f.rev)
	}
	return strconv.FormatUint(f.rev, 10)
}

func (f *API) runHooks(verb string, l *coordinationv1.Lease) error {
	for _, h := range f.hooks {
		if err := h(verb, l); err != nil {
			return err
		}
	}
	return nil
}

func (f *API) create(a k8stesting.Action) (bool, runtime.Object, error) {
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
	if l.Namespace == "" {
		l.Namespace = a.GetNamespace()
	}
	if err := f.cs.Tracker().Create(leasesGVR, l, a.GetNamespace()); err != nil {
		return true, nil, err
	}
	f.emitLocked(watch.Added, l)
	return true, l.DeepCopy(), nil
}

func (f *API) update(a k8stesting.Action) (bool, runtime.Object, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	l := a.(k8stesting.UpdateAction).GetObject().(*coordinationv1.Lease).DeepCopy()
	f.writes = append(f.writes, "update "+l.Name)
	if err := f.runHooks("update", l); err != nil {
		return true, nil, err
	}
	return f.updateLocked(a.GetNamespace(), l)
}

func (f *API) updateLocked(ns string, l *coordinationv1.Lease) (bool, runtime.Object, error) {
	cur, err := f.cs.Tracker().Get(leasesGVR, ns, l.Name)
	if err != nil {
		return true, nil, err
	}
	if rv := cur.(*coordinationv1.Lease).ResourceVersion; l.ResourceVersion != rv {
		return true, nil, apierrors.NewConflict(leasesGVR.GroupResource(), l.Name,
			fmt.Errorf("the object has been modified (resourceVersion %s, stored %s)", l.ResourceVersion, rv))
	}
	l.ResourceVersion = f.nextRV()
	if l.Namespace == "" {
		l.Namespace = ns
	}
	if err := f.cs.Tracker().Update(leasesGVR, l, ns); err != nil {
		return true, nil, err
	}
	f.emitLocked(watch.Modified, l)
	return true, l.DeepCopy(), nil
}

func (f *API) delete(a k8stesting.Action) (bool, runtime.Object, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := a.(k8stesting.DeleteAction)
	f.writes = append(f.writes, "delete "+d.GetName())
	if err := f.runHooks("delete", &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: d.GetName(), Namespace: a.GetNamespace()}}); err != nil {
		return true, nil, err
	}
	cur := f.getLocked(d.GetName())
	if cur == nil {
		return true, nil, apierrors.NewNotFound(leasesGVR.GroupResource(), d.GetName())
	}
	if p := d.GetDeleteOptions().Preconditions; p != nil && p.ResourceVersion != nil && *p.ResourceVersion != cur.ResourceVersion {
		return true, nil, apierrors.NewConflict(leasesGVR.GroupResource(), d.GetName(),
			fmt.Errorf("precondition failed: resourceVersion in precondition: %s, in object meta: %s", *p.ResourceVersion, cur.ResourceVersion))
	}
	if err := f.removeLocked(a.GetNamespace(), d.GetName()); err != nil {
		return true, nil, err
	}
	return true, nil, nil
}

// Hook adds a function run before every write, under the fake's lock.
func (f *API) Hook(h func(verb string, l *coordinationv1.Lease) error) {
	f.mu.Lock()
	f.hooks = append(f.hooks, h)
	f.mu.Unlock()
}

// FailUpdates makes every Update of lease fail with err until the returned func is called.
func (f *API) FailUpdates(lease string, err error) (restore func()) {
	var mu sync.Mutex
	on := true
	f.Hook(func(verb string, l *coordinationv1.Lease) error {
		mu.Lock()
		defer mu.Unlock()
		if on && verb == "update" && l.Name == lease {
			return err
		}
		return nil
	})
	return func() { mu.Lock(); on = false; mu.Unlock() }
}

// WriteCount returns the number of writes so far.
func (f *API) WriteCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.writes)
}

// WritesSince returns the writes after the first n.
func (f *API) WritesSince(n int) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.writes[n:]...)
}

// Put stores l as the next version, as another side-car (or a person) would.
func (f *API) Put(l *coordinationv1.Lease) *coordinationv1.Lease {
	f.t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	l = l.DeepCopy()
	if l.Namespace == "" {
		l.Namespace = Namespace
	}
	cur, err := f.cs.Tracker().Get(leasesGVR, l.Namespace, l.Name)
	if err != nil {
		l.ResourceVersion = f.nextRV()
		if err := f.cs.Tracker().Create(leasesGVR, l, l.Namespace); err != nil {
			f.t.Fatalf("creating Lease %s: %v", l.Name, err)
		}
		f.emitLocked(watch.Added, l)
		return l
	}
	l.ResourceVersion = cur.(*coordinationv1.Lease).ResourceVersion
	if _, _, err := f.updateLocked(l.Namespace, l); err != nil {
		f.t.Fatalf("updating Lease %s: %v", l.Name, err)
	}
	return f.getLocked(l.Name)
}

// Remove deletes a Lease, as a person with kubectl would.
func (f *API) Remove(name string) {
	f.t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.removeLocked(Namespace, name); err != nil {
		f.t.Fatalf("deleting Lease %s: %v", name, err)
	}
}

// removeLocked deletes a Lease at the next revision: as kube-apiserver does, the Deleted event
// carries the last version with the deletion's resourceVersion.
func (f *API) removeLocked(ns, name string) error {
	obj, err := f.cs.Tracker().Get(leasesGVR, ns, name)
	if err != nil {
		return err
	}
	if err := f.cs.Tracker().Delete(leasesGVR, ns, name); err != nil {
		return err
	}
	last := obj.(*coordinationv1.Lease).DeepCopy()
	last.ResourceVersion = f.nextRV()
	if last.Namespace == "" {
		last.Namespace = ns
	}
	f.emitLocked(watch.Deleted, last)
	return nil
}

// RemoveLocked deletes a Lease from a Hook, which runs under the fake's lock: the deletion lands
// just before the write the hook runs for, as a competing side-car's would.
func (f *API) RemoveLocked(name string) {
	if err := f.removeLocked(Namespace, name); err != nil {
		f.t.Errorf("deleting Lease %s: %v", name, err)
	}
}

// Rewind makes the next write's revision rev+1, as after etcd was restored from a backup.
func (f *API) Rewind(rev uint64) {
	f.mu.Lock()
	f.rev = rev
	f.mu.Unlock()
}

// Get returns the stored Lease, or nil.
func (f *API) Get(name string) *coordinationv1.Lease {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.getLocked(name)
}

func (f *API) getLocked(name string) *coordinationv1.Lease {
	obj, err := f.cs.Tracker().Get(leasesGVR, Namespace, name)
	if err != nil {
		return nil
	}
	return obj.(*coordinationv1.Lease).DeepCopy()
}

// SetResourceVersionFormat makes later writes format their revision with format instead of
// in decimal (for testing API servers whose resourceVersions are not numbers).
func (f *API) SetResourceVersionFormat(format func(uint64) string) {
	f.mu.Lock()
	f.rvText = format
	f.mu.Unlock()
}

// Clientset returns the fake clientset, for reactors of verbs the fake does not serve.
func (f *API) Clientset() *fake.Clientset { return f.cs }

// Leases returns the Leases of namespace ns as the side-car's LeaseClient (elector.LeaseClient),
// passing on that the fake does not support streaming lists.
func (f *API) Leases(ns string) Client {
	return Client{LeaseInterface: f.cs.CoordinationV1().Leases(ns), cs: f.cs, api: f, ns: ns}
}

// Client is the Leases of one namespace of an API.
type Client struct {
	coordinationv1client.LeaseInterface
	cs  *fake.Clientset
	api *API
	ns  string
}

// List lists the Leases as the fake clientset does (by label), and by field selector (metadata.name
// and metadata.namespace), which the fake clientset ignores and kube-apiserver does not, at a
// resourceVersion that Watch can resume from.
func (c Client) List(ctx context.Context, opts metav1.ListOptions) (*coordinationv1.LeaseList, error) {
	sel, err := leaseFieldSelector(opts)
	if err != nil {
		return nil, err
	}
	// The list's resourceVersion is the revision before it: a watch from there may repeat a
	// change the list already holds, never miss one.
	c.api.mu.Lock()
	rev := c.api.rev
	c.api.mu.Unlock()
	list, err := c.LeaseInterface.List(ctx, opts)
	if err != nil {
		return list, err
	}
	list.ResourceVersion = strconv.FormatUint(rev, 10)
	if !sel.Empty() {
		list.Items = slices.DeleteFunc(list.Items, func(l coordinationv1.Lease) bool { return !sel.Matches(leaseFields(&l)) })
	}
	return list, nil
}

// Watch watches the Leases of the namespace that match the field selector (see List), from
// opts.ResourceVersion on, as kube-apiserver does: the changes made since that revision come
// first, so that nothing written between a list and its watch is missed.
func (c Client) Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	sel, err := leaseFieldSelector(opts)
	if err != nil {
		return nil, err
	}
	f := c.api
	w := &leaseWatch{f: f, ns: c.ns, sel: sel, out: make(chan watch.Event), notify: make(chan struct{}, 1), stop: make(chan struct{})}
	from, rvErr := strconv.ParseUint(opts.ResourceVersion, 10, 64)
	f.mu.Lock()
	if rvErr == nil {
		for _, e := range f.log {
			if e.rev > from {
				w.offer(e.ev)
			}
		}
	}
	f.watch[w] = struct{}{}
	f.opened = append(f.opened, opts.FieldSelector)
	f.mu.Unlock()
	go w.pump()
	return w, nil
}

// WatchesOpened returns the field selector of every watch opened so far, in order.
func (f *API) WatchesOpened() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.opened...)
}

// emitLocked sends a change to the open watches and logs it. Called with f.mu held.
func (f *API) emitLocked(typ watch.EventType, l *coordinationv1.Lease) {
	ev := watch.Event{Type: typ, Object: l.DeepCopy()}
	f.log = append(f.log, logged{rev: f.rev, ev: ev})
	for w := range f.watch {
		w.offer(ev)
	}
}

// leaseWatch is one watch of a Client: its events queue without bound and are passed on in
// order; its pump ends when it is stopped, even while its reader has gone.
type leaseWatch struct {
	f      *API
	ns     string
	sel    fields.Selector
	out    chan watch.Event
	notify chan struct{}
	stop   chan struct{}
	once   sync.Once

	mu    sync.Mutex
	queue []watch.Event
}

func (w *leaseWatch) offer(ev watch.Event) {
	l := ev.Object.(*coordinationv1.Lease)
	if l.Namespace != w.ns || !w.sel.Matches(leaseFields(l)) {
		return
	}
	w.mu.Lock()
	w.queue = append(w.queue, ev)
	w.mu.Unlock()
	select {
	case w.notify <- struct{}{}:
	default:
	}
}

func (w *leaseWatch) pump() {
	defer close(w.out)
	for {
		w.mu.Lock()
		q := w.queue
		w.queue = nil
		w.mu.Unlock()
		for _, ev := range q {
			select {
			case w.out <- ev:
			case <-w.stop:
				return
			}
		}
		select {
		case <-w.notify:
		case <-w.stop:
			return
		}
	}
}

func (w *leaseWatch) ResultChan() <-chan watch.Event { return w.out }

func (w *leaseWatch) Stop() {
	w.once.Do(func() {
		close(w.stop)
		w.f.mu.Lock()
		delete(w.f.watch, w)
		w.f.mu.Unlock()
	})
}

// leaseFieldSelector parses the field selector of opts, refusing fields kube-apiserver does not
// offer for Leases as it does (400).
func leaseFieldSelector(opts metav1.ListOptions) (fields.Selector, error) {
	sel, err := fields.ParseSelector(opts.FieldSelector)
	if err != nil {
		return nil, apierrors.NewBadRequest(err.Error())
	}
	for _, r := range sel.Requirements() {
		if r.Field != "metadata.name" && r.Field != "metadata.namespace" {
			return nil, apierrors.NewBadRequest(fmt.Sprintf("field label not supported: %s", r.Field))
		}
	}
	return sel, nil
}

func leaseFields(l *coordinationv1.Lease) fields.Set {
	return fields.Set{"metadata.name": l.Name, "metadata.namespace": l.Namespace}
}

// IsWatchListSemanticsUnSupported reports that the fake cannot stream lists.
func (c Client) IsWatchListSemanticsUnSupported() bool {
	return c.cs.IsWatchListSemanticsUnSupported()
}

// Logger returns a logger that writes through t when ELECTOR_TEST_LOG is set, and discards
// otherwise: the side-car's logs of a failing test, on demand.
func Logger(t testing.TB) logr.Logger {
	if os.Getenv("ELECTOR_TEST_LOG") == "" {
		return logr.Discard()
	}
	return logr.FromSlogHandler(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.Level(-2)})).WithName(t.Name())
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// Race applies change to the stored Lease name and stores the result as the next version. Call
// it only from a Hook, which runs under the fake's lock: the write lands just before the one the
// hook runs for, as a competing writer's would.
func (f *API) Race(name string, change func(*coordinationv1.Lease)) error {
	cur := f.getLocked(name)
	if cur == nil {
		return apierrors.NewNotFound(leasesGVR.GroupResource(), name)
	}
	change(cur)
	_, _, err := f.updateLocked(Namespace, cur)
	return err
}
