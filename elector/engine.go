package elector

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"

	"github.com/metaparticle-io/sync/wire"
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
}

// Engine is the side-car's lock and election logic, independent of HTTP. It owns sessions, keeps
// the Leases of its namespace in one informer, and runs one worker goroutine per name that has
// local holds, waiters, candidates or watchers.
//
// Create it with NewEngine, call Start, then use it from any number of goroutines; end it with
// Shutdown (orderly: releases every hold) or Halt (abrupt: releases nothing, as if the process
// died). Methods return *wire.Error values for every failure a client can cause or see.
type Engine struct {
	cfg    Config
	leases LeaseClient
	clock  clock.WithTickerAndDelayedExecution
	log    logr.Logger
	m      *metrics

	informer cache.SharedIndexInformer
	synced   atomic.Bool
	closing  atomic.Bool // set by Shutdown: no new work is accepted
	started  atomic.Bool

	ctx      context.Context // parent of every API call; cancelled by Halt
	cancel   context.CancelFunc
	halted   chan struct{} // closed by Halt
	haltOnce sync.Once
	running  atomic.Int64  // name workers running
	idle     chan struct{} // capacity 1: signalled when running drops to zero

	// Lock order: mu, then a nameState's mu, then smu or a session's mu. smu and a session's mu
	// are never held while taking another lock.
	mu          sync.Mutex            // protects names and informerErr
	names       map[string]*nameState // by Lease name
	informerErr error                 // the informer's last list/watch error, for Ready

	smu      sync.Mutex // protects sessions
	sessions map[string]*session
}

// NewEngineForConfig returns an Engine for cfg that manages the Leases of cfg.Namespace through
// the API server that rc reaches (see NewLeaseClient and NewEngine).
func NewEngineForConfig(cfg Config, rc *rest.Config, opts Options) (*Engine, error) {
	if rc == nil {
		return nil, errors.New("NewEngineForConfig: rest config is nil")
	}
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid side-car configuration: %w", err)
	}
	leases, err := NewLeaseClient(rc, cfg.Namespace)
	if err != nil {
		return nil, err
	}
	return NewEngine(cfg, leases, opts)
}

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
	ctx, cancel := context.WithCancel(context.Background())
	e := &Engine{
		cfg:      cfg,
		leases:   leases,
		clock:    opts.Clock,
		log:      opts.Log.WithValues("pod", cfg.PodName, "namespace", cfg.Namespace),
		ctx:      ctx,
		cancel:   cancel,
		halted:   make(chan struct{}),
		idle:     make(chan struct{}, 1),
		names:    map[string]*nameState{},
		sessions: map[string]*session{},
	}
	if cfg.PodUID != "" {
		e.log = e.log.WithValues("podUID", cfg.PodUID)
	}
	e.m = newMetrics(opts.Registerer, e)

	// The informer client-go's informer factory builds for Leases, but over leases: the Leases
	// the side-car manages, no resync. A client that says it does not support streaming lists
	// (the test adapter over client-go's fake clientset) is listed and watched the classic way.
	selector := LabelManagedBy + "=" + ManagedByValue
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.LabelSelector = selector
			return leases.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.LabelSelector = selector
			return leases.Watch(ctx, o)
		},
	}
	e.informer = cache.NewSharedIndexInformerWithOptions(cache.ToListWatcherWithWatchListSemantics(lw, leases),
		&coordinationv1.Lease{}, cache.SharedIndexInformerOptions{
			Indexers: cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc},
		})
	if _, err := e.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { e.onLease(obj, false) },
		UpdateFunc: func(_, obj any) { e.onLease(obj, false) },
		DeleteFunc: func(obj any) { e.onLease(obj, true) },
	}); err != nil {
		cancel()
		return nil, err
	}
	if err := e.informer.SetWatchErrorHandlerWithContext(func(ctx context.Context, r *cache.Reflector, err error) {
		e.mu.Lock()
		e.informerErr = err
		e.mu.Unlock()
		cache.DefaultWatchErrorHandler(ctx, r, err)
	}); err != nil {
		cancel()
		return nil, err
	}
	return e, nil
}

// Config returns the Engine's configuration, with defaults applied.
func (e *Engine) Config() Config { return e.cfg }

