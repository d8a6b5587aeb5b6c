package chaos

import (
	"bufio"
	"cmp"
	"fmt"
	"html"
	"io"
	"slices"
	"strings"
	"time"
)

// RenderOptions tune [RenderHTML].
type RenderOptions struct {
	// Title heads the page; empty means "Chaos run history".
	Title string
	// Strip is the time one row of the page covers; 0 means 10 s.
	Strip time.Duration
	// PxPerSecond is the horizontal scale; 0 means 120.
	PxPerSecond float64
	// From and To limit the page to a window, as offsets from the history's start; To 0 means
	// up to its end.
	From, To time.Duration
}

// Layout of the page, in pixels.
const (
	renderLabelW = 190 // the lane labels left of the time line
	renderLaneH  = 18
	renderAxisH  = 18
	renderPad    = 6
	overviewW    = 1200
)

// maxListed is how many violations the page lists; all are marked on the time line.
const maxListed = 100

// Colours of the holds by how they ended, and of the marks.
var holdFill = map[string]string{ResultDone: "#4c8fd6", ResultLost: "#ee9a2e", ResultStale: "#9a62c4", "": "#9a9a9a"}

const (
	colorRejected = "#d62728"
	colorKill     = "#222"
	colorSidecar  = "#8b1a89"
	colorCut      = "#c0392b"
	colorAPI      = "#777"
	colorPause    = "#1f6f8b"
	colorForeign  = "#c77c00"
)

// RenderHTML writes a self-contained HTML page (inline SVG and CSS, no script, nothing loaded from
// elsewhere) that draws h: for each Pod a lane on a time line cut into strips, each hold a bar
// from its grant to its last belief coloured by how it ended (done, lost, refused as stale, or no
// end recorded), its release, the moment a lost hold was told, rejected grants and writes (a late
// one with a dashed line to when the register decided), the faults, and the operations of v's
// violations ringed in red. v nil means Check(h) with no timeout.
func RenderHTML(w io.Writer, h *History, v *Verdict, opts RenderOptions) error {
	if v == nil {
		v = Check(h, CheckOptions{})
	}
	if opts.Title == "" {
		opts.Title = "Chaos run history"
	}
	if opts.Strip <= 0 {
		opts.Strip = 10 * time.Second
	}
	if opts.PxPerSecond <= 0 {
		opts.PxPerSecond = 120
	}
	r := newRenderer(h, v, opts)
	bw := bufio.NewWriter(w)
	r.page(bw)
	return bw.Flush()
}

type renderer struct {
	h      *History
	v      *Verdict
	opts   RenderOptions
	t0     time.Time // the history's start: offsets are from here
	from   time.Time // the window drawn
	to     time.Time
	holds  []*holdOps
	pods   []string // in order of first appearance
	podIdx map[string]int
	// life is when each Pod was first and last seen: it has a lane in the strips in between.
	life map[string][2]time.Time
	// What each strip shows: holds, operations and faults that intersect it.
	stripHolds  [][]*holdOps
	stripOps    [][]*Op
	stripFaults [][]Fault
}

