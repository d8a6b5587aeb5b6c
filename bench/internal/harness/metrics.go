package harness

import (
	"fmt"
	"strings"
	"time"
)

const (
	secHandoff   = "1 Handoff on release"
	secFailover  = "2 Failover on crash"
	secLoad      = "3 API server load"
	secAdmission = "4 Admission"
	secFootprint = "5 Side-car footprint"
	secScale     = "6 Election at scale"
	secWatch     = "7 Watch cost"
)

func (b *Bench) reportHandoff() {
	ours, base := Summarize(b.handoff), Summarize(b.handoffBase)
	have := func(s Summary, v float64) *float64 {
		if s.N == 0 {
			return nil
		}
		return F(v)
	}
	detail := map[string]any{"ours": ours, "baseline": base}
	b.Report.Add(Metric{ID: "handoff-p50", Section: secHandoff, Name: fmt.Sprintf("p50 (%d ours, %d baseline)", ours.N, base.N), Unit: "ms",
		Ours: have(ours, ours.P50), Baseline: have(base, base.P50), Detail: detail,
		Note: "ours: Release on one side-car → Acquire returns on another, the holder keeping the lock 20–60 ms each time (so that neither side-car exceeds its client's 50 writes/s); baseline: the leader's context cancelled → the next candidate's OnStartedLeading"})
	b.Report.Add(Metric{ID: "handoff-p95", Section: secHandoff, Name: "p95", Unit: "ms", Ours: have(ours, ours.P95), Baseline: have(base, base.P95)})
	b.Report.Add(Metric{ID: "handoff-p99", Section: secHandoff, Name: "p99", Unit: "ms", Ours: have(ours, ours.P99), Baseline: have(base, base.P99)})
	rel, w := Summarize(b.releases), Summarize(b.writes)
	detail["releaseCall"], detail["leaseUpdate"] = rel, w
	b.Report.Add(Metric{ID: "handoff-release-p50", Section: secHandoff, Name: "of which the Release call, p50", Unit: "ms", Ours: have(rel, rel.P50),
		Note: "from Release to its response: the side-car's conditional Update clearing the holder; the rest of a handoff is the watch event reaching the waiter's side-car and its takeover write"})
	b.Report.Add(Metric{ID: "handoff-write-p50", Section: secHandoff, Name: fmt.Sprintf("context: one Lease update by itself, p50 of %d", w.N), Unit: "ms", Ours: have(w, w.P50),
		Note: "a plain Update of a Lease, timed just before the handoffs: the API server's write latency at that moment (envtest runs etcd with --unsafe-no-fsync, so no disk flush is included)"})
}

func (b *Bench) reportFailover(r failoverResult) {
	sk, sr, ak, bk := Summarize(r.sidecarKilled), Summarize(r.sidecarRestarted), Summarize(r.appKilled), Summarize(r.baselineKilled)
	sec := func(v float64) *float64 { return F(v / 1000) }
	detail := map[string]any{"sidecarKilled": sk, "sidecarRestarted": sr, "appKilled": ak, "baselineKilled": bk}
	b.Report.Add(Metric{ID: "failover-sidecar-p50", Section: secFailover, Name: fmt.Sprintf("side-car killed, median of %d", sk.N), Unit: "s",
		Ours: sec(sk.P50), Baseline: sec(bk.P50), Detail: detail,
		Note: "holder's side-car halted without releasing (in-process, connections cut) → a waiter on another side-car holds; baseline: the leader stopped without releasing (ReleaseOnCancel false) → the next candidate's OnStartedLeading"})
	b.Report.Add(Metric{ID: "failover-sidecar-max", Section: secFailover, Name: "side-car killed, worst", Unit: "s", Ours: sec(sk.Max), Baseline: sec(bk.Max)})
	b.Report.Add(Metric{ID: "failover-restart-p50", Section: secFailover, Name: fmt.Sprintf("side-car killed and restarted (same Pod UID), median of %d", sr.N), Unit: "ms",
		Ours: F(sr.P50), Baseline: F(sk.P50),
		Note: "from the kill to a waiter on another side-car holding; the new side-car of the same Pod is started at once (the kubelet adds about a second) and releases the dead hold once the validity it last promised has run out (renew deadline + retry period after the last renewal); baseline: today's design, the side-car killed above, whose hold expires after the lease duration"})
	b.Report.Add(Metric{ID: "failover-restart-max", Section: secFailover, Name: "side-car killed and restarted, worst", Unit: "ms", Ours: F(sr.Max), Baseline: F(sk.Max)})
	b.Report.Add(Metric{ID: "failover-app-p50", Section: secFailover, Name: fmt.Sprintf("app killed (SIGKILL), side-car alive, median of %d", ak.N), Unit: "ms",
		Ours: F(ak.P50), Baseline: F(bk.P50),
		Note: "the holding application is a separate process killed with SIGKILL; its side-car sees the event stream close and releases. The baseline is the same client-go crash as above: with client-go the candidate is the application"})
	b.Report.Add(Metric{ID: "failover-app-max", Section: secFailover, Name: "app killed, worst", Unit: "ms", Ours: F(ak.Max), Baseline: F(bk.Max)})
}

