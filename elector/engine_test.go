package elector

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/metaparticle-io/sync/elector/internal/leasefake"
	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/wire"
)

func tokenNum(t *testing.T, s string) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		t.Fatalf("got token %q; want a uint64 (%v)", s, err)
	}
	return v
}

func TestGrantOnAbsentLeaseCreatesItAndStampsCreationRevision(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBed(t, "pod-a", nil, nil)
		s := b.open()
		before := b.api.WriteCount()

		g := b.mustAcquire(s.Key(), "Orders/EU")

		lease := contract.LeaseName(wire.KindLock, "Orders/EU")
		b.settle()
		if got, want := b.api.WritesSince(before), []string{"create " + lease, "update " + lease}; strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("got writes %q; want %q", got, want)
		}
		l := b.api.Get(lease)
		if l == nil {
			t.Fatalf("got no Lease %s; want it stored", lease)
		}
		checks := []struct{ what, got, want string }{
			{"grant name", g.Name, "Orders/EU"},
			{"grant lease", g.Lease, lease},
			{"grant holder", g.Holder, s.Holder},
			{"holder", holderOf(l), s.Holder},
			{"label managed-by", l.Labels[contract.LabelManagedBy], contract.ManagedByValue},
			{"label kind", l.Labels[contract.LabelKind], "lock"},
			{"annotation name", l.Annotations[contract.AnnotationName], "Orders/EU"},
			{"annotation token", l.Annotations[contract.AnnotationToken], g.Token},
			{"leaseDurationSeconds", strconv.Itoa(int(*l.Spec.LeaseDurationSeconds)), "15"},
		}
		for _, c := range checks {
			if c.got != c.want {
				t.Errorf("%s: got %q; want %q", c.what, c.got, c.want)
			}
		}
		// The token is the creation revision: one less than the stamping Update's.
		if got, want := tokenNum(t, g.Token)+1, tokenNum(t, l.ResourceVersion); got != want {
			t.Errorf("got token+1 %d; want the stamped resourceVersion %d", got, want)
		}
	})
}

func TestTakeOverFreeLeaseTokenIsResourceVersionPlusOne(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		api := leasefake.New(t)
		free := api.Put(foreignLease(wire.KindLock, "jobs", "", 15*time.Second))
		b := newBed(t, "pod-a", api, nil)
		s := b.open()

		g := b.mustAcquire(s.Key(), "jobs")

		if got, want := tokenNum(t, g.Token), tokenNum(t, free.ResourceVersion)+1; got != want {
			t.Errorf("got token %d; want resourceVersion of the free Lease + 1 = %d", got, want)
		}
		l := api.Get(free.Name)
		if got := *l.Spec.LeaseTransitions; got != 1 {
			t.Errorf("got leaseTransitions %d; want 1", got)
		}
		if got := l.Annotations[contract.AnnotationToken]; got != g.Token {
			t.Errorf("got token annotation %q; want %q", got, g.Token)
		}
	})
}

func TestForeignHolderExpiresByObservedTime(t *testing.T) {
	for _, tc := range []struct {
		name string
		// renewAt, if positive, is when the foreign holder renews (after the waiter started).
		renewAt time.Duration
		// grantAfter is the fake time, after the waiter started, from which the grant is due.
		grantAfter time.Duration
	}{
		{name: "holder silent", grantAfter: 15 * time.Second},
		{name: "holder renews at 10s", renewAt: 10 * time.Second, grantAfter: 25 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				api := leasefake.New(t)
				api.Put(foreignLease(wire.KindLock, "x", "pod-z/0123", 15*time.Second))
				b := newBed(t, "pod-a", api, nil)
				s := b.open()
				start := b.clock.Now()
				res := b.acquire(s.Key(), "x", wire.AcquireRequest{})
				settled(t, "waiters of x", func() int { return b.waiting(wire.KindLock, "x") }, 1)

				elapsed := func() time.Duration { return b.clock.Since(start) }
				if tc.renewAt > 0 {
					b.step(tc.renewAt)
					api.Put(foreignLease(wire.KindLock, "x", "pod-z/0123", 15*time.Second))
					b.settle()
					if _, at := b.observed(wire.KindLock, "x"); !at.Equal(b.clock.Now()) {
						t.Fatalf("got the renewal observed at %v; want now, %v", at, b.clock.Now())
					}
				}
				b.step(tc.grantAfter - elapsed())
				quiet(t, res, "at exactly the lease duration after the last observed change")
				b.step(time.Millisecond)
				o := wait(t, res)
				if o.err != nil {
					t.Fatalf("Acquire: got %v; want a grant", o.err)
				}
				if got := holderOfStored(api, contract.LeaseName(wire.KindLock, "x")); got != s.Holder {
					t.Errorf("got stored holder %q; want %q", got, s.Holder)
				}
			})
		})
	}
}

func TestConflictWaitsForTheWinnersVersion(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		api := leasefake.New(t)
		lease := contract.LeaseName(wire.KindLock, "race")
		api.Put(foreignLease(wire.KindLock, "race", "", 15*time.Second))
		// Another side-car wins the race for the free Lease: its write lands just before ours.
		won := false
		api.Hook(func(verb string, l *coordinationv1.Lease) error {
			if verb == "update" && l.Name == lease && !won {
				won = true
				if err := api.Race(lease, func(cur *coordinationv1.Lease) { cur.Spec.HolderIdentity = ptr("pod-z/winner") }); err != nil {
					return err
				}
			}
			return nil
		})
		b := newBed(t, "pod-a", api, nil)
		s := b.open()
		res := b.acquire(s.Key(), "race", wire.AcquireRequest{})
		settled(t, "observed holder of race", func() string {
			holder, _ := b.observed(wire.KindLock, "race")
			return holder
		}, "pod-z/winner")
		writes := api.WriteCount()
		b.step(15 * time.Second)
		quiet(t, res, "before the winner's Lease expires")
		if got := api.WritesSince(writes); len(got) != 0 {
			t.Errorf("got writes while waiting %q; want none (no polling)", got)
		}
		b.step(time.Millisecond)
		if o := wait(t, res); o.err != nil {
			t.Fatalf("Acquire after expiry: got %v; want a grant", o.err)
		}
	})
}