// Start runs the Lease informer and returns when its cache has synced, or with an error when
// ctx ends or the Engine stops first. Until then every method that needs the Leases fails with
// wire.CodeUnavailable. Start may be called once.
func (e *Engine) Start(ctx context.Context) error {
	if !e.started.CompareAndSwap(false, true) {
		return errors.New("Engine.Start called twice")
	}
	go e.informer.RunWithContext(e.ctx)
	stop := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
		case <-e.halted:
		}
		close(stop)
	}()
	if !cache.WaitForCacheSync(stop, e.informer.HasSynced) {
		if err := e.readyErr(); err != nil {
			return fmt.Errorf("the Lease informer did not sync: %w", err)
		}
		return errors.New("the Lease informer did not sync before the side-car stopped")
	}
	e.mu.Lock()
	e.informerErr = nil
	e.mu.Unlock()
	e.synced.Store(true)
	e.log.Info("Lease informer synced; serving", "leaseDuration", e.cfg.LeaseDuration,
		"renewDeadline", e.cfg.RenewDeadline, "renewPeriod", e.cfg.RenewPeriod, "retryPeriod", e.cfg.RetryPeriod)
	return nil
}

// Shutdown ends the Engine in order: it refuses new work (wire.CodeShuttingDown), ends every
// session, which releases every hold, closes every watch, waits for the releases to be written
// (or ctx to end), and then stops like Halt. It returns ctx's error if the releases did not all
// finish in time.
func (e *Engine) Shutdown(ctx context.Context) error {
	e.closing.Store(true)
	e.log.Info("shutting down: releasing every hold")

	e.smu.Lock()
	sessions := make([]*session, 0, len(e.sessions))
	for _, s := range e.sessions {
		sessions = append(sessions, s)
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
	notice := e.clock.NewTimer(shutdownNotice)
	for _, x := range ended {
		x.s.mu.Lock()
		streaming := x.s.streaming
		x.s.mu.Unlock()
		if !streaming {
			continue
		}
		select {
		case <-x.s.flushed:
		case <-notice.C():
		case <-ctx.Done():
		}
	}
	notice.Stop()
	for _, x := range ended {
		e.releaseSession(x.s, x.names)
	}
	for _, n := range e.allNames() {
		n.mu.Lock()
		n.closeWatchers()
		n.mu.Unlock()
	}

	var err error
	for e.running.Load() > 0 && err == nil {
		select {
		case <-e.idle:
		case <-ctx.Done():
			err = fmt.Errorf("releasing holds: %w", ctx.Err())
		case <-e.halted:
			err = errors.New("halted while shutting down")
		}
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
	e.haltOnce.Do(func() {
		e.closing.Store(true)
		close(e.halted)
		e.cancel()
	})
}

// Ready reports why the Engine cannot serve, or nil: it needs its informer synced and the API
// server reachable, which it checks with a one-item List of its Leases (the verb it also needs
// for the informer, so a missing RBAC grant shows here with a clear message).
func (e *Engine) Ready(ctx context.Context) error {
	if e.closing.Load() {
		return errorf(wire.CodeShuttingDown, "the side-car is shutting down")
	}
	if !e.synced.Load() {
		if err := e.readyErr(); err != nil {
			return errorf(wire.CodeUnavailable, "the Lease informer has not synced: %v", err)
		}
		return errorf(wire.CodeUnavailable, "the Lease informer has not synced yet")
	}
	_, err := e.leases.List(ctx, metav1.ListOptions{LabelSelector: LabelManagedBy + "=" + ManagedByValue, Limit: 1})
	if err != nil {
		return e.apiErr("list", err)
	}
	return nil
}

// readyErr explains an informer that cannot list or watch.
func (e *Engine) readyErr() error {
	e.mu.Lock()
	err := e.informerErr
	e.mu.Unlock()
	if err == nil {
		return nil
	}
	return e.apiErr("list/watch", err)
}

// apiErr turns an API error into a *wire.Error with advice.
func (e *Engine) apiErr(verb string, err error) error {
	if apierrors.IsForbidden(err) {
		return errorf(wire.CodeForbidden,
			"RBAC forbids %s of leases.coordination.k8s.io in namespace %s for this Pod's service account: bind the Role of deploy/rbac/sidecar-role.yaml (%v)",
			verb, e.cfg.Namespace, err)
	}
	return errorf(wire.CodeUnavailable, "the API server did not answer a %s of leases: %v", verb, err)
}

// accepting reports whether new work is accepted.
func (e *Engine) accepting() error {
	if e.closing.Load() {
		return errorf(wire.CodeShuttingDown, "the side-car is shutting down")
	}
	if !e.synced.Load() {
		return errorf(wire.CodeUnavailable, "the side-car is not ready: its Lease informer has not synced (see /readyz)")
	}
	return nil
}

// onLease feeds an informer event to the name it concerns.
func (e *Engine) onLease(obj any, deleted bool) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	l, ok := obj.(*coordinationv1.Lease)
	if !ok {
		return
	}
	kind := wire.Kind(l.Labels[LabelKind])
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
			e.names[l.Name] = n
		}
		e.mu.Unlock()
		n.mu.Lock()
		if n.removed {
			n.mu.Unlock()
			continue
		}
		n.observe(l, deleted, e.clock.Now())
		removable := deleted && !n.interested() && !n.running
		n.mu.Unlock()
		if removable {
			e.maybeRemove(n)
		}
		return
	}
}

