package elector

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	k8stesting "k8s.io/client-go/testing"

	"github.com/metaparticle-io/sync/elector/internal/leasefake"
	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/wire"
)

// watchesOf returns the field selectors of the watches b's side-car opened, in order.
func (b *bed) watchesOf() []string {
	var out []string
	for _, a := range b.api.Clientset().Actions() {
		if w, ok := a.(k8stesting.WatchActionImpl); ok {
			out = append(out, w.WatchRestrictions.Fields.String())
		}
	}
	return out
}

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
		s := b.open()
		g := b.mustAcquire(s.Key(), "x")
		if err := b.e.Release(context.Background(), s.Key(), "x", g.Token); err != nil {
			t.Fatalf("Release: got %v; want nil", err)
		}
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

// Reads of names nobody here uses start at most Limits.MaxWatches watches.
func TestReadsOfUnusedNamesAreBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := namesScope(t)
		cfg.Limits.MaxWatches = 2
		b := newBedWith(t, cfg, nil, nil)
		for i, name := range []string{"a", "b", "c"} {
			_, err := b.e.State(wire.KindLock, name)
			want := wire.ErrorCode("")
			if i == 2 {
				want = wire.CodeTooMany
			}
			if codeOf(err) != want {
				t.Errorf("State(%q) with %d names watched: got %v; want code %q", name, i, err, want)
			}
		}
		if _, err := b.e.State(wire.KindLock, "a"); err != nil {
			t.Errorf("State of a name already watched: got %v; want nil", err)
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
