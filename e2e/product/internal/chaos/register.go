// Package chaos is the shared register of the chaos safety run (issue 8, scenario 3): the
// resource that contender applications protect with one lock, and the judge of whether the lock
// kept them apart.
//
// Each contender loops: acquire the lock, announce the hold ([Begin]) with its fencing token, make a
// few writes ([Write]) with that token, then stop ([End]) and release. Before every message it reads
// the clock and then checks that the SDK has not reported the hold lost, so every timestamp is a
// moment at which the application believed it held the lock. All contenders run on one machine
// and read the same clock.
//
// The register does two things with this. Like any fenced resource it refuses a message whose
// token is lower than the highest it has accepted (a stale writer), and it records a message whose
// token equals the highest but comes from another hold (two holds given one token: a safety bug).
// And it keeps every hold's belief interval, from its Begin to its latest timestamp, so that
// [Register.Report] can find overlaps: a hold that began while another application still
// believed it held the lock. A contender killed mid-hold never sends its End; its interval ends at
// its last message, which is all it ever claimed.
//
// The register also records every message as an operation of a [History] ([Register.History]),
// with the register's own time of each decision, for [Check] and [RenderHTML] after the run.
//
// The register is safe for concurrent use. Its zero value is not usable: use [NewRegister].
package chaos

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"time"
)

// Paths the register serves; each takes a JSON POST.
const (
	PathBegin   = "/begin"
	PathWrite   = "/write"
	PathEnd     = "/end"
	PathRelease = "/release"
)

// Begin announces a hold: the application's Acquire, called at AcquireStart, returned Token at
// At.
type Begin struct {
	Hold         string    `json:"hold"` // unique per hold: "<pod>/<process>/<n>"
	Pod          string    `json:"pod"`
	Token        uint64    `json:"token"`
	At           time.Time `json:"at"`
	AcquireStart time.Time `json:"acquire_start,omitzero"`
}

// Write is one write to the register under a hold. A Late write was stamped while the hold was
// believed but sent only after the hold ended, as a write delayed in the network would arrive:
// the register must refuse it once a later hold has been announced.
type Write struct {
	Hold  string    `json:"hold"`
	Token uint64    `json:"token"`
	At    time.Time `json:"at"`
	Late  bool      `json:"late,omitempty"`
	Seq   int       `json:"seq,omitempty"` // the write's index in its hold, from 0
}

// End says the application stopped believing it held the lock at At, because it was done
// (ReasonDone, about to release), was told the hold was lost (ReasonLost) or was refused as stale
// (ReasonStale). Told is, for ReasonLost, when the application saw the hold's Lost channel
// closed; it is zero when the application gave the hold up without being told (a register it
// could not reach).
type End struct {
	Hold   string    `json:"hold"`
	At     time.Time `json:"at"`
	Reason string    `json:"reason"`
	Told   time.Time `json:"told,omitzero"`
}

// Reasons of an End.
const (
	ReasonDone  = "done"
	ReasonLost  = "lost"
	ReasonStale = "stale"
)

// Release reports the application's Release of a hold, called at Start and returned at At with
// Result ReleaseReleased, ReleaseLost (the SDK said the hold had been lost) or ReleaseError
// (Error says why). It is sent after the End, for the history only: the register does not fence
// it. BeginFailed says that the hold's Begin got no reply, so the register may not know the hold;
// such a Release of an unknown hold is ignored rather than refused.
type Release struct {
	Hold        string    `json:"hold"`
	Start       time.Time `json:"start"`
	At          time.Time `json:"at"`
	Result      string    `json:"result"`
	Error       string    `json:"error,omitempty"`
	BeginFailed bool      `json:"begin_failed,omitempty"`
}

// Results of a Release.
const (
	ReleaseReleased = ResultReleased
	ReleaseLost     = ResultLost
	ReleaseError    = ResultError
)

// Reply answers every message. A message refused as stale gets HTTP 409 and Accepted false.
type Reply struct {
	Accepted bool   `json:"accepted"`
	Reason   string `json:"reason,omitempty"`
}

// Register is the fenced register. See the package documentation.
type Register struct {
	mu sync.Mutex // guards everything below
	// maxToken is the highest token accepted so far and maxHold the hold it came from.
	maxToken uint64
	maxHold  string
	holds    map[string]*hold
	counts   Counts
	// lastGrant is when the latest Begin arrived; granted is closed and replaced at every Begin.
	lastGrant time.Time
	granted   chan struct{}
	// badRequests are the first maxBadRequests errors of malformed messages.
	badRequests []string
	// ops is the history of every message accepted as well-formed, in the order recorded.
	ops []Op
}

