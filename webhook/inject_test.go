package webhook_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/utils/ptr"

	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/internal/version"
	"github.com/metaparticle-io/sync/webhook"
	"github.com/metaparticle-io/sync/wire"
)

const testImage = "example.test/metaparticle-sync/elector:v0"

// check inspects the result of Inject.
type check func(t *testing.T, before, after *corev1.Pod, res webhook.Result, err error)

// skipped checks that Inject left the Pod unchanged without error and said why.
func skipped(why webhook.Action) check {
	return func(t *testing.T, before, after *corev1.Pod, res webhook.Result, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("got error %v; want none", err)
		}
		if res.Action != why {
			t.Errorf("got action %q; want %q", res.Action, why)
		}
		if len(res.Warnings) != 0 {
			t.Errorf("got warnings %q; want none", res.Warnings)
		}
		if !equality.Semantic.DeepEqual(before, after) {
			t.Errorf("got Pod changed; want it unchanged")
		}
	}
}

func deniedWith(fragments ...string) check {
	return func(t *testing.T, before, after *corev1.Pod, res webhook.Result, err error) {
		t.Helper()
		if err == nil {
			t.Fatalf("got no error (action %q); want a denial mentioning %q", res.Action, fragments)
		}
		for _, f := range fragments {
			if !strings.Contains(err.Error(), f) {
				t.Errorf("got error %q; want it to mention %q", err, f)
			}
		}
		if res.Action != "" || res.Warnings != nil {
			t.Errorf("got result %+v with the denial; want the zero Result", res)
		}
		if !equality.Semantic.DeepEqual(before, after) {
			t.Errorf("got Pod changed on denial; want it unchanged")
		}
	}
}

func injectedAs(mode webhook.Mode) check {
	return func(t *testing.T, _, after *corev1.Pod, res webhook.Result, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("got error %v; want injection", err)
		}
		if res.Action != webhook.ActionInjected {
			t.Errorf("got action %q; want %q", res.Action, webhook.ActionInjected)
		}
		if got := after.Annotations[webhook.AnnotationStatus]; got != webhook.StatusInjected {
			t.Errorf("got status annotation %q; want %q", got, webhook.StatusInjected)
		}
		n := countSidecars(after)
		if n != 1 {
			t.Fatalf("got %d side-car containers; want 1", n)
		}
		s, native := sidecar(after)
		// What was injected is recorded on the Pod, and the Pod can be selected.
		if got := after.Annotations[contract.AnnotationInjectedImage]; got != s.Image {
			t.Errorf("got %s %q; want the side-car's image %q", contract.AnnotationInjectedImage, got, s.Image)
		}
		if got := after.Annotations[contract.AnnotationInjectorVersion]; got != version.Version {
			t.Errorf("got %s %q; want %q", contract.AnnotationInjectorVersion, got, version.Version)
		}
		if got := after.Labels[contract.LabelInjected]; got != "true" {
			t.Errorf("got label %s %q; want \"true\"", contract.LabelInjected, got)
		}
		if native != (mode == webhook.ModeNative) {
			t.Errorf("got native=%v; want mode %s", native, mode)
		}
		if native {
			if after.Spec.InitContainers[0].Name != webhook.SidecarName {
				t.Errorf("got first init container %q; want the side-car first", after.Spec.InitContainers[0].Name)
			}
			if s.RestartPolicy == nil || *s.RestartPolicy != corev1.ContainerRestartPolicyAlways {
				t.Errorf("got side-car restartPolicy %v; want Always", s.RestartPolicy)
			}
		} else if s.RestartPolicy != nil {
			t.Errorf("got classic side-car restartPolicy %v; want unset", *s.RestartPolicy)
		}
		sc := s.SecurityContext
		switch {
		case sc == nil:
			t.Fatal("got no side-car securityContext")
		case !ptr.Deref(sc.RunAsNonRoot, false), ptr.Deref(sc.AllowPrivilegeEscalation, true),
			!ptr.Deref(sc.ReadOnlyRootFilesystem, false), sc.Capabilities == nil,
			len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL",
			sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault:
			t.Errorf("got side-car securityContext %+v; want restricted (non-root, no escalation, read-only, drop ALL, RuntimeDefault)", sc)
		}
		if s.StartupProbe == nil || s.ReadinessProbe == nil {
			t.Errorf("got startup probe %v, readiness probe %v; want both", s.StartupProbe, s.ReadinessProbe)
		}
		for _, name := range []string{contract.EnvPodName, contract.EnvPodNamespace, contract.EnvPodUID} {
			e := envNamed(s.Env, name)
			if e == nil || e.ValueFrom == nil || e.ValueFrom.FieldRef == nil {
				t.Errorf("got side-car env %s = %+v; want a downward API fieldRef", name, e)
			}
		}
	}
}

