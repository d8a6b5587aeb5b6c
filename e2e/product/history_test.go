package product

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/metaparticle-io/sync/e2e/product/internal/chaos"
	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/wire"
)

// envArtifacts names the directory under which the e2e tests keep their artifacts (the chaos
// run's history), one subdirectory per test.
const envArtifacts = "METAPARTICLE_E2E_ARTIFACTS"

// artifactsRun is the default artifacts directory of this test binary:
// $TMPDIR/metaparticle-sync-e2e-artifacts.<start time>, next to the cluster's logs that
// hack/cluster/test.sh keeps in /tmp after a failure.
var artifactsRun = filepath.Join(os.TempDir(), "metaparticle-sync-e2e-artifacts."+time.Now().Format("20060102-150405"))

// artifactDir returns the directory, created, in which t keeps files that outlive the test:
// $METAPARTICLE_E2E_ARTIFACTS/<test> if that is set, else go test -artifacts's t.ArtifactDir(),
// else <artifactsRun>/<test>.
func artifactDir(t *testing.T) (string, error) {
	dir := ""
	switch root := os.Getenv(envArtifacts); {
	case root != "":
		dir = filepath.Join(root, t.Name())
	case flagSet("test.artifacts"):
		return t.ArtifactDir(), nil
	default:
		dir = filepath.Join(artifactsRun, t.Name())
	}
	return dir, os.MkdirAll(dir, 0o755)
}

func flagSet(name string) bool {
	f := flag.Lookup(name)
	return f != nil && f.Value.String() == "true"
}

// leaseWatch records every change of holder or fencing token of the lock Leases in a namespace,
// as a chaos.LeaseChange: the history takes its holds' sessions from them. It lists and watches
// again after every error (the chaos run restarts the API server), so it misses only the changes
// that came and went while it could not watch.
type leaseWatch struct {
	mu      sync.Mutex
	changes []chaos.LeaseChange
	last    map[string]chaos.LeaseChange // by Lease name
	// restarts counts the lists and watches begun again after an error or a closed watch.
	restarts int
}

func watchLeases(ctx context.Context, cs kubernetes.Interface, ns string) *leaseWatch {
	lw := &leaseWatch{last: map[string]chaos.LeaseChange{}}
	go lw.run(ctx, cs, ns)
	return lw
}

func (lw *leaseWatch) run(ctx context.Context, cs kubernetes.Interface, ns string) {
	sel := labels.Set{contract.LabelManagedBy: contract.ManagedByValue, contract.LabelKind: string(wire.KindLock)}.String()
	leases := cs.CoordinationV1().Leases(ns)
	for ctx.Err() == nil {
		list, err := leases.List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err == nil {
			for i := range list.Items {
				lw.seen(&list.Items[i])
			}
			w, err := leases.Watch(ctx, metav1.ListOptions{LabelSelector: sel, ResourceVersion: list.ResourceVersion})
			if err == nil {
				for ev := range w.ResultChan() {
					if l, ok := ev.Object.(*coordinationv1.Lease); ok {
						lw.seen(l)
					}
				}
				w.Stop()
			}
		}
		if ctx.Err() == nil {
			lw.mu.Lock()
			lw.restarts++
			lw.mu.Unlock()
		}
		select {
		case <-ctx.Done():
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (lw *leaseWatch) seen(l *coordinationv1.Lease) {
	token, _ := strconv.ParseUint(l.Annotations[contract.AnnotationToken], 10, 64)
	c := chaos.LeaseChange{Seen: time.Now().UTC(), Lease: l.Name, Holder: ptr.Deref(l.Spec.HolderIdentity, ""), Token: token}
	if l.Spec.AcquireTime != nil {
		c.Acquired = l.Spec.AcquireTime.UTC()
	}
	lw.mu.Lock()
	defer lw.mu.Unlock()
	if last, ok := lw.last[l.Name]; ok && last.Holder == c.Holder && last.Token == c.Token {
		return
	}
	lw.last[l.Name] = c
	lw.changes = append(lw.changes, c)
}

// snapshot returns the changes so far and how many times the watch was restarted.
func (lw *leaseWatch) snapshot() ([]chaos.LeaseChange, int) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	return append([]chaos.LeaseChange{}, lw.changes...), lw.restarts
}

// chaosHistory gathers the chaos run's history: the register's operations, the faults, the Lease
// changes, with sessions assigned.
func chaosHistory(start time.Time, reg *chaos.Register, f *faulter, lw *leaseWatch) *chaos.History {
	h := reg.History()
	h.Start = start.UTC()
	h.LeaseDuration, h.RenewDeadline = chaos.Duration(chaosLeaseDuration), chaos.Duration(chaosRenewDeadline)
	h.Faults = f.history()
	h.Leases, _ = lw.snapshot()
	h.AssignSessions()
	return h
}

// writeHistory writes the history's artifacts into dir: history.json, history.html (its
// rendering) and porcupine.html (porcupine's view of the linearizability check), and returns
// their paths.
func writeHistory(dir string, h *chaos.History, v *chaos.Verdict) ([]string, string, error) {
	jsonPath, htmlPath, porcPath := filepath.Join(dir, "history.json"), filepath.Join(dir, "history.html"), filepath.Join(dir, "porcupine.html")
	if err := h.WriteFile(jsonPath); err != nil {
		return nil, "", err
	}
	if err := writeFile(htmlPath, func(f *os.File) error {
		return chaos.RenderHTML(f, h, v, chaos.RenderOptions{Title: "TestChaosSafety " + h.Start.Format(time.RFC3339)})
	}); err != nil {
		return nil, "", err
	}
	var drawn string
	if err := writeFile(porcPath, func(f *os.File) (err error) {
		drawn, err = v.WritePorcupineHTML(f, chaos.PorcupineHTMLMaxOps)
		return err
	}); err != nil {
		return nil, "", err
	}
	return []string{jsonPath, htmlPath, porcPath}, drawn, nil
}

func writeFile(path string, write func(*os.File) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", path, err)
	}
	return f.Close()
}
