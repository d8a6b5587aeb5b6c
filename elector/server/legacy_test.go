package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/metaparticle-io/sync/elector"
	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/wire"
	"k8s.io/utils/ptr"
)

// legacyClient replays the original SDKs' requests (python/metaparticle_sync/lock.py of
// metaparticle-io/sync, 2017; the JavaScript, Java and .NET SDKs send the same sequence):
//
//   - acquire: GET /locks/<name>; on 404 or 200, PUT /locks/<name>; 200 means held. Otherwise
//     sleep the interval (10 s) and start again; a non-blocking acquire returns false instead.
//   - while held, every interval: GET; on 200, PUT; anything but 200 means the lock is lost.
//   - release: stop heartbeating (the original had no release request).
//
// The PUT has no body. Every request accepts application/json, as Java's Unirest and .NET's
// HttpClient did.
type legacyClient struct {
	t        *testing.T
	base     string
	hc       *http.Client // nil: http.DefaultClient
	name     string
	interval time.Duration
}

// legacyReply is one answer of the side-car.
type legacyReply struct {
	status int
	raw    string
	lock   legacyLock
}

func (c *legacyClient) do(method string) legacyReply {
	c.t.Helper()
	req, err := http.NewRequest(method, c.base+LegacyPathPrefix+c.name, nil)
	if err != nil {
		c.t.Fatalf("NewRequest(%s): got %v; want nil", method, err)
	}
	req.Header.Set("Accept", "application/json")
	hc := c.hc
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: got %v; want a response", method, req.URL, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatalf("%s %s: reading the body: got %v; want nil", method, req.URL, err)
	}
	r := legacyReply{status: resp.StatusCode, raw: string(data)}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		c.t.Errorf("%s %s: got Content-Type %q; want application/json (Unirest parses every body as JSON)", method, req.URL, ct)
	}
	if r.status == http.StatusOK || r.status == http.StatusConflict {
		dec := json.NewDecoder(strings.NewReader(r.raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&r.lock); err != nil {
			c.t.Errorf("%s %s: got %d body %s (%v); want a lock object", method, req.URL, r.status, r.raw, err)
		}
	}
	return r
}

func (c *legacyClient) get() legacyReply { c.t.Helper(); return c.do(http.MethodGet) }
func (c *legacyClient) put() legacyReply { c.t.Helper(); return c.do(http.MethodPut) }

// tryAcquire is the original's _acquire_lock: GET, then PUT on 404 or 200. It returns the last
// reply.
func (c *legacyClient) tryAcquire() legacyReply {
	c.t.Helper()
	r := c.get()
	if r.status == http.StatusNotFound || r.status == http.StatusOK {
		r = c.put()
	}
	return r
}

// heartbeat is one round of the original's maintainer thread: GET, then PUT on 200. Anything
// but 200 at the end means the lock is lost.
func (c *legacyClient) heartbeat() legacyReply {
	c.t.Helper()
	r := c.get()
	if r.status == http.StatusOK {
		r = c.put()
	}
	return r
}

// acquire is the original's blocking acquire: tryAcquire every interval until it succeeds, or
// until stop is closed (false). Every 409 reply is passed to onConflict.
func (c *legacyClient) acquire(stop <-chan struct{}, onConflict func(legacyReply)) bool {
	for {
		r := c.tryAcquire()
		switch r.status {
		case http.StatusOK:
			return true
		case http.StatusConflict:
			if onConflict != nil {
				onConflict(r)
			}
		default:
			c.t.Errorf("acquire: got status %d (%s); want 200 or 409", r.status, r.raw)
		}
		select {
		case <-stop:
			return false
		case <-time.After(c.interval):
		}
	}
}

// legacyHolder is a legacy client's hold: heartbeats in the background.
type legacyHolder struct {
	stop, done, lost chan struct{}
	beat             chan struct{} // one value per successful heartbeat (room for 1000)
	once             sync.Once
}

// hold heartbeats every interval in the background, like the original's maintainer thread,
// until release is called or a heartbeat fails (lost is closed).
func (c *legacyClient) hold() *legacyHolder {
	h := &legacyHolder{stop: make(chan struct{}), done: make(chan struct{}), lost: make(chan struct{}), beat: make(chan struct{}, 1000)}
	go func() {
		defer close(h.done)
		for {
			select {
			case <-h.stop:
				return
			case <-time.After(c.interval):
			}
			if r := c.heartbeat(); r.status != http.StatusOK {
				c.t.Logf("legacy %s: heartbeat answered %d: lost", c.base, r.status)
				close(h.lost)
				return
			}
			select {
			case h.beat <- struct{}{}:
			default:
			}
		}
	}()
	return h
}

