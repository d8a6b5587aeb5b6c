package elector

import (
	"context"
	"hash/fnv"
	"math/rand/v2"
	"time"

	"golang.org/x/time/rate"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Idle Leases are deleted.
//
// A lock's Lease outlives its last use: a release only clears its holder, so a pattern of one
// lock per order or per job would fill the namespace (and, with WatchNamespace, every side-car's
// cache) without end. So every side-car looks, among the Leases it watches, for those that have
// been idle for Config.DeleteIdleAfter and deletes them:
//
//   - idle means not held (released, or its holder stopped renewing a lease duration before, as
//     this side-car counts expiry) and not used here (no hold, waiter, candidate or watch); the
//     time counts from when this side-car first saw the Lease's current version, on its own
//     clock;
//   - the Delete is conditional on that version (a resourceVersion precondition), so it fails
//     with Conflict if anyone wrote the Lease since: a grant and a deletion can never both
//     succeed on one version, and a contender whose takeover met a deleted Lease creates it
//     afresh. The new Lease's creation revision is above every token granted before, so fencing
//     tokens keep growing across the deletion;
//   - each side-car looks at a moment of its own (every idleSweepPeriod, from a start drawn from
//     its Pod's name and UID, so that a replayed simulation replays it too), so one of them
//     deletes a Lease and the others see it gone before they look; two that race cost one
//     refused Delete;
//   - deletions are paced (Options.IdleDeleteRate, a fifth of the side-car's rate budget of new
//     work) so that a backlog, such as a namespace full of old Leases when this feature is first
//     deployed, never crowds out new work. One side-car keeps up with that many new names a
//     second; the side-cars of a namespace together with that many times their number;
//   - a side-car whose RBAC lacks delete logs it once, counts it in idle_deletions_total
//     {result="forbidden"}, and tries again only after DeleteIdleAfter: locks work without it.
//
// When its Lease is gone and nothing local uses a name, the Engine forgets the name (see
// Engine.maybeRemove), the fencing-token floor of the name included: its highest token joins the
// floor that every create is checked against (Engine.createFloor).

// idleSweepPeriod is how often a side-car looks for idle Leases: a tenth of DeleteIdleAfter, at
// most 30 seconds (30 seconds when idle Leases are never deleted).
func (c Config) idleSweepPeriod() time.Duration {
	if c.DeleteIdleAfter < 0 {
		return 30 * time.Second
	}
	return min(c.DeleteIdleAfter/10, 30*time.Second)
}

// idleVersion reports whether n's Lease has been idle for DeleteIdleAfter at now, and if so the
// resourceVersion to delete. Called with n.mu held.
func (n *nameState) idleVersion(now time.Time) (string, bool) {
	if n.obj == nil || n.interested() || n.running || n.obj.ResourceVersion == n.raced {
		return "", false
	}
	since := n.observedAt
	if holderOf(n.obj) != "" {
		since = n.expiry()
	}
	if now.Before(since.Add(n.e.cfg.DeleteIdleAfter)) {
		return "", false
	}
	return n.obj.ResourceVersion, true
}

// deleteIdleLeases runs the sweeps until the Engine stops. Start runs it once synced. With
// WatchNames a sweep also forgets the names unused for watchLinger, even when idle Leases are
// never deleted.
func (e *Engine) deleteIdleLeases() {
	deleting := e.cfg.DeleteIdleAfter >= 0
	if !deleting && e.informer != nil {
		return
	}
	period := e.cfg.idleSweepPeriod()
	limiter := rate.NewLimiter(rate.Limit(e.idleRate), max(1, int(e.idleRate)))
	h := fnv.New64a()
	h.Write([]byte(e.cfg.PodName + "/" + e.cfg.PodUID))
	rng := rand.New(rand.NewPCG(h.Sum64(), 0x1d1e))
	timer := e.clock.NewTimer(time.Duration(rng.Int64N(int64(period))) + 1)
	defer timer.Stop()
	for {
		select {
		case <-e.ctx.Done():
			return
		case <-timer.C():
		}
		next := period
		if deleting && e.sweepIdle(limiter, rng) {
			next = e.cfg.DeleteIdleAfter // forbidden
		}
		e.forgetUnused(e.clock.Now())
		timer.Reset(next)
	}
}

// idleLease is a Lease found idle by a sweep, at version rv.
type idleLease struct {
	n  *nameState
	rv string
}

// sweepIdle deletes the Leases idle now, one at a time, and reports whether RBAC forbade it.
func (e *Engine) sweepIdle(limiter *rate.Limiter, rng *rand.Rand) (forbidden bool) {
	now := e.clock.Now()
	var idle []idleLease
	for _, n := range e.allNames() {
		n.mu.Lock()
		if rv, ok := n.idleVersion(now); ok {
			idle = append(idle, idleLease{n, rv})
		}
		n.mu.Unlock()
	}
	// In an order of its own, so that side-cars that work through a backlog at once rarely pick
	// the same Lease.
	rng.Shuffle(len(idle), func(i, j int) { idle[i], idle[j] = idle[j], idle[i] })
	for _, x := range idle {
		if !e.paceIdleDelete(limiter) {
			return false
		}
		x.n.mu.Lock()
		rv, ok := x.n.idleVersion(e.clock.Now())
		x.n.mu.Unlock()
		if !ok || rv != x.rv {
			continue // used or changed meanwhile
		}
		switch result := e.deleteIdle(x.n, rv); result {
		case "forbidden":
			return true
		case "failed":
			return false // API trouble: the next sweep tries again
		}
	}
	return false
}

// paceIdleDelete waits until limiter allows one more deletion, and reports false if the Engine
// stopped first.
func (e *Engine) paceIdleDelete(limiter *rate.Limiter) bool {
	now := e.clock.Now()
	d := limiter.ReserveN(now, 1).DelayFrom(now)
	if d <= 0 {
		return e.ctx.Err() == nil
	}
	t := e.clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C():
		return true
	case <-e.ctx.Done():
		return false
	}
}

