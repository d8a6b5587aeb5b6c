package chaos_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/metaparticle-io/sync/e2e/product/internal/chaos"
)

func violationsOf(v *chaos.Verdict, check string) []chaos.Violation {
	var out []chaos.Violation
	for _, viol := range v.Violations {
		if viol.Check == check {
			out = append(out, viol)
		}
	}
	return out
}

func TestCheckPasses(t *testing.T) {
	for _, tc := range []struct {
		name  string
		build func(b *builder)
		want  func(t *testing.T, v *chaos.Verdict)
	}{{
		name: "turns taken in order, a late write rejected after the next grant",
		build: func(b *builder) {
			next := b.turn("a/1/0", 5, 0, 4)
			late := b.write("a/1/0", 5, 4, 85, 400, chaos.ResultRejected) // stamped while a held, decided after b's grant
			b.h.Ops[late].Late = true
			next = b.turn("b/1/0", 7, next+5, 5)
			b.turn("c/1/0", 9, next+5, 5)
		},
		want: func(t *testing.T, v *chaos.Verdict) {
			if v.Grants != 3 || v.Writes != 15 || v.WritesRejected != 1 || v.LateRejected != 1 || v.Handoffs != 2 || v.HandoffsReleased != 2 {
				t.Errorf("got %d grants, %d writes (%d rejected, %d late rejected), %d handoffs (%d released); want 3, 15 (1, 1), 2 (2)",
					v.Grants, v.Writes, v.WritesRejected, v.LateRejected, v.Handoffs, v.HandoffsReleased)
			}
		},
	}, {
		name: "a killed application's hold ends at its last message; the next grant follows the kill",
		build: func(b *builder) {
			b.grant("a/1/0", 5, 0, chaos.ResultAccepted)
			b.write("a/1/0", 5, 0, 20, 21, chaos.ResultAccepted)
			b.fault(chaos.FaultKillApp, "a", 30, 60, true)
			b.turn("b/1/0", 7, 90, 2)
		},
		want: func(t *testing.T, v *chaos.Verdict) {
			if v.HandoffsKilled != 1 || v.FaultsOnHolder != 1 {
				t.Errorf("got %d handoffs after a kill, %d faults on a holder; want 1 and 1", v.HandoffsKilled, v.FaultsOnHolder)
			}
		},
	}, {
		name: "a kill under way when the grant was announced, the hold released on the Lease before the next grant",
		build: func(b *builder) {
			b.fault(chaos.FaultKillApp, "a", 0, 70, false) // the test's check of the holder came before the grant
			b.grant("a/1/0", 5, 10, chaos.ResultAccepted)
			b.h.Leases = append(b.h.Leases, chaos.LeaseChange{Seen: ms(40), Lease: "lock-x", Token: 5})
			b.turn("b/1/0", 7, 60, 2)
		},
		want: func(t *testing.T, v *chaos.Verdict) {
			if v.HandoffsKilled != 1 {
				t.Errorf("got %d handoffs after a kill; want 1", v.HandoffsKilled)
			}
		},
	}, {
		name: "a cut-off holder is told lost before the next grant, and writes until then",
		build: func(b *builder) {
			b.grant("a/1/0", 5, 0, chaos.ResultAccepted)
			b.write("a/1/0", 5, 0, 20, 21, chaos.ResultAccepted)
			b.fault(chaos.FaultCutOff, "a", 25, 7025, true)
			b.write("a/1/0", 5, 1, 2990, 2991, chaos.ResultAccepted)
			b.end("a/1/0", 5, 2990, chaos.ResultLost, 3025)
			b.release("a/1/0", 5, 3026, chaos.ResultLost)
			b.turn("b/1/0", 7, 4200, 2)
		},
		want: func(t *testing.T, v *chaos.Verdict) {
			if v.HandoffsLost != 1 || v.Ends[chaos.ResultLost] != 1 {
				t.Errorf("got %d handoffs after a loss, ends %v; want 1 and one lost", v.HandoffsLost, v.Ends)
			}
		},
	}, {
		name: "concurrent operations that linearize only one way",
		build: func(b *builder) {
			// b's grant is called before a's last write but decided after it: accepted either
			// way, while a's write, accepted, must come first.
			b.grant("a/1/0", 5, 0, chaos.ResultAccepted)
			b.write("a/1/0", 5, 0, 20, 30, chaos.ResultAccepted)
			b.end("a/1/0", 5, 20, chaos.ResultDone, 0)
			b.release("a/1/0", 5, 22, chaos.ResultReleased)
			b.op(chaos.KindGrant, "b/1/0", 7, 25, 35, chaos.ResultAccepted)
			b.write("a/1/0", 5, 1, 28, 40, chaos.ResultRejected) // a stray write, decided after b's grant
		},
		want: func(t *testing.T, v *chaos.Verdict) {
			if v.Linearizable != porcupine.Ok {
				t.Errorf("linearizable: got %s; want Ok", v.Linearizable)
			}
		},
	}, {
		name: "a simulated run with faults, long enough for several segments",
		build: func(b *builder) {
			b.h = *simulate(3000, true, 1)
		},
		want: func(t *testing.T, v *chaos.Verdict) {
			if v.Segments < 5 || v.Grants != 3000 || v.Sessions != 3000 || len(v.Faults) != 4 || v.HandoffsKilled == 0 || v.HandoffsLost == 0 {
				t.Errorf("got %d segments, %d grants, %d sessions, faults %v, %d handoffs after kills, %d after losses; want >= 5 segments, 3000, 3000, four kinds, some, some",
					v.Segments, v.Grants, v.Sessions, v.Faults, v.HandoffsKilled, v.HandoffsLost)
			}
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBuilder()
			tc.build(b)
			v := chaos.Check(&b.h, chaos.CheckOptions{Timeout: time.Minute})
			if v.Failed() || v.Linearizable != porcupine.Ok {
				t.Errorf("got violations %q, linearizable %s; want none and Ok", v.Violations, v.Linearizable)
			}
			tc.want(t, v)
			if t.Failed() {
				t.Log(v.Summary())
			}
		})
	}
}

