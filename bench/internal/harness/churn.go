package harness

import (
	"context"
	"fmt"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/metaparticle-io/sync/elector"
	"github.com/metaparticle-io/sync/internal/contract"
)

// churnIdle is the side-car's --delete-idle-leases-after in the churn benchmark: its smallest
// value, the default lease duration.
const churnIdle = contract.DefaultLeaseDuration

// churnRun is a lock-per-order pattern through one side-car: a new lock name every 1/rate,
// acquired and released at once, for a window; then the Leases left in the namespace are
// counted at the end of the window and again once every Lease could have become idle and been
// swept.
type churnRun struct {
	rate            float64 // new names a second
	window, idle    time.Duration
	names           int // locks taken
	leftAtEnd, left int // Leases in the namespace at the end of the window, and idle+2 sweeps later
	deleted         float64
}

// churn runs the pattern twice at once, in namespaces of their own: on a side-car that deletes
// idle Leases after idle (ours) and on one that never does (the design before issue 17).
func (b *Bench) churn(ctx context.Context, rate float64, window, idle time.Duration) (ours, never churnRun, err error) {
	var wg sync.WaitGroup
	var oerr, nerr error
	wg.Go(func() { ours, oerr = b.churnOnce(ctx, "bench-churn", rate, window, idle) })
	wg.Go(func() { never, nerr = b.churnOnce(ctx, "bench-churn-never", rate, window, -1) })
	wg.Wait()
	if oerr != nil {
		return ours, never, oerr
	}
	return ours, never, nerr
}

func (b *Bench) churnOnce(ctx context.Context, prefix string, rate float64, window, idle time.Duration) (churnRun, error) {
	r := churnRun{rate: rate, window: window, idle: idle}
	ns, err := b.Namespace(ctx, prefix, false)
	if err != nil {
		return r, err
	}
	sc, err := b.startSidecar(ctx, ns, "churn", nil, elector.Config{DeleteIdleAfter: idle}, false)
	if err != nil {
		return r, err
	}
	defer sc.Stop()
	c := sc.Client()
	defer c.Close()
	tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer tick.Stop()
	end := time.Now().Add(window)
	for time.Now().Before(end) {
		select {
		case <-ctx.Done():
			return r, ctx.Err()
		case <-tick.C:
		}
		l := c.NewLock(fmt.Sprintf("order-%06d", r.names))
		if err := l.Acquire(ctx); err != nil {
			return r, fmt.Errorf("order %d: %w", r.names, err)
		}
		if err := l.Release(ctx); err != nil {
			return r, fmt.Errorf("releasing order %d: %w", r.names, err)
		}
		r.names++
	}
	cs, err := kubernetes.NewForConfig(b.RestConfig(nil, "bench-count"))
	if err != nil {
		return r, err
	}
	count := func() (int, error) {
		list, err := cs.CoordinationV1().Leases(ns).List(ctx, metav1.ListOptions{LabelSelector: contract.LabelManagedBy + "=" + contract.ManagedByValue})
		if err != nil {
			return 0, err
		}
		return len(list.Items), nil
	}
	if r.leftAtEnd, err = count(); err != nil {
		return r, err
	}
	// Every Lease is idle by idle after its release, and swept within two sweep periods (a
	// tenth of idle each) and the pace of deletions.
	if idle > 0 {
		time.Sleep(idle + idle/5 + time.Duration(float64(r.leftAtEnd)/float64(elector.DefaultIdleDeleteRate)*float64(time.Second)))
	}
	if r.left, err = count(); err != nil {
		return r, err
	}
	r.deleted = sc.Sample("metaparticle_sync_idle_deletions_total", "result", "deleted")
	return r, nil
}
