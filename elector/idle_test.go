package elector

import (
	"cmp"
	"context"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/metaparticle-io/sync/elector/internal/leasefake"
	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/wire"
)

// idleAfter is DeleteIdleAfter in the tests of idle Leases: sweeps every 6 s.
const idleAfter = time.Minute

// walk advances b's clock by d in steps of a second, so that renewals happen on time.
func (b *bed) walk(d time.Duration) {
	b.t.Helper()
	for ; d > 0; d -= time.Second {
		b.step(min(d, time.Second))
	}
}

// read reads the state of lock name, which makes it used here: the side-car watches it, and may
// delete its Lease once idle.
func (b *bed) read(name string) wire.LockState {
	b.t.Helper()
	st, err := b.e.State(wire.KindLock, name)
	if err != nil {
		b.t.Fatalf("State(%q): got %v; want nil", name, err)
	}
	return st
}

// deletes counts the deletes in writes.
func deletes(writes []string) int {
	c := 0
	for _, w := range writes {
		if strings.HasPrefix(w, "delete ") {
			c++
		}
	}
	return c
}

// A Lease idle for DeleteIdleAfter is deleted, and its name forgotten; a Lease in use here, or
// idle for less, is not.
func TestIdleLeasesAreDeleted(t *testing.T) {
	for _, tc := range []struct {
		name string
		// setup makes the Lease of lock "x" and the local use of it; it runs at the start.
		setup      func(b *bed)
		idleAfter  time.Duration // Config.DeleteIdleAfter; 0: idleAfter
		keptAfter  time.Duration // still there this long after setup
		goneBefore time.Duration // and deleted by then; 0: never
	}{
		{"released here", func(b *bed) {
			s := b.open()
			g := b.mustAcquire(s.Key(), "x")
			if err := b.e.Release(context.Background(), s.Key(), "x", g.Token); err != nil {
				b.t.Fatalf("Release: got %v; want nil", err)
			}
		}, 0, idleAfter - time.Second, idleAfter + 7*time.Second},
		{"held elsewhere, expired", func(b *bed) {
			b.api.Put(foreignLease(wire.KindLock, "x", "pod-z/0123", 15*time.Second))
			b.read("x")
		}, 0, 15*time.Second + idleAfter - time.Second, 15*time.Second + idleAfter + 7*time.Second},
		{"held elsewhere, renewed", func(b *bed) {
			b.api.Put(foreignLease(wire.KindLock, "x", "pod-z/0123", 15*time.Second))
			stop := make(chan struct{})
			go func() {
				// The foreign holder renews every 10 s, on the fake clock.
				for {
					select {
					case <-b.clock.After(10 * time.Second):
						b.api.Put(foreignLease(wire.KindLock, "x", "pod-z/0123", 15*time.Second))
					case <-stop:
						return
					}
				}
			}()
			b.t.Cleanup(func() { close(stop) })
			b.read("x")
		}, 0, 3 * time.Minute, 0},
		{"held here", func(b *bed) {
			b.mustAcquire(b.open().Key(), "x")
		}, 0, 3 * time.Minute, 0},
		{"watched here", func(b *bed) {
			b.api.Put(foreignLease(wire.KindLock, "x", "", 15*time.Second))
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() {
				defer close(done)
				_ = b.e.Watch(ctx, wire.KindLock, "x", func(wire.LockState) error { return nil })
			}()
			b.t.Cleanup(func() { cancel(); <-done })
		}, 0, 3 * time.Minute, 0},
		{"never deleted", func(b *bed) {
			b.api.Put(foreignLease(wire.KindLock, "x", "", 15*time.Second))
			b.read("x")
		}, -1, 3 * time.Minute, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := newBedWith(t, Config{PodName: "pod-a", DeleteIdleAfter: cmp.Or(tc.idleAfter, idleAfter)}, nil, nil)
				lease := contract.LeaseName(wire.KindLock, "x")
				tc.setup(b)
				b.walk(tc.keptAfter)
				if b.api.Get(lease) == nil {
					t.Fatalf("after %v: got Lease %s deleted; want it kept", tc.keptAfter, lease)
				}
				if tc.goneBefore == 0 {
					if got := metricValue(t, b, "metaparticle_sync_idle_deletions_total", "result", "deleted"); got != 0 {
						t.Errorf("got %v idle deletions; want 0", got)
					}
					return
				}
				b.walk(tc.goneBefore - tc.keptAfter)
				if b.api.Get(lease) != nil {
					t.Fatalf("after %v: got Lease %s kept; want it deleted", tc.goneBefore, lease)
				}
				if n, _ := b.e.peekName(wire.KindLock, "x"); n != nil {
					n.mu.Unlock()
					t.Errorf("got name x still known after its Lease was deleted; want it forgotten")
				}
				if got := metricValue(t, b, "metaparticle_sync_idle_deletions_total", "result", "deleted"); got != 1 {
					t.Errorf("got %v idle deletions; want 1", got)
				}
			})
		})
	}
}

