package server

import (
	"context"
	"fmt"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/metaparticle-io/sync/elector"
	"github.com/metaparticle-io/sync/elector/internal/leasefake"
	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/internal/testenv"
	"github.com/metaparticle-io/sync/wire"
	"github.com/prometheus/client_golang/prometheus"
)

// The integration tests run side-cars (Engine and lock API server) in this process against one
// real kube-apiserver and etcd, each with its own client, informer and Pod identity, and talk to
// them over HTTP like applications. They measure and log latencies; they assert order and
// safety, never speed.
//
// They run on real sockets and real time, outside synctest bubbles, so they wait on events:
// a value on a channel (await), a version of a Lease from a watch of the real API server
// (leaseWatch, renewedAfter), an event or a state from a side-car's stream. Each such wait has a
// real-time deadline, safetyNet, as a net for a failing test only; no assertion that something
// did not happen rests on a time window. What the side-cars offer no notification for (their
// queue gauges, their view of a deleted Lease, /readyz) is polled with eventually.

// safetyNet bounds every wait of the integration tests: a test that passes never reaches it.
const safetyNet = 30 * time.Second

// await returns what ch delivers, failing the test if nothing does within safetyNet.
func await[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(safetyNet):
		t.Fatalf("got nothing within %s; want %s", safetyNet, what)
		var zero T
		return zero
	}
}

// eventually polls cond in real time until it holds, failing after safetyNet: for states that
// are only observable by polling. It asserts nothing about the time it takes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(safetyNet)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: got nothing within %s; want it to happen", what, safetyNet)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// leaseWatch streams the versions of Lease name in ns written after resourceVersion rv, as the
// real API server's watch delivers them, in order; the channel closes when the watch ends (ctx
// ends it).
func leaseWatch(t *testing.T, ctx context.Context, ns, name, rv string) <-chan *coordinationv1.Lease {
	t.Helper()
	w, err := env.Clientset.CoordinationV1().Leases(ns).Watch(ctx, metav1.ListOptions{
		FieldSelector:   fields.OneTermEqualSelector("metadata.name", name).String(),
		ResourceVersion: rv,
	})
	if err != nil {
		t.Fatalf("watching Lease %s from %s: got %v; want a watch", name, rv, err)
	}
	ch := make(chan *coordinationv1.Lease, 1000)
	go func() {
		defer close(ch)
		defer w.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case ev, ok := <-w.ResultChan():
				if !ok {
					return
				}
				if l, isLease := ev.Object.(*coordinationv1.Lease); isLease && (ev.Type == watch.Added || ev.Type == watch.Modified) {
					ch <- l
				}
			}
		}
	}()
	return ch
}

// getLease returns the stored Lease name in ns.
func getLease(t *testing.T, ns, name string) *coordinationv1.Lease {
	t.Helper()
	l, err := env.Clientset.CoordinationV1().Leases(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("getting Lease %s: got %v; want it", name, err)
	}
	return l
}

// renewedAfter reads versions from a leaseWatch until one held by holder has a renewTime after
// since (a renewal), and returns it. A version with another holder fails the test.
func renewedAfter(t *testing.T, versions <-chan *coordinationv1.Lease, holder string, since time.Time) *coordinationv1.Lease {
	t.Helper()
	for {
		l := await(t, versions, fmt.Sprintf("a renewal by %s after %s", holder, since.Format(time.StampMicro)))
		if l == nil {
			t.Fatalf("got the Lease watch ended; want a renewal by %s", holder)
		}
		if h := holderOf(l); h != holder {
			t.Fatalf("got Lease %s held by %q; want it renewed by %q", l.Name, h, holder)
		}
		if l.Spec.RenewTime != nil && l.Spec.RenewTime.After(since) {
			return l
		}
	}
}

// awaitRenewal returns once the holder of Lease name has renewed it after its stored version.
func awaitRenewal(t *testing.T, ns, name string) {
	t.Helper()
	l := getLease(t, ns, name)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	renewedAfter(t, leaseWatch(t, ctx, ns, name, l.ResourceVersion), holderOf(l), l.Spec.RenewTime.Time)
}

// awaitHeld returns the state of the election name once the side-car's watch of it reports it
// held.
func (c *apiClient) awaitHeld(name string) wire.ElectionState {
	c.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	states := ndjson[wire.ElectionState](c, ctx, wire.ElectionWatchPath(name))
	deadline := time.After(safetyNet)
	for {
		select {
		case st, ok := <-states:
			if !ok {
				c.t.Fatalf("got the watch of election %s ended; want a leader", name)
			}
			if st.v.Held {
				return st.v
			}
		case <-deadline:
			c.t.Fatalf("got election %s not held within %s; want a leader", name, safetyNet)
		}
	}
}

// fast is the timing of most integration tests: short, so that expiry paths run in seconds.
var fast = elector.Config{LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RenewPeriod: time.Second, RetryPeriod: 200 * time.Millisecond}