func (b *Bench) reportLoad(r loadResult) {
	w := r.window
	oh, bh := r.ourHolder, r.baseHolder
	detail := map[string]any{
		"windowSeconds":       w.Seconds(),
		"waiters":             r.waiters,
		"oursHolderPerMinute": perMinute(oh, w, 1),
		"baseHolderPerMinute": perMinute(bh, w, 1),
		"oursWaiterPerMinute": perMinute(r.ourWaiters, w, r.waiters),
		"baseWaiterPerMinute": perMinute(r.baseWaiter, w, r.waiters),
		"oursHolderCounts":    oh,
		"baseHolderCounts":    bh,
		"oursWaitersCounts":   r.ourWaiters,
		"baseWaitersCounts":   r.baseWaiter,
	}
	name := fmt.Sprintf("held lock: writes/min (%.0f s window)", w.Seconds())
	b.Report.Add(Metric{ID: "load-holder-writes", Section: secLoad, Name: name, Unit: "writes/min",
		Ours: F(PerMinute(oh.Writes(), w)), Baseline: F(PerMinute(bh.Writes(), w)), Detail: detail,
		Note: fmt.Sprintf("counted per component by a wrapping RoundTripper on its rest.Config; ours by verb %v, baseline %v", verbsPerMinute(oh, w, 1), verbsPerMinute(bh, w, 1))})
	b.Report.Add(Metric{ID: "load-holder-all", Section: secLoad, Name: "held lock: all requests/min", Unit: "req/min",
		Ours: F(PerMinute(oh.Total(), w)), Baseline: F(PerMinute(bh.Total(), w))})
	b.Report.Add(Metric{ID: "load-waiter", Section: secLoad, Name: fmt.Sprintf("each waiting candidate: requests/min (mean of %d)", r.waiters), Unit: "req/min",
		Ours: F(PerMinute(r.ourWaiters.Total(), w) / float64(r.waiters)), Baseline: F(PerMinute(r.baseWaiter.Total(), w) / float64(r.waiters)),
		Note: fmt.Sprintf("each waiter in its own side-car (ours) or its own client-go candidate; ours by verb %v, baseline %v",
			verbsPerMinute(r.ourWaiters, w, r.waiters), verbsPerMinute(r.baseWaiter, w, r.waiters))})
	b.Report.Add(Metric{ID: "load-idle", Section: secLoad, Name: "idle Pod (side-car without sessions, probed like the kubelet): API requests/min", Unit: "req/min",
		Ours: F(PerMinute(r.ourIdle.Total(), w)),
		Note: fmt.Sprintf("%d probes (/readyz every 5 s, /healthz every 10 s, as injected), %d answered 200; by verb %v; no baseline: client-go has no side-car",
			r.probesSent, r.probesAnswered, verbsPerMinute(r.ourIdle, w, 1))})
}