// lockName returns the state of the lock or election name with its mu held, creating it if
// needed. It fails when the name's Lease belongs to another name (a hash collision).
func (e *Engine) lockName(kind wire.Kind, name string) (*nameState, error) {
	lease := LeaseName(kind, name)
	for {
		e.mu.Lock()
		n := e.names[lease]
		if n == nil {
			n = newNameState(e, lease, kind, name)
			e.names[lease] = n
		}
		e.mu.Unlock()
		n.mu.Lock()
		if n.removed {
			n.mu.Unlock()
			continue
		}
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
	n := e.names[LeaseName(kind, name)]
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

// maybeRemove forgets n if it has no Lease and no local interest, so that names looked at once
// do not accumulate.
func (e *Engine) maybeRemove(n *nameState) {
	e.mu.Lock()
	defer e.mu.Unlock()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.removed || n.obj != nil || n.interested() || n.running {
		return
	}
	n.removed = true
	if e.names[n.lease] == n {
		delete(e.names, n.lease)
	}
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

// workerStarted and workerDone count name workers, for Shutdown.
func (e *Engine) workerStarted() { e.running.Add(1) }

func (e *Engine) workerDone() {
	if e.running.Add(-1) == 0 {
		signal(e.idle)
	}
}

type engineSnapshot struct {
	holds, waiting map[wire.Kind]int
	sessions       int
}

// snapshot counts holds, waiters and sessions for the metrics.
func (e *Engine) snapshot() engineSnapshot {
	s := engineSnapshot{holds: map[wire.Kind]int{}, waiting: map[wire.Kind]int{}}
	for _, n := range e.allNames() {
		n.mu.Lock()
		if n.hold != nil && !n.hold.release {
			s.holds[n.kind]++
		}
		for _, c := range n.queue {
			if n.hold == nil || n.hold.c != c {
				s.waiting[n.kind]++
			}
		}
		n.mu.Unlock()
	}
	e.smu.Lock()
	s.sessions = len(e.sessions)
	e.smu.Unlock()
	return s
}

// ---- Sessions ----

// OpenSession opens a session for a client. See wire.OpenSessionRequest.
func (e *Engine) OpenSession(req wire.OpenSessionRequest) (wire.Session, error) {
	ttl := wire.DefaultSessionTTL
	if req.TTLMillis != 0 {
		ttl = time.Duration(req.TTLMillis) * time.Millisecond
		if req.TTLMillis < wire.MinSessionTTL.Milliseconds() || req.TTLMillis > wire.MaxSessionTTL.Milliseconds() {
			return wire.Session{}, errorf(wire.CodeInvalidTimeout, "ttlMillis %d is out of range: use 0 for the default (%d) or a value within [%d, %d]",
				req.TTLMillis, wire.DefaultSessionTTL.Milliseconds(), wire.MinSessionTTL.Milliseconds(), wire.MaxSessionTTL.Milliseconds())
		}
	}
	if err := e.accepting(); err != nil {
		return wire.Session{}, err
	}
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return wire.Session{}, errorf(wire.CodeInternal, "generating a session ID: %v", err)
	}
	id := hex.EncodeToString(b[:])
	s := &session{
		id:        id,
		holder:    e.cfg.PodName + "/" + id,
		client:    req.Client,
		ttl:       ttl,
		notify:    make(chan struct{}, 1),
		done:      make(chan struct{}),
		flushed:   make(chan struct{}),
		interests: map[*nameState]bool{},
	}
	e.smu.Lock()
	if e.closing.Load() {
		e.smu.Unlock()
		return wire.Session{}, errorf(wire.CodeShuttingDown, "the side-car is shutting down")
	}
	e.sessions[id] = s
	e.smu.Unlock()
	s.mu.Lock()
	s.expiry = e.clock.AfterFunc(ttl, e.expireFunc(s, 0))
	s.mu.Unlock()
	e.log.Info("session opened", "session", id, "holder", s.holder, "client", req.Client, "ttl", ttl)
	return wire.Session{ID: id, Holder: s.holder, TTLMillis: ttl.Milliseconds()}, nil
}

// expireFunc returns the keep-alive timer function of generation gen of s. It ends the session
// in a goroutine of its own: fake clocks run timer functions while holding their lock, and
// ending a session stops its timer.
func (e *Engine) expireFunc(s *session, gen uint64) func() {
	return func() {
		go func() {
			s.mu.Lock()
			stale := s.gen != gen
			s.mu.Unlock()
			if !stale {
				e.endSession(s, fmt.Sprintf("no keep-alive within its TTL of %s", s.ttl), wire.CodeNoSession)
			}
		}()
	}
}

// session returns the open session id.
func (e *Engine) session(id string) (*session, error) {
	e.smu.Lock()
	s := e.sessions[id]
	e.smu.Unlock()
	if s == nil {
		if e.closing.Load() {
			return nil, errorf(wire.CodeShuttingDown, "the side-car is shutting down")
		}
		return nil, errorf(wire.CodeNoSession, "no session %q: it was never opened, or it ended (closed, its event stream closed, or no keep-alive within its TTL)", id)
	}
	return s, nil
}

// KeepAlive extends session id's life by its TTL.
func (e *Engine) KeepAlive(id string) error {
	s, err := e.session(id)
	if err != nil {
		return err
	}
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return s.endErr()
	}
	s.gen++
	s.expiry.Stop()
	s.expiry = e.clock.AfterFunc(s.ttl, e.expireFunc(s, s.gen))
	s.mu.Unlock()
	return nil
}

// CloseSession ends session id, releasing all its holds.
func (e *Engine) CloseSession(id string) error {
	s, err := e.session(id)
	if err != nil {
		return err
	}
	e.endSession(s, "closed by the client", wire.CodeNoSession)
	return nil
}

// StreamEvents writes session id's events with emit: wire.EventReady first, then lost, elected,
// deposed and ping events, and wire.EventClosed last if the session ends. It returns when the
// session ends, when emit fails, or when ctx ends; in the last two cases it ends the session,
// because a client that stops reading its stream is taken for dead. A session has at most one
// stream at a time (wire.CodeAlreadyHeld otherwise).
func (e *Engine) StreamEvents(ctx context.Context, id string, emit func(wire.Event) error) error {
	s, err := e.session(id)
	if err != nil {
		return err
	}
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return s.endErr()
	}
	if s.streaming {
		s.mu.Unlock()
		return errorf(wire.CodeAlreadyHeld, "session %s already has an event stream; a session has at most one", id)
	}
	s.streaming = true
	s.mu.Unlock()
	return e.stream(ctx, s, emit)
}

