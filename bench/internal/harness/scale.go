package harness

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/metaparticle-io/sync/elector"
	"github.com/metaparticle-io/sync/sdk"
)

// scaleResult is one election among many candidates.
type scaleResult struct {
	candidates int
	leader     time.Duration // until the first candidate is told it leads
	allObserve time.Duration // until every candidate has observed the leader
	requests   Counts        // API server requests from the start until all observed
	leaders    int           // candidates told they lead (1 unless exclusion broke)
}

// scaleOurs runs n side-cars, each with one application session standing in one election, all
// joining at once. Each application also follows the election (Election.Watch) through its
// side-car; "observed" is when that reports the leader.
func (b *Bench) scaleOurs(ctx context.Context, n int) (scaleResult, error) {
	res := scaleResult{candidates: n}
	ns, err := b.Namespace(ctx, "bench-scale", false)
	if err != nil {
		return res, err
	}
	counter := NewCounter()
	sidecars := make([]*Sidecar, n)
	var errs []error
	var mu sync.Mutex
	parallel(n, 10, func(i int) {
		s, err := b.StartSidecar(ctx, ns, fmt.Sprintf("scale-%03d", i), counter, elector.Config{})
		mu.Lock()
		defer mu.Unlock()
		sidecars[i] = s
		if err != nil {
			errs = append(errs, err)
		}
	})
	defer func() {
		parallel(n, 20, func(i int) {
			if sidecars[i] != nil {
				sidecars[i].Stop()
			}
		})
	}()
	if err := errors.Join(errs...); err != nil {
		return res, err
	}

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	observed := make([]time.Time, n)
	ready := make([]bool, n)
	var elected []time.Time
	clients := make([]*sdk.Client, n)
	for i, s := range sidecars {
		clients[i] = s.Client()
		defer clients[i].Close()
		go func() {
			_ = clients[i].NewElection("scale", nil, nil).Watch(wctx, func(l sdk.Leader) {
				mu.Lock()
				defer mu.Unlock()
				ready[i] = true
				if l.Holder != "" && observed[i].IsZero() {
					observed[i] = time.Now()
				}
			})
		}()
	}
	count := func(xs []bool) int {
		mu.Lock()
		defer mu.Unlock()
		k := 0
		for _, x := range xs {
			if x {
				k++
			}
		}
		return k
	}
	if err := waitFor(time.Minute, 5*time.Millisecond, func() bool { return count(ready) == n }); err != nil {
		return res, errors.New("not every side-car's election watch started")
	}

	counter.Reset()
	t0 := time.Now()
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = clients[i].NewElection("scale", func(ctx context.Context) {
				mu.Lock()
				elected = append(elected, time.Now())
				mu.Unlock()
				<-ctx.Done()
			}, nil).Run(wctx)
		}()
	}
	if err := waitFor(2*time.Minute, time.Millisecond, func() bool { return allSet(&mu, observed) }); err != nil {
		return res, errors.New("not every candidate observed a leader within 2 minutes")
	}
	res.requests = counter.Snapshot()
	// The leader's elected function runs once a keep-alive sent after its elected event has
	// confirmed the leadership, which may be after the others observed it.
	_ = waitFor(time.Minute, time.Millisecond, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(elected) > 0
	})
	mu.Lock()
	res.leaders = len(elected)
	if len(elected) > 0 {
		res.leader = elected[0].Sub(t0)
	}
	for _, t := range observed {
		res.allObserve = max(res.allObserve, t.Sub(t0))
	}
	mu.Unlock()
	cancel()
	wg.Wait()
	return res, nil
}

// scaleBaseline runs n client-go candidates on one Lease, all started at once; "observed" is each
// candidate's first OnNewLeader with a non-empty identity.
func (b *Bench) scaleBaseline(ctx context.Context, n int) (scaleResult, error) {
	res := scaleResult{candidates: n}
	ns, err := b.Namespace(ctx, "bench-scale-b", false)
	if err != nil {
		return res, err
	}
	counter := NewCounter()
	var mu sync.Mutex
	observed := make([]time.Time, n)
	cands := make([]*Candidate, n)
	for i := range cands {
		cands[i], err = b.NewCandidate(ns, "scale", fmt.Sprintf("candidate-%03d", i), counter, CandidateOptions{
			ReleaseOnCancel: true,
			OnNewLeader: func(id string) {
				mu.Lock()
				defer mu.Unlock()
				if id != "" && observed[i].IsZero() {
					observed[i] = time.Now()
				}
			},
		})
		if err != nil {
			return res, err
		}
	}
	counter.Reset()
	t0 := time.Now()
	for _, c := range cands {
		c.Run()
	}
	defer func() {
		for _, c := range cands {
			c.Cancel()
		}
		for _, c := range cands {
			c.Stop()
		}
	}()
	if err := waitFor(2*time.Minute, time.Millisecond, func() bool { return allSet(&mu, observed) }); err != nil {
		return res, errors.New("client-go: not every candidate observed a leader within 2 minutes")
	}
	res.requests = counter.Snapshot()
	mu.Lock()
	for _, t := range observed {
		res.allObserve = max(res.allObserve, t.Sub(t0))
	}
	mu.Unlock()
	for _, c := range cands {
		select {
		case t := <-c.Started:
			res.leaders++
			if res.leader == 0 || t.Sub(t0) < res.leader {
				res.leader = t.Sub(t0)
			}
		default:
		}
	}
	return res, nil
}

// parallel calls f(0..n-1) with at most width calls at a time.
func parallel(n, width int, f func(int)) {
	sem := make(chan struct{}, width)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			f(i)
		}()
	}
	wg.Wait()
}

// allSet reports, under mu, whether every time in ts has been set.
func allSet(mu *sync.Mutex, ts []time.Time) bool {
	mu.Lock()
	defer mu.Unlock()
	for _, t := range ts {
		if t.IsZero() {
			return false
		}
	}
	return true
}
