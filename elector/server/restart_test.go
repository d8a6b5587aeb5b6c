package server

import (
	"context"
	"testing"
	"time"

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
	// A lease duration far longer than the test, so that no hold expires during it.
	slow := elector.Config{LeaseDuration: 2 * time.Minute, RenewDeadline: time.Minute, RenewPeriod: 10 * time.Second, RetryPeriod: 200 * time.Millisecond}
	for _, tc := range []struct {
		name        string
		uid, newUID string
		opts        elector.SessionOptions
		stream      bool
		wantFreed   bool
	}{
		{"same Pod", "uid-1", "uid-1", elector.SessionOptions{}, true, true},
		{"same name, another Pod", "uid-1", "uid-2", elector.SessionOptions{}, true, false},
		{"legacy session, classic mode", "uid-1", "uid-1", elector.SessionOptions{Polled: true, OutlivesShutdown: true}, true, false},
		{"legacy session, native mode", "uid-1", "uid-1", elector.SessionOptions{Polled: true}, true, false},
		{"no event stream", "uid-1", "uid-1", elector.SessionOptions{}, false, false},
		{"no Pod UID", "", "", elector.SessionOptions{}, true, false},
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
			held := getLease(t, ns, g.Lease)
			want := "" // marked only for a session whose client hears of a dead side-car at once
			if tc.uid != "" && !tc.opts.Polled && tc.stream {
				want = tc.uid
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
