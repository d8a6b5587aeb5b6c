// Package product exercises the whole product on the local single-node cluster the way a user
// runs it: cert-manager's real controllers issue the webhook's certificate, the chart runs the
// injector behind its Service, the API server calls it for annotated Pods, and the seed's
// examples run with their native side-cars under the kubelet, taking turns on Leases. The set-up
// is hack/stack.sh up --from-registry: it follows docs/install.md word for word, so images and
// chart are pushed to the cluster's registry, `helm install` reads the chart from oci:// and
// containerd pulls the injector and side-car images (make demo uses the imported images instead).
//
// The tests run against a cluster that is already up: `make cluster-test` starts one, runs them
// with $METAPARTICLE_CLUSTER_ENV set, and stops it. Without that variable they are skipped. When
// the stack is already installed (e.g. DEMO_KEEP=1 make demo) it is reused and left in place;
// otherwise TestMain installs it and removes it afterwards.
//
// Scenarios (issue 8): 1 TestLockDeploymentTakesTurns, 2 TestElectionFailover, 3 TestChaosSafety
// (CHAOS_GRANTS=20000 runs it longer), 4 TestAnnotatedJobCompletes, 5 TestInjectorDown,
// 6 TestCertificateRotation, 7 TestNoLeaseRBAC, 8 TestAPITroubleKeepsPodsReady (issue 17),
// 9 TestInstalledFromRegistry (issue 19).
package product

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/internal/image"
	"github.com/metaparticle-io/sync/internal/localcluster"
	"github.com/metaparticle-io/sync/webhook"
)

const (
	// The chart's release, namespace and the objects it names (hack/stack.sh's defaults).
	releaseNamespace   = "metaparticle-sync"
	injectorDeployment = "metaparticle-sync-injector"
	sidecarClusterRole = "metaparticle-sync-sidecar"

	// The seed's examples, imported by hack/cluster/up.sh (hack/cluster/images.list).
	lockImage     = "docker.io/metaparticle/sync-example-lock:0.1.0"
	electionImage = "docker.io/metaparticle/sync-example-election:0.1.0"
	// onceImage runs ./e2e/product/cmd/once and chaosImage ./e2e/product/cmd/chaos, both built
	// and imported by TestMain.
	onceImage  = "docker.io/metaparticle/e2e-once:test"
	chaosImage = "docker.io/metaparticle/e2e-chaos:test"
)

var cluster *localcluster.Cluster

func TestMain(m *testing.M) {
	flag.Parse()
	path := os.Getenv(localcluster.EnvFileVar)
	if testing.Short() || path == "" {
		os.Exit(m.Run())
	}
	os.Exit(run(m, path))
}

func run(m *testing.M, path string) int {
	c, err := localcluster.Load(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e/product:", err)
		return 1
	}
	root, err := localcluster.ModuleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e/product:", err)
		return 1
	}
	stack := filepath.Join(root, "hack", "stack.sh")
	if exec.Command(stack, "status").Run() == nil {
		fmt.Fprintln(os.Stderr, "e2e/product: the stack is installed already; reusing it")
	} else {
		start := time.Now()
		if err := runScript(stack, "up", "--from-registry"); err != nil {
			fmt.Fprintln(os.Stderr, "e2e/product: hack/stack.sh up --from-registry:", err)
			_ = runScript(stack, "down")
			return 1
		}
		fmt.Fprintf(os.Stderr, "e2e/product: cert-manager and helm install ready in %s\n", time.Since(start).Round(100*time.Millisecond))
		defer func() {
			if err := runScript(stack, "down"); err != nil {
				fmt.Fprintln(os.Stderr, "e2e/product: hack/stack.sh down:", err)
			}
		}()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "e2e-product-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e/product:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	var specs []image.Spec
	for _, cmd := range []struct{ name, ref string }{{"once", onceImage}, {"chaos", chaosImage}} {
		bin := filepath.Join(dir, cmd.name)
		if err := localcluster.BuildStatic(ctx, "./e2e/product/cmd/"+cmd.name, bin); err != nil {
			fmt.Fprintf(os.Stderr, "e2e/product: building cmd/%s: %v\n", cmd.name, err)
			return 1
		}
		specs = append(specs, image.Spec{Ref: cmd.ref, Files: []image.File{{Path: "/" + cmd.name, Source: bin}},
			User: "65532:65532", Entrypoint: []string{"/" + cmd.name}})
	}
	if err := c.ImportImages(ctx, specs...); err != nil {
		fmt.Fprintln(os.Stderr, "e2e/product: images of cmd/once and cmd/chaos:", err)
		return 1
	}
	// cert-manager's TriggerRenewal goes through a controller-runtime client: keep its logger quiet.
	ctrllog.SetLogger(logr.Discard())
	cluster = c
	return m.Run()
}

