// Package testenv runs a real kube-apiserver and etcd for the integration tests of one test
// package, through controller-runtime's envtest, on the binaries that hack/control-plane.sh builds
// from the Go module proxy.
//
// Use it from TestMain, one control plane per test package, and a fresh namespace per test:
//
//	var env *testenv.Env
//
//	func TestMain(m *testing.M) { testenv.Main(m, &env) }
//
//	func TestSomething(t *testing.T) {
//		ns := env.Namespace(t)
//		...
//	}
//
// Under `go test -short` no control plane is started and every test that asks for a namespace is
// skipped, so unit tests run without the binaries. Otherwise a missing binary is an error, not a
// skip: `make test` must prove what it claims.
//
// The API server of an envtest has no kube-proxy and no Service network, so it must never call a
// Service: webhooks are served on 127.0.0.1 and registered by URL (see WithWebhooks).
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	crwebhook "sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/yaml"
)

// Env is a running control plane. Its fields are set by Start and read-only afterwards; it is
// safe for concurrent use by parallel tests.
type Env struct {
	// Config reaches the API server as a cluster administrator.
	Config *rest.Config
	// Client is a controller-runtime client on Config (no cache).
	Client client.Client
	// Clientset is a client-go clientset on Config.
	Clientset kubernetes.Interface
	// Webhook holds the serving host, port, certificate directory and CA of the webhook server
	// when the Env was started WithWebhooks; zero otherwise.
	Webhook envtest.WebhookInstallOptions

	env *envtest.Environment
}

// Option changes how Start configures the control plane.
type Option func(*envtest.Environment)

// WithWebhooks installs the given mutating webhook configurations. Each webhook's ClientConfig
// must have a Service whose Path is the webhook path without a leading slash; envtest rewrites it
// into a URL on the local serving host and port, which the test's webhook server must listen on
// (Env.Webhook.LocalServingHost, LocalServingPort, LocalServingCertDir).
func WithWebhooks(hooks ...*admissionv1.MutatingWebhookConfiguration) Option {
	return func(e *envtest.Environment) {
		e.WebhookInstallOptions.MutatingWebhooks = append(e.WebhookInstallOptions.MutatingWebhooks, hooks...)
		e.WebhookInstallOptions.LocalServingHost = "127.0.0.1"
	}
}

// WithAPIServerArgs appends kube-apiserver flags, as "--name=value" strings.
func WithAPIServerArgs(args ...string) Option {
	return func(e *envtest.Environment) {
		api := e.ControlPlane.GetAPIServer()
		for _, a := range args {
			name, value, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
			api.Configure().Append(name, value)
		}
	}
}

// AssetsDir returns the directory holding kube-apiserver, etcd and kubectl: $KUBEBUILDER_ASSETS
// when set, otherwise the cache directory that hack/control-plane.sh reports. It fails when the
// binaries are missing, saying how to build them.
func AssetsDir() (string, error) {
	dir := os.Getenv("KUBEBUILDER_ASSETS")
	if dir == "" {
		root, err := ModuleRoot()
		if err != nil {
			return "", err
		}
		out, err := exec.Command("bash", filepath.Join(root, "hack", "control-plane.sh"), "--print-assets").Output()
		if err != nil {
			return "", fmt.Errorf("asking hack/control-plane.sh for the assets directory: %w", err)
		}
		dir = strings.TrimSpace(string(out))
	}
	for _, bin := range []string{"kube-apiserver", "etcd", "kubectl"} {
		if _, err := os.Stat(filepath.Join(dir, bin)); err != nil {
			return "", fmt.Errorf("control-plane binary %s missing in %s: run `make control-plane` first", bin, dir)
		}
	}
	return dir, nil
}

// ModuleRoot returns the repository root (the directory holding go.mod).
func ModuleRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("cannot locate the testenv source file")
	}
	return filepath.Abs(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Start starts etcd and kube-apiserver and returns when the API server serves the default
// namespace (about 3 to 4 seconds here).
func Start(opts ...Option) (*Env, error) {
	assets, err := AssetsDir()
	if err != nil {
		return nil, err
	}
	e := &envtest.Environment{
		BinaryAssetsDirectory:    assets,
		ControlPlaneStartTimeout: 90 * time.Second,
		ControlPlaneStopTimeout:  30 * time.Second,
		AttachControlPlaneOutput: os.Getenv("TESTENV_VERBOSE") != "",
	}
	for _, o := range opts {
		o(e)
	}
	cfg, err := e.Start()
	if err != nil {
		return nil, fmt.Errorf("starting envtest control plane from %s: %w", assets, err)
	}
	cfg.QPS, cfg.Burst = 1000, 2000
	cl, err := client.New(cfg, client.Options{})
	if err != nil {
		_ = e.Stop()
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		_ = e.Stop()
		return nil, err
	}
	return &Env{Config: cfg, Client: cl, Clientset: cs, Webhook: e.WebhookInstallOptions, env: e}, nil
}

// Stop stops the control plane and removes its temporary files.
func (e *Env) Stop() error { return e.env.Stop() }

// Main is TestMain for a package with integration tests: it starts a control plane into *env
// (unless -short), runs the tests, stops the control plane and exits with the tests' code.
func Main(m *testing.M, env **Env, opts ...Option) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run())
	}
	start := time.Now()
	e, err := Start(opts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testenv:", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "testenv: control plane up in %s at %s\n", time.Since(start).Round(time.Millisecond), e.Config.Host)
	*env = e
	// A test binary stopped by a signal (Ctrl-C, a CI timeout) must not leave etcd and
	// kube-apiserver running.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "testenv: %s: stopping the control plane\n", s)
		_ = e.Stop()
		os.Exit(130)
	}()
	code := m.Run()
	signal.Stop(sigs)
	if err := e.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "testenv: stopping control plane:", err)
	}
	os.Exit(code)
}

