package elector

import (
	"context"
	"fmt"
	"math"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilwait "k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/pager"

	"github.com/metaparticle-io/sync/internal/contract"
)

// A restarted side-car frees its own Pod's dead holds at once.
//
// When a side-car crashes (or is OOM-killed, or fails its liveness probe) the kubelet restarts
// it within a second or two, but no session survives a side-car: the holds of its dead sessions
// would block every other Pod for the whole lease duration. So every grant to a session of
// version 1 of the API names the Pod's UID on the Lease (contract.AnnotationPodUID), and a
// side-car, when it starts and before it serves, releases every Lease still held by its own
// Pod, that is by the same Pod name and the same UID.
//
// Why it is safe: only grants to sessions with an event stream attached are marked, and such a
// client learns of its side-car's death from that stream, which the kernel closes when the
// process dies, so it was told its holds were lost before the new process could even start; a
// compliant client ends the session when the stream breaks (docs/api.md, "Writing a client").
// A session whose stream ends is ended by the side-car, so a marked hold never outlives its
// stream. Not freed early:
//   - holds of a Pod of the same name with another UID (a StatefulSet Pod recreated elsewhere,
//     whose predecessor may still run on a partitioned node): they expire after the lease
//     duration;
//   - holds of sessions without an event stream: legacy sessions (SessionOptions.Polled),
//     whose clients learn of a loss only in the answer to their next request, and version-1
//     clients that rely on keep-alives and validity alone;
//   - holds when Config.PodUID is empty (a side-car started by hand without it).
//
// When: not before the dead side-car's last promise has run out. Each renewal told the client
// that its hold was good until the renew deadline of that write (validForMillis), and a client
// that was paused when its stream broke (a garbage collection, CPU throttling) may still act on
// that promise when it resumes. So a dead hold is released at its Lease's renewTime (the start
// of its last successful write) plus RenewDeadline plus a retry period of margin: at once if that
// has passed, otherwise then. That is still a lease duration minus a renew deadline (5 s by
// default) before the hold would have expired.
//
// The mark is the Pod UID and the session of the grant (AnnotationPodUID, "<uid>/<session>"),
// so that any change of holder, by whatever writer, invalidates it. The release is a
// conditional Update, as any release: it cannot undo a write it did not see.

// stampPod marks Lease l, about to be granted to s, as releasable by this Pod's next side-car,
// or unmarks it when s's client cannot learn of a side-car's death at once.
func (e *Engine) stampPod(l *coordinationv1.Lease, s *session) {
	if e.cfg.PodUID != "" && !s.opts.Polled && s.hasStream() {
		if l.Annotations == nil {
			l.Annotations = map[string]string{}
		}
		l.Annotations[contract.AnnotationPodUID] = e.cfg.PodUID + "/" + s.id
		if l.Labels == nil {
			l.Labels = map[string]string{}
		}
		l.Labels[contract.LabelPodUID] = e.cfg.PodUID
		return
	}
	delete(l.Annotations, contract.AnnotationPodUID)
	delete(l.Labels, contract.LabelPodUID)
}

// ownDeadHold reports whether l is held by a session of this Pod's previous side-car: at start
// no session of this one exists yet.
func (e *Engine) ownDeadHold(l *coordinationv1.Lease) bool {
	pod, session, ok := strings.Cut(holderOf(l), "/")
	return ok && e.cfg.PodUID != "" && pod == e.cfg.PodName &&
		l.Annotations[contract.AnnotationPodUID] == e.cfg.PodUID+"/"+session
}

// deadHoldDue is when the dead hold l may be released (see above).
func (e *Engine) deadHoldDue(l *coordinationv1.Lease) time.Time {
	if l.Spec.RenewTime == nil {
		return time.Time{}
	}
	return l.Spec.RenewTime.Add(e.cfg.RenewDeadline + e.cfg.RetryPeriod)
}