func runScript(name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	return cmd.Run()
}

func testContext(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// namespace creates a fresh namespace whose default service account may use Leases (a
// RoleBinding to the chart's side-car ClusterRole, as the chart's NOTES say), and dumps what ran
// in it when t failed.
func namespace(t *testing.T, bindDefault bool) string {
	t.Helper()
	ns := cluster.Namespace(t, nil)
	t.Cleanup(func() {
		if t.Failed() {
			dump(t, ns)
		}
	})
	if bindDefault {
		rb := &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "default-metaparticle-sync"},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: sidecarClusterRole},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "default", Namespace: ns}},
		}
		if _, err := cluster.Clientset.RbacV1().RoleBindings(ns).Create(context.Background(), rb, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	return ns
}

// restricted is a container security context that Pod Security "restricted" admits.
func restricted() *corev1.SecurityContext {
	return &corev1.SecurityContext{
		RunAsNonRoot:             ptr.To(true),
		AllowPrivilegeEscalation: ptr.To(false),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
}

// podTemplate is an annotated (opted-in, unless optIn is false) Pod template of one container.
func podTemplate(app, img string, optIn bool, args ...string) corev1.PodTemplateSpec {
	tpl := corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": app}},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: ptr.To[int64](10),
			Containers: []corev1.Container{{
				Name: app, Image: img, ImagePullPolicy: corev1.PullNever, Args: args, SecurityContext: restricted(),
			}},
		},
	}
	if optIn {
		tpl.Annotations = map[string]string{webhook.AnnotationInject: "true"}
	}
	return tpl
}

func deployment(name, img string, replicas int32, args ...string) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
			Template: podTemplate(name, img, true, args...),
		},
	}
}