func verbCounts(c Counts) string {
	s := "{"
	for i, k := range sortedKeys(c) {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%s %d", k, c[k])
	}
	return s + "}"
}

func verbsPerMinute(c Counts, w time.Duration, components int) string {
	m := perMinute(c, w, components)
	if len(m) == 0 {
		return "{none}"
	}
	s := "{"
	for i, k := range sortedKeys(m) {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%s %.1f", k, m[k])
	}
	return s + "}"
}

func (b *Bench) reportStorm(ours, one stormRun) {
	detail := map[string]any{"ours": ours, "oneBudget": one}
	b.Report.Add(Metric{ID: "storm-lost", Section: secLoad, Name: fmt.Sprintf("%d held locks through %s of try-acquires of new names: holds the application was told it lost", ours.held, ours.window), Unit: "holds",
		Ours: F(float64(ours.lost)), Baseline: F(float64(one.lost)), Detail: detail,
		Note: fmt.Sprintf("one side-car holds the locks (one session) while %d sessions of it try new names as fast as they can, then release; "+
			"ours: renewals have a rate budget of their own (%d tries, %d granted, %d failed; side-car losses %d); "+
			"baseline: today's design before issue 17, one budget for all (%d tries, %d granted, %d failed; side-car losses %d)",
			ours.stormers, ours.tries, ours.granted, ours.fails, ours.sidecarLost, one.tries, one.granted, one.fails, one.sidecarLost)})
	b.Report.Add(Metric{ID: "storm-tries", Section: secLoad, Name: "try-acquires of new names during the storm", Unit: "tries",
		Ours: F(float64(ours.tries)), Baseline: F(float64(one.tries))})
}

func (b *Bench) reportChurn(ours, never churnRun) {
	detail := map[string]any{"names": ours.names, "neverNames": never.names, "deleted": ours.deleted, "idleSeconds": ours.idle.Seconds()}
	b.Report.Add(Metric{ID: "churn-left-end", Section: secLoad, Name: fmt.Sprintf("a lock per order (%.0f new names a second for %s): Leases in the namespace at the end", ours.rate, ours.window), Unit: "Leases",
		Ours: F(float64(ours.leftAtEnd)), Baseline: F(float64(never.leftAtEnd)), Detail: detail,
		Note: fmt.Sprintf("one side-car; each name acquired and released at once, %d names. Ours deletes Leases idle for %s (--delete-idle-leases-after at its smallest, the lease duration), so about rate × (that + a sweep period) stay; "+
			"baseline: the same side-car with deletion off, the design before issue 17, which keeps every Lease (and every side-car of the namespace caches them all: see the RSS figures of section 5)", ours.names, ours.idle)})
	b.Report.Add(Metric{ID: "churn-left", Section: secLoad, Name: "the same, once the last Lease has been idle that long and swept", Unit: "Leases",
		Ours: F(float64(ours.left)), Baseline: F(float64(never.left)),
		Note: fmt.Sprintf("%v deletions by the side-car, each conditional on the resourceVersion it saw idle", ours.deleted)})
}

