// Command mkimage writes a one-layer container image holding static binaries as a
// docker-archive tarball, with no Docker engine and no registry; `ctr images import` reads it.
// hack/cluster/images.sh uses it for every image the project ships and for the pause image.
//
//	mkimage -o elector.tar -ref docker.io/metaparticle/sync-elector:0.1.0 \
//	  -file /elector=bin/elector -user 65532:65532 -entrypoint /elector
//
// The entrypoint defaults to the first file; the user defaults to 65532:65532 (distroless
// "nonroot"); -user "" makes an image that runs as root.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/metaparticle-io/sync/internal/image"
)

// list is a repeatable string flag.
type list []string

func (l *list) String() string     { return strings.Join(*l, " ") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("mkimage", flag.ContinueOnError)
	out := fs.String("o", "", "output docker-archive tarball (required)")
	ref := fs.String("ref", "", "full image reference, e.g. docker.io/metaparticle/sync-elector:0.1.0 (required)")
	user := fs.String("user", fmt.Sprintf("%d:%d", image.NonRootUID, image.NonRootUID), `image user, "uid" or "uid:gid"; "" for root`)
	workdir := fs.String("workdir", "/", "working directory")
	var files, entrypoint, cmd, env, labels list
	fs.Var(&files, "file", "IMAGE_PATH=HOST_PATH, a file to put in the layer (repeatable)")
	fs.Var(&entrypoint, "entrypoint", "entrypoint word (repeatable); default: the first file")
	fs.Var(&cmd, "cmd", "command word (repeatable)")
	fs.Var(&env, "env", "NAME=value (repeatable)")
	fs.Var(&labels, "label", "name=value (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" || *ref == "" || len(files) == 0 {
		fs.Usage()
		return fmt.Errorf("-o, -ref and at least one -file are required")
	}
	spec := image.Spec{Ref: *ref, User: *user, WorkingDir: *workdir, Cmd: cmd, Env: env, Labels: map[string]string{}}
	for _, f := range files {
		in, host, ok := strings.Cut(f, "=")
		if !ok || in == "" || host == "" {
			return fmt.Errorf("-file %q: want IMAGE_PATH=HOST_PATH", f)
		}
		spec.Files = append(spec.Files, image.File{Path: in, Source: host})
	}
	for _, l := range labels {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return fmt.Errorf("-label %q: want name=value", l)
		}
		spec.Labels[k] = v
	}
	spec.Entrypoint = entrypoint
	if len(spec.Entrypoint) == 0 {
		spec.Entrypoint = []string{spec.Files[0].Path}
	}
	return image.WriteArchiveFile(*out, spec)
}