func TestRenewsEveryRenewPeriod(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBed(t, "pod-a", nil, nil)
		s := b.open()
		g := b.mustAcquire(s.Key(), "r")
		for i := 1; i <= 3; i++ {
			b.settle()
			before := b.api.WriteCount()
			b.step(contract.DefaultRenewPeriod)
			if got, want := b.api.WritesSince(before), []string{"update " + g.Lease}; strings.Join(got, ",") != strings.Join(want, ",") {
				t.Fatalf("renewal %d: got writes %q; want %q", i, got, want)
			}
			l := b.api.Get(g.Lease)
			if got, want := l.Spec.RenewTime.Time, b.clock.Now(); !got.Equal(want) {
				t.Errorf("renewal %d: got renewTime %v; want %v", i, got, want)
			}
			if got := l.Annotations[contract.AnnotationToken]; got != g.Token {
				t.Errorf("renewal %d: got token %q; want unchanged %q", i, got, g.Token)
			}
		}
	})
}

func TestHoldLostNoLaterThanRenewDeadline(t *testing.T) {
	for _, tc := range []struct {
		name   string
		err    func(*leasefake.API, string) error
		lostAt time.Duration // after the grant
		reason string        // losses_total label
	}{
		{"API server unreachable", func(*leasefake.API, string) error { return errors.New("dial tcp: connection refused") }, contract.DefaultRenewDeadline, lossDeadline},
		{"API server times out", func(*leasefake.API, string) error { return apierrors.NewTimeoutError("slow", 1) }, contract.DefaultRenewDeadline, lossDeadline},
		{"conflict", func(f *leasefake.API, lease string) error {
			return apierrors.NewConflict(leasesGVR.GroupResource(), lease, errors.New("modified"))
		}, contract.DefaultRenewPeriod, lossConflict},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := newBed(t, "pod-a", nil, nil)
				s := b.open()
				evs := b.events(s.Key())
				g := b.mustAcquire(s.Key(), "l")
				restore := b.api.FailUpdates(g.Lease, tc.err(b.api, g.Lease))
				defer restore()

				var elapsed time.Duration
				for elapsed+contract.DefaultRetryPeriod < tc.lostAt {
					b.step(contract.DefaultRetryPeriod)
					elapsed += contract.DefaultRetryPeriod
					quiet(t, evs, "lost event at "+elapsed.String())
				}
				b.step(tc.lostAt - elapsed)
				ev := next(t, evs)
				if ev.Type != wire.EventLost || ev.Kind != wire.KindLock || ev.Grant == nil || ev.Grant.Token != g.Token {
					t.Fatalf("got event %+v; want lost for token %s", ev, g.Token)
				}
				if got := metricValue(t, b, "metaparticle_sync_losses_total", "kind", "lock", "reason", tc.reason); got != 1 {
					t.Errorf("losses_total{reason=%s}: got %v; want 1", tc.reason, got)
				}
				// A lost hold is not held: releasing it is refused.
				if err := b.e.Release(context.Background(), s.Key(), "l", ""); codeOf(err) != wire.CodeNotHeld {
					t.Errorf("Release after loss: got %v; want %s", err, wire.CodeNotHeld)
				}
			})
		})
	}
}

func TestReleaseHandsOverInFIFOOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBed(t, "pod-a", nil, nil)
		holder := b.open()
		g := b.mustAcquire(holder.Key(), "q")
		var sessions []wire.Session
		var results []<-chan acquireOutcome
		for i := 0; i < 3; i++ {
			s := b.open()
			sessions = append(sessions, s)
			results = append(results, b.acquire(s.Key(), "q", wire.AcquireRequest{}))
			settled(t, "waiters of q", func() int { return b.waiting(wire.KindLock, "q") }, i+1)
		}
		prev := holder
		last := tokenNum(t, g.Token)
		for i, s := range sessions {
			if err := b.e.Release(context.Background(), prev.Key(), "q", ""); err != nil {
				t.Fatalf("Release by %s: got %v; want nil", prev.ID, err)
			}
			o := wait(t, results[i])
			if o.err != nil {
				t.Fatalf("waiter %d: got %v; want a grant", i, o.err)
			}
			if o.g.Holder != s.Holder {
				t.Errorf("handoff %d: got holder %s; want %s (FIFO)", i, o.g.Holder, s.Holder)
			}
			if tok := tokenNum(t, o.g.Token); tok <= last {
				t.Errorf("handoff %d: got token %d; want > %d", i, tok, last)
			} else {
				last = tok
			}
			prev = s
		}
		if err := b.e.Release(context.Background(), prev.Key(), "q", ""); err != nil {
			t.Fatalf("final Release: got %v; want nil", err)
		}
		if h := holderOfStored(b.api, g.Lease); h != "" {
			t.Errorf("got holder %q after the last release; want none", h)
		}
	})
}

