package product

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/pem"
	"net"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/metaparticle-io/sync/internal/certmanager"
	"github.com/metaparticle-io/sync/internal/localcluster"
	"github.com/metaparticle-io/sync/webhook"
)

// checkInjected fails t unless p carries the side-car as a native side-car (the first init
// container, restartPolicy Always) that had started, and was ready, before the app started.
func checkInjected(t *testing.T, p corev1.Pod) {
	t.Helper()
	if p.Annotations[webhook.AnnotationStatus] != webhook.StatusInjected {
		t.Errorf("pod %s: annotations %v; want %s: %s", p.Name, p.Annotations, webhook.AnnotationStatus, webhook.StatusInjected)
	}
	if len(p.Spec.InitContainers) == 0 || p.Spec.InitContainers[0].Name != webhook.SidecarName ||
		ptr.Deref(p.Spec.InitContainers[0].RestartPolicy, "") != corev1.ContainerRestartPolicyAlways {
		t.Fatalf("pod %s: init containers %v; want the native side-car %s first", p.Name, p.Spec.InitContainers, webhook.SidecarName)
	}
	if len(p.Status.InitContainerStatuses) == 0 || len(p.Status.ContainerStatuses) == 0 {
		t.Fatalf("pod %s: no container statuses", p.Name)
	}
	sc, app := p.Status.InitContainerStatuses[0], p.Status.ContainerStatuses[0]
	if !sc.Ready || sc.State.Running == nil || app.State.Running == nil {
		t.Fatalf("pod %s: side-car %+v, app %+v; want both running, the side-car ready", p.Name, sc.State, app.State)
	}
	if app.State.Running.StartedAt.Before(&sc.State.Running.StartedAt) || sc.RestartCount != 0 || app.RestartCount != 0 {
		t.Errorf("pod %s: side-car started %s (restarts %d), app started %s (restarts %d); want the side-car first, no restarts",
			p.Name, sc.State.Running.StartedAt, sc.RestartCount, app.State.Running.StartedAt, app.RestartCount)
	}
}

// hold is one hold of the lock as the app printed it.
type hold struct {
	pod        string
	token      string
	start, end time.Time
}

var (
	haveRe      = regexp.MustCompile(`^(\S+) I have the lock! \(token (\d+)\)$`)
	releasingRe = regexp.MustCompile(`^(\S+) Releasing the lock\.$`)
)

