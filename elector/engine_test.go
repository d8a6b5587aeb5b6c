package elector

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/metaparticle-io/sync/wire"
)

func tokenNum(t *testing.T, s string) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		t.Fatalf("token %q is not a uint64: %v", s, err)
	}
	return v
}

func TestGrantOnAbsentLeaseCreatesItAndStampsCreationRevision(t *testing.T) {
	b := newBed(t, "pod-a", nil, nil)
	s := b.open()
	before := b.api.writeCount()

	g := b.mustAcquire(s.ID, "Orders/EU")

	lease := LeaseName(wire.KindLock, "Orders/EU")
	if got, want := b.api.writesSince(before), []string{"create " + lease, "update " + lease}; strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("writes %q; want %q", got, want)
	}
	l := b.api.get(lease)
	if l == nil {
		t.Fatalf("Lease %s not stored", lease)
	}
	checks := []struct{ what, got, want string }{
		{"grant name", g.Name, "Orders/EU"},
		{"grant lease", g.Lease, lease},
		{"grant holder", g.Holder, s.Holder},
		{"holder", holderOf(l), s.Holder},
		{"label managed-by", l.Labels[LabelManagedBy], ManagedByValue},
		{"label kind", l.Labels[LabelKind], "lock"},
		{"annotation name", l.Annotations[AnnotationName], "Orders/EU"},
		{"annotation token", l.Annotations[AnnotationToken], g.Token},
		{"leaseDurationSeconds", strconv.Itoa(int(*l.Spec.LeaseDurationSeconds)), "15"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %q; want %q", c.what, c.got, c.want)
		}
	}
	// The token is the creation revision: one less than the stamping Update's.
	if got, want := tokenNum(t, g.Token)+1, tokenNum(t, l.ResourceVersion); got != want {
		t.Errorf("token+1 = %d; want the stamped resourceVersion %d", got, want)
	}
}

func TestTakeOverFreeLeaseTokenIsResourceVersionPlusOne(t *testing.T) {
	api := newFakeAPI(t)
	free := api.put(foreignLease(wire.KindLock, "jobs", "", 15*time.Second))
	b := newBed(t, "pod-a", api, nil)
	s := b.open()

	g := b.mustAcquire(s.ID, "jobs")

	if got, want := tokenNum(t, g.Token), tokenNum(t, free.ResourceVersion)+1; got != want {
		t.Errorf("token %d; want resourceVersion of the free Lease + 1 = %d", got, want)
	}
	l := api.get(free.Name)
	if got := *l.Spec.LeaseTransitions; got != 1 {
		t.Errorf("leaseTransitions %d; want 1", got)
	}
	if got := l.Annotations[AnnotationToken]; got != g.Token {
		t.Errorf("token annotation %q; want %q", got, g.Token)
	}
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
			api := newFakeAPI(t)
			api.put(foreignLease(wire.KindLock, "x", "pod-z/0123", 15*time.Second))
			b := newBed(t, "pod-a", api, nil)
			s := b.open()
			start := b.clock.Now()
			res := b.acquire(s.ID, "x", wire.AcquireRequest{})
			eventually(t, "the waiter to queue", func() bool { return b.waiting(wire.KindLock, "x") == 1 })

			elapsed := func() time.Duration { return b.clock.Since(start) }
			if tc.renewAt > 0 {
				b.step(tc.renewAt)
				api.put(foreignLease(wire.KindLock, "x", "pod-z/0123", 15*time.Second))
				eventually(t, "the renewal to be observed", func() bool {
					_, at := b.observed(wire.KindLock, "x")
					return at.Equal(b.clock.Now())
				})
			}
			b.step(tc.grantAfter - elapsed())
			quiet(t, res, "at exactly the lease duration after the last observed change")
			b.step(time.Millisecond)
			o := wait(t, res)
			if o.err != nil {
				t.Fatalf("Acquire: %v", o.err)
			}
			if holderOfStored(api, LeaseName(wire.KindLock, "x")) != s.Holder {
				t.Errorf("stored holder %q; want %q", holderOfStored(api, LeaseName(wire.KindLock, "x")), s.Holder)
			}
		})
	}
}

