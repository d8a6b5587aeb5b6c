package elector

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/wire"
	"github.com/prometheus/client_golang/prometheus"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"
)

// Options are the Engine's dependencies that are not configuration. The zero value is usable.
type Options struct {
	// Clock is the Engine's time source for every timer and every expiry decision. Default: the
	// real clock. Tests pass a k8s.io/utils/clock/testing.FakeClock.
	Clock clock.WithTickerAndDelayedExecution
	// Log receives structured logs. Default: logr.Discard().
	Log logr.Logger
	// Registerer receives the Engine's metrics. Default: nil, no metrics are registered.
	Registerer prometheus.Registerer
	// Renewals, when set, serves the renewals of held Leases, so that with a rate budget of its
	// own they never wait behind other work (creates, takeovers, releases, the informers'
	// lists) in a storm of acquires. It must reach the same Leases as the Engine's LeaseClient.
	// Default: that LeaseClient. NewEngineForConfig sets it.
	Renewals LeaseClient
	// IdleDeleteRate bounds the deletions of idle Leases (see Config.DeleteIdleAfter), a second.
	// They share the rate budget of new work, and a backlog of them must not crowd it out.
	// Default DefaultIdleDeleteRate; NewEngineForConfig sets a fifth of the rest config's QPS.
	IdleDeleteRate float64
}

// DefaultIdleDeleteRate is Options.IdleDeleteRate's default: a fifth of the side-car's default
// rate budget of new work (50 requests a second).
const DefaultIdleDeleteRate = 10

// Engine is the side-car's lock and election logic, independent of HTTP. It owns sessions,
// watches the Leases of the names in use (see leasewatch.go), and runs one worker goroutine per
// name that has local holds, waiters, candidates or watchers.
//
// Create it with NewEngine, call Start, then use it from any number of goroutines; end it with
// Shutdown (orderly: releases every hold) or Halt (abrupt: releases nothing, as if the process
// died). Methods return *wire.Error values for every failure a client can cause or see.
type Engine struct {
	cfg      Config
	leases   LeaseClient
	renewals LeaseClient // renewals of held Leases (Options.Renewals)
	idleRate float64     // deletions of idle Leases a second (Options.IdleDeleteRate)
	clock    clock.WithTickerAndDelayedExecution
	log      logr.Logger
	m        *metrics

	informer cache.SharedIndexInformer // WatchNamespace: every managed Lease; nil with WatchNames (see leasewatch.go)
	synced   atomic.Bool
	closing  atomic.Bool // set by Shutdown: no new work is accepted
	started  atomic.Bool

	ctx          context.Context // parent of every API call and goroutine; cancelled by Halt
	cancel       context.CancelFunc
	workerExited chan struct{} // capacity 1: signalled when a name's worker exits
	sessionEnded chan struct{} // capacity 1: signalled when a session ends

	// Lock order: mu, then a nameState's mu, then smu or a session's mu; dmu, then smu or a
	// session's mu. smu and a session's mu are never held while taking another lock.
	mu    sync.Mutex            // protects names
	names map[string]*nameState // by Lease name

	hmu sync.Mutex // protects informerErrs, startErr and writeErr; taken last, like imu
	// informerErrs has each informer's last list/watch error, until it lists or watches again.
	informerErrs map[cache.SharedIndexInformer]informerTrouble
	startErr     error     // the start's failed list, until it succeeds
	writeErr     error     // the last failed write's error, until a write succeeds or it ages
	writeErrAt   time.Time // when writeErr was seen, on the Engine's clock

	// dmu orders what the sessions are told about API trouble: degraded and the sessions it was
	// posted to change together. It is taken before smu and a session's mu, never while holding
	// another lock.
	dmu      sync.Mutex
	degraded error // the trouble the sessions were last told of (EventDegraded), or nil

	smu      sync.Mutex // protects sessions
	sessions map[string]*session

	pending atomic.Int64 // lock waiters not yet answered, for Limits.MaxPendingAcquires
	watches atomic.Int64 // open Watch streams, for Limits.MaxWatches

	imu    sync.Mutex        // protects issued and goneFloor; taken last, never while taking another lock
	issued map[string]uint64 // by Lease name: the highest token this side-car has granted
	// goneFloor is the highest token of the names forgotten since (their Lease gone, nothing
	// local using them): every create is checked against it (createFloor).
	goneFloor uint64

	idleForbiddenLogged atomic.Bool // RBAC refused a deletion of an idle Lease, and it was logged
}

