// Command krewplugin packages kubectl-sync binaries (cmd/syncctl built as kubectl-sync) for krew,
// kubectl's plugin manager: one .tar.gz per platform, each with the binary and the LICENSE, and
// the plugin manifest sync.yaml that names them under a URI base with their SHA-256. make plugin
// runs it; TestKrewInstall installs its output with krew itself.
//
//	krewplugin -version v0.1.0 -uri https://github.com/metaparticle-io/sync/releases/download/v0.1.0 \
//	  -license LICENSE -out bin/plugin linux/amd64=bin/plugin/linux-amd64/kubectl-sync ...
//
// Publish the archives at the URI base, then submit sync.yaml to krew-index (or install it with
// kubectl krew install --manifest=sync.yaml).
package main

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// The manifest's schema: krew's index.Plugin (krew.googlecontainertools.github.com/v1alpha2),
// the fields a plugin sets. krew's own Go module is not required here: it pins a client-go from
// before Kubernetes' Go modules, which would conflict with ours.
type plugin struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Metadata   metadata `json:"metadata"`
	Spec       spec     `json:"spec"`
}

type metadata struct {
	Name string `json:"name"`
}

type spec struct {
	Version          string     `json:"version"`
	Homepage         string     `json:"homepage"`
	ShortDescription string     `json:"shortDescription"`
	Description      string     `json:"description"`
	Caveats          string     `json:"caveats"`
	Platforms        []platform `json:"platforms"`
}

type platform struct {
	Selector selector       `json:"selector"`
	URI      string         `json:"uri"`
	SHA256   string         `json:"sha256"`
	Bin      string         `json:"bin"`
	Files    []fileOperator `json:"files"`
}

type selector struct {
	MatchLabels map[string]string `json:"matchLabels"`
}

type fileOperator struct {
	From string `json:"from"`
	To   string `json:"to"`
}

const (
	pluginName = "sync"
	binaryName = "kubectl-sync"
)

const description = `Shows who holds the locks and leads the elections of Metaparticle Sync
(the lock and leader-election side-car for Kubernetes Pods), from the
coordination.k8s.io Leases its side-cars write: the holder's Pod and
session, since when, with which fencing token, and when the hold expires.
It also shows each side-car's health, and checks an install: the webhook
configuration, its caBundle against the injector's serving certificate,
a dry-run Pod, the Lease RBAC of a namespace, side-cars older than the
injector.`

const caveats = `kubectl sync reads Leases (get, list, watch), Pods and pods/proxy;
kubectl sync check also reads the injector's webhook configuration,
Service, Deployment and serving Secret, and sends dry-run Pod creates and
SubjectAccessReviews, which are never stored.`

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "krewplugin:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("krewplugin", flag.ContinueOnError)
	version := fs.String("version", "", "the plugin's version, a semantic version with a leading v (required)")
	uri := fs.String("uri", "", "the URI base the archives are published under (required)")
	license := fs.String("license", "LICENSE", "the licence file to put in each archive")
	out := fs.String("out", "", "directory for the archives and sync.yaml (required)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: krewplugin -version vX.Y.Z -uri URI -out DIR [-license FILE] OS/ARCH=BINARY...")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *version == "" || *uri == "" || *out == "" || fs.NArg() == 0 {
		fs.Usage()
		return errors.New("-version, -uri, -out and at least one OS/ARCH=BINARY are required")
	}
	if !strings.HasPrefix(*version, "v") {
		return fmt.Errorf("version %q: krew wants a leading v (v%s)", *version, *version)
	}
	lic, err := os.ReadFile(*license)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	p := plugin{
		APIVersion: "krew.googlecontainertools.github.com/v1alpha2",
		Kind:       "Plugin",
		Metadata:   metadata{Name: pluginName},
		Spec: spec{
			Version:          *version,
			Homepage:         "https://github.com/metaparticle-io/sync",
			ShortDescription: "Show Metaparticle Sync's lock holders and check its install",
			Description:      description,
			Caveats:          caveats,
		},
	}
	for _, arg := range fs.Args() {
		target, bin, ok := strings.Cut(arg, "=")
		goos, goarch, ok2 := strings.Cut(target, "/")
		if !ok || !ok2 || goos == "" || goarch == "" || bin == "" {
			return fmt.Errorf("%q: want OS/ARCH=BINARY", arg)
		}
		name := binaryName
		if goos == "windows" {
			name += ".exe"
		}
		archive := fmt.Sprintf("%s_%s_%s.tar.gz", binaryName, goos, goarch)
		sum, err := writeArchive(filepath.Join(*out, archive), bin, name, lic)
		if err != nil {
			return fmt.Errorf("%s: %w", archive, err)
		}
		p.Spec.Platforms = append(p.Spec.Platforms, platform{
			Selector: selector{MatchLabels: map[string]string{"os": goos, "arch": goarch}},
			URI:      strings.TrimSuffix(*uri, "/") + "/" + archive,
			SHA256:   sum,
			Bin:      name,
			Files:    []fileOperator{{From: name, To: "."}, {From: "LICENSE", To: "."}},
		})
	}
	b, err := yaml.Marshal(p)
	if err != nil {
		return err
	}
	manifest := filepath.Join(*out, pluginName+".yaml")
	if err := os.WriteFile(manifest, b, 0o644); err != nil {
		return err
	}
	fmt.Println(manifest)
	return nil
}

// writeArchive writes a gzipped tar at path holding the binary bin as name (mode 0755) and
// the licence, with fixed times so that the same inputs give the same archive, and returns its
// SHA-256 in hex.
func writeArchive(path, bin, name string, license []byte) (string, error) {
	exe, err := os.ReadFile(bin)
	if err != nil {
		return "", err
	}
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	gz := gzip.NewWriter(io.MultiWriter(f, h))
	tw := tar.NewWriter(gz)
	epoch := time.Unix(0, 0)
	for _, e := range []struct {
		name string
		mode int64
		data []byte
	}{{name, 0o755, exe}, {"LICENSE", 0o644, license}} {
		if err := tw.WriteHeader(&tar.Header{Name: e.name, Mode: e.mode, Size: int64(len(e.data)), ModTime: epoch, Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
			return "", err
		}
		if _, err := tw.Write(e.data); err != nil {
			return "", err
		}
	}
	if err := tw.Close(); err != nil {
		return "", err
	}
	if err := gz.Close(); err != nil {
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
