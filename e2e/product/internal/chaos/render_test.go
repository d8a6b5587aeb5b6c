package chaos_test

import (
	"bytes"
	"flag"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/metaparticle-io/sync/e2e/product/internal/chaos"
)

// exampleOut, when set, is where TestExampleHistory writes the example history that
// docs/images/chaos-history.png shows (see docs/testing.md).
var exampleOut = flag.String("example.out", "", "write the example history of TestExampleHistory to this file")

// selfContained fails t if page could load anything from elsewhere.
func selfContained(t *testing.T, page string, scripts bool) {
	t.Helper()
	if !strings.HasPrefix(page, "<!doctype html>") || !strings.HasSuffix(strings.TrimSpace(page), "</html>") {
		t.Errorf("got a page starting %.40q and ending %.40q; want a whole HTML document", page, page[max(0, len(page)-40):])
	}
	for _, re := range []string{`(?i)\ssrc\s*=`, `(?i)<link`, `(?i)@import`, `(?i)url\(\s*['"]?(https?:|//)`, `(?i)href\s*=\s*['"]?(https?:|//)`, `(?i)\bfetch\(`, `(?i)XMLHttpRequest`} {
		if m := regexp.MustCompile(re).FindString(page); m != "" {
			t.Errorf("got %q in the page; want nothing that loads from elsewhere", m)
		}
	}
	if !scripts && strings.Contains(strings.ToLower(page), "<script") {
		t.Errorf("got a <script> in the page; want none")
	}
	// The only absolute URL is SVG's namespace.
	for _, m := range regexp.MustCompile(`https?://[^\s"'<>)]+`).FindAllString(page, -1) {
		if m != "http://www.w3.org/2000/svg" {
			t.Errorf("got URL %q in the page; want only the SVG namespace", m)
		}
	}
}

// TestRenderHTML: the page of a synthetic history draws its holds, faults, rejected and late
// writes and violations, escapes text, and loads nothing.
func TestRenderHTML(t *testing.T) {
	b := newBuilder()
	b.turn("a/1/0", 5, 0, 3)
	late := b.write("a/1/0", 5, 3, 65, 380, chaos.ResultRejected)
	b.h.Ops[late].Late = true
	b.grant("b/1/0", 7, 80, chaos.ResultAccepted)
	b.write("b/1/0", 7, 0, 100, 101, chaos.ResultAccepted)
	b.fault(chaos.FaultKillApp, "b", 110, 130, true)
	b.h.Faults[0].Desc = `SIGKILL of b's <chaos> & co`
	b.grant("c/1/0", 9, 300, chaos.ResultAccepted)
	b.write("c/1/0", 9, 0, 320, 321, chaos.ResultAccepted)
	b.fault(chaos.FaultCutOff, "c", 330, 7330, true)
	b.end("c/1/0", 9, 320, chaos.ResultLost, 3330)
	b.release("c/1/0", 9, 3331, chaos.ResultLost)
	b.fault(chaos.FaultRestartAPI, "", 12000, 14000, false)
	// A stale grant after c's: a token-order violation.
	g := b.grant("d/1/0", 8, 4500, chaos.ResultRejected)
	b.end("d/1/0", 8, 4500, chaos.ResultStale, 0)
	b.release("d/1/0", 8, 4502, chaos.ResultReleased)
	b.turn("a/1/1", 11, 15000, 2)
	v := chaos.Check(&b.h, chaos.CheckOptions{Timeout: time.Minute})
	if got := violationsOf(v, chaos.CheckTokenOrder); len(got) != 1 {
		t.Fatalf("token order: got %q; want one violation", v.Violations)
	}

	var buf bytes.Buffer
	if err := chaos.RenderHTML(&buf, &b.h, v, chaos.RenderOptions{Title: "test <history>"}); err != nil {
		t.Fatal(err)
	}
	page := buf.String()
	selfContained(t, page, false)
	for _, want := range []string{
		"<title>test &lt;history&gt;</title>",
		`<rect class="hold done" data-hold="a/1/0"`,
		`<rect class="hold open" data-hold="b/1/0"`,           // killed: no end recorded
		`<rect class="hold lost violation" data-hold="c/1/0"`, // the violation names c's grant too
		`<rect class="hold stale violation" data-hold="d/1/0"`,
		`<rect class="hold done" data-hold="a/1/1"`,
		`<line class="release"`,
		`<path class="told"`,
		`class="rejected"`,
		`<g class="late rejected" data-op="` + itoa(late) + `">`,
		`<g class="fault kill-app">`,
		`<g class="fault cut-off">`,
		`<g class="fault restart-apiserver">`,
		`SIGKILL of b&#39;s &lt;chaos&gt; &amp; co`,
		`<circle class="violation" data-op="` + itoa(g) + `"`,
		`<ol class="violations">`,
		`<b>token-order</b>: #` + itoa(g) + ` (grant of hold d/1/0, token 8, rejected)`,
		`<a href="#strip-0">`,
		`<svg id="strip-0"`, `<svg id="strip-1"`, // 15 s in strips of 10 s
		`1 violations`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("got a page without %q", want)
		}
	}
	if strings.Contains(page, `<svg id="strip-2"`) {
		t.Errorf("got a third strip; want two for 15 s")
	}
	// Lanes: one per Pod, in order of first appearance.
	lanes := regexp.MustCompile(`<text class="podlabel" x="0" y="[0-9.]+">([a-z])</text>`).FindAllStringSubmatch(page, -1)
	var got []string
	for _, m := range lanes {
		got = append(got, m[1])
	}
	if s := strings.Join(got, ""); !strings.HasPrefix(s, "abcd") {
		t.Errorf("lanes of the first strip: got %q; want a, b, c, d", s)
	}

	// A window: only the strip from 10 s to 20 s.
	buf.Reset()
	if err := chaos.RenderHTML(&buf, &b.h, v, chaos.RenderOptions{From: 10 * time.Second, To: 20 * time.Second}); err != nil {
		t.Fatal(err)
	}
	if page := buf.String(); !strings.Contains(page, `<svg id="strip-0"`) || strings.Contains(page, `<svg id="strip-1"`) ||
		strings.Contains(page, `data-hold="a/1/0"`) || !strings.Contains(page, `data-hold="a/1/1"`) || !strings.Contains(page, "+10.000 s to +15.") {
		t.Errorf("window from 10 s: got a page with other strips or holds; want one strip from +10 s with hold a/1/1 only")
	}
}