// readyPods waits until the Deployment's Pods that are not terminating are exactly want, all
// running and ready, and returns them sorted by name.
func readyPods(ctx context.Context, t *testing.T, ns, app string, want int) []corev1.Pod {
	t.Helper()
	sel := labels.Set{"app": app}.String()
	for {
		list, err := cluster.Clientset.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err == nil {
			var ready []corev1.Pod
			live := 0
			for _, p := range list.Items {
				if p.DeletionTimestamp != nil {
					continue
				}
				live++
				if ok, _ := localcluster.Running(&p); ok {
					ready = append(ready, p)
				}
			}
			if len(ready) == want && live == want {
				sort.Slice(ready, func(i, j int) bool { return ready[i].Name < ready[j].Name })
				return ready
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%d ready Pods of %s: %v (last error %v)", want, app, ctx.Err(), err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// holder returns the Pod holding the Lease of the lock or election "test" in ns ("" when free)
// and its fencing token.
func holder(ctx context.Context, ns, kind string) (pod, token string, err error) {
	sel := labels.Set{contract.LabelManagedBy: contract.ManagedByValue, contract.LabelKind: kind}.String()
	list, err := cluster.Clientset.CoordinationV1().Leases(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return "", "", err
	}
	for _, l := range list.Items {
		if l.Annotations[contract.AnnotationName] != "test" {
			continue
		}
		return leaseHolder(&l), l.Annotations[contract.AnnotationToken], nil
	}
	return "", "", nil
}

func leaseHolder(l *coordinationv1.Lease) string {
	if l.Spec.HolderIdentity == nil {
		return ""
	}
	pod, _, _ := strings.Cut(*l.Spec.HolderIdentity, "/")
	return pod
}

// runningContainer returns the containerd ID of p's container (or init container) name when it
// runs, or "", and how often it restarted.
func runningContainer(p *corev1.Pod, name string) (id string, restarts int32) {
	for _, s := range append(slices.Clone(p.Status.InitContainerStatuses), p.Status.ContainerStatuses...) {
		if s.Name == name && s.State.Running != nil && s.ContainerID != "" {
			_, id, _ := strings.Cut(s.ContainerID, "://")
			return id, s.RestartCount
		}
	}
	return "", 0
}

// sigkill kills a container's first process with SIGKILL, as a crash would; the kubelet
// restarts the container.
func sigkill(ctx context.Context, id string) error { return signal(ctx, id, "SIGKILL") }

// signal sends a container's first process the signal sig ("SIGSTOP") through containerd.
func signal(ctx context.Context, id, sig string) error {
	_, err := cluster.Ctr(ctx, "task", "kill", "--signal", sig, id)
	return err
}

// logsWithTimestamps returns a container's log lines, each prefixed with the runtime's RFC3339
// timestamp.
func logsWithTimestamps(ctx context.Context, ns, pod, container string) ([]string, error) {
	b, err := cluster.Clientset.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{Container: container, Timestamps: true}).DoRaw(ctx)
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n"), nil
}

// warnings collects the API server's warnings (admission warnings among them).
type warnings struct {
	mu   sync.Mutex
	list []string
}

func (w *warnings) HandleWarningHeader(code int, agent, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.list = append(w.list, text)
}

func (w *warnings) all() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.list...)
}

func clientWithWarnings(t *testing.T) (kubernetes.Interface, *warnings) {
	t.Helper()
	w := &warnings{}
	cfg := rest.CopyConfig(cluster.Config)
	cfg.WarningHandler = w
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs, w
}

// dump writes what ran in ns to t's log: Pods with their container states, events, every
// container's log (and the previous one's), Leases.
func dump(t *testing.T, ns string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cs := cluster.Clientset
	var b bytes.Buffer
	fmt.Fprintf(&b, "==== namespace %s after the failure ====\n", ns)
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		fmt.Fprintf(&b, "pods: %v\n", err)
	} else {
		for _, p := range pods.Items {
			fmt.Fprintf(&b, "-- pod %s phase %s deleting=%v annotations %v\n", p.Name, p.Status.Phase, p.DeletionTimestamp != nil, p.Annotations)
			for _, c := range p.Status.Conditions {
				fmt.Fprintf(&b, "   condition %s=%s %s %s\n", c.Type, c.Status, c.Reason, c.Message)
			}
			statuses := append(append([]corev1.ContainerStatus(nil), p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...)
			for _, s := range statuses {
				fmt.Fprintf(&b, "   container %s ready=%v restarts=%d state=%+v last=%+v\n", s.Name, s.Ready, s.RestartCount, s.State, s.LastTerminationState)
				for _, prev := range []bool{false, true} {
					if prev && s.RestartCount == 0 {
						continue
					}
					out, err := cs.CoreV1().Pods(ns).GetLogs(p.Name, &corev1.PodLogOptions{Container: s.Name, Previous: prev, Timestamps: true}).DoRaw(ctx)
					if err != nil {
						fmt.Fprintf(&b, "   log of %s (previous=%v): %v\n", s.Name, prev, err)
						continue
					}
					fmt.Fprintf(&b, "   log of %s (previous=%v):\n%s\n", s.Name, prev, indent(string(out)))
				}
			}
		}
	}
	if ev, err := cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{}); err == nil {
		sort.Slice(ev.Items, func(i, j int) bool { return ev.Items[i].LastTimestamp.Before(&ev.Items[j].LastTimestamp) })
		fmt.Fprintln(&b, "-- events")
		for _, e := range ev.Items {
			fmt.Fprintf(&b, "   %s %s %s/%s %s: %s\n", e.LastTimestamp.Format(time.RFC3339), e.Type, e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Reason, e.Message)
		}
	}
	if ls, err := cs.CoordinationV1().Leases(ns).List(ctx, metav1.ListOptions{}); err == nil {
		fmt.Fprintln(&b, "-- leases")
		for _, l := range ls.Items {
			fmt.Fprintf(&b, "   %s annotations %v holder %q acquire %v renew %v transitions %v\n", l.Name, l.Annotations,
				ptr.Deref(l.Spec.HolderIdentity, ""), l.Spec.AcquireTime, l.Spec.RenewTime, ptr.Deref(l.Spec.LeaseTransitions, 0))
		}
	}
	if inj, err := cs.CoreV1().Pods(releaseNamespace).List(ctx, metav1.ListOptions{}); err == nil {
		fmt.Fprintln(&b, "-- injector Pods")
		for _, p := range inj.Items {
			fmt.Fprintf(&b, "   %s phase %s deleting=%v\n", p.Name, p.Status.Phase, p.DeletionTimestamp != nil)
		}
	}
	t.Log(b.String())
}

func indent(s string) string {
	return "      " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n      ")
}
