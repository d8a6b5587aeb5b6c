package testenv_test

import (
	"context"
	"testing"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/metaparticle-io/sync/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env) }

// TestLeaseOptimisticConcurrency proves the bed is a real API server: an update carrying a stale
// resourceVersion is refused with a Conflict, which every lock in this project relies on.
func TestLeaseOptimisticConcurrency(t *testing.T) {
	ns := env.Namespace(t)
	ctx := context.Background()
	leases := env.Clientset.CoordinationV1().Leases(ns)

	created, err := leases.Create(ctx, &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: "bed"},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: ptr.To("a")},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create lease: %v", err)
	}

	first := created.DeepCopy()
	first.Spec.HolderIdentity = ptr.To("b")
	updated, err := leases.Update(ctx, first, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("first update: %v", err)
	}
	if updated.ResourceVersion == created.ResourceVersion {
		t.Fatalf("got resourceVersion %s after update; want it changed", updated.ResourceVersion)
	}

	stale := created.DeepCopy()
	stale.Spec.HolderIdentity = ptr.To("c")
	_, err = leases.Update(ctx, stale, metav1.UpdateOptions{})
	if !apierrors.IsConflict(err) {
		t.Fatalf("update with stale resourceVersion: got error %v; want Conflict", err)
	}

	got, err := leases.Get(ctx, "bed", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get lease: %v", err)
	}
	if h := ptr.Deref(got.Spec.HolderIdentity, ""); h != "b" {
		t.Fatalf("got holder %q; want %q (the stale write must not land)", h, "b")
	}
}

// TestPodRoundTrip creates a Pod and reads it back with the fields the API server defaults.
func TestPodRoundTrip(t *testing.T) {
	ns := env.Namespace(t)
	ctx := context.Background()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: ns},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "example.invalid/app:1"}}},
	}
	if err := env.Client.Create(ctx, pod); err != nil {
		t.Fatalf("create pod: %v", err)
	}
	var got corev1.Pod
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(pod), &got); err != nil {
		t.Fatalf("get pod: %v", err)
	}
	if got.UID == "" {
		t.Errorf("got empty UID; want the API server to assign one")
	}
	if got.Spec.RestartPolicy != corev1.RestartPolicyAlways {
		t.Errorf("got restartPolicy %q; want the server default %q", got.Spec.RestartPolicy, corev1.RestartPolicyAlways)
	}
	if got.Spec.Containers[0].TerminationMessagePath == "" {
		t.Errorf("got empty terminationMessagePath; want the server default")
	}
}