// Scenario 1: the seed's lock example as a Deployment of 2 replicas takes turns on "test".
func TestLockDeploymentTakesTurns(t *testing.T) {
	localcluster.Require(t, cluster)
	ctx := testContext(t, 3*time.Minute)
	ns := namespace(t, true)
	cs := cluster.Clientset
	if _, err := cs.AppsV1().Deployments(ns).Create(ctx, deployment("lock", lockImage, 2, "-hold", "3s", "-pause", "1s"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pods := readyPods(ctx, t, ns, "lock", 2)
	for _, p := range pods {
		checkInjected(t, p)
	}

	// Watch the Lease: the holder alternates between the two Pods; after each release the other
	// Pod, which was waiting, gets it (the releaser pauses 1s before it asks again).
	type change struct {
		at  time.Time
		pod string
	}
	var changes []change
	last := "?"
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		pod, _, err := holder(ctx, ns, "lock")
		if err != nil {
			t.Fatal(err)
		}
		if pod != last {
			changes = append(changes, change{time.Now(), pod})
			last = pod
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Consecutive holders (ignoring the moments it was free) are never the same Pod.
	var holders []string
	for _, c := range changes {
		if c.pod != "" {
			holders = append(holders, c.pod)
		}
	}
	for i := 1; i < len(holders); i++ {
		if holders[i] == holders[i-1] {
			t.Errorf("after %s released the lock it got it again; want the waiting Pod to get it (holders %v)", holders[i], holders)
		}
	}
	if len(holders) < 4 {
		t.Fatalf("the Lease had %d holders in 20s (%v); want the two Pods to take turns (hold 3s, pause 1s)", len(holders), holders)
	}

	// The apps' own view: every hold, from "I have the lock!" to "Releasing the lock." (printed
	// before Release: the other Pod may hold the lock before "I released the lock." is printed),
	// by the container runtime's timestamps. No two holds overlap, and tokens grow.
	var holds []hold
	for _, p := range pods {
		lines, err := logsWithTimestamps(ctx, ns, p.Name, "lock")
		if err != nil {
			t.Fatal(err)
		}
		var cur *hold
		for _, l := range lines {
			if m := haveRe.FindStringSubmatch(l); m != nil {
				at, _ := time.Parse(time.RFC3339Nano, m[1])
				holds = append(holds, hold{pod: p.Name, token: m[2], start: at})
				cur = &holds[len(holds)-1]
			} else if m := releasingRe.FindStringSubmatch(l); m != nil && cur != nil {
				cur.end, _ = time.Parse(time.RFC3339Nano, m[1])
				cur = nil
			}
		}
	}
	sort.Slice(holds, func(i, j int) bool { return holds[i].start.Before(holds[j].start) })
	perPod := map[string]int{}
	for i, h := range holds {
		perPod[h.pod]++
		if i == 0 {
			continue
		}
		prev := holds[i-1]
		if prev.end.IsZero() || h.start.Before(prev.end) {
			t.Errorf("hold of %s (token %s) started %s, before %s's hold (token %s) ended (%s)", h.pod, h.token, h.start, prev.pod, prev.token, prev.end)
		}
		if a, b := atoi(prev.token), atoi(h.token); b <= a {
			t.Errorf("token %s after %s; want fencing tokens to grow", h.token, prev.token)
		}
	}
	if len(perPod) != 2 {
		t.Errorf("holds per Pod %v; want both Pods to have held the lock", perPod)
	}
	// Handoff: from one app's "Releasing the lock." to the other's "I have the lock!".
	var handoffs []time.Duration
	for i := 1; i < len(holds); i++ {
		if holds[i].pod != holds[i-1].pod && !holds[i-1].end.IsZero() {
			handoffs = append(handoffs, holds[i].start.Sub(holds[i-1].end))
		}
	}
	t.Logf("%d holds by the apps' logs, per Pod %v, none overlapping; handoffs release -> other app holds: %v", len(holds), perPod, roundAll(handoffs))
	for _, h := range handoffs {
		if h > time.Second {
			t.Errorf("handoff took %s; want the waiting Pod to get the lock right after the release (< 1s, the releaser's pause)", h)
		}
	}
}

// Scenario 2: the seed's election example, 3 replicas: one master; killing the master's app
// container hands over at once; killing its side-car starts a new term once the restarted
// side-car may release the dead hold (a renew deadline after its last renewal, before the hold
// would expire); deleting the master Pod hands over at once; a rolling restart never leaves the
// election without a master for long.
func TestElectionFailover(t *testing.T) {
	localcluster.Require(t, cluster)
	ctx := testContext(t, 4*time.Minute)
	ns := namespace(t, true)
	cs := cluster.Clientset
	if _, err := cs.AppsV1().Deployments(ns).Create(ctx, deployment("election", electionImage, 3), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pods := readyPods(ctx, t, ns, "election", 3)
	for _, p := range pods {
		checkInjected(t, p)
	}
	master := waitMaster(ctx, t, ns, "")
	// Every app has joined the election: its side-car logged the candidate (a Pod is ready when
	// its side-car is; the app may join a moment later).
	for _, p := range pods {
		for {
			lines, err := logsWithTimestamps(ctx, ns, p.Name, webhook.SidecarName)
			if err == nil && strings.Contains(strings.Join(lines, "\n"), `"msg":"candidate joined"`) {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("the app of %s never joined the election: %v", p.Name, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// Exactly one app says it is the master.
	masters := 0
	for _, p := range pods {
		lines, err := logsWithTimestamps(ctx, ns, p.Name, "election")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(strings.Join(lines, "\n"), "I am the master") {
			masters++
			if p.Name != master {
				t.Errorf("pod %s says it is the master; the Lease says %s", p.Name, master)
			}
		}
	}
	if masters != 1 {
		t.Errorf("%d apps say they are the master; want 1", masters)
	}

	// Kill the master's app container (SIGKILL, as a crash): its connections to the side-car
	// close, the side-car ends its session and leaves the election, another candidate is elected
	// at once; the kubelet restarts the container and the app stands again.
	master = killMaster(ctx, t, ns, master, "election", 0, 2*time.Second)
	readyPods(ctx, t, ns, "election", 3)
	// Kill the master's side-car: the kubelet restarts it, and the new side-car of the same Pod
	// (same UID) releases the dead one's Lease once the validity it last promised has run out
	// (renew deadline 10 s + retry period 1 s after the last renewal, which was at most a renew
	// period, 5 s, before the kill), so another candidate is elected 6 to 11 s after the kill
	// (plus the kubelet's restart), never sooner, and before the Lease would have expired (10 to
	// 15 s); the app hears at once that it lost, from its closed event stream. The new master
	// may be the same Pod, whose app stood again through the restarted side-car.
	master = killMaster(ctx, t, ns, master, webhook.SidecarName, 6*time.Second, 14*time.Second)
	readyPods(ctx, t, ns, "election", 3)

	// Pods only seconds old are slow to stop: the kubelet then took about 1.7 s from the delete to
	// the app's SIGTERM here (the side-car's handoff itself took 15 ms). Let them settle first.
	time.Sleep(5 * time.Second)

	// Delete the master Pod (graceful): its side-car releases on the way out. Its side-car's log
	// is followed meanwhile, to show where the time went.
	follow, err := cs.CoreV1().Pods(ns).GetLogs(master, &corev1.PodLogOptions{Container: webhook.SidecarName, Follow: true, Timestamps: true, SinceSeconds: ptr.To[int64](1)}).Stream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	followed := make(chan string, 1)
	go func() {
		defer follow.Close()
		var out []string
		sc := bufio.NewScanner(follow)
		for sc.Scan() {
			if l := sc.Text(); strings.Contains(l, `"msg":"candidate left"`) || strings.Contains(l, `"msg":"released"`) || strings.Contains(l, `"msg":"stop requested`) {
				out = append(out, l[:min(len(l), 160)])
			}
		}
		followed <- strings.Join(out, "\n")
	}()
	start := time.Now()
	t.Logf("deleting master %s at %s", master, start.UTC().Format(time.RFC3339Nano))
	if err := cs.CoreV1().Pods(ns).Delete(ctx, master, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	next := waitMaster(ctx, t, ns, master)
	handoff := time.Since(start)
	t.Logf("deleted master %s: %s is master %s later (by the Lease, polling every 20ms)", master, next, handoff.Round(time.Millisecond))
	if handoff > time.Second {
		t.Errorf("handoff after deleting the master Pod took %s; want it well under a second (the lease duration is 15s)", handoff)
	}
	select {
	case l := <-followed:
		if l != "" {
			t.Logf("old master's side-car while it was deleted:\n%s", l)
		}
	case <-time.After(15 * time.Second):
	}
	if lines, err := logsWithTimestamps(ctx, ns, next, webhook.SidecarName); err == nil {
		for _, l := range lines {
			if strings.Contains(l, `"msg":"elected"`) || strings.Contains(l, `"msg":"lock acquired"`) || strings.Contains(l, `"msg":"leader`) {
				t.Logf("new master's side-car: %s", l)
			}
		}
	}
	readyPods(ctx, t, ns, "election", 3)

	// Rolling restart: every old Pod goes, the master changes at least once; measure the gaps.
	patch := []byte(`{"spec":{"template":{"metadata":{"annotations":{"e2e.metaparticle.io/restartedAt":"` + time.Now().Format(time.RFC3339Nano) + `"}}}}}`)
	if _, err := cs.AppsV1().Deployments(ns).Patch(ctx, "election", types.StrategicMergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	cur, freeSince, handoffs := next, time.Time{}, 0
	var maxGap time.Duration
	for {
		d, err := cs.AppsV1().Deployments(ns).Get(ctx, "election", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		done := d.Status.ObservedGeneration >= d.Generation && d.Status.UpdatedReplicas == 3 &&
			d.Status.Replicas == 3 && d.Status.AvailableReplicas == 3
		if done {
			// ... and every old Pod is gone, not just terminating.
			list, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=election"})
			done = err == nil && len(list.Items) == 3
			for _, p := range list.Items {
				done = done && p.DeletionTimestamp == nil
			}
		}
		pod, _, err := holder(ctx, ns, "election")
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		switch {
		case pod == "":
			if freeSince.IsZero() {
				freeSince = now
			}
		case pod != cur:
			gap := time.Duration(0)
			if !freeSince.IsZero() {
				gap = now.Sub(freeSince)
			}
			maxGap = max(maxGap, gap)
			handoffs++
			t.Logf("rollout: master %s -> %s after %s without a master", cur, pod, gap.Round(time.Millisecond))
			cur, freeSince = pod, time.Time{}
		default:
			freeSince = time.Time{}
		}
		if done {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("rollout restart did not complete")
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("rollout restart done in %s: %d handoffs, longest time without a master %s", time.Since(start).Round(time.Millisecond), handoffs, maxGap.Round(time.Millisecond))
	if handoffs == 0 {
		t.Errorf("the master %s survived a rolling restart of every Pod", cur)
	}
	if maxGap > 15*time.Second {
		t.Errorf("the election had no master for %s; want at most the lease duration (15s)", maxGap)
	}
	final := readyPods(ctx, t, ns, "election", 3)
	m := waitMaster(ctx, t, ns, "")
	found := false
	for _, p := range final {
		found = found || p.Name == m
	}
	if !found {
		t.Errorf("master after the rollout is %s, not one of the new Pods", m)
	}
}

// killMaster kills the master Pod's container with SIGKILL, waits for another master, checks that
// the handoff took between atLeast and atMost and that the old master's app said it lost (unless
// the app itself was killed), and returns the new master.
func killMaster(ctx context.Context, t *testing.T, ns, master, container string, atLeast, atMost time.Duration) string {
	t.Helper()
	p, err := cluster.Clientset.CoreV1().Pods(ns).Get(ctx, master, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	id, _ := runningContainer(p, container)
	if id == "" {
		t.Fatalf("master %s: its %s container does not run", master, container)
	}
	_, oldToken, err := holder(ctx, ns, "election")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := sigkill(ctx, id); err != nil {
		t.Fatal(err)
	}
	var next string
	if container == "election" {
		next = waitMaster(ctx, t, ns, master)
	} else {
		// The new term may be the same Pod's: its app stands again through the restarted
		// side-car, which is nearest to the Lease when it releases the dead hold.
		next = waitTerm(ctx, t, ns, oldToken)
	}
	handoff := time.Since(start)
	t.Logf("killed master %s's %s: %s is master %s later (by the Lease, polling every 20ms)", master, container, next, handoff.Round(time.Millisecond))
	if handoff < atLeast || handoff > atMost {
		t.Errorf("new master %s after killing the master's %s; want between %s and %s", handoff.Round(time.Millisecond), container, atLeast, atMost)
	}
	if container != "election" {
		// The app's SDK sees its side-car's connections close: it says it lost at once, by the
		// runtime's timestamp of the line.
		said := lostMasterAt(ctx, t, ns, master, start)
		t.Logf("old master %s's app said it lost %s after the kill", master, said.Sub(start).Round(time.Millisecond))
		if said.Sub(start) > 2*time.Second {
			t.Errorf("the old master's app said it lost %s after its side-car was killed; want at once (< 2s)", said.Sub(start).Round(time.Millisecond))
		}
	}
	return next
}

// lostMasterAt waits for the election app of pod to print "I lost the master" at or after since
// and returns the line's timestamp.
func lostMasterAt(ctx context.Context, t *testing.T, ns, pod string, since time.Time) time.Time {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		lines, err := logsWithTimestamps(ctx, ns, pod, "election")
		for _, l := range lines {
			stamp, text, _ := strings.Cut(l, " ")
			at, perr := time.Parse(time.RFC3339Nano, stamp)
			if perr == nil && !at.Before(since) && strings.Contains(text, "I lost the master") {
				return at
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("the app of %s did not say it lost the master: %v (log error %v)", pod, ctx.Err(), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitMaster waits until a Pod other than not holds the election "test" and returns it.
// waitTerm waits for a master whose term is not the one with token old, and returns its Pod.
func waitTerm(ctx context.Context, t *testing.T, ns, old string) string {
	t.Helper()
	for {
		pod, token, err := holder(ctx, ns, "election")
		if err == nil && pod != "" && token != "" && token != old {
			return pod
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no term after the one of token %s: %v (last error %v)", old, ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func waitMaster(ctx context.Context, t *testing.T, ns, not string) string {
	t.Helper()
	for {
		pod, _, err := holder(ctx, ns, "election")
		if err == nil && pod != "" && pod != not {
			return pod
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no master other than %q: %v (last error %v)", not, ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Scenario 4: a Job whose Pod is annotated completes: the native side-car does not keep it alive.
func TestAnnotatedJobCompletes(t *testing.T) {
	localcluster.Require(t, cluster)
	ctx := testContext(t, 2*time.Minute)
	ns := namespace(t, true)
	tpl := podTemplate("once", onceImage, true, "-name", "job")
	tpl.Spec.RestartPolicy = corev1.RestartPolicyNever
	job := &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: "once"},
		Spec:       batchv1.JobSpec{BackoffLimit: ptr.To[int32](0), Template: tpl},
	}
	start := time.Now()
	if _, err := cluster.Clientset.BatchV1().Jobs(ns).Create(ctx, job, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for {
		j, err := cluster.Clientset.BatchV1().Jobs(ns).Get(ctx, "once", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if cond(j.Status.Conditions, batchv1.JobFailed) {
			t.Fatalf("the Job failed: %+v", j.Status)
		}
		if cond(j.Status.Conditions, batchv1.JobComplete) {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the Job did not complete: %+v", j.Status)
		}
		time.Sleep(200 * time.Millisecond)
	}
	pods, err := cluster.Clientset.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=once"})
	if err != nil || len(pods.Items) != 1 {
		t.Fatalf("pods of the Job: %v, %v", pods, err)
	}
	p := pods.Items[0]
	if len(p.Spec.InitContainers) == 0 || p.Spec.InitContainers[0].Name != webhook.SidecarName {
		t.Fatalf("the Job's Pod was not injected: init containers %v", p.Spec.InitContainers)
	}
	log, err := cluster.Logs(ctx, ns, p.Name, "once")
	if err != nil || !strings.Contains(log, "I released the lock.") {
		t.Errorf("log of the Job's app: %q, %v; want it to have taken and released the lock", log, err)
	}
	t.Logf("annotated Job complete %s after create (pod phase %s)", time.Since(start).Round(time.Millisecond), p.Status.Phase)
}

func cond(cs []batchv1.JobCondition, typ batchv1.JobConditionType) bool {
	for _, c := range cs {
		if c.Type == typ && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

// Scenario 5: with the injector scaled to 0, unannotated Pods are still admitted and annotated
// ones are refused with the API server's webhook error; both work again when it is back.
func TestInjectorDown(t *testing.T) {
	localcluster.Require(t, cluster)
	ctx := testContext(t, 3*time.Minute)
	ns := namespace(t, true)
	cs := cluster.Clientset
	deps := cs.AppsV1().Deployments(releaseNamespace)
	d, err := deps.Get(ctx, injectorDeployment, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	replicas := ptr.Deref(d.Spec.Replicas, 1)
	scale := func(n int32) {
		t.Helper()
		s, err := deps.GetScale(ctx, injectorDeployment, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		s.Spec.Replicas = n
		if _, err := deps.UpdateScale(ctx, injectorDeployment, s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		// Always give the cluster its injector back.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if s, err := deps.GetScale(ctx, injectorDeployment, metav1.GetOptions{}); err == nil && s.Spec.Replicas != replicas {
			s.Spec.Replicas = replicas
			_, _ = deps.UpdateScale(ctx, injectorDeployment, s, metav1.UpdateOptions{})
		}
	})
	pod := func(name string, optIn bool) *corev1.Pod {
		tpl := podTemplate("probe", onceImage, optIn)
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: tpl.Labels, Annotations: tpl.Annotations}, Spec: tpl.Spec}
	}

	scale(0)
	for {
		list, err := cs.CoreV1().Pods(releaseNamespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Items) == 0 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("injector Pods still there: %d", len(list.Items))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod("plain-down", false), metav1.CreateOptions{}); err != nil {
		t.Errorf("unannotated Pod with the injector down: %v; want it admitted", err)
	}
	_, err = cs.CoreV1().Pods(ns).Create(ctx, pod("opted-in-down", true), metav1.CreateOptions{})
	if err == nil || !strings.Contains(err.Error(), "failed calling webhook") || !strings.Contains(err.Error(), "inject.sync.metaparticle.io") {
		t.Errorf("annotated Pod with the injector down: got %v; want the API server's webhook error", err)
	} else {
		t.Logf("annotated Pod refused while the injector is down: %v", err)
	}

	scale(replicas)
	start := time.Now()
	var created *corev1.Pod
	for {
		created, err = cs.CoreV1().Pods(ns).Create(ctx, pod("opted-in-up", true), metav1.CreateOptions{})
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("annotated Pod after scaling the injector back to %d: %v", replicas, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("annotated Pods admitted again %s after scaling the injector back to %d", time.Since(start).Round(time.Millisecond), replicas)
	if created.Annotations[webhook.AnnotationStatus] != webhook.StatusInjected {
		t.Errorf("annotated Pod after the injector is back: annotations %v; want it injected", created.Annotations)
	}
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod("plain-up", false), metav1.CreateOptions{}); err != nil {
		t.Errorf("unannotated Pod after the injector is back: %v", err)
	}
	// Leave the injector fully available for the next tests.
	for {
		d, err := deps.Get(ctx, injectorDeployment, metav1.GetOptions{})
		if err == nil && d.Status.AvailableReplicas == replicas && d.Status.ReadyReplicas == replicas {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("injector not available again: %v %+v", err, d.Status)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Scenario 7: a Pod whose service account has no Lease RBAC is admitted with the injector's
// warning; its side-car is not ready and its log says forbidden.
func TestNoLeaseRBAC(t *testing.T) {
	localcluster.Require(t, cluster)
	ctx := testContext(t, 2*time.Minute)
	ns := namespace(t, false)
	cs, warns := clientWithWarnings(t)
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "no-leases"}}
	if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tpl := podTemplate("election", electionImage, true)
	tpl.Spec.ServiceAccountName = "no-leases"
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "no-rbac", Labels: tpl.Labels, Annotations: tpl.Annotations}, Spec: tpl.Spec}
	// The service account's token may take a moment; the Pod is created at once all the same.
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatalf("annotated Pod of a service account without Lease RBAC: %v; want it admitted", err)
	}
	var warned string
	for _, w := range warns.all() {
		if strings.Contains(w, "no-leases") && strings.Contains(strings.ToLower(w), "lease") {
			warned = w
		}
	}
	if warned == "" {
		t.Errorf("admission warnings %q; want one about the service account's missing Lease RBAC", warns.all())
	} else {
		t.Logf("admission warning: %s", warned)
	}

	var log string
	for {
		var err error
		log, err = cluster.Logs(ctx, ns, p.Name, webhook.SidecarName)
		if err == nil && strings.Contains(strings.ToLower(log), "forbidden") {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("side-car log never said forbidden: %v\n%s", err, log)
		}
		time.Sleep(500 * time.Millisecond)
	}
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(strings.ToLower(l), "forbidden") {
			t.Logf("side-car log: %s", l)
			break
		}
	}
	// Give the readiness probe a few periods, then the side-car must still be unready.
	time.Sleep(5 * time.Second)
	got, err := cluster.Clientset.CoreV1().Pods(ns).Get(ctx, p.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range got.Status.InitContainerStatuses {
		if s.Name == webhook.SidecarName && s.Ready {
			t.Errorf("side-car of a service account without Lease RBAC is ready; want it not ready")
		}
	}
}

func roundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}

func atoi(s string) int64 {
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}

// Scenario 6: cert-manager re-issues the webhook's serving certificate; the injector serves the
// new one without a restart (the kubelet updates the Secret volume, the injector reloads it) and
// admissions keep working.
func TestCertificateRotation(t *testing.T) {
	localcluster.Require(t, cluster)
	ctx := testContext(t, 4*time.Minute)
	ns := namespace(t, true)
	cs := cluster.Clientset
	cl, err := client.New(cluster.Config, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	secretName := injectorDeployment + "-tls"
	old, err := cs.CoreV1().Secrets(releaseNamespace).Get(ctx, secretName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pods, err := cs.CoreV1().Pods(releaseNamespace).List(ctx, metav1.ListOptions{})
	if err != nil || len(pods.Items) == 0 {
		t.Fatalf("injector Pods: %v", err)
	}
	restarts := map[string]int32{}
	for _, p := range pods.Items {
		for _, s := range p.Status.ContainerStatuses {
			restarts[p.Name] += s.RestartCount
		}
	}
	// What each injector Pod serves now is the current certificate.
	for _, p := range pods.Items {
		if got := served(t, p.Status.PodIP); !bytes.Equal(got, leaf(t, old.Data["tls.crt"])) {
			t.Fatalf("injector %s does not serve the Secret's certificate before the renewal", p.Name)
		}
	}

	start := time.Now()
	if err := certmanager.TriggerRenewal(ctx, cl, releaseNamespace, injectorDeployment+"-serving"); err != nil {
		t.Fatal(err)
	}
	var renewed []byte
	for {
		s, err := cs.CoreV1().Secrets(releaseNamespace).Get(ctx, secretName, metav1.GetOptions{})
		if err == nil && !bytes.Equal(s.Data["tls.crt"], old.Data["tls.crt"]) {
			renewed = leaf(t, s.Data["tls.crt"])
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the serving Secret never changed after the renewal: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("cert-manager re-issued the serving certificate in %s", time.Since(start).Round(time.Millisecond))
	for _, p := range pods.Items {
		for !bytes.Equal(served(t, p.Status.PodIP), renewed) {
			if ctx.Err() != nil {
				t.Fatalf("injector %s still serves the old certificate", p.Name)
			}
			time.Sleep(time.Second)
		}
		t.Logf("injector %s serves the new certificate %s after the renewal", p.Name, time.Since(start).Round(time.Second))
	}
	after, err := cs.CoreV1().Pods(releaseNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range after.Items {
		var n int32
		for _, s := range p.Status.ContainerStatuses {
			n += s.RestartCount
		}
		if r, ok := restarts[p.Name]; !ok || r != n {
			t.Errorf("injector Pod %s: restarts %d (before %d, known %v); want the same Pods, not restarted", p.Name, n, r, ok)
		}
	}
	// The API server still trusts the injector (cainjector keeps the caBundle; the CA is the same).
	tpl := podTemplate("probe", onceImage, true)
	created, err := cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "after-rotation", Labels: tpl.Labels, Annotations: tpl.Annotations}, Spec: tpl.Spec}, metav1.CreateOptions{})
	if err != nil || created.Annotations[webhook.AnnotationStatus] != webhook.StatusInjected {
		t.Fatalf("annotated Pod after the rotation: %v; want it injected", err)
	}
}

// served returns the DER leaf certificate the injector at ip serves.
func served(t *testing.T, ip string) []byte {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", net.JoinHostPort(ip, "9443"), &tls.Config{InsecureSkipVerify: true}) // only reads the served certificate
	if err != nil {
		t.Fatalf("TLS to the injector at %s: %v", ip, err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].Raw
}

// leaf returns the DER of the first certificate in a PEM bundle.
func leaf(t *testing.T, pemBytes []byte) []byte {
	t.Helper()
	b, _ := pem.Decode(pemBytes)
	if b == nil {
		t.Fatal("no PEM certificate in the Secret")
	}
	return b.Bytes
}