// listOwnHolds lists the Leases labelled with this Pod's UID (contract.LabelPodUID), retrying
// until it succeeds or stop is closed; Start calls it before the Engine serves. Without a Pod
// UID it lists one managed Lease, so that the side-car serves once it has reached the API
// server, as with a UID. A failure is reported by readyErr until a list succeeds.
func (e *Engine) listOwnHolds(ctx context.Context, stop <-chan struct{}) ([]coordinationv1.Lease, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-stop: // the Engine halted: abandon a list in flight
		case <-ctx.Done():
		}
		cancel()
	}()
	backoff := utilwait.Backoff{Duration: e.cfg.RetryPeriod, Factor: 2, Jitter: 0.1, Steps: math.MaxInt32, Cap: 30 * time.Second}
	for {
		var items []coordinationv1.Lease
		var err error
		if e.cfg.PodUID == "" {
			_, err = e.leases.List(ctx, metav1.ListOptions{LabelSelector: contract.ManagedBySelector, Limit: 1})
		} else {
			opts := metav1.ListOptions{LabelSelector: contract.ManagedBySelector + "," + contract.LabelPodUID + "=" + e.cfg.PodUID}
			err = pager.New(func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				return e.leases.List(ctx, o)
			}).EachListItemWithAlloc(ctx, opts, func(obj runtime.Object) error {
				if l, ok := obj.(*coordinationv1.Lease); ok {
					items = append(items, *l)
				}
				return nil
			})
		}
		e.hmu.Lock()
		e.startErr = err
		e.hmu.Unlock()
		if err == nil {
			return items, nil
		}
		e.log.Error(err, "listing the Leases of this Pod's previous side-car failed; retrying")
		t := e.clock.NewTimer(backoff.Step())
		select {
		case <-t.C():
		case <-stop:
			t.Stop()
			return nil, fmt.Errorf("the side-car could not list its Leases before it stopped: %w", e.apiErr("list", err))
		}
	}
}

// freeOwnDeadHolds releases, before the Engine serves, every Lease of dead (listOwnHolds) that
// ownDeadHold names and whose time has come, and schedules the others' releases. A release that
// fails is logged and left: that hold expires after its lease duration, as before.
func (e *Engine) freeOwnDeadHolds(ctx context.Context, dead []coordinationv1.Lease) {
	now := e.clock.Now()
	for i := range dead {
		l := &dead[i]
		if !e.ownDeadHold(l) {
			continue
		}
		if !e.freeDeadHoldLaterIfNotDue(l, now) {
			e.freeDeadHold(ctx, l)
		}
	}
}

// freeDeadHoldLaterIfNotDue schedules the release of the dead hold l for when it is due, and
// reports whether it did: false when it is due now.
func (e *Engine) freeDeadHoldLaterIfNotDue(l *coordinationv1.Lease, now time.Time) bool {
	due := e.deadHoldDue(l)
	if !due.After(now) {
		return false
	}
	name := l.Name
	e.clock.AfterFunc(due.Sub(now), func() { go e.freeDeadHoldLater(name) })
	return true
}

// freeDeadHoldLater releases the dead hold of the Lease name, as the API server now has it, if
// it is still one.
func (e *Engine) freeDeadHoldLater(name string) {
	l, err := e.getLease(e.ctx, name)
	if err != nil {
		e.log.Error(err, "could not read a Lease of this Pod's previous side-car again; it expires after its lease duration", "lease", name)
		return
	}
	if l != nil && e.ownDeadHold(l) {
		e.freeDeadHold(e.ctx, l)
	}
}

func (e *Engine) freeDeadHold(ctx context.Context, l *coordinationv1.Lease) {
	log := e.log.WithValues("lease", l.Name, "name", l.Annotations[contract.AnnotationName], "holder", holderOf(l), "token", tokenOf(l))
	for range 3 {
		_, err := e.leases.Update(ctx, releaseLease(l.DeepCopy(), e.clock.Now()), metav1.UpdateOptions{})
		e.noteWrite(err)
		if err == nil {
			e.m.restartFrees.Inc()
			log.Info("released a hold of this Pod's previous side-car, whose sessions ended with it")
			return
		}
		if !apierrors.IsConflict(err) {
			log.Error(err, "could not release a hold of this Pod's previous side-car; it expires after its lease duration")
			return
		}
		// Written meanwhile: by the previous side-car's last renewal, in flight when it died,
		// or by another Pod's takeover. Look again.
		if l, err = e.getLease(ctx, l.Name); err != nil {
			log.Error(err, "could not read a Lease of this Pod's previous side-car again; it expires after its lease duration")
			return
		}
		if l == nil || !e.ownDeadHold(l) {
			return // deleted meanwhile, or no longer a dead hold
		}
		if e.freeDeadHoldLaterIfNotDue(l, e.clock.Now()) {
			return // the dead side-car's last renewal landed after all: wait for its promise too
		}
	}
	log.Info("gave up releasing a hold of this Pod's previous side-car after three conflicts; it expires after its lease duration")
}