func (b *Bench) reportAdmission(r admissionResult) {
	detail := map[string]any{"handler": r.handler, "handlerCPU": r.handlerCPU, "handlerThroughputPerSecond": r.handlerThroughput,
		"podCreateWithWebhook": r.podWith, "podCreateExcludedNamespace": r.podWithout, "podCreateNotOptedIn": r.podNotOptedIn}
	b.Report.Add(Metric{ID: "admission-handler-p50", Section: secAdmission, Name: fmt.Sprintf("handler p50, one core (%d reviews)", r.handler.N), Unit: "ms",
		Ours: F(r.handler.P50), Detail: detail,
		Note: "webhook.NewWebhook(NewInjector(...)).ServeHTTP on an opted-in two-container Pod, decode → inject → JSON patch → encode, one goroutine, GOMAXPROCS=1; RBAC answer cached. No baseline: client-go has no injector"})
	b.Report.Add(Metric{ID: "admission-handler-p99", Section: secAdmission, Name: "handler p99, one core", Unit: "ms", Ours: F(r.handler.P99)})
	b.Report.Add(Metric{ID: "admission-handler-cpu-p99", Section: secAdmission, Name: "handler p99, on-CPU time", Unit: "ms", Ours: F(r.handlerCPU.P99),
		Note: "the same calls timed by the thread's CPU clock: the latency on a core of its own, without the waits for a CPU that other processes of a shared machine cause (GC assists included)"})
	b.Report.Add(Metric{ID: "admission-handler-throughput", Section: secAdmission, Name: "handler throughput, one core", Unit: "reviews/s", Ours: F(r.handlerThroughput)})
	b.Report.Add(Metric{ID: "admission-pod-p50", Section: secAdmission, Name: fmt.Sprintf("Pod create p50, webhook vs none (%d each)", r.podWith.N), Unit: "ms",
		Ours: F(r.podWith.P50), Baseline: F(r.podWithout.P50),
		Note: "client-side latency of Pods().Create on the real API server; ours: an opted-in Pod, the API server calls the webhook over TLS on 127.0.0.1 (registered by URL) and applies its patch; baseline: the same Pod in a namespace the shipped namespaceSelector excludes, so no webhook call. Ratio below 1 is the webhook's cost"})
	b.Report.Add(Metric{ID: "admission-pod-p99", Section: secAdmission, Name: "Pod create p99, webhook vs none", Unit: "ms", Ours: F(r.podWith.P99), Baseline: F(r.podWithout.P99)})
	b.Report.Add(Metric{ID: "admission-pod-plain-p50", Section: secAdmission, Name: "Pod create p50, not opted in vs none", Unit: "ms", Ours: F(r.podNotOptedIn.P50), Baseline: F(r.podWithout.P50),
		Note: "a Pod without the annotation in a namespace the webhook covers: matchConditions keep it from the webhook, so opting out costs nothing"})
}

func (b *Bench) reportFootprint(r footprintResult, many int) {
	detail := map[string]any{"startup": r.startup, "idleMiB": r.idleDetail, "oneMiB": r.oneDetail, "manyMiB": r.manyDetail,
		"baselineIdleMiB": r.baseIdleDetail, "baselineOneMiB": r.baseOneDetail, "baselineManyMiB": r.baseManyDetail, "manyAcquireSeconds": r.manyAcquire.Seconds(),
		"baselineManyAcquireSeconds": r.baseManyAcquire.Seconds(), "manyLost": r.manyLost}
	b.Report.Add(Metric{ID: "footprint-idle", Section: secFootprint, Name: "RSS idle", Unit: "MiB", Ours: F(r.idle), Baseline: F(r.baseIdle), Detail: detail,
		Note: "VmRSS of the real cmd/elector binary (go build -trimpath, CGO_ENABLED=0) run with --kubeconfig against the API server, after it is ready; baseline: bench/cmd/clientgo-holder, the smallest program holding Leases with client-go leader election, after it reached the API server"})
	b.Report.Add(Metric{ID: "footprint-one", Section: secFootprint, Name: "RSS, 1 held lock", Unit: "MiB", Ours: F(r.one), Baseline: F(r.baseOne)})
	b.Report.Add(Metric{ID: "footprint-many", Section: secFootprint, Name: fmt.Sprintf("RSS, %d held locks", many), Unit: "MiB", Ours: F(r.many), Baseline: F(r.baseMany),
		Note: fmt.Sprintf("relaxed timings for both (ours %s; client-go LeaseDuration 60s, RenewDeadline 45s, RetryPeriod 30s): at the defaults, %d holds need more renewals per second than our renewal budget (100 QPS) or the baseline's client (50 QPS) can send; %d of ours were lost. "+
			"Ours watches each name's Lease on its own (--watch-scope=names, --max-names=%d), about 165 KiB a name; with --watch-scope=namespace a hold costs about 22 KiB (37 MiB for 1,000 in the run before issue 18)", strings.Join(RelaxedTimings, " "), many, r.manyLost, many)})
	b.Report.Add(Metric{ID: "footprint-many-acquire", Section: secFootprint, Name: fmt.Sprintf("time to hold %d locks", many), Unit: "s", Ours: F(r.manyAcquire.Seconds()), Baseline: F(r.baseManyAcquire.Seconds()),
		Note: "both limited by their client's 50 QPS: ours writes twice per new Lease (create, then the fencing token), client-go gets then creates"})
	b.Report.Add(Metric{ID: "footprint-startup", Section: secFootprint, Name: fmt.Sprintf("start-up to ready, median of %d", r.startup.N), Unit: "ms", Ours: F(r.startup.P50),
		Note: "from exec to the first 200 of /readyz (Lease cache synced)"})
}