func appEnv(container, want string) check {
	return func(t *testing.T, _, after *corev1.Pod, _ webhook.Result, _ error) {
		t.Helper()
		for _, cs := range [][]corev1.Container{after.Spec.InitContainers, after.Spec.Containers} {
			for _, c := range cs {
				if c.Name != container {
					continue
				}
				e := envNamed(c.Env, wire.EnvAddress)
				if e == nil || e.Value != want {
					t.Errorf("got %s env %s = %+v; want %q", container, wire.EnvAddress, e, want)
				}
				return
			}
		}
		t.Errorf("got no container %q", container)
	}
}

func sidecarEnv(name, want string) check {
	return func(t *testing.T, _, after *corev1.Pod, _ webhook.Result, _ error) {
		t.Helper()
		s, _ := sidecar(after)
		if e := envNamed(s.Env, name); e == nil || e.Value != want {
			t.Errorf("got side-car env %s = %+v; want %q", name, e, want)
		}
	}
}

// sidecarEnvAbsent checks that the side-car's environment does not set name: its default applies.
func sidecarEnvAbsent(name string) check {
	return func(t *testing.T, _, after *corev1.Pod, _ webhook.Result, _ error) {
		t.Helper()
		s, _ := sidecar(after)
		if e := envNamed(s.Env, name); e != nil {
			t.Errorf("got side-car env %s = %q; want it unset (the side-car's default)", name, e.Value)
		}
	}
}

func sidecarField(desc string, got func(corev1.Container) string, want string) check {
	return func(t *testing.T, _, after *corev1.Pod, _ webhook.Result, _ error) {
		t.Helper()
		s, _ := sidecar(after)
		if g := got(s); g != want {
			t.Errorf("got side-car %s %q; want %q", desc, g, want)
		}
	}
}

func warned(fragment string) check {
	return func(t *testing.T, _, _ *corev1.Pod, res webhook.Result, _ error) {
		t.Helper()
		for _, w := range res.Warnings {
			if strings.Contains(w, fragment) {
				return
			}
		}
		t.Errorf("got warnings %q; want one mentioning %q", res.Warnings, fragment)
	}
}

func noWarnings() check {
	return func(t *testing.T, _, _ *corev1.Pod, res webhook.Result, _ error) {
		t.Helper()
		if len(res.Warnings) != 0 {
			t.Errorf("got warnings %q; want none", res.Warnings)
		}
	}
}

