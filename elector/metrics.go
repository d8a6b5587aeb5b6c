package elector

import (
	"cmp"
	"slices"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/metaparticle-io/sync/wire"
)

// Metric names, all prefixed metaparticle_sync_. Every metric that concerns holds has a "kind"
// label, "lock" or "election".
//
//	holds                  gauge      holds this side-car has now
//	waiting                gauge      lock waiters and election candidates not leading now
//	sessions               gauge      open sessions
//	grants_total           counter    grants: locks acquired, elections won
//	waits_total            counter    ended lock waits, by result: granted, timeout, cancelled, failed
//	wait_seconds           histogram  time from request (or candidacy) to grant
//	renew_seconds          histogram  latency of successful renewals
//	renew_failures_total   counter    failed renewal attempts (each may be retried)
//	losses_total           counter    holds lost, by reason: renew_deadline, conflict, deleted, taken
//	idle_deletions_total   counter    deletions of idle Leases tried, by result
//	lease_watches          gauge      Lease watches open: one per name in use (or 1, WatchNamespace)
//	held                   gauge      per name in use here (kind, name): 1 held (lock) or leading
//	                                  (election) here, 0 waited for or stood for; at most
//	                                  Config.MetricNames names
//	held_names_omitted     gauge      names in use here that held leaves out (over MetricNames)
type metrics struct {
	grants        *prometheus.CounterVec
	waits         *prometheus.CounterVec
	waitTime      *prometheus.HistogramVec
	renewTime     *prometheus.HistogramVec
	renewFailures *prometheus.CounterVec
	losses        *prometheus.CounterVec
	regressions   prometheus.Counter
	restartFrees  prometheus.Counter
	idleDeletes   *prometheus.CounterVec
}

// Loss reasons, the values of the "reason" label of losses_total.
const (
	lossDeadline = "renew_deadline"
	lossConflict = "conflict"
	lossDeleted  = "deleted"
	lossTaken    = "taken"
	lossEdited   = "edited"
	// lossUndelivered: a grant whose client went away before it could be told of it.
	lossUndelivered = "undelivered"
	// lossRegressed: the Lease's resourceVersion went backwards (etcd restored).
	lossRegressed = "regressed"
)

func newMetrics(reg prometheus.Registerer, e *Engine) *metrics {
	const ns = "metaparticle_sync"
	m := &metrics{
		grants: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "grants_total", Help: "Grants: locks acquired and elections won.",
		}, []string{"kind"}),
		waits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "waits_total", Help: "Ended lock waits, by result (granted, timeout, cancelled, failed).",
		}, []string{"kind", "result"}),
		waitTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Name: "wait_seconds", Help: "Time from acquire request or candidacy to grant.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 11), // 1ms .. ~17min
		}, []string{"kind"}),
		renewTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Name: "renew_seconds", Help: "Latency of successful Lease renewals.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15), // 1ms .. ~16s
		}, []string{"kind"}),
		renewFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "renew_failures_total", Help: "Failed Lease renewal attempts.",
		}, []string{"kind"}),
		losses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "losses_total", Help: "Holds lost (not released), by reason.",
		}, []string{"kind", "reason"}),
		regressions: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "resource_version_regressions_total",
			Help: "Lease versions whose resourceVersion went below the one they replaced: the API server's storage was restored from a backup.",
		}),
		restartFrees: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "restart_releases_total",
			Help: "Holds of this Pod's previous side-car (same Pod UID) released when this one started.",
		}),
		idleDeletes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "idle_deletions_total",
			Help: "Deletions of idle Leases tried, by result: deleted; raced (written or deleted by someone else first); forbidden (RBAC lacks delete); failed.",
		}, []string{"result"}),
	}
	for _, result := range []string{"deleted", "raced", "forbidden", "failed"} {
		m.idleDeletes.WithLabelValues(result) // exported at 0, for alerts on a rate
	}
	if reg != nil {
		reg.MustRegister(m.grants, m.waits, m.waitTime, m.renewTime, m.renewFailures, m.losses, m.regressions, m.restartFrees, m.idleDeletes, &gauges{e: e})
	}
	return m
}

// gauges computes the gauges at scrape time from the Engine's state, so they cannot drift.
type gauges struct{ e *Engine }

