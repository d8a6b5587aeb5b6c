package image

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Platforms are the architectures the project's images are published for (all linux).
var Platforms = []string{"amd64", "arm64"}

// refNameAnnotation names an image in an OCI image layout's index.json.
const refNameAnnotation = "org.opencontainers.image.ref.name"

// BuildIndex builds every spec, one per platform, and joins them in one OCI image index. The
// specs must share their Ref and differ in Arch: a runtime picks the manifest of its own
// architecture.
func BuildIndex(specs ...Spec) (v1.ImageIndex, error) {
	if len(specs) == 0 {
		return nil, errors.New("an index needs at least one image")
	}
	seen := map[string]bool{}
	var adds []mutate.IndexAddendum
	for _, s := range specs {
		if s.Ref != specs[0].Ref {
			return nil, fmt.Errorf("the images of one index must share a reference: %s and %s", specs[0].Ref, s.Ref)
		}
		if s.Arch == "" {
			return nil, fmt.Errorf("image %s: an image in an index needs an architecture", s.Ref)
		}
		if seen[s.Arch] {
			return nil, fmt.Errorf("image %s: architecture %s is listed twice", s.Ref, s.Arch)
		}
		seen[s.Arch] = true
		img, err := build(s, true)
		if err != nil {
			return nil, fmt.Errorf("image %s for %s: %w", s.Ref, s.Arch, err)
		}
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{
			Platform: &v1.Platform{OS: "linux", Architecture: s.Arch},
		}})
	}
	return mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), adds...), nil
}

// WriteLayout writes idx as the only image of a new OCI image layout at dir, named ref (the
// org.opencontainers.image.ref.name annotation). The layout is written beside dir first, then
// replaces whatever was at dir.
func WriteLayout(dir, ref string, idx v1.ImageIndex) error {
	if _, err := name.NewTag(ref, name.StrictValidation); err != nil {
		return fmt.Errorf("image reference %q must be a full name with a tag: %w", ref, err)
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".layout-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	p, err := layout.Write(tmp, empty.Index)
	if err != nil {
		return err
	}
	if err := p.AppendIndex(idx, layout.WithAnnotations(map[string]string{refNameAnnotation: ref})); err != nil {
		return fmt.Errorf("writing %s: %w", ref, err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	return os.Rename(tmp, dir)
}

// ReadLayout returns the name and the index of the image that WriteLayout wrote at dir.
func ReadLayout(dir string) (string, v1.ImageIndex, error) {
	p, err := layout.FromPath(dir)
	if err != nil {
		return "", nil, fmt.Errorf("%s is not an OCI image layout: %w", dir, err)
	}
	top, err := p.ImageIndex()
	if err != nil {
		return "", nil, err
	}
	m, err := top.IndexManifest()
	if err != nil {
		return "", nil, err
	}
	if len(m.Manifests) != 1 || m.Manifests[0].Annotations[refNameAnnotation] == "" || m.Manifests[0].MediaType != types.OCIImageIndex {
		return "", nil, fmt.Errorf("%s: want exactly one named image index (as make images writes)", dir)
	}
	d := m.Manifests[0]
	idx, err := top.ImageIndex(d.Digest)
	if err != nil {
		return "", nil, err
	}
	return d.Annotations[refNameAnnotation], idx, nil
}