func TestConflictWaitsForTheWinnersVersion(t *testing.T) {
	api := newFakeAPI(t)
	lease := LeaseName(wire.KindLock, "race")
	api.put(foreignLease(wire.KindLock, "race", "", 15*time.Second))
	// Another side-car wins the race for the free Lease: its write lands just before ours.
	won := false
	api.hook(func(verb string, l *coordinationv1.Lease) error {
		if verb == "update" && l.Name == lease && !won {
			won = true
			cur := api.getLocked(lease)
			cur.Spec.HolderIdentity = ptr("pod-z/winner")
			if _, _, err := api.updateLocked(testNS, cur); err != nil {
				return err
			}
		}
		return nil
	})
	b := newBed(t, "pod-a", api, nil)
	s := b.open()
	res := b.acquire(s.ID, "race", wire.AcquireRequest{})
	eventually(t, "the winner's version to arrive", func() bool {
		holder, _ := b.observed(wire.KindLock, "race")
		return holder == "pod-z/winner"
	})
	writes := api.writeCount()
	b.step(15 * time.Second)
	quiet(t, res, "before the winner's Lease expires")
	if got := api.writesSince(writes); len(got) != 0 {
		t.Errorf("writes while waiting %q; want none (no polling)", got)
	}
	b.step(time.Millisecond)
	if o := wait(t, res); o.err != nil {
		t.Fatalf("Acquire after expiry: %v", o.err)
	}
}

func TestRenewsEveryRenewPeriod(t *testing.T) {
	b := newBed(t, "pod-a", nil, nil)
	s := b.open()
	g := b.mustAcquire(s.ID, "r")
	for i := 1; i <= 3; i++ {
		before := b.api.writeCount()
		b.step(DefaultRenewPeriod)
		eventually(t, "a renewal", func() bool { return b.api.writeCount() > before })
		l := b.api.get(g.Lease)
		if got, want := l.Spec.RenewTime.Time, b.clock.Now(); !got.Equal(want) {
			t.Errorf("renewal %d: renewTime %v; want %v", i, got, want)
		}
		if got := l.Annotations[AnnotationToken]; got != g.Token {
			t.Errorf("renewal %d: token %q; want unchanged %q", i, got, g.Token)
		}
	}
}

func TestHoldLostNoLaterThanRenewDeadline(t *testing.T) {
	for _, tc := range []struct {
		name   string
		err    func(*fakeAPI, string) error
		lostAt time.Duration // after the grant
		reason string        // losses_total label
	}{
		{"API server unreachable", func(*fakeAPI, string) error { return errors.New("dial tcp: connection refused") }, DefaultRenewDeadline, lossDeadline},
		{"API server times out", func(*fakeAPI, string) error { return apierrors.NewTimeoutError("slow", 1) }, DefaultRenewDeadline, lossDeadline},
		{"conflict", func(f *fakeAPI, lease string) error {
			return apierrors.NewConflict(leasesGVR.GroupResource(), lease, errors.New("modified"))
		}, DefaultRenewPeriod, lossConflict},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBed(t, "pod-a", nil, nil)
			s := b.open()
			evs := b.events(s.ID)
			g := b.mustAcquire(s.ID, "l")
			restore := b.api.failUpdates(g.Lease, tc.err(b.api, g.Lease))
			defer restore()

			var elapsed time.Duration
			for elapsed+DefaultRetryPeriod < tc.lostAt {
				b.step(DefaultRetryPeriod)
				elapsed += DefaultRetryPeriod
				quiet(t, evs, "lost event at "+elapsed.String())
			}
			b.step(tc.lostAt - elapsed)
			ev := next(t, evs)
			if ev.Type != wire.EventLost || ev.Kind != wire.KindLock || ev.Grant == nil || ev.Grant.Token != g.Token {
				t.Fatalf("event %+v; want lost for token %s", ev, g.Token)
			}
			if got := metricValue(t, b, "metaparticle_sync_losses_total", "kind", "lock", "reason", tc.reason); got != 1 {
				t.Errorf("losses_total{reason=%s} = %v; want 1", tc.reason, got)
			}
			// A lost hold is not held: releasing it is refused.
			if err := b.e.Release(context.Background(), s.ID, "l"); codeOf(err) != wire.CodeNotHeld {
				t.Errorf("Release after loss: %v; want %s", err, wire.CodeNotHeld)
			}
		})
	}
}

