// Command mkimage writes a one-layer container image holding static binaries, with no Docker
// engine: a docker-archive tarball for one architecture (-o), which `ctr images import` reads, or
// an OCI image layout holding one index for several architectures (-oci), which
// hack/tools/pushimages pushes to a registry. hack/cluster/images.sh uses it for every image the
// project ships and for the pause image.
//
//	mkimage -o elector.tar -ref docker.io/metaparticle/sync-elector:0.1.0 \
//	  -file /elector=bin/elector -user 65532:65532 -entrypoint /elector
//	mkimage -oci images/sync-elector -arch amd64,arm64 -ref docker.io/metaparticle/sync-elector:0.1.0 \
//	  -file '/elector=bin/{arch}/elector'
//
// In a -file host path, {arch} stands for each architecture in turn. The entrypoint defaults to
// the first file; the user defaults to 65532:65532 (distroless "nonroot"); -user "" makes an
// image that runs as root.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
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
	out := fs.String("o", "", "output docker-archive tarball (this or -oci is required)")
	oci := fs.String("oci", "", "output OCI image layout directory, holding one index of every -arch")
	arches := fs.String("arch", "", "architectures, comma-separated (one with -o); default: this machine's with -o, "+strings.Join(image.Platforms, ",")+" with -oci")
	printPlatforms := fs.Bool("print-platforms", false, "print the architectures -oci builds by default, space-separated, and exit")
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
	if *printPlatforms {
		fmt.Println(strings.Join(image.Platforms, " "))
		return nil
	}
	if *arches == "" {
		*arches = runtime.GOARCH
		if *oci != "" {
			*arches = strings.Join(image.Platforms, ",")
		}
	}
	if (*out == "") == (*oci == "") || *ref == "" || len(files) == 0 {
		fs.Usage()
		return fmt.Errorf("one of -o and -oci, -ref and at least one -file are required")
	}
	archList := strings.Split(*arches, ",")
	if *out != "" && len(archList) != 1 {
		return fmt.Errorf("-o writes one architecture; got -arch %s (use -oci for several)", *arches)
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
	var specs []image.Spec
	for _, arch := range archList {
		s := spec
		s.Arch = arch
		s.Files = nil
		for _, f := range spec.Files {
			f.Source = strings.ReplaceAll(f.Source, "{arch}", arch)
			s.Files = append(s.Files, f)
		}
		specs = append(specs, s)
	}
	if *out != "" {
		return image.WriteArchiveFile(*out, specs[0])
	}
	idx, err := image.BuildIndex(specs...)
	if err != nil {
		return err
	}
	return image.WriteLayout(*oci, *ref, idx)
}
