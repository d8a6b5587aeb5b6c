package sim

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"

	"github.com/metaparticle-io/sync/elector"
	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/wire"
)

// Fault is a kind of fault a schedule may inject.
type Fault string

// Faults the simulator injects.
const (
	// FaultCut cuts a side-car off from the API server for a while: its calls and events are
	// held (dropped packets, retransmitted when the cut ends), its watches may break.
	FaultCut Fault = "cut"
	// FaultFreeze pauses a side-car's process (SIGSTOP … SIGCONT): no timer fires, nothing is
	// read or written, on its API server connection or its applications'.
	FaultFreeze Fault = "freeze"
	// FaultRestart restarts the API server: every watch ends, calls fail while it is down.
	FaultRestart Fault = "restart"
	// FaultWatchDrop ends one side-car's watch, as a broken connection would.
	FaultWatchDrop Fault = "watch-drop"
	// FaultCompact compacts the API server's history and ends every watch: informers relist
	// after 410 Expired.
	FaultCompact Fault = "compact"
	// FaultAppCrash kills an application process: its connections close, it does nothing more.
	FaultAppCrash Fault = "app-crash"
	// FaultForeignRelease is a misbehaving local client: a process in a holder's Pod reads the
	// lock's holder from the side-car's public API and calls DELETE with the session it names,
	// without that session's secret.
	FaultForeignRelease Fault = "foreign-release"
)

// SafeFaults are the faults whose handling is expected to keep every invariant. Two joined
// them with fixes: FaultForeignRelease when session calls began to need the session's secret
// (it broke "told before granted" at seeds 1, 3 and 6 before), and FaultFreeze when clients
// began to count each hold's validity from the side-car's confirmations (seeds 9, 11 and 15
// before, with the generator of that time; Schedule.OldSidecar still reaches that defect).
var SafeFaults = []Fault{FaultCut, FaultRestart, FaultWatchDrop, FaultCompact, FaultAppCrash, FaultForeignRelease, FaultFreeze}

// Schedule is everything a seed decides about one simulated run.
type Schedule struct {
	Seed       uint64
	Sidecars   int
	Apps       int      // per side-car
	Names      []string // locks
	Elections  []string // elections every application stands in (may be none)
	Timing     contract.Timing
	SessionTTL time.Duration // 0: the SDK's default
	Rates      []float64     // each side-car's clock rate
	Duration   time.Duration // of the fault phase
	Faults     []PlannedFault

	MaxAPILatency, MaxWatchLatency time.Duration

	// DeleteIdleAfter is the side-cars' elector.Config.DeleteIdleAfter: a lease duration (idle
	// Leases are deleted while the applications come and go) or negative (never).
	DeleteIdleAfter time.Duration

	// OldSidecar makes the side-cars answer as before hold validity existed (no
	// keepAliveMillis, validForMillis or keep-alive body), so that the SDK falls back to
	// noticing only silence: with FaultFreeze and a long session TTL the simulator then finds
	// the defect that validity fixed.
	OldSidecar bool
}

// PlannedFault is one fault of a schedule.
type PlannedFault struct {
	Kind   Fault
	At     time.Duration
	For    time.Duration
	Target int // side-car, or application, index
	Name   string
}

func (f PlannedFault) String() string {
	return fmt.Sprintf("%s at %.3fs for %s on %d %s", f.Kind, f.At.Seconds(), f.For, f.Target, f.Name)
}

// RelistBackoff is the longest pause client-go's reflector makes between failed lists.
const RelistBackoff = 30 * time.Second

// MaxDrift bounds how far a side-car's clock rate differs from real time: 0.1%, far more than
// real quartz (50 ppm) and within what the lease duration's margin over the renew deadline
// absorbs.
const MaxDrift = 0.001