func newRenderer(h *History, v *Verdict, opts RenderOptions) *renderer {
	r := &renderer{h: h, v: v, opts: opts, podIdx: map[string]int{}, life: map[string][2]time.Time{}}
	scratch := &Verdict{Ends: map[string]int{}, Faults: map[string]int{}}
	byID, order := scratch.checkWellFormed(h)
	for _, id := range order {
		if ho := byID[id]; ho.grant != nil {
			r.holds = append(r.holds, ho)
		}
	}
	slices.SortStableFunc(r.holds, func(a, b *holdOps) int { return a.grant.Start.Compare(b.grant.Start) })
	// The page starts at the first operation or fault (the history's start when it has none) and
	// ends at the history's end or the last of them.
	var first, last time.Time
	if len(h.Ops) == 0 && len(h.Faults) == 0 {
		first = h.Start
	}
	last = h.End
	type appearance struct {
		pod string
		at  time.Time
	}
	var seen []appearance
	note := func(pod string, t time.Time) {
		if pod == "" {
			return
		}
		if first.IsZero() || t.Before(first) {
			first = t
		}
		if t.After(last) {
			last = t
		}
		if l, ok := r.life[pod]; !ok {
			r.life[pod] = [2]time.Time{t, t}
		} else {
			if t.Before(l[0]) {
				l[0] = t
			}
			l[1] = later(l[1], t)
			r.life[pod] = l
		}
		if _, ok := r.podIdx[pod]; !ok {
			r.podIdx[pod] = len(seen)
			seen = append(seen, appearance{pod, t})
		} else if i := r.podIdx[pod]; t.Before(seen[i].at) {
			seen[i].at = t
		}
	}
	for i := range h.Ops {
		note(h.Ops[i].Pod, h.Ops[i].Start)
		note(h.Ops[i].Pod, h.Ops[i].End)
	}
	for _, f := range h.Faults {
		note(f.Pod, f.Start)
		note(f.Pod, later(f.End, f.Start))
		if f.Pod == "" {
			if first.IsZero() || f.Start.Before(first) {
				first = f.Start
			}
			last = later(last, f.End)
		}
	}
	slices.SortStableFunc(seen, func(a, b appearance) int { return cmp.Or(a.at.Compare(b.at), cmp.Compare(a.pod, b.pod)) })
	for i, a := range seen {
		r.pods = append(r.pods, a.pod)
		r.podIdx[a.pod] = i
	}
	r.t0 = first
	r.from, r.to = first.Add(opts.From), last
	if opts.To > 0 && first.Add(opts.To).Before(last) {
		r.to = first.Add(opts.To)
	}
	if !r.to.After(r.from) {
		r.to = r.from.Add(time.Second)
	}
	n := int((r.to.Sub(r.from) + opts.Strip - 1) / opts.Strip)
	r.stripHolds, r.stripOps, r.stripFaults = make([][]*holdOps, n), make([][]*Op, n), make([][]Fault, n)
	// strips returns the strips that [a, b] intersects.
	strips := func(a, b time.Time) (int, int) {
		if b.Before(r.from) || !a.Before(r.to) {
			return 0, -1
		}
		i, j := 0, n-1
		if a.After(r.from) {
			i = int(a.Sub(r.from) / opts.Strip)
		}
		if b.Before(r.to) {
			j = min(n-1, int(b.Sub(r.from)/opts.Strip))
		}
		return i, j
	}
	for _, ho := range r.holds {
		end := ho.belief()
		if ho.release != nil {
			end = later(end, ho.release.End)
		}
		if ho.end != nil {
			end = later(end, ho.end.Told)
		}
		i, j := strips(ho.grant.Start, end)
		for k := i; k <= j; k++ {
			r.stripHolds[k] = append(r.stripHolds[k], ho)
		}
	}
	for i := range h.Ops {
		op := &h.Ops[i]
		a, b := strips(op.Start, later(op.End, op.Told))
		for k := a; k <= b; k++ {
			r.stripOps[k] = append(r.stripOps[k], op)
		}
	}
	for _, f := range h.Faults {
		i, j := strips(f.Start, later(f.End, f.Start))
		for k := i; k <= j; k++ {
			r.stripFaults[k] = append(r.stripFaults[k], f)
		}
	}
	return r
}

func (r *renderer) off(t time.Time) string {
	return fmt.Sprintf("+%.3f s", t.Sub(r.t0).Seconds())
}

func esc(s string) string { return html.EscapeString(s) }

const pageCSS = `body{font:13px/1.4 system-ui,sans-serif;margin:16px;color:#222}
h1{font-size:18px;margin:0 0 8px}h2{font-size:15px;margin:16px 0 6px}
table.counts td{padding:1px 10px 1px 0;vertical-align:top}
.ok{color:#1a7f37;font-weight:600}.bad{color:#d62728;font-weight:600}
ol.violations li{margin-bottom:4px}
svg{display:block;margin:0 0 10px}svg text{font:11px system-ui,sans-serif}
svg .lane{fill:#f6f6f6}svg .lane.odd{fill:#eee}
svg .hold{stroke:#0003;stroke-width:0.5}svg .hold.violation{stroke:#d62728;stroke-width:2}
svg .tok{fill:#fff;font-size:10px}svg .axis{stroke:#bbb}svg .tick{fill:#666;font-size:10px}
svg .podlabel{fill:#333}svg .flabel{paint-order:stroke;stroke:#fff;stroke-width:3px}svg .striplabel{fill:#555;font-weight:600}
`

