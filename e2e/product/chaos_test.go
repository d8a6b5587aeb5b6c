package product

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/metaparticle-io/sync/e2e/product/chaos"
	"github.com/metaparticle-io/sync/internal/localcluster"
	"github.com/metaparticle-io/sync/webhook"
)

// The chaos run's lock timing, set on its Pods through the injector's annotations: short, so that
// faults cost seconds rather than the default 15 s.
const (
	chaosLeaseDuration = 4 * time.Second
	chaosRenewDeadline = 3 * time.Second
	chaosRenewPeriod   = time.Second
	chaosRetryPeriod   = 250 * time.Millisecond
	// chaosMargin is how much longer than the lease duration the run waits, after a fault, for
	// the next grant: the kubelet restarting containers, watches re-established after the API
	// server's restart, a loaded two-core machine.
	chaosMargin = 15 * time.Second
	// chaosCut is how long a Pod stays cut off from the API server: longer than the lease
	// duration, so that another Pod must take over while it is cut off.
	chaosCut = chaosLeaseDuration + 3*time.Second
	// chaosMaxRestarts keeps a container out of the kubelet's long crash-loop back-off: one that
	// restarted this often is not killed again while another can be.
	chaosMaxRestarts = 2
	// chaosApp is the contenders' Deployment and container name.
	chaosApp = "chaos"
)

// Fault kinds of the chaos run, as CHAOS_FAULTS names them.
const (
	faultKillApp      = "kill-app"
	faultKillSidecar  = "kill-sidecar"
	faultRestartAPI   = "restart-apiserver"
	faultCutOff       = "cut-off"
	defaultChaosCount = 1000
)

var allFaultKinds = []string{faultKillApp, faultKillSidecar, faultRestartAPI, faultCutOff}