func (b *Bench) reportCacheSizes(sizes []cacheSize) {
	for _, c := range sizes {
		b.Report.Add(Metric{ID: fmt.Sprintf("cache-%d", c.leases), Section: secFootprint, Name: fmt.Sprintf("RSS, %d unused Leases in the namespace", c.leases), Unit: "MiB",
			Ours: F(c.rss), Baseline: F(c.rssNS), Detail: map[string]any{"MiB": c.detail, "readySeconds": c.sync.Seconds(), "baselineMiB": c.detailNS, "baselineReadySeconds": c.syncNS.Seconds()},
			Note: fmt.Sprintf("ours watches only the Leases of the names its Pod uses (none here), ready %.1f s after exec; baseline: the same side-car with --watch-scope=namespace, "+
				"the design before issue 18, which caches every managed Lease of its namespace (without managedFields), ready %.1f s after exec", c.sync.Seconds(), c.syncNS.Seconds())})
	}
}

func (b *Bench) reportScale(ours, base scaleResult) {
	detail := map[string]any{"ours": map[string]any{"leaderMs": Millis(ours.leader), "allObserveMs": Millis(ours.allObserve), "requests": ours.requests, "leaders": ours.leaders},
		"baseline": map[string]any{"leaderMs": Millis(base.leader), "allObserveMs": Millis(base.allObserve), "requests": base.requests, "leaders": base.leaders}}
	n := ours.candidates
	b.Report.Add(Metric{ID: "scale-leader", Section: secScale, Name: fmt.Sprintf("%d candidates: time to a leader", n), Unit: "ms",
		Ours: F(Millis(ours.leader)), Baseline: F(Millis(base.leader)), Detail: detail,
		Note: fmt.Sprintf("ours: %d side-cars in this process, each with its own client and informer and one application session (SDK Election.Run), all standing at once; baseline: %d client-go candidates, each with its own client, started at once", n, n)})
	b.Report.Add(Metric{ID: "scale-observed", Section: secScale, Name: "time until every candidate observes it", Unit: "ms", Ours: F(Millis(ours.allObserve)), Baseline: F(Millis(base.allObserve)),
		Note: "ours: each application's Election.Watch through its side-car reports the leader; baseline: each candidate's first OnNewLeader"})
	b.Report.Add(Metric{ID: "scale-requests", Section: secScale, Name: "API server requests until then", Unit: "requests", Ours: F(float64(ours.requests.Total())), Baseline: F(float64(base.requests.Total())),
		Note: fmt.Sprintf("ours by verb %s, baseline %s", verbCounts(ours.requests), verbCounts(base.requests))})
	if ours.leaders != 1 {
		b.Anomaly("election at scale: %d of our candidates were told they lead", ours.leaders)
	}
	if base.leaders != 1 {
		b.Anomaly("election at scale: %d client-go candidates started leading", base.leaders)
	}
}

