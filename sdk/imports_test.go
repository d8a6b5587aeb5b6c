package sdk_test

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// allowedImports are the only packages outside the standard library that the SDK may depend on:
// an application that imports the SDK must not pull in Kubernetes, controller-runtime or the
// side-car's implementation.
var allowedImports = map[string]bool{
	"github.com/metaparticle-io/sync/sdk":  true,
	"github.com/metaparticle-io/sync/wire": true,
}

// TestImportRule lists the transitive dependencies of the SDK and of its examples (not of their
// tests) with the go command and fails on any that is neither standard nor allowed.
func TestImportRule(t *testing.T) {
	// go test puts its own go command first on PATH.
	goCmd := "go"
	for _, pkg := range []string{
		"github.com/metaparticle-io/sync/sdk",
		"github.com/metaparticle-io/sync/examples/lock",
		"github.com/metaparticle-io/sync/examples/election",
	} {
		t.Run(filepath.Base(pkg), func(t *testing.T) {
			out, err := exec.Command(goCmd, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", pkg).CombinedOutput()
			if err != nil {
				t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
			}
			var deps []string
			for _, dep := range strings.Fields(string(out)) {
				if dep == pkg {
					continue
				}
				deps = append(deps, dep)
				if !allowedImports[dep] {
					t.Errorf("%s depends on %s; want only the standard library and %v", pkg, dep, keys(allowedImports))
				}
			}
			if len(deps) == 0 {
				t.Errorf("got no dependencies of %s outside the standard library; want at least the wire package (is go list working?)", pkg)
			}
		})
	}
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
