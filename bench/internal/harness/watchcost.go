package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/metaparticle-io/sync/elector"
	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/sdk"
	"github.com/metaparticle-io/sync/wire"
)

// The watch cost of a namespace full of side-cars (issue 18): what the API server sends, serves
// and burns while every Pod's application holds its own locks, or all stand in one election,
// with each side-car watching only the Leases of the names it uses (elector.WatchNames) and, as
// the baseline in the same run, every managed Lease of the namespace (elector.WatchNamespace,
// the design before issue 18).

// watchScenario is one shape of a namespace.
type watchScenario struct {
	id       string // prefix of its metric IDs
	pods     int    // side-cars: pods-1 in-process ones and one side-car process (the probe)
	locks    int    // locks each Pod's application holds, its own
	election bool   // instead of locks, every application stands in one election
}

func (s watchScenario) String() string {
	if s.election {
		return fmt.Sprintf("%d side-cars in one election", s.pods)
	}
	if s.locks == 1 {
		return fmt.Sprintf("%d side-cars, each holding its own lock", s.pods)
	}
	return fmt.Sprintf("%d side-cars, each holding %d locks of its own", s.pods, s.locks)
}

// held is the number of Leases held in the scenario's steady state.
func (s watchScenario) held() int {
	if s.election {
		return 1
	}
	return s.pods * s.locks
}

// watchRun is one scenario in one watch scope.
type watchRun struct {
	Scope        string  `json:"scope"`
	Pods         int     `json:"pods"`
	Held         int     `json:"held"`
	WindowS      float64 `json:"windowSeconds"`
	Events       float64 `json:"watchEventsPerMinute"`      // Lease watch events the API server sent
	Requests     float64 `json:"requestsPerMinute"`         // Lease requests the API server served
	Writes       float64 `json:"writesPerMinute"`           // of which creates, updates and deletes
	APICPU       float64 `json:"apiServerCPUSecondsPerMin"` // kube-apiserver's CPU
	ProbeCPU     float64 `json:"probeCPUSecondsPerMinute"`  // the side-car process's CPU
	ProbeRSS     float64 `json:"probeRSSMiB"`               // and its VmRSS at the end of the window
	Watches      int     `json:"sidecarWatches"`            // Lease watches the side-cars have open
	Handoff      Summary `json:"handoff"`                   // between two of the side-cars, after the window
	Lost         int     `json:"lost"`                      // holds the applications were told they lost
	handoffTimes []time.Duration
}

// watchCost runs scenario sc with every side-car in scope for window, then measures handoffs
// handoffs between two of them under the same load.
func (b *Bench) watchCost(ctx context.Context, bin, kubeconfig string, sc watchScenario, scope string, window time.Duration, handoffs int) (watchRun, error) {
	run := watchRun{Scope: scope, Pods: sc.pods, Held: sc.held(), WindowS: window.Seconds()}
	ns, err := b.Namespace(ctx, "bench-watch", false)
	if err != nil {
		return run, err
	}
	sidecars := make([]*Sidecar, sc.pods-1)
	var (
		mu   sync.Mutex
		errs []error
	)
	note := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}
	parallel(len(sidecars), 10, func(i int) {
		s, err := b.StartSidecar(ctx, ns, fmt.Sprintf("watch-%03d", i), nil, elector.Config{WatchScope: scope})
		if err != nil {
			note(err)
			return
		}
		sidecars[i] = s
	})
	defer parallel(len(sidecars), 20, func(i int) {
		if sidecars[i] != nil {
			sidecars[i].Stop()
		}
	})
	if err := errors.Join(errs...); err != nil {
		return run, err
	}
	probe, addr, _, err := b.launchElector(bin, kubeconfig, ns, "watch-probe", "--watch-scope="+scope)
	if err != nil {
		return run, err
	}
	defer probe.stop()

	clients := make([]*sdk.Client, 0, sc.pods)
	for _, s := range sidecars {
		clients = append(clients, s.Client())
	}
	pc, err := sdk.NewClient(sdk.WithAddress(addr))
	if err != nil {
		return run, err
	}
	clients = append(clients, pc)
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var locks []*sdk.Lock
	var elections sync.WaitGroup
	defer elections.Wait()
	defer cancel()
	parallel(len(clients), 20, func(i int) {
		c := clients[i]
		if sc.election {
			elections.Add(1)
			go func() {
				defer elections.Done()
				_ = c.NewElection("watch-election", func(ctx context.Context) { <-ctx.Done() }, nil).Run(wctx)
			}()
			return
		}
		for j := range sc.locks {
			l := c.NewLock(fmt.Sprintf("pod-%03d-lock-%02d", i, j))
			if err := l.Acquire(ctx); err != nil {
				note(fmt.Errorf("acquiring lock %d of side-car %d: %w", j, i, err))
				return
			}
			mu.Lock()
			locks = append(locks, l)
			mu.Unlock()
		}
	})
	if err := errors.Join(errs...); err != nil {
		return run, err
	}
	if sc.election {
		if err := waitFor(time.Minute, 10*time.Millisecond, func() bool { return b.leaderOf(ctx, ns) != "" }); err != nil {
			return run, errors.New("no leader was elected within a minute")
		}
	}
	time.Sleep(2 * time.Second) // the creates' and grants' events, and the probe's first renewals
	for _, s := range sidecars {
		run.Watches += int(s.Sample("metaparticle_sync_lease_watches", "", ""))
	}

	// The API server's counters and the probe's CPU, read together.
	read := func() (apiMetrics, float64, error) {
		m, err := b.apiServerMetrics(ctx)
		if err != nil {
			return m, 0, err
		}
		c, err := probe.cpuSeconds()
		return m, c, err
	}
	m0, c0, err := read()
	if err != nil {
		return run, err
	}
	t0 := time.Now()
	time.Sleep(window)
	m1, c1, err := read()
	if err != nil {
		return run, err
	}
	w := time.Since(t0)
	perMin := func(d float64) float64 { return d * float64(time.Minute) / float64(w) }
	run.WindowS = w.Seconds()
	run.Events = perMin(m1.watchEvents - m0.watchEvents)
	run.Requests = perMin(m1.requests - m0.requests)
	run.Writes = perMin(m1.writes - m0.writes)
	run.APICPU = perMin(m1.cpu - m0.cpu)
	run.ProbeCPU = perMin(c1 - c0)
	if run.ProbeRSS, _, err = probe.rss(); err != nil {
		return run, err
	}

	if len(sidecars) >= 2 {
		// Hold 100 to 300 ms: a handoff load of a few writes a second, well within the side-cars'
		// rate budgets, measured on top of the scenario's.
		ho, _, err := b.handoffBetween(ctx, [2]*Sidecar{sidecars[0], sidecars[1]}, "watch-handoff", handoffs, 100*time.Millisecond)
		if err != nil {
			return run, fmt.Errorf("handoffs: %w", err)
		}
		run.handoffTimes, run.Handoff = ho, Summarize(ho)
	}
	run.Lost = lostOf(locks)
	if run.Lost > 0 {
		b.Anomaly("watch cost, %s, scope %s: %d of %d locks were lost while held", sc, scope, run.Lost, len(locks))
	}
	return run, nil
}