func (r *renderer) page(w io.Writer) {
	v := r.v
	fmt.Fprintf(w, "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>%s</title>\n<style>\n%s</style>\n</head>\n<body>\n", esc(r.opts.Title), pageCSS)
	fmt.Fprintf(w, "<h1>%s</h1>\n", esc(r.opts.Title))
	dur := r.h.End.Sub(r.h.Start)
	fmt.Fprintf(w, "<p>Recorded from %s to %s UTC (%s). Times below are offsets from %s UTC.",
		esc(r.h.Start.UTC().Format("2006-01-02 15:04:05.000")), esc(r.h.End.UTC().Format("15:04:05.000")), esc(dur.Round(time.Millisecond).String()),
		esc(r.t0.UTC().Format("15:04:05.000")))
	if r.h.LeaseDuration > 0 {
		fmt.Fprintf(w, " Lease duration %s, renew deadline %s.", esc(time.Duration(r.h.LeaseDuration).String()), esc(time.Duration(r.h.RenewDeadline).String()))
	}
	fmt.Fprintln(w, "</p>")
	verdict := `<span class="ok">all checks passed</span>`
	if v.Failed() {
		verdict = fmt.Sprintf(`<span class="bad">%d violations</span>`, len(v.Violations))
	}
	fmt.Fprintf(w, "<p>History check: %s.</p>\n<table class=\"counts\">\n", verdict)
	rows := [][2]string{
		{"operations", fmt.Sprintf("%d of %d holds", v.Ops, v.Holds)},
		{"grants", fmt.Sprintf("%d (%d rejected)", v.Grants, v.GrantsRejected)},
		{"writes", fmt.Sprintf("%d (%d rejected; %d late, %d of them rejected)", v.Writes, v.WritesRejected, v.LateWrites, v.LateRejected)},
		{"ends", countsString(v.Ends)},
		{"releases", fmt.Sprint(v.Releases)},
		{"faults", fmt.Sprintf("%s (%d on a holder)", countsString(v.Faults), v.FaultsOnHolder)},
		{"sessions known", fmt.Sprintf("%d holds, from %d Lease changes", v.Sessions, v.LeaseChanges)},
		{CheckLinearizable, fmt.Sprintf("%s over %d grants and writes in %d segment(s)", v.Linearizable, v.RegisterOps, v.Segments)},
		{CheckOverlap, fmt.Sprintf("%d holds with accepted operations", v.HoldsWithAcceptedOps)},
		{CheckToldBeforeGranted, v.ToldBeforeGrantedSummary()},
		{CheckTokenOrder, fmt.Sprintf("%d grants", v.Grants)},
		{CheckForeignRefused, v.ForeignSummary()},
	}
	for _, row := range rows {
		fmt.Fprintf(w, "<tr><td>%s</td><td>%s</td></tr>\n", esc(row[0]), esc(row[1]))
	}
	fmt.Fprintln(w, "</table>")
	if v.Failed() {
		fmt.Fprintln(w, "<h2>Violations</h2>\n<ol class=\"violations\">")
		for i, viol := range v.Violations {
			if i == maxListed {
				fmt.Fprintf(w, "<li>and %d more (the test's log and the history command list them all)</li>\n", len(v.Violations)-maxListed)
				break
			}
			link := ""
			if len(viol.Ops) > 0 && viol.Ops[0] >= 0 && viol.Ops[0] < len(r.h.Ops) {
				if s, ok := r.stripOf(r.h.Ops[viol.Ops[0]].Start); ok {
					link = fmt.Sprintf(` <a href="#strip-%d">(at %s)</a>`, s, esc(r.off(r.h.Ops[viol.Ops[0]].Start)))
				}
			}
			fmt.Fprintf(w, "<li><b>%s</b>: %s%s</li>\n", esc(viol.Check), esc(viol.Msg), link)
		}
		fmt.Fprintln(w, "</ol>")
	}
	r.legend(w)
	r.overview(w)
	fmt.Fprintln(w, "<h2>Holds per Pod</h2>")
	for s := range r.stripOps {
		a := r.from.Add(time.Duration(s) * r.opts.Strip)
		r.strip(w, s, a, a.Add(r.opts.Strip))
	}
	fmt.Fprintln(w, "</body>\n</html>")
}

// stripOf returns the strip that shows t.
func (r *renderer) stripOf(t time.Time) (int, bool) {
	if t.Before(r.from) || !t.Before(r.to) {
		return 0, false
	}
	return int(t.Sub(r.from) / r.opts.Strip), true
}

