package elector

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
	"time"

	"github.com/metaparticle-io/sync/wire"
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
		c.t.Fatal(err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, req.URL, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	r := legacyReply{status: resp.StatusCode, raw: string(data)}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		c.t.Errorf("%s %s: Content-Type %q; want application/json (Unirest parses every body as JSON)", method, req.URL, ct)
	}
	if r.status == http.StatusOK || r.status == http.StatusConflict {
		dec := json.NewDecoder(strings.NewReader(r.raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&r.lock); err != nil {
			c.t.Errorf("%s %s: %d body %s is not a lock object: %v", method, req.URL, r.status, r.raw, err)
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
			c.t.Errorf("acquire: status %d (%s); want 200 or 409", r.status, r.raw)
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
	beats            atomic.Int32 // successful heartbeats
	once             sync.Once
}

// hold heartbeats every interval in the background, like the original's maintainer thread,
// until release is called or a heartbeat fails (lost is closed).
func (c *legacyClient) hold() *legacyHolder {
	h := &legacyHolder{stop: make(chan struct{}), done: make(chan struct{}), lost: make(chan struct{})}
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
			h.beats.Add(1)
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
		t.Fatalf("expiry %q is not ISO 8601: %v", s, err)
	}
	return tm
}

// legacyBed is a side-car on the fake API whose lock API, legacy protocol included, is served
// by NewHandler, so with the original's 30 s TTL.
type legacyBed struct {
	*bed
	srv *httptest.Server
}

func newLegacyBed(t *testing.T, pod string, other *legacyBed) *legacyBed {
	var b *bed
	if other == nil {
		b = newBed(t, pod, nil, nil)
	} else {
		b = newBed(t, pod, other.api, other.clock)
	}
	srv := httptest.NewServer(NewHandler(b.e))
	t.Cleanup(srv.Close)
	return &legacyBed{bed: b, srv: srv}
}

func (b *legacyBed) client(name string) *legacyClient {
	return &legacyClient{t: b.t, base: b.srv.URL, name: name, interval: 10 * time.Second}
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
	a := newLegacyBed(t, "pod-a", nil)
	b := newLegacyBed(t, "pod-b", a)
	ca, cb := a.client("test"), b.client("test")

	// Nobody has used the lock: the original's 404.
	r := ca.get()
	if r.status != http.StatusNotFound {
		t.Fatalf("GET of an unknown lock: %d %s; want 404", r.status, r.raw)
	}
	var nf wire.Error
	if err := json.Unmarshal([]byte(r.raw), &nf); err != nil || nf.Message != "Not found." {
		t.Errorf("404 body %s; want the original's message \"Not found.\"", r.raw)
	}

	// Pod A takes it: GET 404, then PUT 200.
	start := a.clock.Now()
	r = ca.tryAcquire()
	if r.status != http.StatusOK {
		t.Fatalf("pod A's acquire: %d %s; want 200", r.status, r.raw)
	}
	owner := r.lock.Spec.Owner
	if r.lock.Kind != "Lock" || r.lock.APIVersion != "metaparticle.io/v1" || r.lock.Metadata.Name != "test" ||
		r.lock.Metadata.Namespace != testNS || !strings.HasPrefix(owner, "pod-a/") {
		t.Errorf("lock object %+v; want Lock test in %s owned by pod-a/<session>", r.lock, testNS)
	}
	if got := parseLegacyTime(t, r.lock.Spec.Expiry); !got.Equal(start.Add(LegacyTTL)) {
		t.Errorf("expiry %s; want the PUT's time plus the 30s TTL, %s", got, start.Add(LegacyTTL))
	}
	eventually(t, "pod A's GET to show the Lease's resourceVersion", func() bool {
		r := ca.get()
		return r.status == http.StatusOK && r.lock.Metadata.ResourceVersion != "" && r.lock.Spec.Owner == owner
	})

	// Pod B polls: GET 200 (the lock exists), PUT 409 with the owner and expiry.
	eventually(t, "pod B to see the Lease", func() bool { return cb.get().status == http.StatusOK })
	conflictFromA := func(when string) {
		t.Helper()
		r := cb.tryAcquire()
		if r.status != http.StatusConflict || r.lock.Spec.Owner != owner || r.lock.Metadata.ResourceVersion == "" {
			t.Fatalf("%s: pod B's acquire %d %s; want 409 naming %s", when, r.status, r.raw, owner)
		}
		parseLegacyTime(t, r.lock.Spec.Expiry)
	}
	conflictFromA("while pod A holds")

	// Pod A heartbeats every 10 s for a minute, twice the TTL: it keeps the lock, with the same
	// identity, and pod B keeps getting 409.
	for i := 1; i <= 6; i++ {
		a.steps(ca.interval)
		r := ca.heartbeat()
		if r.status != http.StatusOK || r.lock.Spec.Owner != owner {
			t.Fatalf("heartbeat %d: %d %s; want 200 owned by %s", i, r.status, r.raw, owner)
		}
		if got, want := parseLegacyTime(t, r.lock.Spec.Expiry), a.clock.Now().Add(LegacyTTL); !got.Equal(want) {
			t.Errorf("heartbeat %d: expiry %s; want %s", i, got, want)
		}
		conflictFromA(fmt.Sprintf("after heartbeat %d", i))
	}

	// Pod A releases (stops heartbeating). 20 s later pod B still gets 409.
	lastPut := a.clock.Now()
	a.steps(20 * time.Second)
	conflictFromA("20s after pod A's last PUT")

	// Past the TTL, pod A's hold ends and is released, so pod B's next poll takes the lock.
	a.steps(LegacyTTL - 20*time.Second + time.Second)
	var got legacyReply
	eventually(t, "pod B to take the lock after pod A's TTL", func() bool {
		got = cb.tryAcquire()
		return got.status == http.StatusOK
	})
	if !strings.HasPrefix(got.lock.Spec.Owner, "pod-b/") {
		t.Errorf("pod B's lock object %+v; want owned by pod-b/<session>", got.lock)
	}
	t.Logf("pod B took over %s after pod A's last PUT (TTL %s)", a.clock.Since(lastPut), LegacyTTL)

	// Now pod A polls in vain; once its side-car has seen pod B's grant, the 409 names pod B.
	eventually(t, "pod A's 409 to name pod B", func() bool {
		r := ca.tryAcquire()
		if r.status != http.StatusConflict {
			t.Fatalf("pod A's acquire while pod B holds: %d %s; want 409", r.status, r.raw)
		}
		return r.lock.Spec.Owner == got.lock.Spec.Owner
	})
}

// TestLegacyIdentityIsThePod shows the documented unsafety: every legacy caller of one side-car
// is the same owner. It also shows that legacy callers and version-1 sessions of the same Pod
// exclude each other, in both directions, and that a version-1 waiter takes the lock once the
// legacy holder stops.
func TestLegacyIdentityIsThePod(t *testing.T) {
	a := newLegacyBed(t, "pod-a", nil)
	first, second := a.client("shared"), a.client("shared")

	r1 := first.tryAcquire()
	r2 := second.tryAcquire()
	if r1.status != http.StatusOK || r2.status != http.StatusOK || r1.lock.Spec.Owner != r2.lock.Spec.Owner {
		t.Fatalf("two legacy callers of one Pod: %d %s and %d %s; want both 200 with one owner (the Pod)", r1.status, r1.raw, r2.status, r2.raw)
	}

	// A version-1 session of the same Pod is another holder: a try fails, a wait queues.
	s := a.open()
	if _, err := a.e.Acquire(context.Background(), s.ID, "shared", wire.AcquireRequest{Try: true}); codeOf(err) != wire.CodeNotAcquired {
		t.Fatalf("version-1 try while legacy callers hold: %v; want %s", err, wire.CodeNotAcquired)
	}
	waiting := a.acquire(s.ID, "shared", wire.AcquireRequest{})
	eventually(t, "the version-1 waiter to queue", func() bool { return a.waiting(wire.KindLock, "shared") == 1 })
	a.steps(10 * time.Second)
	if r := first.heartbeat(); r.status != http.StatusOK {
		t.Fatalf("heartbeat with a version-1 waiter queued: %d %s; want 200", r.status, r.raw)
	}
	quiet(t, waiting, "version-1 acquire while the legacy holder heartbeats")

	// The legacy callers stop; after the TTL the waiter gets the lock.
	a.steps(LegacyTTL + time.Second)
	o := wait(t, waiting)
	if o.err != nil {
		t.Fatalf("version-1 acquire after the legacy TTL: %v", o.err)
	}
	if r := second.tryAcquire(); r.status != http.StatusConflict || r.lock.Spec.Owner != s.Holder {
		t.Errorf("legacy acquire while a version-1 session holds: %d %s; want 409 naming %s", r.status, r.raw, s.Holder)
	}
}

// TestLegacyLossIsReportedAtTheNextPUT: when the side-car loses a legacy hold (it cannot renew
// the Lease), the holder's next heartbeat answers 409, so the original SDK calls its
// lock-lost callback instead of silently taking the lock again.
func TestLegacyLossIsReportedAtTheNextPUT(t *testing.T) {
	a := newLegacyBed(t, "pod-a", nil)
	c := a.client("fragile")
	if r := c.tryAcquire(); r.status != http.StatusOK {
		t.Fatalf("acquire: %d %s", r.status, r.raw)
	}
	lease := LeaseName(wire.KindLock, "fragile")
	restore := a.api.failUpdates(lease, errors.New("dial tcp: connection refused"))
	// The next heartbeat is due in 10 s; by then the renew deadline has passed.
	a.steps(c.interval)
	eventually(t, "the hold to be lost", func() bool {
		return a.e.snapshot().holds[wire.KindLock] == 0
	})
	restore()
	if r := c.heartbeat(); r.status != http.StatusConflict {
		t.Fatalf("heartbeat after the hold was lost: %d %s; want 409", r.status, r.raw)
	}
	// The loss is reported once. The Lease still names the lost session until it expires (the
	// side-car could not write the release); after that a new acquire succeeds.
	a.steps(DefaultLeaseDuration + time.Second)
	eventually(t, "a new acquire to succeed", func() bool { return c.tryAcquire().status == http.StatusOK })
}

func TestLegacyRequests(t *testing.T) {
	a := newLegacyBed(t, "pod-a", nil)
	h := &httpBed{bed: a.bed, srv: a.srv}
	for _, tc := range []struct {
		name, method, path, ct, body string
		checks                       []checkFunc
	}{
		{"PUT ignores a body of any type", "PUT", "/locks/body", "text/plain", "whatever", []checkFunc{hasStatus(200)}},
		{"PUT ignores a JSON body", "PUT", "/locks/body", jsonType, `{"spec":{"owner":"someone-else"}}`, []checkFunc{hasStatus(200)}},
		{"GET of a held lock", "GET", "/locks/body", "", "", []checkFunc{hasStatus(200)}},
		{"GET of an unknown lock", "GET", "/locks/unknown", "", "", []checkFunc{hasCode(wire.CodeNotFound)}},
		{"escaped name", "PUT", "/locks/a%20b", "", "", []checkFunc{hasStatus(200)}},
		{"invalid name", "PUT", "/locks/a%01b", "", "", []checkFunc{hasCode(wire.CodeInvalidName)}},
		{"DELETE is not part of the protocol", "DELETE", "/locks/body", "", "", []checkFunc{hasCode(wire.CodeMethod), hasHeader("Allow", "GET, PUT")}},
		{"POST is not served", "POST", "/locks/body", "", "", []checkFunc{hasCode(wire.CodeMethod), hasHeader("Allow", "GET, PUT")}},
		{"a name with a slash is no lock path", "PUT", "/locks/a/b", "", "", []checkFunc{hasCode(wire.CodeNotFound)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := h.do(t, tc.method, tc.path, tc.ct, tc.body)
			for _, check := range tc.checks {
				check(t, resp, body)
			}
		})
	}
	if st, err := a.e.State(wire.KindLock, "a b"); err != nil || !st.Held {
		t.Errorf("state of the lock \"a b\" taken by an escaped legacy path: %+v, %v; want held", st, err)
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
			t.Errorf("%s entered with %d holders inside; want 1", who, n)
		}
	}
	leave := func() { inside.Add(-1) }

	// Pod A: GET 404, PUT 200.
	if r := ca.get(); r.status != http.StatusNotFound {
		t.Fatalf("first GET: %d %s; want 404", r.status, r.raw)
	}
	if !ca.acquire(nil, nil) {
		t.Fatal("pod A did not acquire")
	}
	enter("pod A")
	holdA := ca.hold()

	// Pod B waits, polling every interval and getting 409s naming pod A.
	var conflicts atomic.Int32
	bGot := make(chan bool, 1)
	stopB := make(chan struct{})
	go func() {
		bGot <- cb.acquire(stopB, func(r legacyReply) {
			if !strings.HasPrefix(r.lock.Spec.Owner, "pod-a/") {
				t.Errorf("409 names %q; want pod A's legacy session", r.lock.Spec.Owner)
			}
			conflicts.Add(1)
		})
	}()
	// Pod A holds through several TTLs of heartbeats while pod B polls.
	eventually(t, "pod B's polls across a TTL", func() bool { return conflicts.Load() > int32(legacyTTL/cb.interval) })
	select {
	case <-bGot:
		t.Fatal("pod B acquired while pod A heartbeats")
	case <-holdA.lost:
		t.Fatal("pod A lost the lock while heartbeating")
	default:
	}

	// Pod A releases (stops heartbeating); pod B gets the lock after the TTL.
	leave()
	holdA.release()
	if !wait(t, bGot) {
		t.Fatal("pod B gave up")
	}
	enter("pod B")
	holdB := cb.hold()

	// A version-1 client in pod A cannot take it while pod B heartbeats, and waits.
	s := a.c.open(time.Minute)
	if _, err := a.c.acquire(context.Background(), s.ID, "test", wire.AcquireRequest{Try: true}); codeOf(err) != wire.CodeNotAcquired {
		t.Fatalf("version-1 try while pod B's legacy client holds: %v; want %s", err, wire.CodeNotAcquired)
	}
	v1Got := make(chan acquireOutcome, 1)
	go func() {
		g, err := a.c.acquire(context.Background(), s.ID, "test", wire.AcquireRequest{})
		v1Got <- acquireOutcome{g, err}
	}()
	eventually(t, "the version-1 waiter to queue", func() bool { return a.e.snapshot().waiting[wire.KindLock] == 1 })
	// Over more than a TTL of heartbeats, the waiter keeps waiting.
	beats := holdB.beats.Load()
	eventually(t, "pod B's heartbeats across a TTL", func() bool { return holdB.beats.Load() > beats+int32(legacyTTL/cb.interval) })
	select {
	case o := <-v1Got:
		t.Fatalf("version-1 acquire returned %+v while pod B heartbeats", o)
	case <-holdB.lost:
		t.Fatal("pod B lost the lock while heartbeating")
	default:
	}
	leave()
	holdB.release()
	o := wait(t, v1Got)
	if o.err != nil {
		t.Fatalf("version-1 acquire after pod B stopped: %v", o.err)
	}
	enter("version-1 client")

	// Now pod A's legacy client polls and gets 409 naming the version-1 session.
	if r := ca.tryAcquire(); r.status != http.StatusConflict || r.lock.Spec.Owner != s.Holder {
		t.Errorf("legacy acquire while a version-1 session holds: %d %s; want 409 naming %s", r.status, r.raw, s.Holder)
	}
	leave()
	if err := a.c.release(s.ID, "test"); err != nil {
		t.Fatal(err)
	}
	// A version-1 release hands over at once: the next legacy poll gets the lock.
	if r := ca.tryAcquire(); r.status != http.StatusOK {
		t.Errorf("legacy acquire after the version-1 release: %d %s; want 200", r.status, r.raw)
	}
}

// TestIntegrationLegacyHolderLosesToSideCarShutdown: when the side-car stops, its legacy holds
// are released at once and the holder's next heartbeat fails, as the original SDKs expect.
func TestIntegrationLegacyHolderLosesToSideCarShutdown(t *testing.T) {
	ns := env.Namespace(t)
	a, urlA := startLegacySidecar(t, ns, "pod-a")
	_, urlB := startLegacySidecar(t, ns, "pod-b")
	ca := &legacyClient{t: t, base: urlA, name: "test", interval: legacyTTL / 3}
	cb := &legacyClient{t: t, base: urlB, name: "test", interval: legacyTTL / 3}
	if !ca.acquire(nil, nil) {
		t.Fatal("pod A did not acquire")
	}
	holdA := ca.hold()
	defer holdA.release()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.e.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	wait(t, holdA.lost)
	// Pod B's first poll after the shutdown takes the lock: the release did not wait for the TTL.
	if r := cb.tryAcquire(); r.status != http.StatusOK {
		t.Errorf("pod B's acquire after pod A's side-car stopped: %d %s; want 200", r.status, r.raw)
	}
}
