// Package localcluster gives tests the local single-node cluster that hack/cluster/up.sh starts
// (make cluster-up): its settings from the environment file up.sh writes, clients, fresh
// namespaces, image import into its containerd, and helpers to wait for Pods and read their logs.
//
// Tests that need the cluster call Require; they are skipped under -short and when
// $METAPARTICLE_CLUSTER_ENV is unset (make cluster-test sets it), and fail when it is set but the
// cluster is unusable. One TestMain per package:
//
//	var cluster *localcluster.Cluster
//
//	func TestMain(m *testing.M) { localcluster.Main(m, &cluster, nil) }
package localcluster

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/metaparticle-io/sync/internal/image"
)

// EnvFileVar names the environment variable holding the path of the cluster's environment file
// (up.sh writes it as /var/run/metaparticle-sync/cluster.env).
const EnvFileVar = "METAPARTICLE_CLUSTER_ENV"

// Cluster is a running local cluster.
type Cluster struct {
	// Vars are the settings of cluster.env: KUBECONFIG, CTR, CONTAINERD_ADDRESS, NODE_NAME,
	// NODE_IP, BRIDGE, POD_CIDR, SERVICE_CIDR, API_SERVICE_IP, DNS_IP, CGROUP_PARENT, ...
	Vars map[string]string
	// Config reaches the API server as a cluster administrator (system:masters).
	Config    *rest.Config
	Clientset kubernetes.Interface
}

// Var returns one setting of cluster.env, or "" when it is missing.
func (c *Cluster) Var(name string) string { return c.Vars[name] }

// ParseEnv reads NAME=value lines; blank lines and # comments are skipped.
func ParseEnv(b []byte) (map[string]string, error) {
	vars := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("line %d: %q is not NAME=value", n, line)
		}
		vars[k] = v
	}
	return vars, sc.Err()
}

// Load reads the environment file at path and connects to the cluster's API server.
func Load(path string) (*Cluster, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the cluster environment (is the cluster up? make cluster-up): %w", err)
	}
	vars, err := ParseEnv(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for _, k := range []string{"KUBECONFIG", "CTR", "CONTAINERD_ADDRESS", "NODE_NAME", "NODE_IP"} {
		if vars[k] == "" {
			return nil, fmt.Errorf("%s: %s is missing", path, k)
		}
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", vars["KUBECONFIG"])
	if err != nil {
		return nil, err
	}
	cfg.QPS, cfg.Burst = 100, 200
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &Cluster{Vars: vars, Config: cfg, Clientset: cs}, nil
}

// Main is TestMain for a package of cluster tests. Unless -short is set or $METAPARTICLE_CLUSTER_ENV
// is empty, it loads the cluster into *c, checks that its API server answers, runs setup (for
// example to import the tests' images) and then the tests.
func Main(m *testing.M, c **Cluster, setup func(*Cluster) error) {
	flag.Parse()
	path := os.Getenv(EnvFileVar)
	if testing.Short() || path == "" {
		os.Exit(m.Run())
	}
	cl, err := Load(path)
	if err == nil {
		_, err = cl.Clientset.Discovery().ServerVersion()
	}
	if err == nil && setup != nil {
		err = setup(cl)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "localcluster:", err)
		os.Exit(1)
	}
	*c = cl
	os.Exit(m.Run())
}

// Require skips t under -short or when no cluster is configured, and fails it when one is
// configured but Main did not load it.
func Require(t testing.TB, c *Cluster) {
	t.Helper()
	if testing.Short() {
		t.Skip("needs the local cluster (skipped under -short)")
	}
	if os.Getenv(EnvFileVar) == "" {
		t.Skipf("needs the local cluster: run `make cluster-test` (or set %s after `make cluster-up`)", EnvFileVar)
	}
	if c == nil {
		t.Fatal("localcluster: no cluster; call localcluster.Main from TestMain")
	}
}

// Namespace creates a namespace for t with the given labels, waits until Pods can be created in
// it (its default ServiceAccount and root CA ConfigMap exist) and deletes it when t ends.
func (c *Cluster) Namespace(t testing.TB, labels map[string]string) string {
	t.Helper()
	Require(t, c)
	var b [3]byte
	_, _ = rand.Read(b[:])
	name := "e2e-" + sanitize(t.Name()) + "-" + hex.EncodeToString(b[:])
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if _, err := c.Clientset.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		err := c.Clientset.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("deleting namespace %s: %v", name, err)
		}
	})
	err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		if _, err := c.Clientset.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{}); err != nil {
			return false, nil
		}
		_, err := c.Clientset.CoreV1().ConfigMaps(name).Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("namespace %s: default ServiceAccount or kube-root-ca.crt never appeared: %v", name, err)
	}
	return name
}