const maxBadRequests = 20

type hold struct {
	id, pod      string
	token        uint64
	begin, last  time.Time
	ended        bool
	reason       string
	beginArrived time.Time
	released     bool
}

// Counts are the register's tallies.
type Counts struct {
	Grants        int // holds announced
	Writes        int // writes accepted
	StaleRejected int // Begins and Writes refused because a higher token had been accepted
	// DuplicateTokens counts messages carrying the highest accepted token from another hold: two
	// holds were given one token. Always a failure.
	DuplicateTokens int
	LateWrites      int // Late writes received
	LateRejected    int // of which refused as stale
	// BadRequests counts malformed messages and Writes or Ends of unknown holds. Always a failure
	// of the test's own protocol.
	BadRequests int
	Ends        map[string]int // by reason
}

// NewRegister returns an empty register.
func NewRegister() *Register {
	return &Register{holds: map[string]*hold{}, granted: make(chan struct{}), counts: Counts{Ends: map[string]int{}}}
}

// ServeHTTP serves PathBegin, PathWrite and PathEnd.
func (r *Register) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, req.Body, 1<<16))
	dec.DisallowUnknownFields()
	var (
		reply Reply
		err   error
	)
	switch req.URL.Path {
	case PathBegin:
		var m Begin
		if err = dec.Decode(&m); err == nil {
			reply, err = r.Begin(m)
		}
	case PathWrite:
		var m Write
		if err = dec.Decode(&m); err == nil {
			reply, err = r.Write(m)
		}
	case PathEnd:
		var m End
		if err = dec.Decode(&m); err == nil {
			err = r.End(m)
			reply.Accepted = err == nil
		}
	case PathRelease:
		var m Release
		if err = dec.Decode(&m); err == nil {
			err = r.Release(m)
			reply.Accepted = err == nil
		}
	default:
		http.NotFound(w, req)
		return
	}
	if err != nil {
		r.mu.Lock()
		r.counts.BadRequests++
		if len(r.badRequests) < maxBadRequests {
			r.badRequests = append(r.badRequests, err.Error())
		}
		r.mu.Unlock()
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if !reply.Accepted {
		w.WriteHeader(http.StatusConflict)
	}
	_ = json.NewEncoder(w).Encode(reply)
}

