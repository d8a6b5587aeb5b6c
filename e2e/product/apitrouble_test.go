package product

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"github.com/metaparticle-io/sync/internal/localcluster"
	"github.com/metaparticle-io/sync/internal/syncctl"
	"github.com/metaparticle-io/sync/webhook"
)

// Scenario 8: API server trouble never takes an opted-in Pod out of its Service. Two replicas
// of the seed's lock example run behind a Service. One Pod is cut off from the API server by
// iptables in its network namespace, then the namespace's Lease RBAC is revoked. Throughout,
// both Pods stay Ready and ready endpoints of the Service's EndpointSlices (watched, every change
// checked), while the holds go as they must: the cut-off holder is told it lost the lock, the
// other Pod takes it, the cut-off Pod takes it again after the cut; with RBAC revoked the holder
// is told it lost it and its side-car reports the trouble to its sessions and to syncctl
// sidecars (through the API server's proxy to the Pod), and after RBAC is
// restored the lock is granted again.
func TestAPITroubleKeepsPodsReady(t *testing.T) {
	localcluster.Require(t, cluster)
	ctx := testContext(t, 6*time.Minute)
	ns := namespace(t, true)
	cs := cluster.Clientset
	const app = "serve"
	// A hold of 25 s outlasts the renew deadline (10 s), so the RBAC loss comes before the
	// release.
	if _, err := cs.AppsV1().Deployments(ns).Create(ctx, deployment(app, lockImage, 2, "-hold", "25s", "-pause", "2s"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: app},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": app},
			Ports:    []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}
	if _, err := cs.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pods := readyPods(ctx, t, ns, app, 2)
	names := []string{pods[0].Name, pods[1].Name}
	mon := watchReadiness(ctx, t, ns, app, names)
	mon.waitServing(ctx, t)
	restarts := containerRestarts(ctx, t, ns, names)

	// 1. The holder is cut off from the API server.
	h := waitHolder(ctx, t, ns, func(p string) bool { return p != "" })
	w := names[0]
	if w == h {
		w = names[1]
	}
	lostBefore := countLines(ctx, t, ns, h, app, "I lost the lock!")
	heal := cutOffPod(ctx, t, ns, h)
	cutAt := time.Now()
	waitHolder(ctx, t, ns, func(p string) bool { return p == w })
	tookOver := time.Since(cutAt)
	if got := countLines(ctx, t, ns, h, app, "I lost the lock!"); got <= lostBefore {
		t.Errorf("%s's app printed %q %d times after the cut; want more than the %d before it", h, "I lost the lock!", got, lostBefore)
	}
	if err := heal(); err != nil {
		t.Fatal(err)
	}
	waitHolder(ctx, t, ns, func(p string) bool { return p == h })
	t.Logf("cut-off: %s cut off; %s held the lock %s later; after the cut %s held it again (%s after the cut)",
		h, w, tookOver.Round(time.Millisecond), h, time.Since(cutAt).Round(time.Millisecond))

	// 2. The namespace's Lease RBAC is revoked, then restored.
	_, token, err := holder(ctx, ns, "lock")
	if err != nil {
		t.Fatal(err)
	}
	lostBefore = countLines(ctx, t, ns, h, app, "I lost the lock!")
	const degraded, recovered = "telling the sessions they are degraded", "telling the sessions they recovered"
	// The cut's trouble is over once h renews again.
	waitLines(ctx, t, ns, h, webhook.SidecarName, recovered, countLines(ctx, t, ns, h, webhook.SidecarName, degraded))
	degradedBefore := countLines(ctx, t, ns, h, webhook.SidecarName, degraded)
	rbs := cs.RbacV1().RoleBindings(ns)
	rb, err := rbs.Get(ctx, "default-metaparticle-sync", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := rbs.Delete(ctx, rb.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	revokedAt := time.Now()
	waitLines(ctx, t, ns, h, app, "I lost the lock!", lostBefore+1)
	lostAfter := time.Since(revokedAt)
	waitLines(ctx, t, ns, h, webhook.SidecarName, degraded, degradedBefore+1)
	// What only the side-car knows, syncctl shows: it reads the side-car's health through the
	// API server's proxy to the Pod.
	checkSidecarsCommand(ctx, t, ns, h, "forbidden: ")
	restored := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: rb.Name}, RoleRef: rb.RoleRef, Subjects: rb.Subjects}
	if _, err := rbs.Create(ctx, restored, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	restoredAt := time.Now()
	for {
		p, tok, err := holder(ctx, ns, "lock")
		if err == nil && p != "" && tok != token {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("no new grant after RBAC was restored: %v", ctx.Err())
		}
		time.Sleep(100 * time.Millisecond)
	}
	regranted := time.Since(restoredAt)
	// h's side-car recovers at its next successful write: at once if it won the grant, after
	// the other Pod's hold if not.
	waitLines(ctx, t, ns, h, webhook.SidecarName, recovered, degradedBefore+1)
	t.Logf("RBAC: revoked; %s told it lost the lock %s later; restored %s after the revocation; granted again %s after that; %s's side-car told its sessions they recovered %s after that",
		h, lostAfter.Round(time.Millisecond), restoredAt.Sub(revokedAt).Round(time.Millisecond), regranted.Round(time.Millisecond), h, time.Since(restoredAt).Round(time.Millisecond))

	checks := mon.stop()
	if v := mon.violations(); len(v) > 0 {
		t.Errorf("while the API server was out of reach: got %d readiness changes %v; want both Pods Ready and ready endpoints of %s throughout", len(v), v, app)
	}
	if got := containerRestarts(ctx, t, ns, names); !maps.Equal(got, restarts) {
		t.Errorf("container restarts: got %v; want %v (none during the trouble)", got, restarts)
	}
	t.Logf("both Pods stayed Ready and ready endpoints of Service %s through both faults (%d Pod and EndpointSlice versions seen and checked after both served; a readiness change would have been one more)", app, checks)
}

// readiness watches the Pods of an app and the EndpointSlices of its Service, and records each
// version in which one of the named Pods is not Ready or not a ready endpoint.
type readiness struct {
	ns, svc string
	pods    []string
	cancel  context.CancelFunc
	done    chan struct{}

	mu      sync.Mutex
	podOK   map[string]bool
	slices  map[string]*discoveryv1.EndpointSlice
	serving chan struct{} // closed once every Pod was seen Ready and a ready endpoint
	armed   bool          // serving was closed: from then on a version that is not is a violation
	checks  int
	bad     []string
}

func watchReadiness(ctx context.Context, t *testing.T, ns, svc string, pods []string) *readiness {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	r := &readiness{ns: ns, svc: svc, pods: pods, cancel: cancel, done: make(chan struct{}),
		podOK: map[string]bool{}, slices: map[string]*discoveryv1.EndpointSlice{}, serving: make(chan struct{})}
	f := informers.NewSharedInformerFactoryWithOptions(cluster.Clientset, 0, informers.WithNamespace(ns))
	pi := f.Core().V1().Pods().Informer()
	si := f.Discovery().V1().EndpointSlices().Informer()
	onPod := func(obj any) {
		if p, ok := obj.(*corev1.Pod); ok {
			r.mu.Lock()
			r.podOK[p.Name] = podReady(p)
			r.checkLocked(fmt.Sprintf("Pod %s rv %s", p.Name, p.ResourceVersion))
			r.mu.Unlock()
		}
	}
	onSlice := func(obj any, deleted bool) {
		if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = tomb.Obj
		}
		s, ok := obj.(*discoveryv1.EndpointSlice)
		if !ok || s.Labels[discoveryv1.LabelServiceName] != svc {
			return
		}
		r.mu.Lock()
		if deleted {
			delete(r.slices, s.Name)
		} else {
			r.slices[s.Name] = s
		}
		r.checkLocked(fmt.Sprintf("EndpointSlice %s rv %s", s.Name, s.ResourceVersion))
		r.mu.Unlock()
	}
	for _, reg := range []struct {
		inf cache.SharedIndexInformer
		h   cache.ResourceEventHandlerFuncs
	}{
		{pi, cache.ResourceEventHandlerFuncs{AddFunc: onPod, UpdateFunc: func(_, n any) { onPod(n) }}},
		{si, cache.ResourceEventHandlerFuncs{AddFunc: func(o any) { onSlice(o, false) }, UpdateFunc: func(_, n any) { onSlice(n, false) }, DeleteFunc: func(o any) { onSlice(o, true) }}},
	} {
		if _, err := reg.inf.AddEventHandler(reg.h); err != nil {
			t.Fatal(err)
		}
	}
	f.Start(ctx.Done())
	go func() {
		<-ctx.Done()
		f.Shutdown()
		close(r.done)
	}()
	t.Cleanup(func() { r.stop() })
	return r
}

