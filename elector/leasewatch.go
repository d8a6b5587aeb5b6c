package elector

import (
	"context"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"

	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/wire"
)

// Watching the Leases in use.
//
// A side-car learns every change of the Leases it cares about from a watch: that is how a
// waiter is woken the moment a lock is released, without polling. What it watches is
// Config.WatchScope:
//
//   - WatchNames (the default): one informer per name in use here, over the one Lease of that
//     name (a field selector metadata.name=<lease>, as the kubelet watches each Secret a Pod
//     mounts). A name's informer starts when a session first holds, waits for, stands in or
//     watches it (or a client reads its state), and stops when its Lease is deleted or when
//     nothing here has used it for watchLinger. So the API server sends a side-car the changes
//     of its own names only: a namespace where each Pod uses its own locks costs O(Pods) watch
//     events, not O(Pods²). A side-car with no session watches nothing. kube-apiserver's watch
//     cache files such a watch under its namespace and name (k8s.io/apiserver's cacher, in 1.37
//     which this project tests with), so an event is offered only to the watches of its own Lease, where a label
//     selector would have it filtered against every watch of the namespace.
//   - WatchNamespace: one informer over every managed Lease of the namespace, as the first
//     versions did. Every renewal of every lock reaches every side-car there.
//
// Until a name's informer has listed it, the name is not synced (nameState.synced): its worker
// writes nothing and its watchers are told nothing, since "no Lease known" would read as
// "free". A name's first use thus costs one list (or one streaming watch) before its first
// grant; later grants, handoffs and wake-ups cost what they cost with one informer.
//
// Expiry is counted from when this side-car first saw a version (see the package
// documentation), so a name watched late, or again after its informer stopped, only waits
// longer: never less than a lease duration after the holder's last write.
//
// Idle Leases are deleted by the side-cars that watch them (idle.go), so the last Pod to use a
// name deletes its Lease; an orderly shutdown deletes the free Leases of the names it used at
// once (deleteFreeOnShutdown). The Lease of a name whose last user died without a shutdown stays
// until a Pod uses the name again.
//
// The Leases of names forgotten after watchLinger keep their fencing-token floor here
// (Engine.issued), so that an etcd restore cannot make this side-car grant a token twice; a
// name forgotten because its Lease was deleted moves it into the floor of creates, as before.

// watchLinger is how long a name's informer outlives the last local use of the name: long
// enough for this side-car's idle sweeps to delete the Lease once it has been idle for
// DeleteIdleAfter (counted from its release, or from its expiry), so that the last Pod to use
// a name is the one that deletes it; DefaultDeleteIdleAfter when idle Leases are never deleted.
func (c Config) watchLinger() time.Duration {
	if c.DeleteIdleAfter < 0 {
		return DefaultDeleteIdleAfter
	}
	return c.DeleteIdleAfter + c.LeaseDuration + 2*c.idleSweepPeriod()
}

// nameWatch is the informer of one name's Lease (WatchNames).
type nameWatch struct {
	inf     cache.SharedIndexInformer
	stop    context.CancelFunc
	since   time.Time     // when it started, on the Engine's clock
	synced  chan struct{} // closed once the informer's first list has been applied to the name
	failed  chan struct{} // closed at the first failure of a list or watch before that
	failure sync.Once
}

// firstListWait bounds how long a try, a read or a new watch stream waits for a name's first
// list before it is answered 503 unavailable: the renew deadline.
func (c Config) firstListWait() time.Duration { return c.RenewDeadline }