// TestWritePorcupineHTML: porcupine's page is self-contained (inline script) and, above the
// bound, draws the failing segment only.
func TestWritePorcupineHTML(t *testing.T) {
	h := simulate(1000, true, 4)
	v := chaos.Check(h, chaos.CheckOptions{Timeout: time.Minute})
	var buf bytes.Buffer
	drawn, err := v.WritePorcupineHTML(&buf, chaos.PorcupineHTMLMaxOps)
	if err != nil {
		t.Fatal(err)
	}
	page := buf.String()
	selfContained(t, page, true)
	if !strings.Contains(drawn, "all ") || !strings.Contains(page, "kill-app chaos-") || !strings.Contains(page, "grant chaos-") {
		t.Errorf("got %q and a page without the faults or grants; want all operations and the faults", drawn)
	}

	// A stale write accepted at the end: with a bound of 100 operations, only its segment.
	b := &builder{h: *h}
	last := b.h.Ops[len(b.h.Ops)-1].End.Sub(t0).Milliseconds()
	w := b.write(b.h.Ops[1].Hold, b.h.Ops[1].Token, 9, float64(last+100), float64(last+101), chaos.ResultAccepted)
	v = chaos.Check(&b.h, chaos.CheckOptions{Timeout: time.Minute})
	if v.Segments < 3 {
		t.Fatalf("got %d segments; want several", v.Segments)
	}
	buf.Reset()
	drawn, err = v.WritePorcupineHTML(&buf, 100)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(drawn, "the failing 1 of ") || !strings.Contains(buf.String(), "#"+itoa(w)+" write 9") {
		t.Errorf("got %q, with the stale write: %v; want the failing segment, with the stale write #%d", drawn, strings.Contains(buf.String(), "#"+itoa(w)+" write 9"), w)
	}
}

// TestExampleHistory: the simulated history that docs/images/chaos-history.png shows passes
// every check and renders. With -example.out it is written to a file.
func TestExampleHistory(t *testing.T) {
	h := exampleHistory()
	v := chaos.Check(h, chaos.CheckOptions{Timeout: time.Minute})
	if v.Failed() {
		t.Errorf("got violations %q; want none", v.Violations)
	}
	for _, k := range []string{chaos.FaultKillApp, chaos.FaultKillSidecar, chaos.FaultCutOff, chaos.FaultRestartAPI} {
		if v.Faults[k] == 0 {
			t.Errorf("faults: got %v; want every kind, %s among them", v.Faults, k)
		}
	}
	if err := chaos.RenderHTML(&bytes.Buffer{}, h, v, chaos.RenderOptions{}); err != nil {
		t.Fatal(err)
	}
	if *exampleOut != "" {
		if err := h.WriteFile(*exampleOut); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s", *exampleOut)
	}
	// It reads back as written.
	f, err := os.CreateTemp(t.TempDir(), "*.json")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := h.WriteFile(f.Name()); err != nil {
		t.Fatal(err)
	}
	back, err := chaos.ReadHistoryFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	if len(back.Ops) != len(h.Ops) || len(back.Faults) != len(h.Faults) || len(back.Leases) != len(h.Leases) || back.LeaseDuration != h.LeaseDuration {
		t.Errorf("read back: got %d ops, %d faults, %d Lease changes, lease duration %s; want %d, %d, %d, %s",
			len(back.Ops), len(back.Faults), len(back.Leases), time.Duration(back.LeaseDuration), len(h.Ops), len(h.Faults), len(h.Leases), time.Duration(h.LeaseDuration))
	}
}

// exampleHistory is 95 simulated holds, about 24 s with one fault of each kind and a second kill.
func exampleHistory() *chaos.History { return simulate(95, true, 3) }

func itoa(n int) string { return strconv.Itoa(n) }
