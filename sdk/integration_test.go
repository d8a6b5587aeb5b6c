package sdk_test

// Integration tests: the SDK against the real side-car (package elector, in-process, one Engine
// per simulated Pod) on a real kube-apiserver and etcd (internal/testenv). Skipped under -short.

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/metaparticle-io/sync/elector"
	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/internal/sidecartest"
	"github.com/metaparticle-io/sync/internal/testenv"
	"github.com/metaparticle-io/sync/sdk"
	"github.com/metaparticle-io/sync/wire"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env) }

// sidecar is one Pod's side-car (internal/sidecartest), with this file's helpers.
type sidecar struct{ *sidecartest.Sidecar }

// halt stops the side-car abruptly, as if its process died: nothing is released.
func (sc *sidecar) halt() { sc.Halt() }

// integrationConfig shortens the side-car's timings so that a crashed holder's lease expires in
// seconds; orderly handovers do not depend on them.
func integrationConfig(ns, pod string) elector.Config {
	return elector.Config{
		PodName:       pod,
		Namespace:     ns,
		LeaseDuration: 2 * time.Second,
		RenewDeadline: 1500 * time.Millisecond,
		RenewPeriod:   500 * time.Millisecond,
		RetryPeriod:   100 * time.Millisecond,
	}
}

// startSidecar starts the side-car of Pod pod in namespace ns; it is shut down when t ends.
func startSidecar(t *testing.T, ns, pod string) *sidecar {
	t.Helper()
	return &sidecar{sidecartest.Start(t, env.Config, integrationConfig(ns, pod))}
}

func (sc *sidecar) addr() string { return sc.Addr() }

// client returns a Client of the side-car, closed when t ends.
func (sc *sidecar) client(t *testing.T, opts ...sdk.Option) *sdk.Client {
	t.Helper()
	opts = append([]sdk.Option{sdk.WithAddress(sc.addr()), sdk.WithBackoff(10*time.Millisecond, 200*time.Millisecond)}, opts...)
	c, err := sdk.NewClient(opts...)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// leaseHolder reads the holder identity of the Lease of a lock or election from the API server.
func leaseHolder(t *testing.T, ns string, kind wire.Kind, name string) string {
	t.Helper()
	l, err := env.Clientset.CoordinationV1().Leases(ns).Get(context.Background(), contract.LeaseName(kind, name), metav1.GetOptions{})
	if err != nil {
		t.Fatalf("reading the Lease of %s %s: %v", kind, name, err)
	}
	if l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

// deleteLease deletes the Lease of a lock or election behind the side-cars' backs.
func deleteLease(t *testing.T, ns string, kind wire.Kind, name string) {
	t.Helper()
	if err := env.Clientset.CoordinationV1().Leases(ns).Delete(context.Background(), contract.LeaseName(kind, name), metav1.DeleteOptions{}); err != nil {
		t.Fatalf("deleting the Lease of %s %s: %v", kind, name, err)
	}
}

// TestIntegrationLockHandover: clients of two Pods contend; a try fails while the lock is held,
// a blocking acquire is woken by the release, and the fencing token grows. Two sessions of the
// same Pod exclude each other too.
func TestIntegrationLockHandover(t *testing.T) {
	ns := env.Namespace(t)
	ctx := testCtx(t)
	podA, podB := startSidecar(t, ns, "pod-a"), startSidecar(t, ns, "pod-b")
	a := podA.client(t).NewLock("test")
	b := podB.client(t).NewLock("test")
	sameA := podA.client(t).NewLock("test") // another process in pod-a

	if err := a.Acquire(ctx); err != nil {
		t.Fatalf("a.Acquire: %v", err)
	}
	if h := leaseHolder(t, ns, wire.KindLock, "test"); !strings.HasPrefix(h, "pod-a/") {
		t.Errorf("got Lease holder %q; want pod-a/<session>", h)
	}
	for _, other := range []*sdk.Lock{b, sameA} {
		if ok, err := other.TryAcquire(ctx); err != nil || ok {
			t.Fatalf("TryAcquire while a holds: got %v, %v; want false, nil", ok, err)
		}
	}
	acquired := make(chan error, 1)
	go func() { acquired <- b.Acquire(ctx) }()
	aToken := a.Token()
	if err := a.Release(ctx); err != nil {
		t.Fatalf("a.Release: %v", err)
	}
	if err := <-acquired; err != nil {
		t.Fatalf("b.Acquire: %v", err)
	}
	if b.Token() <= aToken {
		t.Errorf("got b's token %d; want more than a's %d", b.Token(), aToken)
	}
	if h := leaseHolder(t, ns, wire.KindLock, "test"); !strings.HasPrefix(h, "pod-b/") {
		t.Errorf("got Lease holder %q; want pod-b/<session>", h)
	}
	bToken := b.Token()
	if err := b.Release(ctx); err != nil {
		t.Fatalf("b.Release: %v", err)
	}
	if err := sameA.Acquire(ctx); err != nil {
		t.Fatalf("second session of pod-a: Acquire: %v", err)
	}
	if sameA.Token() <= bToken {
		t.Errorf("got token %d after b's %d; want more", sameA.Token(), bToken)
	}
}

// connTracker records the connections of an HTTP client so that a test can cut them all, as when
// the process holding them dies.
type connTracker struct {
	mu    sync.Mutex
	conns []net.Conn
}

func (ct *connTracker) httpClient() *http.Client {
	d := &net.Dialer{}
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err == nil {
			ct.mu.Lock()
			ct.conns = append(ct.conns, c)
			ct.mu.Unlock()
		}
		return c, err
	}}}
}

