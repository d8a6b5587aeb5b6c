package harness

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/metaparticle-io/sync/elector"
	"github.com/metaparticle-io/sync/sdk"
)

// stormRun is one side-car holding many locks while a storm of try-acquires of new names runs
// through it.
type stormRun struct {
	held, stormers int
	// lost: held locks whose Lost closed during the storm (what the application is told);
	// sidecarLost: the side-car's losses_total over the same time.
	lost, sidecarLost     int
	tries, granted, fails int64
	window                time.Duration
}

// storm runs the storm twice, on side-cars whose renewals have a rate budget of their own
// (ours) and share the one of all other work (today's design before issue 17), one after
// the other.
func (b *Bench) storm(ctx context.Context, held, stormers int, window time.Duration) (ours, oneBudget stormRun, err error) {
	if ours, err = b.stormOnce(ctx, held, stormers, window, false); err != nil {
		return ours, oneBudget, err
	}
	oneBudget, err = b.stormOnce(ctx, held, stormers, window, true)
	return ours, oneBudget, err
}

func (b *Bench) stormOnce(ctx context.Context, held, stormers int, window time.Duration, oneBudget bool) (stormRun, error) {
	r := stormRun{held: held, stormers: stormers, window: window}
	ns, err := b.Namespace(ctx, "bench-storm", false)
	if err != nil {
		return r, err
	}
	// Room for the held locks and the names being tried (--max-names).
	sc, err := b.startSidecar(ctx, ns, "storm", nil, elector.Config{Limits: elector.Limits{MaxNames: 4 * held}}, oneBudget)
	if err != nil {
		return r, err
	}
	defer sc.Stop()
	holder := sc.Client()
	defer holder.Close()
	locks := make([]*sdk.Lock, held)
	for i := range locks {
		locks[i] = holder.NewLock(fmt.Sprintf("held-%d", i))
		if err := locks[i].Acquire(ctx); err != nil {
			return r, fmt.Errorf("holding lock %d of %d: %w", i, held, err)
		}
	}
	lostBefore := sc.Losses()

	sctx, cancel := context.WithTimeout(ctx, window)
	defer cancel()
	var wg sync.WaitGroup
	var tries, granted, fails atomic.Int64
	for g := range stormers {
		c := sc.Client()
		defer c.Close()
		wg.Go(func() {
			for i := 0; sctx.Err() == nil; i++ {
				l := c.NewLock(fmt.Sprintf("storm-%d-%d", g, i))
				ok, err := l.TryAcquire(sctx)
				if sctx.Err() != nil {
					return
				}
				tries.Add(1)
				switch {
				case err != nil:
					fails.Add(1)
				case ok:
					granted.Add(1)
					_ = l.Release(sctx)
				}
			}
		})
	}
	wg.Wait()
	r.tries, r.granted, r.fails = tries.Load(), granted.Load(), fails.Load()
	r.sidecarLost = int(sc.Losses() - lostBefore)
	r.lost = lostOf(locks)
	return r, nil
}
