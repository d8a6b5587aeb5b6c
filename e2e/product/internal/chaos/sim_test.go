package chaos_test

import (
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/metaparticle-io/sync/e2e/product/internal/chaos"
)

// builder makes synthetic histories for the tests, with times in milliseconds from t0.
type builder struct{ h chaos.History }

func newBuilder() *builder {
	return &builder{h: chaos.History{Version: chaos.HistoryVersion, Start: t0, Ops: []chaos.Op{}, Faults: []chaos.Fault{}, Leases: []chaos.LeaseChange{}}}
}

func ms(v float64) time.Time { return t0.Add(time.Duration(v * float64(time.Millisecond))) }

func pod(hold string) string {
	for i := range hold {
		if hold[i] == '/' {
			return hold[:i]
		}
	}
	return hold
}

// op appends an operation and returns its ID.
func (b *builder) op(kind, hold string, token uint64, start, end float64, result string) int {
	id := len(b.h.Ops)
	b.h.Ops = append(b.h.Ops, chaos.Op{ID: id, Kind: kind, Hold: hold, Pod: pod(hold), Token: token, Start: ms(start), End: ms(end), Result: result})
	if e := ms(end); e.After(b.h.End) {
		b.h.End = e
	}
	return id
}

func (b *builder) grant(hold string, token uint64, at float64, result string) int {
	b.op(chaos.KindAcquire, hold, token, at-50, at, chaos.ResultGranted)
	return b.op(chaos.KindGrant, hold, token, at, at+1, result)
}

func (b *builder) write(hold string, token uint64, seq int, at, decided float64, result string) int {
	id := b.op(chaos.KindWrite, hold, token, at, decided, result)
	b.h.Ops[id].Seq = seq
	return id
}

func (b *builder) end(hold string, token uint64, at float64, result string, told float64) int {
	id := b.op(chaos.KindEnd, hold, token, at, max(at, told)+1, result)
	if told > 0 {
		b.h.Ops[id].Told = ms(told)
	}
	return id
}

func (b *builder) release(hold string, token uint64, start float64, result string) int {
	return b.op(chaos.KindRelease, hold, token, start, start+1, result)
}

// turn is a whole hold that goes well: grant at g, n writes 20 ms apart, done, released.
func (b *builder) turn(hold string, token uint64, g float64, n int) (last float64) {
	b.grant(hold, token, g, chaos.ResultAccepted)
	last = g
	for i := range n {
		last = g + 20*float64(i+1)
		b.write(hold, token, i, last, last+1, chaos.ResultAccepted)
	}
	b.end(hold, token, last+1, chaos.ResultDone, 0)
	b.release(hold, token, last+3, chaos.ResultReleased)
	return last + 4
}

// fault appends a fault, described as TestChaosSafety describes it.
func (b *builder) fault(kind, pod string, start, end float64, held bool) {
	desc := map[string]string{
		chaos.FaultKillApp:     fmt.Sprintf("SIGKILL of %s's chaos", pod),
		chaos.FaultKillSidecar: fmt.Sprintf("SIGKILL of %s's metaparticle-sync", pod),
		chaos.FaultCutOff:      fmt.Sprintf("cutting %s off from the API server for 7s", pod),
		chaos.FaultRestartAPI:  fmt.Sprintf("the API server's crash and restart (back in %s)", time.Duration((end-start)*float64(time.Millisecond))),
	}[kind]
	b.h.Faults = append(b.h.Faults, chaos.Fault{Kind: kind, Pod: pod, Start: ms(start), End: ms(end), Held: held, Desc: desc})
}

