package webhook_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/webhook"
)

// review wraps pod into an AdmissionReview request as the API server sends it.
func review(t testing.TB, pod *corev1.Pod) []byte {
	t.Helper()
	raw, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	r := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID:       types.UID("req-1"),
			Kind:      metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			Namespace: pod.Namespace,
			Operation: admissionv1.Create,
			Object:    runtime.RawExtension{Raw: raw},
		},
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fakeReviews answers SubjectAccessReviews: allowed when the service account is "with-rbac", and
// for every verb but delete when it is "without-delete".
func fakeReviews(calls *atomic.Int32) *fake.Clientset {
	cs := fake.NewClientset()
	cs.PrependReactor("create", "subjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		calls.Add(1)
		sar := a.(k8stesting.CreateAction).GetObject().(*authorizationv1.SubjectAccessReview)
		sar.Status.Allowed = strings.HasSuffix(sar.Spec.User, ":with-rbac") ||
			strings.HasSuffix(sar.Spec.User, ":without-delete") && sar.Spec.ResourceAttributes.Verb != "delete"
		return true, sar, nil
	})
	return cs
}

func newServer(t testing.TB, calls *atomic.Int32) http.Handler {
	t.Helper()
	access := webhook.NewAccessChecker(fakeReviews(calls).AuthorizationV1().SubjectAccessReviews(), 0, clocktesting.NewFakeClock(testTime))
	in, err := webhook.NewInjector(webhook.DefaultConfig(testImage), access)
	if err != nil {
		t.Fatal(err)
	}
	return webhook.NewWebhook(in)
}

var testTime = metav1.Now().Time

type reply struct {
	status int
	review admissionv1.AdmissionReview
	patch  []map[string]any
}

func post(t *testing.T, h http.Handler, contentType string, body []byte) reply {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, webhook.Path, bytes.NewReader(body))
	req.Header.Set("Content-Type", contentType)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var r reply
	r.status = rec.Code
	if err := json.Unmarshal(rec.Body.Bytes(), &r.review); err != nil {
		t.Fatalf("got undecodable response %q: %v", rec.Body.String(), err)
	}
	if r.review.Response == nil {
		t.Fatalf("got AdmissionReview without a response: %s", rec.Body.String())
	}
	if p := r.review.Response.Patch; len(p) > 0 {
		if err := json.Unmarshal(p, &r.patch); err != nil {
			t.Fatalf("got undecodable patch %q: %v", p, err)
		}
	}
	return r
}