// The deletion is conditional on the version found idle: a write that lands first (another
// side-car's grant) makes it fail, and the Lease and its new holder stay.
func TestIdleDeletionNeverUndoesAGrant(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		api := leasefake.New(t)
		lease := contract.LeaseName(wire.KindLock, "x")
		api.Put(foreignLease(wire.KindLock, "x", "", 15*time.Second))
		raced := false
		api.Hook(func(verb string, l *coordinationv1.Lease) error {
			if verb == "delete" && l.Name == lease && !raced {
				raced = true
				return api.Race(lease, func(cur *coordinationv1.Lease) { cur.Spec.HolderIdentity = ptr("pod-z/winner") })
			}
			return nil
		})
		b := newBedWith(t, Config{PodName: "pod-a", DeleteIdleAfter: idleAfter}, api, nil)
		b.read("x")
		b.walk(idleAfter + 7*time.Second)
		if !raced {
			t.Fatalf("got no deletion tried after %v idle; want one", idleAfter)
		}
		if got := holderOfStored(api, lease); got != "pod-z/winner" {
			t.Errorf("got stored holder %q; want the winner's grant kept, %q", got, "pod-z/winner")
		}
		if got := metricValue(t, b, "metaparticle_sync_idle_deletions_total", "result", "raced"); got != 1 {
			t.Errorf("got %v raced idle deletions; want 1", got)
		}
	})
}

// A takeover that meets a Lease deleted meanwhile (by another side-car's idle deletion) creates
// it afresh, with a token above the old one's.
func TestTakeoverAfterADeletionCreates(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		api := leasefake.New(t)
		lease := contract.LeaseName(wire.KindLock, "x")
		old := api.Put(foreignLease(wire.KindLock, "x", "", 15*time.Second))
		deleted := false
		api.Hook(func(verb string, l *coordinationv1.Lease) error {
			if verb == "update" && l.Name == lease && !deleted {
				deleted = true
				api.RemoveLocked(lease)
			}
			return nil
		})
		b := newBed(t, "pod-a", api, nil)
		g := b.mustAcquire(b.open().Key(), "x")
		if !deleted {
			t.Fatalf("got no takeover; want one, met by the deletion")
		}
		if got, floor := tokenNum(t, g.Token), tokenNum(t, old.ResourceVersion); got <= floor {
			t.Errorf("got token %d; want above the deleted Lease's version %d", got, floor)
		}
		if got := holderOfStored(api, lease); got != g.Holder {
			t.Errorf("got stored holder %q; want %q", got, g.Holder)
		}
	})
}

