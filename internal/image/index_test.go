package image

import (
	"context"
	"io"
	"log"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// platformSpecs is testSpec once per platform.
func platformSpecs(t *testing.T) []Spec {
	var specs []Spec
	for _, arch := range Platforms {
		s := testSpec(t)
		s.Arch = arch
		specs = append(specs, s)
	}
	return specs
}

// checkIndex checks that idx holds one OCI image per platform, each configured for its
// architecture.
func checkIndex(t *testing.T, idx v1.ImageIndex) {
	t.Helper()
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.MediaType != types.OCIImageIndex {
		t.Errorf("index media type: got %s; want %s", m.MediaType, types.OCIImageIndex)
	}
	if len(m.Manifests) != len(Platforms) {
		t.Fatalf("index manifests: got %d; want %d", len(m.Manifests), len(Platforms))
	}
	for i, d := range m.Manifests {
		if d.Platform == nil || d.Platform.OS != "linux" || d.Platform.Architecture != Platforms[i] {
			t.Errorf("manifest %d platform: got %+v; want linux/%s", i, d.Platform, Platforms[i])
		}
		img, err := idx.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cf.Architecture != Platforms[i] || cf.OS != "linux" || cf.Config.User != "65532:65532" {
			t.Errorf("manifest %d config: got %s/%s user %q; want linux/%s user 65532:65532", i, cf.OS, cf.Architecture, cf.Config.User, Platforms[i])
		}
		mt, err := img.MediaType()
		if err != nil {
			t.Fatal(err)
		}
		layers, err := img.Layers()
		if err != nil || len(layers) != 1 {
			t.Fatalf("manifest %d layers: got %d, %v; want 1", i, len(layers), err)
		}
		lt, err := layers[0].MediaType()
		if err != nil {
			t.Fatal(err)
		}
		if mt != types.OCIManifestSchema1 || lt != types.OCILayer {
			t.Errorf("manifest %d media types: got %s, layer %s; want %s, %s", i, mt, lt, types.OCIManifestSchema1, types.OCILayer)
		}
	}
}

func TestIndexThroughLayoutAndRegistry(t *testing.T) {
	specs := platformSpecs(t)
	idx, err := BuildIndex(specs...)
	if err != nil {
		t.Fatal(err)
	}
	checkIndex(t, idx)

	dir := filepath.Join(t.TempDir(), "probe")
	if err := WriteLayout(dir, specs[0].Ref, idx); err != nil {
		t.Fatal(err)
	}
	// Writing again replaces the layout rather than adding a second image to it.
	if err := WriteLayout(dir, specs[0].Ref, idx); err != nil {
		t.Fatal(err)
	}
	ref, read, err := ReadLayout(dir)
	if err != nil {
		t.Fatal(err)
	}
	if ref != specs[0].Ref {
		t.Errorf("layout name: got %s; want %s", ref, specs[0].Ref)
	}
	want, _ := idx.Digest()
	if got, _ := read.Digest(); got != want {
		t.Errorf("layout index digest: got %s; want %s", got, want)
	}

	// go-containerregistry's in-memory registry stands in for a real one here; the e2e run
	// pushes to CNCF Distribution.
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	to, err := Retarget(ref, u.Host+"/team")
	if err != nil {
		t.Fatal(err)
	}
	got, err := Push(context.Background(), to, read)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("pushed digest: got %s; want %s", got, want)
	}
	tag, err := name.NewTag(to)
	if err != nil {
		t.Fatal(err)
	}
	pulled, err := remote.Index(tag)
	if err != nil {
		t.Fatal(err)
	}
	checkIndex(t, pulled)
}

func TestBuildIndexRefusesBadSpecs(t *testing.T) {
	tests := []struct {
		name   string
		change func([]Spec) []Spec
		want   string
	}{
		{"no images", func([]Spec) []Spec { return nil }, "at least one image"},
		{"two references", func(s []Spec) []Spec { s[1].Ref = "docker.io/metaparticle/other:0.1.0"; return s }, "share a reference"},
		{"no architecture", func(s []Spec) []Spec { s[0].Arch = ""; return s }, "needs an architecture"},
		{"one architecture twice", func(s []Spec) []Spec { s[1].Arch = s[0].Arch; return s }, "listed twice"},
		{"an invalid image", func(s []Spec) []Spec { s[1].User = "nonroot"; return s }, "must be numeric"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := BuildIndex(tc.change(platformSpecs(t))...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v; want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestReadLayoutRefusesOtherDirectories(t *testing.T) {
	if _, _, err := ReadLayout(t.TempDir()); err == nil || !strings.Contains(err.Error(), "not an OCI image layout") {
		t.Errorf("empty directory: got %v; want an error saying it is not an OCI image layout", err)
	}
}

func TestRetarget(t *testing.T) {
	tests := []struct {
		ref, registry, want, err string
	}{
		{"docker.io/metaparticle/sync-elector:0.1.0", "ghcr.io/acme", "ghcr.io/acme/sync-elector:0.1.0", ""},
		{"docker.io/metaparticle/sync-elector:0.1.0", "127.0.0.1:12500/metaparticle/", "127.0.0.1:12500/metaparticle/sync-elector:0.1.0", ""},
		{"docker.io/metaparticle/sync-injector:dev", "registry.example.com", "registry.example.com/sync-injector:dev", ""},
		{"docker.io/metaparticle/sync-elector:0.1.0", "", "", "without a scheme"},
		{"docker.io/metaparticle/sync-elector:0.1.0", "https://ghcr.io/acme", "", "without a scheme"},
		{"docker.io/metaparticle/sync-elector:0.1.0", "ghcr.io/Acme", "", "registry"},
		{"sync-elector", "ghcr.io/acme", "", "full name with a tag"},
	}
	for _, tc := range tests {
		got, err := Retarget(tc.ref, tc.registry)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("Retarget(%q, %q): got %q, %v; want an error containing %q", tc.ref, tc.registry, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("Retarget(%q, %q): got %q, %v; want %q", tc.ref, tc.registry, got, err, tc.want)
		}
	}
}
