// Package cluster proves the local single-node cluster of hack/cluster real: a kubelet on
// containerd runs Pods of images built here, the scheduler, controller-manager and kube-proxy do
// their work, service-account tokens and RBAC, Pod Security admission and the kubelet's
// runAsNonRoot check are enforced, deleted Pods leave nothing behind, and the cluster's addresses
// never leave the machine.
//
// The tests run against a cluster that is already up: `make cluster-test` starts one, runs them
// with $METAPARTICLE_CLUSTER_ENV set, and stops it. Without that variable they are skipped.
package cluster

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	"github.com/metaparticle-io/sync/internal/image"
	"github.com/metaparticle-io/sync/internal/localcluster"
)

var cluster *localcluster.Cluster

const (
	// probeImage runs clusterprobe as the non-root user 65532; probeRootImage as root.
	probeImage     = "docker.io/metaparticle/e2e-clusterprobe:test"
	probeRootImage = "docker.io/metaparticle/e2e-clusterprobe-root:test"
)

func TestMain(m *testing.M) {
	localcluster.Main(m, &cluster, func(c *localcluster.Cluster) error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		dir, err := os.MkdirTemp("", "e2e-cluster-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		bin := filepath.Join(dir, "clusterprobe")
		if err := localcluster.BuildStatic(ctx, "./e2e/cluster/cmd/clusterprobe", bin); err != nil {
			return err
		}
		files := []image.File{{Path: "/clusterprobe", Source: bin}}
		return c.ImportImages(ctx,
			image.Spec{Ref: probeImage, Files: files, User: "65532:65532", Entrypoint: []string{"/clusterprobe"}},
			image.Spec{Ref: probeRootImage, Files: files, Entrypoint: []string{"/clusterprobe"}},
		)
	})
}

// probeResult is what clusterprobe prints.
type probeResult struct {
	OK          bool              `json:"ok"`
	Refused     bool              `json:"refused"`
	Forbidden   bool              `json:"forbidden"`
	Error       string            `json:"error"`
	Body        string            `json:"body"`
	Addrs       []string          `json:"addrs"`
	User        string            `json:"user"`
	Groups      []string          `json:"groups"`
	Server      string            `json:"server"`
	Data        map[string]string `json:"data"`
	Routes      []string          `json:"routes"`
	Nameservers []string          `json:"nameservers"`
}

// restricted is a container security context that the "restricted" Pod Security level admits.
func restricted() *corev1.SecurityContext {
	return &corev1.SecurityContext{
		RunAsNonRoot:             ptr.To(true),
		AllowPrivilegeEscalation: ptr.To(false),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
}

// probe is a clusterprobe container of the non-root image with a restricted security context.
func probe(name string, args ...string) corev1.Container {
	return corev1.Container{
		Name:            name,
		Image:           probeImage,
		ImagePullPolicy: corev1.PullNever,
		Args:            args,
		SecurityContext: restricted(),
	}
}

// pod returns a Pod of the given containers that are never restarted.
func pod(name string, containers ...corev1.Container) *corev1.Pod {
	p := &corev1.Pod{Spec: corev1.PodSpec{
		Containers:                    containers,
		RestartPolicy:                 corev1.RestartPolicyNever,
		TerminationGracePeriodSeconds: ptr.To[int64](5),
	}}
	p.Name = name
	return p
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// runOnce runs a one-container Pod to completion and returns the container's exit code and the
// probe result it printed.
func runOnce(ctx context.Context, t *testing.T, ns string, p *corev1.Pod) (int32, probeResult) {
	t.Helper()
	cs := cluster.Clientset
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, p, createOpts); err != nil {
		t.Fatalf("creating pod %s: %v", p.Name, err)
	}
	c := p.Spec.Containers[0].Name
	got, err := cluster.WaitPod(ctx, ns, p.Name, localcluster.ContainerTerminated(c))
	if err != nil {
		t.Fatalf("waiting for %s to finish: %v", p.Name, err)
	}
	var code int32
	for _, s := range got.Status.ContainerStatuses {
		if s.Name == c {
			code = s.State.Terminated.ExitCode
		}
	}
	return code, logResult(ctx, t, ns, p.Name, c)
}

// logResult parses the probe result from the last line of a container's log.
func logResult(ctx context.Context, t *testing.T, ns, pod, container string) probeResult {
	t.Helper()
	log, err := cluster.Logs(ctx, ns, pod, container)
	if err != nil {
		t.Fatalf("logs of %s/%s: %v", pod, container, err)
	}
	lines := strings.Split(strings.TrimSpace(log), "\n")
	var r probeResult
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &r); err != nil {
		t.Fatalf("log of %s/%s is not a probe result: %v\n%s", pod, container, err, log)
	}
	return r
}
