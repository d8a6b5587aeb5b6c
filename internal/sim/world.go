package sim

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/metaparticle-io/sync/elector"
)

// World is one simulated schedule: side-cars (real Engines and their HTTP servers) in Pods of
// one namespace, applications using the real SDK against them, the simulated API server, and
// the faults of the schedule. It must run inside a testing/synctest bubble, where time is
// virtual: Run drives it from the bubble's root goroutine, waiting until every goroutine is
// blocked before each step, so that what happens next is chosen by the seeded driver and not by
// the Go scheduler.
type World struct {
	cfg   Schedule
	rng   *rand.Rand // the driver's; only used with mu held
	start time.Time  // simulation time zero, in the bubble's clock

	mu       sync.Mutex // protects everything below
	api      *apiState
	queue    []*request // API calls not yet delivered
	events   []*worldEvent
	sidecars []*sidecar
	apps     []*app
	hist     *History
	trace    []string
	deletes  int // idle Leases deleted
	seq      uint64

	wake chan struct{} // capacity 1: something was queued
}

// request is a side-car's API call waiting for the driver.
type request struct {
	sc        *sidecar
	verb      string
	lease     string
	do        func(*apiState) (*coordinationv1.Lease, error)
	submitted time.Duration
	at        time.Duration // when it may be delivered; -1 until the driver assigned it
	seq       uint64
	reply     chan callResult // capacity 1
}

type callResult struct {
	l   *coordinationv1.Lease
	err error
}

// worldEvent is a scheduled action of the driver: a fault starting or ending, the end.
type worldEvent struct {
	at   time.Duration
	what string
	do   func()
}

// now returns the simulation time.
func (w *World) now() time.Duration { return time.Since(w.start) }

// tracef appends a line to the trace. Called with mu held.
func (w *World) tracef(format string, args ...any) {
	w.trace = append(w.trace, fmt.Sprintf("%9.3fs ", w.now().Seconds())+fmt.Sprintf(format, args...))
}

