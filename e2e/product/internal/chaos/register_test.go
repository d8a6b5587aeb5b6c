package chaos_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/metaparticle-io/sync/e2e/product/internal/chaos"
)

var t0 = time.Date(2026, 11, 26, 8, 0, 0, 0, time.UTC)

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

// step is one message a contender sends; wantAccepted applies to Begin and Write.
type step struct {
	begin        *chaos.Begin
	write        *chaos.Write
	end          *chaos.End
	wantAccepted bool
}

func begin(hold string, token uint64, ms int, accepted bool) step {
	return step{begin: &chaos.Begin{Hold: hold, Pod: strings.Split(hold, "/")[0], Token: token, At: at(ms)}, wantAccepted: accepted}
}

func write(hold string, token uint64, ms int, accepted bool) step {
	return step{write: &chaos.Write{Hold: hold, Token: token, At: at(ms)}, wantAccepted: accepted}
}

func end(hold, reason string, ms int) step {
	return step{end: &chaos.End{Hold: hold, Reason: reason, At: at(ms)}}
}

func TestRegister(t *testing.T) {
	for _, tc := range []struct {
		name       string
		steps      []step
		wantFailed bool
		want       func(t *testing.T, rep chaos.Report)
	}{{
		name: "turns taken in order",
		steps: []step{
			begin("a/1/0", 5, 0, true), write("a/1/0", 5, 1, true), end("a/1/0", chaos.ReasonDone, 2),
			begin("b/1/0", 7, 10, true), write("b/1/0", 7, 11, true), end("b/1/0", chaos.ReasonDone, 12),
			begin("a/1/1", 9, 112, true), end("a/1/1", chaos.ReasonDone, 113),
		},
		want: func(t *testing.T, rep chaos.Report) {
			if rep.Grants != 3 || rep.Writes != 2 || rep.StaleRejected != 0 || rep.Ends[chaos.ReasonDone] != 3 {
				t.Errorf("counts: got %+v; want 3 grants, 2 writes, 0 stale, 3 done", rep.Counts)
			}
			if rep.LongestGap != 100*time.Millisecond || !rep.LongestGapAfter.Equal(at(12)) {
				t.Errorf("longest gap: got %s after %s; want 100ms after %s", rep.LongestGap, rep.LongestGapAfter, at(12))
			}
		},
	}, {
		name: "a late write of an ended hold is refused as stale, and is no overlap",
		steps: []step{
			begin("a/1/0", 5, 0, true), write("a/1/0", 5, 1, true),
			end("a/1/0", chaos.ReasonLost, 2),
			begin("b/1/0", 7, 10, true),
			// a's write stamped at 1 ms arrives only now: fenced off.
			write("a/1/0", 5, 1, false),
			// b's late write, stamped while it held and sent after it ended, is still current.
			end("b/1/0", chaos.ReasonDone, 11),
			{write: &chaos.Write{Hold: "b/1/0", Token: 7, At: at(11), Late: true}, wantAccepted: true},
			begin("c/1/0", 8, 20, true),
			{write: &chaos.Write{Hold: "b/1/0", Token: 7, At: at(11), Late: true}, wantAccepted: false},
		},
		want: func(t *testing.T, rep chaos.Report) {
			if rep.StaleRejected != 2 || rep.Writes != 2 || rep.LateWrites != 2 || rep.LateRejected != 1 {
				t.Errorf("got %d stale, %d writes accepted, %d late of which %d refused; want 2, 2, 2, 1",
					rep.StaleRejected, rep.Writes, rep.LateWrites, rep.LateRejected)
			}
		},
	}, {
		name: "a hold that began while another application still believed it held is an overlap",
		steps: []step{
			begin("a/1/0", 5, 0, true),
			begin("b/1/0", 7, 10, true), write("b/1/0", 7, 13, true),
			write("a/1/0", 5, 15, false), // a believed it held at 15 ms: refused, but an overlap
		},
		wantFailed: true,
		want: func(t *testing.T, rep chaos.Report) {
			if len(rep.Overlaps) != 1 || rep.Overlaps[0] != (chaos.Overlap{Earlier: "a/1/0", Later: "b/1/0", By: 3 * time.Millisecond}) {
				t.Errorf("overlaps: got %+v; want a/1/0 then b/1/0 by 3ms (b's last claim at 13ms)", rep.Overlaps)
			}
		},
	}, {
		name: "a hold within another overlaps by its own length",
		steps: []step{
			begin("a/1/0", 5, 0, true),
			begin("b/1/0", 7, 10, true), end("b/1/0", chaos.ReasonDone, 20),
			write("a/1/0", 5, 100, false),
		},
		wantFailed: true,
		want: func(t *testing.T, rep chaos.Report) {
			if len(rep.Overlaps) != 1 || rep.Overlaps[0].By != 10*time.Millisecond {
				t.Errorf("overlaps: got %+v; want one of 10ms", rep.Overlaps)
			}
		},
	}, {
		name: "a killed application's interval ends at its last message",
		steps: []step{
			begin("a/1/0", 5, 0, true), write("a/1/0", 5, 4, true), // then killed: no End
			begin("b/1/0", 7, 1000, true), end("b/1/0", chaos.ReasonDone, 1001),
		},
		want: func(t *testing.T, rep chaos.Report) {
			if len(rep.Overlaps) != 0 || rep.LongestGap != 996*time.Millisecond {
				t.Errorf("got overlaps %+v, longest gap %s; want none and 996ms", rep.Overlaps, rep.LongestGap)
			}
		},
	}, {
		name: "two holds given one token",
		steps: []step{
			begin("a/1/0", 5, 0, true), end("a/1/0", chaos.ReasonDone, 1),
			begin("b/1/0", 5, 10, false),
		},
		wantFailed: true,
		want: func(t *testing.T, rep chaos.Report) {
			if rep.DuplicateTokens != 1 || len(rep.TokenInversions) != 1 {
				t.Errorf("got %d duplicate tokens, inversions %+v; want 1 and 1", rep.DuplicateTokens, rep.TokenInversions)
			}
		},
	}, {
		name: "a later hold with a lower token",
		steps: []step{
			begin("b/1/0", 7, 10, true), end("b/1/0", chaos.ReasonDone, 11),
			begin("a/1/0", 5, 20, false), end("a/1/0", chaos.ReasonStale, 21),
		},
		wantFailed: true,
		want: func(t *testing.T, rep chaos.Report) {
			want := chaos.TokenInversion{Earlier: "b/1/0", Later: "a/1/0", EarlierToken: 7, LaterToken: 5}
			if len(rep.TokenInversions) != 1 || rep.TokenInversions[0] != want {
				t.Errorf("inversions: got %+v; want [%+v]", rep.TokenInversions, want)
			}
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			r := chaos.NewRegister()
			srv := httptest.NewServer(r)
			defer srv.Close()
			c := &chaos.Client{URL: srv.URL}
			ctx := context.Background()
			for i, s := range tc.steps {
				var (
					got bool
					err error
				)
				switch {
				case s.begin != nil:
					got, err = c.Begin(ctx, *s.begin)
				case s.write != nil:
					got, err = c.Write(ctx, *s.write)
				default:
					err = c.End(ctx, *s.end)
					got = s.wantAccepted
				}
				if err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
				if got != s.wantAccepted {
					t.Errorf("step %d: accepted %v; want %v", i, got, s.wantAccepted)
				}
			}
			rep := r.Report()
			if rep.Failed() != tc.wantFailed {
				t.Errorf("Failed: got %v; want %v (report %+v)", rep.Failed(), tc.wantFailed, rep)
			}
			tc.want(t, rep)
		})
	}
}