func TestInject(t *testing.T) {
	already := newPod(optedIn())
	if _, err := webhook.Inject(already, webhook.DefaultConfig(testImage)); err != nil {
		t.Fatalf("preparing an injected Pod: %v", err)
	}

	tests := []struct {
		name   string
		pod    *corev1.Pod
		checks []check
	}{
		{"no annotation", newPod(), []check{skipped(webhook.ActionNotOptedIn)}},
		{"opted out", newPod(annotated(webhook.AnnotationInject, "false")), []check{skipped(webhook.ActionNotOptedIn)}},
		{"bad opt-in value", newPod(annotated(webhook.AnnotationInject, "yes")),
			[]check{deniedWith(webhook.AnnotationInject, `"yes"`, `"true"`, `"false"`)}},
		{"plain Pod", newPod(optedIn()), []check{injectedAs(webhook.ModeNative), appEnv("app", "127.0.0.1:13131"),
			sidecarEnv(wire.EnvAddress, "127.0.0.1:13131"), sidecarEnv(contract.EnvHealthAddress, ":13132"),
			sidecarEnv(contract.EnvLeaseDuration, "15s"), sidecarEnv(contract.EnvLogLevel, "0"), noWarnings(),
			sidecarEnvAbsent(contract.EnvWatchScope), sidecarEnvAbsent(contract.EnvMaxNames)}},
		{"several containers and init containers", newPod(optedIn(), withContainer("worker"), withInitContainer("migrate")),
			[]check{injectedAs(webhook.ModeNative), appEnv("app", "127.0.0.1:13131"), appEnv("worker", "127.0.0.1:13131"),
				appEnv("migrate", "127.0.0.1:13131")}},
		{"user's address wins", newPod(optedIn(), withContainer("custom", corev1.EnvVar{Name: wire.EnvAddress, Value: "127.0.0.1:9"})),
			[]check{injectedAs(webhook.ModeNative), appEnv("custom", "127.0.0.1:9"), appEnv("app", "127.0.0.1:13131")}},
		{"already injected", already, []check{skipped(webhook.ActionAlreadyInjected)}},
		{"foreign container with the side-car's name", newPod(optedIn(), withContainer(webhook.SidecarName)),
			[]check{deniedWith(webhook.SidecarName, webhook.AnnotationStatus)}},
		{"classic mode", newPod(optedIn(), annotated(webhook.AnnotationMode, "classic")), []check{injectedAs(webhook.ModeClassic)}},
		{"overrides", newPod(optedIn(), annotated(
			webhook.AnnotationImage, "example.test/other:v2",
			webhook.AnnotationPort, "14000",
			webhook.AnnotationLogLevel, "debug",
			webhook.AnnotationCPURequest, "50m", webhook.AnnotationCPULimit, "1",
			webhook.AnnotationMemoryRequest, "40Mi", webhook.AnnotationMemoryLimit, "128Mi",
			webhook.AnnotationLeaseDuration, "20s", webhook.AnnotationRenewDeadline, "12s",
			webhook.AnnotationRenewPeriod, "4s", webhook.AnnotationRetryPeriod, "500ms",
			webhook.AnnotationWatchScope, "namespace", webhook.AnnotationMaxNames, "500",
			webhook.AnnotationMetricsNames, "-1",
		)), []check{
			sidecarEnv(contract.EnvWatchScope, "namespace"), sidecarEnv(contract.EnvMaxNames, "500"),
			sidecarEnv(contract.EnvMetricsNames, "-1"),
			injectedAs(webhook.ModeNative), appEnv("app", "127.0.0.1:14000"),
			sidecarEnv(wire.EnvAddress, "127.0.0.1:14000"), sidecarEnv(contract.EnvHealthAddress, ":14001"),
			sidecarEnv(contract.EnvLogLevel, "2"), sidecarEnv(contract.EnvLeaseDuration, "20s"),
			sidecarEnv(contract.EnvRenewDeadline, "12s"), sidecarEnv(contract.EnvRenewPeriod, "4s"),
			sidecarEnv(contract.EnvRetryPeriod, "500ms"),
			sidecarField("image", func(c corev1.Container) string { return c.Image }, "example.test/other:v2"),
			sidecarField("cpu request", func(c corev1.Container) string { return c.Resources.Requests.Cpu().String() }, "50m"),
			sidecarField("cpu limit", func(c corev1.Container) string { return c.Resources.Limits.Cpu().String() }, "1"),
			sidecarField("memory request", func(c corev1.Container) string { return c.Resources.Requests.Memory().String() }, "40Mi"),
			sidecarField("memory limit", func(c corev1.Container) string { return c.Resources.Limits.Memory().String() }, "128Mi"),
			sidecarField("health port", func(c corev1.Container) string {
				return fmt.Sprintf("%s/%d", c.Ports[0].Name, c.Ports[0].ContainerPort)
			}, webhook.HealthPortName+"/14001"),
		}},
		{"bad metrics names", newPod(optedIn(), annotated(webhook.AnnotationMetricsNames, "0")),
			[]check{deniedWith(webhook.AnnotationMetricsNames, `"0"`, "-1")}},
		{"bad mode", newPod(optedIn(), annotated(webhook.AnnotationMode, "sidecar")),
			[]check{deniedWith(webhook.AnnotationMode, `"sidecar"`, "native", "classic")}},
		{"bad port", newPod(optedIn(), annotated(webhook.AnnotationPort, "80")),
			[]check{deniedWith(webhook.AnnotationPort, `"80"`, "1024")}},
		{"port not a number", newPod(optedIn(), annotated(webhook.AnnotationPort, "http")),
			[]check{deniedWith(webhook.AnnotationPort, `"http"`)}},
		{"bad watch scope", newPod(optedIn(), annotated(webhook.AnnotationWatchScope, "cluster")),
			[]check{deniedWith(webhook.AnnotationWatchScope, `"cluster"`, `"names"`, `"namespace"`)}},
		{"bad max names", newPod(optedIn(), annotated(webhook.AnnotationMaxNames, "0")),
			[]check{deniedWith(webhook.AnnotationMaxNames, `"0"`, "positive")}},
		{"bad log level", newPod(optedIn(), annotated(webhook.AnnotationLogLevel, "loud")),
			[]check{deniedWith(webhook.AnnotationLogLevel, `"loud"`, "one of debug, info")}},
		{"bad quantity", newPod(optedIn(), annotated(webhook.AnnotationMemoryLimit, "lots")),
			[]check{deniedWith(webhook.AnnotationMemoryLimit, `"lots"`, "64Mi")}},
		{"negative quantity", newPod(optedIn(), annotated(webhook.AnnotationCPURequest, "-1")),
			[]check{deniedWith(webhook.AnnotationCPURequest, `"-1"`)}},
		{"request over limit", newPod(optedIn(), annotated(webhook.AnnotationMemoryRequest, "1Gi")),
			[]check{deniedWith("memory request 1Gi exceeds its limit 64Mi")}},
		{"bad duration", newPod(optedIn(), annotated(webhook.AnnotationLeaseDuration, "soon")),
			[]check{deniedWith(webhook.AnnotationLeaseDuration, `"soon"`, "15s")}},
		{"duration above 1h", newPod(optedIn(), annotated(webhook.AnnotationLeaseDuration, "2h")),
			[]check{deniedWith(webhook.AnnotationLeaseDuration, `"2h"`, "up to 1h in whole seconds")}},
		{"zero duration", newPod(optedIn(), annotated(webhook.AnnotationRetryPeriod, "0s")),
			[]check{deniedWith(webhook.AnnotationRetryPeriod, `"0s"`, "positive")}},
		// The side-car's timing rules (contract.Timing.Validate), with its messages.
		{"timing out of order", newPod(optedIn(), annotated(webhook.AnnotationRenewDeadline, "30s")),
			[]check{deniedWith(webhook.AnnotationLeaseDuration, webhook.AnnotationRetryPeriod,
				"renew deadline 30s must be less than lease duration 15s")}},
		{"retry period below the side-car's minimum", newPod(optedIn(), annotated(webhook.AnnotationRetryPeriod, "5ms")),
			[]check{deniedWith(webhook.AnnotationRetryPeriod, "retry period 5ms must be at least 10ms")}},
		{"retry period just below the minimum", newPod(optedIn(), annotated(webhook.AnnotationRetryPeriod, "9ms")),
			[]check{deniedWith(webhook.AnnotationRetryPeriod, "retry period 9ms must be at least 10ms")}},
		{"retry period at the minimum", newPod(optedIn(), annotated(webhook.AnnotationRetryPeriod, "10ms")),
			[]check{injectedAs(webhook.ModeNative), sidecarEnv(contract.EnvRetryPeriod, "10ms")}},
		{"retry period above renew period", newPod(optedIn(), annotated(webhook.AnnotationRetryPeriod, "6s")),
			[]check{deniedWith(webhook.AnnotationRetryPeriod, "retry period 6s must not exceed renew period 5s")}},
		{"retry period equal to renew period", newPod(optedIn(), annotated(webhook.AnnotationRetryPeriod, "5s")),
			[]check{injectedAs(webhook.ModeNative), sidecarEnv(contract.EnvRetryPeriod, "5s")}},
		{"renew period not below renew deadline", newPod(optedIn(), annotated(webhook.AnnotationRenewPeriod, "10s")),
			[]check{deniedWith(webhook.AnnotationRenewPeriod, "renew period 10s must be less than renew deadline 10s")}},
		{"lease duration not whole seconds", newPod(optedIn(), annotated(webhook.AnnotationLeaseDuration, "1500ms")),
			[]check{deniedWith(webhook.AnnotationLeaseDuration, "lease duration 1.5s must be a whole number of seconds")}},
		{"lease duration below 1s", newPod(optedIn(), annotated(webhook.AnnotationLeaseDuration, "500ms",
			webhook.AnnotationRenewDeadline, "400ms", webhook.AnnotationRenewPeriod, "300ms", webhook.AnnotationRetryPeriod, "100ms")),
			[]check{deniedWith(webhook.AnnotationLeaseDuration, "lease duration 500ms must lie within [1s, 1h0m0s]")}},
		{"lease duration at 1h", newPod(optedIn(), annotated(webhook.AnnotationLeaseDuration, "1h")),
			[]check{injectedAs(webhook.ModeNative), sidecarEnv(contract.EnvLeaseDuration, "1h0m0s")}},
		{"every bad annotation named", newPod(optedIn(), annotated(webhook.AnnotationPort, "1", webhook.AnnotationImage, "a b")),
			[]check{deniedWith(webhook.AnnotationPort, webhook.AnnotationImage)}},
		{"hostNetwork without a port", newPod(optedIn(), withHostNetwork()),
			[]check{deniedWith("hostNetwork", webhook.AnnotationPort)}},
		{"hostNetwork with a port", newPod(optedIn(), withHostNetwork(), annotated(webhook.AnnotationPort, "15000")),
			[]check{injectedAs(webhook.ModeNative), warned("every process on the node")}},
		{"no service account token", newPod(optedIn(), func(p *corev1.Pod) { p.Spec.AutomountServiceAccountToken = ptr.To(false) }),
			[]check{injectedAs(webhook.ModeNative), warned("automountServiceAccountToken")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := tt.pod.DeepCopy()
			after := tt.pod.DeepCopy()
			res, err := webhook.Inject(after, webhook.DefaultConfig(testImage))
			for _, c := range tt.checks {
				c(t, before, after, res, err)
			}
		})
	}
}