// newLeaseInformer returns an informer of the managed Leases of the namespace that match
// fieldSelector ("" for all), as client-go's informer factory builds it but over the Engine's
// LeaseClient and without resync, with the Engine's transform and watch error handler.
// onErr, if not nil, is told of every list or watch error too.
func (e *Engine) newLeaseInformer(fieldSelector string, h cache.ResourceEventHandler, onErr func(error)) (cache.SharedIndexInformer, cache.ResourceEventHandlerRegistration, error) {
	leases := e.leases
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.LabelSelector, o.FieldSelector = contract.ManagedBySelector, fieldSelector
			return leases.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.LabelSelector, o.FieldSelector = contract.ManagedBySelector, fieldSelector
			return leases.Watch(ctx, o)
		},
	}
	// A client that says it does not support streaming lists (the test adapter over client-go's
	// fake clientset, the simulator) is listed and watched the classic way.
	inf := cache.NewSharedIndexInformerWithOptions(cache.ToListWatcherWithWatchListSemantics(lw, leases),
		&coordinationv1.Lease{}, cache.SharedIndexInformerOptions{})
	reg, err := inf.AddEventHandler(h)
	if err != nil {
		return nil, nil, err
	}
	// The cache keeps what the Engine reads and writes back. managedFields, most of a Lease's
	// bytes, go: the API server keeps a Lease's own when an Update omits them. The object is
	// the informer's (decoded for it), but written only when there is something to drop: fakes
	// hand the same object to others.
	if err := inf.SetTransform(func(obj any) (any, error) {
		if l, ok := obj.(*coordinationv1.Lease); ok && l.ManagedFields != nil {
			l.ManagedFields = nil
		}
		return obj, nil
	}); err != nil {
		return nil, nil, err
	}
	if err := inf.SetWatchErrorHandlerWithContext(func(ctx context.Context, r *cache.Reflector, err error) {
		e.noteInformerErr(inf, err)
		if onErr != nil {
			onErr(err)
		}
		cache.DefaultWatchErrorHandler(ctx, r, err)
	}); err != nil {
		return nil, nil, err
	}
	return inf, reg, nil
}

// watchName starts the informer of n's Lease, a name new to the Engine (WatchNames). Called
// with e.mu held, before n is published.
func (e *Engine) watchName(n *nameState) error {
	ctx, stop := context.WithCancel(e.ctx)
	w := &nameWatch{stop: stop, since: e.clock.Now(), synced: make(chan struct{}), failed: make(chan struct{})}
	inf, reg, err := e.newLeaseInformer(fields.OneTermEqualSelector("metadata.name", n.lease).String(), cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { e.onNameEvent(n, w.inf, obj, false, false) },
		UpdateFunc: func(old, obj any) {
			e.onNameEvent(n, w.inf, obj, false, e.regressed(old, obj))
		},
		DeleteFunc: func(obj any) { e.onNameEvent(n, w.inf, obj, true, false) },
	}, func(err error) {
		n.mu.Lock()
		defer n.mu.Unlock()
		if !n.synced {
			// Tries and reads cannot wait for the list: they are answered with this.
			n.listErr = e.apiErr("list", err)
			w.failure.Do(func() { close(w.failed) })
			if n.interested() {
				n.wake()
			}
		}
	})
	if err != nil {
		stop()
		return wire.Errorf(wire.CodeInternal, "watching Lease %s: %v", n.lease, err)
	}
	w.inf = inf
	n.w = w
	go inf.RunWithContext(ctx)
	go func() {
		select {
		case <-reg.HasSyncedChecker().Done():
		case <-ctx.Done():
			return
		}
		n.mu.Lock()
		defer n.mu.Unlock()
		n.synced, n.listErr = true, nil
		close(w.synced)
		n.publish(e.clock.Now())
		if n.interested() {
			n.wake()
		}
	}()
	return nil
}

// unwatch stops n's informer, if it has one. Called when n is forgotten.
func (n *nameState) unwatch() {
	if n.w != nil {
		n.w.stop() // its last error, if any, is reported until it ages (APIStatus)
	}
}

// cache returns the informer that watches n's Lease.
func (n *nameState) cache() cache.SharedIndexInformer {
	if n.w != nil {
		return n.w.inf
	}
	return n.e.informer
}

// onNameEvent applies an event of n's own informer (WatchNames). Events of another Lease (from
// a fake that ignores field selectors) and events after n was forgotten are dropped.
func (e *Engine) onNameEvent(n *nameState, inf cache.SharedIndexInformer, obj any, deleted, regressed bool) {
	e.noteWatch(inf)
	l := leaseOf(obj)
	if l == nil || l.Name != n.lease {
		return
	}
	n.mu.Lock()
	if n.removed {
		n.mu.Unlock()
		return
	}
	e.applyEvent(n, l, deleted, regressed)
}

// readName returns the state of lock or election name for a read (State, Observe), with its mu
// held and synced, or nil when the Engine knows nothing of it (WatchNamespace: no such Lease).
// With WatchNames a read is a use: a name not in use here is watched from now on, for
// watchLinger (or until Limits.MaxNames evicts it), and the read waits for its first list (see
// useSynced).
func (e *Engine) readName(kind wire.Kind, name string) (*nameState, error) {
	if e.informer != nil {
		return e.peekName(kind, name)
	}
	return e.useSynced(kind, name)
}

