package harness

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/metaparticle-io/sync/elector"
	"github.com/metaparticle-io/sync/sdk"
)

type acquired struct {
	at  time.Time
	err error
}

// handoffOurs measures release → next holder between two side-cars, each with its own client
// and application session: the holder's application calls Release at t0; the waiter, blocked in
// Acquire on the other side-car, returns at t1. Returns n samples of t1 - t0.
// It also returns the durations of the Release calls.
func (b *Bench) handoffOurs(ctx context.Context, n int) (out, releases []time.Duration, err error) {
	ns, err := b.Namespace(ctx, "bench-handoff", false)
	if err != nil {
		return nil, nil, err
	}
	var sc [2]*Sidecar
	for i, pod := range []string{"pod-a", "pod-b"} {
		if sc[i], err = b.StartSidecar(ctx, ns, pod, nil, elector.Config{}); err != nil {
			return nil, nil, err
		}
		defer sc[i].Stop()
	}
	// Hold 20 to 60 ms: each side-car then writes fewer than 50 times a second (one write per
	// handoff: the release or the takeover), below its client's rate limit (QPS 50, burst 100),
	// which back-to-back handoffs would exhaust after about a hundred and then measure.
	return b.handoffBetween(ctx, sc, "handoff", n, 20*time.Millisecond)
}

// handoffBetween measures n handoffs of lock name between the applications of two side-cars,
// after 5 more to warm up, each holder keeping the lock a random time between hold and 3 × hold
// before its release, and returns them with the durations of the Release calls.
func (b *Bench) handoffBetween(ctx context.Context, sc [2]*Sidecar, name string, n int, hold time.Duration) (out, releases []time.Duration, err error) {
	var locks [2]*sdk.Lock
	for i := range sc {
		c := sc[i].Client()
		defer c.Close()
		locks[i] = c.NewLock(name)
	}
	if err := locks[0].Acquire(ctx); err != nil {
		return nil, nil, fmt.Errorf("first acquire: %w", err)
	}
	const warmup = 5
	holder, violations := 0, 0
	for i := 0; i < n+warmup; i++ {
		w := 1 - holder
		got := make(chan acquired, 1)
		go func() {
			err := locks[w].Acquire(ctx)
			got <- acquired{time.Now(), err}
		}()
		var early *acquired
		if err := waitFor(10*time.Second, 200*time.Microsecond, func() bool {
			select {
			case a := <-got:
				early = &a
				return true
			default:
			}
			return sc[w].Waiting("lock") >= 1
		}); err != nil {
			return nil, nil, errors.New("the waiter never showed up as waiting in its side-car")
		}
		if early != nil {
			if early.err != nil {
				return nil, nil, fmt.Errorf("acquire: %w", early.err)
			}
			violations++
			b.Anomaly("handoff: the waiter on %s was granted the lock while %s still held it (mutual exclusion broken)", sc[w].Pod, sc[holder].Pod)
			_ = locks[holder].Release(ctx)
			if violations >= 3 {
				return out, releases, errors.New("mutual exclusion broken 3 times; stopping the handoff benchmark")
			}
			holder = w
			continue
		}
		time.Sleep(hold + rand.N(2*hold))
		t0 := time.Now()
		if err := locks[holder].Release(ctx); err != nil {
			return nil, nil, fmt.Errorf("release: %w", err)
		}
		released := time.Since(t0)
		var a acquired
		select {
		case a = <-got:
		case <-time.After(30 * time.Second):
			return nil, nil, errors.New("the waiter was not granted the lock within 30 s of the release")
		}
		if a.err != nil {
			return nil, nil, fmt.Errorf("acquire: %w", a.err)
		}
		if i >= warmup {
			out = append(out, a.at.Sub(t0))
			releases = append(releases, released)
		}
		holder = w
	}
	return out, releases, locks[holder].Release(ctx)
}

// writeLatency times n updates of one Lease by the admin client: the API server's (and etcd's)
// write latency at the moment, as context for the handoff figures.
func (b *Bench) writeLatency(ctx context.Context, n int) ([]time.Duration, error) {
	ns, err := b.Namespace(ctx, "bench-probe", false)
	if err != nil {
		return nil, err
	}
	leases := b.Env.Clientset.CoordinationV1().Leases(ns)
	l, err := leases.Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "probe"}}, metav1.CreateOptions{})
	if err != nil {
		return nil, err
	}
	var out []time.Duration
	for i := 0; i < n; i++ {
		now := metav1.NewMicroTime(time.Now())
		l.Spec.RenewTime = &now
		t0 := time.Now()
		if l, err = leases.Update(ctx, l, metav1.UpdateOptions{}); err != nil {
			return nil, err
		}
		out = append(out, time.Since(t0))
	}
	return out, nil
}

// handoffBaseline measures the same with client-go: pairs run in parallel, each on its own
// Lease; in each round a new candidate starts waiting, the holder keeps the Lease for a random
// time (so that the release falls at a random point of the waiter's polling cycle), then its
// context is cancelled at t0 (ReleaseOnCancel clears the Lease); t1 is the waiter's
// OnStartedLeading.
func (b *Bench) handoffBaseline(ctx context.Context, pairs, rounds int) ([]time.Duration, error) {
	ns, err := b.Namespace(ctx, "bench-handoff-b", false)
	if err != nil {
		return nil, err
	}
	var (
		mu   sync.Mutex
		out  []time.Duration
		errs []error
		wg   sync.WaitGroup
	)
	for p := 0; p < pairs; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			samples, err := b.handoffPair(ctx, ns, fmt.Sprintf("handoff-%d", p), rounds)
			mu.Lock()
			defer mu.Unlock()
			out = append(out, samples...)
			if err != nil {
				errs = append(errs, err)
			}
		}()
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

func (b *Bench) handoffPair(ctx context.Context, ns, lease string, rounds int) ([]time.Duration, error) {
	opts := CandidateOptions{ReleaseOnCancel: true}
	cur, err := b.StartCandidate(ns, lease, lease+"-0", nil, opts)
	if err != nil {
		return nil, err
	}
	defer func() { cur.Stop() }()
	select {
	case <-cur.Started:
	case <-time.After(time.Minute):
		return nil, errors.New("client-go: the first candidate was not elected within a minute")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	var out []time.Duration
	for r := 1; r <= rounds; r++ {
		next, err := b.StartCandidate(ns, lease, fmt.Sprintf("%s-%d", lease, r), nil, opts)
		if err != nil {
			return out, err
		}
		// Hold for 0.5 to 4.5 s: longer than one polling cycle (2 to 4.4 s), so that the release
		// falls anywhere in it.
		time.Sleep(500*time.Millisecond + rand.N(4*time.Second))
		select {
		case <-next.Started:
			b.Anomaly("client-go handoff: %s was elected while %s held the Lease", next.ID, cur.ID)
			cur.Stop()
			cur = next
			continue
		default:
		}
		t0 := time.Now()
		cur.Cancel()
		select {
		case t1 := <-next.Started:
			out = append(out, t1.Sub(t0))
		case <-time.After(time.Minute):
			next.Stop()
			return out, errors.New("client-go: the waiter was not elected within a minute of the release")
		}
		cur.Stop()
		cur = next
	}
	return out, nil
}