// leaderOf returns the holder of the (one) election Lease of namespace ns, "" if none.
func (b *Bench) leaderOf(ctx context.Context, ns string) string {
	list, err := b.Env.Clientset.CoordinationV1().Leases(ns).List(ctx, metav1.ListOptions{LabelSelector: contract.LabelKind + "=" + string(wire.KindElection)})
	if err != nil {
		return ""
	}
	for _, l := range list.Items {
		if l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != "" {
			return *l.Spec.HolderIdentity
		}
	}
	return ""
}

// apiMetrics are the API server's counters that the watch cost reads.
type apiMetrics struct {
	watchEvents float64 // apiserver_watch_events_total of Leases
	requests    float64 // apiserver_request_total of Leases
	writes      float64 // of which POST, PUT, PATCH and DELETE
	cpu         float64 // process_cpu_seconds_total
}

// apiServerMetrics scrapes the API server's /metrics.
func (b *Bench) apiServerMetrics(ctx context.Context) (apiMetrics, error) {
	var m apiMetrics
	raw, err := b.Env.Clientset.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return m, fmt.Errorf("scraping the API server's metrics: %w", err)
	}
	families, err := ParseMetrics(raw)
	if err != nil {
		return m, err
	}
	leases := func(metric *dto.Metric) bool {
		return label(metric, "resource") == "leases" || label(metric, "kind") == "Lease"
	}
	m.watchEvents = sumOf(families["apiserver_watch_events_total"], leases)
	m.requests = sumOf(families["apiserver_request_total"], leases)
	m.writes = sumOf(families["apiserver_request_total"], func(metric *dto.Metric) bool {
		switch label(metric, "verb") {
		case "POST", "PUT", "PATCH", "DELETE":
			return leases(metric)
		}
		return false
	})
	m.cpu = sumOf(families["process_cpu_seconds_total"], func(*dto.Metric) bool { return true })
	if families["apiserver_watch_events_total"] == nil {
		return m, errors.New("the API server exports no apiserver_watch_events_total")
	}
	return m, nil
}

// ParseMetrics parses the Prometheus text format.
func ParseMetrics(raw []byte) (map[string]*dto.MetricFamily, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("parsing metrics: %w", err)
	}
	return families, nil
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// sumOf sums the counters and gauges of f that match.
func sumOf(f *dto.MetricFamily, match func(*dto.Metric) bool) float64 {
	s := 0.0
	for _, m := range f.GetMetric() {
		if match(m) {
			s += m.GetCounter().GetValue() + m.GetGauge().GetValue() + m.GetUntyped().GetValue()
		}
	}
	return s
}

// cpuSeconds returns the CPU time (user and system) the process has used.
func (p *process) cpuSeconds() (float64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	return ParseStatCPU(string(raw))
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's times: 100 on every Linux platform Go
// supports.
const clockTicks = 100

// ParseStatCPU returns utime + stime of the text of /proc/<pid>/stat, in seconds.
func ParseStatCPU(stat string) (float64, error) {
	// The command (field 2) is in parentheses and may hold spaces: count from its end.
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("no command in /proc stat")
	}
	f := strings.Fields(stat[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	utime, err1 := strconv.ParseFloat(f[11], 64)
	stime, err2 := strconv.ParseFloat(f[12], 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc stat times: %w", err)
	}
	return (utime + stime) / clockTicks, nil
}