// TestInjectInOptedInNamespace: in a namespace that opted in, a Pod without the annotation is
// injected, "false" still opts out, and a bad value is still denied.
func TestInjectInOptedInNamespace(t *testing.T) {
	tests := []struct {
		name   string
		pod    *corev1.Pod
		checks []check
	}{
		{"no annotation", newPod(), []check{injectedAs(webhook.ModeNative), appEnv("app", "127.0.0.1:13131")}},
		{"annotated", newPod(optedIn()), []check{injectedAs(webhook.ModeNative)}},
		{"opted out", newPod(annotated(webhook.AnnotationInject, "false")), []check{skipped(webhook.ActionNotOptedIn)}},
		{"bad opt-in value", newPod(annotated(webhook.AnnotationInject, "yes")), []check{deniedWith(webhook.AnnotationInject, `"yes"`)}},
		{"overrides apply", newPod(annotated(webhook.AnnotationMode, "classic")), []check{injectedAs(webhook.ModeClassic)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := tt.pod.DeepCopy()
			after := tt.pod.DeepCopy()
			res, err := webhook.InjectInOptedInNamespace(after, webhook.DefaultConfig(testImage))
			for _, c := range tt.checks {
				c(t, before, after, res, err)
			}
		})
	}
}

// TestInjectIdempotent runs Inject again on its own output, as a reinvocation would.
func TestInjectIdempotent(t *testing.T) {
	for _, mode := range []string{"native", "classic"} {
		pod := newPod(optedIn(), annotated(webhook.AnnotationMode, mode), withInitContainer("init"))
		cfg := webhook.DefaultConfig(testImage)
		if _, err := webhook.Inject(pod, cfg); err != nil {
			t.Fatalf("%s: first injection: %v", mode, err)
		}
		once := pod.DeepCopy()
		if _, err := webhook.Inject(pod, cfg); err != nil {
			t.Fatalf("%s: second injection: %v", mode, err)
		}
		if !equality.Semantic.DeepEqual(once, pod) {
			t.Errorf("%s: got Pod changed by a second injection; want it unchanged", mode)
		}
		if n := countSidecars(pod); n != 1 {
			t.Errorf("%s: got %d side-cars; want 1", mode, n)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name   string
		change func(*webhook.Config)
		want   string // fragment of the error; empty means valid
	}{
		{"defaults", func(*webhook.Config) {}, ""},
		{"no image", func(c *webhook.Config) { c.Image = "" }, "image is required"},
		{"bad mode", func(c *webhook.Config) { c.Mode = "x" }, `mode "x"`},
		{"bad pull policy", func(c *webhook.Config) { c.ImagePullPolicy = "Sometimes" }, "Sometimes"},
		{"privileged port", func(c *webhook.Config) { c.Port = 80 }, "port 80"},
		{"root user", func(c *webhook.Config) { c.RunAsUser = 0 }, "non-root"},
		{"bad log level", func(c *webhook.Config) { c.LogLevel = "trace" }, "trace"},
		{"bad log level lists the levels sorted", func(c *webhook.Config) { c.LogLevel = "trace" }, `log level "trace" must be one of debug, info`},
		{"highest port", func(c *webhook.Config) { c.Port = 65534 }, ""},
		{"no room for the health port", func(c *webhook.Config) { c.Port = 65535 }, "port 65535 must be between 1024 and 65534"},
		// The side-car's timing rules (contract.Timing.Validate), with its messages.
		{"renew deadline not below lease", func(c *webhook.Config) { c.Timing.RenewDeadline = c.Timing.LeaseDuration },
			"renew deadline 15s must be less than lease duration 15s"},
		{"renew period not below deadline", func(c *webhook.Config) { c.Timing.RenewPeriod = 10 * time.Second }, "renew period 10s must be less than renew deadline 10s"},
		{"retry above renew period", func(c *webhook.Config) { c.Timing.RetryPeriod = 6 * time.Second }, "retry period 6s must not exceed renew period 5s"},
		{"retry below 10ms", func(c *webhook.Config) { c.Timing.RetryPeriod = 5 * time.Millisecond }, "retry period 5ms must be at least 10ms"},
		{"retry at 10ms", func(c *webhook.Config) { c.Timing.RetryPeriod = 10 * time.Millisecond }, ""},
		{"negative retry", func(c *webhook.Config) { c.Timing.RetryPeriod = -time.Second }, "durations must not be negative"},
		{"zero retry means the default", func(c *webhook.Config) { c.Timing.RetryPeriod = 0 }, ""},
		{"fractional lease", func(c *webhook.Config) { c.Timing.LeaseDuration = 15500 * time.Millisecond }, "lease duration 15.5s must be a whole number of seconds"},
		{"lease above 1h", func(c *webhook.Config) { c.Timing.LeaseDuration = 2 * time.Hour }, "lease duration 2h0m0s must lie within [1s, 1h0m0s]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := webhook.DefaultConfig(testImage)
			tt.change(&c)
			_, err := webhook.NewInjector(c, nil)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("got error %v; want none", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("got error %v; want one containing %q", err, tt.want)
			}
		})
	}
}