// NewEngineForConfig returns an Engine for cfg that manages the Leases of cfg.Namespace through
// the API server that rc reaches (see NewLeaseClient and NewEngine).
func NewEngineForConfig(cfg Config, rc *rest.Config, opts Options) (*Engine, error) {
	if rc == nil {
		return nil, errors.New("NewEngineForConfig: rest config is nil")
	}
	leases, err := NewLeaseClient(rc, cfg.Namespace)
	if err != nil {
		return nil, err
	}
	if opts.IdleDeleteRate == 0 && rc.QPS > 0 {
		opts.IdleDeleteRate = float64(rc.QPS) / 5
	}
	if opts.Renewals == nil {
		// A client of its own, with a token bucket of its own twice rc's (RenewalBudget).
		rr := rest.CopyConfig(rc)
		rr.RateLimiter = nil // a bucket of its own, even when rc brings one
		rr.QPS, rr.Burst = RenewalBudget(rc.QPS, rc.Burst)
		if opts.Renewals, err = NewLeaseClient(rr, cfg.Namespace); err != nil {
			return nil, err
		}
	}
	return NewEngine(cfg, leases, opts)
}

// RenewalBudget is the rate budget of the renewals of held Leases, given that of all other work:
// twice it. Renewals are the one load that grows with what is held (one per hold every
// RenewPeriod, so 100 a second renew 500 holds at the default 5 s), and a renewal that waits
// too long costs a hold, so they get more room than new work, which only waits. An unset QPS
// (0) stays unset: client-go's defaults apply.
func RenewalBudget(qps float32, burst int) (float32, int) { return 2 * qps, 2 * burst }

// NewEngine returns an Engine for cfg that manages Leases through leases, which must be the
// Leases of cfg.Namespace. It applies the defaults to cfg and refuses an invalid one (see
// Config.Validate).
func NewEngine(cfg Config, leases LeaseClient, opts Options) (*Engine, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid side-car configuration: %w", err)
	}
	if leases == nil {
		return nil, errors.New("NewEngine: Lease client is nil")
	}
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	if opts.Log.GetSink() == nil {
		opts.Log = logr.Discard()
	}
	if opts.Renewals == nil {
		opts.Renewals = leases
	}
	if opts.IdleDeleteRate <= 0 {
		opts.IdleDeleteRate = DefaultIdleDeleteRate
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &Engine{
		cfg:          cfg,
		leases:       leases,
		renewals:     opts.Renewals,
		idleRate:     opts.IdleDeleteRate,
		clock:        opts.Clock,
		log:          opts.Log.WithValues("pod", cfg.PodName, "namespace", cfg.Namespace),
		ctx:          ctx,
		cancel:       cancel,
		workerExited: make(chan struct{}, 1),
		sessionEnded: make(chan struct{}, 1),
		issued:       map[string]uint64{},
		informerErrs: map[cache.SharedIndexInformer]informerTrouble{},
		names:        map[string]*nameState{},
		sessions:     map[string]*session{},
	}
	if cfg.PodUID != "" {
		e.log = e.log.WithValues("podUID", cfg.PodUID)
	}
	e.m = newMetrics(opts.Registerer, e)

	if cfg.WatchScope == WatchNamespace {
		inf, _, err := e.newLeaseInformer("", cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { e.onLeaseEvent(obj, false, false) },
			UpdateFunc: func(old, obj any) { e.onLeaseEvent(obj, false, e.regressed(old, obj)) },
			DeleteFunc: func(obj any) { e.onLeaseEvent(obj, true, false) },
		}, nil)
		if err != nil {
			cancel()
			return nil, err
		}
		e.informer = inf
	}
	return e, nil
}