// simulate makes the history of a healthy run of the chaos contenders with holds of writes 20 ms
// apart, every 10th hold's last write late by 300 ms, and faults every few seconds that behave as
// the lock should: a killed application's hold ends at its last message, a killed side-car's
// application is told at once, a cut-off Pod or an API server restart tells the holder after the
// renew deadline, and the next grant comes after the lease duration. The seed fixes it.
func simulate(holds int, faults bool, seed uint64) *chaos.History {
	const (
		leaseDur  = 4000.0
		deadline  = 3000.0
		writes    = 5
		lateEvery = 10
	)
	rng := rand.New(rand.NewPCG(seed, 1))
	b := newBuilder()
	b.h.LeaseDuration, b.h.RenewDeadline = chaos.Duration(4*time.Second), chaos.Duration(3*time.Second)
	pods := []string{"chaos-5f7d9c-2xq8l", "chaos-5f7d9c-7kzr4", "chaos-5f7d9c-b9wmt", "chaos-5f7d9c-hn3vd", "chaos-5f7d9c-tq6pz"}
	sessions, procs := map[string]string{}, map[string]string{}
	n := map[string]int{}
	kinds := []string{chaos.FaultKillApp, chaos.FaultCutOff, chaos.FaultKillSidecar, chaos.FaultRestartAPI}
	nextFault, k := 2500.0, 0
	waiting := map[string]float64{} // when each Pod called Acquire
	for _, p := range pods {
		waiting[p] = 0
	}
	now, token := 30.0, uint64(100)
	for i := range holds {
		var ready []string // Pods waiting in Acquire
		for _, q := range pods {
			if waiting[q] < now {
				ready = append(ready, q)
			}
		}
		p := ready[rng.IntN(len(ready))]
		if procs[p] == "" {
			procs[p], n[p] = fmt.Sprintf("%08x", rng.Uint32()), 0
		}
		if sessions[p] == "" {
			sessions[p] = fmt.Sprintf("%016x", rng.Uint64())
		}
		hold := fmt.Sprintf("%s/%s/%d", p, procs[p], n[p])
		n[p]++
		token++
		g := now
		b.op(chaos.KindAcquire, hold, token, waiting[p], g, chaos.ResultGranted)
		b.op(chaos.KindGrant, hold, token, g, g+0.6, chaos.ResultAccepted)
		b.h.Leases = append(b.h.Leases, chaos.LeaseChange{Seen: ms(g - 1), Lease: "chaos-lock", Holder: p + "/" + sessions[p], Token: token, Acquired: ms(g - 2)})
		last := g
		// A fault aimed at this holder strikes during its writes.
		var fault string
		var at float64
		if faults && g+writes*20 > nextFault {
			fault, at = kinds[k%len(kinds)], max(nextFault, g+10)
			k++
			nextFault = at + 3000 + 2000*rng.Float64()
		}
		// A late write is rejected only once the next grant came: not with a fault that delays it.
		late := fault == "" && i%lateEvery == lateEvery-1 && i < holds-1
		told, next, again := 0.0, 0.0, 0.0 // again: when this Pod calls Acquire next
		for j := range writes {
			w := g + 20*float64(j+1)
			switch fault {
			case chaos.FaultKillApp, chaos.FaultKillSidecar:
				if w > at {
					goto faulted
				}
			case chaos.FaultCutOff, chaos.FaultRestartAPI:
				// The holder writes on until told lost after the renew deadline.
			}
			last = w
			if late && j == writes-1 {
				// Decided 300 ms later, after the next grant: rejected.
				id := b.op(chaos.KindWrite, hold, token, w, w+300, chaos.ResultRejected)
				b.h.Ops[id].Seq, b.h.Ops[id].Late = j, true
				b.h.Ops[id].Reason = fmt.Sprintf("stale token %d: %d was accepted already", token, token+1)
				continue
			}
			id := b.op(chaos.KindWrite, hold, token, w, w+0.7, chaos.ResultAccepted)
			b.h.Ops[id].Seq = j
		}
	faulted:
		switch fault {
		case "":
			b.op(chaos.KindEnd, hold, token, last+0.5, last+1, chaos.ResultDone)
			b.op(chaos.KindRelease, hold, token, last+1.2, last+2.5, chaos.ResultReleased)
			next, again = last+3+8*rng.Float64(), last+2.5+5*rng.Float64()
		case chaos.FaultKillApp:
			b.fault(fault, p, at, at+25, true)
			sessions[p], procs[p] = "", "" // a new process, a new session
			next, again = at+40+30*rng.Float64(), at+1500
		case chaos.FaultKillSidecar:
			b.fault(fault, p, at, at+25, true)
			told = at + 4
			b.end(hold, token, last, chaos.ResultLost, told)
			b.op(chaos.KindRelease, hold, token, told+1, told+2, chaos.ResultLost)
			sessions[p] = ""
			next, again = at+leaseDur+250*rng.Float64(), at+1500
		case chaos.FaultCutOff, chaos.FaultRestartAPI:
			told = at + deadline
			// Writes go on, 20 ms apart, until told.
			j := writes
			for w := last + 20; w < told; w += 20 {
				b.write(hold, token, j, w, w+0.7, chaos.ResultAccepted)
				last, j = w, j+1
			}
			b.end(hold, token, last, chaos.ResultLost, told)
			b.op(chaos.KindRelease, hold, token, told+1, told+2, chaos.ResultLost)
			again = told + 3
			if fault == chaos.FaultCutOff {
				b.fault(fault, p, at, at+7000, true)
				next = at + leaseDur + 200 + 300*rng.Float64()
			} else {
				b.fault(fault, "", at, at+2500, false)
				next = at + leaseDur + 500 + 300*rng.Float64()
			}
		}
		waiting[p] = again
		now = next
	}
	b.h.End = ms(now + 500)
	b.h.AssignSessions()
	return &b.h
}
