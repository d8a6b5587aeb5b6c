package server

import (
	"context"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/metaparticle-io/sync/elector"
	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/wire"
)

// TestIntegrationRestartedSideCarFreesItsPodsHolds: a side-car that dies leaves its Leases held;
// the next side-car of the same Pod (same name and UID) releases them when it starts, before it
// serves, so another Pod gets the lock at once instead of after the lease duration. A Pod of the
// same name with another UID (a StatefulSet Pod recreated elsewhere), a legacy session's hold
// (in either mode), a session without an event stream (its client would not notice the dead
// side-car at once), and a side-car without a Pod UID leave the hold to expire. On the old code
// every case kept the hold.
func TestIntegrationRestartedSideCarFreesItsPodsHolds(t *testing.T) {
	slow := restartTiming
	for _, tc := range []struct {
		name        string
		uid, newUID string
		opts        elector.SessionOptions
		stream      bool
		wantFreed   bool
		// otherHolder: the Lease names another session of the Pod since the grant (written by
		// an older side-car that keeps the mark, say), which must invalidate the mark.
		otherHolder bool
	}{
		{"same Pod", "uid-1", "uid-1", elector.SessionOptions{}, true, true, false},
		{"same name, another Pod", "uid-1", "uid-2", elector.SessionOptions{}, true, false, false},
		{"legacy session, classic mode", "uid-1", "uid-1", elector.SessionOptions{Polled: true, OutlivesShutdown: true}, true, false, false},
		{"legacy session, native mode", "uid-1", "uid-1", elector.SessionOptions{Polled: true}, true, false, false},
		{"no event stream", "uid-1", "uid-1", elector.SessionOptions{}, false, false, false},
		{"no Pod UID", "", "", elector.SessionOptions{}, true, false, false},
		{"holder changed since the grant", "uid-1", "uid-1", elector.SessionOptions{}, true, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := env.Namespace(t)
			cfg := slow
			cfg.PodUID = tc.uid
			a := startSidecar(t, ns, "web-0", cfg)
			s, err := a.e.OpenSessionWith(wire.OpenSessionRequest{TTLMillis: time.Minute.Milliseconds()}, tc.opts)
			if err != nil {
				t.Fatalf("OpenSessionWith: got %v; want nil", err)
			}
			if tc.stream {
				events := make(chan wire.Event, 16)
				sctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				go func() {
					_ = a.e.StreamEvents(sctx, s.Key(), func(ev wire.Event) error { events <- ev; return nil })
				}()
				if ev := await(t, events, "the stream's ready event"); ev.Type != wire.EventReady {
					t.Fatalf("first event: got %+v; want ready", ev)
				}
			}
			g, err := a.e.Acquire(context.Background(), s.Key(), "orders", wire.AcquireRequest{})
			if err != nil {
				t.Fatalf("Acquire: got %v; want a grant", err)
			}
			a.e.Halt() // no release: as if the process died
			a.srv.CloseClientConnections()
			// Its last promise ran out long ago: the release, if any, is due at the restart.
			held := backdate(t, ns, g.Lease, 2*(slow.RenewDeadline+slow.RetryPeriod))
			if tc.otherHolder {
				held.Spec.HolderIdentity = ptr.To("web-0/0123456789abcdef0123456789abcdef")
				if held, err = env.Clientset.CoordinationV1().Leases(ns).Update(context.Background(), held, metav1.UpdateOptions{}); err != nil {
					t.Fatalf("changing the holder: got %v; want nil", err)
				}
			}
			want := "" // marked only for a session whose client hears of a dead side-car at once
			if tc.uid != "" && !tc.opts.Polled && tc.stream {
				want = tc.uid + "/" + s.ID
			}
			if got := held.Annotations[contract.AnnotationPodUID]; got != want {
				t.Errorf("annotation %s of the held Lease: got %q; want %q", contract.AnnotationPodUID, got, want)
			}

			cfg.PodUID = tc.newUID
			startSidecar(t, ns, "web-0", cfg) // returns once it serves
			after := getLease(t, ns, g.Lease)
			if freed := holderOf(after) == ""; freed != tc.wantFreed {
				t.Fatalf("after the restart: got holder %q (freed %v); want freed %v", holderOf(after), freed, tc.wantFreed)
			}
			if !tc.wantFreed && after.ResourceVersion != held.ResourceVersion {
				t.Errorf("after the restart: got resourceVersion %s; want the dead hold's %s untouched", after.ResourceVersion, held.ResourceVersion)
			}
			if _, ok := after.Annotations[contract.AnnotationPodUID]; ok && tc.wantFreed {
				t.Errorf("released Lease: got annotation %s; want none", contract.AnnotationPodUID)
			}

			// Another Pod tries at once: it gets the lock only if it was freed, with a higher
			// token.
			b := startSidecar(t, ns, "web-1", slow)
			gb, err := b.c.acquire(context.Background(), b.c.open(time.Minute).ID, "orders", wire.AcquireRequest{Try: true})
			switch {
			case tc.wantFreed && err != nil:
				t.Errorf("another Pod's try after the restart: got %v; want a grant", err)
			case tc.wantFreed && tokenOfGrant(t, gb) <= tokenOfGrant(t, g):
				t.Errorf("another Pod's token: got %s; want above the dead hold's %s", gb.Token, g.Token)
			case !tc.wantFreed && wire.CodeOf(err) != wire.CodeNotAcquired:
				t.Errorf("another Pod's try after the restart: got %v; want %s (the dead hold lasts its lease duration)", err, wire.CodeNotAcquired)
			}
		})
	}
}