func TestAdmissionHandler(t *testing.T) {
	var calls atomic.Int32
	h := newServer(t, &calls)
	outcome := func(o string) float64 { return injectionsCounted(t, o) }
	already := newPod(optedIn(), withServiceAccount("with-rbac"))
	if _, err := webhook.Inject(already, webhook.DefaultConfig(testImage)); err != nil {
		t.Fatalf("preparing an injected Pod: %v", err)
	}

	tests := []struct {
		name        string
		contentType string
		body        []byte
		allowed     bool
		code        int32  // Result.Code when not allowed
		message     string // fragment of Result.Message
		patched     bool
		warning     string // fragment of a warning; "" means no warnings
		outcome     string
	}{
		{name: "opted in", body: review(t, newPod(optedIn(), withServiceAccount("with-rbac"))),
			allowed: true, patched: true, outcome: webhook.OutcomeInjected},
		{name: "not opted in", body: review(t, newPod()), allowed: true, outcome: webhook.OutcomeSkipped},
		{name: "already injected", body: review(t, already), allowed: true, outcome: webhook.OutcomeSkipped},
		{name: "bad annotation", body: review(t, newPod(annotated(webhook.AnnotationInject, "on"))),
			code: http.StatusForbidden, message: `annotation metaparticle.io/sync: invalid value "on"`, outcome: webhook.OutcomeDenied},
		{name: "timing the side-car refuses", body: review(t, newPod(optedIn(), annotated(webhook.AnnotationRetryPeriod, "5ms"))),
			code: http.StatusForbidden, message: "retry period 5ms must be at least 10ms", outcome: webhook.OutcomeDenied},
		{name: "no lease RBAC", body: review(t, newPod(optedIn(), withServiceAccount("bare"))), allowed: true, patched: true,
			warning: "kubectl create rolebinding bare-metaparticle-sync --namespace ns --clusterrole metaparticle-sync-sidecar --serviceaccount ns:bare",
			outcome: webhook.OutcomeInjected},
		{name: "default service account", body: review(t, newPod(optedIn())), allowed: true, patched: true,
			warning: "service account ns/default may not list, watch, create, update, delete leases in namespace ns, so the metaparticle-sync side-car cannot take locks",
			outcome: webhook.OutcomeInjected},
		{name: "no delete", body: review(t, newPod(optedIn(), withServiceAccount("without-delete"))), allowed: true, patched: true,
			warning: "service account ns/without-delete may not delete leases in namespace ns, so the metaparticle-sync side-car cannot delete idle Leases",
			outcome: webhook.OutcomeInjected},
		{name: "malformed JSON", body: []byte(`{"request": {`), code: http.StatusBadRequest, outcome: ""},
		{name: "not a Pod", body: []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","operation":"CREATE","object":{"spec":{"containers":"nope"}}}}`),
			code: http.StatusBadRequest, outcome: webhook.OutcomeError},
		{name: "wrong content type", contentType: "text/plain", body: review(t, newPod(optedIn())), code: http.StatusBadRequest, outcome: ""},
		{name: "oversized", body: append(review(t, newPod()), bytes.Repeat([]byte(" "), 8<<20)...), code: http.StatusRequestEntityTooLarge, outcome: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ct := tt.contentType
			if ct == "" {
				ct = "application/json"
			}
			var before float64
			if tt.outcome != "" {
				before = outcome(tt.outcome)
			}
			r := post(t, h, ct, tt.body)
			resp := r.review.Response
			if r.status != http.StatusOK {
				t.Errorf("got HTTP status %d; want 200 (errors travel inside the AdmissionReview)", r.status)
			}
			if resp.Allowed != tt.allowed {
				t.Fatalf("got allowed=%v (%+v); want %v", resp.Allowed, resp.Result, tt.allowed)
			}
			if !tt.allowed {
				if resp.Result == nil || resp.Result.Code != tt.code {
					t.Errorf("got result %+v; want code %d", resp.Result, tt.code)
				}
				if tt.message != "" && (resp.Result == nil || !strings.Contains(resp.Result.Message, tt.message)) {
					t.Errorf("got result %+v; want message containing %q", resp.Result, tt.message)
				}
			}
			if got := len(r.patch) > 0; got != tt.patched {
				t.Errorf("got patched=%v (%v); want %v", got, r.patch, tt.patched)
			}
			if tt.patched && (resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch) {
				t.Errorf("got patch type %v; want JSONPatch", resp.PatchType)
			}
			switch {
			case tt.warning == "" && len(resp.Warnings) > 0:
				t.Errorf("got warnings %q; want none", resp.Warnings)
			case tt.warning != "" && (len(resp.Warnings) == 0 || !strings.Contains(strings.Join(resp.Warnings, "\n"), tt.warning)):
				t.Errorf("got warnings %q; want one containing %q", resp.Warnings, tt.warning)
			}
			if tt.outcome != "" {
				if got := outcome(tt.outcome) - before; got != 1 {
					t.Errorf("got %s outcome counted %v times; want 1", tt.outcome, got)
				}
			}
		})
	}
}

// TestAccessCheckerCaches proves a burst of Pods with one service account costs one review per verb.
func TestAccessCheckerCaches(t *testing.T) {
	var calls atomic.Int32
	clk := clocktesting.NewFakeClock(testTime)
	access := webhook.NewAccessChecker(fakeReviews(&calls).AuthorizationV1().SubjectAccessReviews(), 30e9, clk)
	ctx := context.Background()
	for i := 0; i < 50; i++ {
		missing, err := access.MissingVerbs(ctx, "ns", "bare")
		if err != nil {
			t.Fatal(err)
		}
		if len(missing) != len(contract.SidecarLeaseVerbs) {
			t.Fatalf("got missing %v; want all of %v", missing, contract.SidecarLeaseVerbs)
		}
	}
	if got, want := calls.Load(), int32(len(contract.SidecarLeaseVerbs)); got != want {
		t.Errorf("got %d reviews for 50 admissions; want %d", got, want)
	}
	clk.Step(31e9)
	if _, err := access.MissingVerbs(ctx, "ns", "bare"); err != nil {
		t.Fatal(err)
	}
	if got, want := calls.Load(), int32(2*len(contract.SidecarLeaseVerbs)); got != want {
		t.Errorf("got %d reviews after the cache expired; want %d", got, want)
	}
}

// injectionsCounted reads metaparticle_sync_injections_total{outcome} from the registry the
// injector binary serves on /metrics.
func injectionsCounted(t *testing.T, outcome string) float64 {
	t.Helper()
	families, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "metaparticle_sync_injections_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "outcome" && l.GetValue() == outcome {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("got no metaparticle_sync_injections_total{outcome=%q} in the metrics registry", outcome)
	return 0
}

// BenchmarkAdmission measures the whole admission handler (decode, inject, patch, encode) for an
// opted-in Pod whose service account's RBAC answer is cached.
func BenchmarkAdmission(b *testing.B) {
	var calls atomic.Int32
	h := newServer(b, &calls)
	body := review(b, newPod(optedIn(), withServiceAccount("with-rbac"), withContainer("worker")))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		req := httptest.NewRequest(http.MethodPost, webhook.Path, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			b.Fatalf("got status %d", rec.Code)
		}
	}
}