func TestReleaseHandsOverInFIFOOrder(t *testing.T) {
	b := newBed(t, "pod-a", nil, nil)
	holder := b.open()
	g := b.mustAcquire(holder.ID, "q")
	var sessions []wire.Session
	var results []<-chan acquireOutcome
	for i := 0; i < 3; i++ {
		s := b.open()
		sessions = append(sessions, s)
		results = append(results, b.acquire(s.ID, "q", wire.AcquireRequest{}))
		eventually(t, "waiter to queue", func() bool { return b.waiting(wire.KindLock, "q") == i+1 })
	}
	prev := holder
	last := tokenNum(t, g.Token)
	for i, s := range sessions {
		if err := b.e.Release(context.Background(), prev.ID, "q"); err != nil {
			t.Fatalf("Release by %s: %v", prev.ID, err)
		}
		o := wait(t, results[i])
		if o.err != nil {
			t.Fatalf("waiter %d: %v", i, o.err)
		}
		if o.g.Holder != s.Holder {
			t.Errorf("handoff %d went to %s; want %s (FIFO)", i, o.g.Holder, s.Holder)
		}
		if tok := tokenNum(t, o.g.Token); tok <= last {
			t.Errorf("handoff %d token %d; want > %d", i, tok, last)
		} else {
			last = tok
		}
		prev = s
	}
	if err := b.e.Release(context.Background(), prev.ID, "q"); err != nil {
		t.Fatalf("final Release: %v", err)
	}
	if h := holderOfStored(b.api, g.Lease); h != "" {
		t.Errorf("holder after the last release %q; want none", h)
	}
}

func TestTryAndAlreadyHeld(t *testing.T) {
	api := newFakeAPI(t)
	api.put(foreignLease(wire.KindLock, "foreign", "pod-z/0123", 15*time.Second))
	b := newBed(t, "pod-a", api, nil)
	owner, other := b.open(), b.open()
	b.mustAcquire(owner.ID, "local")

	for _, tc := range []struct {
		name, session, lock string
		try                 bool
		want                wire.ErrorCode
		wantWrites          bool
	}{
		{"free lock", other.ID, "free", true, "", true},
		{"held by another local session", other.ID, "local", true, wire.CodeNotAcquired, false},
		{"held by another side-car", other.ID, "foreign", true, wire.CodeNotAcquired, false},
		{"already held, try", owner.ID, "local", true, wire.CodeAlreadyHeld, false},
		{"already held, blocking", owner.ID, "local", false, wire.CodeAlreadyHeld, false},
		{"unknown session", "no-such-session", "free2", true, wire.CodeNoSession, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := api.writeCount()
			_, err := b.e.Acquire(context.Background(), tc.session, tc.lock, wire.AcquireRequest{Try: tc.try})
			if got := codeOf(err); got != tc.want {
				t.Errorf("Acquire: code %q (%v); want %q", got, err, tc.want)
			}
			if got := len(api.writesSince(before)) > 0; got != tc.wantWrites {
				t.Errorf("wrote %v (%q); want writes %v", got, api.writesSince(before), tc.wantWrites)
			}
		})
	}
}