func sanitize(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		case b.Len() > 0 && !strings.HasSuffix(b.String(), "-"):
			b.WriteByte('-')
		}
		if b.Len() >= 40 {
			break
		}
	}
	return strings.Trim(b.String(), "-")
}

// ModuleRoot returns the repository root (the directory holding go.mod).
func ModuleRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("cannot locate the localcluster source file")
	}
	return filepath.Abs(filepath.Join(filepath.Dir(file), "..", ".."))
}

// BuildStatic builds the Go package pkg (a ./relative path in this module) into a static binary
// at out.
func BuildStatic(ctx context.Context, pkg, out string) error {
	root, err := ModuleRoot()
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	return nil
}

// Ctr runs ctr against the cluster's containerd in the Kubernetes namespace and returns its
// standard output.
func (c *Cluster) Ctr(ctx context.Context, args ...string) (string, error) {
	return Command(ctx, c.Var("CTR"), append([]string{"--address", c.Var("CONTAINERD_ADDRESS"), "-n", "k8s.io"}, args...)...)
}

// ImportImages builds the images and imports them into the cluster's containerd, where Pods use
// them with imagePullPolicy Never or IfNotPresent.
func (c *Cluster) ImportImages(ctx context.Context, specs ...image.Spec) error {
	dir, err := os.MkdirTemp("", "localcluster-images-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	tar := filepath.Join(dir, "images.tar")
	if err := image.WriteArchiveFile(tar, specs...); err != nil {
		return err
	}
	_, err = c.Ctr(ctx, "images", "import", tar)
	return err
}

// WaitPod polls the Pod until done returns true or an error, or ctx ends. A Pod that does not
// exist (yet) is passed to done as nil.
func (c *Cluster) WaitPod(ctx context.Context, ns, name string, done func(*corev1.Pod) (bool, error)) (*corev1.Pod, error) {
	var last *corev1.Pod
	err := wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		p, err := c.Clientset.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			last = nil
		case err != nil:
			return false, nil
		default:
			last = p
		}
		return done(last)
	})
	if err != nil && last != nil {
		return last, fmt.Errorf("pod %s/%s (phase %s, %s): %w", ns, name, last.Status.Phase, describe(last), err)
	}
	return last, err
}

// describe summarizes the containers' states, for failure messages.
func describe(p *corev1.Pod) string {
	var parts []string
	for _, s := range append(append([]corev1.ContainerStatus(nil), p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
		switch {
		case s.State.Waiting != nil:
			parts = append(parts, fmt.Sprintf("%s waiting: %s %s", s.Name, s.State.Waiting.Reason, s.State.Waiting.Message))
		case s.State.Terminated != nil:
			parts = append(parts, fmt.Sprintf("%s terminated: exit %d %s", s.Name, s.State.Terminated.ExitCode, s.State.Terminated.Reason))
		case s.State.Running != nil:
			parts = append(parts, s.Name+" running")
		}
	}
	if len(parts) == 0 {
		return "no container status"
	}
	return strings.Join(parts, "; ")
}

// Running is a WaitPod condition: every container runs and is ready. A Pod that failed ends
// the wait with an error.
func Running(p *corev1.Pod) (bool, error) {
	if p == nil {
		return false, nil
	}
	if p.Status.Phase == corev1.PodFailed || p.Status.Phase == corev1.PodSucceeded {
		return false, fmt.Errorf("pod ended in phase %s: %s", p.Status.Phase, describe(p))
	}
	if p.Status.Phase != corev1.PodRunning || len(p.Status.ContainerStatuses) == 0 {
		return false, nil
	}
	for _, s := range p.Status.ContainerStatuses {
		if !s.Ready {
			return false, nil
		}
	}
	return true, nil
}

// ContainerTerminated returns a WaitPod condition: the named container has terminated.
func ContainerTerminated(container string) func(*corev1.Pod) (bool, error) {
	return func(p *corev1.Pod) (bool, error) {
		if p == nil {
			return false, nil
		}
		for _, s := range p.Status.ContainerStatuses {
			if s.Name == container && s.State.Terminated != nil {
				return true, nil
			}
		}
		return false, nil
	}
}

// Gone is a WaitPod condition: the Pod no longer exists.
func Gone(p *corev1.Pod) (bool, error) { return p == nil, nil }

// Logs returns a container's log, read through the API server (which asks the kubelet).
func (c *Cluster) Logs(ctx context.Context, ns, pod, container string) (string, error) {
	b, err := c.Clientset.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{Container: container}).Do(ctx).Raw()
	return string(b), err
}

// Command runs a program on this machine and returns its standard output.
func Command(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}
