package elector

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/metaparticle-io/sync/wire"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/tools/cache"
)

// Health, as the kubelet and operators see it. None of it makes an API request: an opted-in
// Pod's readiness must not follow the API server's, or an API outage (a network cut, APF
// throttling, an RBAC change, an upgrade) would take every opted-in Pod out of its Services while
// the applications are healthy. API trouble is reported by APIStatus instead, and shows in the
// logs, the metrics and the holds that are lost because of it.

// Ready reports why the Engine cannot serve its local API, or nil: it must have started (listed
// its Pod's previous holds and, with WatchNamespace, synced its Lease informer) and not be
// shutting down. After the start it stays ready through any API server trouble, because the trouble costs holds, not the ability to answer the Pod's
// processes (which are told of every loss).
func (e *Engine) Ready() error {
	if e.closing.Load() {
		return wire.Errorf(wire.CodeShuttingDown, "the side-car is shutting down")
	}
	if !e.synced.Load() {
		if err := e.readyErr(); err != nil {
			return wire.Errorf(wire.CodeUnavailable, "the side-car has not synced (its first list of Leases): %v", err)
		}
		return wire.Errorf(wire.CodeUnavailable, "the side-car has not synced yet: its first list of Leases has not returned")
	}
	return nil
}

// Alive reports whether the Engine's state can still be reached, or an error when its locks
// cannot be taken before ctx ends (a wedged process) or the Engine has stopped.
func (e *Engine) Alive(ctx context.Context) error {
	select {
	case <-e.ctx.Done():
		return wire.Errorf(wire.CodeShuttingDown, "the side-car has stopped")
	default:
	}
	done := make(chan struct{})
	go func() {
		// Only reaching each critical section matters.
		e.mu.Lock()
		_ = len(e.names)
		e.mu.Unlock()
		e.smu.Lock()
		_ = len(e.sessions)
		e.smu.Unlock()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return wire.Errorf(wire.CodeInternal, "the side-car's state could not be reached: %v", ctx.Err())
	}
}

// APIStatus reports the API server trouble the Engine has seen and not yet seen cured, or nil:
// the failed list at the start, each informer's last list or watch failure (cured once that
// informer has listed or watched again, or, for an informer stopped since, aged like a failed
// write) and the last failed write (cured by the next successful one, or when no write has
// failed for writeErrAge retry periods: failed writes are retried every retry period while
// anything needs them, so a longer silence means nothing is failing any more). It makes no
// request.
func (e *Engine) APIStatus() error {
	e.hmu.Lock()
	for inf, t := range e.informerErrs {
		if inf.LastSyncResourceVersion() != t.rv {
			delete(e.informerErrs, inf) // listed or watched since
		} else if inf.IsStopped() && e.clock.Since(t.at) > writeErrAge*e.cfg.RetryPeriod {
			delete(e.informerErrs, inf) // stopped (its name forgotten): aged like a failed write
		}
	}
	if e.writeErr != nil && e.clock.Since(e.writeErrAt) > writeErrAge*e.cfg.RetryPeriod {
		e.writeErr = nil // no write has failed since: nothing is retrying, or it works
	}
	ierr, werr := e.informerErrLocked(), e.writeErr
	e.hmu.Unlock()
	var errs []error
	if ierr != nil {
		errs = append(errs, e.apiErr("list/watch", ierr))
	}
	if werr != nil {
		errs = append(errs, e.apiErr("write", werr))
	}
	return errors.Join(errs...)
}

// informerTrouble is an informer's last list or watch error, and its last synced
// resourceVersion when it was seen: a new one means that it has listed or watched since.
type informerTrouble struct {
	err error
	rv  string
	at  time.Time
}

// informerErrLocked returns the start's list error or the latest informer error, nil if none.
// Called with hmu held.
func (e *Engine) informerErrLocked() error {
	if e.startErr != nil {
		return e.startErr
	}
	var latest informerTrouble
	for _, t := range e.informerErrs {
		if latest.err == nil || t.at.After(latest.at) {
			latest = t
		}
	}
	return latest.err
}

// noteInformerErr records informer inf's list or watch error.
func (e *Engine) noteInformerErr(inf cache.SharedIndexInformer, err error) {
	rv := inf.LastSyncResourceVersion()
	e.hmu.Lock()
	e.informerErrs[inf] = informerTrouble{err: err, rv: rv, at: e.clock.Now()}
	e.hmu.Unlock()
}

// writeErrAge is how many retry periods a failed write stays reported without another failure.
const writeErrAge = 3

