package chaos

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"time"
)

// HistoryVersion is the version of the history format that this package writes and reads.
const HistoryVersion = 1

// A History is the record of one chaos run: every operation of the contenders as the register
// received it, the faults the test injected, and the changes of the lock's Lease the test saw.
// All times are wall-clock times of one machine: the contenders' own timestamps, read in their
// containers, and the test process's, read when the register handled a message or a fault was
// injected.
//
// It is written as JSON ([History.WriteJSON], one operation per line) and read by [ReadHistory];
// [Check] checks it and [RenderHTML] draws it. docs/testing.md describes the format.
type History struct {
	Version int       `json:"version"`
	Start   time.Time `json:"start"` // when the test began recording
	End     time.Time `json:"end"`   // when it took this snapshot
	// Lease settings of the run, for the reader; the checks do not use them.
	LeaseDuration Duration `json:"lease_duration,omitzero"`
	RenewDeadline Duration `json:"renew_deadline,omitzero"`

	Ops    []Op          `json:"ops"`
	Faults []Fault       `json:"faults"`
	Leases []LeaseChange `json:"leases"`
}

// Operation kinds ([Op.Kind]).
const (
	// KindAcquire is the application's Acquire call: Start when it was called, End when the
	// application saw the grant (the At of its Begin). Result is ResultGranted. Recorded from the
	// Begin message, so only for holds that were announced.
	KindAcquire = "acquire"
	// KindGrant is the announcement of a hold to the register (a Begin message), fenced like a
	// write: Start is the application's At, End the register's decision. Result is
	// ResultAccepted or ResultRejected.
	KindGrant = "grant"
	// KindWrite is a write under a hold (a Write message), fenced: Start is the application's At
	// (for a Late write, stamped while the hold was believed and sent after it ended), End the
	// register's decision. Result is ResultAccepted or ResultRejected.
	KindWrite = "write"
	// KindEnd is the application's report that it stopped believing it held the lock (an End
	// message): Start is its At, the last moment it believed it held; End when the register
	// received it. Result is ResultDone, ResultLost or ResultStale; Told is set for ResultLost
	// when the application saw the Lost channel close.
	KindEnd = "end"
	// KindRelease is the application's Release call (a Release message): Start when it was
	// called, End when it returned, both the application's clock. Result is ResultReleased,
	// ResultLost (the SDK said the hold had been lost) or ResultError (Reason says why).
	KindRelease = "release"
)

// Operation results ([Op.Result]).
const (
	ResultGranted  = "granted"
	ResultAccepted = "accepted"
	ResultRejected = "rejected"
	ResultDone     = ReasonDone
	ResultLost     = ReasonLost
	ResultStale    = ReasonStale
	ResultReleased = "released"
	ResultError    = "error"
)

// An Op is one operation of a hold.
type Op struct {
	// ID is the operation's index in History.Ops: the order in which the register recorded it.
	ID   int    `json:"id"`
	Kind string `json:"kind"`
	Hold string `json:"hold"` // "<pod>/<process>/<n>"
	Pod  string `json:"pod"`
	// Session is the side-car session that held the Lease with this hold's token, from the Lease's
	// holder identity "<pod>/<session>" as the test saw it; empty when the test did not see that
	// grant on the Lease (see [History.AssignSessions]).
	Session string `json:"session,omitempty"`
	Token   uint64 `json:"token"`
	// Seq is a write's index among its hold's writes (0 for the first).
	Seq  int  `json:"seq,omitempty"`
	Late bool `json:"late,omitempty"` // a write sent late, after the hold ended
	// Start and End bound the operation in real time; see the Kind constants for what each
	// means per kind.
	Start  time.Time `json:"start"`
	End    time.Time `json:"end"`
	Result string    `json:"result"`
	// Told is, for an end with ResultLost, when the application saw that the hold was lost
	// (zero when it gave the hold up for another reason, e.g. a register it could not reach).
	Told time.Time `json:"told,omitzero"`
	// Reason says why a grant or write was rejected, or why a release failed.
	Reason string `json:"reason,omitempty"`
}

// Fault kinds ([Fault.Kind]), as CHAOS_FAULTS names them.
const (
	FaultKillApp     = "kill-app"
	FaultKillSidecar = "kill-sidecar"
	FaultRestartAPI  = "restart-apiserver"
	FaultCutOff      = "cut-off"
	// FaultPauseSidecar is a holder's side-car paused (SIGSTOP) for longer than the lease
	// duration, then resumed (SIGCONT): its application must be told lost by its SDK's own clock
	// of the hold's validity before another Pod is granted.
	FaultPauseSidecar = "pause-sidecar"
	// FaultForeignRelease is a process in a holder's Pod, other than its application, that reads
	// the holder identity "<pod>/<session>" from the side-car's public API and asks to release
	// the lock for that session without the session's secret, then with a wrong one: the
	// side-car must answer 401 and change nothing.
	FaultForeignRelease = "foreign-release"
)

