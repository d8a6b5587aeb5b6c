package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"syscall"
	"time"
	"unsafe"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/webhook"
)

// ExcludedNamespace is a namespace the shipped MutatingWebhookConfiguration's namespaceSelector
// leaves out: Pods created there never reach the webhook, which makes it the "without the
// webhook" side of the Pod create comparison, on the same API server and configuration.
const ExcludedNamespace = "metaparticle-sync"

const (
	benchImage          = "ghcr.io/metaparticle-io/sync/elector:bench"
	benchServiceAccount = "bench-app"
)

// admissionResult holds the admission figures.
type admissionResult struct {
	handler           Summary
	handlerCPU        Summary // on-CPU time of the same calls
	handlerThroughput float64 // reviews per second, one core
	podWith           Summary // opted-in Pod, webhook called
	podWithout        Summary // same Pod in a namespace the webhook excludes
	podNotOptedIn     Summary // Pod without the annotation: matchConditions skip the webhook
}

// admission serves the injector on envtest's local webhook address, then measures the handler
// alone on one core and Pod creation through the API server.
func (b *Bench) admission(ctx context.Context, handlerFor time.Duration, pods int) (admissionResult, error) {
	var res admissionResult
	ns, err := b.Namespace(ctx, "bench-admission", false)
	if err != nil {
		return res, err
	}
	if _, err := b.Namespace(ctx, ExcludedNamespace, true); err != nil {
		return res, err
	}
	for _, n := range []string{ns, ExcludedNamespace} {
		if err := b.grantLeaseRBAC(ctx, n); err != nil {
			return res, err
		}
	}
	// The RBAC answer is cached for an hour so that no SubjectAccessReview falls inside the
	// measurement after the warm-up (production caches it for 30 s per service account).
	access := webhook.NewAccessChecker(b.Env.Clientset.AuthorizationV1().SubjectAccessReviews(), time.Hour, nil)
	in, err := webhook.NewInjector(webhook.DefaultConfig(benchImage), access)
	if err != nil {
		return res, err
	}
	hook := webhook.NewWebhook(in)
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	if err := b.Env.ServeWebhooks(sctx, map[string]http.Handler{webhook.Path: hook}); err != nil {
		return res, err
	}

	// 1. The handler alone, one goroutine, GOMAXPROCS=1.
	body, err := reviewBody(benchPod(ns, "handler", true))
	if err != nil {
		return res, err
	}
	serve := func() error {
		req := httptest.NewRequest(http.MethodPost, webhook.Path, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		hook.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK || !bytes.Contains(rec.Body.Bytes(), []byte(`"patch"`)) {
			return fmt.Errorf("admission handler: status %d, body %.300s", rec.Code, rec.Body.String())
		}
		return nil
	}
	for i := 0; i < 500; i++ { // warm-up: RBAC answers cached, code paths hot
		if err := serve(); err != nil {
			return res, err
		}
	}
	res.handler, res.handlerCPU, res.handlerThroughput, err = oneCore(handlerFor, serve)
	if err != nil {
		return res, err
	}

	// 2. Pod creation through the API server, the three kinds interleaved so that drift in the
	// machine's load affects them alike.
	pods0 := b.Env.Clientset.CoreV1()
	var with, without, notOpted []time.Duration
	create := func(p *corev1.Pod, dst *[]time.Duration, wantInjected bool) error {
		t0 := time.Now()
		got, err := pods0.Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{})
		d := time.Since(t0)
		if err != nil {
			return fmt.Errorf("creating Pod %s/%s: %w", p.Namespace, p.Name, err)
		}
		if injected(got) != wantInjected {
			b.Anomaly("admission: Pod %s/%s injected=%v, want %v", p.Namespace, p.Name, injected(got), wantInjected)
		}
		*dst = append(*dst, d)
		return nil
	}
	for i := -3; i < pods; i++ { // three rounds of warm-up
		var w, wo, no []time.Duration
		if err := create(benchPod(ns, fmt.Sprintf("with-%d", i+3), true), &w, true); err != nil {
			return res, err
		}
		if err := create(benchPod(ExcludedNamespace, fmt.Sprintf("without-%d", i+3), true), &wo, false); err != nil {
			return res, err
		}
		if err := create(benchPod(ns, fmt.Sprintf("plain-%d", i+3), false), &no, false); err != nil {
			return res, err
		}
		if i >= 0 {
			with, without, notOpted = append(with, w...), append(without, wo...), append(notOpted, no...)
		}
	}
	res.podWith, res.podWithout, res.podNotOptedIn = Summarize(with), Summarize(without), Summarize(notOpted)
	return res, nil
}