func (r *renderer) legend(w io.Writer) {
	fmt.Fprintln(w, `<svg class="legend" width="1000" height="44" xmlns="http://www.w3.org/2000/svg">`)
	x, y := 0, 3
	item := func(mark, label string) {
		width := 30 + 7*len(label)
		if x+width > 1000 {
			x, y = 0, y+22
		}
		fmt.Fprintf(w, `<g transform="translate(%d,%d)">%s<text x="22" y="12">%s</text></g>`+"\n", x, y, mark, esc(label))
		x += width
	}
	for _, k := range []struct{ result, label string }{{ResultDone, "hold, done"}, {ResultLost, "hold, lost"}, {ResultStale, "hold, refused as stale"}, {"", "hold, no end recorded"}} {
		item(fmt.Sprintf(`<rect width="18" height="14" fill="%s"/>`, holdFill[k.result]), k.label)
	}
	item(`<path d="M2,9h14" stroke="#000" stroke-width="2"/>`, "release")
	item(`<path d="M9,2l5,6l-5,6l-5,-6z" fill="#ee9a2e" stroke="#000" stroke-width="0.5"/>`, "told lost")
	item(rejectedMark(9, 8), "rejected write or grant")
	item(`<path d="M2,8h14" stroke="#d62728" stroke-dasharray="3,2"/>`+rejectedMark(2, 8), "late write, rejected")
	item(`<path d="M9,0v16" stroke="#222" stroke-width="2"/>`, "kill app")
	item(`<path d="M9,0v16" stroke="#8b1a89" stroke-width="2"/>`, "kill side-car")
	item(`<rect width="18" height="14" fill="url(#cut)" stroke="#c0392b"/>`, "cut off")
	item(`<rect width="18" height="14" fill="url(#pause)" stroke="#1f6f8b"/>`, "side-car paused")
	item(`<path d="M9,0v16" stroke="#c77c00" stroke-width="2" stroke-dasharray="3,2"/>`, "foreign release")
	item(`<rect width="18" height="14" fill="#7773"/>`, "API server restart")
	item(`<circle cx="9" cy="8" r="6" fill="none" stroke="#d62728" stroke-width="2"/>`, "violation")
	fmt.Fprintln(w, `<defs><pattern id="cut" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="3" height="6" fill="#c0392b55"/></pattern>`+
		`<pattern id="pause" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(-45)"><rect width="3" height="6" fill="#1f6f8b55"/></pattern></defs>`)
	fmt.Fprintln(w, "</svg>")
}

func rejectedMark(x, y float64) string {
	return fmt.Sprintf(`<path d="M%.1f,%.1fl6,6m0,-6l-6,6" stroke="%s" stroke-width="2" class="rejected"/>`, x-3, y-3, colorRejected)
}

// overview draws the whole window on one line: faults and violations, each strip a link.
func (r *renderer) overview(w io.Writer) {
	span := r.to.Sub(r.from).Seconds()
	x := func(t time.Time) float64 { return float64(renderLabelW) + t.Sub(r.from).Seconds()/span*overviewW }
	fmt.Fprintln(w, "<h2>Overview</h2>")
	fmt.Fprintf(w, `<svg class="overview" width="%d" height="46" xmlns="http://www.w3.org/2000/svg">`+"\n", renderLabelW+overviewW+renderPad)
	fmt.Fprintf(w, `<text x="0" y="14" class="podlabel">faults</text><text x="0" y="36" class="podlabel">holds (grants)</text>`+"\n")
	for s := range r.stripOps {
		a := r.from.Add(time.Duration(s) * r.opts.Strip)
		b := a.Add(r.opts.Strip)
		if b.After(r.to) {
			b = r.to
		}
		fill := "#f6f6f6"
		if s%2 == 1 {
			fill = "#ececec"
		}
		fmt.Fprintf(w, `<a href="#strip-%d"><rect x="%.1f" y="0" width="%.1f" height="44" fill="%s"><title>%s to %s</title></rect></a>`+"\n",
			s, x(a), x(b)-x(a), fill, esc(r.off(a)), esc(r.off(b)))
	}
	for _, ho := range r.holds {
		if ho.grant.Start.Before(r.from) || !ho.grant.Start.Before(r.to) {
			continue
		}
		end := ""
		if ho.end != nil {
			end = ho.end.Result
		}
		fmt.Fprintf(w, `<rect x="%.1f" y="26" width="1" height="16" fill="%s"/>`+"\n", x(ho.grant.Start), holdFill[end])
	}
	for _, f := range r.h.Faults {
		if f.Start.Before(r.from) || !f.Start.Before(r.to) {
			continue
		}
		fmt.Fprintf(w, `<rect class="fault %s" x="%.1f" y="2" width="%.1f" height="18" fill="%s"><title>%s</title></rect>`+"\n",
			esc(f.Kind), x(f.Start), max(2, x(later(f.End, f.Start))-x(f.Start)), faultColor(f.Kind), esc(f.Kind+" "+f.Pod+" at "+r.off(f.Start)))
	}
	for _, viol := range r.v.Violations {
		for _, id := range viol.Ops[:min(1, len(viol.Ops))] {
			if id < 0 || id >= len(r.h.Ops) {
				continue
			}
			t := r.h.Ops[id].Start
			if t.Before(r.from) || !t.Before(r.to) {
				continue
			}
			fmt.Fprintf(w, `<circle class="violation" cx="%.1f" cy="22" r="5" fill="none" stroke="%s" stroke-width="2"><title>%s</title></circle>`+"\n",
				x(t), colorRejected, esc(viol.String()))
		}
	}
	fmt.Fprintln(w, "</svg>")
}

