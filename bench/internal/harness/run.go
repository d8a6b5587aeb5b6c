package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/metaparticle-io/sync/elector"
	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/internal/testenv"
)

// sizes are the sample counts and windows of a run.
type sizes struct {
	handoffs              int // ours, sequential
	basePairs, baseRounds int // baseline handoffs = pairs × rounds
	crashes               int // samples of each crash scenario
	loadWindow            time.Duration
	loadWaiters           int
	handlerFor            time.Duration
	pods                  int // Pod creates of each kind
	scale                 int // candidates
	launches, manyLocks   int
	settle                time.Duration
	stormHeld, stormers   int // locks held through the storm; goroutines trying new names
	stormWindow           time.Duration
	cacheLeases           []int         // managed Leases in the namespace, for the side-car's RSS
	churnRate             float64       // new lock names a second, each acquired and released
	churnWindow           time.Duration // of the lock-per-order pattern
	watch                 []watchScenario
	watchWindow           time.Duration // of each watch-cost scenario, in each scope
	watchHandoffs         int           // handoffs measured after it
}

func (b *Bench) sizes() sizes {
	if b.Quick {
		return sizes{handoffs: 40, basePairs: 10, baseRounds: 2, crashes: 2, loadWindow: 10 * time.Second, loadWaiters: 2,
			handlerFor: time.Second, pods: 30, scale: 25, launches: 2, manyLocks: 100, settle: time.Second,
			stormHeld: 50, stormers: 4, stormWindow: 15 * time.Second, cacheLeases: []int{100, 1000}, churnRate: 5, churnWindow: 10 * time.Second,
			watch:       []watchScenario{{id: "watch-own", pods: 8, locks: 1}, {id: "watch-election", pods: 8, election: true}, {id: "watch-many", pods: 4, locks: 10}},
			watchWindow: 3 * time.Second, watchHandoffs: 5}
	}
	return sizes{handoffs: 250, basePairs: 20, baseRounds: 10, crashes: 5, loadWindow: time.Minute, loadWaiters: 2,
		handlerFor: 5 * time.Second, pods: 150, scale: 100, launches: 5, manyLocks: 1000, settle: 2 * time.Second,
		stormHeld: 300, stormers: 8, stormWindow: time.Minute, cacheLeases: []int{1000, 10000, 50000}, churnRate: 5, churnWindow: time.Minute,
		watch:       []watchScenario{{id: "watch-own", pods: 200, locks: 1}, {id: "watch-election", pods: 200, election: true}, {id: "watch-many", pods: 50, locks: 20}},
		watchWindow: time.Minute, watchHandoffs: 100}
}

