// Command chaos is the contender of the chaos safety run (e2e/product, scenario 3). In a Pod
// annotated metaparticle.io/sync: "true" it loops until SIGTERM: acquire the lock through the
// injected side-car, announce the hold to the shared register with its fencing token, write a few
// times, and release. Before each message it reads the clock and then checks that the hold was
// not reported lost (see package e2e/product/internal/chaos). Errors, including a side-car that
// is gone, are logged and retried: killing this process or its side-car is the point of the run.
//
// With -late-every n, the last write of every n-th hold is sent late, after the release, as a
// write delayed in the network would arrive: the register must refuse it once another hold began.
//
// With -foreign-release it is instead the chaos run's foreign-release fault, exec'd by the test in
// a contender's application container beside the application: a misbehaving process of the Pod
// that reads the lock's holder from the side-car ($METAPARTICLE_SYNC_ADDR) and, when the holder is
// a session of this Pod, asks to release the lock for that session without its secret and with a
// wrong one (chaos.AttemptForeignRelease). It prints what it saw as one JSON line and exits.
//
// For the run's history (chaos.History) the messages also carry when Acquire was called, each
// write's index, and when a lost hold's Lost channel closed; after each release of an announced
// hold, a Release message says when Release was called, when it returned and with what result.
//
//	chaos -register http://10.217.0.1:40000 [-name chaos] [-writes 3] [-pause 5ms] [-late-every 0] [-late-by 300ms]
//	chaos -foreign-release [-name chaos]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"math/rand/v2"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/metaparticle-io/sync/e2e/product/internal/chaos"
	"github.com/metaparticle-io/sync/sdk"
	"github.com/metaparticle-io/sync/wire"
)

