package elector

import (
	"context"
	"slices"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"

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
		return
	}
	delete(l.Annotations, contract.AnnotationPodUID)
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

// freeOwnDeadHolds releases, once the informer has synced and before the Engine serves, every
// Lease that ownDeadHold names and whose time has come, and schedules the others' releases. A
// release that fails is logged and left: that hold expires after its lease duration, as before.
func (e *Engine) freeOwnDeadHolds(ctx context.Context) {
	now := e.clock.Now()
	for _, obj := range e.informer.GetStore().List() {
		l, ok := obj.(*coordinationv1.Lease)
		if !ok || !e.ownDeadHold(l) {
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
	key := l.Namespace + "/" + l.Name
	e.clock.AfterFunc(due.Sub(now), func() { go e.freeDeadHoldLater(key) })
	return true
}

// freeDeadHoldLater releases the dead hold of the Lease key, as the cache now has it, if it is
// still one.
func (e *Engine) freeDeadHoldLater(key string) {
	obj, ok, err := e.informer.GetStore().GetByKey(key)
	if err != nil || !ok {
		return
	}
	if l, ok := obj.(*coordinationv1.Lease); ok && e.ownDeadHold(l) {
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
		list, err := e.leases.List(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", l.Name).String()})
		if err != nil {
			log.Error(err, "could not read a Lease of this Pod's previous side-car again; it expires after its lease duration")
			return
		}
		name := l.Name
		i := slices.IndexFunc(list.Items, func(x coordinationv1.Lease) bool { return x.Name == name })
		if i < 0 {
			return // deleted meanwhile
		}
		if l = &list.Items[i]; !e.ownDeadHold(l) {
			return
		}
		if e.freeDeadHoldLaterIfNotDue(l, e.clock.Now()) {
			return // the dead side-car's last renewal landed after all: wait for its promise too
		}
	}
	log.Info("gave up releasing a hold of this Pod's previous side-car after three conflicts; it expires after its lease duration")
}
