package sim

import (
	"fmt"
	"strconv"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
)

// History is what a schedule did, as the checker needs it: every version of every Lease the
// API server committed, with the simulation time of the commit; every hold an application was
// granted and when it stopped working under it (told lost, released, crashed); every write to
// the fenced register; and the outcome of the final round of acquires.
type History struct {
	ended bool

	commits []commit
	holds   []*appHold
	active  map[string]*appHold // by app and name
	writes  []registerWrite
	reg     map[string]uint64 // the fenced register: the highest token accepted per name
	final   []finalAcquire
	crashes map[string]time.Duration

	violations []string
}

type commit struct {
	at     time.Duration
	lease  string
	rv     string
	holder string
	token  uint64 // 0: none
}

// appHold is one hold as its application saw it.
type appHold struct {
	app, name string
	token     uint64
	granted   time.Duration
	ended     time.Duration // -1 while the app works under it
	how       string
}

type registerWrite struct {
	at       time.Duration
	app      string
	name     string
	token    uint64
	accepted bool
	stale    bool // a later grant of the name had committed when it arrived
}

type finalAcquire struct {
	name string
	ok   bool
	took time.Duration
	err  string
}

func newHistory() *History {
	return &History{active: map[string]*appHold{}, reg: map[string]uint64{}, crashes: map[string]time.Duration{}}
}

func (h *History) violatef(format string, args ...any) {
	h.violations = append(h.violations, fmt.Sprintf(format, args...))
}

// leaseWritten records a committed version of a Lease.
func (h *History) leaseWritten(at time.Duration, l *coordinationv1.Lease) {
	tok, _ := strconv.ParseUint(tokenOf(l), 10, 64)
	h.commits = append(h.commits, commit{at: at, lease: l.Name, rv: l.ResourceVersion, holder: holderOf(l), token: tok})
}

// latestToken returns the highest token committed for lease so far.
func (h *History) latestToken(lease string) uint64 {
	var max uint64
	for _, c := range h.commits {
		if c.lease == lease && c.token > max {
			max = c.token
		}
	}
	return max
}

// leaseDeleted checks a deletion of an idle Lease: no application may still be working under
// it, since a Lease is idle only a lease duration and more after its holder's last renewal, long
// after any holder must have been told it lost it.
func (h *History) leaseDeleted(at time.Duration, lease string, leaseOf func(string) string) {
	for _, ah := range h.active {
		if leaseOf(ah.name) == lease {
			h.violatef("at %.3fs Lease %s was deleted as idle while %s worked under %s with token %d (granted at %.3fs)",
				at.Seconds(), lease, ah.app, ah.name, ah.token, ah.granted.Seconds())
		}
	}
}

func (h *History) appCrashed(app string, at time.Duration) {
	h.crashes[app] = at
	for k, ah := range h.active {
		if ah.app == app {
			ah.ended, ah.how = at, "crashed"
			delete(h.active, k)
		}
	}
}

// The World's recorders, called by applications.

func (w *World) acquired(a *app, name string, start time.Duration, held bool, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if held {
		w.tracef("%s acquire %s: held (asked at %.3fs)", a.name, name, start.Seconds())
	} else {
		w.tracef("%s acquire %s: %v", a.name, name, err)
	}
}

func (w *World) granted(a *app, name string, token uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.tracef("%s holds %s with token %d", a.name, name, token)
	ah := &appHold{app: a.name, name: name, token: token, granted: w.now(), ended: -1}
	w.hist.holds = append(w.hist.holds, ah)
	w.hist.active[a.name+"\x00"+name] = ah
}

func (w *World) told(a *app, name string, token uint64, how string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.tracef("%s stops working under %s (token %d): %s", a.name, name, token, how)
	k := a.name + "\x00" + name
	if ah := w.hist.active[k]; ah != nil && ah.token == token {
		ah.ended, ah.how = w.now(), how
		delete(w.hist.active, k)
	}
}

// write is an application's write to the fenced register, which accepts a token no lower than
// the highest it accepted for the name.
func (w *World) write(a *app, name string, token uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	lease := leaseOf(name)
	rw := registerWrite{at: w.now(), app: a.name, name: name, token: token}
	rw.accepted = token >= w.hist.reg[name]
	rw.stale = token < w.hist.latestToken(lease)
	if rw.accepted {
		w.hist.reg[name] = token
	}
	w.hist.writes = append(w.hist.writes, rw)
	w.tracef("%s writes %s with token %d: accepted %v, stale %v", a.name, name, token, rw.accepted, rw.stale)
}

// check verifies the invariants on the finished history and returns the violations.
//
//  1. Told before granted: when a Lease's holder changes to another holder, the application of
//     the previous grant had stopped working under it (told lost, released, or crashed) at or
//     before the commit of the new grant, in simulation time.
//  2. Tokens strictly increase: every commit that changes a Lease's token raises it, and no two
//     holds have one token.
//  3. The fenced register accepted no stale write.
//  4. Liveness: every acquire of the final round, after the last fault, was granted within its
//     bound.
func (h *History) check(leases func(name string) string) []string {
	v := append([]string(nil), h.violations...)
	// 2. Token order, per Lease.
	last := map[string]uint64{}
	for _, c := range h.commits {
		if c.token == 0 {
			continue
		}
		if prev := last[c.lease]; c.token < prev {
			v = append(v, fmt.Sprintf("token order: %s rv %s at %.3fs has token %d after token %d", c.lease, c.rv, c.at.Seconds(), c.token, prev))
		}
		last[c.lease] = max(last[c.lease], c.token)
	}
	seen := map[string]string{}
	for _, ah := range h.holds {
		k := ah.name + "\x00" + strconv.FormatUint(ah.token, 10)
		if prev, dup := seen[k]; dup {
			v = append(v, fmt.Sprintf("token %d of %s granted twice: to %s and to %s", ah.token, ah.name, prev, ah.app))
		}
		seen[k] = ah.app
	}
	// 1. Told before granted.
	for _, ah := range h.holds {
		lease := leases(ah.name)
		holder, from := "", -1
		for i, c := range h.commits {
			if c.lease == lease && c.token == ah.token && c.holder != "" {
				holder, from = c.holder, i
				break
			}
		}
		if from < 0 {
			v = append(v, fmt.Sprintf("%s was granted %s with token %d, which no committed Lease version carries", ah.app, ah.name, ah.token))
			continue
		}
		for _, c := range h.commits[from+1:] {
			if c.lease != lease || c.holder == "" || c.holder == holder {
				continue
			}
			if ah.ended < 0 || c.at < ah.ended {
				told := "never"
				if ah.ended >= 0 {
					told = fmt.Sprintf("at %.3fs (%s)", ah.ended.Seconds(), ah.how)
				}
				v = append(v, fmt.Sprintf("told after granted: %s held %s with token %d (holder %s) and stopped %s; %s was granted it at %.3fs (rv %s, token %d)",
					ah.app, ah.name, ah.token, holder, told, c.holder, c.at.Seconds(), c.rv, c.token))
			}
			break
		}
	}
	// 3. Fenced register.
	for _, rw := range h.writes {
		if rw.stale && rw.accepted {
			v = append(v, fmt.Sprintf("stale write accepted: %s wrote %s with token %d at %.3fs after a later grant", rw.app, rw.name, rw.token, rw.at.Seconds()))
		}
	}
	// 4. Liveness.
	for _, f := range h.final {
		if !f.ok {
			v = append(v, fmt.Sprintf("liveness: the final acquire of %s was not granted within its bound (%s): %s", f.name, f.took, f.err))
		}
	}
	return v
}
