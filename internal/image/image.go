// Package image builds small container images without a Docker engine: one layer holding a few
// static binaries and a minimal /etc. An image is written as a docker-archive tarball that
// `ctr images import` (and `docker load`) read (this file), or, for several platforms, as an
// OCI image index in an OCI image layout that is pushed to a registry (index.go, push.go).
//
// Images are reproducible: every file has the same owner and modification time, entries are
// sorted, and the config carries no creation time, so the same inputs give the same digest.
package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// NonRootUID is the user and group images run as unless a Spec says otherwise: the distroless
// "nonroot" user, which the chart and the injector assume for the side-car.
const NonRootUID = 65532

// File is one regular file in the image's layer.
type File struct {
	// Path is the absolute path inside the image, for example /elector.
	Path string
	// Source is the host file to copy; Data is used instead when Source is empty.
	Source string
	Data   []byte
	// Mode is the permission bits; 0 means 0755 (files here are mostly executables).
	Mode int64
}

// Spec describes a one-layer image.
type Spec struct {
	// Ref is the full image reference the archive is tagged with, for example
	// docker.io/metaparticle/sync-elector:0.1.0. It is written exactly as given, so use the
	// spelling Pods will use (containerd normalizes "metaparticle/x:tag" to "docker.io/...").
	Ref string
	// Files are the layer's files; parent directories are created as needed.
	Files []File
	// User is the image's user, "uid" or "uid:gid". Empty means the image runs as root.
	User string
	// Entrypoint and Cmd of the image.
	Entrypoint []string
	Cmd        []string
	// Env entries are "NAME=value". PATH is set to /: when no entry names it.
	Env []string
	// WorkingDir of the image; "/" when empty.
	WorkingDir string
	// Labels of the image config.
	Labels map[string]string
	// Arch is the image's architecture; runtime.GOARCH when empty. The OS is always linux.
	Arch string
}

// epoch is the modification time of every file: fixed, so that layers are reproducible.
var epoch = time.Unix(0, 0).UTC()

// baseFiles is the minimal /etc every image gets, so that user names resolve and /tmp exists.
func baseFiles() []File {
	passwd := fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", NonRootUID, NonRootUID)
	group := fmt.Sprintf("root:x:0:\nnobody:x:65534:\nnonroot:x:%d:\n", NonRootUID)
	return []File{
		{Path: "/etc/passwd", Data: []byte(passwd), Mode: 0o644},
		{Path: "/etc/group", Data: []byte(group), Mode: 0o644},
	}
}

// Validate reports what is wrong with s.
func (s Spec) Validate() error {
	var errs []error
	if _, err := name.NewTag(s.Ref, name.StrictValidation); err != nil {
		errs = append(errs, fmt.Errorf("image reference %q must be a full name with a tag: %w", s.Ref, err))
	}
	if len(s.Files) == 0 {
		errs = append(errs, errors.New("an image needs at least one file"))
	}
	seen := map[string]bool{}
	for _, f := range s.Files {
		switch {
		case !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path || f.Path == "/":
			errs = append(errs, fmt.Errorf("file path %q must be absolute and clean", f.Path))
		case seen[f.Path]:
			errs = append(errs, fmt.Errorf("file %s is listed twice", f.Path))
		}
		seen[f.Path] = true
		if f.Mode&^0o7777 != 0 {
			errs = append(errs, fmt.Errorf("file %s: mode %o has more than permission bits", f.Path, f.Mode))
		}
	}
	if len(s.Entrypoint) == 0 && len(s.Cmd) == 0 {
		errs = append(errs, errors.New("an image needs an entrypoint or a command"))
	}
	if s.User != "" {
		if err := validUser(s.User); err != nil {
			errs = append(errs, err)
		}
	}
	for _, e := range s.Env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			errs = append(errs, fmt.Errorf("environment entry %q must be NAME=value", e))
		}
	}
	return errors.Join(errs...)
}

// validUser accepts "uid" or "uid:gid" with numeric ids: the kubelet can only check
// runAsNonRoot against a numeric user.
func validUser(u string) error {
	uid, gid, hasGID := strings.Cut(u, ":")
	if !numeric(uid) || (hasGID && !numeric(gid)) {
		return fmt.Errorf("user %q must be numeric, uid or uid:gid", u)
	}
	return nil
}

