package elector

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/wire"
)

// Regression tests for findings of the engine's review.

// A release asked for while a renewal is in flight is written as soon as the renewal returns,
// not a renew period later.
func TestReleaseDuringRenewIsNotPostponed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBed(t, "pod-a", nil, nil)
		s := b.open()
		g := b.mustAcquire(s.Key(), "x")
		entered, unblock := make(chan struct{}), make(chan struct{})
		finishRenewal := sync.OnceFunc(func() { close(unblock) })
		defer finishRenewal() // if the test fails first: a worker blocked for ever would deadlock the bubble
		armed := true
		b.api.Hook(func(verb string, l *coordinationv1.Lease) error {
			if armed && verb == "update" && l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != "" {
				armed = false
				close(entered)
				<-unblock
			}
			return nil
		})
		b.step(contract.DefaultRenewPeriod) // the renewal starts and blocks in the hook
		select {
		case <-entered:
		default:
			t.Fatalf("got no renewal after a renew period; want one in flight")
		}
		done := make(chan error, 1)
		go func() { done <- b.e.Release(context.Background(), s.Key(), "x", "") }()
		// Release registers while the renewal is in flight, and parks waiting for its write.
		settled(t, "release requested during the renewal", func() bool { return b.releasing(wire.KindLock, "x") }, true)
		quiet(t, done, "Release while the renewal is in flight")
		finishRenewal()
		b.settle() // the clock does not move
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("release: got %v; want nil", err)
			}
		default:
			t.Fatalf("got no release without moving the clock; want it written right after the renewal")
		}
		if h := holderOfStored(b.api, g.Lease); h != "" {
			t.Errorf("got holder %q after release; want none", h)
		}
	})
}

// After a session of this side-car loses a lock at its renew deadline, another session of the
// same side-car is not granted it before the lease duration has passed, exactly like a session in
// another Pod: the loser's notice stays ahead of the new grant.
func TestLocalWaiterWaitsOutLeaseAfterLoss(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBed(t, "pod-a", nil, nil)
		a := b.open()
		evs := b.events(a.Key())
		g := b.mustAcquire(a.Key(), "x")
		other := b.open()
		ch := b.acquire(other.Key(), "x", wire.AcquireRequest{})
		settled(t, "waiters of x", func() int { return b.waiting(wire.KindLock, "x") }, 1)
		restore := b.api.FailUpdates(g.Lease, apierrors.NewInternalError(errors.New("etcd slow")))
		b.step(contract.DefaultRenewPeriod)
		for i := 0; i < 4; i++ {
			b.step(contract.DefaultRetryPeriod)
		}
		restore()
		b.step(contract.DefaultRenewDeadline - contract.DefaultRenewPeriod - 4*contract.DefaultRetryPeriod) // A's renew deadline
		if ev := next(t, evs); ev.Type != wire.EventLost {
			t.Fatalf("got event %s; want %s", ev.Type, wire.EventLost)
		}
		b.settle()
		select {
		case o := <-ch:
			t.Fatalf("got a grant (token %s, err %v) at the loser's renew deadline; want none before the lease duration", o.g.Token, o.err)
		default:
		}
		b.step(contract.DefaultLeaseDuration)
		o := wait(t, ch)
		if o.err != nil {
			t.Fatalf("got %v after the lease duration; want a grant", o.err)
		}
		if before, after := mustToken(t, g.Token), mustToken(t, o.g.Token); after <= before {
			t.Errorf("got token %s after %s; want a greater one", o.g.Token, g.Token)
		}
	})
}

func mustToken(t *testing.T, s string) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		t.Fatalf("got token %q; want a uint64 (%v)", s, err)
	}
	return v
}

func TestHugeSessionTTLRefused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBed(t, "pod-a", nil, nil)
		for _, ms := range []int64{288230376151721504, 1 << 62, -1, 999} {
			_, err := b.e.OpenSession(wire.OpenSessionRequest{TTLMillis: ms})
			var werr *wire.Error
			if !errors.As(err, &werr) || werr.Code != wire.CodeInvalidTimeout {
				t.Errorf("ttlMillis %d: got %v; want %s", ms, err, wire.CodeInvalidTimeout)
			}
		}
	})
}

// On shutdown a streaming client is told its session ended before its holds are released, so the
// application hears it before another Pod can take the lock.
func TestShutdownTellsClientsBeforeReleasing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBed(t, "pod-a", nil, nil)
		s := b.open()
		evs := b.events(s.Key())
		g := b.mustAcquire(s.Key(), "x")
		toldFirst := make(chan bool, 1)
		b.api.Hook(func(verb string, l *coordinationv1.Lease) error {
			if verb == "update" && l.Name == g.Lease && holderOf(l) == "" {
				told := false
				for len(evs) > 0 {
					told = told || (<-evs).Type == wire.EventClosed
				}
				select {
				case toldFirst <- told:
				default:
				}
			}
			return nil
		})
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := b.e.Shutdown(ctx); err != nil {
			t.Fatalf("Shutdown: got %v; want nil", err)
		}
		select {
		case told := <-toldFirst:
			if !told {
				t.Errorf("got the release written before the client's closed event; want the event first")
			}
		default:
			t.Fatalf("got no release write on shutdown; want one")
		}
	})
}