// Trace returns the schedule's trace so far.
func (w *World) Trace() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.trace)
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// call queues an API call of side-car sc and waits for its result or ctx's end. A call given up
// by its caller may still be delivered: the write may land, as over a real network.
func (w *World) call(ctx context.Context, sc *sidecar, verb, lease string, do func(*apiState) (*coordinationv1.Lease, error)) (*coordinationv1.Lease, error) {
	r := &request{sc: sc, verb: verb, lease: lease, do: do, at: -1, reply: make(chan callResult, 1)}
	w.mu.Lock()
	r.submitted = w.now()
	w.seq++
	r.seq = w.seq
	w.queue = append(w.queue, r)
	w.mu.Unlock()
	signal(w.wake)
	select {
	case res := <-r.reply:
		return res.l, res.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (w *World) stopWatch(aw *apiWatch) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closeWatchLocked(aw)
}

// closeWatchLocked ends a watch as a broken connection would. Called with mu held.
func (w *World) closeWatchLocked(aw *apiWatch) {
	if aw.closed {
		return
	}
	aw.closed = true
	aw.pending = nil
	delete(w.api.watches, aw)
	close(aw.ch)
}

func (w *World) apiLatency() time.Duration {
	return time.Duration(w.rng.IntN(int(w.cfg.MaxAPILatency)+1)) + 100*time.Microsecond
}

func (w *World) watchLatency() time.Duration {
	return time.Duration(w.rng.IntN(int(w.cfg.MaxWatchLatency)+1)) + 100*time.Microsecond
}

// schedule adds a driver action at simulation time at.
func (w *World) schedule(at time.Duration, what string, do func()) {
	w.events = append(w.events, &worldEvent{at: at, what: what, do: do})
}

// candidate is one thing the driver may do now.
type candidate struct {
	key string
	do  func()
}

// step does one thing that is due, chosen by the seeded driver among all that are, and reports
// false when nothing is due; next is then the earliest time something will be. Called with mu
// held.
func (w *World) step() (bool, time.Duration) {
	now := w.now()
	// Latencies are drawn here, in a deterministic order, rather than by the goroutines that
	// queued the calls, whose order is the Go scheduler's.
	var fresh []*request
	for _, r := range w.queue {
		if r.at < 0 {
			fresh = append(fresh, r)
		}
	}
	slices.SortFunc(fresh, func(a, b *request) int { return strings.Compare(a.sortKey(), b.sortKey()) })
	for _, r := range fresh {
		r.at = r.submitted + w.apiLatency()
	}

	var cands []candidate
	next := time.Duration(-1)
	later := func(at time.Duration) {
		if next < 0 || at < next {
			next = at
		}
	}
	for _, r := range w.queue {
		if r.sc.isolated() {
			continue // held until the cut or freeze ends (an event of its own)
		}
		if r.at > now {
			later(r.at)
			continue
		}
		cands = append(cands, candidate{"a " + r.sortKey(), func() { w.deliver(r) }})
	}
	for _, aw := range w.api.sortedWatches() {
		if aw.sc.isolated() {
			continue
		}
		for _, i := range aw.deliverable(now) {
			p := aw.pending[i]
			cands = append(cands, candidate{fmt.Sprintf("w %d %s %020d", aw.sc.idx, p.name, p.rev), func() { w.deliverEvent(aw, i) }})
		}
		for _, p := range aw.pending {
			if p.at > now {
				later(p.at)
			}
		}
	}
	for _, e := range w.events {
		if e.at > now {
			later(e.at)
			continue
		}
		cands = append(cands, candidate{fmt.Sprintf("e %020d %s", e.at, e.what), func() {
			w.events = slices.DeleteFunc(w.events, func(x *worldEvent) bool { return x == e })
			w.tracef("%s", e.what)
			e.do()
		}})
	}
	if len(cands) == 0 {
		return false, next
	}
	slices.SortFunc(cands, func(a, b candidate) int { return strings.Compare(a.key, b.key) })
	cands[w.rng.IntN(len(cands))].do()
	return true, next
}

func (r *request) sortKey() string {
	return fmt.Sprintf("%020d %d %s %s %020d", r.submitted, r.sc.idx, r.verb, r.lease, r.seq)
}

// deliver executes r on the API server, or fails it while the API server is down.
func (w *World) deliver(r *request) {
	w.queue = slices.DeleteFunc(w.queue, func(x *request) bool { return x == r })
	if w.api.down > 0 {
		w.tracef("%s %s %s: refused, the API server is down", r.sc.pod, r.verb, r.lease)
		r.reply <- callResult{err: errUnreachable}
		return
	}
	l, err := r.do(w.api)
	switch {
	case err != nil:
		w.tracef("%s %s %s: %v", r.sc.pod, r.verb, r.lease, err)
	case l != nil:
		w.tracef("%s %s %s: rv %s holder %q token %q", r.sc.pod, r.verb, r.lease, l.ResourceVersion, holderOf(l), tokenOf(l))
		w.hist.leaseWritten(w.now(), l)
	case r.verb == "delete":
		w.tracef("%s delete %s: ok", r.sc.pod, r.lease)
		w.deletes++
		w.hist.leaseDeleted(w.now(), r.lease, leaseOf)
	default:
		w.tracef("%s %s: ok", r.sc.pod, r.verb)
	}
	r.reply <- callResult{l: l, err: err}
}

// deliverEvent hands the i-th pending event of aw to its informer.
func (w *World) deliverEvent(aw *apiWatch, i int) {
	p := aw.pending[i]
	aw.pending = slices.Delete(aw.pending, i, i+1)
	select {
	case aw.ch <- p.ev:
	default:
		w.tracef("%s watch: buffer full; closing it", aw.sc.pod)
		w.closeWatchLocked(aw)
	}
}

// Run drives the schedule to its end and returns its history. It must be called from the root
// goroutine of a synctest bubble (see package doc).
func (w *World) Run(wait func()) *History {
	for {
		wait()
		w.mu.Lock()
		if w.hist.ended {
			w.mu.Unlock()
			return w.hist
		}
		did, next := w.step()
		w.mu.Unlock()
		if did {
			continue
		}
		var timer <-chan time.Time
		if next >= 0 {
			t := time.NewTimer(next - w.now())
			timer = t.C
			select {
			case <-timer:
			case <-w.wake:
			}
			t.Stop()
			continue
		}
		<-w.wake
	}
}

// ensure the Engine's client interface is what Client implements.
var _ elector.LeaseClient = Client{}

// ensure apiWatch is a watch.
var _ watch.Interface = (*apiWatch)(nil)
