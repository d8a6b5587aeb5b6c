package product

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"

	"github.com/metaparticle-io/sync/e2e/product/internal/chaos"
	"github.com/metaparticle-io/sync/internal/contract"
)

// These tests need no cluster.

func TestArtifactDir(t *testing.T) {
	root := t.TempDir()
	t.Setenv(envArtifacts, root)
	dir, err := artifactDir(t)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(root, "TestArtifactDir"); dir != want {
		t.Errorf("with $%s: got %s; want %s", envArtifacts, dir, want)
	}
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		t.Errorf("got %v; want the directory created", err)
	}
	t.Setenv(envArtifacts, "")
	if flagSet("test.artifacts") {
		t.Skip("go test -artifacts: the default is t.ArtifactDir()")
	}
	dir, err = artifactDir(t)
	if err != nil {
		t.Fatal(err)
	}
	// Only this test's directory: the run's other tests keep theirs there.
	defer os.Remove(artifactsRun)
	defer os.RemoveAll(dir)
	if want := filepath.Join(artifactsRun, "TestArtifactDir"); dir != want || !strings.HasPrefix(dir, os.TempDir()) {
		t.Errorf("without $%s: got %s; want %s under %s", envArtifacts, dir, want, os.TempDir())
	}
}

func lockLease(holder string, token string) *coordinationv1.Lease {
	l := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: "lock-chaos", Namespace: "ns",
			Labels:      map[string]string{contract.LabelManagedBy: contract.ManagedByValue, contract.LabelKind: "lock"},
			Annotations: map[string]string{contract.AnnotationName: "chaos", contract.AnnotationToken: token}},
	}
	if holder != "" {
		l.Spec.HolderIdentity = ptr.To(holder)
		l.Spec.AcquireTime = &metav1.MicroTime{Time: time.Date(2026, 11, 26, 8, 0, 0, 0, time.UTC)}
	}
	return l
}

// TestLeaseWatch: every change of holder or token is recorded once, renewals are not, and the
// watch lists and watches again after its channel closes.
func TestLeaseWatch(t *testing.T) {
	cs := fake.NewClientset(lockLease("chaos-a/s1", "5"))
	var closed atomic.Bool
	cs.PrependWatchReactor("leases", func(k8stesting.Action) (bool, watch.Interface, error) {
		if closed.CompareAndSwap(false, true) {
			w := watch.NewFake() // the first watch ends at once, as after an API server restart
			w.Stop()
			return true, w, nil
		}
		return false, nil, nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lw := watchLeases(ctx, cs, "ns")
	leases := cs.CoordinationV1().Leases("ns")
	waitFor := func(n int) []chaos.LeaseChange {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			changes, _ := lw.snapshot()
			if len(changes) >= n || time.Now().After(deadline) {
				return changes
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitFor(1)
	// The watch may start after the list: update until it sees the change.
	update := func(l *coordinationv1.Lease, n int) {
		t.Helper()
		for range 100 {
			cur, err := leases.Get(ctx, l.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			l.ResourceVersion = cur.ResourceVersion
			if _, err := leases.Update(ctx, l, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
			if changes, _ := lw.snapshot(); len(changes) >= n {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	renewed := lockLease("chaos-a/s1", "5")
	renewed.Spec.RenewTime = &metav1.MicroTime{Time: time.Now()}
	if _, err := leases.Update(ctx, renewed, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	update(lockLease("", "5"), 2)
	update(lockLease("chaos-b/s2", "7"), 3)
	changes := waitFor(3)
	var got []string
	for _, c := range changes {
		got = append(got, c.Holder+"@"+strconv.FormatUint(c.Token, 10))
	}
	if want := []string{"chaos-a/s1@5", "@5", "chaos-b/s2@7"}; !slices.Equal(got, want) {
		t.Errorf("changes: got %q; want %q", got, want)
	}
	if _, restarts := lw.snapshot(); restarts < 1 {
		t.Errorf("restarts: got %d; want at least 1 after the first watch closed", restarts)
	}
	if len(changes) > 0 && (changes[0].Lease != "lock-chaos" || changes[0].Acquired.IsZero() || changes[0].Seen.IsZero() || changes[0].Session() != "s1" || changes[0].Pod() != "chaos-a") {
		t.Errorf("first change: got %+v; want Lease lock-chaos, acquire and seen times, Pod chaos-a, session s1", changes[0])
	}
}

// TestWriteHistory: the artifacts are the history, which reads back, and two self-contained
// pages.
func TestWriteHistory(t *testing.T) {
	t0 := time.Date(2026, 11, 26, 8, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	h := &chaos.History{Version: chaos.HistoryVersion, Start: t0, End: at(100), Faults: []chaos.Fault{{Kind: faultKillApp, Pod: "b", Start: at(50), End: at(51)}}, Leases: []chaos.LeaseChange{},
		Ops: []chaos.Op{
			{ID: 0, Kind: chaos.KindGrant, Hold: "a/1/0", Pod: "a", Token: 5, Start: at(0), End: at(1), Result: chaos.ResultAccepted},
			{ID: 1, Kind: chaos.KindWrite, Hold: "a/1/0", Pod: "a", Token: 5, Start: at(20), End: at(21), Result: chaos.ResultAccepted},
			{ID: 2, Kind: chaos.KindEnd, Hold: "a/1/0", Pod: "a", Token: 5, Start: at(21), End: at(22), Result: chaos.ResultDone},
			{ID: 3, Kind: chaos.KindRelease, Hold: "a/1/0", Pod: "a", Token: 5, Start: at(23), End: at(24), Result: chaos.ResultReleased},
			{ID: 4, Kind: chaos.KindGrant, Hold: "b/1/0", Pod: "b", Token: 7, Start: at(30), End: at(31), Result: chaos.ResultAccepted},
		}}
	v := chaos.Check(h, chaos.CheckOptions{})
	if v.Failed() {
		t.Fatalf("check: got %q; want no violations", v.Violations)
	}
	paths, drawn, err := writeHistory(t.TempDir(), h, v)
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) != 3 || !strings.Contains(drawn, "all 3 grants and writes") {
		t.Fatalf("got %q, %q; want three files and all operations drawn", paths, drawn)
	}
	back, err := chaos.ReadHistoryFile(paths[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(back.Ops) != 5 || back.Faults[0] != h.Faults[0] {
		t.Errorf("read back: got %+v; want %+v", back, h)
	}
	for _, p := range paths[1:] {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(string(b), "<!doctype html>") || strings.Contains(string(b), "src=") {
			t.Errorf("%s: got %.60q…; want a self-contained HTML page", p, b)
		}
	}
}