// deleteIdle deletes n's Lease at version rv and returns the result, as counted in
// idle_deletions_total.
func (e *Engine) deleteIdle(n *nameState, rv string) string {
	ctx, cancel := context.WithTimeout(e.ctx, e.cfg.RenewDeadline)
	defer cancel()
	err := e.leases.Delete(ctx, n.lease, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{ResourceVersion: &rv}})
	log := e.log.WithValues("lease", n.lease, "resourceVersion", rv)
	result := "deleted"
	switch {
	case err == nil:
		log.V(1).Info("deleted an idle Lease", "idleFor", e.cfg.DeleteIdleAfter)
	case apierrors.IsConflict(err), apierrors.IsNotFound(err):
		// Written or deleted since this side-car's cache saw it: not again until the cache has
		// another version, so that a cache that lags (a broken watch) costs one request. A
		// version known only from this side-car's own write, while its watch was down, brings
		// no event when it is deleted: once the cache has synced past it without it, the name
		// is forgotten here.
		result = "raced"
		n.mu.Lock()
		n.raced = rv
		gone := apierrors.IsNotFound(err) && n.obj != nil && n.obj.ResourceVersion == rv && n.goneFromCache(n.rv)
		if gone {
			n.obj, n.stale = nil, false
			n.publish(e.clock.Now())
		}
		forget := gone && !n.interested() && !n.running
		n.mu.Unlock()
		if forget {
			e.maybeRemove(n)
		}
	case apierrors.IsForbidden(err):
		result = "forbidden"
		if e.idleForbiddenLogged.CompareAndSwap(false, true) {
			log.Error(err, "RBAC forbids deleting idle Leases, so they accumulate in the namespace (locks work without it): add the delete verb of "+
				"deploy/rbac/sidecar-role.yaml, or set --delete-idle-leases-after to a negative value. Trying again after delete-idle-leases-after",
				"deleteIdleLeasesAfter", e.cfg.DeleteIdleAfter)
		}
	default:
		result = "failed"
		log.Error(err, "deleting an idle Lease failed; the next sweep tries again")
	}
	e.m.idleDeletes.WithLabelValues(result).Inc()
	return result
}

// deleteFreeOnShutdown deletes, at the end of an orderly shutdown (WatchNames), the Leases of the
// names this side-car used that nobody holds now (released, or expired as it counts), as their
// idle sweeps would have later: no other side-car may watch them, so nobody else would. Each
// Delete is conditional on the version seen free, so a grant that lands first wins. It stops
// when ctx ends; the Leases left are deleted by the next side-car to use their names, or stay.
func (e *Engine) deleteFreeOnShutdown(ctx context.Context) {
	if e.informer != nil || e.cfg.DeleteIdleAfter < 0 {
		return
	}
	now := e.clock.Now()
	for _, n := range e.allNames() {
		if ctx.Err() != nil {
			return
		}
		n.mu.Lock()
		free := n.synced && n.obj != nil && !n.interested() && !n.running &&
			(holderOf(n.obj) == "" || now.After(n.expiry()))
		var rv string
		if free {
			rv = n.obj.ResourceVersion
		}
		n.mu.Unlock()
		if free {
			e.deleteIdle(n, rv)
		}
	}
}