// shutdownNotice bounds how long Shutdown waits for event streams to tell their clients that
// their sessions ended, before it releases their holds.
const shutdownNotice = time.Second

type endedSession struct {
	s     *session
	names []*nameState
}

// endSession ends s for reason: its waits fail with code, its candidacies end and its holds are
// released. Idempotent.
func (e *Engine) endSession(s *session, reason string, code wire.ErrorCode) {
	if names, ok := e.closeSession(s, reason, code); ok {
		e.releaseSession(s, names)
	}
}

// closeSession marks s ended and queues EventClosed; it returns the names where s has interests,
// and false when s had ended already. releaseSession must follow.
func (e *Engine) closeSession(s *session, reason string, code wire.ErrorCode) ([]*nameState, bool) {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return nil, false
	}
	s.ended = true
	s.endReason = reason
	s.endCode = code
	if s.expiry != nil {
		s.expiry.Stop()
	}
	names := make([]*nameState, 0, len(s.interests))
	for n := range s.interests {
		names = append(names, n)
	}
	s.interests = nil
	s.events = append(s.events, wire.Event{Type: wire.EventClosed, Reason: reason})
	close(s.done)
	signal(s.notify)
	s.mu.Unlock()

	e.smu.Lock()
	delete(e.sessions, s.id)
	e.smu.Unlock()
	e.log.Info("session ended", "session", s.id, "reason", reason)
	return names, true
}