func TestCheckFails(t *testing.T) {
	for _, tc := range []struct {
		name  string
		build func(b *builder) (involved []int)
		check string
		// want are regular expressions the violation's message must match; "#<n>" is replaced
		// by the IDs of the involved operations in order.
		want []string
	}{{
		name: "a stale write accepted after a higher token was",
		build: func(b *builder) []int {
			b.turn("a/1/0", 5, 0, 2) // ends 44
			g := b.grant("b/1/0", 7, 50, chaos.ResultAccepted)
			w := b.write("a/1/0", 5, 2, 60, 61, chaos.ResultAccepted)
			return []int{w, g}
		},
		check: chaos.CheckLinearizable,
		want: []string{`^#<0> \(write 2 of hold a/1/0, token 5, accepted\)`, `got accepted; want rejected`,
			`highest accepted token then was 7 of hold b/1/0, from #<1> \(grant of hold b/1/0`},
	}, {
		name: "a current write rejected",
		build: func(b *builder) []int {
			g := b.grant("a/1/0", 5, 0, chaos.ResultAccepted)
			w := b.write("a/1/0", 5, 0, 20, 21, chaos.ResultRejected)
			return []int{w, g}
		},
		check: chaos.CheckLinearizable,
		want:  []string{`^#<0> \(write 0 of hold a/1/0, token 5, rejected\)`, `got rejected; want accepted`, `from #<1>`},
	}, {
		name: "a stale write accepted in a later segment, against the state carried into it",
		build: func(b *builder) []int {
			b.h = *simulate(1000, false, 2)
			last := b.h.Ops[len(b.h.Ops)-1]
			early := b.h.Ops[1] // the first hold's grant
			w := b.write(early.Hold, early.Token, 9, float64(last.End.Sub(t0).Milliseconds())+100, float64(last.End.Sub(t0).Milliseconds())+101, chaos.ResultAccepted)
			return []int{w}
		},
		check: chaos.CheckLinearizable,
		want:  []string{`^#<0> \(write 9 of hold`, `got accepted; want rejected`},
	}, {
		name: "two holds' accepted operations interleave: the later grant was decided after the earlier hold's write",
		build: func(b *builder) []int {
			b.grant("a/1/0", 5, 0, chaos.ResultAccepted)
			w := b.write("a/1/0", 5, 0, 50, 51, chaos.ResultAccepted)
			g := b.op(chaos.KindGrant, "b/1/0", 7, 40, 60, chaos.ResultAccepted) // b believed from 40 ms
			b.end("a/1/0", 5, 50, chaos.ResultDone, 0)
			b.release("a/1/0", 5, 52, chaos.ResultReleased)
			return []int{w, g}
		},
		check: chaos.CheckOverlap,
		want:  []string{`^holds a/1/0 and b/1/0: got #<1> \(grant of hold b/1/0, token 7, accepted\) at \S+, before #<0> \(write 0 of hold a/1/0`, `want every accepted operation`},
	}, {
		name: "a holder told lost after the next grant",
		build: func(b *builder) []int {
			ga := b.grant("a/1/0", 5, 0, chaos.ResultAccepted)
			b.write("a/1/0", 5, 0, 20, 21, chaos.ResultAccepted)
			e := b.end("a/1/0", 5, 20, chaos.ResultLost, 4100)
			gb := b.grant("b/1/0", 7, 4000, chaos.ResultAccepted)
			r := b.release("a/1/0", 5, 4102, chaos.ResultLost)
			return []int{ga, gb, e, r}
		},
		check: chaos.CheckToldBeforeGranted,
		want: []string{`^handoff from hold a/1/0 \(grant #<0>\) to hold b/1/0 \(grant #<1> at 08:00:04.000000\)`,
			`got hold a/1/0 told lost at 08:00:04.100000 \(#<2> `, `called Release at 08:00:04.102000 \(#<3> `, `want it told lost, released or killed by 08:00:04.000000`},
	}, {
		name: "a holder that vanished without a kill",
		build: func(b *builder) []int {
			ga := b.grant("a/1/0", 5, 0, chaos.ResultAccepted)
			b.write("a/1/0", 5, 0, 20, 21, chaos.ResultAccepted)
			b.fault(chaos.FaultKillSidecar, "a", 30, 40, true) // not a kill of the application
			gb := b.grant("b/1/0", 7, 4000, chaos.ResultAccepted)
			return []int{ga, gb}
		},
		check: chaos.CheckToldBeforeGranted,
		want:  []string{`got hold a/1/0 no end, no release and no kill-app fault on its Pod recorded`},
	}, {
		name: "a kill under way when the grant was announced, with no release on the Lease",
		build: func(b *builder) []int {
			b.fault(chaos.FaultKillApp, "a", 0, 70, false)
			ga := b.grant("a/1/0", 5, 10, chaos.ResultAccepted)
			gb := b.grant("b/1/0", 7, 60, chaos.ResultAccepted)
			return []int{ga, gb}
		},
		check: chaos.CheckToldBeforeGranted,
		want:  []string{`got hold a/1/0 no end, no release and no kill-app fault on its Pod recorded`},
	}, {
		name: "a later grant with a lower token",
		build: func(b *builder) []int {
			b.turn("a/1/0", 7, 0, 1)
			ga := 1
			gb := b.grant("b/1/0", 5, 100, chaos.ResultRejected)
			b.end("b/1/0", 5, 100, chaos.ResultStale, 0)
			b.release("b/1/0", 5, 102, chaos.ResultReleased)
			return []int{ga, gb}
		},
		check: chaos.CheckTokenOrder,
		want:  []string{`^#<1> \(grant of hold b/1/0, token 5, rejected\) at 08:00:00.100000: got token 5; want more than token 7 of the earlier #<0> \(grant of hold a/1/0`},
	}, {
		name: "an operation that ends before it starts",
		build: func(b *builder) []int {
			b.grant("a/1/0", 5, 0, chaos.ResultAccepted)
			w := b.write("a/1/0", 5, 0, 20, 10, chaos.ResultAccepted)
			return []int{w}
		},
		check: chaos.CheckWellFormed,
		want:  []string{`^#<0> \(write 0 of hold a/1/0, token 5, accepted\): got end 08:00:00.010000 before start 08:00:00.020000; want start <= end`},
	}, {
		name: "a write of a hold with no grant",
		build: func(b *builder) []int {
			w := b.write("a/1/0", 5, 0, 20, 21, chaos.ResultAccepted)
			return []int{w}
		},
		check: chaos.CheckWellFormed,
		want:  []string{`^hold a/1/0: got #<0> \(write 0 of hold a/1/0, token 5, accepted\) and no grant; want a grant first`},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBuilder()
			involved := tc.build(b)
			v := chaos.Check(&b.h, chaos.CheckOptions{Timeout: time.Minute})
			got := violationsOf(v, tc.check)
			if len(got) != 1 {
				t.Fatalf("%s: got violations %q; want one", tc.check, v.Violations)
			}
			if !slices.Equal(got[0].Ops, involved) {
				t.Errorf("%s: got operations %v; want %v (%s)", tc.check, got[0].Ops, involved, got[0].Msg)
			}
			for _, w := range tc.want {
				for i, id := range involved {
					w = strings.ReplaceAll(w, fmt.Sprintf("#<%d>", i), fmt.Sprintf("#%d", id))
				}
				if !regexp.MustCompile(w).MatchString(got[0].Msg) {
					t.Errorf("%s: got message %q; want it to match %q", tc.check, got[0].Msg, w)
				}
			}
			if tc.check == chaos.CheckLinearizable && v.Linearizable != porcupine.Illegal {
				t.Errorf("linearizable: got %s; want Illegal", v.Linearizable)
			}
		})
	}
}

