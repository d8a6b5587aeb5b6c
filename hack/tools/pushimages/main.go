// Command pushimages pushes OCI image layouts written by mkimage -oci (make images) to a
// registry, each under REGISTRY/<image name>:<tag>, and prints "REFERENCE@DIGEST" for each.
// make push runs it.
//
//	pushimages -registry ghcr.io/acme/metaparticle bin/images/sync-elector bin/images/sync-injector
//
// Credentials come from the Docker configuration (docker login, crane auth login or helm
// registry login write it); $SSL_CERT_FILE names extra roots for a registry with a private CA.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/metaparticle-io/sync/internal/image"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "pushimages:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("pushimages", flag.ContinueOnError)
	registry := fs.String("registry", "", "registry host and path prefix, for example ghcr.io/acme/metaparticle (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *registry == "" || fs.NArg() == 0 {
		fs.Usage()
		return errors.New("-registry and at least one layout directory are required")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	for _, dir := range fs.Args() {
		ref, idx, err := image.ReadLayout(dir)
		if err != nil {
			return err
		}
		to, err := image.Retarget(ref, *registry)
		if err != nil {
			return err
		}
		digest, err := image.Push(ctx, to, idx)
		if err != nil {
			return err
		}
		fmt.Printf("%s@%s\n", to, digest)
	}
	return nil
}