// Begin records a new hold and fences it like a write. An error means a malformed message.
func (r *Register) Begin(m Begin) (Reply, error) {
	if m.Hold == "" || m.Pod == "" || m.Token == 0 || m.At.IsZero() {
		return Reply{}, fmt.Errorf("begin %+v: hold, pod, a positive token and at are required", m)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.holds[m.Hold]; dup {
		return Reply{}, fmt.Errorf("begin: hold %q announced twice", m.Hold)
	}
	now := time.Now()
	r.holds[m.Hold] = &hold{id: m.Hold, pod: m.Pod, token: m.Token, begin: m.At, last: m.At, beginArrived: now}
	r.counts.Grants++
	r.lastGrant = now
	close(r.granted)
	r.granted = make(chan struct{})
	if !m.AcquireStart.IsZero() {
		r.recordLocked(Op{Kind: KindAcquire, Hold: m.Hold, Pod: m.Pod, Token: m.Token, Start: m.AcquireStart, End: m.At, Result: ResultGranted})
	}
	reply := r.fenceLocked(m.Hold, m.Token)
	r.recordLocked(fencedOp(Op{Kind: KindGrant, Hold: m.Hold, Pod: m.Pod, Token: m.Token, Start: m.At, End: now}, reply))
	return reply, nil
}

// fencedOp sets op's result from reply.
func fencedOp(op Op, reply Reply) Op {
	op.Result = ResultAccepted
	if !reply.Accepted {
		op.Result, op.Reason = ResultRejected, reply.Reason
	}
	return op
}

// recordLocked appends op to the history. r.mu must be held.
func (r *Register) recordLocked(op Op) {
	op.ID = len(r.ops)
	op.Start, op.End, op.Told = op.Start.UTC(), op.End.UTC(), op.Told.UTC()
	r.ops = append(r.ops, op)
}

// Write fences one write of a known hold.
func (r *Register) Write(m Write) (Reply, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	h, ok := r.holds[m.Hold]
	switch {
	case !ok:
		return Reply{}, fmt.Errorf("write: unknown hold %q", m.Hold)
	case m.Token != h.token:
		return Reply{}, fmt.Errorf("write: hold %q has token %d, not %d", m.Hold, h.token, m.Token)
	case m.At.IsZero():
		return Reply{}, errors.New("write: at is required")
	}
	h.last = later(h.last, m.At)
	reply := r.fenceLocked(m.Hold, m.Token)
	r.recordLocked(fencedOp(Op{Kind: KindWrite, Hold: m.Hold, Pod: h.pod, Token: m.Token, Seq: m.Seq, Late: m.Late, Start: m.At, End: time.Now()}, reply))
	if reply.Accepted {
		r.counts.Writes++
	}
	if m.Late {
		r.counts.LateWrites++
		if !reply.Accepted {
			r.counts.LateRejected++
		}
	}
	return reply, nil
}

// End closes a known hold's interval.
func (r *Register) End(m End) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	h, ok := r.holds[m.Hold]
	switch {
	case !ok:
		return fmt.Errorf("end: unknown hold %q", m.Hold)
	case h.ended:
		return fmt.Errorf("end: hold %q ended twice", m.Hold)
	case m.Reason != ReasonDone && m.Reason != ReasonLost && m.Reason != ReasonStale:
		return fmt.Errorf("end: reason %q is not %s, %s or %s", m.Reason, ReasonDone, ReasonLost, ReasonStale)
	case m.At.IsZero():
		return errors.New("end: at is required")
	}
	h.ended, h.reason = true, m.Reason
	h.last = later(h.last, m.At)
	r.counts.Ends[m.Reason]++
	op := Op{Kind: KindEnd, Hold: m.Hold, Pod: h.pod, Token: h.token, Start: m.At, End: time.Now(), Result: m.Reason}
	if m.Reason == ReasonLost {
		op.Told = m.Told
	}
	r.recordLocked(op)
	return nil
}

// Release records the Release of a hold. It does not change the hold's interval or the fencing.
func (r *Register) Release(m Release) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	h, ok := r.holds[m.Hold]
	switch {
	case !ok && m.BeginFailed:
		return nil // the Begin never arrived: nothing to record
	case !ok:
		return fmt.Errorf("release: unknown hold %q", m.Hold)
	case h.released:
		return fmt.Errorf("release: hold %q released twice", m.Hold)
	case m.Result != ReleaseReleased && m.Result != ReleaseLost && m.Result != ReleaseError:
		return fmt.Errorf("release: result %q is not %s, %s or %s", m.Result, ReleaseReleased, ReleaseLost, ReleaseError)
	case m.Start.IsZero() || m.At.IsZero():
		return errors.New("release: start and at are required")
	}
	h.released = true
	r.recordLocked(Op{Kind: KindRelease, Hold: m.Hold, Pod: h.pod, Token: h.token, Start: m.Start, End: m.At, Result: m.Result, Reason: m.Error})
	return nil
}

// History returns the operations recorded so far, in the order recorded, as a History without
// faults or Lease changes; Start is the first operation's start (zero when there is none) and End
// the time of the call.
func (r *Register) History() *History {
	r.mu.Lock()
	ops := slices.Clone(r.ops)
	r.mu.Unlock()
	h := &History{Version: HistoryVersion, End: time.Now().UTC(), Ops: ops, Faults: []Fault{}, Leases: []LeaseChange{}}
	if h.Ops == nil {
		h.Ops = []Op{}
	}
	for _, op := range ops {
		if h.Start.IsZero() || op.Start.Before(h.Start) {
			h.Start = op.Start
		}
	}
	return h
}

// fenceLocked accepts token from hold when no higher token, and no other hold with this token,
// was accepted before. r.mu must be held.
func (r *Register) fenceLocked(hold string, token uint64) Reply {
	switch {
	case token > r.maxToken:
		r.maxToken, r.maxHold = token, hold
		return Reply{Accepted: true}
	case token == r.maxToken && hold == r.maxHold:
		return Reply{Accepted: true}
	case token == r.maxToken:
		r.counts.DuplicateTokens++
		return Reply{Reason: fmt.Sprintf("token %d was already used by hold %s", token, r.maxHold)}
	default:
		r.counts.StaleRejected++
		return Reply{Reason: fmt.Sprintf("stale token %d: %d was accepted already", token, r.maxToken)}
	}
}