// oneCore calls f in a loop on one goroutine, locked to its thread, with GOMAXPROCS=1 for about
// d, timing each call by the wall clock and by the thread's CPU clock (which leaves out the time
// the thread waited for a CPU held by other processes of a shared machine).
func oneCore(d time.Duration, f func() error) (wall, cpu Summary, throughput float64, err error) {
	prev := runtime.GOMAXPROCS(1)
	defer runtime.GOMAXPROCS(prev)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	runtime.GC()
	var lat, onCPU []time.Duration
	start := time.Now()
	for time.Since(start) < d {
		t0, c0 := time.Now(), threadCPU()
		if err := f(); err != nil {
			return Summary{}, Summary{}, 0, err
		}
		lat, onCPU = append(lat, time.Since(t0)), append(onCPU, threadCPU()-c0)
	}
	elapsed := time.Since(start)
	return Summarize(lat), Summarize(onCPU), float64(len(lat)) / elapsed.Seconds(), nil
}

// threadCPU returns the CPU time of the calling thread (CLOCK_THREAD_CPUTIME_ID).
func threadCPU() time.Duration {
	var ts syscall.Timespec
	const clockThreadCPUTimeID = 3
	if _, _, errno := syscall.Syscall(syscall.SYS_CLOCK_GETTIME, clockThreadCPUTimeID, uintptr(unsafe.Pointer(&ts)), 0); errno != 0 {
		return 0
	}
	return time.Duration(ts.Nano())
}

func injected(p *corev1.Pod) bool {
	for _, c := range append(append([]corev1.Container{}, p.Spec.InitContainers...), p.Spec.Containers...) {
		if c.Name == webhook.SidecarName {
			return true
		}
	}
	return false
}

// benchPod is the Pod of the admission figures: two containers, a service account with the
// side-car's Lease RBAC, opted in or not.
func benchPod(ns, name string, optedIn bool) *corev1.Pod {
	p := &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"app": "bench"}},
		Spec: corev1.PodSpec{
			ServiceAccountName: benchServiceAccount,
			Containers: []corev1.Container{
				{Name: "app", Image: "example.test/app:1"},
				{Name: "worker", Image: "example.test/worker:1"},
			},
		},
	}
	if optedIn {
		p.Annotations = map[string]string{webhook.AnnotationInject: "true"}
	}
	return p
}

// reviewBody wraps pod in an AdmissionReview request as the API server sends it.
func reviewBody(pod *corev1.Pod) ([]byte, error) {
	raw, err := json.Marshal(pod)
	if err != nil {
		return nil, err
	}
	return json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID:       types.UID("bench"),
			Kind:      metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			Namespace: pod.Namespace,
			Operation: admissionv1.Create,
			Object:    k8sruntime.RawExtension{Raw: raw},
		},
	})
}

// grantLeaseRBAC creates the bench service account in ns and binds it the side-car's Lease verbs,
// so that admission takes the normal path (no RBAC warning).
func (b *Bench) grantLeaseRBAC(ctx context.Context, ns string) error {
	cs := b.Env.Clientset
	ignoreExists := func(err error) error {
		if apierrors.IsAlreadyExists(err) {
			return nil
		}
		return err
	}
	if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: benchServiceAccount}}, metav1.CreateOptions{}); ignoreExists(err) != nil {
		return err
	}
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "bench-leases"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: contract.SidecarLeaseVerbs}},
	}
	if _, err := cs.RbacV1().Roles(ns).Create(ctx, role, metav1.CreateOptions{}); ignoreExists(err) != nil {
		return err
	}
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "bench-leases"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "bench-leases"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: benchServiceAccount, Namespace: ns}},
	}
	_, err := cs.RbacV1().RoleBindings(ns).Create(ctx, rb, metav1.CreateOptions{})
	return ignoreExists(err)
}
