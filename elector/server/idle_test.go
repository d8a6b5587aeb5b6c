package server

import (
	"context"
	"slices"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/metaparticle-io/sync/elector"
)

// idle is fast with idle Leases deleted after a lease duration.
var idle = func() elector.Config { c := fast; c.DeleteIdleAfter = fast.LeaseDuration; return c }()

// leaseDeleted returns a channel closed when the real API server's watch reports the deletion of
// Lease name in ns, after resourceVersion rv.
func leaseDeleted(t *testing.T, ns, name, rv string) <-chan struct{} {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	w, err := env.Clientset.CoordinationV1().Leases(ns).Watch(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("metadata.name", name).String(), ResourceVersion: rv,
	})
	if err != nil {
		t.Fatalf("watching Lease %s: got %v; want a watch", name, err)
	}
	done := make(chan struct{})
	go func() {
		defer w.Stop()
		for ev := range w.ResultChan() {
			if _, ok := ev.Object.(*coordinationv1.Lease); ok && ev.Type == watch.Deleted {
				close(done)
				return
			}
		}
	}()
	return done
}

// TestIntegrationIdleLeasesAreDeleted: two side-cars with idle Leases deleted after 3 s. A
// released lock's Lease is deleted (by one of them, once), the name is forgotten, and its next
// grant creates it again with a greater token; a lock held all along keeps its Lease and holder.
func TestIntegrationIdleLeasesAreDeleted(t *testing.T) {
	ns := env.Namespace(t)
	a := startSidecar(t, ns, "pod-a", idle)
	b := startSidecar(t, ns, "pod-b", idle)
	s := a.c.open(time.Minute)
	held := a.c.mustAcquire(s.ID, "held")
	g := a.c.mustAcquire(s.ID, "idle")
	if err := a.c.release(s.ID, "idle"); err != nil {
		t.Fatalf("release: got %v; want nil", err)
	}
	released := getLease(t, ns, g.Lease)
	await(t, leaseDeleted(t, ns, g.Lease, released.ResourceVersion), "the deletion of the idle Lease")

	deleted := func() float64 {
		return sample(t, a.reg, "metaparticle_sync_idle_deletions_total", "result", "deleted") +
			sample(t, b.reg, "metaparticle_sync_idle_deletions_total", "result", "deleted")
	}
	// The watch may report the deletion before the deleter has read the answer to its Delete.
	eventually(t, "the deleter to count its deletion", func() bool { return deleted() >= 1 })
	if deleted := deleted(); deleted != 1 {
		t.Errorf("got %v idle deletions by the two side-cars; want 1", deleted)
	}
	// pod-a forgets the name (its Lease watch stops; it keeps that of the held lock); pod-b
	// never watched it.
	for sc, want := range map[*sidecar]float64{a: 1, b: 0} {
		eventually(t, sc.pod+" to forget the name", func() bool { return sample(t, sc.reg, "metaparticle_sync_lease_watches", "", "") == want })
	}
	if l := getLease(t, ns, held.Lease); holderOf(l) != held.Holder {
		t.Errorf("got held Lease's holder %q after the sweeps; want %q", holderOf(l), held.Holder)
	}
	g2 := b.c.mustAcquire(b.c.open(time.Minute).ID, "idle")
	if tokenOfGrant(t, g2) <= tokenOfGrant(t, g) {
		t.Errorf("got token %s after the recreate; want above %s", g2.Token, g.Token)
	}
}

// TestIntegrationIdleDeletionRBAC: the side-car's Role lets it delete idle Leases; without the
// delete verb nothing is deleted, it counts the refusals, and locks work.
func TestIntegrationIdleDeletionRBAC(t *testing.T) {
	ns := env.Namespace(t)
	role := shippedRole(t)
	noDelete := role.DeepCopy()
	noDelete.Name += "-without-delete"
	noDelete.Rules[0].Verbs = slices.DeleteFunc(slices.Clone(role.Rules[0].Verbs), func(v string) bool { return v == "delete" })
	ctx := context.Background()
	cs := env.Clientset
	for sa, r := range map[string]*rbacv1.Role{"full": &role, "no-delete": noDelete} {
		if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
			t.Fatalf("creating service account %s: got %v; want nil", sa, err)
		}
		if _, err := cs.RbacV1().Roles(ns).Create(ctx, r, metav1.CreateOptions{}); err != nil {
			t.Fatalf("creating Role %s: got %v; want nil", r.Name, err)
		}
		binding := &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: r.Name},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: r.Name},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: sa, Namespace: ns}},
		}
		if _, err := cs.RbacV1().RoleBindings(ns).Create(ctx, binding, metav1.CreateOptions{}); err != nil {
			t.Fatalf("creating RoleBinding %s: got %v; want nil", r.Name, err)
		}
	}

	full := startSidecar(t, ns, "pod-full", idle, asUser("system:serviceaccount:"+ns+":full"))
	s := full.c.open(time.Minute)
	g := full.c.mustAcquire(s.ID, "gc")
	if err := full.c.release(s.ID, "gc"); err != nil {
		t.Fatalf("release: got %v; want nil", err)
	}
	await(t, leaseDeleted(t, ns, g.Lease, getLease(t, ns, g.Lease).ResourceVersion), "the deletion of the idle Lease with the Role")
	full.e.Halt() // from here on only the side-car without delete sweeps

	bare := startSidecar(t, ns, "pod-bare", idle, asUser("system:serviceaccount:"+ns+":no-delete"))
	s = bare.c.open(time.Minute)
	g = bare.c.mustAcquire(s.ID, "kept")
	if err := bare.c.release(s.ID, "kept"); err != nil {
		t.Fatalf("release: got %v; want nil", err)
	}
	eventually(t, "a refused deletion", func() bool {
		return sample(t, bare.reg, "metaparticle_sync_idle_deletions_total", "result", "forbidden") >= 1
	})
	if l := getLease(t, ns, g.Lease); l.Name != g.Lease {
		t.Fatalf("got Lease %q; want %s kept", l.Name, g.Lease)
	}
	if err := bare.e.Ready(); err != nil {
		t.Errorf("Ready without delete: got %v; want nil", err)
	}
	if g2 := bare.c.mustAcquire(s.ID, "kept"); tokenOfGrant(t, g2) <= tokenOfGrant(t, g) {
		t.Errorf("got token %s; want above %s", g2.Token, g.Token)
	}
}