// release stops heartbeating, which is all the original's release did, and returns once the
// last heartbeat is over.
func (h *legacyHolder) release() {
	h.once.Do(func() { close(h.stop) })
	<-h.done
}

func parseLegacyTime(t *testing.T, s string) time.Time {
	t.Helper()
	tm, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t.Fatalf("got expiry %q (%v); want ISO 8601", s, err)
	}
	return tm
}

// legacyBed is a side-car on the fake API whose lock API, legacy protocol included, is served
// by NewHandler, so with the original's 30 s TTL, in the test's bubble.
type legacyBed struct {
	*bed
	srv *pipeServer
}

// newLegacyBed starts a side-car for pod, on the fake API and clock of other if given.
func newLegacyBed(t *testing.T, pod string, other *legacyBed) *legacyBed {
	var b *bed
	if other == nil {
		b = newBed(t, pod, nil, nil)
	} else {
		b = newBed(t, pod, other.api, other.clock)
	}
	return &legacyBed{bed: b, srv: newPipeServer(t, NewHandler(b.e))}
}

// client returns a legacy client of the side-car with the original's interval, which the test
// waits out by moving the fake clock (steps); the unit tests never call acquire or hold, which
// sleep on the bubble's clock, not on the Engine's.
func (b *legacyBed) client(name string) *legacyClient {
	return &legacyClient{t: b.t, base: b.srv.URL, hc: b.srv.Client, name: name, interval: 10 * time.Second}
}

// steps advances the fake clock by d in steps of one second, so that renewals run on time.
func (b *legacyBed) steps(d time.Duration) {
	for ; d > 0; d -= time.Second {
		b.step(min(d, time.Second))
	}
}