// NewSchedule derives a schedule from seed, with faults of the given kinds.
func NewSchedule(seed uint64, kinds []Fault) Schedule {
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	s := Schedule{Seed: seed, Sidecars: 2 + r.IntN(2), Apps: 1 + r.IntN(2)}
	s.Names = []string{"a", "b"}[:1+r.IntN(2)]
	if r.IntN(2) == 0 {
		s.Elections = []string{"leader"}
	}
	timings := []contract.Timing{
		{LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RenewPeriod: time.Second, RetryPeriod: 200 * time.Millisecond},
		{LeaseDuration: 4 * time.Second, RenewDeadline: 3 * time.Second, RenewPeriod: time.Second, RetryPeriod: 500 * time.Millisecond},
		{LeaseDuration: 2 * time.Second, RenewDeadline: 1500 * time.Millisecond, RenewPeriod: 500 * time.Millisecond, RetryPeriod: 100 * time.Millisecond},
	}
	s.Timing = timings[r.IntN(len(timings))]
	switch r.IntN(3) {
	case 1:
		s.SessionTTL = wire.MinSessionTTL + time.Duration(r.Int64N(int64(4*time.Second)))
	case 2:
		s.SessionTTL = 10*time.Second + time.Duration(r.Int64N(int64(20*time.Second)))
	}
	for i := 0; i < s.Sidecars; i++ {
		s.Rates = append(s.Rates, 1+MaxDrift*(2*r.Float64()-1))
	}
	s.Duration = 8*time.Second + time.Duration(r.Int64N(int64(8*time.Second)))
	s.MaxAPILatency = time.Duration(r.Int64N(int64(20 * time.Millisecond)))
	s.MaxWatchLatency = time.Duration(r.Int64N(int64(50 * time.Millisecond)))
	// From a stream of its own, so that what the main stream decides stays what it was for
	// seeds recorded before idle deletion existed.
	if rand.New(rand.NewPCG(seed, 0x1d1e)).IntN(2) == 0 {
		s.DeleteIdleAfter = s.Timing.LeaseDuration
	} else {
		s.DeleteIdleAfter = -1
	}
	if len(kinds) > 0 {
		n := r.IntN(5)
		for i := 0; i < n; i++ {
			f := PlannedFault{Kind: kinds[r.IntN(len(kinds))], At: 500*time.Millisecond + time.Duration(r.Int64N(int64(s.Duration-time.Second)))}
			switch f.Kind {
			case FaultCut, FaultFreeze, FaultRestart:
				f.For = time.Duration(r.Int64N(int64(2 * s.Timing.LeaseDuration)))
			}
			f.Target = r.IntN(s.Sidecars * s.Apps)
			f.Name = s.Names[r.IntN(len(s.Names))]
			s.Faults = append(s.Faults, f)
		}
	}
	return s
}

func (s Schedule) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "seed %d: %d side-cars × %d apps, locks %v, elections %v, timing %s/%s/%s/%s, session TTL %s, rates %v, %s of faults, API latency ≤ %s, watch latency ≤ %s, idle Leases deleted after %s",
		s.Seed, s.Sidecars, s.Apps, s.Names, s.Elections, s.Timing.LeaseDuration, s.Timing.RenewDeadline, s.Timing.RenewPeriod, s.Timing.RetryPeriod,
		s.SessionTTL, s.Rates, s.Duration, s.MaxAPILatency, s.MaxWatchLatency, s.DeleteIdleAfter)
	for _, f := range s.Faults {
		fmt.Fprintf(&b, "\n  fault %s", f)
	}
	return b.String()
}

// electionPrefix marks the history names of elections ("e:<name>"); other names are locks.
const electionPrefix = "e:"

// leaseOf returns the Lease of a history name.
func leaseOf(name string) string {
	if e, ok := strings.CutPrefix(name, electionPrefix); ok {
		return contract.LeaseName(wire.KindElection, e)
	}
	return contract.LeaseName(wire.KindLock, name)
}

// Result is the outcome of one schedule.
type Result struct {
	Schedule   Schedule
	Violations []string
	Trace      []string
	Faults     map[Fault]int
	Grants     int // holds the applications worked under: locks and election terms
	Terms      int // of which election terms
	Deletes    int // idle Leases deleted by the side-cars
}

