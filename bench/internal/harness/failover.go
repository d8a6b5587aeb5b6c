package harness

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/metaparticle-io/sync/elector"
	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/sdk"
)

// failoverResult holds the samples of the four crash scenarios.
type failoverResult struct {
	sidecarKilled, sidecarRestarted, appKilled, baselineKilled []time.Duration
}

// failover runs k samples of each crash scenario, all at once (each takes about a lease
// duration, and they do not share anything but the API server).
func (b *Bench) failover(ctx context.Context, k int) (failoverResult, error) {
	ns, err := b.Namespace(ctx, "bench-failover", false)
	if err != nil {
		return failoverResult{}, err
	}
	var (
		mu   sync.Mutex
		res  failoverResult
		errs []error
		wg   sync.WaitGroup
	)
	run := func(dst *[]time.Duration, f func(int) (time.Duration, error), i int) {
		defer wg.Done()
		d, err := f(i)
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			errs = append(errs, err)
			return
		}
		*dst = append(*dst, d)
	}
	for i := 0; i < k; i++ {
		wg.Add(4)
		go run(&res.sidecarKilled, func(i int) (time.Duration, error) { return b.sidecarKilled(ctx, ns, i) }, i)
		go run(&res.sidecarRestarted, func(i int) (time.Duration, error) { return b.sidecarRestarted(ctx, ns, i) }, i)
		go run(&res.appKilled, func(i int) (time.Duration, error) { return b.appKilled(ctx, ns, i) }, i)
		go run(&res.baselineKilled, func(i int) (time.Duration, error) { return b.candidateKilled(ctx, ns, i) }, i)
	}
	wg.Wait()
	return res, errors.Join(errs...)
}

// waiterOn starts a blocking Acquire of name on a new session of sc and waits until the side-car
// counts it as waiting.
func waiterOn(ctx context.Context, sc *Sidecar, name string) (*sdk.Client, chan acquired, error) {
	c := sc.Client()
	got := make(chan acquired, 1)
	go func() {
		err := c.NewLock(name).Acquire(ctx)
		got <- acquired{time.Now(), err}
	}()
	if err := waitFor(10*time.Second, time.Millisecond, func() bool { return sc.Waiting("lock") >= 1 || len(got) > 0 }); err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("waiter on %s never waited", sc.Pod)
	}
	return c, got, nil
}

// awaitTakeover waits for the waiter's grant and returns t1 - t0.
func awaitTakeover(got chan acquired, t0 time.Time, what string) (time.Duration, error) {
	select {
	case a := <-got:
		if a.err != nil {
			return 0, fmt.Errorf("%s: the waiter's acquire failed: %w", what, a.err)
		}
		return a.at.Sub(t0), nil
	case <-time.After(2 * time.Minute):
		return 0, fmt.Errorf("%s: no takeover within 2 minutes", what)
	}
}

// sidecarPair starts the side-cars of two Pods, name-a (the holder's, with holderCfg) and name-b
// (the waiter's), with default timings; stop stops both.
func (b *Bench) sidecarPair(ctx context.Context, ns, name string, holderCfg elector.Config) (holder, waiter *Sidecar, stop func(), err error) {
	holder, err = b.StartSidecar(ctx, ns, name+"-a", nil, holderCfg)
	if err != nil {
		return nil, nil, nil, err
	}
	waiter, err = b.StartSidecar(ctx, ns, name+"-b", nil, elector.Config{})
	if err != nil {
		holder.Stop()
		return nil, nil, nil, err
	}
	return holder, waiter, func() { waiter.Stop(); holder.Stop() }, nil
}

// heldAndAwaited makes a client of holder hold lock name and one of waiter wait for it, then
// sleeps to a random point of the renewal cycle; got receives the waiter's grant, done closes
// both clients.
func (b *Bench) heldAndAwaited(ctx context.Context, holder, waiter *Sidecar, name string) (got chan acquired, done func(), err error) {
	hc := holder.Client()
	if err := hc.NewLock(name).Acquire(ctx); err != nil {
		hc.Close()
		return nil, nil, err
	}
	wc, got, err := waiterOn(ctx, waiter, name)
	if err != nil {
		hc.Close()
		return nil, nil, err
	}
	time.Sleep(time.Second + rand.N(contract.DefaultRenewPeriod))
	if len(got) > 0 {
		b.Anomaly("failover: the waiter took %s before its holder's side-car was killed", name)
	}
	return got, func() { wc.Close(); hc.Close() }, nil
}