// TestLegacyProtocolOriginalTiming replays two Pods running the original SDK against the
// side-car with the original's timing, 10 s heartbeats and a 30 s TTL, on a fake clock.
func TestLegacyProtocolOriginalTiming(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := newLegacyBed(t, "pod-a", nil)
		b := newLegacyBed(t, "pod-b", a)
		ca, cb := a.client("test"), b.client("test")

		// Nobody has used the lock: the original's 404.
		r := ca.get()
		if r.status != http.StatusNotFound {
			t.Fatalf("GET of an unknown lock: got %d %s; want 404", r.status, r.raw)
		}
		var nf wire.Error
		if err := json.Unmarshal([]byte(r.raw), &nf); err != nil || nf.Message != "Not found." {
			t.Errorf("got 404 body %s; want the original's message \"Not found.\"", r.raw)
		}

		// Pod A takes it: GET 404, then PUT 200.
		start := a.clock.Now()
		r = ca.tryAcquire()
		if r.status != http.StatusOK {
			t.Fatalf("pod A's acquire: got %d %s; want 200", r.status, r.raw)
		}
		owner := r.lock.Spec.Owner
		if r.lock.Kind != "Lock" || r.lock.APIVersion != "metaparticle.io/v1" || r.lock.Metadata.Name != "test" ||
			r.lock.Metadata.Namespace != testNS || !strings.HasPrefix(owner, "pod-a/") {
			t.Errorf("got lock object %+v; want Lock test in %s owned by pod-a/<session>", r.lock, testNS)
		}
		if got := parseLegacyTime(t, r.lock.Spec.Expiry); !got.Equal(start.Add(LegacyTTL)) {
			t.Errorf("got expiry %s; want the PUT's time plus the 30s TTL, %s", got, start.Add(LegacyTTL))
		}
		// Once the side-cars have seen the Lease, pod A's GET shows its resourceVersion and pod
		// B's GET finds the lock.
		a.settle()
		if r := ca.get(); r.status != http.StatusOK || r.lock.Metadata.ResourceVersion == "" || r.lock.Spec.Owner != owner {
			t.Fatalf("pod A's GET: got %d %s; want 200 owned by %s with the Lease's resourceVersion", r.status, r.raw, owner)
		}
		if r := cb.get(); r.status != http.StatusOK {
			t.Fatalf("pod B's GET: got %d %s; want 200 (the Lease exists)", r.status, r.raw)
		}

		// Pod B polls: GET 200 (the lock exists), PUT 409 with the owner and expiry.
		conflictFromA := func(when string) {
			t.Helper()
			r := cb.tryAcquire()
			if r.status != http.StatusConflict || r.lock.Spec.Owner != owner || r.lock.Metadata.ResourceVersion == "" {
				t.Fatalf("%s: pod B's acquire: got %d %s; want 409 naming %s", when, r.status, r.raw, owner)
			}
			parseLegacyTime(t, r.lock.Spec.Expiry)
		}
		conflictFromA("while pod A holds")

		// Pod A heartbeats every 10 s for a minute, twice the TTL: it keeps the lock, with the
		// same identity, and pod B keeps getting 409.
		for i := 1; i <= 6; i++ {
			a.steps(ca.interval)
			r := ca.heartbeat()
			if r.status != http.StatusOK || r.lock.Spec.Owner != owner {
				t.Fatalf("heartbeat %d: got %d %s; want 200 owned by %s", i, r.status, r.raw, owner)
			}
			if got, want := parseLegacyTime(t, r.lock.Spec.Expiry), a.clock.Now().Add(LegacyTTL); !got.Equal(want) {
				t.Errorf("heartbeat %d: got expiry %s; want %s", i, got, want)
			}
			conflictFromA(fmt.Sprintf("after heartbeat %d", i))
		}

		// Pod A releases (stops heartbeating). 20 s later pod B still gets 409.
		lastPut := a.clock.Now()
		a.steps(20 * time.Second)
		conflictFromA("20s after pod A's last PUT")

		// Past the TTL, pod A's hold ends and is released, so pod B's next poll takes the lock.
		a.steps(LegacyTTL - 20*time.Second + time.Second)
		got := cb.tryAcquire()
		if got.status != http.StatusOK {
			t.Fatalf("pod B's acquire after pod A's TTL: got %d %s; want 200", got.status, got.raw)
		}
		if !strings.HasPrefix(got.lock.Spec.Owner, "pod-b/") {
			t.Errorf("got pod B's lock object %+v; want owned by pod-b/<session>", got.lock)
		}
		t.Logf("pod B took over %s after pod A's last PUT (TTL %s)", a.clock.Since(lastPut), LegacyTTL)

		// Now pod A polls in vain; once its side-car has seen pod B's grant, the 409 names pod B.
		a.settle()
		if r := ca.tryAcquire(); r.status != http.StatusConflict || r.lock.Spec.Owner != got.lock.Spec.Owner {
			t.Fatalf("pod A's acquire while pod B holds: got %d %s; want 409 naming %s", r.status, r.raw, got.lock.Spec.Owner)
		}
	})
}

// TestLegacyIdentityIsThePod shows the documented unsafety: every legacy caller of one side-car
// is the same owner. It also shows that legacy callers and version-1 sessions of the same Pod
// exclude each other, in both directions, and that a version-1 waiter takes the lock once the
// legacy holder stops.
func TestLegacyIdentityIsThePod(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := newLegacyBed(t, "pod-a", nil)
		first, second := a.client("shared"), a.client("shared")

		r1 := first.tryAcquire()
		r2 := second.tryAcquire()
		if r1.status != http.StatusOK || r2.status != http.StatusOK || r1.lock.Spec.Owner != r2.lock.Spec.Owner {
			t.Fatalf("two legacy callers of one Pod: got %d %s and %d %s; want both 200 with one owner (the Pod)", r1.status, r1.raw, r2.status, r2.raw)
		}

		// A version-1 session of the same Pod is another holder: a try fails, a wait queues.
		s := a.open()
		if _, err := a.e.Acquire(context.Background(), s.Key(), "shared", wire.AcquireRequest{Try: true}); codeOf(err) != wire.CodeNotAcquired {
			t.Fatalf("version-1 try while legacy callers hold: got %v; want %s", err, wire.CodeNotAcquired)
		}
		waiting := a.acquire(s.Key(), "shared", wire.AcquireRequest{})
		settled(t, "lock waiters", func() int { return a.waiting(wire.KindLock) }, 1)
		a.steps(10 * time.Second)
		if r := first.heartbeat(); r.status != http.StatusOK {
			t.Fatalf("heartbeat with a version-1 waiter queued: got %d %s; want 200", r.status, r.raw)
		}
		quiet(t, waiting, "version-1 acquire while the legacy holder heartbeats")

		// The legacy callers stop; after the TTL the waiter gets the lock.
		a.steps(LegacyTTL + time.Second)
		o := wait(t, waiting)
		if o.err != nil {
			t.Fatalf("version-1 acquire after the legacy TTL: got %v; want a grant", o.err)
		}
		if r := second.tryAcquire(); r.status != http.StatusConflict || r.lock.Spec.Owner != s.Holder {
			t.Errorf("legacy acquire while a version-1 session holds: got %d %s; want 409 naming %s", r.status, r.raw, s.Holder)
		}
	})
}