func faultColor(kind string) string {
	switch kind {
	case FaultKillApp:
		return colorKill
	case FaultKillSidecar:
		return colorSidecar
	case FaultCutOff:
		return colorCut
	case FaultPauseSidecar:
		return colorPause
	case FaultForeignRelease:
		return colorForeign
	default:
		return colorAPI
	}
}

func overlaps(a, b, from, to time.Time) bool { return !b.Before(from) && a.Before(to) }

// strip draws [a, b): one lane per Pod with anything in it.
func (r *renderer) strip(w io.Writer, n int, a, b time.Time) {
	if b.After(r.to) {
		b = r.to
	}
	px := r.opts.PxPerSecond
	x := func(t time.Time) float64 {
		if t.Before(a) {
			t = a
		}
		if t.After(b) {
			t = b
		}
		return float64(renderLabelW) + t.Sub(a).Seconds()*px
	}
	in := func(t time.Time) bool { return !t.Before(a) && t.Before(b) }
	// A lane for each Pod seen before the strip's end and after its start.
	holds, ops, faults := r.stripHolds[n], r.stripOps[n], r.stripFaults[n]
	var lanes []string
	for _, p := range r.pods {
		if l := r.life[p]; overlaps(l[0], l[1], a, b) {
			lanes = append(lanes, p)
		}
	}
	lane := map[string]int{}
	for i, p := range lanes {
		lane[p] = i
	}
	width := renderLabelW + int(r.opts.Strip.Seconds()*px) + renderPad
	height := renderAxisH + max(1, len(lanes))*renderLaneH + renderPad
	y := func(pod string) float64 { return float64(renderAxisH + lane[pod]*renderLaneH) }

	fmt.Fprintf(w, `<svg id="strip-%d" class="strip" width="%d" height="%d" xmlns="http://www.w3.org/2000/svg">`+"\n", n, width, height)
	fmt.Fprintf(w, `<text x="0" y="12" class="striplabel">%s to %s</text>`+"\n", esc(r.off(a)), esc(r.off(b)))
	// Axis: a tick each whole second from the start.
	for t := r.t0.Add(a.Sub(r.t0).Truncate(time.Second)); t.Before(b); t = t.Add(time.Second) {
		if t.Before(a) {
			continue
		}
		fmt.Fprintf(w, `<line class="axis" x1="%.1f" y1="%d" x2="%.1f" y2="%d"/><text class="tick" x="%.1f" y="%d">%s</text>`+"\n",
			x(t), renderAxisH-4, x(t), height-renderPad, x(t)+2, renderAxisH-6, esc(fmt.Sprintf("%.0f s", t.Sub(r.t0).Seconds())))
	}
	for i, p := range lanes {
		odd := ""
		if i%2 == 1 {
			odd = " odd"
		}
		fmt.Fprintf(w, `<rect class="lane%s" x="%d" y="%.1f" width="%d" height="%d"/><text class="podlabel" x="0" y="%.1f">%s</text>`+"\n",
			odd, renderLabelW, y(p), width-renderLabelW-renderPad, renderLaneH, y(p)+13, esc(shortPod(p)))
	}
	// Faults behind the holds.
	for _, f := range faults {
		end := later(f.End, f.Start)
		if !overlaps(f.Start, end, a, b) {
			continue
		}
		held := ""
		if f.Held {
			held = " (the holder)"
		}
		title := fmt.Sprintf("<title>%s</title>", esc(fmt.Sprintf("%s %s from %s to %s%s; %s", f.Kind, f.Pod, r.off(f.Start), r.off(end), held, f.Desc)))
		switch {
		case f.Pod == "":
			fmt.Fprintf(w, `<g class="fault %s"><rect x="%.1f" y="%d" width="%.1f" height="%d" fill="#7773"/><text x="%.1f" y="%d" fill="#444">API server restart</text>%s</g>`+"\n",
				esc(f.Kind), x(f.Start), renderAxisH, max(1, x(end)-x(f.Start)), len(lanes)*renderLaneH, x(f.Start)+2, renderAxisH+len(lanes)*renderLaneH-3, title)
		case f.Kind == FaultCutOff || f.Kind == FaultPauseSidecar:
			pattern, label := "cut", "cut off"
			if f.Kind == FaultPauseSidecar {
				pattern, label = "pause", "side-car paused"
			}
			fmt.Fprintf(w, `<g class="fault %s"><rect x="%.1f" y="%.1f" width="%.1f" height="%d" fill="url(#%s)" stroke="%s"/><text x="%.1f" y="%.1f" fill="%s">%s</text>%s</g>`+"\n",
				esc(f.Kind), x(f.Start), y(f.Pod), max(1, x(end)-x(f.Start)), renderLaneH, pattern, faultColor(f.Kind), x(f.Start)+2, y(f.Pod)+13, faultColor(f.Kind), label, title)
		default:
			label, dash := "kill app", ""
			switch f.Kind {
			case FaultKillSidecar:
				label = "kill side-car"
			case FaultForeignRelease:
				label, dash = "foreign release", ` stroke-dasharray="3,2"`
			}
			if in(f.Start) {
				lx, anchor := x(f.Start)+3, "start"
				if lx > float64(width-90) { // near the right edge: the label goes left of the line
					lx, anchor = x(f.Start)-3, "end"
				}
				fmt.Fprintf(w, `<g class="fault %s"><line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2"%s/><text class="flabel" x="%.1f" y="%.1f" fill="%s" text-anchor="%s">%s</text>%s</g>`+"\n",
					esc(f.Kind), x(f.Start), y(f.Pod)-2, x(f.Start), y(f.Pod)+renderLaneH+2, faultColor(f.Kind), dash, lx, y(f.Pod)+13, faultColor(f.Kind), anchor, label, title)
			}
		}
	}
	// Holds.
	for _, ho := range holds {
		end := r.holdEnd(ho)
		result := ""
		if ho.end != nil {
			result = ho.end.Result
		}
		cls := "hold " + cmp.Or(result, "open")
		if r.v.violatingHolds[ho.id] {
			cls += " violation"
		}
		x0, x1 := x(ho.grant.Start), x(end)
		yy := y(ho.pod) + 3
		if overlaps(ho.grant.Start, end, a, b) {
			fmt.Fprintf(w, `<rect class="%s" data-hold="%s" x="%.1f" y="%.1f" width="%.1f" height="%d" fill="%s"><title>%s</title></rect>`+"\n",
				cls, esc(ho.id), x0, yy, max(1, x1-x0), renderLaneH-6, holdFill[result], esc(r.holdTitle(ho)))
		}
		if x1-x0 > 30 && in(ho.grant.Start) {
			fmt.Fprintf(w, `<text class="tok" x="%.1f" y="%.1f">t%d</text>`+"\n", x0+2, yy+9, ho.token)
		}
		if rel := ho.release; rel != nil && overlaps(rel.Start, rel.End, a, b) {
			fmt.Fprintf(w, `<line class="release" x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#000" stroke-width="2"><title>%s</title></line>`+"\n",
				x(rel.Start), yy+float64(renderLaneH-6), max(x(rel.Start)+1, x(rel.End)), yy+float64(renderLaneH-6), esc(fmt.Sprintf("release of %s, %s to %s: %s %s", ho.id, r.off(rel.Start), r.off(rel.End), rel.Result, rel.Reason)))
		}
		if e := ho.end; e != nil && !e.Told.IsZero() && in(e.Told) {
			tx := x(e.Told)
			fmt.Fprintf(w, `<path class="told" d="M%.1f,%.1fl4,5l-4,5l-4,-5z" fill="%s" stroke="#000" stroke-width="0.5"><title>%s</title></path>`+"\n",
				tx, yy-1, holdFill[ResultLost], esc(fmt.Sprintf("%s told lost at %s", ho.id, r.off(e.Told))))
		}
	}
	// Rejected grants and writes, late writes, violations.
	for _, op := range ops {
		if (op.Kind != KindGrant && op.Kind != KindWrite) || !overlaps(op.Start, op.End, a, b) {
			continue
		}
		if _, ok := lane[op.Pod]; !ok {
			continue
		}
		my := y(op.Pod) + float64(renderLaneH)/2
		title := fmt.Sprintf("<title>%s</title>", esc(fmt.Sprintf("%s: %s to %s %s", describe(op), r.off(op.Start), r.off(op.End), op.Reason)))
		if op.Late {
			stroke := "#555"
			if op.Result == ResultRejected {
				stroke = colorRejected
			}
			fmt.Fprintf(w, `<g class="late %s" data-op="%d"><line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-dasharray="3,2"/><circle cx="%.1f" cy="%.1f" r="2" fill="%s"/>%s</g>`+"\n",
				op.Result, op.ID, x(op.Start), my, x(op.End), my, stroke, x(op.End), my, stroke, title)
		}
		if op.Result == ResultRejected && in(op.Start) {
			fmt.Fprintf(w, `<g data-op="%d">%s%s</g>`+"\n", op.ID, rejectedMark(x(op.Start), my), title)
		}
		if r.v.violatingOps[op.ID] && in(op.Start) {
			fmt.Fprintf(w, `<circle class="violation" data-op="%d" cx="%.1f" cy="%.1f" r="7" fill="none" stroke="%s" stroke-width="2">%s</circle>`+"\n",
				op.ID, x(op.Start), my, colorRejected, title)
		}
	}
	for _, op := range ops {
		if (op.Kind == KindGrant || op.Kind == KindWrite) || !r.v.violatingOps[op.ID] || !in(op.Start) {
			continue
		}
		if _, ok := lane[op.Pod]; ok {
			fmt.Fprintf(w, `<circle class="violation" data-op="%d" cx="%.1f" cy="%.1f" r="7" fill="none" stroke="%s" stroke-width="2"><title>%s</title></circle>`+"\n",
				op.ID, x(op.Start), y(op.Pod)+float64(renderLaneH)/2, colorRejected, esc(describe(op)))
		}
	}
	fmt.Fprintln(w, "</svg>")
}