// sidecarKilled: the holder's side-car dies without releasing; the waiter on another side-car
// takes over once the Lease has gone unrenewed for the lease duration.
func (b *Bench) sidecarKilled(ctx context.Context, ns string, i int) (time.Duration, error) {
	name := fmt.Sprintf("crash-sidecar-%d", i)
	holder, waiter, stop, err := b.sidecarPair(ctx, ns, name, elector.Config{})
	if err != nil {
		return 0, err
	}
	defer stop()
	got, done, err := b.heldAndAwaited(ctx, holder, waiter, name)
	if err != nil {
		return 0, err
	}
	defer done()
	t0 := time.Now()
	holder.Kill()
	d, err := awaitTakeover(got, t0, "side-car killed")
	if err == nil && d < contract.DefaultLeaseDuration-contract.DefaultRenewPeriod-500*time.Millisecond {
		b.Anomaly("failover: %s was taken over %s after its side-car died, before its Lease could have expired", name, d.Round(time.Millisecond))
	}
	return d, err
}

// sidecarRestarted: the holder's side-car, which knows its Pod's UID as an injected one does,
// dies without releasing and a new one of the same Pod starts at once (the kubelet's restart,
// without its delay of about a second): it releases the dead side-car's hold once the validity
// that side-car last promised has run out, and the waiter on another side-car takes over.
func (b *Bench) sidecarRestarted(ctx context.Context, ns string, i int) (time.Duration, error) {
	name := fmt.Sprintf("restart-sidecar-%d", i)
	cfg := elector.Config{PodUID: fmt.Sprintf("uid-%s-a", name)}
	holder, waiter, stop, err := b.sidecarPair(ctx, ns, name, cfg)
	if err != nil {
		return 0, err
	}
	defer stop()
	got, done, err := b.heldAndAwaited(ctx, holder, waiter, name)
	if err != nil {
		return 0, err
	}
	defer done()
	t0 := time.Now()
	holder.Kill()
	again, err := b.StartSidecar(ctx, ns, name+"-a", nil, cfg)
	if err != nil {
		return 0, err
	}
	defer again.Stop()
	return awaitTakeover(got, t0, "side-car restarted")
}

// appKilled: the holder's application process is killed (SIGKILL) while its side-car lives; the
// side-car sees the session's event stream close and releases at once.
func (b *Bench) appKilled(ctx context.Context, ns string, i int) (time.Duration, error) {
	name := fmt.Sprintf("crash-app-%d", i)
	holder, waiter, stop, err := b.sidecarPair(ctx, ns, name, elector.Config{})
	if err != nil {
		return 0, err
	}
	defer stop()

	cmd := exec.Command(b.Self, "app-holder", "-addr", holder.Addr, "-lock", name)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "held") {
		return 0, fmt.Errorf("application process: got %q, %v; want \"held\"", line, err)
	}
	wc, got, err := waiterOn(ctx, waiter, name)
	if err != nil {
		return 0, err
	}
	defer wc.Close()
	time.Sleep(time.Second + rand.N(time.Second))
	if len(got) > 0 {
		b.Anomaly("failover: the waiter took %s before its holder's application was killed", name)
	}
	t0 := time.Now()
	if err := cmd.Process.Kill(); err != nil {
		return 0, err
	}
	return awaitTakeover(got, t0, "application killed")
}

// candidateKilled: a client-go leader stops without releasing (ReleaseOnCancel false, as when
// its process dies); the next candidate is elected after the lease duration.
func (b *Bench) candidateKilled(ctx context.Context, ns string, i int) (time.Duration, error) {
	lease := fmt.Sprintf("crash-clientgo-%d", i)
	cur, err := b.StartCandidate(ns, lease, lease+"-a", nil, CandidateOptions{})
	if err != nil {
		return 0, err
	}
	defer cur.Stop()
	select {
	case <-cur.Started:
	case <-time.After(time.Minute):
		return 0, errors.New("client-go: first candidate not elected within a minute")
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	next, err := b.StartCandidate(ns, lease, lease+"-b", nil, CandidateOptions{ReleaseOnCancel: true})
	if err != nil {
		return 0, err
	}
	defer next.Stop()
	time.Sleep(time.Second + rand.N(BaselineRetryPeriod*2))
	t0 := time.Now()
	cur.Cancel()
	select {
	case t1 := <-next.Started:
		return t1.Sub(t0), nil
	case <-time.After(2 * time.Minute):
		return 0, errors.New("client-go: no takeover within 2 minutes of the crash")
	}
}

// AppHolder is the application process of the "application killed" scenario: it acquires lock
// name through the side-car at addr with the Go SDK, prints "held <token>", and waits to be
// killed. It returns only on failure: when the lock cannot be acquired, or is lost.
func AppHolder(addr, name string) error {
	c, err := sdk.NewClient(sdk.WithAddress(addr))
	if err != nil {
		return err
	}
	l := c.NewLock(name)
	if err := l.Acquire(context.Background()); err != nil {
		return err
	}
	fmt.Printf("held %d\n", l.Token())
	<-l.Lost()
	return fmt.Errorf("lock %q was lost before the process was killed", name)
}
