package harness

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
)

// Meta describes the run: the machine, the versions and the settings.
type Meta struct {
	Date              string            `json:"date"`
	Quick             bool              `json:"quick"`
	CPUs              int               `json:"cpus"`
	CPUModel          string            `json:"cpuModel,omitempty"`
	LoadAverage       string            `json:"loadAverageAtStart,omitempty"`
	GoVersion         string            `json:"goVersion"`
	Platform          string            `json:"platform"`
	Kubernetes        string            `json:"kubernetes"`
	Modules           map[string]string `json:"modules,omitempty"`
	DurationSeconds   float64           `json:"durationSeconds"`
	OurTimings        string            `json:"ourTimings"`
	BaselineTimings   string            `json:"baselineTimings"`
	BaselineCandidate string            `json:"baselineCandidate"`
}

// Metric is one row of the report: our figure, the baseline's figure from the same run, and
// their ratio. A nil figure was not measured (or has no counterpart).
type Metric struct {
	ID       string   `json:"id"`
	Section  string   `json:"section"`
	Name     string   `json:"name"`
	Unit     string   `json:"unit"`
	Ours     *float64 `json:"ours"`
	Baseline *float64 `json:"baseline"`
	// Ratio is Baseline/Ours (above 1: ours is lower); nil when it is infinite or undefined,
	// see RatioText.
	Ratio     *float64 `json:"ratio"`
	RatioText string   `json:"ratioText"`
	Note      string   `json:"note,omitempty"`
	// Detail holds the raw material: summaries, counts by verb, sample sizes.
	Detail map[string]any `json:"detail,omitempty"`
}

// Target is a goal from issue 10, evaluated on a metric (or on its ratio).
type Target struct {
	ID       string `json:"id"`
	Text     string `json:"text"`
	MetricID string `json:"metric"`
	// OnRatio evaluates the metric's ratio instead of our figure.
	OnRatio bool    `json:"onRatio,omitempty"`
	Op      string  `json:"op"` // "<=" or ">="
	Goal    float64 `json:"goal"`
	Unit    string  `json:"unit,omitempty"`

	Value     *float64 `json:"value"`
	ValueText string   `json:"valueText"`
	Status    string   `json:"status"` // met, missed, not measured
	Shortfall string   `json:"shortfall,omitempty"`
}

// Report is the outcome of a run.
type Report struct {
	Meta      Meta     `json:"meta"`
	Metrics   []Metric `json:"metrics"`
	Targets   []Target `json:"targets"`
	Anomalies []string `json:"anomalies"`
	Notes     []string `json:"notes"`
}

// F returns a pointer to v, or nil when v is NaN (not measured).
func F(v float64) *float64 {
	if math.IsNaN(v) {
		return nil
	}
	return &v
}

// Add appends a metric and computes its ratio.
func (r *Report) Add(m Metric) {
	m.Ratio, m.RatioText = nil, "—"
	if m.Ours != nil && m.Baseline != nil {
		q := Ratio(*m.Baseline, *m.Ours)
		switch {
		case math.IsInf(q, 1):
			m.RatioText = "∞"
		case !math.IsNaN(q):
			m.Ratio = F(q)
			m.RatioText = FormatRatio(q)
		}
	}
	r.Metrics = append(r.Metrics, m)
}

// Metric returns the metric with id, or nil.
func (r *Report) Metric(id string) *Metric {
	for i := range r.Metrics {
		if r.Metrics[i].ID == id {
			return &r.Metrics[i]
		}
	}
	return nil
}

// Evaluate fills in the value and status of every target from the metrics.
func (r *Report) Evaluate() {
	for i := range r.Targets {
		t := &r.Targets[i]
		t.Value, t.ValueText, t.Status, t.Shortfall = nil, "—", "not measured", ""
		m := r.Metric(t.MetricID)
		if m == nil {
			continue
		}
		var v float64
		switch {
		case t.OnRatio && m.RatioText == "∞":
			v = math.Inf(1)
			t.ValueText = "∞"
		case t.OnRatio && m.Ratio != nil:
			v = *m.Ratio
			t.Value, t.ValueText = F(v), FormatRatio(v)
		case !t.OnRatio && m.Ours != nil:
			v = *m.Ours
			t.Value, t.ValueText = F(v), FormatValue(v, m.Unit)
		default:
			continue
		}
		met := (t.Op == "<=" && v <= t.Goal) || (t.Op == ">=" && v >= t.Goal)
		if met {
			t.Status = "met"
			continue
		}
		t.Status = "missed"
		gap := v - t.Goal
		if t.Op == ">=" {
			gap = t.Goal - v
		}
		pct := ""
		if t.Goal != 0 {
			pct = fmt.Sprintf(" (%.0f%%)", 100*gap/t.Goal)
		}
		if t.OnRatio {
			t.Shortfall = fmt.Sprintf("%s short%s", FormatRatio(gap), pct)
		} else {
			t.Shortfall = fmt.Sprintf("by %s%s", FormatValue(gap, m.Unit), pct)
		}
	}
}