// restartTiming: a lease duration far longer than the tests, so that no hold expires during
// them, and a short renew deadline.
var restartTiming = elector.Config{LeaseDuration: 2 * time.Minute, RenewDeadline: 3 * time.Second, RenewPeriod: time.Second, RetryPeriod: 200 * time.Millisecond}

// backdate moves the renewTime of Lease name back by d, as if its holder's last renewal had
// started that long ago, and returns the new version.
func backdate(t *testing.T, ns, name string, d time.Duration) *coordinationv1.Lease {
	t.Helper()
	l := getLease(t, ns, name)
	l.Spec.RenewTime = &metav1.MicroTime{Time: time.Now().Add(-d)}
	u, err := env.Clientset.CoordinationV1().Leases(ns).Update(context.Background(), l, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("backdating Lease %s: got %v; want nil", name, err)
	}
	return u
}

// TestIntegrationRestartedSideCarWaitsOutTheDeadPromise: the next side-car of the Pod releases
// a dead hold only once the validity the dead side-car last gave its client has run out (the
// Lease's renewTime plus the renew deadline), so a client paused when its stream broke can
// still trust it; then another Pod's waiter is granted the lock, long before the lease duration.
func TestIntegrationRestartedSideCarWaitsOutTheDeadPromise(t *testing.T) {
	ns := env.Namespace(t)
	cfg := restartTiming
	cfg.PodUID = "uid-1"
	a := startSidecar(t, ns, "web-0", cfg)
	s := a.c.open(time.Minute)
	sctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a.c.events(sctx, s.ID) // attached (its ready event read) before the grant
	g := a.c.mustAcquire(s.ID, "orders")
	b := startSidecar(t, ns, "web-1", restartTiming)
	got := make(chan stamped[acquireOutcome], 1)
	go func() {
		gb, err := b.c.acquire(context.Background(), b.c.open(time.Minute).ID, "orders", wire.AcquireRequest{})
		got <- stamped[acquireOutcome]{acquireOutcome{gb, err}, time.Now()}
	}()
	eventually(t, "b to wait", func() bool { return b.waiting(wire.KindLock) == 1 })
	a.e.Halt()
	a.srv.CloseClientConnections()
	last := getLease(t, ns, g.Lease) // a's last renewal, or a later one in flight: see below
	startSidecar(t, ns, "web-0", cfg)
	o := await(t, got, "b's grant after a's side-car was restarted")
	if o.v.err != nil {
		t.Fatalf("b's acquire: got %v; want a grant", o.v.err)
	}
	if due := last.Spec.RenewTime.Add(cfg.RenewDeadline); o.at.Before(due) {
		t.Errorf("b granted at %s; want no earlier than a's last renewal plus the renew deadline (%s)", o.at.Format(time.StampMilli), due.Format(time.StampMilli))
	}
	if expiry := last.Spec.RenewTime.Add(cfg.LeaseDuration); !o.at.Before(expiry) {
		t.Errorf("b granted at %s; want it before the dead hold's expiry (%s)", o.at.Format(time.StampMilli), expiry.Format(time.StampMilli))
	}
	if tokenOfGrant(t, o.v.g) <= tokenOfGrant(t, g) {
		t.Errorf("b's token: got %s; want above a's %s", o.v.g.Token, g.Token)
	}
	t.Logf("a's side-car killed and restarted: b granted %s after a's last renewal (renew deadline %s, lease duration %s)",
		o.at.Sub(last.Spec.RenewTime.Time).Round(time.Millisecond), cfg.RenewDeadline, cfg.LeaseDuration)
}