func TestTryAndAlreadyHeld(t *testing.T) {
	owner := func(owner, _ wire.Session) wire.SessionKey { return owner.Key() }
	other := func(_, other wire.Session) wire.SessionKey { return other.Key() }
	unknown := func(_, _ wire.Session) wire.SessionKey { return wire.SessionKey{ID: "no-such-session", Secret: "x"} }
	// Another local process that read the holder identity: the ID, with no or a wrong secret.
	noSecret := func(owner, _ wire.Session) wire.SessionKey { return wire.SessionKey{ID: owner.ID} }
	wrongSecret := func(owner, other wire.Session) wire.SessionKey {
		return wire.SessionKey{ID: owner.ID, Secret: other.Secret}
	}
	for _, tc := range []struct {
		name       string
		session    func(owner, other wire.Session) wire.SessionKey
		lock       string
		try        bool
		want       wire.ErrorCode
		wantWrites bool
	}{
		{"free lock", other, "free", true, "", true},
		{"held by another local session", other, "local", true, wire.CodeNotAcquired, false},
		{"held by another side-car", other, "foreign", true, wire.CodeNotAcquired, false},
		{"already held, try", owner, "local", true, wire.CodeAlreadyHeld, false},
		{"already held, blocking", owner, "local", false, wire.CodeAlreadyHeld, false},
		{"unknown session", unknown, "free2", true, wire.CodeNoSession, false},
		{"no secret", noSecret, "free3", true, wire.CodeUnauthorized, false},
		{"another session's secret", wrongSecret, "free4", false, wire.CodeUnauthorized, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				api := leasefake.New(t)
				api.Put(foreignLease(wire.KindLock, "foreign", "pod-z/0123", 15*time.Second))
				b := newBed(t, "pod-a", api, nil)
				ownerS, otherS := b.open(), b.open()
				b.mustAcquire(ownerS.Key(), "local")

				b.settle()
				before := api.WriteCount()
				_, err := b.e.Acquire(context.Background(), tc.session(ownerS, otherS), tc.lock, wire.AcquireRequest{Try: tc.try})
				if got := codeOf(err); got != tc.want {
					t.Errorf("Acquire: got code %q (%v); want %q", got, err, tc.want)
				}
				b.settle() // every write the call set off has been made
				if got := len(api.WritesSince(before)) > 0; got != tc.wantWrites {
					t.Errorf("got writes %v (%q); want writes %v", got, api.WritesSince(before), tc.wantWrites)
				}
			})
		})
	}
}

func TestAcquireTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBed(t, "pod-a", nil, nil)
		owner, waiter := b.open(), b.open()
		b.mustAcquire(owner.Key(), "t")
		res := b.acquire(waiter.Key(), "t", wire.AcquireRequest{TimeoutMillis: 2000})
		settled(t, "waiters of t", func() int { return b.waiting(wire.KindLock, "t") }, 1)
		b.step(1999 * time.Millisecond)
		quiet(t, res, "before the timeout")
		b.step(time.Millisecond)
		if o := wait(t, res); codeOf(o.err) != wire.CodeNotAcquired {
			t.Fatalf("Acquire: got %v; want %s", o.err, wire.CodeNotAcquired)
		}
		if got := b.waiting(wire.KindLock, "t"); got != 0 {
			t.Errorf("got %d waiters after the timeout; want 0", got)
		}
	})
}

func TestSessionEndReleasesHolds(t *testing.T) {
	for _, tc := range []struct {
		name   string
		end    func(b *bed, s wire.Session, cancelStream func())
		closed bool // EventClosed is expected on the stream
	}{
		{"closed by client", func(b *bed, s wire.Session, _ func()) {
			if err := b.e.CloseSession(s.Key()); err != nil {
				b.t.Fatalf("CloseSession: got %v; want nil", err)
			}
		}, true},
		{"keep-alive missed", func(b *bed, s wire.Session, _ func()) { b.step(time.Duration(s.TTLMillis) * time.Millisecond) }, true},
		{"event stream closed", func(b *bed, s wire.Session, cancel func()) { cancel() }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := newBed(t, "pod-a", nil, nil)
				s, err := b.e.OpenSession(wire.OpenSessionRequest{TTLMillis: 2000})
				if err != nil {
					t.Fatalf("OpenSession: got %v; want nil", err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				evs := make(chan wire.Event, 10)
				streamDone := make(chan error, 1)
				go func() {
					streamDone <- b.e.StreamEvents(ctx, s.Key(), func(ev wire.Event) error {
						if ev.Type != wire.EventPing {
							evs <- ev
						}
						return nil
					})
				}()
				defer cancel()
				if ev := next(t, evs); ev.Type != wire.EventReady {
					t.Fatalf("got first event %+v; want ready", ev)
				}
				g := b.mustAcquire(s.Key(), "held")
				b.e.Join(s.Key(), "led")
				settled(t, "leader of led", func() string { return holderOfStored(b.api, contract.LeaseName(wire.KindElection, "led")) }, s.Holder)
				if ev := next(t, evs); ev.Type != wire.EventElected {
					t.Fatalf("got event %+v; want elected", ev)
				}

				tc.end(b, s, cancel)

				settled(t, "lock holder after the session ended", func() string { return holderOfStored(b.api, g.Lease) }, "")
				settled(t, "leader after the session ended", func() string { return holderOfStored(b.api, contract.LeaseName(wire.KindElection, "led")) }, "")
				if tc.closed {
					if ev := next(t, evs); ev.Type != wire.EventClosed || ev.Reason == "" {
						t.Errorf("got event %+v; want closed with a reason", ev)
					}
				}
				wait(t, streamDone)
				if _, err := b.e.KeepAlive(s.Key()); codeOf(err) != wire.CodeNoSession {
					t.Errorf("KeepAlive after end: got %v; want %s", err, wire.CodeNoSession)
				}
			})
		})
	}
}

