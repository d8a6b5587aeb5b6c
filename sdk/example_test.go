package sdk_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/metaparticle-io/sync/sdk"
)

// The seed's lock.py in Go: take the lock "test", hold it for 30 seconds unless it is lost, and
// release it. (No Output line: it needs a side-car.)
func ExampleLock() {
	ctx := context.Background()
	l := sdk.NewLock("test")
	if err := l.Acquire(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("I have the lock! token", l.Token())
	select {
	case <-time.After(30 * time.Second):
	case <-l.Lost():
		fmt.Println("I lost the lock: stopping")
	}
	if err := l.Release(ctx); err != nil {
		log.Print(err) // matches sdk.ErrLost if the hold was lost
	}
}

// Pass the fencing token with each write, so that the resource can refuse a writer whose hold has
// ended (here, a hypothetical store that keeps the highest token it has seen).
func ExampleLock_Token() {
	ctx := context.Background()
	l := sdk.NewLock("ledger")
	if err := l.Acquire(ctx); err != nil {
		log.Fatal(err)
	}
	defer l.Release(ctx)
	write := func(token uint64, entry string) error {
		// A real store does: if token < highestSeen { refuse }; highestSeen = token; write.
		fmt.Printf("write %q with token %d\n", entry, token)
		return nil
	}
	if err := write(l.Token(), "credit 10"); err != nil {
		log.Fatal(err)
	}
}

// Do the work only if nobody else is doing it right now.
func ExampleLock_TryAcquire() {
	ctx := context.Background()
	l := sdk.NewLock("nightly-report")
	ok, err := l.TryAcquire(ctx)
	switch {
	case err != nil:
		log.Fatal(err)
	case !ok:
		fmt.Println("another replica is on it")
		return
	}
	defer l.Release(ctx)
	fmt.Println("building the report")
}

// The seed's election.py in Go, stopping cleanly on SIGTERM: Run returns nil once the context
// ends, after the elected function returned and the candidacy was withdrawn.
func ExampleElection() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	e := sdk.NewElection("test",
		func(ctx context.Context) {
			fmt.Println("I am the master")
			<-ctx.Done() // work here until leadership is lost
		},
		func() { fmt.Println("I lost the master") })
	if err := e.Run(ctx); err != nil {
		log.Fatal(err)
	}
}

// Follow the leader of an election without standing in it.
func ExampleElection_Watch() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e := sdk.NewElection("test", nil, nil)
	err := e.Watch(ctx, func(l sdk.Leader) {
		if l.Holder == "" {
			fmt.Println("no leader")
			return
		}
		fmt.Println("leader:", l.Holder, "term", l.Token)
	})
	if err != nil {
		log.Fatal(err)
	}
}

// Read the current leader once.
func ExampleElection_Leader() {
	l, err := sdk.NewElection("test", nil, nil).Leader(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("leader:", l.Holder)
}

// A Client of its own: another address, a shorter session TTL (a dead process's locks are handed
// over sooner), and a Close that releases everything it holds.
func ExampleNewClient() {
	c, err := sdk.NewClient(sdk.WithAddress("127.0.0.1:13131"), sdk.WithSessionTTL(5*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	l := c.NewLock("test")
	if err := l.Acquire(context.Background()); err != nil {
		log.Fatal(err)
	}
	fmt.Println("held with token", l.Token())
}

// Invalid options are refused before any I/O.
func ExampleNewClient_invalid() {
	_, err := sdk.NewClient(sdk.WithAddress("localhost"))
	fmt.Println(err)
	// Output: sdk: side-car address "localhost" (set by WithAddress) is not host:port: address localhost: missing port in address
}

// Tell a missing side-car from other failures.
func ExampleErrUnreachable() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := sdk.NewLock("test").Acquire(ctx)
	if errors.Is(err, sdk.ErrUnreachable) {
		// The message names the address tried and asks whether the Pod carries the annotation
		// metaparticle.io/sync: "true".
		log.Fatal(err)
	}
}