// Run runs schedule s. It must be called inside a synctest bubble; wait is synctest.Wait.
func Run(s Schedule, wait func(), log logr.Logger) Result {
	w := &World{cfg: s, rng: rand.New(rand.NewPCG(s.Seed, 0xd21fe7)), start: time.Now(), api: newAPIState(), hist: newHistory(), wake: make(chan struct{}, 1)}
	res := Result{Schedule: s, Faults: map[Fault]int{}}
	cfg := elector.Config{Namespace: "sim", LeaseDuration: s.Timing.LeaseDuration, RenewDeadline: s.Timing.RenewDeadline,
		RenewPeriod: s.Timing.RenewPeriod, RetryPeriod: s.Timing.RetryPeriod, ShutdownTimeout: 5 * time.Second, DeleteIdleAfter: s.DeleteIdleAfter}
	for i := 0; i < s.Sidecars; i++ {
		sc, err := newSidecar(w, i, fmt.Sprintf("pod-%d", i), cfg, s.Rates[i], log.WithValues("pod", i))
		if err != nil {
			res.Violations = append(res.Violations, "side-car: "+err.Error())
			return res
		}
		w.sidecars = append(w.sidecars, sc)
	}
	for i := 0; i < s.Sidecars*s.Apps; i++ {
		a, err := newApp(w, i, w.sidecars[i/s.Apps], s.Seed, s.SessionTTL)
		if err != nil {
			res.Violations = append(res.Violations, "app: "+err.Error())
			return res
		}
		w.apps = append(w.apps, a)
	}
	w.mu.Lock()
	for _, f := range s.Faults {
		w.plan(f)
		res.Faults[f.Kind]++
	}
	w.mu.Unlock()
	go w.scenario()
	hist := w.Run(wait)
	w.mu.Lock()
	defer w.mu.Unlock()
	res.Violations = append(res.Violations, hist.check(leaseOf)...)
	res.Trace = slices.Clone(w.trace)
	res.Grants = len(hist.holds)
	res.Deletes = w.deletes
	for _, h := range hist.holds {
		if strings.HasPrefix(h.name, electionPrefix) {
			res.Terms++
		}
	}
	return res
}

// scenario is the schedule's script: start, let the applications work through the faults,
// wind down, check liveness, stop.
func (w *World) scenario() {
	defer func() {
		w.mu.Lock()
		w.hist.ended = true
		w.mu.Unlock()
		signal(w.wake)
	}()
	done := make(chan error, len(w.sidecars))
	for _, sc := range w.sidecars {
		go func() { done <- sc.start() }()
	}
	for range w.sidecars {
		if err := <-done; err != nil {
			w.record("start: %v", err)
			w.stopAll()
			return
		}
	}
	for _, a := range w.apps {
		a.running.Add(1)
		go a.run(w.cfg.Names, w.cfg.Timing.LeaseDuration)
		for _, e := range w.cfg.Elections {
			a.running.Add(1)
			go a.stand(e, w.cfg.Timing.LeaseDuration)
		}
	}
	time.Sleep(w.cfg.Duration)
	// Every fault has ended by now (plan clamps them). Wind down: the applications stop and
	// release what they hold.
	w.mu.Lock()
	w.tracef("winding down")
	w.mu.Unlock()
	for _, a := range w.apps {
		a.cancel()
	}
	for _, a := range w.apps {
		a.running.Wait()
	}
	// Liveness: with no fault left, one live application per name acquires it within the
	// bound. A Lease whose holder is gone expires after the lease duration, measured from when
	// each side-car last saw it change; a side-car sees it only after its informer relisted,
	// and client-go's reflector backs its relists off up to 30 s after repeated failures (a long
	// API server outage), which dominates the bound.
	bound := w.cfg.Timing.LeaseDuration*2 + w.cfg.Timing.RenewDeadline + RelistBackoff + 5*time.Second
	for _, name := range w.cfg.Names {
		a := w.liveApp()
		if a == nil {
			break
		}
		lk := a.client.NewLock(name)
		ctx, cancel := context.WithTimeout(context.Background(), bound)
		start := time.Now()
		err := lk.Acquire(ctx)
		cancel()
		f := finalAcquire{name: name, ok: err == nil, took: time.Since(start)}
		if err != nil {
			f.err = err.Error()
		}
		w.mu.Lock()
		w.tracef("final acquire of %s by %s: %v after %s", name, a.name, err, f.took)
		w.hist.final = append(w.hist.final, f)
		w.mu.Unlock()
		if err == nil {
			rctx, rcancel := context.WithTimeout(context.Background(), time.Minute)
			_ = lk.Release(rctx)
			rcancel()
		}
	}
	for _, name := range w.cfg.Elections {
		a := w.liveApp()
		if a == nil {
			break
		}
		ctx, cancel := context.WithTimeout(context.Background(), bound)
		start := time.Now()
		led := make(chan struct{})
		var once sync.Once
		e := a.client.NewElection(name, func(context.Context) { once.Do(func() { close(led) }) }, nil)
		ran := make(chan error, 1)
		go func() { ran <- e.Run(ctx) }()
		var err error
		select {
		case <-led:
		case <-ctx.Done():
			err = ctx.Err()
		}
		cancel()
		<-ran
		f := finalAcquire{name: electionPrefix + name, ok: err == nil, took: time.Since(start)}
		if err != nil {
			f.err = err.Error()
		}
		w.mu.Lock()
		w.tracef("final election %s by %s: %v after %s", name, a.name, err, f.took)
		w.hist.final = append(w.hist.final, f)
		w.mu.Unlock()
	}
	w.stopAll()
}

