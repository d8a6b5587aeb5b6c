package syncctl

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestSyncctlLinksNoSidecar keeps syncctl a small, read-only client: it takes the Lease names,
// labels and annotations from package internal/contract (standard library only), never from the
// side-car (package elector), whose engine would link the Prometheus client and client-go's
// informers (tools/cache, which log through klog) into the command line.
func TestSyncctlLinksNoSidecar(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	const cmd = "github.com/metaparticle-io/sync/cmd/syncctl"
	out, err := exec.Command("go", "list", "-deps", cmd).CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	forbidden := []struct{ pkg, why string }{
		{"github.com/metaparticle-io/sync/elector", "the side-car; use internal/contract"},
		{"github.com/prometheus/client_golang", "the Prometheus client, which only the side-car needs"},
		{"k8s.io/client-go/tools/cache", "client-go's informers; syncctl lists and watches directly"},
		{"k8s.io/client-go/informers", "client-go's informer factories; syncctl lists and watches directly"},
		{"k8s.io/cli-runtime", "kubectl's resource builder, which links kustomize; clientcmd binds kubectl's flags"},
		{"sigs.k8s.io/kustomize", "kustomize, which a read-only CLI never runs"},
		{"github.com/metaparticle-io/sync/webhook", "the injector; syncctl check shares internal/contract and internal/leaseaccess with it"},
		{"sigs.k8s.io/controller-runtime", "controller-runtime, which only the injector needs"},
	}
	deps := strings.Fields(string(out))
	if len(deps) == 0 || deps[len(deps)-1] != cmd {
		t.Fatalf("go list -deps %s printed %q; want its dependencies, ending with the command", cmd, out)
	}
	for _, f := range forbidden {
		var got []string
		for _, dep := range deps {
			if dep == f.pkg || strings.HasPrefix(dep, f.pkg+"/") {
				got = append(got, dep)
			}
		}
		if len(got) > 0 {
			t.Errorf("got %s depending on %s (%s); want none of %s/...", cmd, strings.Join(got, ", "), f.why, f.pkg)
		}
	}
}

// TestSyncctlKeepsDeadCodeElimination keeps syncctl small: when the linker sees a method called
// by a name known only at run time (text/template's evalField, reached through a custom cobra
// usage or help template), it must keep every exported method of every type in the binary,
// which made it 47 MB instead of 28 MB (stripped). The linker marks such a function
// <ReflectMethod> in its -dumpdep output.
func TestSyncctlKeepsDeadCodeElimination(t *testing.T) {
	if testing.Short() {
		t.Skip("links the command")
	}
	out, err := exec.Command("go", "build", "-ldflags=-dumpdep", "-o", os.DevNull, "github.com/metaparticle-io/sync/cmd/syncctl").CombinedOutput()
	if err != nil {
		t.Fatalf("go build -ldflags=-dumpdep: %v\n%.2000s", err, out)
	}
	var marked []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "<ReflectMethod>") {
			marked = append(marked, line)
		}
	}
	if len(marked) > 0 {
		t.Errorf("got %d dependencies marked <ReflectMethod>, e.g. %q; want none (a method looked up by name at run time keeps every exported method in the binary)", len(marked), marked[0])
	}
}