func TestKeepAliveExtendsSession(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBed(t, "pod-a", nil, nil)
		s, err := b.e.OpenSession(wire.OpenSessionRequest{TTLMillis: 1000})
		if err != nil {
			t.Fatalf("OpenSession: got %v; want nil", err)
		}
		for i := 0; i < 5; i++ {
			b.step(900 * time.Millisecond)
			if _, err := b.e.KeepAlive(s.Key()); err != nil {
				t.Fatalf("KeepAlive %d: got %v; want nil", i, err)
			}
		}
		b.step(1000 * time.Millisecond)
		settled(t, "KeepAlive after the TTL", func() wire.ErrorCode { return codeOf(second(b.e.KeepAlive(s.Key()))) }, wire.CodeNoSession)
	})
}

func TestElectionResignLeaveAndRecontend(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBed(t, "pod-a", nil, nil)
		s1, s2 := b.open(), b.open()
		ev1, ev2 := b.events(s1.Key()), b.events(s2.Key())

		if _, err := b.e.Join(s1.Key(), "leader"); err != nil {
			t.Fatalf("Join s1: got %v; want nil", err)
		}
		e1 := next(t, ev1)
		if e1.Type != wire.EventElected || e1.Grant.Holder != s1.Holder {
			t.Fatalf("s1: got event %+v; want elected", e1)
		}
		if _, err := b.e.Join(s2.Key(), "leader"); err != nil {
			t.Fatalf("Join s2: got %v; want nil", err)
		}
		quiet(t, ev2, "s2 while s1 leads")

		// s1 resigns: told deposed before s2 is elected, and sits out RetryPeriod.
		if err := b.e.Resign(context.Background(), s1.Key(), "leader"); err != nil {
			t.Fatalf("Resign: got %v; want nil", err)
		}
		if ev := next(t, ev1); ev.Type != wire.EventDeposed {
			t.Fatalf("s1: got event %+v; want deposed", ev)
		}
		e2 := next(t, ev2)
		if e2.Type != wire.EventElected || tokenNum(t, e2.Grant.Token) <= tokenNum(t, e1.Grant.Token) {
			t.Fatalf("s2: got event %+v; want elected with a token above %s", e2, e1.Grant.Token)
		}
		if err := b.e.Resign(context.Background(), s1.Key(), "leader"); codeOf(err) != wire.CodeNotHeld {
			t.Errorf("Resign by a non-leader: got %v; want %s", err, wire.CodeNotHeld)
		}

		// s2 resigns too: s1 is the only candidate but still sits out; the Lease stays free.
		if err := b.e.Resign(context.Background(), s2.Key(), "leader"); err != nil {
			t.Fatalf("Resign s2: got %v; want nil", err)
		}
		next(t, ev2) // deposed
		quiet(t, ev1, "s1 during its pause")
		if h := holderOfStored(b.api, e1.Grant.Lease); h != "" {
			t.Errorf("got holder %q while both candidates sit out; want none", h)
		}
		// Both sat out; s1 became eligible first (its pause ends first).
		b.step(contract.DefaultRetryPeriod)
		if ev := next(t, ev1); ev.Type != wire.EventElected {
			t.Fatalf("s1: got event %+v; want elected again after its pause", ev)
		}

		// Leaving while leading deposes and releases; s2 takes over.
		if err := b.e.Leave(context.Background(), s1.Key(), "leader"); err != nil {
			t.Fatalf("Leave: got %v; want nil", err)
		}
		if ev := next(t, ev1); ev.Type != wire.EventDeposed {
			t.Fatalf("s1: got event %+v; want deposed on leave", ev)
		}
		if ev := next(t, ev2); ev.Type != wire.EventElected {
			t.Fatalf("s2: got event %+v; want elected after s1 left", ev)
		}
		if err := b.e.Leave(context.Background(), s1.Key(), "leader"); codeOf(err) != wire.CodeNotHeld {
			t.Errorf("Leave by a non-candidate: got %v; want %s", err, wire.CodeNotHeld)
		}
	})
}

func TestLeaseDeletedWhileHeld(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBed(t, "pod-a", nil, nil)
		s := b.open()
		evs := b.events(s.Key())
		if _, err := b.e.Join(s.Key(), "e"); err != nil {
			t.Fatalf("Join: got %v; want nil", err)
		}
		first := next(t, evs)
		if first.Type != wire.EventElected {
			t.Fatalf("got event %+v; want elected", first)
		}
		b.api.Remove(first.Grant.Lease)
		if ev := next(t, evs); ev.Type != wire.EventDeposed {
			t.Fatalf("got event %+v; want deposed after deletion", ev)
		}
		// Still a candidate: it recreates the Lease with a larger token.
		again := next(t, evs)
		if again.Type != wire.EventElected || tokenNum(t, again.Grant.Token) <= tokenNum(t, first.Grant.Token) {
			t.Fatalf("got event %+v; want elected with a token above %s", again, first.Grant.Token)
		}
	})
}