// FormatValue renders v with a precision suited to its size, followed by its unit.
func FormatValue(v float64, unit string) string {
	var s string
	a := math.Abs(v)
	switch {
	case math.IsInf(v, 0) || math.IsNaN(v):
		s = fmt.Sprint(v)
	case a == 0 || a >= 100:
		s = fmt.Sprintf("%.0f", v)
	case a >= 10:
		s = fmt.Sprintf("%.1f", v)
	case a >= 0.1:
		s = fmt.Sprintf("%.2f", v)
	default:
		s = fmt.Sprintf("%.3f", v)
	}
	if unit == "" {
		return s
	}
	return s + " " + unit
}

// FormatRatio renders a ratio as a factor.
func FormatRatio(q float64) string {
	if math.IsInf(q, 1) {
		return "∞"
	}
	return FormatValue(q, "") + "×"
}

func opt(v *float64, unit string) string {
	if v == nil {
		return "—"
	}
	return FormatValue(*v, unit)
}

// Table renders the report as one plain-text table (metrics, then targets), for a terminal.
func (r *Report) Table() string {
	var b bytes.Buffer
	mode := "full"
	if r.Meta.Quick {
		mode = "quick (BENCH_QUICK=1: fewer samples, short windows)"
	}
	fmt.Fprintf(&b, "Metaparticle Sync benchmarks, %s, %d CPUs, %s, Kubernetes %s, %s run in %.0f s\n",
		r.Meta.Date, r.Meta.CPUs, r.Meta.GoVersion, r.Meta.Kubernetes, mode, r.Meta.DurationSeconds)
	fmt.Fprintf(&b, "baseline: %s\n\n", r.Meta.BaselineCandidate)
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "METRIC\tOURS\tBASELINE\tBASELINE/OURS\tTARGET\tSTATUS")
	section := ""
	for _, m := range r.Metrics {
		if m.Section != section {
			section = m.Section
			fmt.Fprintf(tw, "%s\t\t\t\t\t\n", section)
		}
		goal, status := r.targetsOf(m.ID)
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", m.Name, opt(m.Ours, m.Unit), opt(m.Baseline, m.Unit), m.RatioText, goal, status)
	}
	tw.Flush()
	if len(r.Targets) > 0 {
		b.WriteString("\nTargets (issue 10; reported, never asserted):\n")
		tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		for _, t := range r.Targets {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", t.Text, t.ValueText, strings.ToUpper(t.Status), t.Shortfall)
		}
		tw.Flush()
	}
	for _, a := range r.Anomalies {
		fmt.Fprintf(&b, "ANOMALY: %s\n", a)
	}
	return b.String()
}

// targetsOf returns the goals and statuses of the targets on metric id, for the table.
func (r *Report) targetsOf(id string) (goal, status string) {
	var gs, ss []string
	for _, t := range r.Targets {
		if t.MetricID != id {
			continue
		}
		op := map[string]string{"<=": "≤", ">=": "≥"}[t.Op]
		g := op + " " + strings.TrimSpace(strconv.FormatFloat(t.Goal, 'g', -1, 64)+" "+t.Unit)
		if t.OnRatio {
			g = op + " " + strconv.FormatFloat(t.Goal, 'g', -1, 64) + "× ratio"
		}
		gs = append(gs, g)
		s := t.Status
		if t.Shortfall != "" {
			s += " " + t.Shortfall
		}
		ss = append(ss, s)
	}
	return strings.Join(gs, "; "), strings.Join(ss, "; ")
}