// releaseSession fails the waits of the ended session s and releases its holds in names.
func (e *Engine) releaseSession(s *session, names []*nameState) {
	for _, n := range names {
		n.sessionEnded(s)
	}
}

// ---- Locks ----

// Acquire takes lock name for session id. See wire.AcquireRequest: with Try it makes one
// attempt; otherwise it waits, in FIFO order among this side-car's waiters, until the lock is
// held, TimeoutMillis passes (wire.CodeNotAcquired) or ctx ends (the client went away; a grant
// that races with it is released).
func (e *Engine) Acquire(ctx context.Context, id, name string, req wire.AcquireRequest) (wire.Grant, error) {
	if err := checkAcquire(name, req); err != nil {
		return wire.Grant{}, err
	}
	s, err := e.session(id)
	if err != nil {
		return wire.Grant{}, err
	}
	if err := e.accepting(); err != nil {
		return wire.Grant{}, err
	}
	n, err := e.lockName(wire.KindLock, name)
	if err != nil {
		return wire.Grant{}, err
	}
	c, err := n.enqueueLock(s, req.Try, e.clock.Now())
	n.mu.Unlock()
	if err != nil {
		return wire.Grant{}, err
	}

	var timeout <-chan time.Time
	if req.TimeoutMillis > 0 {
		t := e.clock.NewTimer(time.Duration(req.TimeoutMillis) * time.Millisecond)
		defer t.Stop()
		timeout = t.C()
	}
	select {
	case r := <-c.reply:
		return r.grant, r.err
	case <-timeout:
		return n.withdraw(c, "timeout", false)
	case <-ctx.Done():
		return n.withdraw(c, "cancelled", true)
	case <-e.halted:
		return wire.Grant{}, errorf(wire.CodeShuttingDown, "the side-car stopped")
	}
}

// checkAcquire validates an acquire request.
func checkAcquire(name string, req wire.AcquireRequest) error {
	if err := wire.ValidateName(name); err != nil {
		return errorf(wire.CodeInvalidName, "invalid lock name: %v", err)
	}
	return checkAcquireRequest(req)
}

// checkAcquireRequest validates the body of an acquire request.
func checkAcquireRequest(req wire.AcquireRequest) error {
	switch {
	case req.TimeoutMillis < 0:
		return errorf(wire.CodeInvalidTimeout, "timeoutMillis %d is negative: use 0 to wait without a bound", req.TimeoutMillis)
	case req.TimeoutMillis > wire.MaxTimeout.Milliseconds():
		return errorf(wire.CodeInvalidTimeout, "timeoutMillis %d exceeds the maximum %d (%s)", req.TimeoutMillis, wire.MaxTimeout.Milliseconds(), wire.MaxTimeout)
	case req.Try && req.TimeoutMillis != 0:
		return errorf(wire.CodeInvalidTimeout, "timeoutMillis must be 0 when try is true: a try does not wait")
	}
	return nil
}

// Release releases lock name held by session id, clearing the Lease's holder so that the next
// waiter anywhere takes it at once. It returns when the Lease has been written (or the write
// has been given up; the Lease then expires by itself).
func (e *Engine) Release(ctx context.Context, id, name string) error {
	return e.holdOp(ctx, wire.KindLock, id, name, func(n *nameState, s *session, now time.Time) (<-chan struct{}, error) {
		return n.releaseLock(s, now)
	})
}

func waitDone(ctx context.Context, done <-chan struct{}, halted <-chan struct{}) error {
	select {
	case <-done:
	case <-ctx.Done():
	case <-halted:
	}
	return nil
}

// ---- Elections ----

// Join makes session id a candidate in election name and returns the election's state. It
// returns at once; leadership is reported on the session's event stream. Joining twice is
// harmless.
func (e *Engine) Join(id, name string) (wire.ElectionState, error) {
	if err := wire.ValidateName(name); err != nil {
		return wire.ElectionState{}, errorf(wire.CodeInvalidName, "invalid election name: %v", err)
	}
	s, err := e.session(id)
	if err != nil {
		return wire.ElectionState{}, err
	}
	if err := e.accepting(); err != nil {
		return wire.ElectionState{}, err
	}
	n, err := e.lockName(wire.KindElection, name)
	if err != nil {
		return wire.ElectionState{}, err
	}
	defer n.mu.Unlock()
	now := e.clock.Now()
	if err := n.join(s, now); err != nil {
		return wire.ElectionState{}, err
	}
	return n.state(now), nil
}