// TestRegisterBadRequests: malformed messages get HTTP 400 with a message and are counted.
func TestRegisterBadRequests(t *testing.T) {
	r := chaos.NewRegister()
	srv := httptest.NewServer(r)
	defer srv.Close()
	c := &chaos.Client{URL: srv.URL}
	ctx := context.Background()
	if _, err := c.Begin(ctx, chaos.Begin{Hold: "a/1/0", Pod: "a", Token: 1, At: at(0)}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		call    func() error
		wantErr string
	}{
		{"begin without token", func() error { _, err := c.Begin(ctx, chaos.Begin{Hold: "x", Pod: "x", At: at(0)}); return err }, "positive token"},
		{"begin twice", func() error {
			_, err := c.Begin(ctx, chaos.Begin{Hold: "a/1/0", Pod: "a", Token: 2, At: at(0)})
			return err
		}, "announced twice"},
		{"write of an unknown hold", func() error { _, err := c.Write(ctx, chaos.Write{Hold: "nope", Token: 1, At: at(1)}); return err }, "unknown hold"},
		{"write with another token", func() error { _, err := c.Write(ctx, chaos.Write{Hold: "a/1/0", Token: 2, At: at(1)}); return err }, "has token 1"},
		{"end with an unknown reason", func() error { return c.End(ctx, chaos.End{Hold: "a/1/0", Reason: "bored", At: at(1)}) }, "reason"},
		{"end twice", func() error {
			if err := c.End(ctx, chaos.End{Hold: "a/1/0", Reason: chaos.ReasonDone, At: at(2)}); err != nil {
				return err
			}
			return c.End(ctx, chaos.End{Hold: "a/1/0", Reason: chaos.ReasonDone, At: at(3)})
		}, "ended twice"},
	} {
		err := tc.call()
		if err == nil || !strings.Contains(err.Error(), "HTTP 400") || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%s: got %v; want HTTP 400 mentioning %q", tc.name, err, tc.wantErr)
		}
	}
	resp, err := http.Post(srv.URL+chaos.PathWrite, "application/json", strings.NewReader(`{"hold":`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("truncated JSON: got HTTP %d; want 400", resp.StatusCode)
	}
	if got, want := r.Report().BadRequests, 7; got != want {
		t.Errorf("BadRequests: got %d; want %d", got, want)
	}
	if !r.Report().Failed() {
		t.Errorf("Failed: got false; want true after bad requests")
	}
}