// Config returns the Engine's configuration, with defaults applied.
func (e *Engine) Config() Config { return e.cfg }

// Clock returns the Engine's clock (Options.Clock). Times the Engine reports, such as
// Observation.ObservedAt, are on it.
func (e *Engine) Clock() clock.WithTickerAndDelayedExecution { return e.clock }

// Logger returns the Engine's logger, with the Pod's name and namespace.
func (e *Engine) Logger() logr.Logger { return e.log }

// Start lists the Leases its Pod's previous side-car held (see restart.go) and, with
// WatchNamespace, runs the namespace's Lease informer until its cache has synced; it returns
// then, or with an error when ctx ends or the Engine stops first. Until then every method that
// needs the Leases fails with wire.CodeUnavailable. Start may be called once.
func (e *Engine) Start(ctx context.Context) error {
	if !e.started.CompareAndSwap(false, true) {
		return errors.New("Engine.Start called twice")
	}
	stop := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
		case <-e.ctx.Done():
		}
		close(stop)
	}()
	if e.informer != nil {
		go e.informer.RunWithContext(e.ctx)
		if !cache.WaitForCacheSync(stop, e.informer.HasSynced) {
			if err := e.readyErr(); err != nil {
				return fmt.Errorf("the Lease informer did not sync: %w", err)
			}
			return errors.New("the Lease informer did not sync before the side-car stopped")
		}
		e.noteWatch(e.informer)
	}
	dead, err := e.listOwnHolds(ctx, stop)
	if err != nil {
		return err
	}
	e.freeOwnDeadHolds(ctx, dead)
	e.synced.Store(true)
	go e.reportHealth()
	go e.deleteIdleLeases()
	e.log.Info("serving", "watchScope", e.cfg.WatchScope, "leaseDuration", e.cfg.LeaseDuration,
		"renewDeadline", e.cfg.RenewDeadline, "renewPeriod", e.cfg.RenewPeriod, "retryPeriod", e.cfg.RetryPeriod,
		"deleteIdleLeasesAfter", e.cfg.DeleteIdleAfter)
	return nil
}

// shutdownNotice bounds how long Shutdown waits for event streams to tell their clients that
// their sessions ended, before it releases their holds.
const shutdownNotice = time.Second

