// Package contract_test checks the contracts between the project's parts that may not import each
// other: what the injector writes into a Pod must be what the side-car reads, and the RBAC the
// injector checks and the chart grants must be what the side-car uses.
package contract_test

import (
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"

	"github.com/metaparticle-io/sync/elector"
	"github.com/metaparticle-io/sync/elector/server"
	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/internal/testenv"
	"github.com/metaparticle-io/sync/webhook"
	"github.com/metaparticle-io/sync/wire"
)

// sidecarEnv injects pod and returns the side-car's environment as the kubelet would resolve it,
// with fieldRefs answered from pod's metadata.
func sidecarEnv(t *testing.T, pod *corev1.Pod, cfg webhook.Config) map[string]string {
	t.Helper()
	if _, err := webhook.Inject(pod, cfg); err != nil {
		t.Fatalf("inject: %v", err)
	}
	var sidecar *corev1.Container
	all := append(append([]corev1.Container{}, pod.Spec.InitContainers...), pod.Spec.Containers...)
	for i := range all {
		if all[i].Name == webhook.SidecarName {
			sidecar = &all[i]
		}
	}
	if sidecar == nil {
		t.Fatal("got no side-car")
	}
	fields := map[string]string{"metadata.name": pod.Name, "metadata.namespace": pod.Namespace, "metadata.uid": string(pod.UID)}
	env := map[string]string{}
	for _, e := range sidecar.Env {
		switch {
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil:
			v, ok := fields[e.ValueFrom.FieldRef.FieldPath]
			if !ok {
				t.Fatalf("got fieldRef %s; the test does not know it", e.ValueFrom.FieldRef.FieldPath)
			}
			env[e.Name] = v
		case e.ValueFrom != nil:
			t.Fatalf("got env %s from %+v; want plain values or fieldRefs", e.Name, e.ValueFrom)
		default:
			env[e.Name] = e.Value
		}
	}
	return env
}

func TestInjectedEnvironmentConfiguresTheSidecar(t *testing.T) {
	tests := []struct {
		name        string
		annotations map[string]string
		want        elector.Config
		wantLog     int
	}{
		{"defaults", nil, elector.Config{
			ListenAddress: wire.DefaultAddress, HealthAddress: elector.DefaultHealthAddress,
			LeaseDuration: contract.DefaultLeaseDuration, RenewDeadline: contract.DefaultRenewDeadline,
			RenewPeriod: contract.DefaultRenewPeriod, RetryPeriod: contract.DefaultRetryPeriod,
			Mode: contract.ModeNative,
		}, 0},
		{"overrides", map[string]string{
			webhook.AnnotationPort: "14000", webhook.AnnotationLogLevel: "debug",
			webhook.AnnotationLeaseDuration: "20s", webhook.AnnotationRenewDeadline: "12s",
			webhook.AnnotationRenewPeriod: "4s", webhook.AnnotationRetryPeriod: "500ms",
			webhook.AnnotationMode: "classic",
		}, elector.Config{
			ListenAddress: "127.0.0.1:14000", HealthAddress: ":14001",
			LeaseDuration: 20 * time.Second, RenewDeadline: 12 * time.Second,
			RenewPeriod: 4 * time.Second, RetryPeriod: 500 * time.Millisecond,
			Mode: contract.ModeClassic,
		}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app"}}}}
			pod.Name, pod.Namespace, pod.UID = "web-0", "shop", "uid-1"
			pod.Annotations = map[string]string{webhook.AnnotationInject: "true"}
			for k, v := range tt.annotations {
				pod.Annotations[k] = v
			}
			env := sidecarEnv(t, pod, webhook.DefaultConfig("img"))
			s, err := server.ParseSettings(nil, func(k string) string { return env[k] }, io.Discard)
			if err != nil {
				t.Fatalf("side-car refused the injected environment: %v", err)
			}
			got := s.Config
			if got.PodName != "web-0" || got.Namespace != "shop" || got.PodUID != "uid-1" {
				t.Errorf("got pod %q namespace %q uid %q; want web-0, shop, uid-1", got.PodName, got.Namespace, got.PodUID)
			}
			if got.ListenAddress != tt.want.ListenAddress || got.HealthAddress != tt.want.HealthAddress {
				t.Errorf("got listen %q health %q; want %q and %q", got.ListenAddress, got.HealthAddress, tt.want.ListenAddress, tt.want.HealthAddress)
			}
			if got.LeaseDuration != tt.want.LeaseDuration || got.RenewDeadline != tt.want.RenewDeadline ||
				got.RenewPeriod != tt.want.RenewPeriod || got.RetryPeriod != tt.want.RetryPeriod {
				t.Errorf("got timing %v/%v/%v/%v; want %v/%v/%v/%v", got.LeaseDuration, got.RenewDeadline, got.RenewPeriod, got.RetryPeriod,
					tt.want.LeaseDuration, tt.want.RenewDeadline, tt.want.RenewPeriod, tt.want.RetryPeriod)
			}
			if got.Mode != tt.want.Mode {
				t.Errorf("got side-car mode %q; want %q (how it was injected)", got.Mode, tt.want.Mode)
			}
			if s.LogLevel != tt.wantLog {
				t.Errorf("got side-car log level %d; want %d", s.LogLevel, tt.wantLog)
			}
			if env[wire.EnvAddress] == "" {
				t.Errorf("got no %s in the side-car; want the address the app uses", wire.EnvAddress)
			}
		})
	}
}

func TestInjectorDefaultsAreTheSidecarDefaults(t *testing.T) {
	// The injector writes its timing into every side-car explicitly, so its defaults must be
	// the side-car's: a side-car given no timing must run as an injected one does.
	got := webhook.DefaultConfig("x").Timing
	want := contract.Timing{}.WithDefaults()
	if got != want {
		t.Errorf("got injector timing %+v; want the side-car's defaults %+v", got, want)
	}
	if p := webhook.DefaultConfig("x").Port; int(p) != wire.DefaultPort {
		t.Errorf("got injector port %d; want %d", p, wire.DefaultPort)
	}
}

// TestRBACVerbs keeps the side-car Role in deploy/rbac, the chart's ClusterRole and the injector's
// access check on the same verbs.
func TestRBACVerbs(t *testing.T) {
	root, err := testenv.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "deploy", "rbac", "sidecar-role.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var role rbacv1.Role
	if err := yaml.Unmarshal(b, &role); err != nil {
		t.Fatal(err)
	}
	if len(role.Rules) != 1 || !slices.Equal(role.Rules[0].Verbs, contract.SidecarLeaseVerbs) {
		t.Errorf("got deploy/rbac verbs %+v; want %v (contract.SidecarLeaseVerbs)", role.Rules, contract.SidecarLeaseVerbs)
	}
}
