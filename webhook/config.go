package webhook

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/metaparticle-io/sync/internal/contract"
)

// Mode says how the side-car is added to a Pod.
type Mode string

// Modes of injection.
const (
	// ModeNative adds the side-car as the first init container with restartPolicy Always
	// (a native side-car, Kubernetes ≥ 1.29): it starts, and passes its startup probe, before any
	// application container starts, and it does not keep a finished Job's Pod alive.
	ModeNative Mode = contract.ModeNative
	// ModeClassic appends the side-car to the Pod's containers, for clusters older than 1.29.
	// Applications may start before it serves (the SDKs retry), and a Job's Pod never completes
	// while the side-car runs.
	ModeClassic Mode = contract.ModeClassic
)

// Config is what the injector adds to Pods. Build it with DefaultConfig and change what differs;
// NewInjector validates it.
type Config struct {
	// Image is the side-car image. Required.
	Image string
	// ImagePullPolicy of the side-car. Default IfNotPresent.
	ImagePullPolicy corev1.PullPolicy
	// Mode is the default injection mode, overridden per Pod by AnnotationMode. Default native.
	Mode Mode
	// Port is the side-car's lock API port on 127.0.0.1; its health and metrics port is
	// contract.HealthPort(Port), the next one. Default 13131, the original Metaparticle
	// elector's port.
	Port int32
	// Resources of the side-car container. Default requests 10m CPU / 32Mi memory, limits
	// 200m CPU / 64Mi memory.
	Resources corev1.ResourceRequirements
	// Timing is the side-car's Lease timing, validated with the side-car's own rules
	// (contract.Timing.Validate); a zero field means its default. Default contract.DefaultTiming.
	Timing contract.Timing
	// LogLevel of the side-car, a name in contract.LogLevels: info (every state change) or
	// debug (also lost races and every renewal). Default info.
	LogLevel string
	// WatchScope and MaxNames set the side-car's --watch-scope and --max-names, per Pod by
	// AnnotationWatchScope and AnnotationMaxNames. Default "" and 0: the side-car's defaults
	// (names, 200).
	WatchScope string
	MaxNames   int
	// MetricsNames sets the side-car's --metrics-names (flag --sidecar-metrics-names, per Pod
	// AnnotationMetricsNames): the names exported one by one in metaparticle_sync_held, -1 for
	// none. Default 0: the side-car's default (50).
	MetricsNames int
	// RunAsUser and RunAsGroup of the side-car: they must match the image's non-root user.
	// Default 65532 (the distroless "nonroot" user).
	RunAsUser, RunAsGroup int64
	// SidecarClusterRole is the ClusterRole that grants the side-car its Lease verbs; the RBAC
	// warning tells users to bind it. Default "metaparticle-sync-sidecar".
	SidecarClusterRole string
}

// DefaultConfig returns the default configuration for the given side-car image.
func DefaultConfig(image string) Config {
	return Config{
		Image:           image,
		ImagePullPolicy: corev1.PullIfNotPresent,
		Mode:            ModeNative,
		Port:            13131,
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse("10m"),
				corev1.ResourceMemory: resource.MustParse("32Mi"),
			},
			Limits: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse("200m"),
				corev1.ResourceMemory: resource.MustParse("64Mi"),
			},
		},
		Timing:             contract.DefaultTiming,
		LogLevel:           "info",
		RunAsUser:          65532,
		RunAsGroup:         65532,
		SidecarClusterRole: contract.SidecarClusterRole,
	}
}

// Validate reports every problem with c, in one error; of the timing, the first rule it breaks,
// with the side-car's message.
func (c Config) Validate() error {
	var errs []error
	if c.Image == "" {
		errs = append(errs, errors.New("side-car image is required"))
	}
	switch c.ImagePullPolicy {
	case corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
	default:
		errs = append(errs, fmt.Errorf("image pull policy %q must be Always, IfNotPresent or Never", c.ImagePullPolicy))
	}
	if c.Mode != ModeNative && c.Mode != ModeClassic {
		errs = append(errs, fmt.Errorf("mode %q must be %q or %q", c.Mode, ModeNative, ModeClassic))
	}
	if err := validPort(int64(c.Port)); err != nil {
		errs = append(errs, err)
	}
	if err := c.Timing.Validate(); err != nil {
		errs = append(errs, err)
	}
	if _, ok := contract.LogLevels[c.LogLevel]; !ok {
		errs = append(errs, fmt.Errorf("log level %q must be one of %s", c.LogLevel, logLevelNames()))
	}
	if c.RunAsUser <= 0 || c.RunAsGroup <= 0 {
		errs = append(errs, fmt.Errorf("side-car user and group (%d:%d) must be non-root", c.RunAsUser, c.RunAsGroup))
	}
	for _, name := range slices.Sorted(maps.Keys(c.Resources.Requests)) {
		q := c.Resources.Requests[name]
		if l, ok := c.Resources.Limits[name]; ok && q.Cmp(l) > 0 {
			errs = append(errs, fmt.Errorf("%s request %s exceeds its limit %s", name, q.String(), l.String()))
		}
	}
	return errors.Join(errs...)
}

// logLevelNames lists the names of contract.LogLevels, sorted, for error messages.
func logLevelNames() string {
	return strings.Join(slices.Sorted(maps.Keys(contract.LogLevels)), ", ")
}

// maxPort is the highest TCP port.
const maxPort = 65535

// validPort accepts unprivileged ports that leave room for the health port above them.
func validPort(p int64) error {
	if p < 1024 || p > maxPort || int64(contract.HealthPort(int32(p))) > maxPort {
		return fmt.Errorf("port %d must be between 1024 and 65534 (the health port is port+1)", p)
	}
	return nil
}
