package webhook

import (
	"flag"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// BindFlags registers flags for every field of c on fs, with c's current values as defaults.
// Call it on a Config from DefaultConfig, then Validate after parsing.
func (c *Config) BindFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Image, "sidecar-image", c.Image, "side-car image to inject (required)")
	fs.Var((*pullPolicyFlag)(&c.ImagePullPolicy), "sidecar-image-pull-policy", "side-car imagePullPolicy: Always, IfNotPresent or Never")
	fs.Var((*modeFlag)(&c.Mode), "sidecar-mode", "default injection mode: native (init container with restartPolicy Always, Kubernetes >= 1.29) or classic")
	fs.Var((*int32Flag)(&c.Port), "sidecar-port", "side-car lock API port on 127.0.0.1; its health port is this plus one")
	if c.Resources.Requests == nil {
		c.Resources.Requests = corev1.ResourceList{}
	}
	if c.Resources.Limits == nil {
		c.Resources.Limits = corev1.ResourceList{}
	}
	fs.Var(quantityFlag{c.Resources.Requests, corev1.ResourceCPU}, "sidecar-cpu-request", "side-car CPU request")
	fs.Var(quantityFlag{c.Resources.Limits, corev1.ResourceCPU}, "sidecar-cpu-limit", "side-car CPU limit")
	fs.Var(quantityFlag{c.Resources.Requests, corev1.ResourceMemory}, "sidecar-memory-request", "side-car memory request")
	fs.Var(quantityFlag{c.Resources.Limits, corev1.ResourceMemory}, "sidecar-memory-limit", "side-car memory limit")
	fs.DurationVar(&c.Timing.LeaseDuration, "lease-duration", c.Timing.LeaseDuration, "side-car Lease duration (whole seconds)")
	fs.DurationVar(&c.Timing.RenewDeadline, "renew-deadline", c.Timing.RenewDeadline, "side-car renew deadline")
	fs.DurationVar(&c.Timing.RenewPeriod, "renew-period", c.Timing.RenewPeriod, "side-car renew period")
	fs.DurationVar(&c.Timing.RetryPeriod, "retry-period", c.Timing.RetryPeriod, "side-car retry period")
	fs.StringVar(&c.LogLevel, "sidecar-log-level", c.LogLevel, "side-car log level: info or debug")
	fs.Int64Var(&c.RunAsUser, "sidecar-uid", c.RunAsUser, "side-car runAsUser (the image's non-root user)")
	fs.Int64Var(&c.RunAsGroup, "sidecar-gid", c.RunAsGroup, "side-car runAsGroup (the image's non-root group)")
	fs.StringVar(&c.SidecarClusterRole, "sidecar-cluster-role", c.SidecarClusterRole, "ClusterRole that the RBAC warning tells users to bind")
}

// BindFlags registers flags for o on fs, with o's current values as defaults.
func (o *ServerOptions) BindFlags(fs *flag.FlagSet) {
	fs.IntVar(&o.Port, "port", o.Port, "webhook server port (TLS)")
	fs.StringVar(&o.CertDir, "cert-dir", o.CertDir, "directory with tls.crt and tls.key, reloaded when they change")
	fs.BoolVar(&o.EnableHTTP2, "enable-http2", o.EnableHTTP2, "serve HTTP/2 (off by default: HTTP/2 rapid-reset and stream attacks)")
	fs.BoolVar(&o.CheckRBAC, "check-rbac", o.CheckRBAC, "warn when a Pod's service account may not use Leases (asks with SubjectAccessReviews)")
}

type pullPolicyFlag corev1.PullPolicy

func (f *pullPolicyFlag) String() string     { return string(*f) }
func (f *pullPolicyFlag) Set(s string) error { *f = pullPolicyFlag(s); return nil }

type modeFlag Mode

func (f *modeFlag) String() string     { return string(*f) }
func (f *modeFlag) Set(s string) error { *f = modeFlag(s); return nil }

type int32Flag int32

func (f *int32Flag) String() string { return strconv.Itoa(int(*f)) }
func (f *int32Flag) Set(s string) error {
	v, err := strconv.ParseInt(s, 10, 32)
	*f = int32Flag(v)
	return err
}

// quantityFlag sets one resource of a ResourceList.
type quantityFlag struct {
	list corev1.ResourceList
	name corev1.ResourceName
}

func (f quantityFlag) String() string {
	if f.list == nil {
		return ""
	}
	q := f.list[f.name]
	return q.String()
}

func (f quantityFlag) Set(s string) error {
	q, err := resource.ParseQuantity(s)
	if err != nil {
		return err
	}
	f.list[f.name] = q
	return nil
}
