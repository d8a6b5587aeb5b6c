package webhook

import (
	"fmt"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/internal/version"
	"github.com/metaparticle-io/sync/wire"
)

// SidecarName is the name of the injected container.
const SidecarName = contract.SidecarContainer

// HealthPortName names the side-car's health and metrics port.
const HealthPortName = contract.HealthPortName

// Action is what Inject did to a Pod.
type Action string

// Actions of Inject.
const (
	// ActionInjected: the side-car was added and the Pod annotated AnnotationStatus.
	ActionInjected Action = "injected"
	// ActionNotOptedIn: the Pod does not ask for injection (AnnotationInject "false", or no
	// AnnotationInject outside an opted-in namespace); it was left unchanged.
	ActionNotOptedIn Action = "not-opted-in"
	// ActionAlreadyInjected: the Pod carries AnnotationStatus: StatusInjected (a reinvocation,
	// or a Pod re-applied with the injector's output); it was left unchanged.
	ActionAlreadyInjected Action = "already-injected"
)

// Result is what Inject did to a Pod.
type Result struct {
	// Action says whether the side-car was added and, if not, why.
	Action Action
	// Warnings for the user (admission warnings); only an injection has any.
	Warnings []string
}

// Inject adds the side-car to pod, in place, as c and the Pod's annotations say, and reports what
// it did. It modifies pod's containers, init containers, annotations and labels (the side-car,
// the lock API address in every container that does not set it, AnnotationStatus,
// contract.AnnotationInjectedImage, contract.AnnotationInjectorVersion,
// contract.LabelInjected), and nothing else: it makes no API calls and reads no clock, so the same pod and c always give the same result.
//
// It returns an error, which the webhook turns into a denial, when an annotation is invalid or the
// Pod cannot take the side-car safely; pod is then left unchanged and the Result is zero. A Pod
// that does not ask for injection, or was injected already, is left unchanged without error, and
// the Result's Action says which.
func Inject(pod *corev1.Pod, c Config) (Result, error) { return inject(pod, c, false) }

// InjectInOptedInNamespace is Inject for a Pod of a namespace labelled LabelNamespaceInject:
// a Pod without AnnotationInject is injected as if it said "true".
func InjectInOptedInNamespace(pod *corev1.Pod, c Config) (Result, error) { return inject(pod, c, true) }

func inject(pod *corev1.Pod, c Config, namespaceOptedIn bool) (Result, error) {
	want, err := wantsInjection(pod.Annotations, namespaceOptedIn)
	if err != nil {
		return Result{}, err
	}
	if !want {
		return Result{Action: ActionNotOptedIn}, nil
	}
	if pod.Annotations[AnnotationStatus] == StatusInjected {
		return Result{Action: ActionAlreadyInjected}, nil
	}
	if containerNamed(pod.Spec.InitContainers, SidecarName) || containerNamed(pod.Spec.Containers, SidecarName) {
		return Result{}, fmt.Errorf("the Pod already has a container named %q but no %s annotation: rename that container, or remove %s=%q",
			SidecarName, AnnotationStatus, AnnotationInject, "true")
	}
	c, err = podConfig(c, pod.Annotations)
	if err != nil {
		return Result{}, err
	}
	var warnings []string
	if pod.Spec.HostNetwork {
		if _, ok := pod.Annotations[AnnotationPort]; !ok {
			return Result{}, fmt.Errorf("the Pod uses hostNetwork, so its side-car would listen on the node's loopback, shared with every other host-network Pod on the node: "+
				"set the %s annotation to a port reserved for this Pod to accept that, or do not use hostNetwork", AnnotationPort)
		}
		warnings = append(warnings, fmt.Sprintf("hostNetwork Pod: the side-car's lock API on 127.0.0.1:%d is reachable by every process on the node", c.Port))
	}
	if pod.Spec.AutomountServiceAccountToken != nil && !*pod.Spec.AutomountServiceAccountToken {
		warnings = append(warnings, "automountServiceAccountToken is false: the side-car has no credentials for the API server and will never be ready; "+
			"mount a token into the side-car or remove automountServiceAccountToken: false")
	}

	addr := "127.0.0.1:" + strconv.Itoa(int(c.Port))
	for i := range pod.Spec.InitContainers {
		setEnvIfAbsent(&pod.Spec.InitContainers[i], wire.EnvAddress, addr)
	}
	for i := range pod.Spec.Containers {
		setEnvIfAbsent(&pod.Spec.Containers[i], wire.EnvAddress, addr)
	}

	sidecar := sidecarContainer(c)
	if c.Mode == ModeNative {
		sidecar.RestartPolicy = ptr.To(corev1.ContainerRestartPolicyAlways)
		// First among the init containers, so that later init containers can use it too.
		pod.Spec.InitContainers = append([]corev1.Container{sidecar}, pod.Spec.InitContainers...)
	} else {
		pod.Spec.Containers = append(pod.Spec.Containers, sidecar)
	}
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	pod.Annotations[AnnotationStatus] = StatusInjected
	pod.Annotations[contract.AnnotationInjectedImage] = c.Image
	pod.Annotations[contract.AnnotationInjectorVersion] = version.Version
	if pod.Labels == nil {
		pod.Labels = map[string]string{}
	}
	pod.Labels[contract.LabelInjected] = "true"
	return Result{Action: ActionInjected, Warnings: warnings}, nil
}