func TestRefusesLeaseOfAnotherName(t *testing.T) {
	for _, tc := range []struct {
		name string
		call func(b *bed, s wire.Session) error
	}{
		{"acquire", func(b *bed, s wire.Session) error {
			_, err := b.e.Acquire(context.Background(), s.Key(), "x", wire.AcquireRequest{})
			return err
		}},
		{"state", func(b *bed, _ wire.Session) error { _, err := b.e.State(wire.KindLock, "x"); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				api := leasefake.New(t)
				l := foreignLease(wire.KindLock, "x", "", 15*time.Second)
				l.Annotations[contract.AnnotationName] = "y" // as if "y" hashed to x's Lease name
				api.Put(l)
				b := newBed(t, "pod-a", api, nil)
				s := b.open()
				err := tc.call(b, s)
				if codeOf(err) != wire.CodeInternal || !strings.Contains(err.Error(), "hash collision") {
					t.Errorf("got %v; want %s mentioning a hash collision", err, wire.CodeInternal)
				}
				b.settle()
				if got := holderOfStored(api, l.Name); got != "" {
					t.Errorf("got foreign Lease holder %q; want it untouched (none)", got)
				}
			})
		})
	}
}

func TestNonNumericResourceVersionFailsClearly(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		api := leasefake.New(t)
		b := newBed(t, "pod-a", api, nil)
		api.SetResourceVersionFormat(func(r uint64) string { return "v" + strconv.FormatUint(r, 10) })
		s := b.open()
		_, err := b.e.Acquire(context.Background(), s.Key(), "n", wire.AcquireRequest{})
		if codeOf(err) != wire.CodeInternal || !strings.Contains(err.Error(), "not a decimal integer") {
			t.Fatalf("Acquire: got %v; want %s explaining the resourceVersion", err, wire.CodeInternal)
		}
	})
}

func TestShutdownReleasesAndRefuses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBed(t, "pod-a", nil, nil)
		s1, s2 := b.open(), b.open()
		g1 := b.mustAcquire(s1.Key(), "a")
		g2 := b.mustAcquire(s2.Key(), "b")
		waiter := b.acquire(s2.Key(), "a", wire.AcquireRequest{})
		settled(t, "waiters of a", func() int { return b.waiting(wire.KindLock, "a") }, 1)
		watchErr := make(chan error, 1)
		go func() {
			watchErr <- b.e.Watch(context.Background(), wire.KindLock, "a", func(wire.LockState) error { return nil })
		}()
		b.settle() // the watch is registered: Shutdown must close it

		before := b.api.WriteCount()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := b.e.Shutdown(ctx); err != nil {
			t.Fatalf("Shutdown: got %v; want nil", err)
		}
		// Two releases, and no grant to the waiter of the ended session (it used to be granted
		// and given back over and over until its session's end removed it); then, watching only
		// the names it uses, the deletions of the two Leases nobody holds any more, which no
		// other side-car might watch.
		want := []string{"update " + g1.Lease, "update " + g2.Lease}
		if b.e.informer == nil {
			want = append(want, "delete "+g1.Lease, "delete "+g2.Lease)
		}
		got := b.api.WritesSince(before)
		slices.Sort(got[:min(2, len(got))])
		slices.Sort(want[:2])
		if len(got) > 2 {
			slices.Sort(got[2:])
			slices.Sort(want[2:])
		}
		if !slices.Equal(got, want) {
			t.Errorf("got writes during shutdown %q; want %q", got, want)
		}
		for _, lease := range []string{g1.Lease, g2.Lease} {
			if h := holderOfStored(b.api, lease); h != "" {
				t.Errorf("Lease %s: got holder %q after shutdown; want none (released)", lease, h)
			}
		}
		if o := wait(t, waiter); codeOf(o.err) != wire.CodeShuttingDown {
			t.Errorf("waiter: got %v; want %s", o.err, wire.CodeShuttingDown)
		}
		if err := wait(t, watchErr); codeOf(err) != wire.CodeShuttingDown {
			t.Errorf("watch: got %v; want %s", err, wire.CodeShuttingDown)
		}
		if _, err := b.e.OpenSession(wire.OpenSessionRequest{}); codeOf(err) != wire.CodeShuttingDown {
			t.Errorf("OpenSession: got %v; want %s", err, wire.CodeShuttingDown)
		}
	})
}

func TestHaltedSideCarIsTakenOverAfterLeaseDuration(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		api := leasefake.New(t)
		a := newBed(t, "pod-a", api, nil)
		b := newBed(t, "pod-b", api, a.clock)
		sa, sb := a.open(), b.open()
		ga := a.mustAcquire(sa.Key(), "shared")
		res := b.acquire(sb.Key(), "shared", wire.AcquireRequest{})
		settled(t, "holder of shared as b sees it", func() string {
			holder, _ := b.observed(wire.KindLock, "shared")
			return holder
		}, sa.Holder)
		a.step(contract.DefaultRenewPeriod) // a renews once
		if _, at := b.observed(wire.KindLock, "shared"); !at.Equal(b.clock.Now()) {
			t.Fatalf("got a's renewal observed by b at %v; want now, %v", at, b.clock.Now())
		}
		a.e.Halt()
		b.step(contract.DefaultLeaseDuration)
		quiet(t, res, "b before a's Lease expired")
		b.step(time.Millisecond)
		o := wait(t, res)
		if o.err != nil {
			t.Fatalf("b's Acquire: got %v; want a grant", o.err)
		}
		if tokenNum(t, o.g.Token) <= tokenNum(t, ga.Token) {
			t.Errorf("got b's token %s; want above a's %s", o.g.Token, ga.Token)
		}
	})
}

func TestStateAndWatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBed(t, "pod-a", nil, nil)
		s := b.open()
		st, err := b.e.State(wire.KindElection, "w")
		if err != nil || st.Held || st.Lease != contract.LeaseName(wire.KindElection, "w") {
			t.Fatalf("State of an unused election: got %+v, %v; want free with its Lease name", st, err)
		}
		states := make(chan wire.LockState, 10)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go b.e.Watch(ctx, wire.KindElection, "w", func(st wire.LockState) error { states <- st; return nil })
		if first := wait(t, states); first.Held {
			t.Fatalf("got first watched state %+v; want free", first)
		}
		if _, err := b.e.Join(s.Key(), "w"); err != nil {
			t.Fatalf("Join: got %v; want nil", err)
		}
		led := wait(t, states)
		if !led.Held || led.Holder != s.Holder || led.Token == "" || led.Name != "w" {
			t.Fatalf("got watched state %+v; want held by %s with a token", led, s.Holder)
		}
		st, err = b.e.State(wire.KindElection, "w")
		if err != nil || st.Holder != s.Holder || st.Token != led.Token {
			t.Errorf("got State %+v, %v; want the watched state", st, err)
		}
		if err := b.e.Resign(context.Background(), s.Key(), "w"); err != nil {
			t.Fatalf("Resign: got %v; want nil", err)
		}
		if free := wait(t, states); free.Held || free.Token != led.Token {
			t.Fatalf("got watched state %+v; want free, keeping the last token %s", free, led.Token)
		}
	})
}

func TestMetricsCountGrantsAndHolds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBed(t, "pod-a", nil, nil)
		s := b.open()
		b.mustAcquire(s.Key(), "m1")
		b.mustAcquire(s.Key(), "m2")
		if _, err := b.e.Join(s.Key(), "m3"); err != nil {
			t.Fatalf("Join: got %v; want nil", err)
		}
		settled(t, "elections held", func() int { return b.e.snapshot().holds[wire.KindElection] }, 1)
		for _, tc := range []struct {
			metric string
			labels []string
			want   float64
		}{
			{"metaparticle_sync_holds", []string{"kind", "lock"}, 2},
			{"metaparticle_sync_holds", []string{"kind", "election"}, 1},
			{"metaparticle_sync_grants_total", []string{"kind", "election"}, 1},
			{"metaparticle_sync_sessions", nil, 1},
			{"metaparticle_sync_waiting", []string{"kind", "lock"}, 0},
		} {
			if got := metricValue(t, b, tc.metric, tc.labels...); got != tc.want {
				t.Errorf("%s%v: got %v; want %v", tc.metric, tc.labels, got, tc.want)
			}
		}
		if got := metricValue(t, b, "metaparticle_sync_grants_total", "kind", "lock"); got != 2 {
			t.Errorf("grants_total{kind=lock}: got %v; want 2", got)
		}
		if got := b.e.snapshot().holds[wire.KindLock]; got != 2 {
			t.Errorf("holds{kind=lock}: got %d; want 2", got)
		}
	})
}

// TestHeldMetricPerName: metaparticle_sync_held has one series per name in use here, 1 while held
// or led here and 0 while only waited for, at most MetricNames of them in name order, the rest
// counted; a negative MetricNames exports none.
func TestHeldMetricPerName(t *testing.T) {
	for _, tc := range []struct {
		max     int
		want    map[string]float64
		omitted float64
	}{
		{2, map[string]float64{"election/a": 1, "lock/b": 0}, 1},
		{0, map[string]float64{"election/a": 1, "lock/b": 0, "lock/c": 1}, 0}, // the default, 50
		{-1, map[string]float64{}, 3},
	} {
		t.Run(fmt.Sprint(tc.max), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				other := newBed(t, "pod-b", nil, nil)
				b := newBedWith(t, Config{PodName: "pod-a", MetricNames: tc.max}, other.api, other.clock)
				// pod-b holds "b"; pod-a waits for it, holds "c" and leads "a".
				other.mustAcquire(other.open().Key(), "b")
				s := b.open()
				waiting := b.acquire(s.Key(), "b", wire.AcquireRequest{})
				b.mustAcquire(s.Key(), "c")
				if _, err := b.e.Join(s.Key(), "a"); err != nil {
					t.Fatalf("Join: got %v; want nil", err)
				}
				settled(t, "elections held", func() int { return b.e.snapshot().holds[wire.KindElection] }, 1)
				settled(t, "lock waiters", func() int { return b.e.snapshot().waiting[wire.KindLock] }, 1)
				got := heldSeries(t, b)
				if !maps.Equal(got, tc.want) {
					t.Errorf("got metaparticle_sync_held %v; want %v", got, tc.want)
				}
				if o := metricValue(t, b, "metaparticle_sync_held_names_omitted"); o != tc.omitted {
					t.Errorf("got metaparticle_sync_held_names_omitted %v; want %v", o, tc.omitted)
				}
				select {
				case o := <-waiting:
					t.Fatalf("got the waiter's acquire back (%+v); want it still waiting", o)
				default:
				}
			})
		})
	}
}

