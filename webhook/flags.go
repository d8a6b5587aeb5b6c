package webhook

import (
	"errors"
	"flag"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// ConfigFlags is a Config bound to command-line flags: create it with BindConfigFlags before the
// flags are parsed, and take the result with Config after.
type ConfigFlags struct {
	fs *flag.FlagSet
	// config holds the defaults, and the parsed values of the flags bound to its fields directly.
	config Config
	// port and quantities hold the parsed values of the flags that Config cannot be bound to
	// directly: an int32, and entries of ResourceLists.
	port       int
	quantities [len(resourceFlags)]resource.QuantityValue
}

// resourceFlags are the flags of the side-car's resources.
var resourceFlags = [...]struct {
	name, usage string
	limit       bool // a limit, not a request
	resource    corev1.ResourceName
}{
	{"sidecar-cpu-request", "side-car CPU request", false, corev1.ResourceCPU},
	{"sidecar-cpu-limit", "side-car CPU limit", true, corev1.ResourceCPU},
	{"sidecar-memory-request", "side-car memory request", false, corev1.ResourceMemory},
	{"sidecar-memory-limit", "side-car memory limit", true, corev1.ResourceMemory},
}

const portFlag = "sidecar-port"

// BindConfigFlags registers a flag on fs for every field of defaults (a Config from
// DefaultConfig), with defaults' values as the flags' defaults.
func BindConfigFlags(fs *flag.FlagSet, defaults Config) *ConfigFlags {
	f := &ConfigFlags{fs: fs, config: defaults, port: int(defaults.Port)}
	f.config.Resources = *defaults.Resources.DeepCopy()
	c := &f.config
	fs.StringVar(&c.Image, "sidecar-image", c.Image, "side-car image to inject (required)")
	fs.StringVar((*string)(&c.ImagePullPolicy), "sidecar-image-pull-policy", string(c.ImagePullPolicy), "side-car imagePullPolicy: Always, IfNotPresent or Never")
	fs.StringVar((*string)(&c.Mode), "sidecar-mode", string(c.Mode), "default injection mode: native (init container with restartPolicy Always, Kubernetes >= 1.29) or classic")
	fs.IntVar(&f.port, portFlag, f.port, "side-car lock API port on 127.0.0.1; its health port is this plus one")
	for i, r := range resourceFlags {
		f.quantities[i].Quantity = (*resourceList(&c.Resources, r.limit))[r.resource].DeepCopy()
		fs.Var(&f.quantities[i], r.name, r.usage)
	}
	fs.DurationVar(&c.Timing.LeaseDuration, "lease-duration", c.Timing.LeaseDuration, "side-car Lease duration (whole seconds)")
	fs.DurationVar(&c.Timing.RenewDeadline, "renew-deadline", c.Timing.RenewDeadline, "side-car renew deadline")
	fs.DurationVar(&c.Timing.RenewPeriod, "renew-period", c.Timing.RenewPeriod, "side-car renew period")
	fs.DurationVar(&c.Timing.RetryPeriod, "retry-period", c.Timing.RetryPeriod, "side-car retry period")
	fs.StringVar(&c.LogLevel, "sidecar-log-level", c.LogLevel, "side-car log level: info or debug")
	fs.Int64Var(&c.RunAsUser, "sidecar-uid", c.RunAsUser, "side-car runAsUser (the image's non-root user)")
	fs.Int64Var(&c.RunAsGroup, "sidecar-gid", c.RunAsGroup, "side-car runAsGroup (the image's non-root group)")
	fs.IntVar(&c.MetricsNames, "sidecar-metrics-names", c.MetricsNames,
		"names each side-car exports in metaparticle_sync_held (its --metrics-names): -1 for none, 0 for the side-car's default (50)")
	fs.StringVar(&c.SidecarClusterRole, "sidecar-cluster-role", c.SidecarClusterRole, "ClusterRole that the RBAC warning tells users to bind")
	return f
}

// Config returns the configuration that the parsed flags describe, and every problem with it
// (Config.Validate's, and a --sidecar-port that is not a valid port at all).
func (f *ConfigFlags) Config() (Config, error) {
	c := f.config
	c.Resources = *f.config.Resources.DeepCopy()
	var errs []error
	f.fs.Visit(func(fl *flag.Flag) {
		if fl.Name == portFlag {
			// Checked before the conversion, so that no int wraps around into a valid int32.
			if err := validPort(int64(f.port)); err != nil {
				errs = append(errs, err)
			} else {
				c.Port = int32(f.port)
			}
		}
		for i, r := range resourceFlags {
			if fl.Name == r.name {
				list := resourceList(&c.Resources, r.limit)
				if *list == nil {
					*list = corev1.ResourceList{}
				}
				(*list)[r.resource] = f.quantities[i].Quantity.DeepCopy()
			}
		}
	})
	if err := c.Validate(); err != nil {
		errs = append(errs, err)
	}
	return c, errors.Join(errs...)
}

// resourceList returns r's limits or requests.
func resourceList(r *corev1.ResourceRequirements, limit bool) *corev1.ResourceList {
	if limit {
		return &r.Limits
	}
	return &r.Requests
}

// BindFlags registers flags for o on fs, with o's current values as defaults.
func (o *ServerOptions) BindFlags(fs *flag.FlagSet) {
	fs.IntVar(&o.Port, "port", o.Port, "webhook server port (TLS)")
	fs.StringVar(&o.CertDir, "cert-dir", o.CertDir, "directory with tls.crt and tls.key, reloaded when they change")
	fs.BoolVar(&o.EnableHTTP2, "enable-http2", o.EnableHTTP2, "serve HTTP/2 (off by default: HTTP/2 rapid-reset and stream attacks)")
	fs.BoolVar(&o.CheckRBAC, "check-rbac", o.CheckRBAC, "warn when a Pod's service account may not use Leases (asks with SubjectAccessReviews)")
}