// TestInjectZeroTimingMeansDefault: as for the side-car (contract.Timing), a zero duration in the
// injector's configuration means its default, and the side-car is given the default explicitly.
func TestInjectZeroTimingMeansDefault(t *testing.T) {
	c := webhook.DefaultConfig(testImage)
	c.Timing = contract.Timing{}
	if _, err := webhook.NewInjector(c, nil); err != nil {
		t.Fatalf("got error %v for a zero timing; want it accepted as the defaults", err)
	}
	for _, annotations := range [][]string{nil, {webhook.AnnotationRetryPeriod, "500ms"}} {
		pod := newPod(optedIn(), annotated(annotations...))
		if _, err := webhook.Inject(pod, c); err != nil {
			t.Fatalf("annotations %q: got error %v; want injection", annotations, err)
		}
		want := contract.DefaultTiming
		if annotations != nil {
			want.RetryPeriod = 500 * time.Millisecond
		}
		s, _ := sidecar(pod)
		for name, d := range map[string]time.Duration{
			contract.EnvLeaseDuration: want.LeaseDuration, contract.EnvRenewDeadline: want.RenewDeadline,
			contract.EnvRenewPeriod: want.RenewPeriod, contract.EnvRetryPeriod: want.RetryPeriod,
		} {
			if e := envNamed(s.Env, name); e == nil || e.Value != d.String() {
				t.Errorf("annotations %q: got side-car env %s = %+v; want %q", annotations, name, e, d)
			}
		}
	}
}

