// Command lock is the Go version of the original Metaparticle Sync lock.py: it takes the lock
// named "test", holds it for a while, releases it, and starts again, as every replica of a
// Deployment would; replicas take turns. It prints when it holds the lock and when it lost it.
//
// Run it in a Pod annotated metaparticle.io/sync: "true", whose injected side-car it finds through
// $METAPARTICLE_SYNC_ADDR. On SIGTERM or interrupt it releases the lock and exits with status 0.
//
//	lock [-name test] [-hold 30s] [-pause 5s]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/metaparticle-io/sync/sdk"
)

func main() {
	name := flag.String("name", "test", "name of the lock")
	hold := flag.Duration("hold", 30*time.Second, "how long to hold the lock each time")
	pause := flag.Duration("pause", 5*time.Second, "how long to wait after releasing, so that another replica gets a turn")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	err := run(ctx, sdk.NewLock(*name), *hold, *pause)
	if cerr := sdk.DefaultClient().Close(); err == nil {
		err = cerr
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "lock:", err)
		os.Exit(1)
	}
}

// run takes turns holding l until ctx ends.
func run(ctx context.Context, l *sdk.Lock, hold, pause time.Duration) error {
	for {
		if err := l.Acquire(ctx); err != nil {
			if ctx.Err() != nil {
				return nil // stopped while waiting
			}
			return err
		}
		fmt.Printf("I have the lock! (token %d)\n", l.Token())
		select {
		case <-time.After(hold):
		case <-l.Lost():
			fmt.Println("I lost the lock!")
		case <-ctx.Done():
		}
		// The hold ends here, where the app stops using what the lock protects; another replica
		// may hold the lock before Release returns.
		fmt.Println("Releasing the lock.")
		// ctx may be cancelled already (SIGTERM): release under a context of its own.
		rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := l.Release(rctx)
		cancel()
		switch {
		case err == nil:
			fmt.Println("I released the lock.")
		case errors.Is(err, sdk.ErrLost):
			fmt.Println("The lock was lost before I released it:", err)
		default:
			return err
		}
		select {
		case <-time.After(pause):
		case <-ctx.Done():
			return nil
		}
	}
}