// Shutdown ends the Engine in order: it refuses new work (wire.CodeShuttingDown), ends every
// session, which releases every hold, waits for the sessions that outlive it
// (SessionOptions.OutlivesShutdown) to end, closes every watch, waits for the releases to be
// written (or ctx to end), deletes the Leases it used that nobody holds (WatchNames, see
// deleteFreeOnShutdown), and then stops like Halt. It returns ctx's error if the releases did
// not all finish in time; the holds not released then expire after their lease duration.
func (e *Engine) Shutdown(ctx context.Context) error {
	e.closing.Store(true)
	e.log.Info("shutting down: releasing every hold")

	e.smu.Lock()
	sessions := make([]*session, 0, len(e.sessions))
	var outliving []*session
	for _, s := range e.sessions {
		if s.opts.OutlivesShutdown {
			outliving = append(outliving, s)
		} else {
			sessions = append(sessions, s)
		}
	}
	e.smu.Unlock()
	// Tell every client first, and give their event streams up to shutdownNotice to write the
	// news, so that applications learn their holds ended before other Pods can take them.
	ended := make([]endedSession, 0, len(sessions))
	for _, s := range sessions {
		if names, ok := e.closeSession(s, "the side-car is shutting down", wire.CodeShuttingDown); ok {
			ended = append(ended, endedSession{s, names})
		}
	}
	// Each session's holds are released as soon as its own stream has written the news (or at
	// once, without a stream), so that one stream that cannot be flushed delays only its own.
	noticeOver := make(chan struct{})
	notice := e.clock.AfterFunc(shutdownNotice, func() { close(noticeOver) })
	var released sync.WaitGroup
	for _, x := range ended {
		released.Go(func() {
			x.s.mu.Lock()
			streaming := x.s.streaming
			x.s.mu.Unlock()
			if streaming {
				select {
				case <-x.s.flushed:
				case <-noticeOver:
				case <-ctx.Done():
				}
			}
			e.releaseSession(x.s, x.names)
		})
	}
	released.Wait()
	notice.Stop()
	for _, n := range e.allNames() {
		n.mu.Lock()
		n.closeWatchers()
		n.mu.Unlock()
	}

	var err error
	if len(outliving) > 0 {
		e.log.Info("shutting down: waiting for sessions whose clients must be told at their next request", "sessions", len(outliving))
	}
	for _, s := range outliving {
		for !s.hasEnded() && err == nil {
			select {
			case <-e.sessionEnded:
			case <-ctx.Done():
				err = fmt.Errorf("waiting for %d sessions to be told: %w", len(outliving), ctx.Err())
			case <-e.ctx.Done():
				err = errors.New("halted while shutting down")
			}
		}
	}
	for e.workersRunning() && err == nil {
		select {
		case <-e.workerExited:
		case <-ctx.Done():
			err = fmt.Errorf("releasing holds: %w", ctx.Err())
		case <-e.ctx.Done():
			err = errors.New("halted while shutting down")
		}
	}
	if err == nil {
		e.deleteFreeOnShutdown(ctx)
	}
	e.Halt()
	if err == nil {
		e.log.Info("shut down: every hold released")
	}
	return err
}

// Halt stops the Engine at once: the informer stops, API calls in flight are abandoned and
// nothing is released, as if the process had died. Holds then expire after their lease
// duration. Calls after Halt fail with wire.CodeShuttingDown. Halt is idempotent.
func (e *Engine) Halt() {
	e.closing.Store(true)
	e.cancel()
}

// apiErr turns an API error into a *wire.Error with advice.
func (e *Engine) apiErr(verb string, err error) error {
	if apierrors.IsForbidden(err) {
		return wire.Errorf(wire.CodeForbidden,
			"RBAC forbids %s of leases.coordination.k8s.io in namespace %s for this Pod's service account: bind the Role of deploy/rbac/sidecar-role.yaml (%v)",
			verb, e.cfg.Namespace, err)
	}
	return wire.Errorf(wire.CodeUnavailable, "the API server did not answer a %s of leases: %v", verb, err)
}

// accepting reports whether new work is accepted.
func (e *Engine) accepting() error {
	if e.closing.Load() {
		return wire.Errorf(wire.CodeShuttingDown, "the side-car is shutting down")
	}
	if !e.synced.Load() {
		return wire.Errorf(wire.CodeUnavailable, "the side-car is not ready: it has not synced with the API server (see /readyz)")
	}
	return nil
}

// regressed reports whether the informer's update of a Lease from old to obj went back in time.
// A new version whose resourceVersion is below the old one's cannot happen while the API
// server's storage only moves forward: it means etcd was restored from a backup (or replaced),
// and the informer relisted. Every version this side-car knows may be from the future of the
// restored store, so the name is resynchronised to the version now served, its local hold is
// lost, and no token at or below one already granted here is granted again (issuedFloor).
func (e *Engine) regressed(old, obj any) bool {
	o, ok1 := old.(*coordinationv1.Lease)
	l, ok2 := obj.(*coordinationv1.Lease)
	if !ok1 || !ok2 {
		return false
	}
	orv, err1 := parseRV(o)
	nrv, err2 := parseRV(l)
	if err1 != nil || err2 != nil || nrv >= orv {
		return false
	}
	e.m.regressions.Inc()
	e.log.Error(nil, "a Lease's resourceVersion went backwards: was etcd restored from a backup? Resynchronising the name; its hold here is lost, "+
		"and no fencing token at or below one already granted by this side-car will be granted (see docs/api.md, Restoring etcd)",
		"lease", l.Name, "from", o.ResourceVersion, "to", l.ResourceVersion)
	return true
}

