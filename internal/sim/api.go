package sim

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/metaparticle-io/sync/internal/contract"
)

// This file is the simulation's API server: the Leases of one namespace in memory, with the
// semantics the side-car relies on from kube-apiserver on etcd. Every write takes the next
// revision of one global counter as its resourceVersion; an Update whose resourceVersion is not
// the stored one fails with Conflict; a Create of an existing name fails with AlreadyExists; a
// watch delivers the events after the
// resourceVersion it starts from, in revision order for each name, and a watch from before the
// compacted revision fails with 410 Expired. All of it runs on the simulation's driver
// goroutine: side-cars' calls wait in the World's queue until the driver delivers them.

var leaseResource = schema.GroupResource{Group: "coordination.k8s.io", Resource: "leases"}

// apiState is the stored state. It is only touched by the driver.
type apiState struct {
	rev       uint64
	leases    map[string]*coordinationv1.Lease
	log       []watch.Event // committed events, oldest first, after compacted
	compacted uint64        // revisions at or below this are no longer in log
	down      int           // the API server is restarting (overlapping restarts count): calls fail
	watches   map[*apiWatch]struct{}
	watchSeq  uint64
}

// sortedWatches returns the open watches in the order they were opened, so that what the driver
// does with them does not depend on map order.
func (a *apiState) sortedWatches() []*apiWatch {
	out := make([]*apiWatch, 0, len(a.watches))
	for w := range a.watches {
		out = append(out, w)
	}
	slices.SortFunc(out, func(x, y *apiWatch) int { return cmp.Compare(x.id, y.id) })
	return out
}

func newAPIState() *apiState {
	return &apiState{rev: 100, leases: map[string]*coordinationv1.Lease{}, watches: map[*apiWatch]struct{}{}}
}

func rvOf(rev uint64) string { return strconv.FormatUint(rev, 10) }

func (a *apiState) commit(typ watch.EventType, l *coordinationv1.Lease) *coordinationv1.Lease {
	a.rev++
	l = l.DeepCopy()
	l.ResourceVersion = rvOf(a.rev)
	a.leases[l.Name] = l
	ev := watch.Event{Type: typ, Object: l}
	a.log = append(a.log, ev)
	for _, w := range a.sortedWatches() {
		w.offer(ev)
	}
	return l.DeepCopy()
}

func (a *apiState) create(l *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	if _, ok := a.leases[l.Name]; ok {
		return nil, apierrors.NewAlreadyExists(leaseResource, l.Name)
	}
	l = l.DeepCopy()
	l.UID = types.UID("uid-" + rvOf(a.rev+1))
	l.CreationTimestamp = metav1.Time{}
	return a.commit(watch.Added, l), nil
}

func (a *apiState) update(l *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	cur, ok := a.leases[l.Name]
	if !ok {
		return nil, apierrors.NewNotFound(leaseResource, l.Name)
	}
	if l.ResourceVersion != cur.ResourceVersion {
		return nil, apierrors.NewConflict(leaseResource, l.Name,
			fmt.Errorf("the object has been modified; resourceVersion %s, stored %s", l.ResourceVersion, cur.ResourceVersion))
	}
	l = l.DeepCopy()
	l.UID = cur.UID
	return a.commit(watch.Modified, l), nil
}

// remove deletes the Lease name if its resourceVersion is rv (a Delete with a resourceVersion
// precondition), as kube-apiserver does: the Deleted event carries the last version with the
// deletion's revision.
func (a *apiState) remove(name string, rv *string) error {
	cur, ok := a.leases[name]
	if !ok {
		return apierrors.NewNotFound(leaseResource, name)
	}
	if rv != nil && *rv != cur.ResourceVersion {
		return apierrors.NewConflict(leaseResource, name,
			fmt.Errorf("precondition failed: resourceVersion in precondition: %s, in object meta: %s", *rv, cur.ResourceVersion))
	}
	a.rev++
	l := cur.DeepCopy()
	l.ResourceVersion = rvOf(a.rev)
	delete(a.leases, name)
	ev := watch.Event{Type: watch.Deleted, Object: l}
	a.log = append(a.log, ev)
	for _, w := range a.sortedWatches() {
		w.offer(ev)
	}
	return nil
}

// selector is a list or watch's label and field selectors; the fields are metadata.name and
// metadata.namespace, as kube-apiserver offers for Leases.
type selector struct {
	labels labels.Selector
	fields fields.Selector
}

func parseSelector(opts metav1.ListOptions) (selector, error) {
	ls, err := labels.Parse(opts.LabelSelector)
	if err != nil {
		return selector{}, apierrors.NewBadRequest(err.Error())
	}
	fs, err := fields.ParseSelector(opts.FieldSelector)
	if err != nil {
		return selector{}, apierrors.NewBadRequest(err.Error())
	}
	for _, r := range fs.Requirements() {
		if r.Field != "metadata.name" && r.Field != "metadata.namespace" {
			return selector{}, apierrors.NewBadRequest(fmt.Sprintf("field label not supported: %s", r.Field))
		}
	}
	return selector{ls, fs}, nil
}

func matches(sel selector, l *coordinationv1.Lease) bool {
	return sel.labels.Matches(labels.Set(l.Labels)) &&
		sel.fields.Matches(fields.Set{"metadata.name": l.Name, "metadata.namespace": l.Namespace})
}

func (a *apiState) list(sel selector) *coordinationv1.LeaseList {
	out := &coordinationv1.LeaseList{ListMeta: metav1.ListMeta{ResourceVersion: rvOf(a.rev)}}
	for _, name := range slices.Sorted(maps.Keys(a.leases)) {
		if l := a.leases[name]; matches(sel, l) {
			out.Items = append(out.Items, *l.DeepCopy())
		}
	}
	return out
}