// TestRegisterHolder: Holder, HeldAt and Granted follow the holds.
func TestRegisterHolder(t *testing.T) {
	r := chaos.NewRegister()
	next, last := r.Granted()
	if !last.IsZero() || r.Holder() != "" {
		t.Fatalf("empty register: got last grant %s, holder %q; want zero and none", last, r.Holder())
	}
	if _, err := r.Begin(chaos.Begin{Hold: "a/1/0", Pod: "a", Token: 5, At: at(0)}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-next:
	default:
		t.Errorf("Granted's channel was not closed by a Begin")
	}
	if _, last := r.Granted(); last.IsZero() {
		t.Errorf("Granted: got a zero time after a Begin; want its arrival")
	}
	if _, err := r.Write(chaos.Write{Hold: "a/1/0", Token: 5, At: at(50)}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		pod  string
		at   int
		want bool
	}{{"a", -1, false}, {"a", 0, true}, {"a", 1000, true}, {"a", 1051, false}, {"b", 10, false}} {
		if got := r.HeldAt(tc.pod, at(tc.at)); got != tc.want {
			t.Errorf("HeldAt(%s, %dms) with a's hold open, last claimed at 50ms: got %v; want %v", tc.pod, tc.at, got, tc.want)
		}
	}
	if got := r.Holder(); got != "a" {
		t.Errorf("Holder: got %q; want a", got)
	}
	if err := r.End(chaos.End{Hold: "a/1/0", Reason: chaos.ReasonDone, At: at(60)}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		at   int
		want bool
	}{{60, true}, {61, false}} {
		if got := r.HeldAt("a", at(tc.at)); got != tc.want {
			t.Errorf("HeldAt(a, %dms) after its End at 60ms: got %v; want %v", tc.at, got, tc.want)
		}
	}
	if got := r.Holder(); got != "" {
		t.Errorf("Holder after the End: got %q; want none", got)
	}
	// a's next hold, abandoned (its application was killed): held just after, not much later.
	if _, err := r.Begin(chaos.Begin{Hold: "a/2/0", Pod: "a", Token: 6, At: at(5000)}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		at   int
		want bool
	}{{4999, false}, {5001, true}, {6001, false}} {
		if got := r.HeldAt("a", at(tc.at)); got != tc.want {
			t.Errorf("HeldAt(a, %dms) with a hold begun at 5000ms and never ended: got %v; want %v", tc.at, got, tc.want)
		}
	}
}