// Run starts the control plane, runs every benchmark and returns the report. A benchmark that
// fails is reported as an anomaly and its figures are left out; the returned error then says
// which failed, after the report was completed with the others.
func Run(ctx context.Context, o Options) (*Report, error) {
	b := &Bench{Options: o, Report: &Report{Anomalies: []string{}}, start: time.Now()}
	tmp, err := os.MkdirTemp("", "metaparticle-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	b.tmp = tmp
	sz := b.sizes()

	// Build the side-car and the baseline's footprint program while the control plane starts.
	bins := map[string]string{"elector": "./cmd/elector", "clientgo-holder": "./bench/cmd/clientgo-holder"}
	var buildErr error
	var buildWG sync.WaitGroup
	buildWG.Add(1)
	go func() {
		defer buildWG.Done()
		for name, pkg := range bins {
			cmd := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(tmp, name), pkg)
			cmd.Dir = o.Root
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = errors.Join(buildErr, fmt.Errorf("go build %s: %v\n%s", pkg, err, out))
			}
		}
	}()

	mwc, err := testenv.ShippedWebhookConfiguration(o.Root)
	if err != nil {
		return nil, err
	}
	b.logf("starting kube-apiserver and etcd (envtest)")
	env, err := testenv.Start(testenv.WithWebhooks(mwc))
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := env.Stop(); err != nil {
			b.logf("stopping the control plane: %v", err)
		}
	}()
	b.Env = env
	b.meta()

	var failed []string
	phase := func(name string, f func() error) {
		if o.Only != "" && !strings.Contains(name, o.Only) {
			return
		}
		b.logf("%s", name)
		if err := f(); err != nil {
			b.Anomaly("%s failed: %v", name, err)
			failed = append(failed, name)
		}
	}

	// Nothing is measured while the binaries build: the compiler would take both cores.
	buildWG.Wait()

	phase("admission", func() error {
		r, err := b.admission(ctx, sz.handlerFor, sz.pods)
		if err == nil {
			b.reportAdmission(r)
		}
		return err
	})
	phase("handoff (ours)", func() error {
		var err error
		if b.writes, err = b.writeLatency(ctx, 50); err != nil {
			return err
		}
		b.handoff, b.releases, err = b.handoffOurs(ctx, sz.handoffs)
		return err
	})
	// The baseline's handoffs, the crash scenarios and the load window mostly wait (for
	// polling periods, lease durations and the window), so they run side by side.
	phase("handoff (client-go), failover and API server load, side by side", func() error {
		var wg sync.WaitGroup
		var errH, errF, errL error
		var fo failoverResult
		var ld loadResult
		wg.Add(3)
		go func() { defer wg.Done(); b.handoffBase, errH = b.handoffBaseline(ctx, sz.basePairs, sz.baseRounds) }()
		go func() { defer wg.Done(); fo, errF = b.failover(ctx, sz.crashes) }()
		go func() { defer wg.Done(); ld, errL = b.load(ctx, sz.loadWindow, sz.loadWaiters) }()
		wg.Wait()
		b.reportHandoff()
		if errF == nil {
			b.reportFailover(fo)
		}
		if errL == nil {
			b.reportLoad(ld)
		}
		return errors.Join(errH, errF, errL)
	})
	phase(fmt.Sprintf("election among %d candidates", sz.scale), func() error {
		ours, err := b.scaleOurs(ctx, sz.scale)
		if err != nil {
			return err
		}
		base, err := b.scaleBaseline(ctx, sz.scale)
		if err != nil {
			return err
		}
		b.reportScale(ours, base)
		return nil
	})
	phase(fmt.Sprintf("%d held locks through a storm of try-acquires", sz.stormHeld), func() error {
		ours, one, err := b.storm(ctx, sz.stormHeld, sz.stormers, sz.stormWindow)
		if err == nil {
			b.reportStorm(ours, one)
		}
		return err
	})
	phase(fmt.Sprintf("a lock per order, %.0f new names a second for %s", sz.churnRate, sz.churnWindow), func() error {
		ours, never, err := b.churn(ctx, sz.churnRate, sz.churnWindow, churnIdle)
		if err == nil {
			b.reportChurn(ours, never)
		}
		return err
	})
	phase("watch cost: side-cars watching the names they use, and every Lease of the namespace", func() error {
		if buildErr != nil {
			return buildErr
		}
		kubeconfig, err := b.writeKubeconfig()
		if err != nil {
			return err
		}
		var errs []error
		for _, sc := range sz.watch {
			var runs [2]watchRun
			for i, scope := range []string{elector.WatchNames, elector.WatchNamespace} {
				b.logf("watch cost: %s, watch scope %s", sc, scope)
				r, err := b.watchCost(ctx, filepath.Join(tmp, "elector"), kubeconfig, sc, scope, sz.watchWindow, sz.watchHandoffs)
				if err != nil {
					errs = append(errs, fmt.Errorf("%s, scope %s: %w", sc, scope, err))
				}
				runs[i] = r
			}
			if len(errs) == 0 {
				b.reportWatchCost(sc, runs[0], runs[1])
			}
		}
		return errors.Join(errs...)
	})
	phase("side-car footprint", func() error {
		if buildErr != nil {
			return buildErr
		}
		r, err := b.footprint(ctx, filepath.Join(tmp, "elector"), filepath.Join(tmp, "clientgo-holder"), sz.launches, sz.manyLocks, sz.settle)
		if err == nil {
			b.reportFootprint(r, sz.manyLocks)
		}
		sizes, cerr := b.cacheSizes(ctx, filepath.Join(tmp, "elector"), sz.cacheLeases, sz.settle)
		b.reportCacheSizes(sizes)
		return errors.Join(err, cerr)
	})

	slices.SortStableFunc(b.Report.Metrics, func(x, y Metric) int { return strings.Compare(x.Section, y.Section) })
	b.Report.Meta.DurationSeconds = time.Since(b.start).Seconds()
	b.Report.Targets = Targets()
	b.Report.Notes = b.notes(sz)
	b.Report.Evaluate()
	if len(failed) > 0 {
		return b.Report, fmt.Errorf("failed: %s", strings.Join(failed, "; "))
	}
	return b.Report, nil
}

