package chaos

import (
	"cmp"
	"fmt"
	"io"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// Names of the checks of [Check], as [Violation.Check] gives them.
const (
	// CheckWellFormed: every operation has a known kind and result, starts no later than it
	// ends, and belongs to a hold with exactly one grant; a lost hold was not told before it
	// last believed it held.
	CheckWellFormed = "well-formed"
	// CheckLinearizable: the grants and writes, with their replies, are linearizable with
	// respect to the fenced register's model ([RegisterModel]), checked by porcupine.
	CheckLinearizable = "linearizable"
	// CheckOverlap: no two holds' accepted operations interleave in time: the span from a
	// hold's first to its last accepted grant or write (their start, the application's At)
	// does not intersect another hold's.
	CheckOverlap = "no-overlap"
	// CheckToldBeforeGranted: every hold followed by another grant had, by the moment that
	// grant was seen, been told lost, released, or its application killed. The grants are the
	// announced ones and those seen only on the Lease (never announced: see
	// [Verdict.GrantsLeaseOnly]); a hold is held to the earliest grant after it.
	CheckToldBeforeGranted = "told-before-granted"
	// CheckTokenOrder: each grant's token is higher than every earlier grant's.
	CheckTokenOrder = "token-order"
	// CheckForeignRefused: every foreign release ([FaultForeignRelease]) was answered 401 to
	// both its DELETEs, and the hold it aimed at was not lost, unless another fault could have
	// ended it.
	CheckForeignRefused = "foreign-release-refused"
)

// A Violation is one failed check. Msg reads "got X; want Y" and names the operations involved
// by their IDs (#n), which Ops lists.
type Violation struct {
	Check string `json:"check"`
	Ops   []int  `json:"ops"`
	Msg   string `json:"msg"`
}

func (v Violation) String() string { return v.Check + ": " + v.Msg }

// CheckOptions tune [Check].
type CheckOptions struct {
	// Timeout bounds porcupine's search; 0 means none. A search that times out is a violation.
	Timeout time.Duration
}

// A Verdict is what [Check] found: counts of what the history holds and the violations.
type Verdict struct {
	Ops, Holds, Grants       int
	GrantsRejected           int
	Writes, WritesRejected   int
	LateWrites, LateRejected int
	Ends                     map[string]int // by result
	Releases                 int
	Faults                   map[string]int // by kind
	FaultsOnHolder           int
	Sessions                 int // holds whose session is known
	LeaseChanges             int
	HoldsWithAcceptedOps     int
	Linearizable             porcupine.CheckResult
	RegisterOps, Segments    int
	LinearizableTime         time.Duration
	Handoffs                 int
	HandoffsLost             int // the previous hold was told it was lost (or gave it up: see Op.Told)
	HandoffsReleased         int // the previous hold's application called Release
	HandoffsEndedUnreleased  int // its End arrived but no Release was recorded
	HandoffsKilled           int // its application was sent SIGKILL
	// GrantsLeaseOnly counts the grants seen on the Lease (a new holder identity or token) whose
	// token no hold announced: lost before the application announced them, or its application
	// killed first. They are checked as grants too: the hold before them must have been told
	// lost, released or killed by the time the test saw them.
	GrantsLeaseOnly int
	// HandoffsToLeaseOnly counts the handoffs whose earliest next grant was one seen only on
	// the Lease.
	HandoffsToLeaseOnly int
	// ToldMargins are, for every handoff settled by a loss (HandoffsLost), how long before the
	// next grant the hold was told (or gave it up), in grant order.
	ToldMargins []time.Duration
	// HandoffsAfterFault counts, by fault kind, the handoffs whose previous hold's Pod was hit
	// by a fault between that hold's grant and the next grant; ToldMarginsAfterFault are the
	// margins of those settled by a loss.
	HandoffsAfterFault    map[string]int
	ToldMarginsAfterFault map[string][]time.Duration
	// ForeignReleases counts the foreign releases that sent their DELETEs, ForeignRefused those
	// answered 401 twice; ForeignHoldsKept counts the holds they aimed at that ended without a
	// loss (a hold the history does not have is not counted).
	ForeignReleases, ForeignRefused, ForeignHoldsKept int
	Violations                                        []Violation
	porcupineInfo                                     porcupine.LinearizationInfo
	porcupineFaults                                   []porcupine.Annotation
	segmentsOK                                        []bool
	segmentsOps                                       [][]porcupine.Operation
	violatingOps                                      map[int]bool
	violatingHolds                                    map[string]bool
}

// Failed reports whether any check failed.
func (v *Verdict) Failed() bool { return len(v.Violations) > 0 }

// Summary is one line of the counts and results.
func (v *Verdict) Summary() string {
	return fmt.Sprintf("%d operations of %d holds: %d grants (%d rejected), %d writes (%d rejected; %d late, %d of them rejected), "+
		"ends %s, %d releases; faults %s (%d on a holder); sessions known for %d holds from %d Lease changes; "+
		"%s: %s over %d grants and writes in %d segment(s) (%s); %s: %d holds with accepted operations; "+
		"%s: %s; %s: %d grants; %s: %s; %d violations",
		v.Ops, v.Holds, v.Grants, v.GrantsRejected, v.Writes, v.WritesRejected, v.LateWrites, v.LateRejected,
		countsString(v.Ends), v.Releases, countsString(v.Faults), v.FaultsOnHolder, v.Sessions, v.LeaseChanges,
		CheckLinearizable, v.Linearizable, v.RegisterOps, v.Segments, v.LinearizableTime.Round(time.Millisecond),
		CheckOverlap, v.HoldsWithAcceptedOps,
		CheckToldBeforeGranted, v.ToldBeforeGrantedSummary(), CheckTokenOrder, v.Grants,
		CheckForeignRefused, v.ForeignSummary(), len(v.Violations))
}

// ToldBeforeGrantedSummary says what the told-before-granted check covered: the grants checked,
// how each handoff was settled, the margins of those settled by a loss, and the handoffs after a
// fault on the previous holder's Pod, by kind.
func (v *Verdict) ToldBeforeGrantedSummary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d handoffs checked, %d grants after the first (%d of them seen only on the Lease, earliest next grant of %d handoffs): "+
		"told lost %d (%s), released %d, ended with no Release recorded %d, killed %d",
		v.Handoffs, v.Handoffs+v.GrantsLeaseOnly, v.GrantsLeaseOnly, v.HandoffsToLeaseOnly,
		v.HandoffsLost, marginsString(v.ToldMargins), v.HandoffsReleased, v.HandoffsEndedUnreleased, v.HandoffsKilled)
	if len(v.HandoffsAfterFault) > 0 {
		var parts []string
		for _, k := range slices.Sorted(maps.Keys(v.HandoffsAfterFault)) {
			p := fmt.Sprintf("%s %d", k, v.HandoffsAfterFault[k])
			if m := v.ToldMarginsAfterFault[k]; len(m) > 0 {
				p += fmt.Sprintf(" (%d told lost, %s)", len(m), marginsString(m))
			}
			parts = append(parts, p)
		}
		fmt.Fprintf(&b, "; after a fault on the previous holder's Pod: %s", strings.Join(parts, ", "))
	}
	return b.String()
}