// readyErr explains a start that cannot list or watch.
func (e *Engine) readyErr() error {
	e.hmu.Lock()
	err := e.informerErrLocked()
	e.hmu.Unlock()
	if err == nil {
		return nil
	}
	return e.apiErr("list/watch", err)
}

// noteWatch records that informer inf delivered an event: its list and watch work.
func (e *Engine) noteWatch(inf cache.SharedIndexInformer) {
	e.hmu.Lock()
	delete(e.informerErrs, inf)
	e.hmu.Unlock()
}

// noteWrite records the outcome of a Lease write. Losing a race (conflict, already exists, not
// found) is the API server answering, not trouble, and neither is a refusal of the Engine's own
// (a *wire.Error: a foreign Lease, a token below the floor).
//
// A write that client-go's rate limiter turned away, because its deadline was too near to wait
// for a turn, never reached the API server: it keeps the trouble already seen, which says why
// the writes are late (for example the forbidden of a revoked Role, when a release follows
// renewals that RBAC refused), and is reported itself only when no other trouble is.
func (e *Engine) noteWrite(err error) {
	var own *wire.Error
	if err != nil && (apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) || apierrors.IsNotFound(err) || errors.As(err, &own)) {
		return
	}
	e.hmu.Lock()
	defer e.hmu.Unlock()
	if err != nil && e.writeErr != nil && isClientThrottled(err) {
		e.writeErrAt = e.clock.Now()
		return
	}
	e.writeErr = err
	if err != nil {
		e.writeErrAt = e.clock.Now()
	}
}

// isClientThrottled reports whether err is client-go's rate limiter refusing a request before it
// was sent (its error has no type of its own: rest.Request.tryThrottle wraps it in this text).
func isClientThrottled(err error) bool {
	return strings.Contains(err.Error(), "client rate limiter Wait returned an error")
}

// ---- Telling the sessions ----

// reportHealth checks APIStatus every RetryPeriod until the Engine stops, and tells every
// session when it changes (updateDegraded).
func (e *Engine) reportHealth() {
	t := e.clock.NewTicker(e.cfg.RetryPeriod)
	defer t.Stop()
	for {
		select {
		case <-e.ctx.Done():
			return
		case <-t.C():
			e.updateDegraded()
		}
	}
}

// updateDegraded posts wire.EventDegraded to every session when API trouble begins or changes
// its code, and wire.EventRecovered when it ends.
func (e *Engine) updateDegraded() { e.updateDegradedTo(e.APIStatus()) }

// updateDegradedTo is updateDegraded for API trouble now (nil: none).
func (e *Engine) updateDegradedTo(now error) {
	e.dmu.Lock()
	defer e.dmu.Unlock()
	if troubleCode(now) == troubleCode(e.degraded) {
		return
	}
	e.degraded = now
	if now != nil {
		e.log.Error(now, "API server trouble: telling the sessions they are degraded")
	} else {
		e.log.Info("API server trouble over: telling the sessions they recovered")
	}
	e.smu.Lock()
	sessions := slices.Collect(maps.Values(e.sessions))
	e.smu.Unlock()
	ev := degradedEvent(now)
	for _, s := range sessions {
		s.postHealth(ev)
	}
}

// tellDegraded queues EventDegraded for a new session s while there is trouble. The caller
// holds dmu.
func (e *Engine) tellDegraded(s *session) {
	if e.degraded != nil {
		s.postHealth(degradedEvent(e.degraded))
	}
}

// troubleCode is the code sessions are told for API trouble err: forbidden when any part of
// it is, unavailable for any other, "" for none.
func troubleCode(err error) wire.ErrorCode {
	if err == nil {
		return ""
	}
	for _, p := range troubleParts(err) {
		if wire.CodeOf(p) == wire.CodeForbidden {
			return wire.CodeForbidden
		}
	}
	return wire.CodeUnavailable
}

// troubleParts splits what APIStatus joined.
func troubleParts(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// degradedEvent is the event that tells a session of API trouble err (nil: none). Its Reason
// has the messages of err's parts without their codes; Code has the code.
func degradedEvent(err error) wire.Event {
	if err == nil {
		return wire.Event{Type: wire.EventRecovered}
	}
	var msgs []string
	for _, p := range troubleParts(err) {
		var we *wire.Error
		if errors.As(p, &we) {
			msgs = append(msgs, we.Message)
		} else {
			msgs = append(msgs, p.Error())
		}
	}
	return wire.Event{Type: wire.EventDegraded, Code: troubleCode(err), Reason: strings.Join(msgs, "; ")}
}