func main() {
	url := flag.String("register", "", "base URL of the shared register (required)")
	name := flag.String("name", "chaos", "name of the lock")
	writes := flag.Int("writes", 3, "writes per hold")
	pause := flag.Duration("pause", 5*time.Millisecond, "pause before each write and, at random up to it, before each acquire")
	lateEvery := flag.Int("late-every", 0, "send the last write of every n-th hold late: stamped while holding, sent after the release (0: never)")
	lateBy := flag.Duration("late-by", 300*time.Millisecond, "how long after the release a late write is sent")
	foreign := flag.Bool("foreign-release", false, "be a foreign process of this Pod: try to release the lock's hold for its holder's session without the secret, print what happened as JSON, exit")
	flag.Parse()
	if *foreign {
		os.Exit(foreignRelease(*name))
	}
	if *url == "" {
		fmt.Fprintln(os.Stderr, "chaos: -register is required")
		os.Exit(2)
	}
	pod, err := os.Hostname()
	if err != nil {
		log.Fatalf("chaos: %v", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	c := &contender{reg: &chaos.Client{URL: *url}, lock: sdk.NewLock(*name), pod: pod, proc: randomID(),
		writes: *writes, pause: *pause, lateEvery: *lateEvery, lateBy: *lateBy}
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.Printf("chaos: %s process %s contends for %q, register %s", pod, c.proc, *name, *url)
	c.run(ctx)
	_ = sdk.DefaultClient().Close()
	log.Printf("chaos: stopped after %d holds", c.n)
}

type contender struct {
	reg       *chaos.Client
	lock      *sdk.Lock
	pod       string
	proc      string // this process, so that hold names stay unique across restarts
	writes    int
	pause     time.Duration
	lateEvery int
	lateBy    time.Duration
	n         int // holds so far
}

func (c *contender) run(ctx context.Context) {
	for ctx.Err() == nil {
		sleep(ctx, jitter(c.pause))
		acquireStart := time.Now()
		if err := c.lock.Acquire(ctx); err != nil {
			if ctx.Err() == nil {
				log.Printf("chaos: acquire: %v", err)
				sleep(ctx, 200*time.Millisecond)
			}
			continue
		}
		id := fmt.Sprintf("%s/%s/%d", c.pod, c.proc, c.n)
		reason, ann := c.hold(ctx, id, acquireStart)
		c.n++
		rel := chaos.Release{Hold: id, Start: time.Now(), Result: chaos.ReleaseReleased, BeginFailed: ann == beginFailed}
		err := c.lock.Release(context.WithoutCancel(ctx))
		rel.At = time.Now()
		switch {
		case errors.Is(err, sdk.ErrLost):
			rel.Result = chaos.ReleaseLost
		case err != nil:
			rel.Result, rel.Error = chaos.ReleaseError, err.Error()
			log.Printf("chaos: release: %v", err)
		}
		if ann != unannounced {
			if err := c.reg.Release(context.WithoutCancel(ctx), rel); err != nil {
				log.Printf("chaos: release %s: %v", id, err)
			}
		}
		if reason != chaos.ReasonDone || c.n%100 == 0 {
			log.Printf("chaos: hold %s ended: %s", id, reason)
		}
	}
}

// announced says whether the register knows a hold.
type announced int

const (
	unannounced announced = iota // lost before its Begin was sent
	beginFailed                  // the Begin got no reply: the register may or may not have it
	known                        // the register replied to the Begin
)

// hold runs one hold and returns why it ended and whether the register knows it. Every End
// carries the last moment the application still believed it held the lock, never a later one.
func (c *contender) hold(stop context.Context, id string, acquireStart time.Time) (string, announced) {
	// Messages are not cut short by SIGTERM (stop; the client's timeout bounds them): a message
	// the register may have received is never left in doubt by this process.
	ctx := context.WithoutCancel(stop)
	token := c.lock.Token()
	// told receives when the hold's Lost channel closed: at a loss, or at the Release.
	told := make(chan time.Time, 1)
	go func(lost <-chan struct{}) {
		<-lost
		told <- time.Now()
	}(c.lock.Lost())
	last, lost := c.now()
	if lost {
		return chaos.ReasonLost, unannounced // lost before it was announced: nothing claimed
	}
	ok, err := c.reg.Begin(ctx, chaos.Begin{Hold: id, Pod: c.pod, Token: token, At: last, AcquireStart: acquireStart})
	if err != nil {
		// The register may or may not have it; if it does, the hold ends at its Begin, which is
		// when this application last claimed it.
		log.Printf("chaos: begin %s: %v", id, err)
		return chaos.ReasonLost, beginFailed
	}
	if !ok {
		return c.end(ctx, chaos.End{Hold: id, At: last, Reason: chaos.ReasonStale}), known
	}
	for i := range c.writes {
		sleep(stop, c.pause)
		at, lost := c.now()
		if lost {
			return c.end(ctx, chaos.End{Hold: id, At: last, Reason: chaos.ReasonLost, Told: toldAt(told)}), known
		}
		if stop.Err() != nil {
			return c.end(ctx, chaos.End{Hold: id, At: last, Reason: chaos.ReasonDone}), known
		}
		last = at
		if i == c.writes-1 && c.lateEvery > 0 && c.n%c.lateEvery == c.lateEvery-1 {
			// A write delayed in the network: it arrives after this hold has ended (the caller
			// releases at once) and, most likely, after another hold began.
			w := chaos.Write{Hold: id, Token: token, At: at, Late: true, Seq: i}
			time.AfterFunc(c.lateBy, func() {
				if _, err := c.reg.Write(ctx, w); err != nil {
					log.Printf("chaos: late write %s: %v", id, err)
				}
			})
			break
		}
		ok, err := c.reg.Write(ctx, chaos.Write{Hold: id, Token: token, At: at, Seq: i})
		if err != nil {
			// Given up, not told: the End has no Told.
			log.Printf("chaos: write %s: %v", id, err)
			return c.end(ctx, chaos.End{Hold: id, At: last, Reason: chaos.ReasonLost}), known
		}
		if !ok {
			return c.end(ctx, chaos.End{Hold: id, At: last, Reason: chaos.ReasonStale}), known
		}
	}
	if at, lost := c.now(); !lost {
		return c.end(ctx, chaos.End{Hold: id, At: at, Reason: chaos.ReasonDone}), known
	}
	return c.end(ctx, chaos.End{Hold: id, At: last, Reason: chaos.ReasonLost, Told: toldAt(told)}), known
}

// toldAt returns when the hold's Lost channel closed, once now has reported it closed.
func toldAt(told <-chan time.Time) time.Time {
	select {
	case t := <-told:
		return t
	case <-time.After(time.Second): // not expected: the channel is closed
		return time.Now()
	}
}

// now reads the clock, then whether the hold was lost: when it was not, the application still
// believed it held the lock at the time returned.
func (c *contender) now() (time.Time, bool) {
	at := time.Now()
	select {
	case <-c.lock.Lost():
		return at, true
	default:
		return at, false
	}
}

// end reports the end of a hold, as of m.At, and returns its reason. It is best effort: a hold
// whose End is lost ends at its last message, which the register has.
func (c *contender) end(ctx context.Context, m chaos.End) string {
	if err := c.reg.End(ctx, m); err != nil {
		log.Printf("chaos: end %s: %v", m.Hold, err)
	}
	return m.Reason
}

func sleep(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return rand.N(d)
}

func randomID() string { return fmt.Sprintf("%08x", rand.Uint32()) }

// foreignRelease runs chaos.AttemptForeignRelease against this Pod's side-car and prints the result
// as one JSON line; it returns the exit status.
func foreignRelease(name string) int {
	pod, err := os.Hostname()
	if err != nil {
		fmt.Fprintf(os.Stderr, "chaos: %v\n", err)
		return 1
	}
	addr := os.Getenv(wire.EnvAddress)
	if addr == "" {
		addr = wire.DefaultAddress
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f, err := chaos.AttemptForeignRelease(ctx, &http.Client{}, "http://"+addr, pod, name)
	if err != nil {
		fmt.Fprintf(os.Stderr, "chaos: foreign release: %v\n", err)
		return 1
	}
	if err := json.NewEncoder(os.Stdout).Encode(f); err != nil {
		fmt.Fprintf(os.Stderr, "chaos: %v\n", err)
		return 1
	}
	return 0
}