// checkLocked checks the state after a change (what).
func (r *readiness) checkLocked(what string) {
	var missing []string
	for _, p := range r.pods {
		if !r.podOK[p] {
			missing = append(missing, p+" not Ready")
		}
		if !r.readyEndpointLocked(p) {
			missing = append(missing, p+" not a ready endpoint")
		}
	}
	if !r.armed {
		if len(missing) == 0 {
			r.armed = true
			close(r.serving)
		}
		return
	}
	r.checks++
	if len(missing) > 0 {
		r.bad = append(r.bad, fmt.Sprintf("%s at %s: %s", what, time.Now().Format("15:04:05.000"), strings.Join(missing, ", ")))
	}
}

func (r *readiness) readyEndpointLocked(pod string) bool {
	for _, s := range r.slices {
		for _, ep := range s.Endpoints {
			if ep.TargetRef != nil && ep.TargetRef.Kind == "Pod" && ep.TargetRef.Name == pod {
				return ep.Conditions.Ready == nil || *ep.Conditions.Ready
			}
		}
	}
	return false
}

// waitServing waits until both Pods were seen Ready and ready endpoints.
func (r *readiness) waitServing(ctx context.Context, t *testing.T) {
	t.Helper()
	select {
	case <-r.serving:
	case <-ctx.Done():
		r.mu.Lock()
		defer r.mu.Unlock()
		t.Fatalf("Pods %v never all Ready and ready endpoints of Service %s (Ready %v, %d slices): %v", r.pods, r.svc, r.podOK, len(r.slices), ctx.Err())
	}
}