// TestLegacyLossIsReportedAtTheNextPUT: when the side-car loses a legacy hold (it cannot renew
// the Lease), the holder's next heartbeat answers 409, so the original SDK calls its
// lock-lost callback instead of silently taking the lock again.
func TestLegacyLossIsReportedAtTheNextPUT(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := newLegacyBed(t, "pod-a", nil)
		c := a.client("fragile")
		if r := c.tryAcquire(); r.status != http.StatusOK {
			t.Fatalf("acquire: got %d %s; want 200", r.status, r.raw)
		}
		lease := contract.LeaseName(wire.KindLock, "fragile")
		restore := a.api.FailUpdates(lease, errors.New("dial tcp: connection refused"))
		// The next heartbeat is due in 10 s; by then the renew deadline has passed.
		a.steps(c.interval)
		settled(t, "lock holds after the renew deadline", func() int { return a.holds(wire.KindLock) }, 0)
		restore()
		if r := c.heartbeat(); r.status != http.StatusConflict {
			t.Fatalf("heartbeat after the hold was lost: got %d %s; want 409", r.status, r.raw)
		}
		// The loss is reported once. The Lease still names the lost session until it expires (the
		// side-car could not write the release); after that a new acquire succeeds.
		a.steps(contract.DefaultLeaseDuration + time.Second)
		if r := c.tryAcquire(); r.status != http.StatusOK {
			t.Fatalf("acquire after the lost session's Lease expired: got %d %s; want 200", r.status, r.raw)
		}
	})
}

// TestLegacyHeartbeatAnswers200OnlyForTheHeldGrant: a heartbeat answers 200 only when the
// Engine still holds that very grant. Here the Lease is taken over by a hand edit while the
// legacy follower has not read the lost event yet (its event stream is stalled): the old
// handler took the live session for a live hold and answered 200 while another holder held it.
func TestLegacyHeartbeatAnswers200OnlyForTheHeldGrant(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBed(t, "pod-a", nil, nil)
		mux := http.NewServeMux()
		la := mountLegacy(mux, b.e, LegacyTTL)
		stalled := make(chan struct{})
		la.streamEvents = func(ctx context.Context, k wire.SessionKey, emit func(wire.Event) error) error {
			return b.e.StreamEvents(ctx, k, func(ev wire.Event) error {
				if ev.Type == wire.EventLost {
					select {
					case <-stalled:
					case <-ctx.Done():
						return ctx.Err()
					}
				}
				return emit(ev)
			})
		}
		srv := newPipeServer(t, mux)
		c := &legacyClient{t: t, base: srv.URL, hc: srv.Client, name: "edited", interval: 10 * time.Second}
		if r := c.tryAcquire(); r.status != http.StatusOK {
			t.Fatalf("acquire: got %d %s; want 200", r.status, r.raw)
		}
		lease := b.api.Get(contract.LeaseName(wire.KindLock, "edited"))
		lease.Spec.HolderIdentity = ptr.To("pod-z/intruder")
		b.api.Put(lease)
		settled(t, "lock holds after the hand edit", func() int { return b.holds(wire.KindLock) }, 0)

		r := c.heartbeat()
		if r.status != http.StatusConflict || r.lock.Spec.Owner != "pod-z/intruder" {
			t.Fatalf("heartbeat after the grant was lost: got %d %s; want 409 naming pod-z/intruder", r.status, r.raw)
		}
		close(stalled)
		// Told once: the next PUT is a new attempt, which fails while pod-z holds the Lease.
		if r := c.heartbeat(); r.status != http.StatusConflict {
			t.Errorf("second heartbeat: got %d %s; want 409", r.status, r.raw)
		}
	})
}

