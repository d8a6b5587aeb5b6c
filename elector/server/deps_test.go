package server

import (
	"os/exec"
	"strings"
	"testing"
)

// TestSidecarImportsNoTypedClientset keeps the side-car's footprint small: client-go's typed
// clientset registers every built-in API type (about 11 MiB of resident memory); the side-car
// needs Leases only (leaseclient.go).
func TestSidecarImportsNoTypedClientset(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	out, err := exec.Command("go", "list", "-deps", "github.com/metaparticle-io/sync/cmd/elector").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: got %v\n%s; want the dependencies", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.HasPrefix(dep, "k8s.io/client-go/kubernetes") {
			t.Errorf("got cmd/elector depending on %s; want only the Lease client", dep)
		}
	}
}