// compact forgets the events up to the current revision, so that a watch from before it fails
// with 410 Expired and its informer relists.
func (a *apiState) compact() {
	a.compacted = a.rev
	a.log = nil
}

// apiWatch is one watch of one side-car. Events wait in pending until the driver delivers them.
type apiWatch struct {
	id      uint64
	sc      *sidecar
	sel     selector
	ch      chan watch.Event
	pending []pendingEvent
	closed  bool
}

type pendingEvent struct {
	ev   watch.Event
	name string
	rev  uint64
	at   time.Duration // simulation time it may be delivered
}

// offer queues ev for the watch, translated through its selector as kube-apiserver does.
func (w *apiWatch) offer(ev watch.Event) {
	l := ev.Object.(*coordinationv1.Lease)
	if !matches(w.sel, l) {
		return
	}
	rev, _ := strconv.ParseUint(l.ResourceVersion, 10, 64)
	w.pending = append(w.pending, pendingEvent{ev: ev, name: l.Name, rev: rev, at: w.sc.w.now() + w.sc.w.watchLatency()})
}

// ResultChan implements watch.Interface.
func (w *apiWatch) ResultChan() <-chan watch.Event { return w.ch }

// Stop implements watch.Interface: the client ends the watch.
func (w *apiWatch) Stop() { w.sc.w.stopWatch(w) }

// deliverable returns the index of a pending event that may be delivered at simulation time
// now: its latency has passed and no older event of the same name is still pending. -1 if none.
func (w *apiWatch) deliverable(now time.Duration) []int {
	var out []int
	seen := map[string]bool{}
	for i, p := range w.pending {
		if seen[p.name] {
			continue
		}
		seen[p.name] = true
		if p.at <= now {
			out = append(out, i)
		}
	}
	return out
}

// Client is one side-car's connection to the simulated API server: elector.LeaseClient.
type Client struct{ sc *sidecar }

// IsWatchListSemanticsUnSupported makes the informer list and watch the classic way.
func (Client) IsWatchListSemanticsUnSupported() bool { return true }

// errUnreachable is what a call gets when its side-car cannot reach the API server.
var errUnreachable = errors.New("dial tcp 10.217.1.1:443: connect: connection refused")

// Create implements elector.LeaseClient.
func (c Client) Create(ctx context.Context, l *coordinationv1.Lease, _ metav1.CreateOptions) (*coordinationv1.Lease, error) {
	l = l.DeepCopy()
	return c.sc.w.call(ctx, c.sc, "create", l.Name, func(a *apiState) (*coordinationv1.Lease, error) { return a.create(l) })
}

// Update implements elector.LeaseClient.
func (c Client) Update(ctx context.Context, l *coordinationv1.Lease, _ metav1.UpdateOptions) (*coordinationv1.Lease, error) {
	l = l.DeepCopy()
	return c.sc.w.call(ctx, c.sc, "update", l.Name, func(a *apiState) (*coordinationv1.Lease, error) { return a.update(l) })
}

// Delete implements elector.LeaseClient.
func (c Client) Delete(ctx context.Context, name string, opts metav1.DeleteOptions) error {
	var rv *string
	if opts.Preconditions != nil && opts.Preconditions.ResourceVersion != nil {
		rv = ptrTo(*opts.Preconditions.ResourceVersion)
	}
	_, err := c.sc.w.call(ctx, c.sc, "delete", name, func(a *apiState) (*coordinationv1.Lease, error) { return nil, a.remove(name, rv) })
	return err
}

func ptrTo[T any](v T) *T { return &v }

// List implements elector.LeaseClient.
func (c Client) List(ctx context.Context, opts metav1.ListOptions) (*coordinationv1.LeaseList, error) {
	sel, err := parseSelector(opts)
	if err != nil {
		return nil, err
	}
	var out *coordinationv1.LeaseList
	_, err = c.sc.w.call(ctx, c.sc, "list", "", func(a *apiState) (*coordinationv1.Lease, error) {
		out = a.list(sel)
		return nil, nil
	})
	return out, err
}

// Watch implements elector.LeaseClient.
func (c Client) Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	sel, err := parseSelector(opts)
	if err != nil {
		return nil, err
	}
	from, err := strconv.ParseUint(opts.ResourceVersion, 10, 64)
	if err != nil && opts.ResourceVersion != "" {
		return nil, apierrors.NewBadRequest("resourceVersion " + opts.ResourceVersion)
	}
	var w *apiWatch
	_, err = c.sc.w.call(ctx, c.sc, "watch", "", func(a *apiState) (*coordinationv1.Lease, error) {
		if from < a.compacted {
			return nil, apierrors.NewResourceExpired(fmt.Sprintf("too old resource version: %d (%d)", from, a.compacted))
		}
		a.watchSeq++
		w = &apiWatch{id: a.watchSeq, sc: c.sc, sel: sel, ch: make(chan watch.Event, 1024)}
		for _, ev := range a.log {
			if rv, _ := strconv.ParseUint(ev.Object.(*coordinationv1.Lease).ResourceVersion, 10, 64); rv > from {
				w.offer(ev)
			}
		}
		a.watches[w] = struct{}{}
		return nil, nil
	})
	if err != nil {
		return nil, err
	}
	return w, nil
}

// holderOf and tokenOf read what the checker needs from a Lease.
func holderOf(l *coordinationv1.Lease) string {
	if l == nil || l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

func tokenOf(l *coordinationv1.Lease) string {
	if l == nil {
		return ""
	}
	return l.Annotations[contract.AnnotationToken]
}