// TestLegacyShutdownByMode: in classic mode (a regular container, stopped with its
// application) a shutdown keeps a legacy hold until its client's next heartbeat, which answers
// 409, and only then releases it; a client that never comes back leaves the hold to expire. In
// native mode (stopped after the application) it releases at once.
func TestLegacyShutdownByMode(t *testing.T) {
	cases := []struct {
		mode       string
		heartbeats bool // the holder's app heartbeats during the shutdown
		// wantHeld: another Pod cannot take the lock while the shutdown waits.
		wantHeld bool
		wantErr  bool // Shutdown's context ends first
	}{
		{contract.ModeClassic, true, true, false},
		{contract.ModeClassic, false, true, true},
		{contract.ModeNative, false, false, false},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%s/heartbeats=%v", tc.mode, tc.heartbeats), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ab := newBedConfig(t, elector.Config{PodName: "pod-a", Namespace: testNS, Mode: tc.mode}, nil, nil)
				a := &legacyBed{bed: ab, srv: newPipeServer(t, NewHandler(ab.e))}
				other := newLegacyBed(t, "pod-b", a)
				ca, cb := a.client("job"), other.client("job")
				if r := ca.tryAcquire(); r.status != http.StatusOK {
					t.Fatalf("pod A's acquire: got %d %s; want 200", r.status, r.raw)
				}
				ctx, cancel := context.WithTimeout(context.Background(), elector.DefaultShutdownTimeout)
				defer cancel()
				done := make(chan error, 1)
				go func() { done <- a.e.Shutdown(ctx) }()
				synctest.Wait()
				if r := cb.tryAcquire(); (r.status == http.StatusConflict) != tc.wantHeld {
					t.Fatalf("pod B's acquire during pod A's shutdown: got %d %s; want held by A: %v", r.status, r.raw, tc.wantHeld)
				}
				if tc.heartbeats {
					if r := ca.heartbeat(); r.status != http.StatusConflict {
						t.Fatalf("pod A's heartbeat during its side-car's shutdown: got %d %s; want 409 (lost)", r.status, r.raw)
					}
				}
				err := <-done
				if (err != nil) != tc.wantErr {
					t.Fatalf("Shutdown: got %v; want an error: %v", err, tc.wantErr)
				}
				synctest.Wait()
				r := cb.tryAcquire()
				if tc.wantErr {
					// Nothing was released: the Lease expires after its lease duration.
					if r.status != http.StatusConflict {
						t.Fatalf("pod B's acquire after a shutdown that released nothing: got %d %s; want 409", r.status, r.raw)
					}
					other.steps(contract.DefaultLeaseDuration + time.Second)
					r = cb.tryAcquire()
				}
				if r.status != http.StatusOK {
					t.Errorf("pod B's acquire after pod A's shutdown: got %d %s; want 200", r.status, r.raw)
				}
			})
		})
	}
}

// legacyRequestCase is one request of TestLegacyRequests.
type legacyRequestCase struct {
	name, method, path, ct, body string
	// before, if set, makes the state the request is about.
	before func(t *testing.T, h *httpBed)
	checks []checkFunc
	// after, if set, checks the side-car after the request.
	after func(t *testing.T, h *httpBed)
}

