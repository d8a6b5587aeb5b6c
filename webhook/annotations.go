package webhook

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/metaparticle-io/sync/internal/contract"
)

// Pod annotations read by the injector. docs/annotations.md documents each one.
const (
	// AnnotationInject opts a Pod in: "true" injects, "false" (or no annotation) leaves the Pod
	// alone; any other value is denied. In a namespace labelled LabelNamespaceInject, a Pod
	// without the annotation is injected too, and "false" opts it out.
	AnnotationInject = contract.AnnotationInject
	// AnnotationStatus is written by the injector on every Pod it injected, with the value
	// StatusInjected. A Pod that carries it with that value is never injected again.
	AnnotationStatus = "metaparticle.io/sync-status"
	// With AnnotationStatus, the injector writes contract.AnnotationInjectedImage and
	// contract.AnnotationInjectorVersion, and sets the label contract.LabelInjected.

	AnnotationImage         = "metaparticle.io/sidecar-image"
	AnnotationMode          = "metaparticle.io/sidecar-mode"
	AnnotationPort          = "metaparticle.io/port"
	AnnotationLogLevel      = "metaparticle.io/log-level"
	AnnotationCPURequest    = "metaparticle.io/sidecar-cpu-request"
	AnnotationCPULimit      = "metaparticle.io/sidecar-cpu-limit"
	AnnotationMemoryRequest = "metaparticle.io/sidecar-memory-request"
	AnnotationMemoryLimit   = "metaparticle.io/sidecar-memory-limit"
	AnnotationLeaseDuration = "metaparticle.io/lease-duration"
	AnnotationRenewDeadline = "metaparticle.io/renew-deadline"
	AnnotationRenewPeriod   = "metaparticle.io/renew-period"
	AnnotationRetryPeriod   = "metaparticle.io/retry-period"
	AnnotationWatchScope    = "metaparticle.io/watch-scope"
	AnnotationMaxNames      = "metaparticle.io/max-names"
	AnnotationMetricsNames  = "metaparticle.io/metrics-names"
)

// LabelNamespaceInject, with the value "true" on a Namespace, opts in every Pod created in it
// that does not say AnnotationInject: "false". The MutatingWebhookConfiguration's second webhook
// selects those namespaces and calls NamespacePath.
const LabelNamespaceInject = "metaparticle.io/sync"

// StatusInjected is the value of AnnotationStatus on an injected Pod.
const StatusInjected = "injected"

// annotationError is a bad annotation value; its message names the annotation, the value and
// what is allowed.
type annotationError struct {
	key, value, allowed string
}

func (e *annotationError) Error() string {
	return fmt.Sprintf("annotation %s: invalid value %q: %s", e.key, e.value, e.allowed)
}

