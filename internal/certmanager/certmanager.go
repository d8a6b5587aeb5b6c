// Package certmanager runs cert-manager's real controllers and cainjector against an API server,
// for integration tests that need real certificate issuance and CA injection (for example the
// Helm chart's cert-manager integration).
//
// The controllers are the test binary that hack/cert-manager.sh builds from the cert-manager Go
// module (hack/cert-manager/, a module of its own). This package never imports cert-manager:
// cert-manager pins older Kubernetes libraries than this project. Issuers and Certificates are
// handled as unstructured objects (see Object and the GVK variables).
//
//	ns := env.Namespace(t)
//	cm := certmanager.StartT(t, env.Config, certmanager.Options{})
//	_ = env.Client.Create(ctx, certmanager.Object(certmanager.IssuerGVK, ns, "selfsigned",
//		map[string]any{"selfSigned": map[string]any{}}))
//	...
//	cert, err := cm.WaitReady(ctx, env.Client, certmanager.CertificateGVK, ns, "serving")
package certmanager

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/metaparticle-io/sync/internal/testenv"
)

// DefaultClusterResourceNamespace is where ClusterIssuers look for their Secrets unless
// Options.ClusterResourceNamespace says otherwise (as in the cert-manager Helm chart).
const DefaultClusterResourceNamespace = "cert-manager"

// Options configure Start.
type Options struct {
	// ClusterResourceNamespace is the namespace of the Secrets that ClusterIssuers refer to. It is
	// created if missing. Default DefaultClusterResourceNamespace.
	ClusterResourceNamespace string
	// NamespaceScope, when set, restricts the controllers and cainjector to one namespace.
	NamespaceScope string
	// Kubeconfig is a kubeconfig file for the controllers. Default: one written from the
	// rest.Config given to Start, in a temporary directory that Stop removes.
	Kubeconfig string
	// LogPath is the file the controllers' output goes to. Default: controllers.log in a new
	// temporary directory, which Stop leaves in place (StartT removes it unless the test failed).
	LogPath string
	// Args are extra flags for the binary, for example "-v=4" for cert-manager's debug logs.
	Args []string
}

// Build builds the controllers binary if needed (hack/cert-manager.sh) and returns its path and
// the directory of cert-manager's CRD YAMLs. A cold build takes minutes; later calls are quick.
// The script's progress is written to progress, if not nil.
func Build(ctx context.Context, progress io.Writer) (bin, crdDir string, err error) {
	root, err := testenv.ModuleRoot()
	if err != nil {
		return "", "", err
	}
	script := filepath.Join(root, "hack", "cert-manager.sh")
	var out bytes.Buffer
	var w io.Writer = &out
	if progress != nil {
		w = io.MultiWriter(&out, progress)
	}
	cmd := exec.CommandContext(ctx, "bash", script)
	// One writer for both: exec then calls it from one goroutine at a time.
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Run(); err != nil {
		return "", "", fmt.Errorf("%s: %w\n%s", script, err, out.String())
	}
	for _, p := range []struct {
		flag string
		dst  *string
	}{{"--print-bin", &bin}, {"--print-crds", &crdDir}} {
		b, err := exec.CommandContext(ctx, "bash", script, p.flag).Output()
		if err != nil {
			return "", "", fmt.Errorf("%s %s: %w", script, p.flag, err)
		}
		*p.dst = strings.TrimSpace(string(b))
	}
	return bin, crdDir, nil
}

// Controllers is a running cert-manager controllers process.
type Controllers struct {
	// LogPath is the file holding the process's output.
	LogPath string

	cmd     *exec.Cmd
	log     *os.File
	tmp     string // kubeconfig directory, removed by Stop
	done    chan struct{}
	waitErr error
	stop    sync.Once
	stopErr error
}

// Start builds the binary if needed, installs cert-manager's CRDs into the API server of cfg and
// waits until they are established, creates the cluster-resource namespace and starts the
// controllers and cainjector as a subprocess. Call Stop when done.
func Start(ctx context.Context, cfg *rest.Config, opts Options) (*Controllers, error) {
	bin, crdDir, err := Build(ctx, nil)
	if err != nil {
		return nil, err
	}
	return StartBinary(ctx, cfg, bin, crdDir, opts)
}

