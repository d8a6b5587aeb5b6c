package syncctl

import (
	"bufio"
	"context"
	"io"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	"github.com/metaparticle-io/sync/wire"
)

// fakeLeases is a fake API server for the watch loop: every Watch gets a new FakeWatcher that the
// test drives, and every List answers the next list of lists.
type fakeLeases struct {
	cs       *fake.Clientset
	watchers chan *watch.FakeWatcher
	watchRVs chan string
	lists    chan *coordinationv1.LeaseList
}

func newFakeLeases(t *testing.T) *fakeLeases {
	f := &fakeLeases{
		cs:       fake.NewClientset(),
		watchers: make(chan *watch.FakeWatcher, 1),
		watchRVs: make(chan string, 1),
		lists:    make(chan *coordinationv1.LeaseList, 1),
	}
	f.cs.PrependWatchReactor("leases", func(a k8stesting.Action) (bool, watch.Interface, error) {
		w := watch.NewFake()
		f.watchRVs <- a.(k8stesting.WatchActionImpl).WatchRestrictions.ResourceVersion
		f.watchers <- w
		return true, w, nil
	})
	f.cs.PrependReactor("list", "leases", func(k8stesting.Action) (bool, runtime.Object, error) {
		select {
		case l := <-f.lists:
			return true, l, nil
		default:
			t.Error("unexpected List")
			return true, nil, io.ErrUnexpectedEOF
		}
	})
	// Anything else is a bug of the CLI: it only reads.
	f.cs.PrependReactor("*", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if v := a.GetVerb(); v != "list" && v != "watch" {
			t.Errorf("unexpected %s of %s", v, a.GetResource().Resource)
		}
		return false, nil, nil
	})
	return f
}

// next returns the next watch the CLI opens and checks the resourceVersion it starts from.
func (f *fakeLeases) next(t *testing.T, wantRV string) *watch.FakeWatcher {
	t.Helper()
	select {
	case rv := <-f.watchRVs:
		if rv != wantRV {
			t.Errorf("watch from resourceVersion %q; want %q", rv, wantRV)
		}
	case <-time.After(bound):
		t.Fatalf("no watch from resourceVersion %s within %s", wantRV, bound)
	}
	return <-f.watchers
}

// bound ends a test that would otherwise hang on a bug; it is no threshold of speed.
const bound = time.Minute

func withRV(l *coordinationv1.Lease, rv string) *coordinationv1.Lease {
	l = l.DeepCopy()
	l.ResourceVersion = rv
	return l
}

func leaseList(rv string, leases ...*coordinationv1.Lease) *coordinationv1.LeaseList {
	l := &coordinationv1.LeaseList{ListMeta: metav1.ListMeta{ResourceVersion: rv}}
	for _, x := range leases {
		l.Items = append(l.Items, *x)
	}
	return l
}

// tables collects the tables printed by the watch, one slice of rows (without header) each.
func tables(r io.Reader) <-chan []string {
	out := make(chan []string, 16)
	go func() {
		defer close(out)
		sc := bufio.NewScanner(r)
		var rows []string
		for sc.Scan() {
			switch line := sc.Text(); {
			case strings.HasPrefix(line, "NAME "):
				rows = nil
			case line == "":
				out <- rows
			default:
				rows = append(rows, strings.Join(strings.Fields(line), " "))
			}
		}
		out <- rows
	}()
	return out
}

// TestWatchLoop drives the watch loop through a fake API server: a renewal does not reprint, a
// change of holder does, a watch closed by the server is resumed from the last resourceVersion,
// 410 Gone makes it list again, another error ends it with that error, and the end of ctx ends it
// without one.
func TestWatchLoop(t *testing.T) {
	f := newFakeLeases(t)
	clk := clocktesting.NewFakeClock(now)
	pr, pw := io.Pipe()
	c := newCLI("syncctl", pw, io.Discard, clk)
	got := tables(pr)

	a := lease(wire.KindLock, "ns", "a", heldBy("p-0/"+session, "1", time.Minute, 0))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		errc <- c.watch(ctx, f.cs.CoordinationV1().Leases("ns"), selector(wire.KindLock), listOptions{watch: true}, leaseList("10", withRV(a, "10")))
		pw.Close()
	}()
	expect := func(what string, want ...string) {
		t.Helper()
		// A table is complete at the blank line before the next one: call expect after the
		// change that prints the next table.
		select {
		case rows := <-got:
			if strings.Join(rows, "\n") != strings.Join(want, "\n") {
				t.Errorf("%s: got table\n%s\nwant\n%s", what, strings.Join(rows, "\n"), strings.Join(want, "\n"))
			}
		case err := <-errc:
			t.Fatalf("%s: the watch ended: %v", what, err)
		case <-time.After(bound):
			t.Fatalf("%s: no table within %s", what, bound)
		}
	}

	w := f.next(t, "10")
	renewed := withRV(a, "11")
	renewed.Spec.RenewTime = &metav1.MicroTime{Time: now.Add(time.Second)}
	w.Modify(renewed)
	taken := withRV(a, "12")
	taken.Spec.HolderIdentity = ptr.To("p-1/" + session)
	taken.Annotations["metaparticle.io/fencing-token"] = "2"
	w.Modify(taken)
	expect("the first list", "a p-0 5f0c2a7e 60s 1 15s")

	w.Stop() // the server ends the watch: resume from the last resourceVersion
	w = f.next(t, "12")

	b := lease(wire.KindLock, "ns", "b")
	f.lists <- leaseList("20", withRV(lease(wire.KindLock, "ns", "a"), "19"), withRV(b, "20"))
	w.Error(&metav1.Status{Status: metav1.StatusFailure, Code: 410, Reason: metav1.StatusReasonExpired, Message: "too old resource version"})
	expect("after the change of holder", "a p-1 5f0c2a7e 60s 2 15s")
	w = f.next(t, "20")
	w.Delete(withRV(b, "21"))
	expect("after listing again", "a - - - - -", "b - - - - -")
	w.Add(withRV(b, "22"))
	expect("after b was deleted", "a - - - - -")

	w.Error(&metav1.Status{Status: metav1.StatusFailure, Code: 403, Reason: metav1.StatusReasonForbidden, Message: `leases.coordination.k8s.io is forbidden: User "x" cannot watch resource "leases"`})
	select {
	case err := <-errc:
		if err == nil || !strings.Contains(err.Error(), "cannot watch") {
			t.Errorf("after a 403 event: got %v; want the forbidden error", err)
		}
	case <-time.After(bound):
		t.Fatalf("the watch did not end after a 403 event within %s", bound)
	}

	// Ctrl-C.
	f2 := newFakeLeases(t)
	ctx2, cancel2 := context.WithCancel(context.Background())
	errc2 := make(chan error, 1)
	go func() {
		errc2 <- newCLI("syncctl", io.Discard, io.Discard, clk).watch(ctx2, f2.cs.CoordinationV1().Leases("ns"), selector(wire.KindLock), listOptions{watch: true, printOptions: printOptions{format: formatJSON}}, leaseList("5"))
	}()
	f2.next(t, "5")
	cancel2()
	select {
	case err := <-errc2:
		if err != nil {
			t.Errorf("after ctx ended: got %v; want nil", err)
		}
	case <-time.After(bound):
		t.Fatalf("the watch did not end with ctx within %s", bound)
	}
}