// Without RBAC for delete, the side-car tries once per DeleteIdleAfter, and locks still work.
func TestIdleDeletionForbidden(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		api := leasefake.New(t)
		api.Put(foreignLease(wire.KindLock, "x", "", 15*time.Second))
		api.Hook(func(verb string, l *coordinationv1.Lease) error {
			if verb == "delete" {
				return apierrors.NewForbidden(schema.GroupResource{Group: "coordination.k8s.io", Resource: "leases"}, l.Name, nil)
			}
			return nil
		})
		b := newBedWith(t, Config{PodName: "pod-a", DeleteIdleAfter: idleAfter}, api, nil)
		b.read("x")
		before := api.WriteCount()
		b.walk(idleAfter + 7*time.Second)
		if got := deletes(api.WritesSince(before)); got != 1 {
			t.Fatalf("deletes in the first %v: got %d; want 1", idleAfter+7*time.Second, got)
		}
		b.walk(idleAfter - 8*time.Second)
		if got := deletes(api.WritesSince(before)); got != 1 {
			t.Errorf("deletes before DeleteIdleAfter passed again: got %d; want 1", got)
		}
		b.walk(9 * time.Second)
		if got := deletes(api.WritesSince(before)); got != 2 {
			t.Errorf("deletes once DeleteIdleAfter passed again: got %d; want 2", got)
		}
		if got := metricValue(t, b, "metaparticle_sync_idle_deletions_total", "result", "forbidden"); got != 2 {
			t.Errorf("got %v forbidden idle deletions; want 2", got)
		}
		b.e.dmu.Lock()
		degraded := b.e.degraded
		b.e.dmu.Unlock()
		if got := degraded; got != nil {
			t.Errorf("got the sessions told of trouble %v; want none (locks work without delete)", got)
		}
		b.mustAcquire(b.open().Key(), "x")
	})
}

// A forgotten name's tokens still bound its next create: the highest joins the floor of every
// create, and the map of tokens does not keep the name.
func TestForgottenNamesKeepTheirFloorForCreates(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBedWith(t, Config{PodName: "pod-a", DeleteIdleAfter: idleAfter}, nil, nil)
		s := b.open()
		lease := contract.LeaseName(wire.KindLock, "x")
		g := b.mustAcquire(s.Key(), "x")
		if err := b.e.Release(context.Background(), s.Key(), "x", g.Token); err != nil {
			t.Fatalf("Release: got %v; want nil", err)
		}
		b.walk(idleAfter + 7*time.Second)
		if b.api.Get(lease) != nil {
			t.Fatalf("got Lease %s kept; want it deleted", lease)
		}
		b.e.imu.Lock()
		_, kept := b.e.issued[lease]
		gone := b.e.goneFloor
		b.e.imu.Unlock()
		if kept {
			t.Errorf("got the forgotten name's token still in the map; want it gone")
		}
		if want := tokenNum(t, g.Token); gone != want || b.e.createFloor("any") != want {
			t.Errorf("got floor of creates %d (gone %d); want the forgotten token %d", b.e.createFloor("any"), gone, want)
		}
		g2 := b.mustAcquire(s.Key(), "x")
		if tokenNum(t, g2.Token) <= tokenNum(t, g.Token) {
			t.Errorf("got token %s after the recreate; want above %s", g2.Token, g.Token)
		}
	})
}

// After etcd is restored from a backup, a create whose revision would not exceed the floor of
// forgotten names is given back, and the takeovers of the Lease given back are held to that
// floor too: no token at or below one granted here is granted again.
func TestForgottenFloorHoldsAfterARestore(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBedWith(t, Config{PodName: "pod-a", DeleteIdleAfter: idleAfter}, nil, nil)
		s := b.open()
		g := b.mustAcquire(s.Key(), "x")
		if err := b.e.Release(context.Background(), s.Key(), "x", g.Token); err != nil {
			t.Fatalf("Release: got %v; want nil", err)
		}
		b.walk(idleAfter + 7*time.Second) // deleted and forgotten
		floor := tokenNum(t, g.Token)
		b.api.Rewind(floor - 50) // the store went back in time

		for _, what := range []string{"the create", "a takeover of the Lease it gave back"} {
			_, err := b.e.Acquire(context.Background(), s.Key(), "y", wire.AcquireRequest{Try: true})
			if codeOf(err) != wire.CodeUnavailable || !strings.Contains(err.Error(), "went backwards") {
				t.Fatalf("%s, at revisions below token %d: got %v; want %s saying the versions went backwards", what, floor, err, wire.CodeUnavailable)
			}
			b.step(contract.DefaultRetryPeriod)
		}
	})
}