// Markdown renders the generated part of docs/benchmarks.md.
func (r *Report) Markdown() string {
	var b bytes.Buffer
	m := r.Meta
	mode := "`make bench`, full run"
	if m.Quick {
		mode = "`BENCH_QUICK=1`, quick run: fewer samples, short windows, not for quoting"
	}
	fmt.Fprintf(&b, "Generated on %s (%s, %.0f s).\n\n", m.Date, mode, m.DurationSeconds)
	fmt.Fprintf(&b, "- Machine: %d CPUs", m.CPUs)
	if m.CPUModel != "" {
		fmt.Fprintf(&b, " (%s)", m.CPUModel)
	}
	fmt.Fprintf(&b, ", %s", m.Platform)
	if m.LoadAverage != "" {
		fmt.Fprintf(&b, ", load average at start %s", m.LoadAverage)
	}
	b.WriteString("\n")
	fmt.Fprintf(&b, "- Go %s; Kubernetes API server %s (envtest: kube-apiserver and etcd on 127.0.0.1)", strings.TrimPrefix(m.GoVersion, "go"), m.Kubernetes)
	for _, k := range sortedKeys(m.Modules) {
		fmt.Fprintf(&b, "; %s %s", k, m.Modules[k])
	}
	b.WriteString("\n")
	fmt.Fprintf(&b, "- Ours: %s\n", m.OurTimings)
	fmt.Fprintf(&b, "- Baseline: %s; %s\n\n", m.BaselineCandidate, m.BaselineTimings)

	b.WriteString("| Metric | Ours | Baseline | Baseline ÷ ours | Target | Status |\n")
	b.WriteString("|---|---:|---:|---:|---|---|\n")
	for _, x := range r.Metrics {
		goal, status := r.targetsOf(x.ID)
		name := x.Section + ": " + x.Name
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", mdEscape(name), opt(x.Ours, x.Unit), opt(x.Baseline, x.Unit), x.RatioText, mdEscape(goal), status)
	}
	b.WriteString("\n| Target (issue 10) | Measured | Status | Shortfall |\n|---|---:|---|---|\n")
	for _, t := range r.Targets {
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", mdEscape(t.Text), t.ValueText, t.Status, t.Shortfall)
	}
	notes := false
	for _, x := range r.Metrics {
		if x.Note != "" {
			if !notes {
				b.WriteString("\nNotes on the rows:\n\n")
				notes = true
			}
			fmt.Fprintf(&b, "- %s: %s: %s\n", x.Section, x.Name, x.Note)
		}
	}
	if len(r.Notes) > 0 {
		b.WriteString("\nHow it was measured:\n\n")
		for _, n := range r.Notes {
			fmt.Fprintf(&b, "- %s\n", n)
		}
	}
	if len(r.Anomalies) > 0 {
		b.WriteString("\n**Anomalies seen in this run:**\n\n")
		for _, a := range r.Anomalies {
			fmt.Fprintf(&b, "- %s\n", a)
		}
	}
	return b.String()
}

func mdEscape(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

// Markers delimit the generated part of docs/benchmarks.md; everything outside them is written
// by hand and kept when the file is regenerated.
const (
	BeginGenerated = "<!-- BEGIN GENERATED by make bench: do not edit between these markers -->"
	EndGenerated   = "<!-- END GENERATED -->"
)

// MergeMarkdown returns old with the text between the markers replaced by generated; if old has
// no markers (or is empty), a new document with a skeleton around the generated part.
func MergeMarkdown(old, generated string) string {
	block := BeginGenerated + "\n" + strings.TrimRight(generated, "\n") + "\n" + EndGenerated
	i := strings.Index(old, BeginGenerated)
	j := strings.Index(old, EndGenerated)
	if i >= 0 && j > i {
		return old[:i] + block + old[j+len(EndGenerated):]
	}
	return "# Benchmarks\n\n" +
		"`make bench` measures Metaparticle Sync against client-go's leader election with a LeaseLock, in the same run, on the same real API server. The table between the markers is generated; the analysis after it is written by hand.\n\n" +
		block + "\n\n## Analysis\n\n(Not written yet.)\n"
}

// WriteMarkdown merges generated into the file at path (see MergeMarkdown).
func WriteMarkdown(path, generated string) error {
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return writeFile(path, []byte(MergeMarkdown(string(old), generated)))
}

// WriteJSON writes r as indented JSON to path.
func (r *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return writeFile(path, append(b, '\n'))
}

func writeFile(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