// TestInjectTimingIsTheSidecars proves, over a grid of timing annotations, that the injector
// admits exactly the timings the side-car starts with (contract.Timing.Validate) and denies the
// others with the side-car's own message.
func TestInjectTimingIsTheSidecars(t *testing.T) {
	values := []string{"", "5ms", "10ms", "500ms", "1s", "1500ms", "5s", "10s", "15s", "1h"}
	keys := []string{webhook.AnnotationLeaseDuration, webhook.AnnotationRenewDeadline, webhook.AnnotationRenewPeriod, webhook.AnnotationRetryPeriod}
	admitted, denied := 0, 0
	idx := make([]int, len(keys))
	for {
		timing := contract.DefaultTiming
		fields := []*time.Duration{&timing.LeaseDuration, &timing.RenewDeadline, &timing.RenewPeriod, &timing.RetryPeriod}
		pod := newPod(optedIn())
		for k, i := range idx {
			if v := values[i]; v != "" {
				d, err := time.ParseDuration(v)
				if err != nil {
					t.Fatal(err)
				}
				*fields[k] = d
				annotated(keys[k], v)(pod)
			}
		}
		want := timing.Validate()
		_, err := webhook.Inject(pod, webhook.DefaultConfig(testImage))
		switch {
		case want == nil && err != nil:
			t.Errorf("annotations %v: got denial %v; want admission (the side-car accepts %+v)", pod.Annotations, err, timing)
		case want != nil && err == nil:
			t.Errorf("annotations %v: got admission; want the side-car's refusal %q", pod.Annotations, want)
		case want != nil && !strings.Contains(err.Error(), want.Error()):
			t.Errorf("annotations %v: got denial %q; want it to contain the side-car's message %q", pod.Annotations, err, want)
		case want == nil:
			admitted++
		default:
			denied++
		}
		k := 0
		for k < len(idx) && idx[k] == len(values)-1 {
			idx[k] = 0
			k++
		}
		if k == len(idx) {
			break
		}
		idx[k]++
	}
	if admitted == 0 || denied == 0 {
		t.Errorf("got %d admitted and %d denied timings; want some of each", admitted, denied)
	}
}

func sidecar(p *corev1.Pod) (c corev1.Container, native bool) {
	for _, c := range p.Spec.InitContainers {
		if c.Name == webhook.SidecarName {
			return c, true
		}
	}
	for _, c := range p.Spec.Containers {
		if c.Name == webhook.SidecarName {
			return c, false
		}
	}
	return corev1.Container{}, false
}

func countSidecars(p *corev1.Pod) int {
	n := 0
	for _, cs := range [][]corev1.Container{p.Spec.InitContainers, p.Spec.Containers} {
		for _, c := range cs {
			if c.Name == webhook.SidecarName {
				n++
			}
		}
	}
	return n
}

func envNamed(env []corev1.EnvVar, name string) *corev1.EnvVar {
	for i := range env {
		if env[i].Name == name {
			return &env[i]
		}
	}
	return nil
}
