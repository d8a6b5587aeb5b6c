package elector

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	k8stesting "k8s.io/client-go/testing"

	"github.com/metaparticle-io/sync/elector/internal/leasefake"
	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/wire"
)

// watchesOf returns the field selectors of the watches b's side-car opened, in order.
func (b *bed) watchesOf() []string { return b.api.WatchesOpened() }

// known reports whether the Engine keeps state for lock name.
func (b *bed) known(name string) bool {
	b.e.mu.Lock()
	defer b.e.mu.Unlock()
	return b.e.names[contract.LeaseName(wire.KindLock, name)] != nil
}

func namesScope(t *testing.T) Config {
	t.Helper()
	return Config{PodName: "pod-a", WatchScope: WatchNames, DeleteIdleAfter: idleAfter}
}

// A side-car watches only the Leases of the names its sessions use: none before a use, one per
// name after, and the changes of other names' Leases never reach it. The namespace-wide
// informer watched every managed Lease from the start.
func TestWatchesFollowInterest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		api := leasefake.New(t)
		api.Put(foreignLease(wire.KindLock, "other", "pod-z/0123", 15*time.Second))
		b := newBedWith(t, namesScope(t), api, nil)
		b.settle()
		if got := b.watchesOf(); len(got) != 0 {
			t.Fatalf("watches of a side-car without sessions: got %q; want none", got)
		}
		s := b.open()
		b.mustAcquire(s.Key(), "x")
		want := "metadata.name=" + contract.LeaseName(wire.KindLock, "x")
		if got := b.watchesOf(); len(got) != 1 || got[0] != want {
			t.Fatalf("watches after acquiring x: got %q; want [%q]", got, want)
		}
		api.Put(foreignLease(wire.KindLock, "other", "pod-z/0123", 15*time.Second)) // a renewal elsewhere
		b.settle()
		if b.known("other") {
			t.Errorf("got state kept for lock %q, which nothing here uses; want none", "other")
		}
	})
}

// The first use of a name waits for its Lease to be listed: a try of a lock held elsewhere is
// refused without a create, which would have met AlreadyExists.
func TestFirstUseWaitsForTheList(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		api := leasefake.New(t)
		api.Put(foreignLease(wire.KindLock, "x", "pod-z/0123", 15*time.Second))
		b := newBedWith(t, namesScope(t), api, nil)
		before := api.WriteCount()
		_, err := b.e.Acquire(context.Background(), b.open().Key(), "x", wire.AcquireRequest{Try: true})
		if codeOf(err) != wire.CodeNotAcquired {
			t.Fatalf("try of a lock held elsewhere: got %v; want %s", err, wire.CodeNotAcquired)
		}
		if got := api.WritesSince(before); len(got) != 0 {
			t.Errorf("writes for the try: got %q; want none", got)
		}
		st := b.read("x")
		if !st.Held || st.Holder != "pod-z/0123" {
			t.Errorf("state of the lock: got %+v; want held by pod-z/0123", st)
		}
	})
}

// A name nothing here has used for watchLinger is forgotten, and its watch stopped, even while
// its Lease is held elsewhere; the fencing-token floor of a name granted here is kept.
func TestUnusedNamesAreForgotten(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBedWith(t, namesScope(t), nil, nil)
		lease := contract.LeaseName(wire.KindLock, "x")
		g := b.grantedOnce("x")
		// Another Pod takes the Lease and renews it every 10 s.
		renew := func() { api := b.api; l := api.Get(lease); l.Spec.HolderIdentity = ptr("pod-z/0123"); api.Put(l) }
		renew()
		linger := b.e.cfg.watchLinger()
		for elapsed := time.Duration(0); elapsed < linger-10*time.Second; elapsed += 10 * time.Second {
			b.walk(10 * time.Second)
			renew()
		}
		if !b.known("x") {
			t.Fatalf("got lock x forgotten before %v unused; want it kept", linger)
		}
		b.walk(30 * time.Second)
		renew()
		b.settle()
		if b.known("x") {
			t.Fatalf("got lock x known %v after its last use; want it forgotten", linger+20*time.Second)
		}
		if got, want := b.e.issuedFloor(lease), tokenNum(t, g.Token); got != want {
			t.Errorf("token floor of the forgotten name: got %d; want %d, the token granted here", got, want)
		}
		if b.api.Get(lease) == nil {
			t.Errorf("got the Lease held elsewhere deleted; want it kept")
		}
	})
}

