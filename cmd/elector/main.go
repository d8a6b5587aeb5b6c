// Command elector is the Metaparticle Sync side-car: named locks and leader elections for the
// containers of its Pod, served over HTTP on loopback and backed by Kubernetes Leases. Run it
// with --help for its flags; see docs/api.md for its API.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/metaparticle-io/sync/elector/server"
)

func main() {
	s, err := server.ParseSettings(os.Args[1:], os.Getenv, os.Stdout)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "elector:", err)
		os.Exit(2)
	}
	log := server.NewLogger(os.Stderr, s.LogLevel)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := server.Run(ctx, s, log); err != nil {
		log.Error(err, "elector failed")
		os.Exit(1)
	}
}