// Holder returns the Pod of the hold with the highest accepted token if it has not ended, else "".
func (r *Register) Holder() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if h := r.holds[r.maxHold]; h != nil && !h.ended {
		return h.pod
	}
	return ""
}

// HeldAt reports whether a fault injected into pod at t hit a holder: pod's latest hold begun by
// t had not ended before t, and its application had claimed it within HeldRecently before t (a
// hold that a killed application abandoned long ago does not count).
func (r *Register) HeldAt(pod string, t time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	var latest *hold
	for _, h := range r.holds {
		if h.pod == pod && !h.begin.After(t) && (latest == nil || h.begin.After(latest.begin)) {
			latest = h
		}
	}
	if latest == nil || t.Sub(latest.last) > HeldRecently {
		return false
	}
	return !latest.ended || !latest.last.Before(t)
}

// HeldRecently bounds the silence of a live hold for [Register.HeldAt]: contenders claim their
// holds every few tens of milliseconds.
const HeldRecently = time.Second

// Granted returns a channel closed at the next Begin, and the arrival time of the latest Begin.
func (r *Register) Granted() (<-chan struct{}, time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.granted, r.lastGrant
}

// Counts returns a copy of the tallies.
func (r *Register) Counts() Counts {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.countsLocked()
}

func (r *Register) countsLocked() Counts {
	c := r.counts
	c.Ends = make(map[string]int, len(r.counts.Ends))
	for k, v := range r.counts.Ends {
		c.Ends[k] = v
	}
	return c
}

// Overlap is two holds whose belief intervals intersect: Later began while Earlier's application
// still believed it held the lock. By is how long both are known to have believed it (zero when
// that is one instant).
type Overlap struct {
	Earlier, Later string
	By             time.Duration
}

// TokenInversion is a hold that began after another yet carries a token not above it.
type TokenInversion struct {
	Earlier, Later           string
	EarlierToken, LaterToken uint64
}

// Report is the analysis of every hold recorded.
type Report struct {
	Counts
	Overlaps        []Overlap
	TokenInversions []TokenInversion
	// LongestGap is the longest time between the end of every belief interval so far and the
	// next Begin: the longest time no application believed it held the lock.
	LongestGap time.Duration
	// LongestGapAfter is when that gap started.
	LongestGapAfter time.Time
	// BadRequestErrors are the errors of the first 20 malformed messages.
	BadRequestErrors []string
}

// Failed says whether the report shows a safety violation or a protocol error.
func (rep Report) Failed() bool {
	return len(rep.Overlaps) > 0 || len(rep.TokenInversions) > 0 || rep.DuplicateTokens > 0 || rep.BadRequests > 0
}

// Report analyses the holds recorded so far.
func (r *Register) Report() Report {
	r.mu.Lock()
	holds := make([]hold, 0, len(r.holds))
	for _, h := range r.holds {
		holds = append(holds, *h)
	}
	rep := Report{Counts: r.countsLocked(), BadRequestErrors: slices.Clone(r.badRequests)}
	r.mu.Unlock()
	slices.SortFunc(holds, func(a, b hold) int {
		return cmp.Or(a.begin.Compare(b.begin), cmp.Compare(a.token, b.token), cmp.Compare(a.id, b.id))
	})
	var (
		reach    time.Time // the latest belief so far
		reachBy  string    // and whose
		topToken uint64    // the highest token of the holds so far
		topBy    string
	)
	for i, h := range holds {
		if i > 0 {
			if h.begin.Before(reach) {
				end := reach // the overlap ends when either belief does
				if h.last.Before(end) {
					end = h.last
				}
				rep.Overlaps = append(rep.Overlaps, Overlap{Earlier: reachBy, Later: h.id, By: end.Sub(h.begin)})
			} else if gap := h.begin.Sub(reach); gap > rep.LongestGap {
				rep.LongestGap, rep.LongestGapAfter = gap, reach
			}
			if h.token <= topToken {
				rep.TokenInversions = append(rep.TokenInversions, TokenInversion{Earlier: topBy, Later: h.id, EarlierToken: topToken, LaterToken: h.token})
			}
		}
		if h.last.After(reach) {
			reach, reachBy = h.last, h.id
		}
		if h.token > topToken {
			topToken, topBy = h.token, h.id
		}
	}
	return rep
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