// holdEnd is where a hold's bar ends: its last belief.
func (r *renderer) holdEnd(ho *holdOps) time.Time { return ho.belief() }

func (r *renderer) holdTitle(ho *holdOps) string {
	var b strings.Builder
	fmt.Fprintf(&b, "hold %s, Pod %s, token %d", ho.id, ho.pod, ho.token)
	if ho.grant.Session != "" {
		fmt.Fprintf(&b, ", session %s", ho.grant.Session)
	}
	if ho.acquire != nil {
		fmt.Fprintf(&b, "\nAcquire called %s, returned %s", r.off(ho.acquire.Start), r.off(ho.acquire.End))
	}
	fmt.Fprintf(&b, "\ngrant %s (%s)", r.off(ho.grant.Start), ho.grant.Result)
	acc, rej := 0, 0
	for _, w := range ho.writes {
		if w.Result == ResultAccepted {
			acc++
		} else {
			rej++
		}
	}
	fmt.Fprintf(&b, "\nwrites: %d accepted, %d rejected", acc, rej)
	if e := ho.end; e != nil {
		fmt.Fprintf(&b, "\nend %s: %s", r.off(e.Start), e.Result)
		if !e.Told.IsZero() {
			fmt.Fprintf(&b, ", told %s", r.off(e.Told))
		}
	} else {
		b.WriteString("\nno end recorded")
	}
	if rel := ho.release; rel != nil {
		fmt.Fprintf(&b, "\nrelease %s to %s: %s", r.off(rel.Start), r.off(rel.End), rel.Result)
	}
	return b.String()
}

// shortPod keeps a Pod name to what fits the label column.
func shortPod(p string) string {
	if len(p) > 28 {
		return "…" + p[len(p)-27:]
	}
	return p
}