func TestAcquireTimeout(t *testing.T) {
	b := newBed(t, "pod-a", nil, nil)
	owner, waiter := b.open(), b.open()
	b.mustAcquire(owner.ID, "t")
	res := b.acquire(waiter.ID, "t", wire.AcquireRequest{TimeoutMillis: 2000})
	eventually(t, "waiter to queue", func() bool { return b.waiting(wire.KindLock, "t") == 1 })
	b.step(1999 * time.Millisecond)
	quiet(t, res, "before the timeout")
	b.step(time.Millisecond)
	if o := wait(t, res); codeOf(o.err) != wire.CodeNotAcquired {
		t.Fatalf("Acquire: %v; want %s", o.err, wire.CodeNotAcquired)
	}
	if got := b.waiting(wire.KindLock, "t"); got != 0 {
		t.Errorf("waiters after timeout %d; want 0", got)
	}
}

func TestSessionEndReleasesHolds(t *testing.T) {
	for _, tc := range []struct {
		name   string
		end    func(b *bed, s wire.Session, cancelStream func())
		closed bool // EventClosed is expected on the stream
	}{
		{"closed by client", func(b *bed, s wire.Session, _ func()) {
			if err := b.e.CloseSession(s.ID); err != nil {
				b.t.Fatalf("CloseSession: %v", err)
			}
		}, true},
		{"keep-alive missed", func(b *bed, s wire.Session, _ func()) { b.step(time.Duration(s.TTLMillis) * time.Millisecond) }, true},
		{"event stream closed", func(b *bed, s wire.Session, cancel func()) { cancel() }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBed(t, "pod-a", nil, nil)
			s, err := b.e.OpenSession(wire.OpenSessionRequest{TTLMillis: 2000})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			evs := make(chan wire.Event, 10)
			streamDone := make(chan error, 1)
			go func() {
				streamDone <- b.e.StreamEvents(ctx, s.ID, func(ev wire.Event) error {
					if ev.Type != wire.EventPing {
						evs <- ev
					}
					return nil
				})
			}()
			defer cancel()
			if ev := next(t, evs); ev.Type != wire.EventReady {
				t.Fatalf("first event %+v; want ready", ev)
			}
			g := b.mustAcquire(s.ID, "held")
			b.e.Join(s.ID, "led")
			eventually(t, "election won", func() bool { return holderOfStored(b.api, LeaseName(wire.KindElection, "led")) == s.Holder })
			if ev := next(t, evs); ev.Type != wire.EventElected {
				t.Fatalf("event %+v; want elected", ev)
			}

			tc.end(b, s, cancel)

			eventually(t, "lock holder cleared", func() bool { return holderOfStored(b.api, g.Lease) == "" })
			eventually(t, "leader cleared", func() bool { return holderOfStored(b.api, LeaseName(wire.KindElection, "led")) == "" })
			if tc.closed {
				if ev := next(t, evs); ev.Type != wire.EventClosed || ev.Reason == "" {
					t.Errorf("event %+v; want closed with a reason", ev)
				}
			}
			wait(t, streamDone)
			if err := b.e.KeepAlive(s.ID); codeOf(err) != wire.CodeNoSession {
				t.Errorf("KeepAlive after end: %v; want %s", err, wire.CodeNoSession)
			}
		})
	}
}

