package harness

import (
	"encoding/json"
	"math"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	v := []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	for _, tt := range []struct {
		p    float64
		want float64
	}{{50, 5}, {95, 10}, {99, 10}, {10, 1}, {11, 2}, {100, 10}, {0, 1}} {
		if got := Percentile(v, tt.p); got != tt.want {
			t.Errorf("Percentile(1..10, %v) = %v; want %v", tt.p, got, tt.want)
		}
	}
	if got := Percentile(nil, 50); !math.IsNaN(got) {
		t.Errorf("Percentile(empty) = %v; want NaN", got)
	}
	hundred := make([]float64, 200)
	for i := range hundred {
		hundred[i] = float64(i + 1)
	}
	if got := Percentile(hundred, 99); got != 198 {
		t.Errorf("p99 of 1..200 = %v; want 198 (nearest rank)", got)
	}
}

func TestSummarize(t *testing.T) {
	s := Summarize([]time.Duration{3 * time.Millisecond, time.Millisecond, 2 * time.Millisecond, 10 * time.Millisecond})
	want := Summary{N: 4, Min: 1, P50: 2, P95: 10, P99: 10, Max: 10, Mean: 4}
	if s != want {
		t.Errorf("got %+v; want %+v", s, want)
	}
	if (Summarize(nil) != Summary{}) {
		t.Error("Summarize(nil) is not the zero Summary")
	}
}

func TestRatio(t *testing.T) {
	for _, tt := range []struct {
		base, ours, want float64
	}{{2000, 10, 200}, {10, 20, 0.5}, {0, 0, 1}, {30, 0, math.Inf(1)}, {math.NaN(), 1, math.NaN()}, {1, -1, math.NaN()}} {
		got := Ratio(tt.base, tt.ours)
		if got != tt.want && !(math.IsNaN(got) && math.IsNaN(tt.want)) {
			t.Errorf("Ratio(%v, %v) = %v; want %v", tt.base, tt.ours, got, tt.want)
		}
	}
	if got := PerMinute(12, time.Minute); got != 12 {
		t.Errorf("PerMinute(12, 1m) = %v", got)
	}
	if got := PerMinute(2, 10*time.Second); got != 12 {
		t.Errorf("PerMinute(2, 10s) = %v", got)
	}
	if got := PerMinute(1, 0); !math.IsNaN(got) {
		t.Errorf("PerMinute(1, 0) = %v; want NaN", got)
	}
}

func TestVerb(t *testing.T) {
	for _, tt := range []struct {
		method, url, want string
	}{
		{"GET", "/apis/coordination.k8s.io/v1/namespaces/ns/leases/l", "get"},
		{"GET", "/apis/coordination.k8s.io/v1/namespaces/ns/leases?labelSelector=x&limit=500", "list"},
		{"GET", "/apis/coordination.k8s.io/v1/namespaces/ns/leases?watch=true&resourceVersion=5", "watch"},
		{"GET", "/apis/coordination.k8s.io/v1/leases?watch=1", "watch"},
		{"POST", "/apis/coordination.k8s.io/v1/namespaces/ns/leases", "create"},
		{"PUT", "/apis/coordination.k8s.io/v1/namespaces/ns/leases/l", "update"},
		{"PATCH", "/api/v1/namespaces/ns/pods/p", "patch"},
		{"DELETE", "/api/v1/namespaces/ns/pods/p", "delete"},
		{"DELETE", "/api/v1/namespaces/ns/pods", "deletecollection"},
		{"GET", "/api/v1/namespaces/ns", "get"},
		{"GET", "/api/v1/namespaces", "list"},
		{"POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", "create"},
		{"GET", "/version", "other"},
		{"GET", "/apis/coordination.k8s.io/v1", "other"},
	} {
		u, err := url.Parse(tt.url)
		if err != nil {
			t.Fatal(err)
		}
		if got := Verb(tt.method, u); got != tt.want {
			t.Errorf("Verb(%s %s) = %q; want %q", tt.method, tt.url, got, tt.want)
		}
	}
}