// sidecar is one side-car of an integration test.
type sidecar struct {
	pod   string
	e     *elector.Engine
	reg   *prometheus.Registry // the Engine's metrics
	srv   *httptest.Server
	c     *apiClient
	proxy *tcpProxy // non-nil when its API server connection can be cut
}

type sidecarOpt func(*rest.Config, *elector.Config)

// viaProxy routes the side-car's API server traffic through a proxy that the test can cut.
func viaProxy(p **tcpProxy, t *testing.T) sidecarOpt {
	return func(rc *rest.Config, _ *elector.Config) {
		u, err := url.Parse(rc.Host)
		if err != nil {
			t.Fatalf("parsing the API server's URL: got %v; want nil", err)
		}
		*p = newTCPProxy(t, u.Host)
		u.Host = (*p).addr()
		rc.Host = u.String()
		rc.Timeout = 0
	}
}

// asUser makes the side-car's client impersonate user (RBAC tests).
func asUser(user string) sidecarOpt {
	return func(rc *rest.Config, _ *elector.Config) { rc.Impersonate = rest.ImpersonationConfig{UserName: user} }
}

func startSidecar(t *testing.T, ns, pod string, cfg elector.Config, opts ...sidecarOpt) *sidecar {
	t.Helper()
	rc := rest.CopyConfig(env.Config)
	cfg.PodName, cfg.Namespace = pod, ns
	sc := &sidecar{pod: pod, reg: prometheus.NewRegistry()}
	for _, o := range opts {
		o(rc, &cfg)
	}
	e, err := elector.NewEngineForConfig(cfg, rc, elector.Options{Log: leasefake.Logger(t).WithValues("sidecar", pod), Registerer: sc.reg})
	if err != nil {
		t.Fatalf("NewEngineForConfig: got %v; want nil", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.Start(ctx); err != nil {
		t.Fatalf("starting side-car %s: got %v; want nil", pod, err)
	}
	sc.e = e
	sc.srv = httptest.NewServer(NewHandler(e))
	sc.c = newAPIClient(t, sc.srv.URL)
	t.Cleanup(func() {
		e.Halt()
		sc.srv.CloseClientConnections()
		sc.srv.Close()
	})
	return sc
}

// waiting returns the number of the side-car's lock waiters or election candidates not holding.
func (sc *sidecar) waiting(kind wire.Kind) int {
	return int(gauge(sc.c.t, sc.reg, "metaparticle_sync_waiting", kind))
}

// startSidecarProxied starts a side-car whose API server connection goes through a proxy.
func startSidecarProxied(t *testing.T, ns, pod string, cfg elector.Config) *sidecar {
	var p *tcpProxy
	sc := startSidecar(t, ns, pod, cfg, viaProxy(&p, t))
	sc.proxy = p
	return sc
}

func tokenOfGrant(t *testing.T, g wire.Grant) uint64 { t.Helper(); return tokenNum(t, g.Token) }

// stats summarises durations for the logs.
func stats(ds []time.Duration) string {
	if len(ds) == 0 {
		return "none"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	pct := func(p float64) time.Duration { return s[int(p*float64(len(s)-1))] }
	return fmt.Sprintf("n=%d min=%s p50=%s p90=%s p99=%s max=%s", len(s), s[0], pct(0.5), pct(0.9), pct(0.99), s[len(s)-1])
}

func TestIntegrationMutualExclusion(t *testing.T) {
	ns := env.Namespace(t)
	var clients []*apiClient
	var sessions []wire.Session
	for i := 0; i < 3; i++ {
		sc := startSidecar(t, ns, fmt.Sprintf("pod-%d", i), fast)
		for j := 0; j < 2; j++ { // two processes per Pod
			clients = append(clients, sc.c)
			sessions = append(sessions, sc.c.open(time.Minute))
		}
	}
	const rounds = 15
	var inside atomic.Int32
	var mu sync.Mutex
	var tokens []uint64
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := 0; r < rounds; r++ {
				g, err := clients[i].acquire(context.Background(), sessions[i].ID, "counter", wire.AcquireRequest{})
				if err != nil {
					t.Errorf("client %d: acquire: got %v; want a grant", i, err)
					return
				}
				if n := inside.Add(1); n != 1 {
					t.Errorf("client %d: got %d holders in the critical section; want 1", i, n)
				}
				mu.Lock()
				tokens = append(tokens, tokenOfGrant(t, g))
				mu.Unlock()
				time.Sleep(time.Millisecond)
				inside.Add(-1)
				if err := clients[i].release(sessions[i].ID, "counter"); err != nil {
					t.Errorf("client %d: release: got %v; want nil", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if len(tokens) != len(clients)*rounds {
		t.Fatalf("got %d grants; want %d", len(tokens), len(clients)*rounds)
	}
	for i := 1; i < len(tokens); i++ {
		if tokens[i] <= tokens[i-1] {
			t.Errorf("grant %d: got token %d after %d; want strictly increasing", i, tokens[i], tokens[i-1])
		}
	}
}

func TestIntegrationHandoffOnReleaseDoesNotWaitForExpiry(t *testing.T) {
	ns := env.Namespace(t)
	// With an hour-long lease, a handoff that waited for expiry would never finish.
	slow := elector.Config{LeaseDuration: time.Hour, RenewDeadline: 30 * time.Minute, RenewPeriod: 10 * time.Minute, RetryPeriod: time.Second}
	a := startSidecar(t, ns, "pod-a", slow)
	b := startSidecar(t, ns, "pod-b", slow)
	sa, sb := a.c.open(time.Minute), b.c.open(time.Minute)

	const handoffs = 200
	clients := []*apiClient{a.c, b.c}
	sessions := []wire.Session{sa, sb}
	holder := 0
	g := clients[0].mustAcquire(sa.ID, "ping-pong")
	last := tokenOfGrant(t, g)
	var latencies []time.Duration
	for i := 0; i < handoffs; i++ {
		next := 1 - holder
		got := make(chan acquireOutcome, 1)
		go func() {
			g, err := clients[next].acquire(context.Background(), sessions[next].ID, "ping-pong", wire.AcquireRequest{})
			got <- acquireOutcome{g, err}
		}()
		// Make sure the waiter is waiting before the release.
		eventually(t, "the waiter to queue", func() bool {
			return []*sidecar{a, b}[next].waiting(wire.KindLock) == 1
		})
		start := time.Now()
		if err := clients[holder].release(sessions[holder].ID, "ping-pong"); err != nil {
			t.Fatalf("handoff %d: release: got %v; want nil", i, err)
		}
		o := await(t, got, fmt.Sprintf("handoff %d: the waiter's grant", i))
		latencies = append(latencies, time.Since(start))
		if o.err != nil {
			t.Fatalf("handoff %d: acquire: got %v; want a grant", i, o.err)
		}
		if tok := tokenOfGrant(t, o.g); tok <= last {
			t.Fatalf("handoff %d: got token %d after %d; want strictly increasing", i, tok, last)
		} else {
			last = tok
		}
		holder = next
	}
	t.Logf("handoff latency across side-cars (release request start to the waiter's grant), %s", stats(latencies))
}

func TestIntegrationSessionDeathReleases(t *testing.T) {
	for _, tc := range []struct {
		name string
		ttl  time.Duration
		// kill ends the holder's session and returns when the cause happened.
		kill func(c *apiClient, s wire.Session, cancelStream func(), opened time.Time) time.Time
	}{
		{"event stream closed", time.Minute, func(_ *apiClient, _ wire.Session, cancel func(), _ time.Time) time.Time {
			now := time.Now()
			cancel()
			return now
		}},
		{"keep-alive missed", wire.MinSessionTTL, func(_ *apiClient, _ wire.Session, _ func(), opened time.Time) time.Time {
			return opened.Add(wire.MinSessionTTL) // no keep-alive after opening
		}},
		{"session deleted", time.Minute, func(c *apiClient, s wire.Session, _ func(), _ time.Time) time.Time {
			now := time.Now()
			if err := c.call(context.Background(), "DELETE", wire.SessionPath(s.ID), nil, nil); err != nil {
				c.t.Fatalf("closing the session: got %v; want nil", err)
			}
			return now
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := env.Namespace(t)
			a := startSidecar(t, ns, "pod-a", fast)
			b := startSidecar(t, ns, "pod-b", fast)
			opened := time.Now()
			sa := a.c.open(tc.ttl)
			sb := b.c.open(time.Minute)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tc.ttl == time.Minute {
				a.c.events(ctx, sa.ID)
			}
			ga := a.c.mustAcquire(sa.ID, "job")
			got := make(chan stamped[acquireOutcome], 1)
			go func() {
				g, err := b.c.acquire(context.Background(), sb.ID, "job", wire.AcquireRequest{})
				got <- stamped[acquireOutcome]{acquireOutcome{g, err}, time.Now()}
			}()
			eventually(t, "b to wait", func() bool { return b.waiting(wire.KindLock) == 1 })
			cause := tc.kill(a.c, sa, cancel, opened)
			o := await(t, got, "b's grant after a's session ended")
			if o.v.err != nil {
				t.Fatalf("b's acquire: got %v; want a grant", o.v.err)
			}
			if tokenOfGrant(t, o.v.g) <= tokenOfGrant(t, ga) {
				t.Errorf("got b's token %s; want above a's %s", o.v.g.Token, ga.Token)
			}
			t.Logf("%s: the other side-car acquired %s after the session's end", tc.name, o.at.Sub(cause).Round(100*time.Microsecond))
		})
	}
}

func TestIntegrationKilledSideCarIsTakenOverAfterLeaseDuration(t *testing.T) {
	ns := env.Namespace(t)
	a := startSidecar(t, ns, "pod-a", fast)
	b := startSidecar(t, ns, "pod-b", fast)
	sa, sb := a.c.open(time.Minute), b.c.open(time.Minute)
	ga := a.c.mustAcquire(sa.ID, "crash")
	// Every version of the Lease from a's grant on, in order: a's renewals, then b's takeover.
	granted := getLease(t, ns, ga.Lease)
	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	versions := leaseWatch(t, wctx, ns, ga.Lease, granted.ResourceVersion)
	lastRenew := renewedAfter(t, versions, ga.Holder, granted.Spec.RenewTime.Time).Spec.RenewTime.Time // a renewed at least once
	got := make(chan stamped[acquireOutcome], 1)
	go func() {
		g, err := b.c.acquire(context.Background(), sb.ID, "crash", wire.AcquireRequest{})
		got <- stamped[acquireOutcome]{acquireOutcome{g, err}, time.Now()}
	}()
	eventually(t, "b to wait", func() bool { return b.waiting(wire.KindLock) == 1 })

	killed := time.Now()
	a.e.Halt() // no release: as if the process died
	a.srv.CloseClientConnections()

	o := await(t, got, "b's grant after a's side-car was killed")
	if o.v.err != nil {
		t.Fatalf("b's acquire: got %v; want a grant", o.v.err)
	}
	// a's last renewal is the last version a wrote before b's takeover, whenever it landed
	// (one in flight at the kill may land after it).
	for took := false; !took; {
		l := await(t, versions, "b's takeover in the Lease's history")
		switch h := holderOf(l); {
		case l == nil:
			t.Fatalf("got the Lease watch ended; want b's takeover")
		case h == ga.Holder:
			lastRenew = l.Spec.RenewTime.Time
		case h == o.v.g.Holder:
			took = true
		default:
			t.Fatalf("got Lease %s held by %q between a and b; want %q or %q", l.Name, h, ga.Holder, o.v.g.Holder)
		}
	}
	// Safety, not speed: b may take over only a full lease duration after a's last renewal
	// started (a's renewTime is written from this process's clock, like b's observation).
	if earliest := lastRenew.Add(fast.LeaseDuration); o.at.Before(earliest) {
		t.Errorf("got b's grant at %s; want it no earlier than a's last renewal (%s) plus the lease duration", o.at.Format(time.StampMicro), lastRenew.Format(time.StampMicro))
	}
	if tokenOfGrant(t, o.v.g) <= tokenOfGrant(t, ga) {
		t.Errorf("got b's token %s; want above a's %s", o.v.g.Token, ga.Token)
	}
	t.Logf("failover after a killed side-car (lease duration %s): %s after the kill, %s after its last renewal",
		fast.LeaseDuration, o.at.Sub(killed).Round(time.Millisecond), o.at.Sub(lastRenew).Round(time.Millisecond))
}

func TestIntegrationLostBeforeStolen(t *testing.T) {
	for _, kind := range []wire.Kind{wire.KindLock, wire.KindElection} {
		t.Run(string(kind), func(t *testing.T) {
			ns := env.Namespace(t)
			a := startSidecarProxied(t, ns, "pod-a", fast)
			b := startSidecar(t, ns, "pod-b", fast)
			sa, sb := a.c.open(time.Minute), b.c.open(time.Minute)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			evA := a.c.events(ctx, sa.ID)
			evB := b.c.events(ctx, sb.ID)

			var tokenA uint64
			if kind == wire.KindLock {
				tokenA = tokenOfGrant(t, a.c.mustAcquire(sa.ID, "x"))
			} else {
				if err := a.c.join(sa.ID, "x"); err != nil {
					t.Fatalf("a's join: got %v; want nil", err)
				}
				ev := await(t, evA, "a's elected event")
				if ev.v.Type != wire.EventElected {
					t.Fatalf("got a's event %+v; want elected", ev.v)
				}
				tokenA = tokenOfGrant(t, *ev.v.Grant)
			}
			awaitRenewal(t, ns, contract.LeaseName(kind, "x")) // a renews at least once

			stolen := make(chan stamped[wire.Grant], 1)
			if kind == wire.KindLock {
				go func() {
					g, err := b.c.acquire(context.Background(), sb.ID, "x", wire.AcquireRequest{})
					if err != nil {
						t.Errorf("b's acquire: got %v; want a grant", err)
						return
					}
					stolen <- stamped[wire.Grant]{g, time.Now()}
				}()
				eventually(t, "b to wait", func() bool { return b.waiting(wire.KindLock) == 1 })
			} else {
				if err := b.c.join(sb.ID, "x"); err != nil {
					t.Fatalf("b's join: got %v; want nil", err)
				}
				go func() {
					for ev := range evB {
						if ev.v.Type == wire.EventElected {
							stolen <- stamped[wire.Grant]{*ev.v.Grant, ev.at}
							return
						}
					}
				}()
			}

			cut := time.Now()
			a.proxy.cutOff()
			want := wire.EventLost
			if kind == wire.KindElection {
				want = wire.EventDeposed
			}
			lost := await(t, evA, fmt.Sprintf("a's %s event", want))
			if lost.v.Type != want {
				t.Fatalf("got a's event %+v; want %s", lost.v, want)
			}
			took := await(t, stolen, "b's grant")
			if !lost.at.Before(took.at) {
				t.Errorf("got a told %s at %s, b granted at %s; want a told first", want, lost.at.Format(time.StampMicro), took.at.Format(time.StampMicro))
			}
			if tokenOfGrant(t, took.v) <= tokenA {
				t.Errorf("got b's token %s; want above a's %d", took.v.Token, tokenA)
			}
			t.Logf("API server cut off from the holder: %s after %s, the other side-car took over %s after (margin %s; renew deadline %s, lease duration %s)",
				want, lost.at.Sub(cut).Round(time.Millisecond), took.at.Sub(cut).Round(time.Millisecond),
				took.at.Sub(lost.at).Round(time.Millisecond), fast.RenewDeadline, fast.LeaseDuration)
		})
	}
}

func TestIntegrationElections(t *testing.T) {
	ns := env.Namespace(t)
	var scs []*sidecar
	var sessions []wire.Session
	var events []<-chan stamped[wire.Event]
	var watches []<-chan stamped[wire.ElectionState]
	cancels := map[int]func(){}
	for i := 0; i < 3; i++ {
		sc := startSidecar(t, ns, fmt.Sprintf("pod-%d", i), fast)
		s := sc.c.open(time.Minute)
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		cancels[i] = cancel
		wctx, wcancel := context.WithCancel(context.Background())
		t.Cleanup(wcancel)
		scs, sessions = append(scs, sc), append(sessions, s)
		events = append(events, sc.c.events(ctx, s.ID))
		watches = append(watches, ndjson[wire.ElectionState](sc.c, wctx, wire.ElectionWatchPath("leader")))
	}
	byHolder := map[string]int{}
	for i, s := range sessions {
		byHolder[s.Holder] = i
		if err := scs[i].c.join(s.ID, "leader"); err != nil {
			t.Fatalf("join of pod-%d: got %v; want nil", i, err)
		}
	}
	// elected waits for the next election among the candidates in alive, and checks that no
	// other candidate was elected too.
	var leaders []string
	var tokens []uint64
	elected := func(alive ...int) (int, time.Time) {
		t.Helper()
		type win struct {
			i  int
			ev stamped[wire.Event]
		}
		got := make(chan win, len(alive))
		stop := make(chan struct{})
		defer close(stop)
		for _, i := range alive {
			go func() {
				for {
					select {
					case ev, ok := <-events[i]:
						if !ok {
							return
						}
						if ev.v.Type == wire.EventElected {
							got <- win{i, ev}
							return
						}
					case <-stop:
						return
					}
				}
			}()
		}
		w := await(t, got, fmt.Sprintf("an election among %v", alive))
		leaders = append(leaders, sessions[w.i].Holder)
		tokens = append(tokens, tokenOfGrant(t, *w.ev.v.Grant))
		return w.i, w.ev.at
	}
	all := []int{0, 1, 2}
	others := func(except ...int) []int {
		return slices.DeleteFunc(slices.Clone(all), func(i int) bool { return slices.Contains(except, i) })
	}

	l1, _ := elected(all...)

	// 1. The leader resigns: another candidate takes over, the resigner is told first.
	start := time.Now()
	if err := scs[l1].c.resign(sessions[l1].ID, "leader"); err != nil {
		t.Fatalf("resign: got %v; want nil", err)
	}
	if ev := await(t, events[l1], "the resigner's deposed event"); ev.v.Type != wire.EventDeposed {
		t.Fatalf("got the resigner's event %+v; want deposed", ev.v)
	}
	l2, at := elected(others(l1)...)
	t.Logf("resign: %s elected %s after the resign request", sessions[l2].Holder, at.Sub(start).Round(100*time.Microsecond))

	// 2. The leader's process dies (its event stream closes): the side-car releases at once.
	start = time.Now()
	cancels[l2]()
	l3, at := elected(others(l2)...)
	t.Logf("leader process died: %s elected %s later", sessions[l3].Holder, at.Sub(start).Round(100*time.Microsecond))

	// 3. The leader's side-car dies: the last candidate waits out the lease duration.
	start = time.Now()
	scs[l3].e.Halt()
	scs[l3].srv.CloseClientConnections()
	l4, at := elected(others(l2, l3)...)
	t.Logf("leader side-car died: %s elected %s later (lease duration %s)", sessions[l4].Holder, at.Sub(start).Round(time.Millisecond), fast.LeaseDuration)

	for i := 1; i < len(tokens); i++ {
		if tokens[i] <= tokens[i-1] {
			t.Errorf("got leader %d's token %d after %d; want strictly increasing", i, tokens[i], tokens[i-1])
		}
	}
	// Every follower saw every change of leader, in order. The dead side-car's watch stopped at
	// its death; its sequence must be a prefix.
	for i := range watches {
		var seen []string
		deadline := time.After(safetyNet)
	collect:
		for !slices.Equal(seen, leaders) {
			select {
			case st, ok := <-watches[i]:
				if !ok {
					break collect
				}
				if st.v.Holder != "" && (len(seen) == 0 || seen[len(seen)-1] != st.v.Holder) {
					seen = append(seen, st.v.Holder)
				}
			case <-deadline:
				break collect
			}
		}
		want := leaders
		if i == l3 {
			want = leaders[:min(len(seen), len(leaders))]
		}
		if !slices.Equal(seen, want) {
			t.Errorf("got the watcher on pod-%d seeing leaders %q; want %q", i, seen, want)
		}
	}
}

func TestIntegrationTokensIncreaseAcrossDeleteAndRestart(t *testing.T) {
	ns := env.Namespace(t)
	a := startSidecar(t, ns, "pod-a", fast)
	s := a.c.open(time.Minute)
	g1 := a.c.mustAcquire(s.ID, "fenced")
	if err := a.c.release(s.ID, "fenced"); err != nil {
		t.Fatalf("release: got %v; want nil", err)
	}
	leases := env.Clientset.CoordinationV1().Leases(ns)
	if err := leases.Delete(context.Background(), g1.Lease, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("deleting Lease %s: got %v; want nil", g1.Lease, err)
	}
	eventually(t, "the side-car to see the deletion and forget the name", func() bool {
		return sample(t, a.reg, "metaparticle_sync_lease_watches", "", "") == 0
	})
	g2 := a.c.mustAcquire(s.ID, "fenced") // the create path
	if err := a.c.release(s.ID, "fenced"); err != nil {
		t.Fatalf("release: got %v; want nil", err)
	}
	// The side-car restarts (same Pod name, new process).
	a.e.Halt()
	a2 := startSidecar(t, ns, "pod-a", fast)
	g3 := a2.c.mustAcquire(a2.c.open(time.Minute).ID, "fenced") // the update path
	t1, t2, t3 := tokenOfGrant(t, g1), tokenOfGrant(t, g2), tokenOfGrant(t, g3)
	if !(t1 < t2 && t2 < t3) {
		t.Errorf("got tokens %d, %d (after delete and recreate), %d (after restart); want strictly increasing", t1, t2, t3)
	}
	l := getLease(t, ns, g3.Lease)
	if l.Annotations[contract.AnnotationToken] != g3.Token {
		t.Errorf("got token annotation %q; want %q", l.Annotations[contract.AnnotationToken], g3.Token)
	}
}

// TestIntegrationForeignLeaseFailsTheAcquire: a Lease of the lock's name that the side-car does
// not manage (made by something else, or its labels removed by hand) is invisible to its
// informer. The old side-car's waiters waited for a version that never came; now every acquire
// fails at once with foreign_lease, naming the Lease and the fix, for a Lease made by someone
// else and for one of ours whose labels were removed while it was held.
func TestIntegrationForeignLeaseFailsTheAcquire(t *testing.T) {
	ns := env.Namespace(t)
	a := startSidecar(t, ns, "pod-a", fast)
	leases := env.Clientset.CoordinationV1().Leases(ns)
	ctx := context.Background()

	made := contract.LeaseName(wire.KindLock, "made-elsewhere")
	if _, err := leases.Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: made}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating Lease %s: got %v; want nil", made, err)
	}
	// Held by a session, then unlabelled by hand.
	s := a.c.open(time.Minute)
	g := a.c.mustAcquire(s.ID, "unlabelled")
	l := getLease(t, ns, g.Lease)
	delete(l.Labels, contract.LabelManagedBy)
	if _, err := leases.Update(ctx, l, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("removing the labels of Lease %s: got %v; want nil", g.Lease, err)
	}
	eventually(t, "the side-car to lose sight of the unlabelled Lease", func() bool {
		_, known, err := a.e.Observe(wire.KindLock, "unlabelled")
		return err == nil && !known
	})

	for _, tc := range []struct {
		name, lease string
		req         wire.AcquireRequest
	}{
		{"made-elsewhere", made, wire.AcquireRequest{TimeoutMillis: time.Hour.Milliseconds()}},
		{"made-elsewhere", made, wire.AcquireRequest{Try: true}},
		{"unlabelled", g.Lease, wire.AcquireRequest{TimeoutMillis: time.Hour.Milliseconds()}},
	} {
		other := a.c.open(time.Minute)
		_, err := a.c.acquire(ctx, other.ID, tc.name, tc.req)
		if code := wire.CodeOf(err); code != wire.CodeForeignLease || !strings.Contains(err.Error(), tc.lease) {
			t.Errorf("acquire %q %+v: got %v (%s); want %s naming Lease %s", tc.name, tc.req, err, code, wire.CodeForeignLease, tc.lease)
		}
	}
}

func TestIntegrationNameMapping(t *testing.T) {
	ns := env.Namespace(t)
	a := startSidecar(t, ns, "pod-a", fast)
	s := a.c.open(time.Minute)
	names := []string{"Foo", "foo", "foo!", "foo ", "a/b", "a%2Fb", ".", "..", "锁", "x?y#z", strings.Repeat("n", wire.MaxNameLength),
		strings.TrimPrefix(contract.LeaseName(wire.KindLock, "foo"), "lock-")}
	for _, n := range names {
		g := a.c.mustAcquire(s.ID, n)
		if g.Name != n || g.Lease != contract.LeaseName(wire.KindLock, n) {
			t.Errorf("got grant %+v; want name %q on Lease %s", g, n, contract.LeaseName(wire.KindLock, n))
		}
		st, err := a.c.state(wire.KindLock, n)
		if err != nil || !st.Held || st.Holder != s.Holder || st.Name != n {
			t.Errorf("state of %q: got %+v, %v; want held by %s", n, st, err, s.Holder)
		}
	}
	if err := a.c.join(s.ID, "foo"); err != nil { // an election and a lock with the same name
		t.Fatalf("join: got %v; want nil", err)
	}
	a.c.awaitHeld("foo")
	if st, err := a.c.state(wire.KindElection, "foo"); err != nil || !st.Held {
		t.Fatalf("state of election foo: got %+v, %v; want held", st, err)
	}
	list, err := env.Clientset.CoordinationV1().Leases(ns).List(context.Background(), metav1.ListOptions{LabelSelector: contract.LabelManagedBy + "=" + contract.ManagedByValue})
	if err != nil {
		t.Fatalf("listing Leases: got %v; want nil", err)
	}
	if len(list.Items) != len(names)+1 {
		t.Errorf("got %d Leases labelled %s=%s; want %d", len(list.Items), contract.LabelManagedBy, contract.ManagedByValue, len(names)+1)
	}
	for _, l := range list.Items {
		kind := wire.Kind(l.Labels[contract.LabelKind])
		if got := contract.LeaseName(kind, l.Annotations[contract.AnnotationName]); got != l.Name {
			t.Errorf("Lease %s: got annotation %q mapping to %s; want it mapping to the Lease", l.Name, l.Annotations[contract.AnnotationName], got)
		}
	}
	for _, bad := range []string{"tab\tname", strings.Repeat("n", wire.MaxNameLength+1)} {
		_, err := a.c.acquire(context.Background(), s.ID, bad, wire.AcquireRequest{})
		if wire.CodeOf(err) != wire.CodeInvalidName {
			t.Errorf("acquire %q: got %v; want %s", bad, err, wire.CodeInvalidName)
		}
	}
}

func TestIntegrationShutdownHandsOverAtOnce(t *testing.T) {
	ns := env.Namespace(t)
	slow := elector.Config{LeaseDuration: time.Hour, RenewDeadline: 30 * time.Minute, RenewPeriod: 10 * time.Minute, RetryPeriod: time.Second}
	a := startSidecar(t, ns, "pod-a", slow)
	b := startSidecar(t, ns, "pod-b", slow)
	sa, sb := a.c.open(time.Minute), b.c.open(time.Minute)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	evB := b.c.events(ctx, sb.ID)
	evA := a.c.events(ctx, sa.ID)
	a.c.mustAcquire(sa.ID, "work")
	if err := a.c.join(sa.ID, "boss"); err != nil {
		t.Fatalf("a's join: got %v; want nil", err)
	}
	if ev := await(t, evA, "a's elected event"); ev.v.Type != wire.EventElected {
		t.Fatalf("got a's event %+v; want elected", ev.v)
	}
	got := make(chan stamped[error], 1)
	go func() {
		_, err := b.c.acquire(context.Background(), sb.ID, "work", wire.AcquireRequest{})
		got <- stamped[error]{err, time.Now()}
	}()
	if err := b.c.join(sb.ID, "boss"); err != nil {
		t.Fatalf("b's join: got %v; want nil", err)
	}
	eventually(t, "b to wait", func() bool { return b.waiting(wire.KindLock) == 1 })

	start := time.Now()
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	if err := a.e.Shutdown(sctx); err != nil {
		t.Fatalf("Shutdown: got %v; want nil", err)
	}
	shut := time.Since(start)
	if ev := await(t, evA, "a's closed event"); ev.v.Type != wire.EventClosed {
		t.Errorf("got a's event %+v; want closed", ev.v)
	}
	lock := await(t, got, "b's grant after a's shutdown")
	if lock.v != nil {
		t.Fatalf("b's acquire: got %v; want a grant", lock.v)
	}
	ev := await(t, evB, "b's elected event")
	if ev.v.Type != wire.EventElected {
		t.Fatalf("got b's event %+v; want elected", ev.v)
	}
	t.Logf("orderly shutdown took %s; the other side-car got the lock %s and the leadership %s after it began",
		shut.Round(100*time.Microsecond), lock.at.Sub(start).Round(100*time.Microsecond), ev.at.Sub(start).Round(100*time.Microsecond))
}

// TestIntegrationRBACRole runs a side-car as a service account bound to the Role of
// deploy/rbac/sidecar-role.yaml, proving the Role is enough, and one without it, which is not
// ready and says why.
// shippedRole reads the side-car's Role, deploy/rbac/sidecar-role.yaml.
func shippedRole(t *testing.T) rbacv1.Role {
	t.Helper()
	root, err := testenv.ModuleRoot()
	if err != nil {
		t.Fatalf("ModuleRoot: got %v; want nil", err)
	}
	data, err := os.ReadFile(filepath.Join(root, "deploy", "rbac", "sidecar-role.yaml"))
	if err != nil {
		t.Fatalf("reading the Role: got %v; want nil", err)
	}
	var role rbacv1.Role
	if err := yaml.UnmarshalStrict(data, &role); err != nil {
		t.Fatalf("deploy/rbac/sidecar-role.yaml: got %v; want a Role", err)
	}
	return role
}

func TestIntegrationRBACRole(t *testing.T) {
	ns := env.Namespace(t)
	role := shippedRole(t)
	ctx := context.Background()
	cs := env.Clientset
	for _, sa := range []string{"bound", "unbound"} {
		if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
			t.Fatalf("creating service account %s: got %v; want nil", sa, err)
		}
	}
	if _, err := cs.RbacV1().Roles(ns).Create(ctx, &role, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating the Role: got %v; want nil", err)
	}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: role.Name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "bound", Namespace: ns}},
	}
	if _, err := cs.RbacV1().RoleBindings(ns).Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating the RoleBinding: got %v; want nil", err)
	}

	a := startSidecar(t, ns, "pod-a", fast, asUser("system:serviceaccount:"+ns+":bound"))
	if err := a.e.Ready(); err != nil {
		t.Errorf("Ready with the Role: got %v; want nil", err)
	}
	s := a.c.open(time.Minute)
	g := a.c.mustAcquire(s.ID, "rbac") // create + stamp
	if err := a.c.release(s.ID, "rbac"); err != nil {
		t.Fatalf("release: got %v; want nil", err)
	}
	g2 := a.c.mustAcquire(s.ID, "rbac") // take over
	if tokenOfGrant(t, g2) <= tokenOfGrant(t, g) {
		t.Errorf("got tokens %s then %s; want increasing", g.Token, g2.Token)
	}
	if err := a.c.join(s.ID, "rbac-election"); err != nil {
		t.Fatalf("join: got %v; want nil", err)
	}
	a.c.awaitHeld("rbac-election")
	if st, err := a.c.state(wire.KindElection, "rbac-election"); err != nil || !st.Held {
		t.Fatalf("state of election rbac-election: got %+v, %v; want held", st, err)
	}

	// Without the Role the informer cannot list, and readiness says what to do.
	rc := rest.CopyConfig(env.Config)
	rc.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + ns + ":unbound"}
	e, err := elector.NewEngineForConfig(elector.Config{PodName: "pod-b", Namespace: ns}, rc, elector.Options{Log: leasefake.Logger(t)})
	if err != nil {
		t.Fatalf("NewEngineForConfig: got %v; want nil", err)
	}
	defer e.Halt()
	// Start cannot succeed; it returns once the test, having seen the informer's first failed
	// list in Ready, ends its context.
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	started := make(chan error, 1)
	go func() { started <- e.Start(sctx) }()
	eventually(t, "Ready to report the informer's error", func() bool {
		err := e.Ready()
		return err != nil && !strings.Contains(err.Error(), "has not synced yet")
	})
	err = e.Ready()
	if wire.CodeOf(err) != wire.CodeUnavailable || !strings.Contains(err.Error(), "deploy/rbac/sidecar-role.yaml") {
		t.Errorf("Ready without the Role: got %v; want unavailable, pointing at the Role", err)
	}
	cancel()
	if err := await(t, started, "Start's return"); err == nil {
		t.Errorf("Start without the Role: got nil; want it unable to sync")
	}
}