func TestKeepAliveExtendsSession(t *testing.T) {
	b := newBed(t, "pod-a", nil, nil)
	s, err := b.e.OpenSession(wire.OpenSessionRequest{TTLMillis: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		b.step(900 * time.Millisecond)
		if err := b.e.KeepAlive(s.ID); err != nil {
			t.Fatalf("KeepAlive %d: %v", i, err)
		}
	}
	b.step(1000 * time.Millisecond)
	eventually(t, "session to expire", func() bool { return codeOf(b.e.KeepAlive(s.ID)) == wire.CodeNoSession })
}

func TestElectionResignLeaveAndRecontend(t *testing.T) {
	b := newBed(t, "pod-a", nil, nil)
	s1, s2 := b.open(), b.open()
	ev1, ev2 := b.events(s1.ID), b.events(s2.ID)

	if _, err := b.e.Join(s1.ID, "leader"); err != nil {
		t.Fatal(err)
	}
	e1 := next(t, ev1)
	if e1.Type != wire.EventElected || e1.Grant.Holder != s1.Holder {
		t.Fatalf("s1 event %+v; want elected", e1)
	}
	if _, err := b.e.Join(s2.ID, "leader"); err != nil {
		t.Fatal(err)
	}
	quiet(t, ev2, "s2 while s1 leads")

	// s1 resigns: told deposed before s2 is elected, and sits out RetryPeriod.
	if err := b.e.Resign(context.Background(), s1.ID, "leader"); err != nil {
		t.Fatalf("Resign: %v", err)
	}
	if ev := next(t, ev1); ev.Type != wire.EventDeposed {
		t.Fatalf("s1 event %+v; want deposed", ev)
	}
	e2 := next(t, ev2)
	if e2.Type != wire.EventElected || tokenNum(t, e2.Grant.Token) <= tokenNum(t, e1.Grant.Token) {
		t.Fatalf("s2 event %+v; want elected with a token above %s", e2, e1.Grant.Token)
	}
	if err := b.e.Resign(context.Background(), s1.ID, "leader"); codeOf(err) != wire.CodeNotHeld {
		t.Errorf("Resign by a non-leader: %v; want %s", err, wire.CodeNotHeld)
	}

	// s2 resigns too: s1 is the only candidate but still sits out; the Lease stays free.
	if err := b.e.Resign(context.Background(), s2.ID, "leader"); err != nil {
		t.Fatal(err)
	}
	next(t, ev2) // deposed
	// Both sat out; s1 became eligible first (its pause ends first).
	b.step(DefaultRetryPeriod)
	if ev := next(t, ev1); ev.Type != wire.EventElected {
		t.Fatalf("s1 event %+v; want elected again after its pause", ev)
	}

	// Leaving while leading deposes and releases; s2 takes over.
	if err := b.e.Leave(context.Background(), s1.ID, "leader"); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, ev1); ev.Type != wire.EventDeposed {
		t.Fatalf("s1 event %+v; want deposed on leave", ev)
	}
	if ev := next(t, ev2); ev.Type != wire.EventElected {
		t.Fatalf("s2 event %+v; want elected after s1 left", ev)
	}
	if err := b.e.Leave(context.Background(), s1.ID, "leader"); codeOf(err) != wire.CodeNotHeld {
		t.Errorf("Leave by a non-candidate: %v; want %s", err, wire.CodeNotHeld)
	}
}

func TestLeaseDeletedWhileHeld(t *testing.T) {
	b := newBed(t, "pod-a", nil, nil)
	s := b.open()
	evs := b.events(s.ID)
	if _, err := b.e.Join(s.ID, "e"); err != nil {
		t.Fatal(err)
	}
	first := next(t, evs)
	if first.Type != wire.EventElected {
		t.Fatalf("event %+v; want elected", first)
	}
	b.api.remove(first.Grant.Lease)
	if ev := next(t, evs); ev.Type != wire.EventDeposed {
		t.Fatalf("event %+v; want deposed after deletion", ev)
	}
	// Still a candidate: it recreates the Lease with a larger token.
	again := next(t, evs)
	if again.Type != wire.EventElected || tokenNum(t, again.Grant.Token) <= tokenNum(t, first.Grant.Token) {
		t.Fatalf("event %+v; want elected with a token above %s", again, first.Grant.Token)
	}
}