func TestCounter(t *testing.T) {
	c := NewCounter()
	rt := c.Wrap(roundTripperFunc(func(*http.Request) (*http.Response, error) { return &http.Response{StatusCode: 200}, nil }))
	do := func(method, u string) {
		r, err := http.NewRequest(method, "https://127.0.0.1:6443"+u, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := rt.RoundTrip(r); err != nil {
			t.Fatal(err)
		}
	}
	do("PUT", "/apis/coordination.k8s.io/v1/namespaces/ns/leases/a")
	do("PUT", "/apis/coordination.k8s.io/v1/namespaces/ns/leases/a")
	do("GET", "/apis/coordination.k8s.io/v1/namespaces/ns/leases/a")
	s := c.Snapshot()
	if s["update"] != 2 || s["get"] != 1 || s.Total() != 3 || s.Writes() != 2 {
		t.Errorf("got %v (total %d, writes %d); want update 2, get 1", s, s.Total(), s.Writes())
	}
	c.Reset()
	if n := c.Snapshot().Total(); n != 0 {
		t.Errorf("after Reset: %d requests", n)
	}
	if got := (Counts{"get": 1}).Plus(Counts{"get": 2, "create": 1}); got["get"] != 3 || got["create"] != 1 {
		t.Errorf("Plus = %v", got)
	}
	if got := Counts(nil).Plus(Counts{"get": 1}); got["get"] != 1 {
		t.Errorf("nil.Plus = %v", got)
	}
}

func sampleReport() *Report {
	r := &Report{Meta: Meta{Date: "2026-01-02T03:04:05Z", CPUs: 2, GoVersion: "go1.26.8", Kubernetes: "v1.37.2", Platform: "linux/amd64",
		Modules: map[string]string{"k8s.io/client-go": "v0.37.2"}}}
	r.Add(Metric{ID: "handoff-p50", Section: secHandoff, Name: "p50", Unit: "ms", Ours: F(8), Baseline: F(1600)})
	r.Add(Metric{ID: "load-waiter", Section: secLoad, Name: "waiting candidate", Unit: "req/min", Ours: F(0), Baseline: F(18.5)})
	r.Add(Metric{ID: "load-holder-writes", Section: secLoad, Name: "writes", Unit: "writes/min", Ours: F(13), Baseline: F(30)})
	r.Add(Metric{ID: "admission-handler-p99", Section: secAdmission, Name: "p99 | one core", Unit: "ms", Ours: F(0.4)})
	r.Targets = Targets()
	r.Evaluate()
	return r
}

func TestReportRatiosAndTargets(t *testing.T) {
	r := sampleReport()
	if m := r.Metric("handoff-p50"); m.Ratio == nil || *m.Ratio != 200 || m.RatioText != "200×" {
		t.Errorf("handoff ratio = %v %q; want 200×", m.Ratio, m.RatioText)
	}
	if m := r.Metric("load-waiter"); m.Ratio != nil || m.RatioText != "∞" {
		t.Errorf("waiter ratio = %v %q; want ∞", m.Ratio, m.RatioText)
	}
	if m := r.Metric("admission-handler-p99"); m.RatioText != "—" {
		t.Errorf("ratio without baseline = %q; want —", m.RatioText)
	}
	status := map[string]Target{}
	for _, tg := range r.Targets {
		status[tg.ID] = tg
	}
	for id, want := range map[string]string{"handoff-p50": "met", "handoff-ratio": "met", "waiter-requests": "met",
		"holder-writes": "missed", "admission-p99": "met", "rss-idle": "not measured"} {
		if got := status[id].Status; got != want {
			t.Errorf("target %s: %s; want %s", id, got, want)
		}
	}
	if got := status["holder-writes"].Shortfall; got != "by 1.00 writes/min (8%)" {
		t.Errorf("shortfall = %q", got)
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatalf("the report does not marshal (an infinite ratio must not reach JSON): %v", err)
	}
	if !strings.Contains(string(b), `"ratioText":"∞"`) {
		t.Errorf("JSON lacks the infinite ratio's text: %s", b)
	}
}

func TestRatioTargetMissed(t *testing.T) {
	r := &Report{}
	r.Add(Metric{ID: "handoff-p50", Section: secHandoff, Name: "p50", Unit: "ms", Ours: F(40), Baseline: F(1600)})
	r.Targets = Targets()[:2]
	r.Evaluate()
	if tg := r.Targets[0]; tg.Status != "missed" || tg.Shortfall != "by 25.0 ms (167%)" {
		t.Errorf("p50 target: %+v", tg)
	}
	if tg := r.Targets[1]; tg.Status != "missed" || tg.Shortfall != "10.0× short (20%)" {
		t.Errorf("ratio target: %+v", tg)
	}
}

func TestTableAndMarkdown(t *testing.T) {
	r := sampleReport()
	table := r.Table()
	for _, want := range []string{"METRIC", "1 Handoff on release", "8.00 ms", "1600 ms", "200×", "≤ 15 ms", "≥ 50× ratio", "MISSED", "NOT MEASURED"} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}
	md := r.Markdown()
	for _, want := range []string{"| Metric | Ours | Baseline |", "2 CPUs", "Kubernetes API server v1.37.2", "k8s.io/client-go v0.37.2", `p99 \| one core`} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}