func (b *Bench) notes(sz sizes) []string {
	return []string{
		"One envtest control plane (kube-apiserver and etcd, on 127.0.0.1) serves every scenario; ours and the baseline are measured in the same run, on the same API server. Nothing listens beyond 127.0.0.1.",
		fmt.Sprintf("Handoff: ours %d sequential handoffs between two in-process side-cars (Engine + lock API on a loopback port, each with its own client and informer), the applications using the Go SDK; baseline %d pairs × %d rounds in parallel, each holder keeping the Lease a random 0.5–4.5 s so that its release falls anywhere in the waiter's polling cycle.", sz.handoffs, sz.basePairs, sz.baseRounds),
		fmt.Sprintf("Failover: %d samples of each crash, all at once; the kill falls at a random point of the renewal cycle.", sz.crashes),
		fmt.Sprintf("Load: one held lock and %d waiting candidates each, ours and the baseline's side by side, counted over %.0f s after a 1 s settle, scaled to a minute.", sz.loadWaiters, sz.loadWindow.Seconds()),
		"Percentiles are nearest-rank; ratios are baseline ÷ ours, so above 1 means ours is lower (faster, fewer requests, less memory).",
	}
}

// reportWatchCost reports one watch-cost scenario: ours watches the names in use
// (elector.WatchNames), the baseline every managed Lease of the namespace (WatchNamespace).
func (b *Bench) reportWatchCost(sc watchScenario, ours, base watchRun) {
	detail := map[string]any{"ours": ours, "baseline": base}
	what := fmt.Sprintf("%s (%d Leases held)", sc, sc.held())
	b.Report.Add(Metric{ID: sc.id + "-events", Section: secWatch, Name: what + ": Lease watch events the API server sends", Unit: "events/min",
		Ours: F(ours.Events), Baseline: F(base.Events), Detail: detail,
		Note: fmt.Sprintf("apiserver_watch_events_total of Leases over %.0f s; ours: each side-car watches the Leases of the names it uses (%d watches open), "+
			"baseline: each watches every managed Lease of the namespace (the design before issue 18, --watch-scope=namespace, %d watches)", ours.WindowS, ours.Watches, base.Watches)})
	b.Report.Add(Metric{ID: sc.id + "-requests", Section: secWatch, Name: what + ": Lease requests the API server serves", Unit: "req/min",
		Ours: F(ours.Requests), Baseline: F(base.Requests),
		Note: fmt.Sprintf("apiserver_request_total of Leases, every verb (a watch counts when it ends); writes ours %.0f/min, baseline %.0f/min", ours.Writes, base.Writes)})
	b.Report.Add(Metric{ID: sc.id + "-apiserver-cpu", Section: secWatch, Name: what + ": kube-apiserver CPU", Unit: "CPU s/min",
		Ours: F(ours.APICPU), Baseline: F(base.APICPU), Note: "process_cpu_seconds_total of the API server, everything it did in the window"})
	b.Report.Add(Metric{ID: sc.id + "-sidecar-cpu", Section: secWatch, Name: what + ": CPU of one side-car process among them", Unit: "CPU s/min",
		Ours: F(ours.ProbeCPU), Baseline: F(base.ProbeCPU), Note: "the side-car binary, its application holding what the others hold; utime + stime over the window"})
	b.Report.Add(Metric{ID: sc.id + "-sidecar-rss", Section: secWatch, Name: what + ": RSS of that side-car", Unit: "MiB",
		Ours: F(ours.ProbeRSS), Baseline: F(base.ProbeRSS)})
	if len(ours.handoffTimes) > 0 && len(base.handoffTimes) > 0 {
		b.Report.Add(Metric{ID: sc.id + "-handoff-p50", Section: secWatch, Name: what + ": handoff between two of the side-cars, p50", Unit: "ms",
			Ours: F(ours.Handoff.P50), Baseline: F(base.Handoff.P50),
			Note: fmt.Sprintf("%d handoffs after the window, on a lock of their own, under the same load", len(ours.handoffTimes))})
		b.Report.Add(Metric{ID: sc.id + "-handoff-p99", Section: secWatch, Name: what + ": the same, p99", Unit: "ms",
			Ours: F(ours.Handoff.P99), Baseline: F(base.Handoff.P99)})
	}
}
