package webhook

import (
	"context"
	"fmt"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

// Reasons of the Events the injector records on a Pod's owner.
const (
	// ReasonInjected (Normal): the Pod got the side-car.
	ReasonInjected = "SidecarInjected"
	// ReasonSkipped (Normal): the Pod had the side-car already (a reinvocation, or a manifest
	// re-applied with the injector's output).
	ReasonSkipped = "SidecarSkipped"
	// ReasonRefused (Warning): the Pod was refused, with the reason the API server returned.
	ReasonRefused = "SidecarRefused"
	// ReasonNoLeaseRBAC (Warning): the Pod's service account may not use Leases, so its side-car
	// cannot take locks; the note says which RoleBinding to create.
	ReasonNoLeaseRBAC = "SidecarLeaseRBAC"
)

// EventReporter is the reportingController of the injector's Events.
const EventReporter = "metaparticle-sync-injector"

// eventAction is the action of every Event the injector records.
const eventAction = "Inject"

// maxNote is the longest note an events.k8s.io/v1 Event takes.
const maxNote = 1024

// WithEvents returns a copy of in that records an Event for each admission on the Pod's
// controller (its ReplicaSet, StatefulSet, Job, DaemonSet…), where people who apply a Deployment
// look (kubectl describe, kubectl events): an admission warning reaches only whoever created the
// Pod, which for most Pods is a controller. Bare Pods get no Event (their creator sees the
// warnings and the denial), nor do dry-run requests (the webhooks declare sideEffects: NoneOnDryRun: an Event is
// their only side effect).
func (in *Injector) WithEvents(r events.EventRecorder) *Injector {
	c := *in
	c.events = r
	return &c
}

// eventTarget returns the object to record pod's Events on, or nil for none.
func (in *Injector) eventTarget(ctx context.Context, pod *corev1.Pod) *metav1.PartialObjectMetadata {
	if in.events == nil {
		return nil
	}
	namespace := pod.Namespace
	if req, err := admission.RequestFromContext(ctx); err == nil {
		if req.DryRun != nil && *req.DryRun {
			return nil
		}
		if req.Namespace != "" {
			namespace = req.Namespace
		}
	}
	owner := metav1.GetControllerOf(pod)
	if owner == nil {
		return nil
	}
	return &metav1.PartialObjectMetadata{
		TypeMeta:   metav1.TypeMeta{APIVersion: owner.APIVersion, Kind: owner.Kind},
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: owner.Name, UID: owner.UID},
	}
}

// record records one Event on target, when there is one.
func (in *Injector) record(target *metav1.PartialObjectMetadata, eventType, reason, note string) {
	if target == nil {
		return
	}
	if len(note) > maxNote {
		cut := maxNote - 3
		for cut > 0 && !utf8.RuneStart(note[cut]) {
			cut--
		}
		note = note[:cut] + "..."
	}
	in.events.Eventf(target, nil, eventType, reason, eventAction, "%s", note)
}

// podName names a Pod being created: its name, or its generateName prefix.
func podName(pod *corev1.Pod) string {
	if pod.Name != "" {
		return pod.Name
	}
	return pod.GenerateName + "*"
}

func injectedNote(pod *corev1.Pod, image string) string {
	return fmt.Sprintf("Pod %s: added the side-car %s (%s)", podName(pod), image, SidecarName)
}