func (ct *connTracker) cut() {
	ct.mu.Lock()
	defer ct.mu.Unlock()
	for _, c := range ct.conns {
		c.Close()
	}
}

// TestIntegrationSessionEndReleases: ending the holder's session, whichever way, hands the lock
// to a waiter in another Pod, and the holder's Lost channel is closed.
func TestIntegrationSessionEndReleases(t *testing.T) {
	tests := []struct {
		name string
		kill func(c *sdk.Client, ct *connTracker, sc *sidecar)
	}{
		{"Close", func(c *sdk.Client, ct *connTracker, sc *sidecar) { c.Close() }},
		{"connections cut", func(c *sdk.Client, ct *connTracker, sc *sidecar) { ct.cut() }},
		{"side-car halted (lease expires)", func(c *sdk.Client, ct *connTracker, sc *sidecar) { sc.halt() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns := env.Namespace(t)
			ctx := testCtx(t)
			podA, podB := startSidecar(t, ns, "pod-a"), startSidecar(t, ns, "pod-b")
			ct := &connTracker{}
			ca := podA.client(t, sdk.WithHTTPClient(ct.httpClient()))
			a, b := ca.NewLock("test"), podB.client(t).NewLock("test")
			if err := a.Acquire(ctx); err != nil {
				t.Fatalf("a.Acquire: %v", err)
			}
			lost := a.Lost()
			acquired := make(chan error, 1)
			go func() { acquired <- b.Acquire(ctx) }()

			tt.kill(ca, ct, podA)
			waitClosed(t, lost, "a's Lost")
			if err := <-acquired; err != nil {
				t.Fatalf("b.Acquire: %v", err)
			}
			if h := leaseHolder(t, ns, wire.KindLock, "test"); !strings.HasPrefix(h, "pod-b/") {
				t.Errorf("got Lease holder %q; want pod-b/<session>", h)
			}
			if err := a.Release(ctx); err == nil {
				t.Errorf("a.Release after its session ended: got nil; want an error")
			}
		})
	}
}

// TestIntegrationLostReported: when the side-car loses a hold (here its Lease is deleted behind
// its back), Lost is closed, Release says ErrLost, and the lock can be taken again with a greater
// token.
func TestIntegrationLostReported(t *testing.T) {
	ns := env.Namespace(t)
	ctx := testCtx(t)
	l := startSidecar(t, ns, "pod-a").client(t).NewLock("test")
	if err := l.Acquire(ctx); err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	first := l.Token()
	lost := l.Lost()
	deleteLease(t, ns, wire.KindLock, "test")
	waitClosed(t, lost, "Lost")
	if err := l.Release(ctx); !errors.Is(err, sdk.ErrLost) || !strings.Contains(err.Error(), "deleted") {
		t.Errorf("Release: got %v; want ErrLost saying the Lease was deleted", err)
	}
	if err := l.Acquire(ctx); err != nil {
		t.Fatalf("Acquire again: %v", err)
	}
	if l.Token() <= first {
		t.Errorf("got token %d after %d; want more", l.Token(), first)
	}
}