// Leave ends session id's candidacy in election name, releasing leadership if it leads.
func (e *Engine) Leave(ctx context.Context, id, name string) error {
	return e.holdOp(ctx, wire.KindElection, id, name, func(n *nameState, s *session, now time.Time) (<-chan struct{}, error) {
		return n.leave(s, now)
	})
}

// Resign gives up session id's leadership of election name; it stays a candidate, but does not
// contend again for RetryPeriod, so that another candidate takes over.
func (e *Engine) Resign(ctx context.Context, id, name string) error {
	return e.holdOp(ctx, wire.KindElection, id, name, func(n *nameState, s *session, now time.Time) (<-chan struct{}, error) {
		return n.resign(s, now)
	})
}

// holdOp runs op, which gives up something session id has in lock or election name, and waits
// until its write is done (or given up), ctx ends or the Engine halts.
func (e *Engine) holdOp(ctx context.Context, kind wire.Kind, id, name string, op func(*nameState, *session, time.Time) (<-chan struct{}, error)) error {
	if err := wire.ValidateName(name); err != nil {
		return errorf(wire.CodeInvalidName, "invalid %s name: %v", kind, err)
	}
	s, err := e.session(id)
	if err != nil {
		return err
	}
	n, err := e.peekName(kind, name)
	if err != nil {
		return err
	}
	if n == nil {
		if kind == wire.KindLock {
			return errorf(wire.CodeNotHeld, "session %s does not hold lock %q", id, name)
		}
		return errorf(wire.CodeNotHeld, "session %s is not a candidate in election %q", id, name)
	}
	done, err := op(n, s, e.clock.Now())
	n.mu.Unlock()
	if err != nil {
		return err
	}
	return waitDone(ctx, done, e.halted)
}

// ---- Reading ----

// State returns the state of lock or election name as this side-car observes it.
func (e *Engine) State(kind wire.Kind, name string) (wire.LockState, error) {
	if err := wire.ValidateName(name); err != nil {
		return wire.LockState{}, errorf(wire.CodeInvalidName, "invalid %s name: %v", kind, err)
	}
	if !e.synced.Load() {
		return wire.LockState{}, e.accepting()
	}
	n, err := e.peekName(kind, name)
	if err != nil {
		return wire.LockState{}, err
	}
	if n == nil {
		return wire.LockState{Name: name, Lease: LeaseName(kind, name)}, nil
	}
	defer n.mu.Unlock()
	st := n.state(e.clock.Now())
	st.Name = name
	return st, nil
}

// Watch writes the state of lock or election name with emit: the current state first, then
// one state per change of holder, held flag or token, in the order this side-car observed them.
// Changes that happen while its watch of the API server is interrupted may be coalesced. It
// returns when ctx ends, emit fails, or the Engine shuts down.
func (e *Engine) Watch(ctx context.Context, kind wire.Kind, name string, emit func(wire.LockState) error) error {
	if err := wire.ValidateName(name); err != nil {
		return errorf(wire.CodeInvalidName, "invalid %s name: %v", kind, err)
	}
	if err := e.accepting(); err != nil {
		return err
	}
	n, err := e.lockName(kind, name)
	if err != nil {
		return err
	}
	if e.closing.Load() {
		n.mu.Unlock()
		return errorf(wire.CodeShuttingDown, "the side-car is shutting down")
	}
	w := &watcher{notify: make(chan struct{}, 1)}
	n.watchers[w] = struct{}{}
	n.publish(e.clock.Now())
	n.wake()
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		delete(n.watchers, w)
		n.poke()
		idle := !n.interested() && !n.running
		n.mu.Unlock()
		if idle {
			e.maybeRemove(n)
		}
	}()
	for {
		n.mu.Lock()
		states, closed := w.queue, w.closed
		w.queue = nil
		n.mu.Unlock()
		for _, st := range states {
			st.Name = name
			if err := emit(st); err != nil {
				return err
			}
		}
		if closed != "" {
			return errorf(wire.CodeShuttingDown, "%s", closed)
		}
		select {
		case <-w.notify:
		case <-ctx.Done():
			return nil
		case <-e.halted:
			return errorf(wire.CodeShuttingDown, "the side-car stopped")
		}
	}
}