func TestRefusesLeaseOfAnotherName(t *testing.T) {
	api := newFakeAPI(t)
	l := foreignLease(wire.KindLock, "x", "", 15*time.Second)
	l.Annotations[AnnotationName] = "y" // as if "y" hashed to x's Lease name
	api.put(l)
	b := newBed(t, "pod-a", api, nil)
	s := b.open()
	for _, tc := range []struct {
		name string
		call func() error
	}{
		{"acquire", func() error {
			_, err := b.e.Acquire(context.Background(), s.ID, "x", wire.AcquireRequest{})
			return err
		}},
		{"state", func() error { _, err := b.e.State(wire.KindLock, "x"); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if codeOf(err) != wire.CodeInternal || !strings.Contains(err.Error(), "hash collision") {
				t.Errorf("got %v; want %s mentioning a hash collision", err, wire.CodeInternal)
			}
		})
	}
	if got := holderOfStored(api, l.Name); got != "" {
		t.Errorf("foreign Lease holder %q; want untouched", got)
	}
}

func TestNonNumericResourceVersionFailsClearly(t *testing.T) {
	api := newFakeAPI(t)
	b := newBed(t, "pod-a", api, nil)
	api.mu.Lock()
	api.rvText = func(r uint64) string { return "v" + strconv.FormatUint(r, 10) }
	api.mu.Unlock()
	s := b.open()
	_, err := b.e.Acquire(context.Background(), s.ID, "n", wire.AcquireRequest{})
	if codeOf(err) != wire.CodeInternal || !strings.Contains(err.Error(), "not a decimal integer") {
		t.Fatalf("Acquire: %v; want %s explaining the resourceVersion", err, wire.CodeInternal)
	}
}

func TestShutdownReleasesAndRefuses(t *testing.T) {
	b := newBed(t, "pod-a", nil, nil)
	s1, s2 := b.open(), b.open()
	g1 := b.mustAcquire(s1.ID, "a")
	g2 := b.mustAcquire(s2.ID, "b")
	waiter := b.acquire(s2.ID, "a", wire.AcquireRequest{})
	eventually(t, "waiter to queue", func() bool { return b.waiting(wire.KindLock, "a") == 1 })
	watchErr := make(chan error, 1)
	go func() {
		watchErr <- b.e.Watch(context.Background(), wire.KindLock, "a", func(wire.LockState) error { return nil })
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.e.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	for _, lease := range []string{g1.Lease, g2.Lease} {
		if h := holderOfStored(b.api, lease); h != "" {
			t.Errorf("Lease %s holder %q after shutdown; want released", lease, h)
		}
	}
	if o := wait(t, waiter); codeOf(o.err) != wire.CodeShuttingDown {
		t.Errorf("waiter: %v; want %s", o.err, wire.CodeShuttingDown)
	}
	if err := wait(t, watchErr); codeOf(err) != wire.CodeShuttingDown {
		t.Errorf("watch: %v; want %s", err, wire.CodeShuttingDown)
	}
	if _, err := b.e.OpenSession(wire.OpenSessionRequest{}); codeOf(err) != wire.CodeShuttingDown {
		t.Errorf("OpenSession: %v; want %s", err, wire.CodeShuttingDown)
	}
}

func TestHaltedSideCarIsTakenOverAfterLeaseDuration(t *testing.T) {
	api := newFakeAPI(t)
	a := newBed(t, "pod-a", api, nil)
	b := newBed(t, "pod-b", api, a.clock)
	sa, sb := a.open(), b.open()
	ga := a.mustAcquire(sa.ID, "shared")
	res := b.acquire(sb.ID, "shared", wire.AcquireRequest{})
	eventually(t, "b to see a's Lease", func() bool {
		holder, _ := b.observed(wire.KindLock, "shared")
		return holder == sa.Holder
	})
	a.step(DefaultRenewPeriod) // a renews once
	eventually(t, "b to see a's renewal", func() bool {
		_, at := b.observed(wire.KindLock, "shared")
		return at.Equal(b.clock.Now())
	})
	a.e.Halt()
	b.step(DefaultLeaseDuration)
	quiet(t, res, "b before a's Lease expired")
	b.step(time.Millisecond)
	o := wait(t, res)
	if o.err != nil {
		t.Fatalf("b's Acquire: %v", o.err)
	}
	if tokenNum(t, o.g.Token) <= tokenNum(t, ga.Token) {
		t.Errorf("b's token %s; want above a's %s", o.g.Token, ga.Token)
	}
}

func TestStateAndWatch(t *testing.T) {
	b := newBed(t, "pod-a", nil, nil)
	s := b.open()
	st, err := b.e.State(wire.KindElection, "w")
	if err != nil || st.Held || st.Lease != LeaseName(wire.KindElection, "w") {
		t.Fatalf("State of an unused election: %+v, %v; want free with its Lease name", st, err)
	}
	states := make(chan wire.LockState, 10)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go b.e.Watch(ctx, wire.KindElection, "w", func(st wire.LockState) error { states <- st; return nil })
	if first := wait(t, states); first.Held {
		t.Fatalf("first watched state %+v; want free", first)
	}
	if _, err := b.e.Join(s.ID, "w"); err != nil {
		t.Fatal(err)
	}
	led := wait(t, states)
	if !led.Held || led.Holder != s.Holder || led.Token == "" || led.Name != "w" {
		t.Fatalf("watched state %+v; want held by %s with a token", led, s.Holder)
	}
	st, err = b.e.State(wire.KindElection, "w")
	if err != nil || st.Holder != s.Holder || st.Token != led.Token {
		t.Errorf("State %+v, %v; want the watched state", st, err)
	}
	if err := b.e.Resign(context.Background(), s.ID, "w"); err != nil {
		t.Fatal(err)
	}
	if free := wait(t, states); free.Held || free.Token != led.Token {
		t.Fatalf("watched state %+v; want free, keeping the last token %s", free, led.Token)
	}
}

func TestMetricsCountGrantsAndHolds(t *testing.T) {
	b := newBed(t, "pod-a", nil, nil)
	s := b.open()
	b.mustAcquire(s.ID, "m1")
	b.mustAcquire(s.ID, "m2")
	if _, err := b.e.Join(s.ID, "m3"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the election", func() bool { return b.e.snapshot().holds[wire.KindElection] == 1 })
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
			t.Errorf("%s%v = %v; want %v", tc.metric, tc.labels, got, tc.want)
		}
	}
	if got := metricValue(t, b, "metaparticle_sync_grants_total", "kind", "lock"); got != 2 {
		t.Errorf("grants_total{kind=lock} = %v; want 2", got)
	}
	if got := b.e.snapshot().holds[wire.KindLock]; got != 2 {
		t.Errorf("holds{kind=lock} = %d; want 2", got)
	}
}

