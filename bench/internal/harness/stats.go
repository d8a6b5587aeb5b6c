package harness

import (
	"math"
	"slices"
	"time"
)

// Summary describes a sample of latencies, in milliseconds.
type Summary struct {
	N    int     `json:"n"`
	Min  float64 `json:"min"`
	P50  float64 `json:"p50"`
	P95  float64 `json:"p95"`
	P99  float64 `json:"p99"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

// Percentile returns the p-th percentile (0 < p <= 100) of sorted by the nearest-rank method: the
// smallest value such that at least p percent of the sample is at or below it. It returns NaN for
// an empty sample.
func Percentile(sorted []float64, p float64) float64 {
	n := len(sorted)
	if n == 0 {
		return math.NaN()
	}
	if p <= 0 {
		return sorted[0]
	}
	rank := int(math.Ceil(p / 100 * float64(n)))
	rank = min(max(rank, 1), n)
	return sorted[rank-1]
}

// Millis converts d to fractional milliseconds.
func Millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// Summarize returns the Summary of ds in milliseconds; the zero Summary for an empty sample.
func Summarize(ds []time.Duration) Summary {
	if len(ds) == 0 {
		return Summary{}
	}
	v := make([]float64, len(ds))
	sum := 0.0
	for i, d := range ds {
		v[i] = Millis(d)
		sum += v[i]
	}
	slices.Sort(v)
	return Summary{
		N:    len(v),
		Min:  v[0],
		P50:  Percentile(v, 50),
		P95:  Percentile(v, 95),
		P99:  Percentile(v, 99),
		Max:  v[len(v)-1],
		Mean: sum / float64(len(v)),
	}
}

// Ratio returns baseline/ours, the factor by which ours is lower than the baseline: above 1 ours
// is better for every lower-is-better figure. It is +Inf when ours is 0 and the baseline is not,
// 1 when both are 0, and NaN when either is missing (NaN) or negative.
func Ratio(baseline, ours float64) float64 {
	switch {
	case math.IsNaN(baseline) || math.IsNaN(ours) || baseline < 0 || ours < 0:
		return math.NaN()
	case ours == 0 && baseline == 0:
		return 1
	case ours == 0:
		return math.Inf(1)
	}
	return baseline / ours
}

// PerMinute scales a count observed over window to a rate per minute; NaN for an empty window.
func PerMinute(count int, window time.Duration) float64 {
	if window <= 0 {
		return math.NaN()
	}
	return float64(count) * float64(time.Minute) / float64(window)
}