// StartBinary is Start with a binary and CRD directory already built by Build.
func StartBinary(ctx context.Context, cfg *rest.Config, bin, crdDir string, opts Options) (*Controllers, error) {
	if opts.ClusterResourceNamespace == "" {
		opts.ClusterResourceNamespace = DefaultClusterResourceNamespace
	}
	if err := InstallCRDs(ctx, cfg, crdDir); err != nil {
		return nil, err
	}
	if err := ensureNamespace(ctx, cfg, opts.ClusterResourceNamespace); err != nil {
		return nil, err
	}

	c := &Controllers{done: make(chan struct{})}
	var err error
	kubeconfig := opts.Kubeconfig
	if kubeconfig == "" {
		c.tmp, err = os.MkdirTemp("", "cert-manager-kubeconfig-")
		if err != nil {
			return nil, err
		}
		kubeconfig = filepath.Join(c.tmp, "kubeconfig")
		if err := WriteKubeconfig(cfg, kubeconfig); err != nil {
			_ = os.RemoveAll(c.tmp)
			return nil, err
		}
	}
	c.LogPath = opts.LogPath
	if c.LogPath == "" {
		dir, err := os.MkdirTemp("", "cert-manager-controllers-")
		if err != nil {
			c.cleanup()
			return nil, err
		}
		c.LogPath = filepath.Join(dir, "controllers.log")
	}
	c.log, err = os.Create(c.LogPath)
	if err != nil {
		c.cleanup()
		return nil, err
	}

	args := []string{
		"--kubeconfig=" + kubeconfig,
		"--cluster-resource-namespace=" + opts.ClusterResourceNamespace,
		"--namespace-scope=" + opts.NamespaceScope,
	}
	c.cmd = exec.Command(bin, append(args, opts.Args...)...)
	c.cmd.Stdout, c.cmd.Stderr = c.log, c.log
	setDeathSignal(c.cmd)
	if err := c.cmd.Start(); err != nil {
		c.cleanup()
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	go func() {
		c.waitErr = c.cmd.Wait()
		close(c.done)
	}()
	return c, nil
}

// Exited is closed when the process has exited.
func (c *Controllers) Exited() <-chan struct{} { return c.done }

// Stop sends SIGTERM, waits up to 30s for a clean exit (then kills the process) and removes the
// kubeconfig it wrote. It returns an error if the process had already exited by itself or did not
// exit cleanly. The log file is kept. Stop is idempotent.
func (c *Controllers) Stop() error {
	c.stop.Do(func() {
		select {
		case <-c.done:
			c.stopErr = fmt.Errorf("cert-manager controllers exited before Stop (%v); see %s", c.waitErr, c.LogPath)
		default:
			_ = c.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-c.done:
				if c.waitErr != nil {
					c.stopErr = fmt.Errorf("cert-manager controllers: %w; see %s", c.waitErr, c.LogPath)
				}
			case <-time.After(30 * time.Second):
				_ = c.cmd.Process.Kill()
				<-c.done
				c.stopErr = fmt.Errorf("cert-manager controllers did not exit within 30s of SIGTERM; killed; see %s", c.LogPath)
			}
		}
		c.cleanup()
	})
	return c.stopErr
}

func (c *Controllers) cleanup() {
	if c.log != nil {
		_ = c.log.Close()
	}
	if c.tmp != "" {
		_ = os.RemoveAll(c.tmp)
	}
}

// StartT is Start for a test: it fails t on error, logs the build progress and the log path, and
// stops the controllers when t ends. If t failed, the end of the log is written to t's output and
// the log kept; otherwise the log's temporary directory is removed.
func StartT(t testing.TB, cfg *rest.Config, opts Options) *Controllers {
	t.Helper()
	if cfg == nil {
		t.Fatal("certmanager: nil rest.Config (is the control plane running?)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	start := time.Now()
	bin, crds, err := Build(ctx, testWriter{t})
	if err != nil {
		t.Fatal(err)
	}
	ownLog := opts.LogPath == ""
	c, err := StartBinary(ctx, cfg, bin, crds, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cert-manager controllers started in %s; log: %s", time.Since(start).Round(time.Millisecond), c.LogPath)
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("cert-manager controllers log (%s), last lines:\n%s", c.LogPath, tail(c.LogPath, 60))
			return
		}
		if ownLog {
			_ = os.RemoveAll(filepath.Dir(c.LogPath))
		}
	})
	return c
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		w.t.Log(line)
	}
	return len(p), nil
}

// tail returns the last n lines of the file at path.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// WriteKubeconfig writes a kubeconfig file reaching the API server of cfg with its credentials
// (envtest's rest.Config carries a client certificate and CA as data).
func WriteKubeconfig(cfg *rest.Config, path string) error {
	server, _, err := rest.DefaultServerUrlFor(cfg)
	if err != nil {
		return fmt.Errorf("API server URL of %q: %w", cfg.Host, err)
	}
	cluster := &clientcmdapi.Cluster{
		Server:                   (&url.URL{Scheme: server.Scheme, Host: server.Host, Path: server.Path}).String(),
		CertificateAuthority:     cfg.CAFile,
		CertificateAuthorityData: cfg.CAData,
		InsecureSkipTLSVerify:    cfg.Insecure,
		TLSServerName:            cfg.ServerName,
	}
	user := &clientcmdapi.AuthInfo{
		ClientCertificate:     cfg.CertFile,
		ClientCertificateData: cfg.CertData,
		ClientKey:             cfg.KeyFile,
		ClientKeyData:         cfg.KeyData,
		Token:                 cfg.BearerToken,
		TokenFile:             cfg.BearerTokenFile,
		Username:              cfg.Username,
		Password:              cfg.Password,
		Impersonate:           cfg.Impersonate.UserName,
		ImpersonateUID:        cfg.Impersonate.UID,
		ImpersonateGroups:     cfg.Impersonate.Groups,
		AuthProvider:          cfg.AuthProvider,
		Exec:                  cfg.ExecProvider,
	}
	kc := clientcmdapi.Config{
		Clusters:       map[string]*clientcmdapi.Cluster{"test": cluster},
		AuthInfos:      map[string]*clientcmdapi.AuthInfo{"test": user},
		Contexts:       map[string]*clientcmdapi.Context{"test": {Cluster: "test", AuthInfo: "test"}},
		CurrentContext: "test",
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return clientcmd.WriteToFile(kc, path)
}

func ensureNamespace(ctx context.Context, cfg *rest.Config, name string) error {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	_, err = cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating namespace %s: %w", name, err)
	}
	return nil
}

// errExited is returned by waits when the controllers process is gone.
var errExited = errors.New("cert-manager controllers exited")