// leaders counts the elected functions running at once across candidates.
type leaders struct {
	running atomic.Int32
	overlap atomic.Bool // two ran at once
}

func (ls *leaders) wrap(r *recorder) func(context.Context) {
	return func(ctx context.Context) {
		if ls.running.Add(1) > 1 {
			ls.overlap.Store(true)
		}
		defer ls.running.Add(-1)
		r.onElected(ctx)
	}
}

// TestIntegrationElection: three candidates in three Pods and an observer in a fourth. One leads;
// when it steps down, resigns or is deposed by the side-car, its context is cancelled and its
// lost function called, another candidate leads, and the observer sees each leader.
func TestIntegrationElection(t *testing.T) {
	ns := env.Namespace(t)
	ctx := testCtx(t)
	observer := startSidecar(t, ns, "pod-o").client(t).NewElection("test", nil, nil)
	seen := make(chan sdk.Leader, 64)
	wctx, stopWatch := context.WithCancel(ctx)
	watched := make(chan error, 1)
	go func() { watched <- observer.Watch(wctx, func(l sdk.Leader) { seen <- l }) }()

	var ls leaders
	type candidate struct {
		pod  string
		r    *recorder
		e    *sdk.Election
		stop func() error
	}
	var cands []*candidate
	for _, pod := range []string{"pod-a", "pod-b", "pod-c"} {
		r := newRecorder()
		e := startSidecar(t, ns, pod).client(t).NewElection("test", ls.wrap(r), r.onLost)
		cands = append(cands, &candidate{pod: pod, r: r, e: e, stop: runElection(t, e)})
	}
	// leader waits until exactly one candidate runs its elected function and returns it.
	leader := func(skip *candidate) *candidate {
		t.Helper()
		var got *candidate
		waitUntil(t, "a leader", func() bool {
			for _, c := range cands {
				if c == skip {
					continue
				}
				if c.r.running() {
					got = c
					return true
				}
			}
			return false
		})
		return got
	}
	// observed waits until the observer sees a leader whose holder starts with prefix.
	observed := func(prefix string) sdk.Leader {
		t.Helper()
		for {
			select {
			case l := <-seen:
				if l.Holder != "" && strings.HasPrefix(l.Holder, prefix) && l.Token != 0 {
					return l
				}
			case err := <-watched:
				t.Fatalf("Watch returned %v while waiting for a leader in %s", err, prefix)
			case <-time.After(waitTimeout):
				t.Fatalf("gave up waiting for the observer to see a leader in %s", prefix)
			}
		}
	}

	// 1. One of the three leads, and everyone agrees which.
	first := leader(nil)
	l1 := observed(first.pod + "/")
	if h := leaseHolder(t, ns, wire.KindElection, "test"); h != l1.Holder {
		t.Errorf("got Lease holder %q; want the observed leader %q", h, l1.Holder)
	}

	// 2. The leader resigns: its context ends before another candidate is elected.
	if err := first.e.Resign(ctx); err != nil {
		t.Fatalf("Resign: %v", err)
	}
	recv(t, first.r.lost, "the resigned leader's lost call")
	second := leader(first)
	l2 := observed(second.pod + "/")
	if l2.Token <= l1.Token {
		t.Errorf("got token %d after %d; want more", l2.Token, l1.Token)
	}

	// 3. The leader stops running: same, and it leaves the election.
	if err := second.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	recv(t, second.r.lost, "the stopped leader's lost call")
	if second.r.lastCtx().Err() == nil {
		t.Errorf("got the stopped leader's context alive; want cancelled")
	}
	third := leader(second)
	l3 := observed(third.pod + "/")
	if l3.Token <= l2.Token {
		t.Errorf("got token %d after %d; want more", l3.Token, l2.Token)
	}
	if ls.overlap.Load() {
		t.Errorf("two elected functions ran at once during orderly handovers; want never")
	}

	// 4. The side-car deposes the leader (its Lease is deleted): the leader's context is cancelled
	// with ErrLost, its lost function called, and a candidate (perhaps the same) is elected again.
	n := len(third.r.events())
	termCtx := third.r.lastCtx()
	deleteLease(t, ns, wire.KindElection, "test")
	waitClosed(t, termCtx.Done(), "the deposed leader's context")
	if cause := context.Cause(termCtx); !errors.Is(cause, sdk.ErrLost) {
		t.Errorf("got cause %v; want ErrLost", cause)
	}
	recv(t, third.r.lost, "the deposed leader's lost call")
	if got := third.r.events()[n]; got != "lost" {
		t.Errorf("got call %q after deposition; want lost", got)
	}
	again := leader(nil)
	l4 := observed(again.pod + "/")
	if l4.Token <= l3.Token {
		t.Errorf("got token %d after %d; want more", l4.Token, l3.Token)
	}
	if now, err := again.e.Leader(ctx); err != nil || now.Holder != l4.Holder {
		t.Errorf("got Leader %+v, %v; want holder %q", now, err, l4.Holder)
	}

	stopWatch()
	if err := <-watched; err != nil {
		t.Errorf("Watch: %v", err)
	}
}

