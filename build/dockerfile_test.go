// Package build holds the Dockerfile of the project's images; its tests check, without a Docker
// engine, that the images would run as the chart and the injector expect.
package build_test

import (
	"bufio"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/metaparticle-io/sync/internal/testenv"
	"github.com/metaparticle-io/sync/webhook"
)

// stage is what a Dockerfile target sets for the final image.
type stage struct {
	user       string
	entrypoint string
	labels     string
}

func parseDockerfile(t *testing.T) map[string]stage {
	t.Helper()
	f, err := os.Open("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	stages := map[string]stage{}
	var name string
	var cur stage
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "FROM "):
			if name != "" {
				stages[name] = cur
			}
			name, cur = "", stage{}
			if i := strings.Index(line, " AS "); i > 0 {
				name = strings.TrimSpace(line[i+4:])
			}
		case strings.HasPrefix(line, "USER "):
			cur.user = strings.TrimSpace(strings.TrimPrefix(line, "USER "))
		case strings.HasPrefix(line, "ENTRYPOINT "):
			cur.entrypoint = strings.TrimSpace(strings.TrimPrefix(line, "ENTRYPOINT "))
		case strings.HasPrefix(line, "LABEL "), strings.HasPrefix(line, "org.opencontainers"):
			cur.labels += line
		}
	}
	if name != "" {
		stages[name] = cur
	}
	return stages
}

func TestImagesMatchChartAndInjector(t *testing.T) {
	stages := parseDockerfile(t)
	def := webhook.DefaultConfig("x")
	wantUser := strconv.FormatInt(def.RunAsUser, 10) + ":" + strconv.FormatInt(def.RunAsGroup, 10)

	root, err := testenv.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(root, "charts", "metaparticle-sync", "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var values struct {
		Sidecar struct {
			RunAsUser int64 `json:"runAsUser"`
		} `json:"sidecar"`
	}
	if err := yaml.Unmarshal(raw, &values); err != nil {
		t.Fatal(err)
	}
	if values.Sidecar.RunAsUser != def.RunAsUser {
		t.Errorf("got chart sidecar.runAsUser %d; want the injector default %d", values.Sidecar.RunAsUser, def.RunAsUser)
	}

	for target, binary := range map[string]string{
		"injector": "injector", "elector": "elector", "example-lock": "lock", "example-election": "election",
	} {
		s, ok := stages[target]
		if !ok {
			t.Errorf("got no Dockerfile target %q", target)
			continue
		}
		if s.user != wantUser {
			t.Errorf("%s: got USER %q; want %q (the injected securityContext)", target, s.user, wantUser)
		}
		if want := `["/` + binary + `"]`; s.entrypoint != want {
			t.Errorf("%s: got ENTRYPOINT %s; want %s", target, s.entrypoint, want)
		}
		for _, l := range []string{"org.opencontainers.image.title", "org.opencontainers.image.source", "org.opencontainers.image.licenses"} {
			if !strings.Contains(s.labels, l) {
				t.Errorf("%s: got no %s label", target, l)
			}
		}
	}
}

// TestBinariesAreStatic builds the images' binaries as the Dockerfile does and checks that they
// need no dynamic loader or shared library (distroless/static and scratch have none).
func TestBinariesAreStatic(t *testing.T) {
	if testing.Short() {
		t.Skip("builds every binary; not a unit test")
	}
	root, err := testenv.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	pkgs := []string{"./cmd/injector", "./cmd/elector", "./examples/lock", "./examples/election"}
	cmd := exec.Command("go", append([]string{"build", "-trimpath", "-ldflags=-s -w", "-o", out + "/"}, pkgs...)...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	for _, p := range pkgs {
		path := filepath.Join(out, filepath.Base(p))
		f, err := elf.Open(path)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP {
				t.Errorf("%s: got a PT_INTERP program header; want a static binary", p)
			}
		}
		if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
			t.Errorf("%s: got shared libraries %v; want none", p, libs)
		}
		f.Close()
	}
}

// TestImagesListMatchesDockerfile keeps the images the local cluster builds without Docker
// (hack/cluster/images.list, written by internal/image) the same as the Dockerfile's: same
// binary as entrypoint, same user.
func TestImagesListMatchesDockerfile(t *testing.T) {
	stages := parseDockerfile(t)
	root, err := testenv.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(root, "hack", "cluster", "images.list"))
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, line := range strings.Split(string(raw), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		name, pkg := f[0], f[1]
		user := "65532:65532"
		if len(f) > 2 {
			user = f[2]
		}
		target := strings.TrimPrefix(name, "sync-")
		s, ok := stages[target]
		if !ok {
			t.Errorf("images.list %s: got no Dockerfile target %q", name, target)
			continue
		}
		if want := `["/` + filepath.Base(pkg) + `"]`; s.entrypoint != want {
			t.Errorf("images.list %s: Dockerfile ENTRYPOINT %s; want %s", name, s.entrypoint, want)
		}
		if s.user != user {
			t.Errorf("images.list %s: user %q; Dockerfile USER %q", name, user, s.user)
		}
		seen++
	}
	if seen != 4 {
		t.Errorf("got %d images in images.list; want the 4 Dockerfile targets", seen)
	}
}
