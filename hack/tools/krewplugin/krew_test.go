package main

import (
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/metaparticle-io/sync/internal/testenv"
	"github.com/metaparticle-io/sync/internal/version"
)

// TestKrewInstall: make plugin packages kubectl-sync for this machine's platform, krew's own
// validate-krew-manifest accepts the manifest and installs it, and kubectl runs the plugin that
// krew installed, as `kubectl sync`. The archives are served on 127.0.0.1, where the manifest's
// URI points. It needs krew and validate-krew-manifest in $KREW_TOOLS (make krew-tools) and
// kubectl (make control-plane): make integration provides both.
func TestKrewInstall(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the plugin and runs krew")
	}
	tools := os.Getenv("KREW_TOOLS")
	if tools == "" {
		t.Fatal("$KREW_TOOLS is not set: run make krew-tools and set it to the directory make prints (make integration does)")
	}
	assets, err := testenv.AssetsDir()
	if err != nil {
		t.Fatal(err)
	}
	root, err := testenv.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	out := filepath.Join(tmp, "bin", "plugin")
	srv := httptest.NewServer(http.FileServer(http.Dir(out)))
	defer srv.Close()

	platform := runtime.GOOS + "/" + runtime.GOARCH
	mk := exec.Command("make", "--no-print-directory", "-C", root, "plugin",
		"BIN="+filepath.Join(tmp, "bin"), "PLUGIN_PLATFORMS="+platform, "PLUGIN_URI="+srv.URL)
	if b, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("make plugin: %v\n%s", err, b)
	}
	manifest := filepath.Join(out, "sync.yaml")
	raw, err := os.ReadFile(manifest)
	if err != nil {
		t.Fatal(err)
	}
	var p plugin
	if err := yaml.UnmarshalStrict(raw, &p); err != nil {
		t.Fatalf("sync.yaml: %v", err)
	}
	if p.Spec.Version != "v"+version.Version || len(p.Spec.Platforms) != 1 || p.Spec.Platforms[0].URI != srv.URL+"/kubectl-sync_"+runtime.GOOS+"_"+runtime.GOARCH+".tar.gz" {
		t.Fatalf("got version %q, platforms %+v; want v%s and one platform under %s", p.Spec.Version, p.Spec.Platforms, version.Version, srv.URL)
	}

	// kubectl finds krew as the plugin kubectl-krew on PATH.
	pathDir := filepath.Join(tmp, "path")
	if err := os.MkdirAll(pathDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(tools, "krew"), filepath.Join(pathDir, "kubectl-krew")); err != nil {
		t.Fatal(err)
	}
	krewRoot := filepath.Join(tmp, "krew")
	path := strings.Join([]string{filepath.Join(krewRoot, "bin"), pathDir, assets, os.Getenv("PATH")}, string(os.PathListSeparator))
	env := []string{"PATH=" + path, "HOME=" + tmp, "KREW_ROOT=" + krewRoot, "KREW_NO_UPGRADE_CHECK=1"}
	run := func(name string, args ...string) string {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Env = env
		b, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, b)
		}
		return string(b)
	}

	// krew's validator: the manifest's schema and platform selectors, and an install of each
	// platform (downloaded from the URI, checked against its SHA-256, LICENSE extracted).
	t.Logf("validate-krew-manifest: %s", run(filepath.Join(tools, "validate-krew-manifest"), "-manifest", manifest))

	run("kubectl", "krew", "install", "--manifest="+manifest)
	// (kubectl krew list needs the index, which is on GitHub: read krew's receipt instead.)
	if _, err := os.Stat(filepath.Join(krewRoot, "receipts", "sync.yaml")); err != nil {
		t.Errorf("krew has no receipt of the plugin sync: %v", err)
	}
	got := run("kubectl", "sync", "version", "--client")
	if want := "Client: kubectl sync " + version.Version + "\n"; got != want {
		t.Errorf("kubectl sync version --client: got %q; want %q", got, want)
	}
	if _, err := os.Stat(filepath.Join(krewRoot, "store", "sync", "v"+version.Version, "LICENSE")); err != nil {
		t.Errorf("the installed plugin has no LICENSE: %v", err)
	}
}
