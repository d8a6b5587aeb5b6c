package image

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func testSpec(t *testing.T) Spec {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "probe")
	if err := os.WriteFile(bin, []byte("#!/not/really/a/binary\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return Spec{
		Ref:        "docker.io/metaparticle/test-probe:0.1.0",
		Files:      []File{{Path: "/usr/bin/probe", Source: bin}, {Path: "/etc/probe.conf", Data: []byte("x=1\n"), Mode: 0o600}},
		User:       "65532:65532",
		Entrypoint: []string{"/usr/bin/probe"},
		Cmd:        []string{"serve"},
		Env:        []string{"MODE=test"},
		Labels:     map[string]string{"org.opencontainers.image.source": "https://github.com/metaparticle-io/sync"},
		Arch:       "amd64",
	}
}

// readTar returns the files of an uncompressed layer: path → header, and regular file contents.
func readTar(t *testing.T, r io.Reader) (map[string]*tar.Header, map[string]string) {
	t.Helper()
	hdrs, data := map[string]*tar.Header{}, map[string]string{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return hdrs, data
		}
		if err != nil {
			t.Fatal(err)
		}
		hdrs[h.Name] = h
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			data[h.Name] = string(b)
		}
	}
}

func TestArchiveRoundTrip(t *testing.T) {
	spec := testSpec(t)
	out := filepath.Join(t.TempDir(), "img.tar")
	if err := WriteArchiveFile(out, spec); err != nil {
		t.Fatal(err)
	}

	// The archive's manifest.json carries the reference exactly as given, which is what
	// `ctr images import` names the image after.
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, files := readTar(t, f)
	var manifest []struct{ RepoTags []string }
	if err := json.Unmarshal([]byte(files["manifest.json"]), &manifest); err != nil {
		t.Fatalf("manifest.json: %v", err)
	}
	if len(manifest) != 1 || !reflect.DeepEqual(manifest[0].RepoTags, []string{spec.Ref}) {
		t.Fatalf("manifest.json = %+v, want one image tagged %s", manifest, spec.Ref)
	}

	tag, err := name.NewTag(spec.Ref)
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(out, &tag)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != "amd64" {
		t.Errorf("platform = %s/%s, want linux/amd64", cf.OS, cf.Architecture)
	}
	c := cf.Config
	if c.User != "65532:65532" || !reflect.DeepEqual(c.Entrypoint, spec.Entrypoint) || !reflect.DeepEqual(c.Cmd, spec.Cmd) {
		t.Errorf("config user/entrypoint/cmd = %q %q %q", c.User, c.Entrypoint, c.Cmd)
	}
	if !reflect.DeepEqual(c.Env, []string{"PATH=/", "MODE=test"}) || c.WorkingDir != "/" {
		t.Errorf("config env/workdir = %q %q", c.Env, c.WorkingDir)
	}
	if c.Labels["org.opencontainers.image.source"] == "" {
		t.Errorf("labels = %v", c.Labels)
	}

	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("%d layers, want 1", len(layers))
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	hdrs, data := readTar(t, rc)
	if got := data["usr/bin/probe"]; got != "#!/not/really/a/binary\n" {
		t.Errorf("usr/bin/probe = %q", got)
	}
	if h := hdrs["usr/bin/probe"]; h.Mode != 0o755 || h.Uid != 0 || h.Gid != 0 {
		t.Errorf("usr/bin/probe mode %o owner %d:%d, want 755 0:0", h.Mode, h.Uid, h.Gid)
	}
	if h := hdrs["etc/probe.conf"]; h == nil || h.Mode != 0o600 {
		t.Errorf("etc/probe.conf header = %+v, want mode 600", h)
	}
	for _, dir := range []string{"usr/", "usr/bin/", "etc/", "tmp/"} {
		if h := hdrs[dir]; h == nil || h.Typeflag != tar.TypeDir {
			t.Errorf("directory %s missing from the layer", dir)
		}
	}
	if hdrs["tmp/"].Mode != 0o1777 {
		t.Errorf("/tmp mode %o, want 1777", hdrs["tmp/"].Mode)
	}
	if !strings.Contains(data["etc/passwd"], "nonroot:x:65532:65532:") {
		t.Errorf("etc/passwd lacks the nonroot user:\n%s", data["etc/passwd"])
	}
}