// liveApp returns the first application that has not crashed, or nil.
func (w *World) liveApp() *app {
	for _, a := range w.apps {
		if !a.isDead() {
			return a
		}
	}
	return nil
}

func (w *World) record(format string, args ...any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.hist.violatef(format, args...)
}

// stopAll closes every client and shuts every side-car down.
func (w *World) stopAll() {
	for _, a := range w.apps {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_ = a.client.Close()
		cancel()
		a.mu.Lock()
		a.dead = true
		for c := range a.conns {
			c.Close()
		}
		a.mu.Unlock()
		_ = ctx
	}
	for _, sc := range w.sidecars {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := sc.e.Shutdown(ctx); err != nil {
			w.record("%s shutdown: %v", sc.pod, err)
		}
		cancel()
		sc.stop()
	}
	w.mu.Lock()
	for _, aw := range w.api.sortedWatches() {
		w.closeWatchLocked(aw)
	}
	w.mu.Unlock()
}

// plan schedules fault f. Called with w.mu held.
func (w *World) plan(f PlannedFault) {
	end := min(f.At+f.For, w.cfg.Duration)
	sc := w.sidecars[f.Target%len(w.sidecars)]
	switch f.Kind {
	case FaultCut:
		w.schedule(f.At, fmt.Sprintf("fault: %s cut off from the API server", sc.pod), func() {
			sc.cut++
			for _, aw := range w.api.sortedWatches() {
				if aw.sc == sc && w.rng.IntN(2) == 0 {
					w.closeWatchLocked(aw)
				}
			}
		})
		w.schedule(end, fmt.Sprintf("fault ends: %s reconnected", sc.pod), func() { sc.cut-- })
	case FaultFreeze:
		w.schedule(f.At, fmt.Sprintf("fault: %s frozen (SIGSTOP)", sc.pod), sc.freeze)
		w.schedule(end, fmt.Sprintf("fault ends: %s continued (SIGCONT)", sc.pod), sc.thaw)
	case FaultRestart:
		w.schedule(f.At, "fault: the API server restarts", func() {
			w.api.down++
			for _, aw := range w.api.sortedWatches() {
				w.closeWatchLocked(aw)
			}
		})
		w.schedule(end, "fault ends: the API server is back", func() { w.api.down-- })
	case FaultWatchDrop:
		w.schedule(f.At, fmt.Sprintf("fault: %s's watch breaks", sc.pod), func() {
			for _, aw := range w.api.sortedWatches() {
				if aw.sc == sc {
					w.closeWatchLocked(aw)
				}
			}
		})
	case FaultCompact:
		w.schedule(f.At, "fault: the API server compacts its history; every watch ends", func() {
			w.api.compact()
			for _, aw := range w.api.sortedWatches() {
				w.closeWatchLocked(aw)
			}
		})
	case FaultAppCrash:
		a := w.apps[f.Target%len(w.apps)]
		w.schedule(f.At, fmt.Sprintf("fault: %s crashes", a.name), a.crash)
	case FaultForeignRelease:
		a := w.apps[f.Target%len(w.apps)]
		w.schedule(f.At, fmt.Sprintf("fault: a process beside %s releases %s for its holder", a.name, f.Name), func() {
			go w.foreignRelease(a.sc, f.Name)
		})
	}
}