// heldSeries returns every metaparticle_sync_held series of b as "kind/name" → value.
func heldSeries(t *testing.T, b *bed) map[string]float64 {
	t.Helper()
	mfs, err := b.reg.Gather()
	if err != nil {
		t.Fatalf("gathering metrics: got %v; want nil", err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "metaparticle_sync_held" {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			out[l["kind"]+"/"+l["name"]] = m.GetGauge().GetValue()
		}
	}
	return out
}

// metricValue gathers b's registry and returns the value of the named metric with the given
// label pairs (a histogram's sample count).
func metricValue(t *testing.T, b *bed, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := b.reg.Gather()
	if err != nil {
		t.Fatalf("gathering metrics: got %v; want nil", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue metrics
				}
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return 0
}

func TestWorkersExitWhenNothingDependsOnAName(t *testing.T) {
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, b *bed, s wire.Session)
	}{
		{"waiter timed out", func(t *testing.T, b *bed, s wire.Session) {
			res := b.acquire(s.Key(), "busy", wire.AcquireRequest{TimeoutMillis: 1000})
			settled(t, "waiters of busy", func() int { return b.waiting(wire.KindLock, "busy") }, 1)
			b.step(time.Second)
			if o := wait(t, res); codeOf(o.err) != wire.CodeNotAcquired {
				t.Fatalf("Acquire: got %v; want %s", o.err, wire.CodeNotAcquired)
			}
		}},
		{"watcher left", func(t *testing.T, b *bed, _ wire.Session) {
			ctx, cancel := context.WithCancel(context.Background())
			states := make(chan wire.LockState, 10)
			done := make(chan error, 1)
			go func() {
				done <- b.e.Watch(ctx, wire.KindLock, "busy", func(st wire.LockState) error { states <- st; return nil })
			}()
			wait(t, states)
			cancel()
			wait(t, done)
		}},
		{"candidate left", func(t *testing.T, b *bed, s wire.Session) {
			if _, err := b.e.Join(s.Key(), "busy"); err != nil {
				t.Fatalf("Join: got %v; want nil", err)
			}
			if err := b.e.Leave(context.Background(), s.Key(), "busy"); err != nil {
				t.Fatalf("Leave: got %v; want nil", err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				api := leasefake.New(t)
				api.Put(foreignLease(wire.KindLock, "busy", "pod-z/0123", 15*time.Second))
				b := newBed(t, "pod-a", api, nil)
				s := b.open()
				tc.run(t, b, s)
				settled(t, "workers running", b.e.workersRunning, false)
			})
		})
	}
}

// A session's ID is public (it is in the Lease holder identity); only its secret lets a caller
// act for it. Every session call without it, or with another session's, is refused and changes
// nothing: the holder keeps its lock and its leadership, and its session stays open.
func TestSessionCallsNeedTheSecret(t *testing.T) {
	calls := []struct {
		name string
		call func(b *bed, k wire.SessionKey) error
	}{
		{"keep-alive", func(b *bed, k wire.SessionKey) error { _, err := b.e.KeepAlive(k); return err }},
		{"close", func(b *bed, k wire.SessionKey) error { return b.e.CloseSession(k) }},
		{"release", func(b *bed, k wire.SessionKey) error { return b.e.Release(context.Background(), k, "x", "") }},
		{"acquire", func(b *bed, k wire.SessionKey) error {
			_, err := b.e.Acquire(context.Background(), k, "y", wire.AcquireRequest{Try: true})
			return err
		}},
		{"join", func(b *bed, k wire.SessionKey) error { _, err := b.e.Join(k, "f"); return err }},
		{"leave", func(b *bed, k wire.SessionKey) error { return b.e.Leave(context.Background(), k, "e") }},
		{"resign", func(b *bed, k wire.SessionKey) error { return b.e.Resign(context.Background(), k, "e") }},
		{"events", func(b *bed, k wire.SessionKey) error {
			return b.e.StreamEvents(context.Background(), k, func(wire.Event) error { return nil })
		}},
	}
	for _, c := range calls {
		for _, key := range []struct {
			name string
			of   func(owner, other wire.Session) wire.SessionKey
		}{
			{"no secret", func(owner, _ wire.Session) wire.SessionKey { return wire.SessionKey{ID: owner.ID} }},
			{"another session's secret", func(owner, other wire.Session) wire.SessionKey {
				return wire.SessionKey{ID: owner.ID, Secret: other.Secret}
			}},
			{"the secret with a byte changed", func(owner, _ wire.Session) wire.SessionKey {
				s := []byte(owner.Secret)
				s[len(s)-1] ^= 1
				return wire.SessionKey{ID: owner.ID, Secret: string(s)}
			}},
		} {
			t.Run(c.name+"/"+key.name, func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					b := newBed(t, "pod-a", nil, nil)
					owner, other := b.open(), b.open()
					evs := b.events(owner.Key())
					g := b.mustAcquire(owner.Key(), "x")
					if _, err := b.e.Join(owner.Key(), "e"); err != nil {
						t.Fatal(err)
					}
					if ev := next(t, evs); ev.Type != wire.EventElected {
						t.Fatalf("got event %s; want %s", ev.Type, wire.EventElected)
					}
					b.settle()
					before := b.api.WriteCount()
					if err := c.call(b, key.of(owner, other)); codeOf(err) != wire.CodeUnauthorized {
						t.Errorf("got %v; want code %s", err, wire.CodeUnauthorized)
					}
					b.settle()
					if w := b.api.WritesSince(before); len(w) > 0 {
						t.Errorf("got writes %q; want none", w)
					}
					quiet(t, evs, "the owner's events")
					if h := holderOfStored(b.api, g.Lease); h != owner.Holder {
						t.Errorf("got holder %q of x; want the owner %q", h, owner.Holder)
					}
					if _, err := b.e.KeepAlive(owner.Key()); err != nil {
						t.Errorf("owner's keep-alive: got %v; want nil", err)
					}
				})
			})
		}
	}
}