// running reports whether an elected function of r is running (elected calls outnumber lost
// calls).
func (r *recorder) running() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, ev := range r.log {
		if ev == "lost" {
			n--
		} else {
			n++
		}
	}
	return n > 0
}

// lastCtx returns the context of r's latest term.
func (r *recorder) lastCtx() context.Context {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ctxs[len(r.ctxs)-1]
}

// TestIntegrationExamples builds the example programs, runs them against a side-car as a
// Deployment's containers would, and checks what they print and that SIGTERM ends them cleanly,
// handing the lock or the leadership to the next replica.
func TestIntegrationExamples(t *testing.T) {
	ns := env.Namespace(t)
	dir := t.TempDir()
	// go test puts its own go command first on PATH.
	goCmd := "go"
	root, err := testenv.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	build := exec.Command(goCmd, "build", "-o", dir+string(filepath.Separator), "./examples/lock", "./examples/election")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	tests := []struct {
		name string
		args []string
		// want is printed by the first replica before SIGTERM, next by the second after it.
		want, next string
		bye        string // printed by the first replica on SIGTERM
	}{
		{name: "lock", args: []string{"-hold", "1h"}, want: "I have the lock! (token", next: "I have the lock!", bye: "I released the lock."},
		{name: "election", want: "I am the master (term", next: "I am the master", bye: "I lost the master"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sc := startSidecar(t, ns, "pod-"+tt.name)
			start := func() (*exec.Cmd, *syncBuffer) {
				cmd := exec.Command(filepath.Join(dir, tt.name), tt.args...)
				cmd.Env = append(os.Environ(), wire.EnvAddress+"="+sc.addr())
				out := &syncBuffer{}
				cmd.Stdout, cmd.Stderr = out, out
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
				return cmd, out
			}
			first, out1 := start()
			waitUntil(t, tt.name+" to print "+tt.want, func() bool { return strings.Contains(out1.String(), tt.want) })
			second, out2 := start()
			if err := first.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if err := first.Wait(); err != nil {
				t.Errorf("first replica on SIGTERM: got %v; want exit status 0\n%s", err, out1.String())
			}
			if !strings.Contains(out1.String(), tt.bye) {
				t.Errorf("first replica printed %q; want it to contain %q", out1.String(), tt.bye)
			}
			waitUntil(t, "the second replica to print "+tt.next, func() bool { return strings.Contains(out2.String(), tt.next) })
			if err := second.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if err := second.Wait(); err != nil {
				t.Errorf("second replica on SIGTERM: got %v; want exit status 0\n%s", err, out2.String())
			}
		})
	}
}

// syncBuffer is a bytes.Buffer safe for a process writing and a test reading.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
