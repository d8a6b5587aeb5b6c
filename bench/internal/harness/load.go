package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/metaparticle-io/sync/elector"
)

// loadResult holds request counts over one window.
type loadResult struct {
	window                 time.Duration
	waiters                int
	ourHolder, ourWaiters  Counts // ourWaiters: all waiters together
	baseHolder, baseWaiter Counts
	// ourIdle: a side-car without sessions whose health port is probed as the injected probes
	// do (probes of them answered 200, of probesSent).
	ourIdle                    Counts
	probesSent, probesAnswered int
}

// load counts the API server requests of one held lock and of waiting candidates, ours and the
// baseline's at the same time, over one window, each component through its own counter.
func (b *Bench) load(ctx context.Context, window time.Duration, waiters int) (loadResult, error) {
	res := loadResult{window: window, waiters: waiters}
	ns, err := b.Namespace(ctx, "bench-load", false)
	if err != nil {
		return res, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	// Ours: one side-car holds the lock, each waiter waits in its own side-car.
	hCount := NewCounter()
	hs, err := b.StartSidecar(ctx, ns, "load-holder", hCount, elector.Config{})
	if err != nil {
		return res, err
	}
	defer hs.Stop()
	hc := hs.Client()
	defer hc.Close()
	if err := hc.NewLock("load").Acquire(ctx); err != nil {
		return res, err
	}
	var (
		wCounts []*Counter
		wGot    []chan acquired
	)
	for i := 0; i < waiters; i++ {
		c := NewCounter()
		ws, err := b.StartSidecar(ctx, ns, fmt.Sprintf("load-waiter-%d", i), c, elector.Config{})
		if err != nil {
			return res, err
		}
		defer ws.Stop()
		wc, got, err := waiterOn(ctx, ws, "load")
		if err != nil {
			return res, err
		}
		defer wc.Close()
		wCounts, wGot = append(wCounts, c), append(wGot, got)
	}

	// An idle Pod: a side-car without sessions, probed like the kubelet probes the injected one.
	iCount := NewCounter()
	is, err := b.StartSidecar(ctx, ns, "load-idle", iCount, elector.Config{})
	if err != nil {
		return res, err
	}
	defer is.Stop()
	healthURL, err := is.ServeHealth()
	if err != nil {
		return res, err
	}

	// Baseline: one client-go leader, and the same number of waiting candidates.
	bhCount := NewCounter()
	bh, err := b.StartCandidate(ns, "load-clientgo", "holder", bhCount, CandidateOptions{ReleaseOnCancel: true})
	if err != nil {
		return res, err
	}
	defer bh.Stop()
	select {
	case <-bh.Started:
	case <-time.After(time.Minute):
		return res, errors.New("client-go: the holder was not elected within a minute")
	}
	var bwCounts []*Counter
	for i := 0; i < waiters; i++ {
		c := NewCounter()
		bw, err := b.StartCandidate(ns, "load-clientgo", fmt.Sprintf("waiter-%d", i), c, CandidateOptions{ReleaseOnCancel: true})
		if err != nil {
			return res, err
		}
		defer bw.Stop()
		bwCounts = append(bwCounts, c)
	}

	// Let start-up traffic (informer list and watch, first polls) pass, then count.
	time.Sleep(time.Second)
	all := append(append([]*Counter{hCount, bhCount, iCount}, wCounts...), bwCounts...)
	for _, c := range all {
		c.Reset()
	}
	probed := make(chan [2]int, 1)
	go func() { probed <- probeLikeKubelet(ctx, healthURL, window) }()
	select {
	case <-time.After(window):
	case <-ctx.Done():
		return res, ctx.Err()
	}
	res.ourHolder, res.baseHolder, res.ourIdle = hCount.Snapshot(), bhCount.Snapshot(), iCount.Snapshot()
	p := <-probed
	res.probesSent, res.probesAnswered = p[0], p[1]
	if res.probesAnswered != res.probesSent {
		b.Anomaly("load: %d of the idle side-car's %d probes were not answered 200", res.probesSent-res.probesAnswered, res.probesSent)
	}
	res.ourWaiters, res.baseWaiter = Counts{}, Counts{}
	for _, c := range wCounts {
		res.ourWaiters = res.ourWaiters.Plus(c.Snapshot())
	}
	for _, c := range bwCounts {
		res.baseWaiter = res.baseWaiter.Plus(c.Snapshot())
	}
	for i, got := range wGot {
		if len(got) > 0 {
			b.Anomaly("load: waiter %d was granted the held lock during the window", i)
		}
	}
	return res, nil
}

// perMinute scales every count to a rate per minute and per component.
func perMinute(c Counts, window time.Duration, components int) map[string]float64 {
	m := map[string]float64{}
	for k, v := range c {
		m[k] = PerMinute(v, window) / float64(components)
	}
	return m
}

// probeLikeKubelet probes a side-car's health port as the injected probes do (readiness,
// /readyz, every 5 s; liveness, /healthz, every 10 s) for window, and returns the probes sent
// and those answered 200.
func probeLikeKubelet(ctx context.Context, base string, window time.Duration) [2]int {
	var sent, ok int
	hc := &http.Client{Timeout: time.Second} // the probes' timeoutSeconds
	probe := func(path string) {
		sent++
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
		if err != nil {
			return
		}
		resp, err := hc.Do(req)
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			ok++
		}
	}
	end := time.Now().Add(window)
	readiness, liveness := time.NewTicker(5*time.Second), time.NewTicker(10*time.Second)
	defer readiness.Stop()
	defer liveness.Stop()
	probe("/readyz")
	probe("/healthz")
	for time.Now().Before(end) {
		select {
		case <-readiness.C:
			probe("/readyz")
		case <-liveness.C:
			probe("/healthz")
		case <-ctx.Done():
			return [2]int{sent, ok}
		case <-time.After(time.Until(end)):
		}
	}
	return [2]int{sent, ok}
}