// Targets are the goals of issue 10, and those of later issues measured here.
func Targets() []Target {
	return []Target{
		{ID: "handoff-p50", Text: "handoff p50 ≤ 15 ms", MetricID: "handoff-p50", Op: "<=", Goal: 15, Unit: "ms"},
		{ID: "handoff-ratio", Text: "handoff ≥ 50× faster than the baseline (p50)", MetricID: "handoff-p50", OnRatio: true, Op: ">=", Goal: 50},
		{ID: "waiter-requests", Text: "0 requests per waiting candidate per minute (watch only)", MetricID: "load-waiter", Op: "<=", Goal: 0, Unit: "req/min"},
		{ID: "idle-requests", Text: "0 API requests per idle Pod per minute, its probes included", MetricID: "load-idle", Op: "<=", Goal: 0, Unit: "req/min"},
		{ID: "storm-lost", Text: "0 held locks (300 in the full run) lost through a storm of try-acquires of new names", MetricID: "storm-lost", Op: "<=", Goal: 0, Unit: "holds"},
		{ID: "holder-writes", Text: "≤ 12 writes per held lock per minute at default timings", MetricID: "load-holder-writes", Op: "<=", Goal: 12, Unit: "writes/min"},
		{ID: "admission-p99", Text: "admission p99 ≤ 2 ms (handler, one core)", MetricID: "admission-handler-p99", Op: "<=", Goal: 2, Unit: "ms"},
		{ID: "rss-10k-leases", Text: "side-car RSS ≤ 64 MiB with 10,000 Leases in its namespace", MetricID: "cache-10000", Op: "<=", Goal: 64, Unit: "MiB"},
		{ID: "churn-left", Text: "0 Leases left of a lock-per-order pattern once they have been idle for --delete-idle-leases-after", MetricID: "churn-left", Op: "<=", Goal: 0, Unit: "Leases"},
		{ID: "rss-idle", Text: "side-car RSS ≤ 20 MiB idle", MetricID: "footprint-idle", Op: "<=", Goal: 20, Unit: "MiB"},
		{ID: "watch-own-ratio", Text: "≥ 50× fewer Lease watch events than watching the namespace, side-cars each holding its own lock (200 in the full run)", MetricID: "watch-own-events", OnRatio: true, Op: ">=", Goal: 50},
		{ID: "watch-handoff-p50", Text: "handoff p50 ≤ 15 ms among 200 side-cars each holding its own lock", MetricID: "watch-own-handoff-p50", Op: "<=", Goal: 15, Unit: "ms"},
	}
}

func (b *Bench) meta() {
	m := &b.Report.Meta
	m.Date = time.Now().UTC().Format(time.RFC3339)
	m.Quick = b.Quick
	m.CPUs = runtime.NumCPU()
	m.GoVersion = runtime.Version()
	m.Platform = runtime.GOOS + "/" + runtime.GOARCH
	if v, err := b.Env.Clientset.Discovery().ServerVersion(); err == nil {
		m.Kubernetes = v.GitVersion
	}
	if raw, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(raw), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if raw, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(raw)); len(f) >= 3 {
			m.LoadAverage = strings.Join(f[:3], " ")
		}
	}
	m.Modules = map[string]string{}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			switch d.Path {
			case "k8s.io/client-go", "sigs.k8s.io/controller-runtime":
				m.Modules[d.Path] = d.Version
			}
		}
	}
	m.OurTimings = fmt.Sprintf("side-car defaults: lease duration %s, renew deadline %s, renew period %s, retry period %s; client QPS 50, burst 100",
		contract.DefaultLeaseDuration, contract.DefaultRenewDeadline, contract.DefaultRenewPeriod, contract.DefaultRetryPeriod)
	m.BaselineCandidate = "client-go tools/leaderelection with resourcelock.LeaseLock, ReleaseOnCancel, one client per candidate"
	m.BaselineTimings = fmt.Sprintf("client-go defaults: LeaseDuration %s, RenewDeadline %s, RetryPeriod %s (acquire polls every 2 to 4.4 s, JitterFactor 1.2); client QPS 50, burst 100",
		BaselineLeaseDuration, BaselineRenewDeadline, BaselineRetryPeriod)
}
