package version_test

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/metaparticle-io/sync/internal/testenv"
	"github.com/metaparticle-io/sync/internal/version"
)

func TestVersionIsTheChartsAppVersion(t *testing.T) {
	root, err := testenv.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "charts", "metaparticle-sync", "Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^appVersion:\s*"?([^"\s]+)"?\s*$`).FindSubmatch(b)
	if m == nil {
		t.Fatal("Chart.yaml has no appVersion")
	}
	if got := string(m[1]); got != version.Version {
		t.Errorf("got Chart.yaml appVersion %s; want version.Version %s (change both together)", got, version.Version)
	}
}