func TestBuildIsReproducible(t *testing.T) {
	spec := testSpec(t)
	a, err := Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	da, err := a.Digest()
	if err != nil {
		t.Fatal(err)
	}
	db, err := b.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if da != db {
		t.Errorf("two builds of the same spec differ: %s and %s", da, db)
	}
	spec.User = "0"
	c, err := Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	if dc, _ := c.Digest(); dc == da {
		t.Errorf("changing the user did not change the digest %s", da)
	}
}

func TestMultipleImagesInOneArchive(t *testing.T) {
	nonRoot := testSpec(t)
	root := nonRoot
	root.Ref = "docker.io/metaparticle/test-probe-root:0.1.0"
	root.User = ""
	out := filepath.Join(t.TempDir(), "img.tar")
	if err := WriteArchiveFile(out, nonRoot, root); err != nil {
		t.Fatal(err)
	}
	for ref, user := range map[string]string{nonRoot.Ref: "65532:65532", root.Ref: ""} {
		tag, err := name.NewTag(ref)
		if err != nil {
			t.Fatal(err)
		}
		img, err := tarball.ImageFromPath(out, &tag)
		if err != nil {
			t.Fatalf("%s: %v", ref, err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cf.Config.User != user {
			t.Errorf("%s: user %q, want %q", ref, cf.Config.User, user)
		}
	}
	if err := WriteArchiveFile(out, nonRoot, nonRoot); err == nil {
		t.Error("the same reference twice was accepted")
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*Spec)
		want   string
	}{
		{"short reference", func(s *Spec) { s.Ref = "metaparticle/x:1" }, "full name"},
		{"no tag", func(s *Spec) { s.Ref = "docker.io/metaparticle/x" }, "full name"},
		{"relative path", func(s *Spec) { s.Files[0].Path = "usr/bin/probe" }, "absolute and clean"},
		{"unclean path", func(s *Spec) { s.Files[0].Path = "/usr/../bin/probe" }, "absolute and clean"},
		{"duplicate file", func(s *Spec) { s.Files[1].Path = s.Files[0].Path }, "listed twice"},
		{"mode with type bits", func(s *Spec) { s.Files[0].Mode = 0o100755 }, "permission bits"},
		{"no entrypoint", func(s *Spec) { s.Entrypoint, s.Cmd = nil, nil }, "entrypoint"},
		{"user name", func(s *Spec) { s.User = "nonroot" }, "numeric"},
		{"group name", func(s *Spec) { s.User = "65532:nonroot" }, "numeric"},
		{"bad env", func(s *Spec) { s.Env = []string{"NOVALUE"} }, "NAME=value"},
		{"no files", func(s *Spec) { s.Files = nil }, "at least one file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := testSpec(t)
			s.Files = append([]File(nil), s.Files...)
			tc.change(&s)
			err := s.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate() = %v, want an error containing %q", err, tc.want)
			}
			if _, err := Build(s); err == nil {
				t.Fatal("Build accepted an invalid spec")
			}
		})
	}
	if err := testSpec(t).Validate(); err != nil {
		t.Fatalf("valid spec rejected: %v", err)
	}
}

func TestFileAndDirectoryConflict(t *testing.T) {
	s := testSpec(t)
	s.Files = append(s.Files, File{Path: "/usr/bin", Data: []byte("x")})
	if _, err := Build(s); err == nil || !strings.Contains(err.Error(), "both a file and a directory") {
		t.Fatalf("Build = %v, want a file/directory conflict", err)
	}
}

func TestMissingSource(t *testing.T) {
	s := testSpec(t)
	s.Files = []File{{Path: "/x", Source: filepath.Join(t.TempDir(), "missing")}}
	if _, err := Build(s); err == nil || !strings.Contains(err.Error(), "reading") {
		t.Fatalf("Build = %v, want a read error", err)
	}
}