func TestMergeMarkdown(t *testing.T) {
	fresh := MergeMarkdown("", "TABLE 1")
	if !strings.Contains(fresh, BeginGenerated+"\nTABLE 1\n"+EndGenerated) || !strings.Contains(fresh, "## Analysis") {
		t.Fatalf("new document:\n%s", fresh)
	}
	edited := strings.Replace(fresh, "(Not written yet.)", "Hand-written analysis.", 1)
	again := MergeMarkdown(edited, "TABLE 2\n")
	if strings.Contains(again, "TABLE 1") || !strings.Contains(again, "TABLE 2") || !strings.Contains(again, "Hand-written analysis.") {
		t.Errorf("regenerated document:\n%s", again)
	}
	if strings.Count(again, BeginGenerated) != 1 {
		t.Errorf("markers duplicated:\n%s", again)
	}

	path := filepath.Join(t.TempDir(), "docs", "benchmarks.md")
	if err := WriteMarkdown(path, "A"); err != nil {
		t.Fatal(err)
	}
	if err := WriteMarkdown(path, "B"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "\nA\n") || !strings.Contains(string(b), "\nB\n") {
		t.Errorf("file after two writes:\n%s", b)
	}
}

func TestWriteJSON(t *testing.T) {
	path := filepath.Join(t.TempDir(), "results", "latest.json")
	if err := sampleReport().WriteJSON(path); err != nil {
		t.Fatal(err)
	}
	var back Report
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Metrics) != 4 || back.Meta.CPUs != 2 || len(back.Targets) != len(Targets()) {
		t.Errorf("round trip lost data: %+v", back)
	}
}

func TestParseStatus(t *testing.T) {
	m, err := ParseStatus("Name:\telector\nVmHWM:\t   20480 kB\nVmRSS:\t   15360 kB\nRssAnon:\t    5120 kB\nThreads:\t7\n")
	if err != nil || m["VmRSS"] != 15 || m["VmHWM"] != 20 || m["RssAnon"] != 5 || len(m) != 3 {
		t.Errorf("got %v, %v; want VmRSS 15, VmHWM 20, RssAnon 5", m, err)
	}
	if _, err := ParseStatus("VmRSS:\t12 MB\n"); err == nil {
		t.Error("no error for a line not in kB")
	}
}

func TestFormatValue(t *testing.T) {
	for _, tt := range []struct {
		v    float64
		unit string
		want string
	}{{1234.5, "ms", "1234 ms"}, {12.34, "", "12.3"}, {1.234, "ms", "1.23 ms"}, {0.01234, "ms", "0.012 ms"}, {0, "req/min", "0 req/min"}} {
		if got := FormatValue(tt.v, tt.unit); got != tt.want {
			t.Errorf("FormatValue(%v, %q) = %q; want %q", tt.v, tt.unit, got, tt.want)
		}
	}
}

func TestFindRoot(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	root, err := FindRoot(wd)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "bench", "internal", "harness")); err != nil {
		t.Errorf("FindRoot(%s) = %s, which has no bench/internal/harness", wd, root)
	}
	if _, err := FindRoot(t.TempDir()); err == nil {
		t.Error("FindRoot found a root in an empty temporary directory")
	}
}