// Limits.MaxNames bounds the names watched: a new one evicts the least recently used name
// nothing uses, and is refused when every name is in use.
func TestWatchedNamesAreBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := namesScope(t)
		cfg.Limits.MaxNames = 2
		b := newBedWith(t, cfg, nil, nil)
		b.read("a")
		b.step(time.Second)
		b.read("b")
		b.read("c") // evicts a, read first
		if b.known("a") || !b.known("b") || !b.known("c") {
			t.Fatalf("names known after reading a, b, c with room for 2: got a %v, b %v, c %v; want b and c", b.known("a"), b.known("b"), b.known("c"))
		}
		s := b.open()
		b.mustAcquire(s.Key(), "b")
		b.mustAcquire(s.Key(), "c")
		if _, err := b.e.State(wire.KindLock, "d"); codeOf(err) != wire.CodeTooMany {
			t.Errorf("State of a third name with both in use: got %v; want %s", err, wire.CodeTooMany)
		}
		if _, err := b.e.Acquire(context.Background(), s.Key(), "d", wire.AcquireRequest{Try: true}); codeOf(err) != wire.CodeTooMany {
			t.Errorf("Acquire of a third name with both in use: got %v; want %s", err, wire.CodeTooMany)
		}
		if _, err := b.e.State(wire.KindLock, "b"); err != nil {
			t.Errorf("State of a name in use: got %v; want nil", err)
		}
	})
}

// A renewal of a hold elsewhere does not wake the worker of a local waiter: its timer already
// waits for the holder's expiry, which the renewal only postpones. A change of holder does.
// Every renewal woke it before.
func TestRenewalsElsewhereDoNotWakeWaiters(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		api := leasefake.New(t)
		lease := contract.LeaseName(wire.KindLock, "x")
		api.Put(foreignLease(wire.KindLock, "x", "pod-z/0123", 15*time.Second))
		b := newBed(t, "pod-a", api, nil)
		s := b.open()
		got := b.acquire(s.Key(), "x", wire.AcquireRequest{})
		b.settle()
		wakes := func() int {
			n, _ := b.e.peekName(wire.KindLock, "x")
			defer n.mu.Unlock()
			return n.wakes
		}
		before := wakes()
		for range 3 {
			b.step(5 * time.Second)
			api.Put(foreignLease(wire.KindLock, "x", "pod-z/0123", 15*time.Second))
			b.settle()
		}
		if w := wakes() - before; w != 0 {
			t.Errorf("worker wake-ups for 3 renewals elsewhere: got %d; want 0", w)
		}
		api.Put(foreignLease(wire.KindLock, "x", "", 15*time.Second)) // released
		o := wait(t, got)
		if o.err != nil || holderOfStored(api, lease) != s.Holder {
			t.Fatalf("acquire after the release elsewhere: got %+v, stored holder %q; want a grant to %q", o, holderOfStored(api, lease), s.Holder)
		}
	})
}

// A try of a name whose first list does not come back is answered unavailable after
// firstListWait, and a name forgotten before its first list keeps the fencing-token floor
// granted here.
func TestTriesDoNotWaitForAFirstListForEver(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBedWith(t, namesScope(t), nil, nil)
		lease := contract.LeaseName(wire.KindLock, "x")
		g := b.grantedOnce("x")
		b.forgetAll()

		// The API server stops answering lists.
		unblock := make(chan struct{})
		b.api.Clientset().PrependReactor("list", "leases", func(k8stesting.Action) (bool, runtime.Object, error) {
			<-unblock
			return true, nil, apierrors.NewServiceUnavailable("gone")
		})
		t.Cleanup(func() { close(unblock) })
		got := b.acquire(b.open().Key(), "x", wire.AcquireRequest{Try: true})
		quiet(t, got, "try before the first list has taken the renew deadline")
		b.step(b.e.cfg.firstListWait())
		if o := wait(t, got); codeOf(o.err) != wire.CodeUnavailable {
			t.Fatalf("try after the renew deadline without a list: got %+v; want %s", o, wire.CodeUnavailable)
		}
		b.settle()
		if b.known("x") {
			t.Errorf("got lock x known after its try was answered; want it forgotten")
		}
		if got, want := b.e.issuedFloor(lease), tokenNum(t, g.Token); got != want {
			t.Errorf("token floor after forgetting a name never listed: got %d; want %d, the token granted here", got, want)
		}
	})
}

// grantedOnce acquires lock name in a new session and releases it, and returns the grant.
func (b *bed) grantedOnce(name string) wire.Grant {
	b.t.Helper()
	s := b.open()
	g := b.mustAcquire(s.Key(), name)
	if err := b.e.Release(context.Background(), s.Key(), name, g.Token); err != nil {
		b.t.Fatalf("Release: got %v; want nil", err)
	}
	return g
}

// forgetAll makes b's Engine forget every name nothing uses, as after watchLinger.
func (b *bed) forgetAll() {
	b.t.Helper()
	b.settle()
	b.e.forgetUnused(b.e.clock.Now().Add(b.e.cfg.watchLinger()))
	b.settle()
	b.e.mu.Lock()
	defer b.e.mu.Unlock()
	if len(b.e.names) != 0 {
		b.t.Fatalf("names known after forgetting the unused: got %d; want 0", len(b.e.names))
	}
}