// wantsInjection reads AnnotationInject; a Pod without it is injected when its namespace opted
// in.
func wantsInjection(annotations map[string]string, namespaceOptedIn bool) (bool, error) {
	v, ok := annotations[AnnotationInject]
	if !ok {
		return namespaceOptedIn, nil
	}
	switch v {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, &annotationError{AnnotationInject, v, `accepted values are "true" (inject the side-car) and "false" (leave the Pod alone)`}
}

// podConfig applies a Pod's override annotations to the injector's configuration, with the
// timing's zero fields set to their defaults. It reports every bad annotation, not only the first.
func podConfig(base Config, annotations map[string]string) (Config, error) {
	c := base
	c.Resources = *base.Resources.DeepCopy()
	c.Timing = base.Timing.WithDefaults()
	var errs []error
	bad := func(key, allowed string) {
		errs = append(errs, &annotationError{key, annotations[key], allowed})
	}

	if v, ok := annotations[AnnotationImage]; ok {
		if v == "" || strings.ContainsAny(v, " \t\n") {
			bad(AnnotationImage, "an image reference such as registry.example/elector:v1, without spaces")
		} else {
			c.Image = v
		}
	}
	if v, ok := annotations[AnnotationMode]; ok {
		switch Mode(v) {
		case ModeNative, ModeClassic:
			c.Mode = Mode(v)
		default:
			bad(AnnotationMode, `"native" (init container with restartPolicy Always, Kubernetes ≥ 1.29) or "classic" (a regular container)`)
		}
	}
	if v, ok := annotations[AnnotationPort]; ok {
		p, err := strconv.ParseInt(v, 10, 32)
		if err != nil || validPort(p) != nil {
			bad(AnnotationPort, "a port number from 1024 to 65534 (the health port is port+1)")
		} else {
			c.Port = int32(p)
		}
	}
	if v, ok := annotations[AnnotationLogLevel]; ok {
		if _, ok := contract.LogLevels[v]; ok {
			c.LogLevel = v
		} else {
			bad(AnnotationLogLevel, "one of "+logLevelNames())
		}
	}

	if v, ok := annotations[AnnotationWatchScope]; ok {
		if v == contract.WatchScopeNames || v == contract.WatchScopeNamespace {
			c.WatchScope = v
		} else {
			bad(AnnotationWatchScope, `"names" (a watch of each Lease the Pod uses) or "namespace" (one watch of every Lease of the namespace)`)
		}
	}
	if v, ok := annotations[AnnotationMaxNames]; ok {
		n, err := strconv.ParseInt(v, 10, 32)
		if err != nil || n <= 0 {
			bad(AnnotationMaxNames, "a positive number of names, such as 500 (about 165 KiB each: raise "+AnnotationMemoryLimit+" with it)")
		} else {
			c.MaxNames = int(n)
		}
	}

	if v, ok := annotations[AnnotationMetricsNames]; ok {
		n, err := strconv.ParseInt(v, 10, 32)
		if err != nil || n == 0 || n < -1 {
			bad(AnnotationMetricsNames, "a positive number of names exported in metaparticle_sync_held, or -1 for none")
		} else {
			c.MetricsNames = int(n)
		}
	}

	quantities := []struct {
		key  string
		list *corev1.ResourceList
		name corev1.ResourceName
	}{
		{AnnotationCPURequest, &c.Resources.Requests, corev1.ResourceCPU},
		{AnnotationCPULimit, &c.Resources.Limits, corev1.ResourceCPU},
		{AnnotationMemoryRequest, &c.Resources.Requests, corev1.ResourceMemory},
		{AnnotationMemoryLimit, &c.Resources.Limits, corev1.ResourceMemory},
	}
	for _, q := range quantities {
		v, ok := annotations[q.key]
		if !ok {
			continue
		}
		qty, err := resource.ParseQuantity(v)
		if err != nil || qty.Sign() <= 0 {
			bad(q.key, "a positive Kubernetes quantity such as 50m (CPU) or 64Mi (memory)")
			continue
		}
		if *q.list == nil {
			*q.list = corev1.ResourceList{}
		}
		(*q.list)[q.name] = qty
	}
	for _, name := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, hasReq := c.Resources.Requests[name]
		lim, hasLim := c.Resources.Limits[name]
		if hasReq && hasLim && req.Cmp(lim) > 0 {
			errs = append(errs, fmt.Errorf("annotations: side-car %s request %s exceeds its limit %s", name, req.String(), lim.String()))
		}
	}

	const anyDuration = "a positive Go duration up to 1h, such as 5s or 500ms"
	durations := []struct {
		key     string
		d       *time.Duration
		allowed string
	}{
		{AnnotationLeaseDuration, &c.Timing.LeaseDuration, "a positive Go duration up to 1h in whole seconds, such as 15s"},
		{AnnotationRenewDeadline, &c.Timing.RenewDeadline, anyDuration},
		{AnnotationRenewPeriod, &c.Timing.RenewPeriod, anyDuration},
		{AnnotationRetryPeriod, &c.Timing.RetryPeriod, anyDuration},
	}
	timingSet := false
	for _, d := range durations {
		v, ok := annotations[d.key]
		if !ok {
			continue
		}
		parsed, err := time.ParseDuration(v)
		if err != nil || parsed <= 0 || parsed > time.Hour {
			bad(d.key, d.allowed)
			continue
		}
		*d.d = parsed
		timingSet = true
	}
	if timingSet {
		// The side-car's own rules and message: a timing admitted here is one it starts with.
		if err := c.Timing.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("annotations %s, %s, %s, %s: %w (lease duration > renew deadline > renew period ≥ retry period ≥ %s)",
				AnnotationLeaseDuration, AnnotationRenewDeadline, AnnotationRenewPeriod, AnnotationRetryPeriod, err, contract.MinRetryPeriod))
		}
	}
	return c, errors.Join(errs...)
}
