// Command election is the Go version of the original Metaparticle Sync election.py: it stands in
// the election named "test" and prints when it becomes the master and when it no longer is. It
// keeps standing after losing, so with three replicas of a Deployment there is always one master
// while any replica runs.
//
// Run it in a Pod annotated metaparticle.io/sync: "true", whose injected side-car it finds through
// $METAPARTICLE_SYNC_ADDR. On SIGTERM or interrupt it steps down, leaves the election and exits
// with status 0, and another replica is elected at once.
//
//	election [-name test]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/metaparticle-io/sync/sdk"
)

func main() {
	name := flag.String("name", "test", "name of the election")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	e := sdk.NewElection(*name, master, lostMaster)
	err := e.Run(ctx)
	if cerr := sdk.DefaultClient().Close(); err == nil {
		err = cerr
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "election:", err)
		os.Exit(1)
	}
}

// master runs while this replica is the master: until ctx is cancelled.
func master(ctx context.Context) {
	term, _ := sdk.LeaderToken(ctx)
	fmt.Printf("I am the master (term %d)\n", term)
	<-ctx.Done() // a real master works here, passing term to what it writes
}

func lostMaster() { fmt.Println("I lost the master") }