// stop ends the watches and returns how many versions were checked.
func (r *readiness) stop() int {
	r.cancel()
	<-r.done
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.checks
}

func (r *readiness) violations() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.bad...)
}

// checkSidecarsCommand runs syncctl sidecars for ns and checks that the side-car of pod reports
// API server trouble starting with want.
func checkSidecarsCommand(ctx context.Context, t *testing.T, ns, pod, want string) {
	t.Helper()
	kubeconfig := cluster.Var("KUBECONFIG")
	var out, errOut bytes.Buffer
	if code := syncctl.Run(ctx, "syncctl", []string{"--kubeconfig", kubeconfig, "sidecars", "-n", ns, "-o", "json"}, &out, &errOut); code != 0 {
		t.Fatalf("syncctl sidecars: got exit %d, stderr %q; want 0", code, errOut.String())
	}
	var list syncctl.SidecarList
	if err := json.Unmarshal(out.Bytes(), &list); err != nil {
		t.Fatalf("syncctl sidecars: got %q: %v", out.String(), err)
	}
	for _, h := range list.Items {
		if h.Pod == pod {
			if h.Serving != "ok" || !strings.HasPrefix(h.APIServer, want) {
				t.Errorf("syncctl sidecars, %s: got %+v; want serving ok and API server trouble %q…", pod, h, want)
			}
			t.Logf("syncctl sidecars: %+v", list.Items)
			return
		}
	}
	t.Errorf("syncctl sidecars: got %+v; want a row for %s", list.Items, pod)
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// waitHolder waits until the Pod holding the lock "test" in ns satisfies ok, and returns it.
func waitHolder(ctx context.Context, t *testing.T, ns string, ok func(pod string) bool) string {
	t.Helper()
	for {
		p, _, err := holder(ctx, ns, "lock")
		if err == nil && ok(p) {
			return p
		}
		if ctx.Err() != nil {
			t.Fatalf("waiting for the lock's holder (last %q, %v): %v", p, err, ctx.Err())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// cutOffPod cuts Pod pod of ns off from the API server (see cutOff) and returns what heals
// it; a cleanup heals it if the test did not.
func cutOffPod(ctx context.Context, t *testing.T, ns, pod string) (heal func() error) {
	t.Helper()
	p, err := cluster.Clientset.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	id, _ := runningContainer(p, webhook.SidecarName)
	pids, err := taskPIDs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if id == "" || pids[id] == 0 {
		t.Fatalf("%s's side-car does not run", pod)
	}
	n, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pids[id]))
	if err != nil {
		t.Fatal(err)
	}
	c := &cutOff{net: n}
	if err := c.apply(ctx, "-I"); err != nil {
		n.Close()
		t.Fatal(err)
	}
	heal = sync.OnceValue(c.heal)
	t.Cleanup(func() { _ = heal() })
	return heal
}

// countLines counts the lines of a container's log that contain text.
func countLines(ctx context.Context, t *testing.T, ns, pod, container, text string) int {
	t.Helper()
	log, err := cluster.Logs(ctx, ns, pod, container)
	if err != nil {
		t.Fatalf("logs of %s's %s: %v", pod, container, err)
	}
	n := 0
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, text) {
			n++
		}
	}
	return n
}

// waitLines waits until at least n lines of a container's log contain text.
func waitLines(ctx context.Context, t *testing.T, ns, pod, container, text string, n int) {
	t.Helper()
	for countLines(ctx, t, ns, pod, container, text) < n {
		if ctx.Err() != nil {
			t.Fatalf("%s's %s never logged %q %d times: %v", pod, container, text, n, ctx.Err())
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// containerRestarts returns the restart counts of every container of the named Pods.
func containerRestarts(ctx context.Context, t *testing.T, ns string, pods []string) map[string]int32 {
	t.Helper()
	out := map[string]int32{}
	for _, name := range pods {
		p, err := cluster.Clientset.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
			out[name+"/"+s.Name] = s.RestartCount
		}
	}
	return out
}