// issuedFloor returns the highest token this side-car has granted for lease, 0 if none: a
// takeover's token must exceed it.
func (e *Engine) issuedFloor(lease string) uint64 {
	e.imu.Lock()
	defer e.imu.Unlock()
	return e.issued[lease]
}

// createFloor returns what a create's token (its creation revision) must exceed: the highest
// token granted here for lease, or for any name forgotten since. A creation revision is above
// every revision before it, and so above every token granted before, unless the store went
// back in time (etcd restored).
func (e *Engine) createFloor(lease string) uint64 {
	e.imu.Lock()
	defer e.imu.Unlock()
	return max(e.issued[lease], e.goneFloor)
}

// forgetIssued moves the floor of lease, a name being forgotten, into goneFloor.
func (e *Engine) forgetIssued(lease string) {
	e.imu.Lock()
	defer e.imu.Unlock()
	if f, ok := e.issued[lease]; ok {
		e.goneFloor = max(e.goneFloor, f)
		delete(e.issued, lease)
	}
}

// recordIssued notes that token was granted for lease.
func (e *Engine) recordIssued(lease string, token uint64) {
	e.imu.Lock()
	e.issued[lease] = max(e.issued[lease], token)
	e.imu.Unlock()
}

// goneFromCache reports whether n's informer has synced past resourceVersion rv, a version of
// n's Lease this side-car knows, and its cache has no such Lease: it was deleted since. The
// informer may never have had the version (learned from a write's response while its watch was
// down), so that the deletion comes with no event. A cache that lags behind its resourceVersion
// for a moment can make it answer true too early; that costs a create that meets AlreadyExists,
// never a grant. Called with n.mu held.
func (n *nameState) goneFromCache(rv uint64) bool {
	inf := n.cache()
	synced, err := strconv.ParseUint(inf.LastSyncResourceVersion(), 10, 64)
	if err != nil || synced <= rv {
		return false
	}
	_, exists, err := inf.GetStore().GetByKey(n.e.cfg.Namespace + "/" + n.lease)
	return err == nil && !exists
}

// onLeaseEvent applies an event of the namespace's informer (WatchNamespace); regressed
// accepts a version older than the known one.
func (e *Engine) onLeaseEvent(obj any, deleted, regressed bool) {
	e.noteWatch(e.informer)
	l := leaseOf(obj)
	if l == nil {
		return
	}
	kind := wire.Kind(l.Labels[contract.LabelKind])
	if kind != wire.KindLock && kind != wire.KindElection {
		return
	}
	for {
		e.mu.Lock()
		n := e.names[l.Name]
		if n == nil {
			if deleted {
				e.mu.Unlock()
				return
			}
			n = newNameState(e, l.Name, kind, "")
			n.synced = true
			e.names[l.Name] = n
		}
		e.mu.Unlock()
		n.mu.Lock()
		if n.removed {
			n.mu.Unlock()
			continue
		}
		e.applyEvent(n, l, deleted, regressed)
		return
	}
}

// applyEvent applies an informer's event of n's Lease l, with n.mu held, and unlocks it.
func (e *Engine) applyEvent(n *nameState, l *coordinationv1.Lease, deleted, regressed bool) {
	n.observe(l, deleted, regressed, e.clock.Now())
	removable := deleted && !n.interested() && !n.running
	n.mu.Unlock()
	if removable {
		e.maybeRemove(n)
	}
}