func TestLegacyRequests(t *testing.T) {
	putBody := func(t *testing.T, h *httpBed) {
		if resp, body := h.do(t, "PUT", "/locks/body", "", ""); resp.StatusCode != http.StatusOK {
			t.Fatalf("PUT /locks/body: got %d %s; want 200", resp.StatusCode, body)
		}
	}
	for _, tc := range []legacyRequestCase{
		{name: "PUT ignores a body of any type", method: "PUT", path: "/locks/body", ct: "text/plain", body: "whatever", checks: []checkFunc{hasStatus(200)}},
		{name: "PUT ignores a JSON body", method: "PUT", path: "/locks/body", ct: jsonType, body: `{"spec":{"owner":"someone-else"}}`, before: putBody, checks: []checkFunc{hasStatus(200)}},
		{name: "GET of a held lock", method: "GET", path: "/locks/body", before: putBody, checks: []checkFunc{hasStatus(200)}},
		{name: "GET of an unknown lock", method: "GET", path: "/locks/unknown", checks: []checkFunc{hasCode(wire.CodeNotFound)}},
		{name: "escaped name", method: "PUT", path: "/locks/a%20b", checks: []checkFunc{hasStatus(200)}, after: func(t *testing.T, h *httpBed) {
			if st, err := h.e.State(wire.KindLock, "a b"); err != nil || !st.Held {
				t.Errorf("state of the lock \"a b\" taken by an escaped legacy path: got %+v, %v; want held", st, err)
			}
		}},
		{name: "invalid name", method: "PUT", path: "/locks/a%01b", checks: []checkFunc{hasCode(wire.CodeInvalidName)}},
		{name: "DELETE is not part of the protocol", method: "DELETE", path: "/locks/body", checks: []checkFunc{hasCode(wire.CodeMethod), hasHeader("Allow", "GET, PUT")}},
		{name: "POST is not served", method: "POST", path: "/locks/body", checks: []checkFunc{hasCode(wire.CodeMethod), hasHeader("Allow", "GET, PUT")}},
		{name: "a name with a slash is no lock path", method: "PUT", path: "/locks/a/b", checks: []checkFunc{hasCode(wire.CodeNotFound)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				a := newLegacyBed(t, "pod-a", nil)
				h := &httpBed{bed: a.bed, srv: a.srv}
				if tc.before != nil {
					tc.before(t, h)
					h.settle()
				}
				resp, body := h.do(t, tc.method, tc.path, tc.ct, tc.body)
				for _, check := range tc.checks {
					check(t, resp, body)
				}
				if tc.after != nil {
					h.settle()
					tc.after(t, h)
				}
			})
		})
	}
}

// legacyTTL is the compressed legacy TTL of the integration tests; their clients heartbeat
// every third of it, as the original's did (10 s of 30 s).
const legacyTTL = 3 * time.Second

// startLegacySidecar starts a side-car on the real API server whose legacy protocol has the
// compressed TTL, and returns it with the base URL of that handler.
func startLegacySidecar(t *testing.T, ns, pod string) (*sidecar, string) {
	sc := startSidecar(t, ns, pod, fast)
	srv := httptest.NewServer(newHandler(sc.e, legacyTTL))
	t.Cleanup(func() { srv.CloseClientConnections(); srv.Close() })
	return sc, srv.URL
}