// useSynced is lockName for a use that needs the name's Lease listed first (a read, a new watch
// stream): with WatchNames it waits for the name's first list, and fails with
// wire.CodeUnavailable when that list fails or takes firstListWait.
func (e *Engine) useSynced(kind wire.Kind, name string) (*nameState, error) {
	timeout := e.clock.NewTimer(e.cfg.firstListWait())
	defer timeout.Stop()
	for {
		n, err := e.lockName(kind, name)
		if err != nil || n.synced {
			return n, err
		}
		w := n.w
		n.mu.Unlock()
		select {
		case <-w.synced:
			continue
		case <-w.failed:
		case <-timeout.C():
		case <-e.ctx.Done():
			return nil, wire.Errorf(wire.CodeShuttingDown, "the side-car stopped")
		}
		n.mu.Lock()
		synced, err := n.synced, n.unlistedErr(true)
		n.mu.Unlock()
		if synced {
			continue
		}
		e.maybeRemove(n)
		return nil, err
	}
}

// makeRoomLocked makes room for one more name under Limits.MaxNames (WatchNames), evicting the
// least recently used of the names nothing uses now, and fails with wire.CodeTooMany when every
// name is in use. Called with e.mu held.
func (e *Engine) makeRoomLocked() error {
	if len(e.names) < e.cfg.Limits.MaxNames {
		return nil
	}
	var oldest *nameState
	for _, n := range e.names {
		n.mu.Lock()
		if !n.interested() && !n.running && (oldest == nil || n.usedAt.Before(oldest.usedAt)) {
			oldest = n
		}
		n.mu.Unlock()
	}
	if oldest == nil {
		return wire.Errorf(wire.CodeTooMany, "the side-car watches %d names, all in use, its limit (--max-names, about 165 KiB each): release some, raise the limit and the side-car's memory limit, or use --watch-scope=namespace", len(e.names))
	}
	oldest.mu.Lock()
	defer oldest.mu.Unlock()
	if !e.forgetLocked(oldest, false) { // used since the scan
		return wire.Errorf(wire.CodeTooMany, "the side-car watches %d names, all in use, its limit (--max-names): try again", len(e.names))
	}
	return nil
}

// forgetUnused forgets the names that nothing here has used for watchLinger (WatchNames),
// stopping their informers; a sweep calls it. A name in use is marked used now.
func (e *Engine) forgetUnused(now time.Time) {
	if e.informer != nil {
		return
	}
	linger := e.cfg.watchLinger()
	for _, n := range e.allNames() {
		n.mu.Lock()
		if n.interested() || n.running {
			n.usedAt = now
		}
		unused := !now.Before(n.usedAt.Add(linger))
		n.mu.Unlock()
		if unused {
			e.forget(n, false)
		}
	}
}

// leaseOf returns the Lease of an informer event, nil for anything else.
func leaseOf(obj any) *coordinationv1.Lease {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	l, _ := obj.(*coordinationv1.Lease)
	return l
}

// unlistedErr is what a use that cannot wait any longer for n's first list is told: the list's
// failure, or, once waited is set, that it did not come within firstListWait; nil otherwise.
// Called with n.mu held.
func (n *nameState) unlistedErr(waited bool) error {
	if n.listErr != nil || !waited {
		return n.listErr
	}
	return wire.Errorf(wire.CodeUnavailable, "the side-car could not list Lease %s within %s", n.lease, n.e.cfg.firstListWait())
}

// answerTriesUnlisted answers the tries of n, not yet listed, once its list failed or has taken
// firstListWait, and returns when to look again (zero: only when woken). Called with n.mu held.
func (n *nameState) answerTriesUnlisted(now time.Time) time.Time {
	due := n.w.since.Add(n.e.cfg.firstListWait())
	err := n.unlistedErr(!now.Before(due))
	tries := false
	for _, c := range append([]*contender(nil), n.queue...) {
		if !c.try {
			continue
		}
		if err != nil {
			n.answer(c, wire.Grant{}, err, "failed")
		} else {
			tries = true
		}
	}
	if tries {
		return due
	}
	return time.Time{}
}