// Every end of a hold that its session did not ask for is reported to the session, whoever
// caused it: a person deleting or editing the held Lease (its holder, its lease duration, its
// token), or the side-car ending the session.
func TestEveryForeignEndOfAHoldIsReported(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(b *bed, lease string)
	}{
		{"Lease deleted", func(b *bed, lease string) { b.api.Remove(lease) }},
		{"holder changed", func(b *bed, lease string) {
			l := b.api.Get(lease)
			l.Spec.HolderIdentity = ptr("pod-z/someone")
			b.api.Put(l)
		}},
		{"holder cleared", func(b *bed, lease string) {
			l := b.api.Get(lease)
			l.Spec.HolderIdentity = nil
			b.api.Put(l)
		}},
		{"lease duration shortened", func(b *bed, lease string) {
			l := b.api.Get(lease)
			l.Spec.LeaseDurationSeconds = ptr(int32(1))
			b.api.Put(l)
		}},
		{"token edited", func(b *bed, lease string) {
			l := b.api.Get(lease)
			l.Annotations[contract.AnnotationToken] = "1"
			b.api.Put(l)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := newBed(t, "pod-a", nil, nil)
				s := b.open()
				evs := b.events(s.Key())
				g := b.mustAcquire(s.Key(), "x")
				b.settle()
				tc.change(b, g.Lease)
				ev := next(t, evs)
				if ev.Type != wire.EventLost || ev.Grant == nil || ev.Grant.Token != g.Token {
					t.Fatalf("got event %+v; want lost for token %s", ev, g.Token)
				}
			})
		})
	}
}

// A hold's validity, as acquire and keep-alive report it, runs to the renew deadline of its last
// successful write: renewals extend it, and while renewals fail it shrinks to zero, which is
// when the side-car declares the hold lost. A client that counts it from when it sent its
// request is told no later than the side-car's own deadline, whatever its session TTL.
func TestValidityRunsToTheRenewDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBed(t, "pod-a", nil, nil)
		s := b.open()
		evs := b.events(s.Key())
		g := b.mustAcquire(s.Key(), "x")
		rd, rp := contract.DefaultRenewDeadline, contract.DefaultRenewPeriod
		if g.ValidForMillis != rd.Milliseconds() {
			t.Fatalf("got grant validity %d ms; want the renew deadline %d", g.ValidForMillis, rd.Milliseconds())
		}
		validity := func() int64 {
			t.Helper()
			r, err := b.e.KeepAlive(s.Key())
			if err != nil || len(r.Holds) != 1 || r.Holds[0].Token != g.Token {
				t.Fatalf("got %+v, %v; want the one hold", r, err)
			}
			return r.Holds[0].ValidForMillis
		}
		b.step(rp / 2)
		if got, want := validity(), (rd - rp/2).Milliseconds(); got != want {
			t.Errorf("half a renew period after the grant: got validity %d ms; want %d", got, want)
		}
		b.step(rp / 2) // the renewal
		if got, want := validity(), rd.Milliseconds(); got != want {
			t.Errorf("after a renewal: got validity %d ms; want %d", got, want)
		}
		restore := b.api.FailUpdates(g.Lease, apierrors.NewInternalError(errors.New("etcd slow")))
		defer restore()
		b.step(rp) // the renewal fails; retries follow
		if got, want := validity(), (rd - rp).Milliseconds(); got != want {
			t.Errorf("one failed renewal later: got validity %d ms; want %d", got, want)
		}
		quiet(t, evs, "events before the renew deadline")
		b.step(rd - rp) // the renew deadline of the last successful write
		if ev := next(t, evs); ev.Type != wire.EventLost {
			t.Fatalf("got event %+v; want lost at the renew deadline, when the validity ran out", ev)
		}
		if r, err := b.e.KeepAlive(s.Key()); err != nil || len(r.Holds) != 0 {
			t.Errorf("after the loss: got %+v, %v; want no holds", r, err)
		}
	})
}

// TestReleaseGrant: a grant whose answer could not be delivered is released at once, and its
// session is told it was lost; a grant that is not the session's current hold is left alone.
func TestReleaseGrant(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBed(t, "pod-a", nil, nil)
		s := b.open()
		events := b.events(s.Key())
		g := b.mustAcquire(s.Key(), "x")
		stale := g
		stale.Token = "1"
		b.e.ReleaseGrant(s.Key(), "x", stale)
		b.settle()
		if holder, _ := b.observed(wire.KindLock, "x"); holder != s.Holder {
			t.Fatalf("holder after releasing another grant: got %q; want %q (unchanged)", holder, s.Holder)
		}
		b.e.ReleaseGrant(s.Key(), "x", g)
		ev := next(t, events)
		if ev.Type != wire.EventLost || ev.Grant == nil || ev.Grant.Token != g.Token {
			t.Fatalf("event after ReleaseGrant: got %+v; want lost for token %s", ev, g.Token)
		}
		b.settle()
		if holder, _ := b.observed(wire.KindLock, "x"); holder != "" {
			t.Errorf("holder after ReleaseGrant: got %q; want none (released at once)", holder)
		}
	})
}

// The Lease cache drops managedFields, which the Engine never reads.
func TestCacheDropsManagedFields(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		api := leasefake.New(t)
		l := foreignLease(wire.KindLock, "x", "pod-z/0123", time.Minute)
		l.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubectl", Operation: metav1.ManagedFieldsOperationUpdate}}
		api.Put(l)
		b := newBed(t, "pod-a", api, nil)
		if _, err := b.e.State(wire.KindLock, "x"); err != nil {
			t.Fatalf("State: got %v; want nil", err)
		}
		b.e.mu.Lock()
		n := b.e.names[l.Name]
		b.e.mu.Unlock()
		objs := n.cache().GetStore().List()
		if len(objs) != 1 {
			t.Fatalf("cached Leases: got %d; want 1", len(objs))
		}
		if got := objs[0].(*coordinationv1.Lease).ManagedFields; got != nil {
			t.Errorf("cached managedFields: got %v; want none", got)
		}
	})
}
