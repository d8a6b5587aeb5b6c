// Command once takes the lock named by -name once through the injected side-car, prints its
// fencing token, releases it and exits 0: the application of the e2e Job (scenario 4), which
// completes although its Pod also runs the native side-car.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/metaparticle-io/sync/sdk"
)

func main() {
	name := flag.String("name", "job", "name of the lock")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l := sdk.NewLock(*name)
	if err := l.Acquire(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "once: acquire:", err)
		os.Exit(1)
	}
	fmt.Printf("I have the lock! (token %d)\n", l.Token())
	if err := l.Release(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "once: release:", err)
		os.Exit(1)
	}
	fmt.Println("I released the lock.")
	_ = sdk.DefaultClient().Close()
}