// TestIntegrationLegacyReplay runs the original SDK's request sequence, with its timing
// compressed tenfold, in two Pods against side-cars on the real API server, then mixes in a
// version-1 client: at no time do two holders overlap, and each waits for the other.
func TestIntegrationLegacyReplay(t *testing.T) {
	ns := env.Namespace(t)
	a, urlA := startLegacySidecar(t, ns, "pod-a")
	_, urlB := startLegacySidecar(t, ns, "pod-b")
	ca := &legacyClient{t: t, base: urlA, name: "test", interval: legacyTTL / 3}
	cb := &legacyClient{t: t, base: urlB, name: "test", interval: legacyTTL / 3}

	var inside atomic.Int32
	enter := func(who string) {
		if n := inside.Add(1); n != 1 {
			t.Errorf("%s entered: got %d holders inside; want 1", who, n)
		}
	}
	leave := func() { inside.Add(-1) }

	// Pod A: GET 404, PUT 200.
	if r := ca.get(); r.status != http.StatusNotFound {
		t.Fatalf("first GET: got %d %s; want 404", r.status, r.raw)
	}
	if !ca.acquire(nil, nil) {
		t.Fatal("pod A's acquire: got false; want the lock")
	}
	enter("pod A")
	holdA := ca.hold()

	// Pod B waits, polling every interval and getting 409s naming pod A.
	conflicts := make(chan struct{}, 1000)
	bGot := make(chan bool, 1)
	stopB := make(chan struct{})
	go func() {
		bGot <- cb.acquire(stopB, func(r legacyReply) {
			if !strings.HasPrefix(r.lock.Spec.Owner, "pod-a/") {
				t.Errorf("got a 409 naming %q; want pod A's legacy session", r.lock.Spec.Owner)
			}
			conflicts <- struct{}{}
		})
	}()
	// Pod A holds through several TTLs of heartbeats while pod B polls: more polls than fit in
	// a TTL, each answered 409.
	for i := 0; i <= int(legacyTTL/cb.interval); i++ {
		await(t, conflicts, fmt.Sprintf("pod B's 409 number %d", i+1))
	}
	select {
	case <-bGot:
		t.Fatal("pod B's acquire: got the lock while pod A heartbeats; want 409s")
	case <-holdA.lost:
		t.Fatal("pod A's heartbeat: got the lock lost while heartbeating; want it kept")
	default:
	}

	// Pod A releases (stops heartbeating); pod B gets the lock after the TTL.
	leave()
	holdA.release()
	if !await(t, bGot, "pod B's acquire after pod A stopped") {
		t.Fatal("pod B's acquire: got false (gave up); want the lock")
	}
	enter("pod B")
	holdB := cb.hold()

	// A version-1 client in pod A cannot take it while pod B heartbeats, and waits.
	s := a.c.open(time.Minute)
	if _, err := a.c.acquire(context.Background(), s.ID, "test", wire.AcquireRequest{Try: true}); wire.CodeOf(err) != wire.CodeNotAcquired {
		t.Fatalf("version-1 try while pod B's legacy client holds: got %v; want %s", err, wire.CodeNotAcquired)
	}
	v1Got := make(chan acquireOutcome, 1)
	go func() {
		g, err := a.c.acquire(context.Background(), s.ID, "test", wire.AcquireRequest{})
		v1Got <- acquireOutcome{g, err}
	}()
	eventually(t, "the version-1 waiter to queue", func() bool { return a.waiting(wire.KindLock) == 1 })
	// Over more than a TTL of heartbeats, the waiter keeps waiting.
	for range len(holdB.beat) {
		<-holdB.beat // the beats before the waiter queued
	}
	for i := 0; i <= int(legacyTTL/cb.interval); i++ {
		await(t, holdB.beat, fmt.Sprintf("pod B's heartbeat number %d with the version-1 waiter queued", i+1))
	}
	select {
	case o := <-v1Got:
		t.Fatalf("version-1 acquire: got %+v while pod B heartbeats; want it waiting", o)
	case <-holdB.lost:
		t.Fatal("pod B's heartbeat: got the lock lost while heartbeating; want it kept")
	default:
	}
	leave()
	holdB.release()
	o := await(t, v1Got, "the version-1 acquire after pod B stopped")
	if o.err != nil {
		t.Fatalf("version-1 acquire after pod B stopped: got %v; want a grant", o.err)
	}
	enter("version-1 client")

	// Now pod A's legacy client polls and gets 409 naming the version-1 session.
	if r := ca.tryAcquire(); r.status != http.StatusConflict || r.lock.Spec.Owner != s.Holder {
		t.Errorf("legacy acquire while a version-1 session holds: got %d %s; want 409 naming %s", r.status, r.raw, s.Holder)
	}
	leave()
	if err := a.c.release(s.ID, "test"); err != nil {
		t.Fatalf("version-1 release: got %v; want nil", err)
	}
	// A version-1 release hands over at once: the next legacy poll gets the lock.
	if r := ca.tryAcquire(); r.status != http.StatusOK {
		t.Errorf("legacy acquire after the version-1 release: got %d %s; want 200", r.status, r.raw)
	}
}

// TestIntegrationLegacyHolderLosesToSideCarShutdown: when a classic-mode side-car (the default)
// stops, the holder's next heartbeat answers 409, as the original SDKs expect, and the hold is
// released right after it, without waiting for the TTL.
func TestIntegrationLegacyHolderLosesToSideCarShutdown(t *testing.T) {
	ns := env.Namespace(t)
	a, urlA := startLegacySidecar(t, ns, "pod-a")
	_, urlB := startLegacySidecar(t, ns, "pod-b")
	ca := &legacyClient{t: t, base: urlA, name: "test", interval: legacyTTL / 3}
	cb := &legacyClient{t: t, base: urlB, name: "test", interval: legacyTTL / 3}
	if !ca.acquire(nil, nil) {
		t.Fatal("pod A's acquire: got false; want the lock")
	}
	holdA := ca.hold()
	defer holdA.release()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.e.Shutdown(ctx) }()
	await(t, holdA.lost, "pod A's heartbeat to fail after its side-car stopped")
	if err := await(t, done, "pod A's shutdown"); err != nil {
		t.Fatalf("Shutdown: got %v; want nil", err)
	}
	// The release was written before Shutdown returned: pod B takes the lock as soon as its
	// side-car sees it, without waiting for the TTL.
	eventually(t, "pod B's acquire after pod A's side-car stopped", func() bool { return cb.tryAcquire().status == http.StatusOK })
}
