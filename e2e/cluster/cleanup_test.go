package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/metaparticle-io/sync/internal/localcluster"
)

// podTraces is everything of one Pod on the node that must disappear with it.
type podTraces struct {
	containers []string // containerd containers (the sandbox and the app containers)
	tasks      []string // their running tasks
	shims      []string // PIDs of the sandbox's containerd-shim-runc-v2
	netns      string   // the sandbox's network namespace (a bind mount)
	veth       string   // the host side of its veth pair
	cgroups    []string // pod<uid> cgroup directories in every hierarchy
	cniCache   []string // CNI result cache files
	ipamLease  string   // host-local's record of the Pod IP
}

// remaining lists what of t still exists.
func (t podTraces) remaining(ctx context.Context, uid string) []string {
	var left []string
	now := traces(ctx, uid, t.containers)
	if len(now.containers) > 0 {
		left = append(left, fmt.Sprintf("containers %v", now.containers))
	}
	if len(now.tasks) > 0 {
		left = append(left, fmt.Sprintf("tasks %v", now.tasks))
	}
	for _, pid := range t.shims {
		if _, err := os.Stat("/proc/" + pid); err == nil {
			left = append(left, "shim pid "+pid)
		}
	}
	if exists(t.netns) || mounted(t.netns) {
		left = append(left, "netns "+t.netns)
	}
	if exists("/sys/class/net/" + t.veth) {
		left = append(left, "veth "+t.veth)
	}
	for _, p := range append(append(append([]string(nil), t.cgroups...), t.cniCache...), t.ipamLease) {
		if exists(p) {
			left = append(left, p)
		}
	}
	return left
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func mounted(p string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	real, _ := filepath.EvalSymlinks(filepath.Dir(p))
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == p || (real != "" && f[4] == filepath.Join(real, filepath.Base(p)))) {
			return true
		}
	}
	return false
}

// traces collects what the node has of the Pod with the given UID now. ids are containerd
// container IDs known from earlier (their tasks are looked up even when the containers are gone).
func traces(ctx context.Context, uid string, ids []string) podTraces {
	var t podTraces
	out, _ := cluster.Ctr(ctx, "containers", "ls", "-q", fmt.Sprintf(`labels."io.kubernetes.pod.uid"==%s`, uid))
	t.containers = strings.Fields(out)
	known := map[string]bool{}
	for _, id := range append(ids, t.containers...) {
		known[id] = true
	}
	out, _ = cluster.Ctr(ctx, "tasks", "ls", "-q")
	for _, id := range strings.Fields(out) {
		if known[id] {
			t.tasks = append(t.tasks, id)
		}
	}
	return t
}

func TestDeletedPodLeavesNothingBehind(t *testing.T) {
	ns := cluster.Namespace(t, nil)
	ctx := testContext(t)
	cs := cluster.Clientset
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod("doomed", probe("c", "serve")), createOpts); err != nil {
		t.Fatal(err)
	}
	p, err := cluster.WaitPod(ctx, ns, "doomed", localcluster.Running)
	if err != nil {
		t.Fatal(err)
	}
	uid := string(p.UID)

	// Everything the node holds for the Pod, each checked to exist before the deletion so that
	// "gone" afterwards means something.
	tr := traces(ctx, uid, nil)
	if len(tr.containers) != 2 || len(tr.tasks) != 2 {
		t.Fatalf("want a sandbox and a container with running tasks; containers %v, tasks %v", tr.containers, tr.tasks)
	}
	results, _ := filepath.Glob("/var/lib/cni/results/*")
	var sandbox string
	for _, f := range results {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var cache struct {
			ContainerID string `json:"containerId"`
			Network     string `json:"networkName"`
			Result      struct {
				Interfaces []struct{ Name, Sandbox string }
			}
		}
		if json.Unmarshal(b, &cache) != nil || !slices.Contains(tr.containers, cache.ContainerID) {
			continue
		}
		sandbox = cache.ContainerID
		tr.cniCache = append(tr.cniCache, f)
		for _, i := range cache.Result.Interfaces {
			switch {
			case i.Sandbox != "":
				tr.netns = i.Sandbox
			case strings.HasPrefix(i.Name, "veth"):
				tr.veth = i.Name
			}
		}
	}
	if sandbox == "" || tr.netns == "" || tr.veth == "" {
		t.Fatalf("no CNI result for the Pod's sandbox among %v", results)
	}
	if !mounted(tr.netns) || !exists("/sys/class/net/"+tr.veth) {
		t.Fatalf("netns %s (mounted %v) or veth %s missing while the Pod runs", tr.netns, mounted(tr.netns), tr.veth)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range procs {
		exe, _ := os.Readlink(d + "/exe")
		cmd, _ := os.ReadFile(d + "/cmdline")
		if filepath.Base(exe) == "containerd-shim-runc-v2" && strings.Contains(string(cmd), sandbox) {
			tr.shims = append(tr.shims, filepath.Base(d))
		}
	}
	if len(tr.shims) == 0 {
		t.Fatalf("no containerd-shim-runc-v2 for sandbox %s", sandbox)
	}
	hierarchies, _ := filepath.Glob("/sys/fs/cgroup/*/" + cluster.Var("CGROUP_PARENT"))
	for _, h := range hierarchies {
		_ = filepath.WalkDir(h, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() && d.Name() == "pod"+uid {
				tr.cgroups = append(tr.cgroups, p)
				return filepath.SkipDir
			}
			return nil
		})
	}
	if len(tr.cgroups) == 0 {
		t.Fatalf("no pod%s cgroup under %v", uid, hierarchies)
	}
	tr.ipamLease = filepath.Join(cluster.Var("CLUSTER_DIR"), "cni", "ipam", "metaparticle-sync", p.Status.PodIP)
	if !exists(tr.ipamLease) {
		t.Fatalf("no host-local lease %s", tr.ipamLease)
	}
	t.Logf("pod %s: containers %v, shim %v, netns %s, veth %s, %d cgroups, IP %s", uid, tr.containers, tr.shims, tr.netns, tr.veth, len(tr.cgroups), p.Status.PodIP)

	if err := cs.CoreV1().Pods(ns).Delete(ctx, "doomed", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cluster.WaitPod(ctx, ns, "doomed", localcluster.Gone); err != nil {
		t.Fatal(err)
	}
	t.Logf("pod deleted from the API")
	// The kubelet removes the Pod's cgroup on its next housekeeping pass: wait for that.
	var left []string
	start := time.Now()
	err = wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		now := tr.remaining(ctx, uid)
		if !slices.Equal(now, left) {
			t.Logf("+%s still there: %s", time.Since(start).Round(time.Second), strings.Join(now, "; "))
		}
		left = now
		return len(left) == 0, nil
	})
	if err != nil {
		t.Fatalf("after the Pod was deleted, still there: %s (%v)", strings.Join(left, "; "), err)
	}
	t.Logf("nothing of the pod is left on the node")
}