// TestShutdownReleasesEachSessionWhenItsStreamIsDone: one event stream that cannot be flushed
// delays only its own session's release. The old Shutdown released nothing until every stream
// had written the news or the notice period had passed.
func TestShutdownReleasesEachSessionWhenItsStreamIsDone(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBed(t, "pod-a", nil, nil)
		stuck, fine := b.open(), b.open()
		unblock := make(chan struct{})
		defer close(unblock)
		ready := make(chan struct{})
		go func() {
			_ = b.e.StreamEvents(context.Background(), stuck.Key(), func(ev wire.Event) error {
				if ev.Type == wire.EventReady {
					close(ready)
					return nil
				}
				<-unblock // a client that stopped reading: this write never completes
				return nil
			})
		}()
		<-ready
		_ = b.events(fine.Key())
		gs, gf := b.mustAcquire(stuck.Key(), "stuck"), b.mustAcquire(fine.Key(), "fine")
		done := make(chan error, 1)
		go func() { done <- b.e.Shutdown(context.Background()) }()
		b.settle() // the clock does not move: the notice period has not passed
		if h := holderOfStored(b.api, gf.Lease); h != "" {
			t.Fatalf("holder of the lock whose stream was flushed, during the shutdown: got %q; want none (released at once)", h)
		}
		if h := holderOfStored(b.api, gs.Lease); h != stuck.Holder {
			t.Fatalf("holder of the lock whose stream is stuck, within the notice period: got %q; want %q", h, stuck.Holder)
		}
		b.step(time.Second) // the notice period
		if err := wait(t, done); err != nil {
			t.Fatalf("Shutdown: got %v; want nil", err)
		}
		if h := holderOfStored(b.api, gs.Lease); h != "" {
			t.Errorf("holder of the lock whose stream is stuck, after the notice period: got %q; want none", h)
		}
	})
}

// TestResourceVersionsGoingBackwards: the informer delivers a Lease version whose
// resourceVersion is below the cached one (etcd restored from a backup, and the informer
// relisted). The old engine dropped every such version, so the name froze on the future it
// remembered. Now the hold is lost at once, the name follows the restored version, and no token
// at or below one already granted here is granted again: the acquire fails with a clear error.
func TestResourceVersionsGoingBackwards(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBed(t, "pod-a", nil, nil)
		s := b.open()
		events := b.events(s.Key())
		g := b.mustAcquire(s.Key(), "x")
		granted, err := strconv.ParseUint(g.Token, 10, 64)
		if err != nil {
			t.Fatalf("token %q: %v", g.Token, err)
		}
		cur := b.api.Get(g.Lease)
		restored := cur.DeepCopy()
		restored.ResourceVersion = "5" // older than every version written since
		restored.Spec.HolderIdentity = nil
		b.relisted(cur, restored)

		ev := next(t, events)
		if ev.Type != wire.EventLost || ev.Grant == nil || ev.Grant.Token != g.Token {
			t.Fatalf("event after the versions went back: got %+v; want lost for token %s", ev, g.Token)
		}
		if got := metricValue(t, b, "metaparticle_sync_resource_version_regressions_total"); got != 1 {
			t.Errorf("resource_version_regressions_total: got %v; want 1", got)
		}
		if got := metricValue(t, b, "metaparticle_sync_losses_total", "kind", "lock", "reason", lossRegressed); got != 1 {
			t.Errorf("losses_total{reason=%q}: got %v; want 1", lossRegressed, got)
		}
		// The restored version is free, but taking it would grant token 6, not above the
		// token granted before.
		other := b.open()
		_, err = b.e.Acquire(context.Background(), other.Key(), "x", wire.AcquireRequest{Try: true})
		if codeOf(err) != wire.CodeUnavailable || !strings.Contains(err.Error(), "went backwards") || !strings.Contains(err.Error(), g.Token) {
			t.Fatalf("acquire after the versions went back below token %d: got %v; want %s saying the versions went backwards", granted, err, wire.CodeUnavailable)
		}
		o := <-b.acquire(other.Key(), "x", wire.AcquireRequest{})
		if codeOf(o.err) != wire.CodeUnavailable {
			t.Errorf("blocking acquire after the versions went back: got %v; want %s at once, not a wait", o.err, wire.CodeUnavailable)
		}
	})
}