// A Fault is one fault the test injected.
type Fault struct {
	Kind string `json:"kind"`
	// Pod is the Pod hit; empty for the API server.
	Pod string `json:"pod,omitempty"`
	// Start and End bound the fault: for a SIGKILL, from just before the signal was sent to
	// when the runtime had sent it; for a cut-off, from when the rules were in place to when
	// they were removed; for the API server, from just before it was killed to when it was
	// back; for a pause, from just before SIGSTOP was sent to when SIGCONT had been; for a
	// foreign release, from just before the foreign process read the lock to when its last
	// DELETE was answered (its own clock).
	Start time.Time `json:"start"`
	End   time.Time `json:"end,omitzero"`
	// Held says whether the Pod held the lock when the fault struck ([Register.HeldAt]).
	Held bool `json:"held,omitempty"`
	// Desc is the test's description of the fault.
	Desc string `json:"desc,omitempty"`
	// Session and Token are, for a foreign release, the session of the holder identity that the
	// side-car showed and the fencing token of that grant: the hold it tried to end.
	Session string `json:"session,omitempty"`
	Token   uint64 `json:"token,omitempty"`
	// StatusNoSecret and StatusWrongSecret are, for a foreign release, the HTTP statuses of its
	// DELETE without an Authorization header and of the one with a wrong secret (401 expected).
	StatusNoSecret    int `json:"status_no_secret,omitempty"`
	StatusWrongSecret int `json:"status_wrong_secret,omitempty"`
}

// A LeaseChange is a change of a lock Lease's holder or fencing token, as the test's watch of the
// Lease saw it. The watch can miss changes, e.g. while the API server is down.
type LeaseChange struct {
	Seen   time.Time `json:"seen"` // when the test saw it
	Lease  string    `json:"lease"`
	Holder string    `json:"holder,omitempty"` // "<pod>/<session>"; empty when released
	Token  uint64    `json:"token"`
	// Acquired is the Lease's acquireTime: when the holder's side-car took it.
	Acquired time.Time `json:"acquired,omitzero"`
}

// Pod returns the Pod part of the holder identity.
func (c LeaseChange) Pod() string { pod, _, _ := strings.Cut(c.Holder, "/"); return pod }

// Session returns the session ID part of the holder identity.
func (c LeaseChange) Session() string { _, s, _ := strings.Cut(c.Holder, "/"); return s }

// Duration is a time.Duration written as a string such as "4s".
type Duration time.Duration

// MarshalJSON writes d as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a string such as "4s".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	*d = Duration(v)
	return err
}

// AssignSessions sets the Session of every operation whose hold's token was seen on a Lease held
// by the hold's Pod.
func (h *History) AssignSessions() {
	byToken := map[uint64]LeaseChange{}
	for _, c := range h.Leases {
		if c.Holder != "" {
			byToken[c.Token] = c
		}
	}
	for i := range h.Ops {
		op := &h.Ops[i]
		if c, ok := byToken[op.Token]; ok && c.Pod() == op.Pod {
			op.Session = c.Session()
		}
	}
}

// WriteJSON writes h as indented JSON with one operation, fault or Lease change per line.
func (h *History) WriteJSON(w io.Writer) error {
	bw := bufio.NewWriter(w)
	head := *h
	head.Ops, head.Faults, head.Leases = nil, nil, nil
	b, err := json.Marshal(head)
	if err != nil {
		return err
	}
	// The head without its three lists, then each list one element a line.
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(b, &fields); err != nil {
		return err
	}
	delete(fields, "ops")
	delete(fields, "faults")
	delete(fields, "leases")
	keys := []string{"version", "start", "end", "lease_duration", "renew_deadline"}
	for _, k := range slices.Sorted(maps.Keys(fields)) {
		if !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	fmt.Fprintln(bw, "{")
	for _, k := range keys {
		if v, ok := fields[k]; ok {
			fmt.Fprintf(bw, "  %q: %s,\n", k, v)
		}
	}
	lists := []struct {
		name string
		n    int
		elem func(int) any
	}{
		{"ops", len(h.Ops), func(i int) any { return h.Ops[i] }},
		{"faults", len(h.Faults), func(i int) any { return h.Faults[i] }},
		{"leases", len(h.Leases), func(i int) any { return h.Leases[i] }},
	}
	for li, l := range lists {
		fmt.Fprintf(bw, "  %q: [", l.name)
		for i := range l.n {
			b, err := json.Marshal(l.elem(i))
			if err != nil {
				return err
			}
			sep := ","
			if i == l.n-1 {
				sep = ""
			}
			fmt.Fprintf(bw, "\n    %s%s", b, sep)
		}
		if l.n > 0 {
			fmt.Fprint(bw, "\n  ")
		}
		sep := ","
		if li == len(lists)-1 {
			sep = ""
		}
		fmt.Fprintf(bw, "]%s\n", sep)
	}
	fmt.Fprintln(bw, "}")
	return bw.Flush()
}

// WriteFile writes h to path with [History.WriteJSON].
func (h *History) WriteFile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := h.WriteJSON(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// ReadHistory reads a history written by [History.WriteJSON] (or any JSON of the same shape).
func ReadHistory(r io.Reader) (*History, error) {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	var h History
	if err := dec.Decode(&h); err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	if h.Version != HistoryVersion {
		return nil, fmt.Errorf("history: version %d; this reader knows version %d", h.Version, HistoryVersion)
	}
	return &h, nil
}

// ReadHistoryFile reads the history in the file at path.
func ReadHistoryFile(path string) (*History, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h, err := ReadHistory(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return h, nil
}