// Require skips t under -short (no control plane) and fails it if e is nil otherwise.
func Require(t testing.TB, e *Env) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: needs the control plane (skipped under -short)")
	}
	if e == nil {
		t.Fatal("testenv: no control plane; call testenv.Main from TestMain")
	}
}

// Namespace creates a namespace with a random name for t and deletes it when t ends. Labels are
// applied to the namespace (for example Pod Security labels).
func (e *Env) Namespace(t testing.TB, labels ...map[string]string) string {
	t.Helper()
	Require(t, e)
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := fmt.Sprintf("t-%s-%s", sanitize(t.Name()), hex.EncodeToString(b[:]))
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{}}}
	for _, l := range labels {
		for k, v := range l {
			ns.Labels[k] = v
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.Client.Create(ctx, ns); err != nil {
		t.Fatalf("creating namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := e.Client.Delete(ctx, ns); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("deleting namespace %s: %v", name, err)
		}
	})
	return name
}

// sanitize turns a test name into a short DNS-1123 label fragment.
func sanitize(s string) string {
	s = strings.ToLower(s)
	var b strings.Builder
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			if b.Len() > 0 && !strings.HasSuffix(b.String(), "-") {
				b.WriteByte('-')
			}
		}
		if b.Len() >= 40 {
			break
		}
	}
	return strings.Trim(b.String(), "-")
}

// ShippedWebhookConfiguration reads deploy/webhook/mutatingwebhookconfiguration.yaml (the
// configuration the chart templates) from the module at root, with each webhook's Service path
// made relative, as WithWebhooks wants it: envtest then registers the injector's webhooks at the
// local serving address, where the caller serves webhook.Path and webhook.NamespacePath.
func ShippedWebhookConfiguration(root string) (*admissionv1.MutatingWebhookConfiguration, error) {
	raw, err := os.ReadFile(filepath.Join(root, "deploy", "webhook", "mutatingwebhookconfiguration.yaml"))
	if err != nil {
		return nil, err
	}
	var mwc admissionv1.MutatingWebhookConfiguration
	if err := yaml.UnmarshalStrict(raw, &mwc); err != nil {
		return nil, err
	}
	for i := range mwc.Webhooks {
		svc := mwc.Webhooks[i].ClientConfig.Service
		if svc == nil || svc.Path == nil {
			return nil, fmt.Errorf("webhook %s has no service path", mwc.Webhooks[i].Name)
		}
		p := strings.TrimPrefix(*svc.Path, "/")
		svc.Path = &p
	}
	return &mwc, nil
}

// ServeWebhooks serves handlers (by path) over TLS at the local serving address that
// WithWebhooks registered, with controller-runtime's webhook server (as the injector serves
// them), until ctx ends. It returns once the server serves, or an error if it did not start
// within 30 seconds.
func (e *Env) ServeWebhooks(ctx context.Context, handlers map[string]http.Handler) error {
	if e.Webhook.LocalServingPort == 0 {
		return errors.New("testenv: ServeWebhooks needs an Env started WithWebhooks")
	}
	srv := crwebhook.NewServer(crwebhook.Options{
		Host: e.Webhook.LocalServingHost, Port: e.Webhook.LocalServingPort, CertDir: e.Webhook.LocalServingCertDir,
	})
	for path, h := range handlers {
		srv.Register(path, h)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Start(ctx) }()
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for srv.StartedChecker()(nil) != nil {
		select {
		case err := <-done:
			return fmt.Errorf("testenv: the webhook server stopped: %w", err)
		case <-deadline.C:
			return errors.New("testenv: the webhook server did not start within 30s")
		case <-tick.C:
		}
	}
	return nil
}

// MainWithShippedWebhooks is Main for a package that serves the injector's webhooks: the
// control plane starts WithWebhooks(ShippedWebhookConfiguration), and the tests serve the
// webhooks with Env.ServeWebhooks.
func MainWithShippedWebhooks(m *testing.M, env **Env) {
	root, err := ModuleRoot()
	if err == nil {
		var mwc *admissionv1.MutatingWebhookConfiguration
		if mwc, err = ShippedWebhookConfiguration(root); err == nil {
			Main(m, env, WithWebhooks(mwc))
		}
	}
	fmt.Fprintln(os.Stderr, "testenv: loading the injector's webhook configuration:", err)
	os.Exit(1)
}