// metricValue gathers b's registry and returns the value of the named metric with the given
// label pairs (a histogram's sample count).
func metricValue(t *testing.T, b *bed, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := b.reg.Gather()
	if err != nil {
		t.Fatalf("gathering metrics: %v", err)
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
	api := newFakeAPI(t)
	api.put(foreignLease(wire.KindLock, "busy", "pod-z/0123", 15*time.Second))
	b := newBed(t, "pod-a", api, nil)
	s := b.open()
	for _, tc := range []struct {
		name string
		run  func()
	}{
		{"waiter timed out", func() {
			res := b.acquire(s.ID, "busy", wire.AcquireRequest{TimeoutMillis: 1000})
			eventually(t, "the waiter to queue", func() bool { return b.waiting(wire.KindLock, "busy") == 1 })
			b.step(time.Second)
			if o := wait(t, res); codeOf(o.err) != wire.CodeNotAcquired {
				t.Fatalf("Acquire: %v; want %s", o.err, wire.CodeNotAcquired)
			}
		}},
		{"watcher left", func() {
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
		{"candidate left", func() {
			if _, err := b.e.Join(s.ID, "busy"); err != nil {
				t.Fatal(err)
			}
			if err := b.e.Leave(context.Background(), s.ID, "busy"); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.run()
			eventually(t, "every worker to exit", func() bool { return b.e.running.Load() == 0 })
		})
	}
}