var (
	holdsDesc    = prometheus.NewDesc("metaparticle_sync_holds", "Holds this side-car has now.", []string{"kind"}, nil)
	waitingDesc  = prometheus.NewDesc("metaparticle_sync_waiting", "Lock waiters and election candidates not leading now.", []string{"kind"}, nil)
	sessionsDesc = prometheus.NewDesc("metaparticle_sync_sessions", "Open sessions.", nil, nil)
	watchesDesc  = prometheus.NewDesc("metaparticle_sync_lease_watches",
		"Lease watches this side-car has open: one per name in use here (--watch-scope=names), or 1 (namespace).", nil, nil)
	heldDesc = prometheus.NewDesc("metaparticle_sync_held",
		"Per name this side-car's sessions use: 1 while one of them holds the lock or leads the election, 0 while they only wait or stand (at most --metrics-names names, in name order).", []string{"kind", "name"}, nil)
	omittedDesc = prometheus.NewDesc("metaparticle_sync_held_names_omitted",
		"Names in use here that metaparticle_sync_held leaves out, over --metrics-names.", nil, nil)
	degradedDesc = prometheus.NewDesc("metaparticle_sync_api_degraded",
		"1 while the sessions are told of API server trouble (a degraded event), by code (forbidden, unavailable); 0 otherwise.", []string{"code"}, nil)
)

func (g *gauges) Describe(ch chan<- *prometheus.Desc) {
	ch <- holdsDesc
	ch <- waitingDesc
	ch <- sessionsDesc
	ch <- watchesDesc
	ch <- degradedDesc
	ch <- heldDesc
	ch <- omittedDesc
}

func (g *gauges) Collect(ch chan<- prometheus.Metric) {
	s := g.e.snapshot()
	for _, k := range []wire.Kind{wire.KindLock, wire.KindElection} {
		ch <- prometheus.MustNewConstMetric(holdsDesc, prometheus.GaugeValue, float64(s.holds[k]), string(k))
		ch <- prometheus.MustNewConstMetric(waitingDesc, prometheus.GaugeValue, float64(s.waiting[k]), string(k))
	}
	ch <- prometheus.MustNewConstMetric(sessionsDesc, prometheus.GaugeValue, float64(s.sessions))
	ch <- prometheus.MustNewConstMetric(watchesDesc, prometheus.GaugeValue, float64(s.watches))
	max := g.e.cfg.MetricNames
	if max < 0 {
		max = 0
	}
	slices.SortFunc(s.names, func(a, b nameUse) int { return cmp.Or(cmp.Compare(a.name, b.name), cmp.Compare(a.kind, b.kind)) })
	omitted := 0
	for i, n := range s.names {
		if i >= max {
			omitted++
			continue
		}
		v := 0.0
		if n.held {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(heldDesc, prometheus.GaugeValue, v, string(n.kind), n.name)
	}
	ch <- prometheus.MustNewConstMetric(omittedDesc, prometheus.GaugeValue, float64(omitted))
	for _, code := range []wire.ErrorCode{wire.CodeForbidden, wire.CodeUnavailable} {
		v := 0.0
		if s.degraded == code {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(degradedDesc, prometheus.GaugeValue, v, string(code))
	}
}

// nameUse is one name in use here, for metaparticle_sync_held.
type nameUse struct {
	kind wire.Kind
	name string
	held bool
}

type engineSnapshot struct {
	names          []nameUse // names with a local hold, waiter or candidate
	holds, waiting map[wire.Kind]int
	sessions       int
	watches        int
	degraded       wire.ErrorCode // the code of the trouble the sessions were told of, or ""
}

// snapshot counts holds, waiters and sessions for the metrics.
func (e *Engine) snapshot() engineSnapshot {
	s := engineSnapshot{holds: map[wire.Kind]int{}, waiting: map[wire.Kind]int{}}
	if e.informer != nil {
		s.watches = 1
	}
	for _, n := range e.allNames() {
		if n.w != nil {
			s.watches++
		}
		n.mu.Lock()
		held := n.hold != nil && !n.hold.release
		if held {
			s.holds[n.kind]++
		}
		for _, c := range n.queue {
			if n.hold == nil || n.hold.c != c {
				s.waiting[n.kind]++
			}
		}
		if (held || len(n.queue) > 0) && n.name != "" {
			s.names = append(s.names, nameUse{kind: n.kind, name: n.name, held: held})
		}
		n.mu.Unlock()
	}
	e.smu.Lock()
	s.sessions = len(e.sessions)
	e.smu.Unlock()
	e.dmu.Lock()
	s.degraded = troubleCode(e.degraded)
	e.dmu.Unlock()
	return s
}