func numeric(s string) bool {
	if s == "" || len(s) > 10 {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// Build assembles the image described by s, with Docker media types (what a docker-archive
// holds).
func Build(s Spec) (v1.Image, error) { return build(s, false) }

// build assembles s; oci selects OCI media types for the manifest, config and layer, as an
// image in an OCI index has.
func build(s Spec, oci bool) (v1.Image, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	layerTar, err := layerTar(s.Files)
	if err != nil {
		return nil, err
	}
	opts := []tarball.LayerOption{tarball.WithCompressionLevel(gzip.BestSpeed)}
	base := empty.Image
	if oci {
		opts = append(opts, tarball.WithMediaType(types.OCILayer))
		base = mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, opts...)
	if err != nil {
		return nil, fmt.Errorf("making the layer: %w", err)
	}
	img, err := mutate.AppendLayers(base, layer)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS = "linux"
	cf.Architecture = s.Arch
	if cf.Architecture == "" {
		cf.Architecture = runtime.GOARCH
	}
	cf.Created = v1.Time{Time: epoch}
	env := append([]string(nil), s.Env...)
	if !hasEnv(env, "PATH") {
		env = append([]string{"PATH=/"}, env...)
	}
	wd := s.WorkingDir
	if wd == "" {
		wd = "/"
	}
	cf.Config = v1.Config{
		User:       s.User,
		Entrypoint: s.Entrypoint,
		Cmd:        s.Cmd,
		Env:        env,
		WorkingDir: wd,
		Labels:     s.Labels,
	}
	return mutate.ConfigFile(img, cf)
}

func hasEnv(env []string, key string) bool {
	for _, e := range env {
		if strings.HasPrefix(e, key+"=") {
			return true
		}
	}
	return false
}

// layerTar writes the files, the base /etc and every parent directory as an uncompressed tar,
// sorted by path, owned by root, with a fixed modification time. /tmp is world-writable.
func layerTar(files []File) ([]byte, error) {
	all := map[string]File{}
	for _, f := range baseFiles() {
		all[f.Path] = f
	}
	for _, f := range files {
		all[f.Path] = f
	}
	dirs := map[string]int64{"/tmp": 0o1777}
	for p := range all {
		for d := path.Dir(p); d != "/"; d = path.Dir(d) {
			if _, ok := dirs[d]; !ok {
				dirs[d] = 0o755
			}
		}
	}
	type entry struct {
		path string
		dir  bool
	}
	var entries []entry
	for d := range dirs {
		entries = append(entries, entry{d, true})
	}
	for p := range all {
		if _, isDir := dirs[p]; isDir {
			return nil, fmt.Errorf("%s is both a file and a directory", p)
		}
		entries = append(entries, entry{p, false})
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].path < entries[j].path })

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		rel := strings.TrimPrefix(e.path, "/")
		if e.dir {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: rel + "/", Mode: dirs[e.path], ModTime: epoch, Format: tar.FormatPAX}); err != nil {
				return nil, err
			}
			continue
		}
		f := all[e.path]
		data := f.Data
		if f.Source != "" {
			var err error
			if data, err = os.ReadFile(f.Source); err != nil {
				return nil, fmt.Errorf("reading %s for %s: %w", f.Source, f.Path, err)
			}
		}
		mode := f.Mode
		if mode == 0 {
			mode = 0o755
		}
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: rel, Mode: mode, Size: int64(len(data)), ModTime: epoch, Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// WriteArchive builds every spec and writes them, each tagged with its Ref, as one
// docker-archive tarball to w.
func WriteArchive(w io.Writer, specs ...Spec) error {
	if len(specs) == 0 {
		return errors.New("no images to write")
	}
	refs := map[name.Reference]v1.Image{}
	seen := map[string]bool{}
	for _, s := range specs {
		if seen[s.Ref] {
			return fmt.Errorf("image %s is listed twice", s.Ref)
		}
		seen[s.Ref] = true
		img, err := Build(s)
		if err != nil {
			return fmt.Errorf("image %s: %w", s.Ref, err)
		}
		tag, err := name.NewTag(s.Ref, name.StrictValidation)
		if err != nil {
			return err
		}
		refs[tag] = img
	}
	return tarball.MultiRefWrite(refs, w)
}

// WriteArchiveFile is WriteArchive into the file at p, replaced atomically.
func WriteArchiveFile(p string, specs ...Spec) error {
	tmp, err := os.CreateTemp(filepath.Dir(p), ".image-*.tar")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := WriteArchive(tmp, specs...); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), p)
}
