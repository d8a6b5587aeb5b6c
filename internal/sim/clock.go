package sim

import (
	"math"
	"sort"
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// Clock is one side-car's monotonic clock in a simulation. It runs at a fixed rate against the
// simulation's real time (the time package's clock, virtual inside a synctest bubble), to model
// clock rate drift, and it can be frozen, to model a paused process: while frozen none of its
// timers fire, and on Thaw every timer that came due fires at once, as a process that was
// stopped with SIGSTOP and continued would see them. Now keeps running while frozen, as
// CLOCK_MONOTONIC does.
//
// Clock implements clock.WithTickerAndDelayedExecution, the Engine's Options.Clock. It is safe
// for concurrent use.
type Clock struct {
	start time.Time // simulation real time at creation
	local time.Time // this clock's time at creation
	rate  float64   // local seconds per real second

	mu     sync.Mutex // protects the fields below
	frozen bool
	timers map[*simTimer]struct{} // armed timers
	held   []heldTimer            // timers that came due while frozen
}

var _ clock.WithTickerAndDelayedExecution = (*Clock)(nil)

// NewClock returns a clock that starts at local and runs rate times as fast as real time.
func NewClock(local time.Time, rate float64) *Clock {
	return &Clock{start: time.Now(), local: local, rate: rate, timers: map[*simTimer]struct{}{}}
}

// Now returns the clock's current time.
func (c *Clock) Now() time.Time {
	return c.local.Add(time.Duration(float64(time.Since(c.start)) * c.rate))
}

// Since returns the time elapsed on this clock since t.
func (c *Clock) Since(t time.Time) time.Duration { return c.Now().Sub(t) }

// Freeze stops the clock's timers from firing until Thaw.
func (c *Clock) Freeze() {
	c.mu.Lock()
	c.frozen = true
	c.mu.Unlock()
}

// Thaw lets timers fire again; those that came due while frozen fire now, earliest first.
func (c *Clock) Thaw() {
	c.mu.Lock()
	c.frozen = false
	held := c.held
	c.held = nil
	c.mu.Unlock()
	sort.SliceStable(held, func(i, j int) bool { return held[i].when.Before(held[j].when) })
	for _, h := range held {
		h.t.fire(h.gen)
	}
}

// realDelay converts a delay on this clock to simulation real time.
func (c *Clock) realDelay(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return time.Duration(math.Ceil(float64(d) / c.rate))
}

// simTimer is a timer, ticker or AfterFunc of a Clock.
type simTimer struct {
	c      *Clock
	when   time.Time     // local time it is due
	period time.Duration // tickers: the period; 0 otherwise
	ch     chan time.Time
	fn     func()
	real   *time.Timer // the real timer that wakes it; nil when not armed
	gen    uint64      // incremented by every arm: a wake-up of an older arming is stale
}

// heldTimer is a timer that came due while its clock was frozen.
type heldTimer struct {
	t    *simTimer
	gen  uint64
	when time.Time
}

// arm schedules t to fire at local time when. Called with c.mu held.
func (t *simTimer) arm(when time.Time) {
	t.when = when
	t.gen++
	gen := t.gen
	t.c.timers[t] = struct{}{}
	t.real = time.AfterFunc(t.c.realDelay(when.Sub(t.c.Now())), func() { t.due(gen) })
}

// due runs when the real timer of arming gen fires: fire now, or hold until the clock thaws.
func (t *simTimer) due(gen uint64) {
	c := t.c
	c.mu.Lock()
	if c.frozen {
		if _, armed := c.timers[t]; armed && t.gen == gen {
			c.held = append(c.held, heldTimer{t, gen, t.when})
		}
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	t.fire(gen)
}

// fire delivers the tick of arming gen and re-arms a ticker.
func (t *simTimer) fire(gen uint64) {
	c := t.c
	c.mu.Lock()
	if _, armed := c.timers[t]; !armed || t.gen != gen {
		c.mu.Unlock()
		return
	}
	delete(c.timers, t)
	now := c.Now()
	if t.period > 0 {
		t.arm(now.Add(t.period))
	}
	c.mu.Unlock()
	switch {
	case t.fn != nil:
		go t.fn()
	default:
		select {
		case t.ch <- now:
		default: // a ticker's receiver is behind: drop the tick, as time.Ticker does
		}
	}
}

func (t *simTimer) stop() bool {
	c := t.c
	c.mu.Lock()
	defer c.mu.Unlock()
	_, armed := c.timers[t]
	delete(c.timers, t)
	if t.real != nil {
		t.real.Stop()
	}
	return armed
}

func (c *Clock) newTimer(d, period time.Duration, fn func()) *simTimer {
	t := &simTimer{c: c, period: period, fn: fn}
	if fn == nil {
		t.ch = make(chan time.Time, 1)
	}
	c.mu.Lock()
	t.arm(c.Now().Add(d))
	c.mu.Unlock()
	return t
}

// After returns a channel that receives the time once d has passed on this clock.
func (c *Clock) After(d time.Duration) <-chan time.Time { return c.newTimer(d, 0, nil).ch }

// NewTimer returns a timer that fires once d has passed on this clock.
func (c *Clock) NewTimer(d time.Duration) clock.Timer { return timer{c.newTimer(d, 0, nil)} }

// AfterFunc runs f in its own goroutine once d has passed on this clock.
func (c *Clock) AfterFunc(d time.Duration, f func()) clock.Timer {
	return timer{c.newTimer(d, 0, f)}
}

// Sleep blocks until d has passed on this clock.
func (c *Clock) Sleep(d time.Duration) { <-c.After(d) }

// Tick returns a channel that receives the time every d on this clock.
func (c *Clock) Tick(d time.Duration) <-chan time.Time { return c.newTimer(d, d, nil).ch }

// NewTicker returns a ticker that fires every d on this clock.
func (c *Clock) NewTicker(d time.Duration) clock.Ticker { return ticker{c.newTimer(d, d, nil)} }

type timer struct{ t *simTimer }

func (t timer) C() <-chan time.Time { return t.t.ch }
func (t timer) Stop() bool          { return t.t.stop() }
func (t timer) Reset(d time.Duration) bool {
	active := t.t.stop()
	c := t.t.c
	c.mu.Lock()
	t.t.arm(c.Now().Add(d))
	c.mu.Unlock()
	return active
}

type ticker struct{ t *simTimer }

func (t ticker) C() <-chan time.Time { return t.t.ch }
func (t ticker) Stop()               { t.t.stop() }