// ForeignSummary says what the foreign-release check found.
func (v *Verdict) ForeignSummary() string {
	return fmt.Sprintf("%d foreign releases sent, %d refused with 401 twice, %d holds aimed at kept", v.ForeignReleases, v.ForeignRefused, v.ForeignHoldsKept)
}

// marginsString is "told-before margin min 1.2s, median 1.5s", or "no margins".
func marginsString(m []time.Duration) string {
	if len(m) == 0 {
		return "no margins"
	}
	lo, med := Margins(m)
	return fmt.Sprintf("told-before margin min %s, median %s", lo.Round(time.Millisecond), med.Round(time.Millisecond))
}

// Margins returns the least and the median of m (the lower median of an even count); zeros
// for none.
func Margins(m []time.Duration) (least, median time.Duration) {
	if len(m) == 0 {
		return 0, 0
	}
	s := slices.Sorted(slices.Values(m))
	return s[0], s[(len(s)-1)/2]
}

func countsString(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

// holdOps are one hold's operations.
type holdOps struct {
	id, pod                string
	token                  uint64
	acquire, grant         *Op
	writes                 []*Op
	end, release           *Op
	firstAccepted, lastAcc *Op // the accepted grant or write with the earliest and latest start
}

// belief is the end of the hold's belief interval: its latest grant, write or end start.
func (h *holdOps) belief() time.Time {
	t := h.grant.Start
	for _, w := range h.writes {
		t = later(t, w.Start)
	}
	if h.end != nil {
		t = later(t, h.end.Start)
	}
	return t
}

// Check checks a history; see the Check constants for what each check means and docs/testing.md
// for how. The history's operations are not modified.
func Check(h *History, opts CheckOptions) *Verdict {
	v := &Verdict{Ends: map[string]int{}, Faults: map[string]int{}, Ops: len(h.Ops), LeaseChanges: len(h.Leases),
		HandoffsAfterFault: map[string]int{}, ToldMarginsAfterFault: map[string][]time.Duration{},
		violatingOps: map[int]bool{}, violatingHolds: map[string]bool{}}
	holds, order := v.checkWellFormed(h)
	for _, f := range h.Faults {
		v.Faults[f.Kind]++
		if f.Held {
			v.FaultsOnHolder++
		}
	}
	v.checkLinearizable(h, opts)
	v.checkOverlap(holds, order)
	grants := make([]*holdOps, 0, len(order))
	for _, id := range order {
		if holds[id].grant != nil {
			grants = append(grants, holds[id])
		}
	}
	slices.SortStableFunc(grants, func(a, b *holdOps) int {
		return cmp.Or(a.grant.Start.Compare(b.grant.Start), cmp.Compare(a.token, b.token), cmp.Compare(a.grant.ID, b.grant.ID))
	})
	v.checkToldBeforeGranted(h, grants)
	v.checkTokenOrder(grants)
	v.checkForeignRefused(h, holds, order)
	for _, viol := range v.Violations {
		for _, id := range viol.Ops {
			v.violatingOps[id] = true
			if id >= 0 && id < len(h.Ops) {
				v.violatingHolds[h.Ops[id].Hold] = true
			}
		}
	}
	return v
}

func (v *Verdict) fail(check string, ops []*Op, format string, args ...any) {
	ids := make([]int, 0, len(ops))
	for _, op := range ops {
		ids = append(ids, op.ID)
	}
	v.Violations = append(v.Violations, Violation{Check: check, Ops: ids, Msg: fmt.Sprintf(format, args...)})
}

// describe names an operation for a message: "#12 (write 3 of hold a/1/0, token 5, accepted)".
func describe(op *Op) string {
	what := op.Kind
	if op.Kind == KindWrite {
		what = fmt.Sprintf("write %d", op.Seq)
		if op.Late {
			what = fmt.Sprintf("late write %d", op.Seq)
		}
	}
	return fmt.Sprintf("#%d (%s of hold %s, token %d, %s)", op.ID, what, op.Hold, op.Token, op.Result)
}

// clock formats a time for a message.
func clock(t time.Time) string { return t.UTC().Format("15:04:05.000000") }

var validResults = map[string][]string{
	KindAcquire: {ResultGranted},
	KindGrant:   {ResultAccepted, ResultRejected},
	KindWrite:   {ResultAccepted, ResultRejected},
	KindEnd:     {ResultDone, ResultLost, ResultStale},
	KindRelease: {ResultReleased, ResultLost, ResultError},
}

// checkWellFormed indexes the operations by hold and checks their shape. It returns the holds and
// their IDs in the order of their first operation.
func (v *Verdict) checkWellFormed(h *History) (map[string]*holdOps, []string) {
	holds := map[string]*holdOps{}
	var order []string
	for i := range h.Ops {
		op := &h.Ops[i]
		if op.ID != i {
			v.fail(CheckWellFormed, []*Op{op}, "operation at index %d: got ID #%d; want #%d", i, op.ID, i)
		}
		results, ok := validResults[op.Kind]
		switch {
		case !ok:
			v.fail(CheckWellFormed, []*Op{op}, "%s: got kind %q; want one of acquire, grant, write, end, release", describe(op), op.Kind)
			continue
		case !slices.Contains(results, op.Result):
			v.fail(CheckWellFormed, []*Op{op}, "%s: got result %q; want one of %s", describe(op), op.Result, strings.Join(results, ", "))
		}
		if op.End.Before(op.Start) {
			v.fail(CheckWellFormed, []*Op{op}, "%s: got end %s before start %s; want start <= end", describe(op), clock(op.End), clock(op.Start))
		}
		ho := holds[op.Hold]
		if ho == nil {
			ho = &holdOps{id: op.Hold, pod: op.Pod, token: op.Token}
			holds[op.Hold] = ho
			order = append(order, op.Hold)
		}
		if op.Pod != ho.pod || op.Token != ho.token {
			v.fail(CheckWellFormed, []*Op{op}, "%s: got Pod %s, token %d; want the hold's Pod %s and token %d", describe(op), op.Pod, op.Token, ho.pod, ho.token)
		}
		twice := func(prev *Op) {
			if prev != nil {
				v.fail(CheckWellFormed, []*Op{prev, op}, "hold %s: got %ss #%d and #%d; want one", op.Hold, op.Kind, prev.ID, op.ID)
			}
		}
		switch op.Kind {
		case KindAcquire:
			twice(ho.acquire)
			ho.acquire = op
		case KindGrant:
			twice(ho.grant)
			ho.grant = op
			v.Grants++
			if op.Result == ResultRejected {
				v.GrantsRejected++
			}
		case KindWrite:
			ho.writes = append(ho.writes, op)
			v.Writes++
			if op.Result == ResultRejected {
				v.WritesRejected++
			}
			if op.Late {
				v.LateWrites++
				if op.Result == ResultRejected {
					v.LateRejected++
				}
			}
		case KindEnd:
			twice(ho.end)
			ho.end = op
			v.Ends[op.Result]++
			if !op.Told.IsZero() && op.Told.Before(op.Start) {
				v.fail(CheckWellFormed, []*Op{op}, "%s: got told at %s, before its last belief at %s; want told after", describe(op), clock(op.Told), clock(op.Start))
			}
		case KindRelease:
			twice(ho.release)
			ho.release = op
			v.Releases++
		}
		if (op.Kind == KindGrant || op.Kind == KindWrite) && op.Result == ResultAccepted {
			if ho.firstAccepted == nil || op.Start.Before(ho.firstAccepted.Start) {
				ho.firstAccepted = op
			}
			if ho.lastAcc == nil || !op.Start.Before(ho.lastAcc.Start) {
				ho.lastAcc = op
			}
		}
	}
	v.Holds = len(holds)
	for _, id := range order {
		ho := holds[id]
		if ho.grant == nil {
			var ops []*Op
			for _, op := range []*Op{ho.acquire, ho.end, ho.release} {
				if op != nil {
					ops = append(ops, op)
				}
			}
			ops = append(ops, ho.writes...)
			slices.SortFunc(ops, func(a, b *Op) int { return cmp.Compare(a.ID, b.ID) })
			v.fail(CheckWellFormed, ops, "hold %s: got %s and no grant; want a grant first", id, describe(ops[0]))
		}
		if ho.firstAccepted != nil {
			v.HoldsWithAcceptedOps++
		}
		if ho.grant != nil && ho.grant.Session != "" {
			v.Sessions++
		}
	}
	return holds, order
}

// checkOverlap checks that the accepted operations of different holds do not interleave. A hold
// whose last accepted operation comes after several holds began is one violation naming them all.
func (v *Verdict) checkOverlap(holds map[string]*holdOps, order []string) {
	var spans []*holdOps
	for _, id := range order {
		if ho := holds[id]; ho.firstAccepted != nil {
			spans = append(spans, ho)
		}
	}
	slices.SortStableFunc(spans, func(a, b *holdOps) int {
		return cmp.Or(a.firstAccepted.Start.Compare(b.firstAccepted.Start), cmp.Compare(a.firstAccepted.ID, b.firstAccepted.ID))
	})
	var (
		reach   *holdOps   // the hold whose last accepted operation is the latest so far
		overlap []*holdOps // the holds that began before it
	)
	flush := func() {
		if len(overlap) == 0 {
			return
		}
		first := overlap[0]
		more := ""
		if n := len(overlap) - 1; n > 0 {
			var ids []string
			for _, o := range overlap[1:min(len(overlap), 4)] {
				ids = append(ids, o.id)
			}
			if n > 3 {
				ids = append(ids, "…")
			}
			more = fmt.Sprintf(" (and %d more holds' first accepted operations too: %s)", n, strings.Join(ids, ", "))
		}
		ops := []*Op{reach.lastAcc}
		for _, o := range overlap {
			ops = append(ops, o.firstAccepted)
		}
		v.fail(CheckOverlap, ops,
			"holds %s and %s: got %s at %s, before %s at %s%s; want every accepted operation of a hold after the last one of the hold before it (fencing should have rejected one of them)",
			reach.id, first.id, describe(first.firstAccepted), clock(first.firstAccepted.Start), describe(reach.lastAcc), clock(reach.lastAcc.Start), more)
		overlap = nil
	}
	for _, ho := range spans {
		if reach != nil && ho.firstAccepted.Start.Before(reach.lastAcc.Start) {
			overlap = append(overlap, ho)
		}
		if reach == nil || ho.lastAcc.Start.After(reach.lastAcc.Start) {
			flush()
			reach = ho
		}
	}
	flush()
}

// releasedOnLease reports whether the Lease was seen released, still carrying token, before due.
func releasedOnLease(h *History, token uint64, due time.Time) bool {
	return slices.ContainsFunc(h.Leases, func(c LeaseChange) bool {
		return c.Holder == "" && c.Token == token && c.Seen.Before(due)
	})
}

// checkToldBeforeGranted checks every handoff: each hold followed by a grant was told lost,
// released or killed by the time of the earliest grant after it: the next announced grant (grants
// are sorted by grant time) or a grant seen only on the Lease with a token between theirs,
// whichever came first.
func (v *Verdict) checkToldBeforeGranted(h *History, grants []*holdOps) {
	kills := map[string][]Fault{}
	for _, f := range h.Faults {
		if f.Kind == FaultKillApp && f.Pod != "" {
			kills[f.Pod] = append(kills[f.Pod], f)
		}
	}
	leaseOnly := leaseOnlyGrants(h, grants)
	if len(grants) > 0 {
		least := grants[0].token
		for _, g := range grants {
			least = min(least, g.token)
		}
		for _, c := range leaseOnly {
			if c.Token > least {
				v.GrantsLeaseOnly++
			}
		}
	}
	for i, prev := range grants {
		var (
			due      time.Time
			nextDesc string
			nextOp   *Op
		)
		bound, unbounded := uint64(0), i+1 == len(grants)
		if !unbounded {
			next := grants[i+1]
			due, nextOp = next.grant.Start, next.grant
			nextDesc = fmt.Sprintf("hold %s (grant #%d at %s)", next.id, next.grant.ID, clock(due))
			bound = max(next.token, prev.token)
		}
		// Grants seen only on the Lease between prev's token and the next's.
		k, _ := slices.BinarySearchFunc(leaseOnly, prev.token+1, func(c LeaseChange, t uint64) int { return cmp.Compare(c.Token, t) })
		toLeaseOnly := false
		for ; k < len(leaseOnly) && (unbounded || leaseOnly[k].Token < bound); k++ {
			c := leaseOnly[k]
			if due.IsZero() || c.Seen.Before(due) {
				due, nextOp, toLeaseOnly = c.Seen, nil, true
				nextDesc = fmt.Sprintf("a grant seen only on the Lease %s (holder %s, token %d, seen at %s)", c.Lease, c.Holder, c.Token, clock(c.Seen))
			}
		}
		if due.IsZero() {
			continue // no grant after it
		}
		v.Handoffs++
		if toLeaseOnly {
			v.HandoffsToLeaseOnly++
		}
		// The faults on prev's Pod while it held, up to the next grant.
		var hit []string
		for _, f := range h.Faults {
			if f.Pod == prev.pod && f.Pod != "" && !f.Start.After(due) && !later(f.End, f.Start).Before(prev.grant.Start) && !slices.Contains(hit, f.Kind) {
				hit = append(hit, f.Kind)
				v.HandoffsAfterFault[f.Kind]++
			}
		}
		var evidence []string
		if e := prev.end; e != nil && e.Result == ResultLost {
			told, how := e.Told, "told lost at"
			if told.IsZero() {
				told, how = e.End, "gave the hold up (not told; its End arrived) at"
			}
			if !told.After(due) {
				v.HandoffsLost++
				v.ToldMargins = append(v.ToldMargins, due.Sub(told))
				for _, k := range hit {
					v.ToldMarginsAfterFault[k] = append(v.ToldMarginsAfterFault[k], due.Sub(told))
				}
				continue
			}
			evidence = append(evidence, fmt.Sprintf("%s %s (%s)", how, clock(told), describe(e)))
		}
		if r := prev.release; r != nil {
			if !r.Start.After(due) {
				v.HandoffsReleased++
				continue
			}
			evidence = append(evidence, fmt.Sprintf("called Release at %s (%s)", clock(r.Start), describe(r)))
		} else if e := prev.end; e != nil && e.Result != ResultLost {
			// No Release recorded (e.g. the application was killed before it could say): its End,
			// sent just before it called Release, is the evidence left.
			if !e.End.After(due) {
				v.HandoffsEndedUnreleased++
				continue
			}
			evidence = append(evidence, fmt.Sprintf("ended (%s) with its End arriving at %s and no Release recorded (%s)", e.Result, clock(e.End), describe(e)))
		}
		killed := false
		for _, f := range kills[prev.pod] {
			if f.Start.After(due) || f.End.Before(prev.grant.Start) {
				continue
			}
			// A kill that began after the grant; or one already under way when the grant was
			// announced (the application was alive to announce it, then died), if the Lease
			// shows the hold released by its side-car before the next grant: the session of a
			// process that died ends when its connections close.
			if !f.Start.Before(prev.grant.Start) || releasedOnLease(h, prev.token, due) {
				killed = true
				break
			}
		}
		if killed {
			v.HandoffsKilled++
			continue
		}
		if len(evidence) == 0 {
			evidence = append(evidence, "no end, no release and no kill-app fault on its Pod recorded")
		}
		ops := []*Op{prev.grant}
		for _, op := range []*Op{nextOp, prev.end, prev.release} {
			if op != nil {
				ops = append(ops, op)
			}
		}
		v.fail(CheckToldBeforeGranted, ops,
			"handoff from hold %s (grant #%d) to %s: got hold %s %s; want it told lost, released or killed by %s",
			prev.id, prev.grant.ID, nextDesc, prev.id, strings.Join(evidence, "; "), clock(due))
	}
}

// leaseOnlyGrants returns the grants seen on the Lease that no hold announced, sorted by token:
// the first change to each token with a holder, on a Lease where some announced grant was seen,
// whose token no grant of the history has.
func leaseOnlyGrants(h *History, grants []*holdOps) []LeaseChange {
	tokens := map[uint64]bool{}
	for _, g := range grants {
		tokens[g.token] = true
	}
	leases := map[string]bool{}
	for _, c := range h.Leases {
		if c.Holder != "" && tokens[c.Token] {
			leases[c.Lease] = true
		}
	}
	seen := map[uint64]bool{}
	var out []LeaseChange
	for _, c := range h.Leases {
		if c.Holder == "" || tokens[c.Token] || !leases[c.Lease] || seen[c.Token] {
			continue
		}
		seen[c.Token] = true
		out = append(out, c)
	}
	slices.SortStableFunc(out, func(a, b LeaseChange) int { return cmp.Or(cmp.Compare(a.Token, b.Token), a.Seen.Compare(b.Seen)) })
	return out
}

// checkForeignRefused checks every foreign release: both DELETEs answered 401, and the hold it
// aimed at (its Pod's hold with the token the side-car showed) not lost, unless another fault
// on its Pod or the API server overlapped that hold.
func (v *Verdict) checkForeignRefused(h *History, holds map[string]*holdOps, order []string) {
	type key struct {
		pod   string
		token uint64
	}
	byToken := map[key]*holdOps{}
	for _, id := range order {
		if ho := holds[id]; ho.grant != nil {
			byToken[key{ho.pod, ho.token}] = ho
		}
	}
	for i, f := range h.Faults {
		if f.Kind != FaultForeignRelease {
			continue
		}
		v.ForeignReleases++
		what := fmt.Sprintf("foreign release in %s at %s of session %s's hold (token %d)", f.Pod, clock(f.Start), f.Session, f.Token)
		if f.StatusNoSecret == 401 && f.StatusWrongSecret == 401 {
			v.ForeignRefused++
		} else {
			v.fail(CheckForeignRefused, nil, "%s: got status %d to the DELETE without a secret and %d to the one with a wrong secret; want 401 to both",
				what, f.StatusNoSecret, f.StatusWrongSecret)
		}
		ho := byToken[key{f.Pod, f.Token}]
		if ho == nil {
			continue
		}
		var lostBy []*Op
		end := ho.belief()
		for _, op := range []*Op{ho.end, ho.release} {
			if op != nil {
				end = later(end, op.End)
				if op.Result == ResultLost {
					lostBy = append(lostBy, op)
				}
			}
		}
		if len(lostBy) == 0 {
			v.ForeignHoldsKept++
			continue
		}
		excused := false
		for j, o := range h.Faults {
			if j != i && o.Kind != FaultForeignRelease && (o.Pod == ho.pod || o.Pod == "") &&
				!o.Start.After(end) && !later(o.End, o.Start).Before(ho.grant.Start) {
				excused = true
				break
			}
		}
		if excused {
			continue
		}
		v.fail(CheckForeignRefused, append([]*Op{ho.grant}, lostBy...), "%s: got hold %s lost (%s) with no other fault on its Pod or the API server; want it kept: a refused release changes nothing",
			what, ho.id, describe(lostBy[0]))
	}
}

// checkTokenOrder checks that tokens strictly increase across grants in grant order.
func (v *Verdict) checkTokenOrder(grants []*holdOps) {
	var top *holdOps
	for _, g := range grants {
		if top != nil && g.token <= top.token {
			v.fail(CheckTokenOrder, []*Op{top.grant, g.grant}, "%s at %s: got token %d; want more than token %d of the earlier %s at %s",
				describe(g.grant), clock(g.grant.Start), g.token, top.token, describe(top.grant), clock(top.grant.Start))
		}
		if top == nil || g.token > top.token {
			top = g
		}
	}
}

// RegisterState is the fenced register's state in [RegisterModel]: the highest token accepted and
// the hold it came from.
type RegisterState struct {
	Token uint64
	Hold  string
}

// RegisterInput is a grant or write in [RegisterModel]; its output is a bool, accepted.
type RegisterInput struct {
	Op    int // the operation's ID; -1 for the state carried into a segment
	Kind  string
	Hold  string
	Token uint64
	Seq   int
	Late  bool
}

// registerStep is the register's rule, as fenceLocked applies it: a token above the highest is
// accepted and becomes the highest; the highest token is accepted again from its own hold only;
// anything else is rejected.
func registerStep(s RegisterState, in RegisterInput) (accepted bool, next RegisterState) {
	switch {
	case in.Token > s.Token:
		return true, RegisterState{in.Token, in.Hold}
	case in.Token == s.Token && in.Hold == s.Hold:
		return true, s
	default:
		return false, s
	}
}

// RegisterModel is the porcupine model of the fenced register. Its Init is the empty register;
// the history is checked in segments (see [Check]), each starting with an operation that carries
// the state the operations before it left.
var RegisterModel = porcupine.Model{
	Init: func() any { return RegisterState{} },
	Step: func(state, input, output any) (bool, any) {
		accepted, next := registerStep(state.(RegisterState), input.(RegisterInput))
		return accepted == output.(bool), next
	},
	Equal: func(a, b any) bool { return a.(RegisterState) == b.(RegisterState) },
	DescribeOperation: func(input, output any) string {
		in := input.(RegisterInput)
		res := "rejected"
		if output.(bool) {
			res = "accepted"
		}
		switch in.Kind {
		case "seed":
			return fmt.Sprintf("state before: token %d of %s", in.Token, in.Hold)
		case KindWrite:
			late := ""
			if in.Late {
				late = " late"
			}
			return fmt.Sprintf("#%d%s write %d %s t%d → %s", in.Op, late, in.Seq, in.Hold, in.Token, res)
		default:
			return fmt.Sprintf("#%d %s %s t%d → %s", in.Op, in.Kind, in.Hold, in.Token, res)
		}
	},
	DescribeState: func(state any) string {
		s := state.(RegisterState)
		if s.Hold == "" {
			return "empty"
		}
		return fmt.Sprintf("token %d of %s", s.Token, s.Hold)
	},
}

// seedClient is the porcupine client of the operations that carry state into a segment; a Pod's
// operations are client 2i+1 and its late writes 2i+2.
const seedClient = 0

// minSegment is the fewest operations of a segment of the linearizability check, unless the
// history ends first.
const minSegment = 2000

// checkLinearizable runs porcupine over the grants and writes.
//
// A history of one register cannot be partitioned in porcupine's sense, but it can be cut where
// no operation is pending: every operation before the cut ends before any after it starts, so a
// linearization of the whole is one of the part before, then one of the part after, and the part
// after starts from the state the part before leaves. That state is the highest token any
// operation before the cut was accepted with, and its hold, whatever the order; it is carried
// into the segment by a first operation that sets it. Each segment is a porcupine partition.
func (v *Verdict) checkLinearizable(h *History, opts CheckOptions) {
	pods := map[string]bool{}
	for i := range h.Ops {
		pods[h.Ops[i].Pod] = true
	}
	clients := map[string]int{}
	for i, p := range slices.Sorted(maps.Keys(pods)) {
		clients[p] = 1 + 2*i
	}
	var ops []porcupine.Operation
	for i := range h.Ops {
		op := &h.Ops[i]
		if op.Kind != KindGrant && op.Kind != KindWrite {
			continue
		}
		c := clients[op.Pod]
		if op.Late {
			c++
		}
		ops = append(ops, porcupine.Operation{
			ClientId: c,
			Input:    RegisterInput{Op: op.ID, Kind: op.Kind, Hold: op.Hold, Token: op.Token, Seq: op.Seq, Late: op.Late},
			Call:     op.Start.UnixNano(),
			Output:   op.Result == ResultAccepted,
			Return:   op.End.UnixNano(),
			Metadata: op.ID,
		})
	}
	v.RegisterOps = len(ops)
	segs := segments(ops, minSegment)
	v.Segments = len(segs)
	model := RegisterModel
	model.Partition = func([]porcupine.Operation) [][]porcupine.Operation { return segs }
	start := time.Now()
	res, info := porcupine.CheckOperationsVerbose(model, ops, opts.Timeout)
	v.LinearizableTime = time.Since(start)
	v.Linearizable = res
	v.porcupineInfo, v.segmentsOps = info, segs
	for _, f := range h.Faults {
		end := f.End
		if end.IsZero() {
			end = f.Start
		}
		what := f.Kind
		if f.Pod != "" {
			what += " " + f.Pod
		}
		v.porcupineFaults = append(v.porcupineFaults, porcupine.Annotation{Tag: "faults", Start: f.Start.UnixNano(), End: end.UnixNano(),
			Description: what, Details: f.Desc, BackgroundColor: "#f3c0c0"})
	}
	partials := info.PartialLinearizationsOperations()
	v.segmentsOK = make([]bool, len(segs))
	for i, seg := range segs {
		longest := longestPartial(partials, i)
		v.segmentsOK[i] = len(longest) == len(seg)
		if res == porcupine.Illegal && !v.segmentsOK[i] {
			v.explainIllegal(h, seg, longest)
		}
	}
	if res == porcupine.Unknown {
		v.Violations = append(v.Violations, Violation{Check: CheckLinearizable, Ops: []int{},
			Msg: fmt.Sprintf("got no answer from porcupine within %s over %d grants and writes; want ok (a longer timeout may find one)", opts.Timeout, len(ops))})
	}
}

func longestPartial(partials [][][]porcupine.Operation, i int) []porcupine.Operation {
	if i >= len(partials) {
		return nil
	}
	var longest []porcupine.Operation
	for _, p := range partials[i] {
		if len(p) > len(longest) {
			longest = p
		}
	}
	return longest
}

// explainIllegal names the operation that porcupine could not place in a segment: of those not
// in the longest linearizable order it found, the one that returned first, and what the register
// would have replied after that order.
func (v *Verdict) explainIllegal(h *History, seg, longest []porcupine.Operation) {
	in := map[int]bool{}
	var state RegisterState
	setter := -1 // the ID of the operation that set state, -1 for the carried state
	for _, op := range longest {
		ri := op.Input.(RegisterInput)
		in[ri.Op] = true
		if _, next := registerStep(state, ri); next != state {
			state, setter = next, ri.Op
		}
	}
	var stuck *porcupine.Operation
	for i := range seg {
		op := &seg[i]
		if ri := op.Input.(RegisterInput); ri.Kind != "seed" && !in[ri.Op] && (stuck == nil || op.Return < stuck.Return) {
			stuck = op
		}
	}
	if stuck == nil {
		v.Violations = append(v.Violations, Violation{Check: CheckLinearizable, Ops: []int{},
			Msg: fmt.Sprintf("got a segment of %d operations that porcupine could not linearize; want one it can", len(seg)-1)})
		return
	}
	op := &h.Ops[stuck.Input.(RegisterInput).Op]
	ops := []*Op{op}
	by := "the state carried into this segment"
	if setter >= 0 {
		by = describe(&h.Ops[setter]) + fmt.Sprintf(", decided at %s", clock(h.Ops[setter].End))
		ops = append(ops, &h.Ops[setter])
	}
	accepted, _ := registerStep(state, stuck.Input.(RegisterInput))
	want := ResultRejected
	if accepted {
		want = ResultAccepted
	}
	if want != op.Result {
		v.fail(CheckLinearizable, ops, "%s, called at %s and decided at %s: got %s; want %s, as the register's highest accepted token then was %d of hold %s, from %s (porcupine linearized %d of the segment's %d operations before it)",
			describe(op), clock(op.Start), clock(op.End), op.Result, want, state.Token, state.Hold, by, len(longest), len(seg))
		return
	}
	v.fail(CheckLinearizable, ops, "%s, called at %s and decided at %s: got no order of the segment's %d operations consistent with real time and the replies; want one (porcupine linearized %d, with the highest token %d of hold %s, from %s)",
		describe(op), clock(op.Start), clock(op.End), len(seg), len(longest), state.Token, state.Hold, by)
}

// segments cuts ops where none is pending and at least minOps operations were taken since the last
// cut, and prefixes each segment after the first with a "seed" operation that sets the state the
// earlier operations left: the highest token accepted before the cut and the hold of its first
// accepted operation.
func segments(ops []porcupine.Operation, minOps int) [][]porcupine.Operation {
	sorted := slices.Clone(ops)
	sort.SliceStable(sorted, func(i, j int) bool {
		return sorted[i].Call < sorted[j].Call || (sorted[i].Call == sorted[j].Call && sorted[i].Return < sorted[j].Return)
	})
	var (
		segs     [][]porcupine.Operation
		cur      []porcupine.Operation
		maxRet   int64
		state    RegisterState
		stateRet int64 // return of the operation that set state.Hold
	)
	for i, op := range sorted {
		if len(cur) >= minOps && op.Call > maxRet {
			segs = append(segs, cur)
			cur = nil
			if state.Token > 0 {
				cur = append(cur, porcupine.Operation{ClientId: seedClient, Input: RegisterInput{Op: -1, Kind: "seed", Hold: state.Hold, Token: state.Token},
					Call: op.Call - 1, Output: true, Return: op.Call - 1, Metadata: -1})
			}
		}
		if i == 0 || op.Return > maxRet {
			maxRet = op.Return
		}
		cur = append(cur, op)
		ri := op.Input.(RegisterInput)
		if op.Output.(bool) && (ri.Token > state.Token || (ri.Token == state.Token && op.Return < stateRet)) {
			state, stateRet = RegisterState{ri.Token, ri.Hold}, op.Return
		}
	}
	if len(cur) > 0 {
		segs = append(segs, cur)
	}
	return segs
}

// WritePorcupineHTML writes porcupine's visualization of the linearizability check (an HTML page
// with inline script and styles that loads nothing) with the faults as annotations. When the
// check covered more than maxOps grants and writes, only some segments are drawn: those that
// failed, else the first ones, up to maxOps operations (at least one segment). It returns what it
// drew.
func (v *Verdict) WritePorcupineHTML(w io.Writer, maxOps int) (string, error) {
	info := v.porcupineInfo
	drawn := fmt.Sprintf("all %d grants and writes in %d segment(s)", v.RegisterOps, v.Segments)
	if v.RegisterOps > maxOps {
		var pick [][]porcupine.Operation
		n := 0
		failing := slices.Contains(v.segmentsOK, false)
		for i, seg := range v.segmentsOps {
			if failing && v.segmentsOK[i] {
				continue
			}
			if len(pick) > 0 && n+len(seg) > maxOps {
				break
			}
			pick = append(pick, seg)
			n += len(seg)
		}
		var ops []porcupine.Operation
		for _, seg := range pick {
			ops = append(ops, seg...)
		}
		model := RegisterModel
		model.Partition = func([]porcupine.Operation) [][]porcupine.Operation { return pick }
		_, info = porcupine.CheckOperationsVerbose(model, ops, 0)
		which := "the first"
		if failing {
			which = "the failing"
		}
		drawn = fmt.Sprintf("%s %d of %d segments (%d of %d grants and writes)", which, len(pick), v.Segments, n, v.RegisterOps)
	}
	info.AddAnnotations(v.porcupineFaults)
	return drawn, porcupine.Visualize(RegisterModel, info, w)
}

// PorcupineHTMLMaxOps is the default bound of [Verdict.WritePorcupineHTML]: porcupine's page draws
// every operation, and a browser copes with a few tens of thousands.
const PorcupineHTMLMaxOps = 20000
