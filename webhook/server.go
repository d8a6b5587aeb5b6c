package webhook

import (
	"crypto/tls"
	"fmt"

	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	crwebhook "sigs.k8s.io/controller-runtime/pkg/webhook"
)

// ServerOptions configure the injector's webhook server. Zero fields get controller-runtime's
// defaults: every interface, port 9443, certificates from
// $TMPDIR/k8s-webhook-server/serving-certs.
type ServerOptions struct {
	// Host the webhook server listens on. Empty means every interface.
	Host string
	// Port the webhook server listens on (TLS). The chart's Service targets it. Default (zero)
	// 9443.
	Port int
	// CertDir holds tls.crt and tls.key. They are reloaded when they change on disk (as when
	// cert-manager renews the Secret), without a restart.
	CertDir string
	// EnableHTTP2 turns HTTP/2 on. Off by default: it exposes the server to HTTP/2 rapid reset and
	// stream cancellation attacks, and the API server speaks HTTP/1.1 to webhooks just as well.
	EnableHTTP2 bool
	// CheckRBAC makes the injector ask the API server whether each Pod's service account may use
	// Leases, and warn when not. Default true in cmd/injector.
	CheckRBAC bool
}

// NewServer returns the webhook server for opts, with HTTP/2 off unless asked for.
func NewServer(opts ServerOptions) crwebhook.Server {
	var tlsOpts []func(*tls.Config)
	if !opts.EnableHTTP2 {
		tlsOpts = append(tlsOpts, func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} })
	}
	return crwebhook.NewServer(crwebhook.Options{Host: opts.Host, Port: opts.Port, CertDir: opts.CertDir, TLSOpts: tlsOpts})
}

// Setup registers the injector for config on mgr's webhook server, and its health and readiness
// checks (ready once the webhook server serves TLS).
func Setup(mgr manager.Manager, config Config, opts ServerOptions) error {
	var access *AccessChecker
	if opts.CheckRBAC {
		cs, err := kubernetes.NewForConfig(mgr.GetConfig())
		if err != nil {
			return err
		}
		access = NewAccessChecker(cs.AuthorizationV1().SubjectAccessReviews(), 0, nil)
	}
	in, err := NewInjector(config, access)
	if err != nil {
		return fmt.Errorf("injector configuration: %w", err)
	}
	in = in.WithEvents(mgr.GetEventRecorder(EventReporter))
	srv := mgr.GetWebhookServer()
	srv.Register(Path, NewWebhook(in))
	srv.Register(NamespacePath, NewWebhook(in.ForOptedInNamespaces()))
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return err
	}
	return mgr.AddReadyzCheck("webhook", srv.StartedChecker())
}
