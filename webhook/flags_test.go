package webhook_test

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/metaparticle-io/sync/internal/testenv"
	"github.com/metaparticle-io/sync/webhook"
)

// parseConfigFlags binds a Config from defaults to a new FlagSet, parses args and returns the
// result.
func parseConfigFlags(t *testing.T, defaults webhook.Config, args ...string) (webhook.Config, error) {
	t.Helper()
	fs := flag.NewFlagSet("injector", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	f := webhook.BindConfigFlags(fs, defaults)
	if err := fs.Parse(args); err != nil {
		return webhook.Config{}, err
	}
	return f.Config()
}

func TestConfigFlagsDefaults(t *testing.T) {
	got, err := parseConfigFlags(t, webhook.DefaultConfig(testImage))
	if err != nil {
		t.Fatalf("got error %v; want none", err)
	}
	if want := webhook.DefaultConfig(testImage); !equality.Semantic.DeepEqual(got, want) {
		t.Errorf("got %+v without flags; want the defaults %+v", got, want)
	}
}

// TestConfigFlagsHelp pins the flags' names, defaults and help.
func TestConfigFlagsHelp(t *testing.T) {
	fs := flag.NewFlagSet("injector", flag.ContinueOnError)
	webhook.BindConfigFlags(fs, webhook.DefaultConfig(""))
	want := map[string][2]string{ // name: default, usage
		"sidecar-image":             {"", "side-car image to inject (required)"},
		"sidecar-image-pull-policy": {"IfNotPresent", "side-car imagePullPolicy: Always, IfNotPresent or Never"},
		"sidecar-mode":              {"native", "default injection mode: native (init container with restartPolicy Always, Kubernetes >= 1.29) or classic"},
		"sidecar-port":              {"13131", "side-car lock API port on 127.0.0.1; its health port is this plus one"},
		"sidecar-cpu-request":       {"10m", "side-car CPU request"},
		"sidecar-cpu-limit":         {"200m", "side-car CPU limit"},
		"sidecar-memory-request":    {"32Mi", "side-car memory request"},
		"sidecar-memory-limit":      {"64Mi", "side-car memory limit"},
		"lease-duration":            {"15s", "side-car Lease duration (whole seconds)"},
		"renew-deadline":            {"10s", "side-car renew deadline"},
		"renew-period":              {"5s", "side-car renew period"},
		"retry-period":              {"1s", "side-car retry period"},
		"sidecar-log-level":         {"info", "side-car log level: info or debug"},
		"sidecar-uid":               {"65532", "side-car runAsUser (the image's non-root user)"},
		"sidecar-gid":               {"65532", "side-car runAsGroup (the image's non-root group)"},
		"sidecar-cluster-role":      {"metaparticle-sync-sidecar", "ClusterRole that the RBAC warning tells users to bind"},
		"sidecar-metrics-names":     {"0", "names each side-car exports in metaparticle_sync_held (its --metrics-names): -1 for none, 0 for the side-car's default (50)"},
	}
	n := 0
	fs.VisitAll(func(f *flag.Flag) {
		n++
		w, ok := want[f.Name]
		if !ok {
			t.Errorf("got flag --%s; want only %d known flags", f.Name, len(want))
			return
		}
		if f.DefValue != w[0] || f.Usage != w[1] {
			t.Errorf("got --%s default %q usage %q; want %q and %q", f.Name, f.DefValue, f.Usage, w[0], w[1])
		}
	})
	if n != len(want) {
		t.Errorf("got %d flags; want %d", n, len(want))
	}
}

func TestConfigFlags(t *testing.T) {
	got, err := parseConfigFlags(t, webhook.DefaultConfig(""),
		"--sidecar-image=example.test/elector:v1", "--sidecar-image-pull-policy=Always", "--sidecar-mode=classic",
		"--sidecar-port=14000", "--sidecar-log-level=debug", "--sidecar-uid=1000", "--sidecar-gid=2000",
		"--sidecar-cluster-role=rel-sidecar", "--sidecar-cpu-request=50m", "--sidecar-memory-request=40Mi",
		"--sidecar-cpu-limit=1", "--sidecar-memory-limit=128Mi", "--lease-duration=20s", "--renew-deadline=12s",
		"--renew-period=4s", "--retry-period=500ms")
	if err != nil {
		t.Fatalf("got error %v; want none", err)
	}
	want := webhook.DefaultConfig("example.test/elector:v1")
	want.ImagePullPolicy = corev1.PullAlways
	want.Mode = webhook.ModeClassic
	want.Port = 14000
	want.LogLevel = "debug"
	want.RunAsUser, want.RunAsGroup = 1000, 2000
	want.SidecarClusterRole = "rel-sidecar"
	want.Resources.Requests = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("50m"), corev1.ResourceMemory: resource.MustParse("40Mi")}
	want.Resources.Limits = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1"), corev1.ResourceMemory: resource.MustParse("128Mi")}
	want.Timing.LeaseDuration, want.Timing.RenewDeadline = 20*time.Second, 12*time.Second
	want.Timing.RenewPeriod, want.Timing.RetryPeriod = 4*time.Second, 500*time.Millisecond
	if !equality.Semantic.DeepEqual(got, want) {
		t.Errorf("got %+v; want %+v", got, want)
	}
}

func TestConfigFlagsErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string // fragment of the error
	}{
		{"no image", nil, "image is required"},
		{"port not a number", []string{"--sidecar-port=http"}, `invalid value "http" for flag -sidecar-port`},
		{"port beyond int32", []string{"--sidecar-port=4294980427"}, "port 4294980427 must be between 1024 and 65534"},
		{"privileged port", []string{"--sidecar-port=80"}, "port 80 must be between 1024 and 65534"},
		{"bad quantity", []string{"--sidecar-memory-limit=lots"}, `invalid value "lots" for flag -sidecar-memory-limit`},
		{"request over limit", []string{"--sidecar-cpu-request=1"}, "cpu request 1 exceeds its limit 200m"},
		{"timing the side-car refuses", []string{"--retry-period=5ms"}, "retry period 5ms must be at least 10ms"},
		{"lease duration not whole seconds", []string{"--lease-duration=15500ms"}, "lease duration 15.5s must be a whole number of seconds"},
		{"bad log level", []string{"--sidecar-log-level=loud"}, `log level "loud" must be one of debug, info`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.args
			if tt.name != "no image" {
				args = append([]string{"--sidecar-image=x"}, args...)
			}
			_, err := parseConfigFlags(t, webhook.DefaultConfig(""), args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got error %v; want one containing %q", err, tt.want)
			}
		})
	}
}

// TestConfigFlagsQuantityWithoutDefault: a resource flag sets its entry even when the defaults
// have none, and leaves the list alone when not given.
func TestConfigFlagsQuantityWithoutDefault(t *testing.T) {
	defaults := webhook.DefaultConfig(testImage)
	defaults.Resources = corev1.ResourceRequirements{}
	got, err := parseConfigFlags(t, defaults, "--sidecar-memory-limit=64Mi")
	if err != nil {
		t.Fatalf("got error %v; want none", err)
	}
	want := corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi")}}
	if !equality.Semantic.DeepEqual(got.Resources, want) {
		t.Errorf("got resources %+v; want %+v", got.Resources, want)
	}
}

// TestChartFlagsExist checks that every flag the Helm chart passes to the injector is one it has:
// webhook's (Config and ServerOptions), controller-runtime's zap flags, and cmd/injector's own.
func TestChartFlagsExist(t *testing.T) {
	root, err := testenv.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "charts", "metaparticle-sync", "templates", "deployment.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	fs := flag.NewFlagSet("injector", flag.ContinueOnError)
	webhook.BindConfigFlags(fs, webhook.DefaultConfig(""))
	(&webhook.ServerOptions{}).BindFlags(fs)
	(&zap.Options{}).BindFlags(fs)
	// cmd/injector registers these itself.
	fs.String("metrics-bind-address", "", "")
	fs.String("health-probe-bind-address", "", "")

	args := regexp.MustCompile(`(?m)^\s*- --([a-z0-9-]+)=`).FindAllSubmatch(b, -1)
	if len(args) < 20 {
		t.Fatalf("got %d flags in the chart's deployment; want the injector's arguments (is the pattern stale?)", len(args))
	}
	for _, a := range args {
		if fs.Lookup(string(a[1])) == nil {
			t.Errorf("got chart flag --%s; want a flag the injector has", a[1])
		}
	}
}