// sidecarContainer builds the side-car container for c.
func sidecarContainer(c Config) corev1.Container {
	healthPort := contract.HealthPort(c.Port)
	probe := func(path string, period, failures int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: path, Port: intstr.FromString(HealthPortName), Scheme: corev1.URISchemeHTTP,
			}},
			PeriodSeconds:    period,
			FailureThreshold: failures,
			TimeoutSeconds:   1,
			SuccessThreshold: 1,
		}
	}
	fieldEnv := func(name, path string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{
			FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: path},
		}}
	}
	env := []corev1.EnvVar{}
	if c.WatchScope != "" {
		env = append(env, corev1.EnvVar{Name: contract.EnvWatchScope, Value: c.WatchScope})
	}
	if c.MaxNames > 0 {
		env = append(env, corev1.EnvVar{Name: contract.EnvMaxNames, Value: strconv.Itoa(c.MaxNames)})
	}
	if c.MetricsNames != 0 {
		env = append(env, corev1.EnvVar{Name: contract.EnvMetricsNames, Value: strconv.Itoa(c.MetricsNames)})
	}
	return corev1.Container{
		Name:            SidecarName,
		Image:           c.Image,
		ImagePullPolicy: c.ImagePullPolicy,
		Env: append([]corev1.EnvVar{
			fieldEnv(contract.EnvPodName, "metadata.name"),
			fieldEnv(contract.EnvPodNamespace, "metadata.namespace"),
			fieldEnv(contract.EnvPodUID, "metadata.uid"),
			{Name: wire.EnvAddress, Value: "127.0.0.1:" + strconv.Itoa(int(c.Port))},
			{Name: contract.EnvHealthAddress, Value: ":" + strconv.Itoa(int(healthPort))},
			{Name: contract.EnvLeaseDuration, Value: c.Timing.LeaseDuration.String()},
			{Name: contract.EnvRenewDeadline, Value: c.Timing.RenewDeadline.String()},
			{Name: contract.EnvRenewPeriod, Value: c.Timing.RenewPeriod.String()},
			{Name: contract.EnvRetryPeriod, Value: c.Timing.RetryPeriod.String()},
			{Name: contract.EnvLogLevel, Value: strconv.Itoa(contract.LogLevels[c.LogLevel])},
			// What its shutdown may release depends on it (contract.ModeClassic).
			{Name: contract.EnvMode, Value: string(c.Mode)},
		}, env...),
		Ports: []corev1.ContainerPort{{Name: HealthPortName, ContainerPort: healthPort, Protocol: corev1.ProtocolTCP}},
		// No probe makes an API request, so an API server outage never takes the Pod out of its
		// Services. The startup probe waits for the side-car's first list of Leases and gates
		// the application containers (native mode): they start once the side-car can answer.
		// It allows five minutes (an API server that cannot be reached, or a service account
		// without Lease RBAC, shows in /readyz's answer and the side-car's logs meanwhile).
		// Readiness then only fails when the side-car stops; liveness when it is wedged.
		StartupProbe:             probe("/readyz", 1, 300),
		ReadinessProbe:           probe("/readyz", 5, 2),
		LivenessProbe:            probe("/healthz", 10, 3),
		Resources:                *c.Resources.DeepCopy(),
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot:             ptr.To(true),
			RunAsUser:                ptr.To(c.RunAsUser),
			RunAsGroup:               ptr.To(c.RunAsGroup),
			AllowPrivilegeEscalation: ptr.To(false),
			ReadOnlyRootFilesystem:   ptr.To(true),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
	}
}

func containerNamed(cs []corev1.Container, name string) bool {
	for _, c := range cs {
		if c.Name == name {
			return true
		}
	}
	return false
}

// setEnvIfAbsent sets name=value in c unless c already sets name (the user's value wins).
func setEnvIfAbsent(c *corev1.Container, name, value string) {
	for _, e := range c.Env {
		if e.Name == name {
			return
		}
	}
	c.Env = append(c.Env, corev1.EnvVar{Name: name, Value: value})
}