// lockName returns the state of the lock or election name with its mu held, creating it if
// needed. It fails when the name's Lease belongs to another name (a hash collision).
func (e *Engine) lockName(kind wire.Kind, name string) (*nameState, error) {
	lease := contract.LeaseName(kind, name)
	for {
		e.mu.Lock()
		n := e.names[lease]
		if n == nil {
			n = newNameState(e, lease, kind, name)
			if e.informer != nil {
				n.synced = true // the namespace's informer has every Lease
			} else if err := e.makeRoomLocked(); err != nil {
				e.mu.Unlock()
				return nil, err
			} else if err := e.watchName(n); err != nil {
				e.mu.Unlock()
				return nil, err
			}
			e.names[lease] = n
		}
		e.mu.Unlock()
		n.mu.Lock()
		if n.removed {
			n.mu.Unlock()
			continue
		}
		n.usedAt = e.clock.Now()
		if n.name == "" {
			n.name = name
		}
		if err := n.mismatch(kind, name); err != nil {
			n.mu.Unlock()
			e.maybeRemove(n)
			return nil, err
		}
		return n, nil
	}
}

// peekName returns the state of an existing name with its mu held, or nil.
func (e *Engine) peekName(kind wire.Kind, name string) (*nameState, error) {
	e.mu.Lock()
	n := e.names[contract.LeaseName(kind, name)]
	e.mu.Unlock()
	if n == nil {
		return nil, nil
	}
	n.mu.Lock()
	if n.removed {
		n.mu.Unlock()
		return nil, nil
	}
	if err := n.mismatch(kind, name); err != nil {
		n.mu.Unlock()
		return nil, err
	}
	return n, nil
}

// maybeRemove forgets n if it has no Lease and no local interest, so that names looked at once,
// and names whose Lease was deleted (see idle.go), do not accumulate.
func (e *Engine) maybeRemove(n *nameState) { e.forget(n, true) }

// forget forgets n if nothing local uses it and, when gone is set, it has no Lease: its state,
// its informer (WatchNames) and, for a name whose Lease is known to be gone, its fencing-token
// floor, which joins the floor of creates.
func (e *Engine) forget(n *nameState, gone bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	n.mu.Lock()
	defer n.mu.Unlock()
	e.forgetLocked(n, gone)
}

// forgetLocked is forget with e.mu and n.mu held; it reports whether n was forgotten.
func (e *Engine) forgetLocked(n *nameState, gone bool) bool {
	if n.removed || gone && n.obj != nil || n.interested() || n.running {
		return false
	}
	n.removed = true
	n.unwatch()
	if e.names[n.lease] == n {
		delete(e.names, n.lease)
		if n.synced && n.obj == nil {
			// The Lease is known to be gone (before the first list, obj == nil says nothing).
			e.forgetIssued(n.lease)
		}
	}
	return true
}

func (e *Engine) allNames() []*nameState {
	e.mu.Lock()
	defer e.mu.Unlock()
	ns := make([]*nameState, 0, len(e.names))
	for _, n := range e.names {
		ns = append(ns, n)
	}
	return ns
}

// workersRunning reports whether any name has a running worker; Shutdown waits for none.
func (e *Engine) workersRunning() bool {
	for _, n := range e.allNames() {
		n.mu.Lock()
		running := n.running
		n.mu.Unlock()
		if running {
			return true
		}
	}
	return false
}

// ShuttingDown reports whether Shutdown or Halt has begun: new work is refused from then on.
func (e *Engine) ShuttingDown() bool { return e.closing.Load() }

// Done returns a channel that is closed when the Engine has stopped (Halt, or the end of
// Shutdown). After that every method fails with wire.CodeShuttingDown.
func (e *Engine) Done() <-chan struct{} { return e.ctx.Done() }

type endedSession struct {
	s     *session
	names []*nameState
}
