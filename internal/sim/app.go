package sim

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/metaparticle-io/sync/sdk"
)

// app is one simulated application process: it uses the real Go SDK, over in-memory
// connections, to take the schedule's locks in turn, and while it holds one it writes to the
// fenced register with its token, checking before each write that the SDK has not reported the
// hold lost. It records what it was told in the World's history.
type app struct {
	w    *World
	idx  int
	name string
	sc   *sidecar
	rng  *rand.Rand // the decisions of run, the lock loop
	seed uint64     // for the random sources of stand, one per election

	client  *sdk.Client
	ctx     context.Context // ends when the process crashes or the schedule winds down
	cancel  context.CancelFunc
	running sync.WaitGroup // run and stand

	mu      sync.Mutex
	dead    bool // crashed: every connection is closed and no new one opens
	conns   map[net.Conn]struct{}
	crashAt time.Duration
}

func newApp(w *World, idx int, sc *sidecar, seed uint64, ttl time.Duration) (*app, error) {
	a := &app{w: w, idx: idx, sc: sc, name: fmt.Sprintf("%s/app-%d", sc.pod, idx), rng: rand.New(rand.NewPCG(seed, uint64(idx))), seed: seed,
		conns: map[net.Conn]struct{}{}}
	tr := &http.Transport{DialContext: a.dial, MaxIdleConnsPerHost: 16}
	opts := []sdk.Option{sdk.WithAddress("127.0.0.1:13131"), sdk.WithHTTPClient(&http.Client{Transport: tr})}
	if ttl > 0 {
		opts = append(opts, sdk.WithSessionTTL(ttl))
	}
	c, err := sdk.NewClient(opts...)
	if err != nil {
		return nil, err
	}
	a.client = c
	a.ctx, a.cancel = context.WithCancel(context.Background())
	return a, nil
}

func (a *app) dial(ctx context.Context, _, _ string) (net.Conn, error) {
	a.mu.Lock()
	dead := a.dead
	a.mu.Unlock()
	if dead {
		return nil, errors.New("the process is dead")
	}
	c, err := a.sc.ln.Dial(ctx)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.dead {
		c.Close()
		return nil, errors.New("the process is dead")
	}
	a.conns[c] = struct{}{}
	return c, nil
}

// crash kills the process: its connections close (the side-car sees its event stream end) and
// it does nothing more. Called by the driver, with w.mu held.
func (a *app) crash() {
	a.mu.Lock()
	a.dead = true
	a.crashAt = a.w.now()
	for c := range a.conns {
		c.Close()
	}
	a.mu.Unlock()
	a.cancel()
	a.w.hist.appCrashed(a.name, a.w.now())
}

func (a *app) isDead() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.dead
}

// pause sleeps for a random duration in [lo, hi).
func (a *app) pause(lo, hi time.Duration) bool {
	d := lo + time.Duration(a.rng.Int64N(int64(hi-lo)))
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-a.ctx.Done():
		return false
	}
}

// run takes locks until the app's context ends.
func (a *app) run(names []string, lease time.Duration) {
	defer a.running.Done()
	idle := a.w.cfg.DeleteIdleAfter
	for a.ctx.Err() == nil {
		if !a.pause(10*time.Millisecond, 300*time.Millisecond) {
			return
		}
		// Now and then a pause long enough for the side-cars to delete idle Leases, so that
		// deletions meet the grants of the next acquires.
		if idle > 0 && a.rng.IntN(3) == 0 && !a.pause(idle, 2*idle) {
			return
		}
		name := names[a.rng.IntN(len(names))]
		a.hold(name, a.rng.IntN(3), lease)
	}
}

// hold acquires name in one of three ways (0: blocking, 1: with a timeout, 2: one try), and if
// it got it, works under it for a while and releases it.
func (a *app) hold(name string, mode int, lease time.Duration) {
	lk := a.client.NewLock(name)
	ctx := a.ctx
	var cancel context.CancelFunc = func() {}
	switch mode {
	case 1:
		ctx, cancel = context.WithTimeout(a.ctx, time.Duration(a.rng.Int64N(int64(2*lease))))
	}
	start := a.w.now()
	var held bool
	var err error
	if mode == 2 {
		held, err = lk.TryAcquire(ctx)
	} else {
		err = lk.Acquire(ctx)
		held = err == nil
	}
	cancel()
	a.w.acquired(a, name, start, held, err)
	if !held || a.isDead() {
		return
	}
	token := lk.Token()
	lost := lk.Lost()
	if token == 0 {
		return // lost before the application could start: it never worked under it
	}
	a.w.granted(a, name, token)

	// Work: write to the register a few times, each time only if the hold was not lost.
	writes := 1 + a.rng.IntN(6)
	for i := 0; i < writes; i++ {
		t := time.NewTimer(time.Duration(a.rng.Int64N(int64(lease / 2))))
		select {
		case <-lost:
			t.Stop()
			a.w.told(a, name, token, "lost")
			return
		case <-a.ctx.Done():
			t.Stop()
			if a.isDead() {
				return // crashed: recorded by crash
			}
			i = writes // winding down: stop and release
			continue
		case <-t.C:
		}
		select {
		case <-lost:
			a.w.told(a, name, token, "lost")
			return
		default:
		}
		a.w.write(a, name, token)
	}
	a.w.told(a, name, token, "released")
	rctx, rcancel := context.WithTimeout(context.Background(), time.Minute)
	defer rcancel()
	_ = lk.Release(rctx)
}

// stand stands in election name until the app's context ends: while it leads, it writes to the
// fenced register with the term's token, stopping the instant the term's context is cancelled,
// and now and then it resigns.
func (a *app) stand(name string, lease time.Duration) {
	defer a.running.Done()
	hname := electionPrefix + name
	// A source of its own: run draws from a.rng concurrently.
	h := fnv.New64a()
	h.Write([]byte(name))
	rng := rand.New(rand.NewPCG(a.seed^h.Sum64(), uint64(a.idx)))
	var e *sdk.Election
	e = a.client.NewElection(name, func(ctx context.Context) {
		token, _ := sdk.LeaderToken(ctx)
		a.w.granted(a, hname, token)
		for {
			t := time.NewTimer(time.Duration(rng.Int64N(int64(lease / 2))))
			select {
			case <-ctx.Done():
				t.Stop()
				if !a.isDead() {
					a.w.told(a, hname, token, "deposed")
				}
				return
			case <-t.C:
			}
			if ctx.Err() != nil {
				continue // reported at the top
			}
			a.w.write(a, hname, token)
			if rng.IntN(8) == 0 {
				// Resign waits for this function to return: ask from another goroutine.
				go func() {
					rctx, cancel := context.WithTimeout(context.Background(), time.Minute)
					defer cancel()
					_ = e.Resign(rctx)
				}()
			}
		}
	}, nil)
	_ = e.Run(a.ctx)
}