// Scenario 3: the chaos safety run. Five contender Pods (./e2e/product/cmd/chaos) loop acquire ->
// announce and write to a shared fenced register with their token -> release, while faults are
// injected one at a time, each kind at least once: SIGKILL of a holder's app container, SIGKILL of
// a holder's side-car, a crash and restart of the API server, and a holder Pod cut off from the
// API server by iptables in its network namespace. The register (package chaos) refuses stale
// tokens and finds every overlap of the applications' holds. The run fails on an overlap, two
// holds with one token, a later hold with a lower token, or no grant within lease duration +
// margin after a fault. It stops by itself after CHAOS_GRANTS grants (default 1000) and at least
// one fault of each kind; CHAOS_FAULTS=kill-app,kill-sidecar,restart-apiserver,cut-off (the
// default) chooses the kinds.
func TestChaosSafety(t *testing.T) {
	localcluster.Require(t, cluster)
	target := defaultChaosCount
	if s := os.Getenv("CHAOS_GRANTS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("CHAOS_GRANTS=%q: want a positive number of grants", s)
		}
		target = n
	}
	faultKinds := allFaultKinds
	if s := os.Getenv("CHAOS_FAULTS"); s != "" {
		faultKinds = strings.Split(s, ",")
		for _, k := range faultKinds {
			if !slices.Contains(allFaultKinds, k) {
				t.Fatalf("CHAOS_FAULTS=%q: %q is not one of %s", s, k, strings.Join(allFaultKinds, ","))
			}
		}
	}
	// Bounded: about 7 grants a second were measured with faults; allow 4 a second, and 4 minutes
	// for the faults' recoveries.
	limit := 4*time.Minute + time.Duration(target)*250*time.Millisecond
	ctx := testContext(t, limit+2*time.Minute)
	ns := namespace(t, true)
	cs := cluster.Clientset

	reg := chaos.NewRegister()
	ln, err := net.Listen("tcp", net.JoinHostPort(cluster.Var("NODE_IP"), "0"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: reg, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	// Holds of about 100 ms (5 writes, 20 ms apart): a fault aimed at the holder mostly hits it.
	// Every 10th hold's last write arrives 300 ms late, after the release, to be fenced off.
	d := deployment(chaosApp, chaosImage, 5, "-register", "http://"+ln.Addr().String(),
		"-writes", "5", "-pause", "20ms", "-late-every", "10", "-late-by", "300ms")
	d.Spec.Template.Annotations[webhook.AnnotationLeaseDuration] = chaosLeaseDuration.String()
	d.Spec.Template.Annotations[webhook.AnnotationRenewDeadline] = chaosRenewDeadline.String()
	d.Spec.Template.Annotations[webhook.AnnotationRenewPeriod] = chaosRenewPeriod.String()
	d.Spec.Template.Annotations[webhook.AnnotationRetryPeriod] = chaosRetryPeriod.String()
	if _, err := cs.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	readyPods(ctx, t, ns, chaosApp, 5)
	if !waitGrant(ctx, reg, time.Now().Add(-time.Hour), time.Minute) {
		t.Fatal("no contender announced a hold within a minute of all five Pods being ready")
	}

	f := &faulter{t: t, ns: ns, reg: reg}
	t.Cleanup(f.healAll)
	start := time.Now()
	faults := map[string]int{}
	var deck []string
	for {
		n := reg.Counts().Grants
		if n >= target && len(faults) == len(faultKinds) {
			break
		}
		if time.Since(start) > limit {
			t.Errorf("the run did not reach %d grants and every fault kind within %s: %d grants, faults %v", target, limit, n, faults)
			break
		}
		time.Sleep(time.Second + rand.N(3*time.Second))
		if len(deck) == 0 {
			deck = slices.Clone(faultKinds)
			rand.Shuffle(len(deck), func(i, j int) { deck[i], deck[j] = deck[j], deck[i] })
		}
		kind := deck[0]
		deck = deck[1:]
		desc, from, err := f.inject(ctx, kind)
		if err != nil {
			t.Errorf("fault %q: %v", kind, err)
			break
		}
		faults[kind]++
		ok := waitGrant(ctx, reg, from, chaosLeaseDuration+chaosMargin)
		_, next := reg.Granted()
		f.healAll()
		if !ok {
			t.Errorf("no grant within %s (lease duration + margin) after %s", chaosLeaseDuration+chaosMargin, desc)
			break
		}
		t.Logf("fault %d: %s; next grant %s later", total(faults), desc, next.Sub(from).Round(time.Millisecond))
	}
	elapsed := time.Since(start)

	// Stop the contenders (SIGTERM: each ends its hold and releases) so that every End arrives;
	// after a failure, leave them for the namespace's dump.
	if !t.Failed() {
		if err := cs.AppsV1().Deployments(ns).Delete(ctx, chaosApp, metav1.DeleteOptions{}); err != nil {
			t.Error(err)
		}
		waitNoPods(ctx, t, ns, chaosApp)
	}
	rep := reg.Report()
	var kinds []string
	for _, k := range allFaultKinds {
		kinds = append(kinds, fmt.Sprintf("%s %d", k, faults[k]))
	}
	t.Logf("chaos run: %d grants in %s (%.1f/s), %d writes accepted, faults: %s; stale messages refused %d "+
		"(late writes %d, refused %d); holds ended done %d, lost %d, refused as stale %d; longest time without a holder %s (from %s); "+
		"overlaps %d, duplicate tokens %d, token inversions %d, bad requests %d",
		rep.Grants, elapsed.Round(time.Second), float64(rep.Grants)/elapsed.Seconds(), rep.Writes, strings.Join(kinds, ", "),
		rep.StaleRejected, rep.LateWrites, rep.LateRejected, rep.Ends[chaos.ReasonDone], rep.Ends[chaos.ReasonLost], rep.Ends[chaos.ReasonStale],
		rep.LongestGap.Round(time.Millisecond), rep.LongestGapAfter.UTC().Format("15:04:05.000"),
		len(rep.Overlaps), rep.DuplicateTokens, len(rep.TokenInversions), rep.BadRequests)
	for _, o := range rep.Overlaps {
		t.Errorf("overlap: hold %s began while the application of hold %s still believed it held the lock, for %s", o.Later, o.Earlier, o.By)
	}
	for _, i := range rep.TokenInversions {
		t.Errorf("token inversion: hold %s (token %d) began after hold %s (token %d)", i.Later, i.LaterToken, i.Earlier, i.EarlierToken)
	}
	if rep.DuplicateTokens > 0 {
		t.Errorf("%d messages carried a token already used by another hold", rep.DuplicateTokens)
	}
	if rep.LateWrites >= 10 && rep.LateRejected == 0 {
		t.Errorf("none of %d late writes was refused: with five contenders another hold begins within 300 ms, so the register's fencing is broken", rep.LateWrites)
	}
	if rep.BadRequests > 0 {
		t.Errorf("%d malformed messages reached the register: %s", rep.BadRequests, strings.Join(rep.BadRequestErrors, "; "))
	}
}

func total(m map[string]int) (n int) {
	for _, v := range m {
		n += v
	}
	return n
}

// waitGrant waits up to d for a hold announced after from.
func waitGrant(ctx context.Context, reg *chaos.Register, from time.Time, d time.Duration) bool {
	deadline := time.NewTimer(time.Until(from.Add(d)))
	defer deadline.Stop()
	for {
		next, last := reg.Granted()
		if last.After(from) {
			return true
		}
		select {
		case <-next:
		case <-deadline.C:
			_, last = reg.Granted()
			return last.After(from)
		case <-ctx.Done():
			return false
		}
	}
}

func waitNoPods(ctx context.Context, t *testing.T, ns, app string) {
	t.Helper()
	sel := labels.Set{"app": app}.String()
	for {
		list, err := cluster.Clientset.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err == nil && len(list.Items) == 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("Pods of %s still there: %v", app, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// faulter injects the chaos run's faults into the contender Pods of ns.
type faulter struct {
	t   *testing.T
	ns  string
	reg *chaos.Register

	mu   sync.Mutex // guards cuts
	cuts []func() error
}

// inject injects one fault of kind and returns what it did and the moment from which the next
// grant is due within the lease duration + margin.
func (f *faulter) inject(ctx context.Context, kind string) (desc string, from time.Time, err error) {
	switch kind {
	case faultRestartAPI:
		root, err := localcluster.ModuleRoot()
		if err != nil {
			return "", time.Time{}, err
		}
		start := time.Now()
		out, err := exec.CommandContext(ctx, filepath.Join(root, "hack", "cluster", "up.sh"), "--restart", "kube-apiserver").CombinedOutput()
		if err != nil {
			return "", time.Time{}, fmt.Errorf("%w: %s", err, out)
		}
		ready := time.Now()
		return fmt.Sprintf("the API server's restart (down and back in %s)", ready.Sub(start).Round(time.Millisecond)), ready, nil
	case faultKillApp, faultKillSidecar:
		container := chaosApp
		if kind == faultKillSidecar {
			container = webhook.SidecarName
		}
		pod, id, role, err := f.victim(ctx, container)
		if err != nil {
			return "", time.Time{}, err
		}
		at := time.Now()
		if err := sigkill(ctx, id); err != nil {
			return "", time.Time{}, err
		}
		return fmt.Sprintf("SIGKILL of %s's %s (%s)", pod, container, role), at, nil
	case faultCutOff:
		pod, id, role, err := f.victim(ctx, webhook.SidecarName)
		if err != nil {
			return "", time.Time{}, err
		}
		heal, err := cutOff(ctx, id)
		if err != nil {
			return "", time.Time{}, err
		}
		at := time.Now()
		f.mu.Lock()
		f.cuts = append(f.cuts, func() error {
			time.Sleep(time.Until(at.Add(chaosCut)))
			return heal()
		})
		f.mu.Unlock()
		return fmt.Sprintf("cutting %s (%s) off from the API server for %s", pod, role, chaosCut), at, nil
	}
	return "", time.Time{}, fmt.Errorf("unknown fault %q", kind)
}

// healAll ends every cut, each no sooner than chaosCut after it began.
func (f *faulter) healAll() {
	f.mu.Lock()
	cuts := f.cuts
	f.cuts = nil
	f.mu.Unlock()
	for _, heal := range cuts {
		if err := heal(); err != nil {
			f.t.Errorf("healing a cut: %v", err)
		}
	}
}

// victim picks a Pod whose container is running, preferring the current holder's unless that
// container has restarted chaosMaxRestarts times already, and returns the Pod, the container's
// containerd ID and whether the Pod held the lock ("the holder") or not.
func (f *faulter) victim(ctx context.Context, container string) (pod, id, role string, err error) {
	list, err := cluster.Clientset.CoreV1().Pods(f.ns).List(ctx, metav1.ListOptions{LabelSelector: labels.Set{"app": chaosApp}.String()})
	if err != nil {
		return "", "", "", err
	}
	type candidate struct {
		pod, id  string
		restarts int32
	}
	var cands []candidate
	for _, p := range list.Items {
		if id, restarts := runningContainer(&p, container); id != "" && p.DeletionTimestamp == nil {
			cands = append(cands, candidate{p.Name, id, restarts})
		}
	}
	if len(cands) == 0 {
		return "", "", "", fmt.Errorf("no Pod of %s has a running %s container", chaosApp, container)
	}
	holder := f.reg.Holder()
	for _, c := range cands {
		if c.pod == holder && c.restarts < chaosMaxRestarts {
			return c.pod, c.id, "the holder", nil
		}
	}
	slices.SortFunc(cands, func(a, b candidate) int { return int(a.restarts - b.restarts) })
	role = "not the holder"
	if cands[0].pod == holder {
		role = "the holder"
	}
	return cands[0].pod, cands[0].id, role, nil
}

// cutOff drops, in the network namespace of the container id (its Pod's), every packet to the
// API server, by its Service address and by its own, and returns the function that heals it.
func cutOff(ctx context.Context, id string) (heal func() error, err error) {
	pid, err := taskPID(ctx, id)
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(cluster.Config.Host)
	if err != nil {
		return nil, err
	}
	rules := [][]string{
		{"-d", cluster.Var("API_SERVICE_IP"), "-p", "tcp", "--dport", "443"},
		{"-d", u.Hostname(), "-p", "tcp", "--dport", u.Port()},
	}
	ipt := func(op string, rule []string) error {
		args := append([]string{"-t", strconv.Itoa(pid), "-n", "iptables", "-w", "5", op, "OUTPUT"}, rule...)
		_, err := localcluster.Command(ctx, "nsenter", append(args, "-m", "comment", "--comment", "metaparticle-sync e2e chaos cut", "-j", "DROP")...)
		return err
	}
	for i, r := range rules {
		if err := ipt("-I", r); err != nil {
			for _, done := range rules[:i] {
				_ = ipt("-D", done)
			}
			return nil, err
		}
	}
	return func() error {
		var errs []string
		for _, r := range rules {
			// The Pod may be gone, and its network namespace with it: nothing left to heal.
			if err := ipt("-D", r); err != nil && processExists(pid) {
				errs = append(errs, err.Error())
			}
		}
		if len(errs) > 0 {
			return fmt.Errorf("%s", strings.Join(errs, "; "))
		}
		return nil
	}, nil
}

// taskPID returns the host PID of a running container's first process.
func taskPID(ctx context.Context, id string) (int, error) {
	out, err := cluster.Ctr(ctx, "task", "ls")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(out, "\n") {
		fields := strings.Fields(line)
		if len(fields) >= 3 && fields[0] == id && fields[2] == "RUNNING" {
			return strconv.Atoi(fields[1])
		}
	}
	return 0, fmt.Errorf("container %s is not running", id)
}

func processExists(pid int) bool {
	_, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid)))
	return err == nil
}