// TestRegisterHistory: the register records every message as an operation, and the history of a
// run through its HTTP API passes the checks.
func TestRegisterHistory(t *testing.T) {
	r := chaos.NewRegister()
	srv := httptest.NewServer(r)
	defer srv.Close()
	c := &chaos.Client{URL: srv.URL}
	ctx := context.Background()
	base := time.Now()
	at := func(ms int) time.Time { return base.Add(time.Duration(ms) * time.Millisecond) }
	// Times a little in the past: the register's decisions are later.
	base = base.Add(-time.Second)
	must := func(ok bool, err error) bool {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	must(c.Begin(ctx, chaos.Begin{Hold: "a/1/0", Pod: "a", Token: 5, At: at(0), AcquireStart: at(-40)}))
	must(c.Write(ctx, chaos.Write{Hold: "a/1/0", Token: 5, At: at(20)}))
	must(true, c.End(ctx, chaos.End{Hold: "a/1/0", At: at(21), Reason: chaos.ReasonDone}))
	must(true, c.Release(ctx, chaos.Release{Hold: "a/1/0", Start: at(22), At: at(23), Result: chaos.ReleaseReleased}))
	must(c.Begin(ctx, chaos.Begin{Hold: "b/1/0", Pod: "b", Token: 7, At: at(30)}))
	if must(c.Write(ctx, chaos.Write{Hold: "a/1/0", Token: 5, At: at(20), Late: true, Seq: 1})) {
		t.Errorf("late write after b's grant: got accepted; want rejected")
	}
	must(true, c.End(ctx, chaos.End{Hold: "b/1/0", At: at(40), Reason: chaos.ReasonLost, Told: at(41)}))
	must(true, c.Release(ctx, chaos.Release{Hold: "b/1/0", Start: at(42), At: at(43), Result: chaos.ReleaseLost}))
	// A Release whose Begin failed is ignored when the register never saw the hold, and refused
	// otherwise when unknown.
	must(true, c.Release(ctx, chaos.Release{Hold: "c/1/0", Start: at(50), At: at(51), Result: chaos.ReleaseReleased, BeginFailed: true}))
	if err := c.Release(ctx, chaos.Release{Hold: "d/1/0", Start: at(50), At: at(51), Result: chaos.ReleaseReleased}); err == nil || !strings.Contains(err.Error(), "unknown hold") {
		t.Errorf("release of an unknown hold: got %v; want an unknown hold error", err)
	}
	if err := c.Release(ctx, chaos.Release{Hold: "a/1/0", Start: at(50), At: at(51), Result: chaos.ReleaseReleased}); err == nil || !strings.Contains(err.Error(), "released twice") {
		t.Errorf("second release: got %v; want a released twice error", err)
	}

	h := r.History()
	type row struct {
		kind, hold, result string
		late               bool
	}
	var got []row
	for i, op := range h.Ops {
		if op.ID != i {
			t.Errorf("op %d: got ID %d; want %d", i, op.ID, i)
		}
		got = append(got, row{op.Kind, op.Hold, op.Result, op.Late})
	}
	want := []row{
		{chaos.KindAcquire, "a/1/0", chaos.ResultGranted, false},
		{chaos.KindGrant, "a/1/0", chaos.ResultAccepted, false},
		{chaos.KindWrite, "a/1/0", chaos.ResultAccepted, false},
		{chaos.KindEnd, "a/1/0", chaos.ResultDone, false},
		{chaos.KindRelease, "a/1/0", chaos.ResultReleased, false},
		{chaos.KindGrant, "b/1/0", chaos.ResultAccepted, false},
		{chaos.KindWrite, "a/1/0", chaos.ResultRejected, true},
		{chaos.KindEnd, "b/1/0", chaos.ResultLost, false},
		{chaos.KindRelease, "b/1/0", chaos.ResultLost, false},
	}
	if !slices.Equal(got, want) {
		t.Errorf("operations:\ngot  %v\nwant %v", got, want)
	}
	if len(h.Ops) == len(want) {
		if op := h.Ops[0]; !op.Start.Equal(at(-40)) || !op.End.Equal(at(0)) {
			t.Errorf("acquire: got %s to %s; want %s to %s", op.Start, op.End, at(-40), at(0))
		}
		if op := h.Ops[1]; !op.Start.Equal(at(0)) || op.End.Before(base.Add(time.Second)) {
			t.Errorf("grant: got %s to %s; want from %s to the register's decision, after %s", op.Start, op.End, at(0), base.Add(time.Second))
		}
		if op := h.Ops[6]; !strings.Contains(op.Reason, "stale token 5") || op.Seq != 1 {
			t.Errorf("late write: got reason %q, seq %d; want a stale token and seq 1", op.Reason, op.Seq)
		}
		if op := h.Ops[7]; !op.Told.Equal(at(41)) {
			t.Errorf("lost end: got told %s; want %s", op.Told, at(41))
		}
	}
	v := chaos.Check(h, chaos.CheckOptions{Timeout: time.Minute})
	if v.Failed() || v.Linearizable != porcupine.Ok || v.HandoffsReleased != 1 {
		t.Errorf("check: got %q, linearizable %s, %d handoffs released; want none, Ok, 1", v.Violations, v.Linearizable, v.HandoffsReleased)
	}

	// The history survives a round trip through its JSON.
	var buf bytes.Buffer
	if err := h.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	back, err := chaos.ReadHistory(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatalf("reading back %s: %v", buf.String(), err)
	}
	if len(back.Ops) != len(h.Ops) || !back.Ops[7].Told.Equal(h.Ops[7].Told) || back.Ops[6] != h.Ops[6] {
		t.Errorf("round trip: got %+v; want %+v", back.Ops, h.Ops)
	}
	if lines := strings.Count(buf.String(), "\n"); lines != len(h.Ops)+9 {
		t.Errorf("JSON: got %d lines; want one per operation and 9 more:\n%s", lines, buf.String())
	}
}

// TestHistoryJSON: the format's version is checked, unknown fields are refused, and sessions are
// assigned from Lease changes of the hold's own Pod.
func TestHistoryJSON(t *testing.T) {
	for _, tc := range []struct{ in, wantErr string }{
		{`{"version": 2, "ops": []}`, "version 2"},
		{`{"version": 1, "ops": [], "extra": 1}`, "unknown field"},
		{`{"version": 1, "lease_duration": "4x"}`, "duration"},
	} {
		if _, err := chaos.ReadHistory(strings.NewReader(tc.in)); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("ReadHistory(%s): got %v; want an error mentioning %q", tc.in, err, tc.wantErr)
		}
	}
	h := &chaos.History{
		Ops: []chaos.Op{{Hold: "a/1/0", Pod: "a", Token: 5}, {Hold: "b/1/0", Pod: "b", Token: 7}, {Hold: "c/1/0", Pod: "c", Token: 9}},
		Leases: []chaos.LeaseChange{
			{Holder: "a/s1", Token: 5}, {Holder: "x/s2", Token: 7}, {Holder: "", Token: 7},
		},
	}
	h.AssignSessions()
	if got := []string{h.Ops[0].Session, h.Ops[1].Session, h.Ops[2].Session}; !slices.Equal(got, []string{"s1", "", ""}) {
		t.Errorf("sessions: got %q; want s1 for a's token, none for b's (the Lease named another Pod) or c's (not seen)", got)
	}
}
