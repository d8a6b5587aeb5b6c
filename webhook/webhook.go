// Package webhook is the admission logic of the Metaparticle Sync injector: a typed defaulter on
// *corev1.Pod that adds the elector side-car to Pods annotated metaparticle.io/sync: "true", and
// to the Pods of namespaces labelled metaparticle.io/sync: "true" that do not say "false".
//
// The work is split in three layers, each testable alone:
//
//   - Inject adds the side-car to a Pod in place, as a Config and the Pod's annotations say, and
//     reports what it did (or returns the denial, leaving the Pod unchanged); it calls no API and
//     reads no clock, so the same Pod and Config always give the same result;
//   - Injector implements controller-runtime's admission.Defaulter[*corev1.Pod]: it reads the
//     admission request, calls Inject on the decoded Pod and checks the service account's Lease
//     RBAC; the framework computes the JSON patch from the Pod before and after, none is written
//     by hand;
//   - NewWebhook wraps it into an admission.Webhook that adds warnings and counts outcomes.
//
// What it does not guarantee: a Pod created while the injector is unreachable is refused when the
// MutatingWebhookConfiguration's failurePolicy is Fail (the default this project ships, safe
// because matchConditions send only opted-in Pods), and admitted without a side-car when it is
// Ignore; the application then finds no side-car and its SDK says so. The RBAC warning reflects the
// service account's permissions at admission time only.
package webhook

import (
	"context"
	"fmt"
	"net/http"

	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

// Path is where the injector serves its mutating webhook for annotated Pods, and NamespacePath
// the one for the Pods of namespaces labelled LabelNamespaceInject.
const (
	Path          = "/mutate-pods"
	NamespacePath = "/mutate-pods-of-opted-in-namespaces"
)

// Outcomes of an admission, the label values of the injections metric.
const (
	OutcomeInjected = "injected"
	OutcomeSkipped  = "skipped"
	OutcomeDenied   = "denied"
	OutcomeError    = "error"
)

var injections = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "metaparticle_sync_injections_total",
	Help: "Pod admissions seen by the injector, by outcome: injected, skipped (not opted in or already injected), denied (bad annotations or unsafe Pod), error (undecodable request).",
}, []string{"outcome"})

func init() {
	metrics.Registry.MustRegister(injections)
	for _, o := range []string{OutcomeInjected, OutcomeSkipped, OutcomeDenied, OutcomeError} {
		injections.WithLabelValues(o)
	}
}

// Injector is the Pod defaulter. Create it with NewInjector; it is safe for concurrent use.
type Injector struct {
	config Config
	access *AccessChecker // nil: no RBAC warnings
	// namespaceOptedIn: every Pod it sees is in an opted-in namespace (InjectInOptedInNamespace).
	namespaceOptedIn bool
	events           events.EventRecorder // nil: no Events (events.go)
}

// NewInjector validates config and returns an Injector. access may be nil, which turns the RBAC
// warning off.
func NewInjector(config Config, access *AccessChecker) (*Injector, error) {
	if err := config.Validate(); err != nil {
		return nil, err
	}
	return &Injector{config: config, access: access}, nil
}

// ForOptedInNamespaces returns a copy of in for NamespacePath: it injects Pods without
// AnnotationInject too, because the API server sends it only Pods of namespaces labelled
// LabelNamespaceInject.
func (in *Injector) ForOptedInNamespaces() *Injector {
	c := *in
	c.namespaceOptedIn = true
	return &c
}

var _ admission.Defaulter[*corev1.Pod] = (*Injector)(nil)

// Default injects the side-car into pod, in place, when it asks for it. A returned error denies
// the Pod with the error's text.
func (in *Injector) Default(ctx context.Context, pod *corev1.Pod) error {
	rec := recorderFrom(ctx)
	log := logf.FromContext(ctx)
	target := in.eventTarget(ctx, pod)
	res, err := inject(pod, in.config, in.namespaceOptedIn)
	if err != nil {
		rec.outcome = OutcomeDenied
		log.Info("denied", "reason", err.Error())
		in.record(target, corev1.EventTypeWarning, ReasonRefused, fmt.Sprintf("Pod %s refused: %v", podName(pod), err))
		return err
	}
	if res.Action != ActionInjected {
		rec.outcome = OutcomeSkipped
		if res.Action == ActionAlreadyInjected {
			in.record(target, corev1.EventTypeNormal, ReasonSkipped, fmt.Sprintf("Pod %s has the side-car already (%s: %s)", podName(pod), AnnotationStatus, StatusInjected))
		}
		return nil
	}
	rec.outcome = OutcomeInjected
	rec.warnings = append(rec.warnings, res.Warnings...)
	in.record(target, corev1.EventTypeNormal, ReasonInjected, injectedNote(pod, pod.Annotations[contract.AnnotationInjectedImage]))

	if in.access != nil {
		namespace := pod.Namespace
		if req, err := admission.RequestFromContext(ctx); err == nil && req.Namespace != "" {
			namespace = req.Namespace
		}
		sa := pod.Spec.ServiceAccountName
		if sa == "" {
			sa = "default"
		}
		missing, err := in.access.MissingVerbs(ctx, namespace, sa)
		switch {
		case err != nil:
			// Admission must not fail because the review did; say we could not check.
			log.Error(err, "checking the service account's Lease permissions")
			rec.warnings = append(rec.warnings, "could not check the side-car's Lease permissions: "+err.Error())
		case len(missing) > 0:
			w := rbacWarning(namespace, sa, in.config.SidecarClusterRole, missing)
			rec.warnings = append(rec.warnings, w)
			in.record(target, corev1.EventTypeWarning, ReasonNoLeaseRBAC, "Pod "+podName(pod)+": "+w)
		}
	}
	log.Info("injected side-car", "warnings", rec.warnings)
	return nil
}

// NewWebhook returns the admission webhook for in: the framework decodes the Pod, calls Default and
// computes the patch; the returned webhook adds Default's warnings and counts outcomes.
func NewWebhook(in *Injector) *admission.Webhook {
	scheme := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(scheme)
	wh := admission.WithDefaulter[*corev1.Pod](scheme, in)
	wh.Handler = &recordingHandler{inner: wh.Handler}
	return wh
}

// recorder carries Default's outcome and warnings back to recordingHandler.
type recorder struct {
	outcome  string
	warnings []string
}

type recorderKey struct{}

func recorderFrom(ctx context.Context) *recorder {
	if r, ok := ctx.Value(recorderKey{}).(*recorder); ok {
		return r
	}
	return &recorder{}
}

type recordingHandler struct {
	inner admission.Handler
}

func (h *recordingHandler) Handle(ctx context.Context, req admission.Request) admission.Response {
	rec := &recorder{}
	resp := h.inner.Handle(context.WithValue(ctx, recorderKey{}, rec), req)
	resp.Warnings = append(resp.Warnings, rec.warnings...)
	outcome := rec.outcome
	switch {
	case outcome == "" && resp.Allowed:
		outcome = OutcomeSkipped // e.g. a DELETE, which the defaulter never sees
	case outcome == "":
		outcome = OutcomeError
		logf.FromContext(ctx).Info("admission request not handled", "status", resultCode(resp))
	}
	injections.WithLabelValues(outcome).Inc()
	return resp
}

func resultCode(resp admission.Response) int32 {
	if resp.Result == nil {
		return http.StatusOK
	}
	return resp.Result.Code
}
