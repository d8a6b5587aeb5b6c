package product

import (
	"context"
	"encoding/json"
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

	"github.com/metaparticle-io/sync/e2e/product/internal/chaos"
	"github.com/metaparticle-io/sync/internal/localcluster"
	"github.com/metaparticle-io/sync/webhook"
	"github.com/metaparticle-io/sync/wire"
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
	// chaosPause is how long a side-car stays stopped (SIGSTOP, then SIGCONT), for the same
	// reason: longer than the lease duration, so that another Pod takes over while it is stopped
	// and its application must have been told by its SDK's own clock of the hold's validity.
	chaosPause = chaosLeaseDuration + 3*time.Second
	// chaosMaxRestarts keeps a container out of the kubelet's long crash-loop back-off: one that
	// restarted this often is not killed again while another can be.
	chaosMaxRestarts = 2
	// chaosApp is the contenders' Deployment and container name.
	chaosApp = "chaos"
)

// Fault kinds of the chaos run, as CHAOS_FAULTS names them.
const (
	faultKillApp        = chaos.FaultKillApp
	faultKillSidecar    = chaos.FaultKillSidecar
	faultRestartAPI     = chaos.FaultRestartAPI
	faultCutOff         = chaos.FaultCutOff
	faultPauseSidecar   = chaos.FaultPauseSidecar
	faultForeignRelease = chaos.FaultForeignRelease
	defaultChaosCount   = 1000
)

var allFaultKinds = []string{faultKillApp, faultKillSidecar, faultRestartAPI, faultCutOff, faultPauseSidecar, faultForeignRelease}

// defaultFaultKinds are the kinds a run without CHAOS_FAULTS injects: all of them.
var defaultFaultKinds = allFaultKinds

// Scenario 3: the chaos safety run. Five contender Pods (./e2e/product/cmd/chaos) loop acquire ->
// announce and write to a shared fenced register with their token -> release, while faults are
// injected one at a time: SIGKILL of an app container, SIGKILL of a side-car, a crash and restart
// of the API server, a Pod cut off from the API server by iptables in its network namespace, a
// side-car paused (SIGSTOP) for longer than the lease duration and then resumed, and a foreign
// release: a process exec'd in the app container beside the application reads the holder
// identity from the side-car and DELETEs the hold for that session without its secret and with a
// wrong one, which must be refused (401) and change nothing; faults aimed at a Pod aim at the
// holder. The register (package chaos) refuses stale tokens and
// finds every overlap of the holds as the applications claimed them (their claims are sampled
// every 20 ms or so: a shorter overlap between two claims would go unseen).
//
// The run fails on an overlap, two holds with one token, a later hold with a lower token, late
// writes none of which was refused, a malformed message, or no grant within lease duration +
// margin after a fault. It also records every operation and fault in a history (chaos.History)
// with the sessions seen on the Lease, checks it afterwards (chaos.Check: linearizable fenced
// register, no overlap of accepted holds, told before granted, token order) and fails on any
// violation; the history, its rendering and porcupine's are kept as artifacts (see artifactDir),
// whatever the outcome. It stops by itself once CHAOS_GRANTS holds (default 1000) were announced,
// every kind of fault was injected and each kind aimed at a Pod hit a holder at least once;
// CHAOS_FAULTS chooses the kinds among kill-app,kill-sidecar,restart-apiserver,cut-off,
// pause-sidecar,foreign-release (default: all of them).
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
	faultKinds := defaultFaultKinds
	if s := os.Getenv("CHAOS_FAULTS"); s != "" {
		faultKinds = slices.Compact(slices.Sorted(slices.Values(strings.Split(s, ","))))
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
	recordStart := time.Now()
	leases := watchLeases(ctx, cs, ns)

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
	f := &faulter{t: t, ns: ns, reg: reg}
	// The history is checked and kept at the end; if the test stops before, this cleanup keeps
	// it, after the lasting faults are healed (cleanups run last registered first).
	saved := false
	t.Cleanup(func() {
		if !saved {
			h := chaosHistory(recordStart, reg, f, leases)
			v := chaos.Check(h, chaos.CheckOptions{Timeout: time.Minute})
			t.Logf("history check of the unfinished run: %s", v.Summary())
			for _, viol := range v.Violations {
				t.Logf("history check %s", viol)
			}
			saveHistory(t, h, v)
		}
	})
	t.Cleanup(f.healAll)
	readyPods(ctx, t, ns, chaosApp, 5)
	if !waitGrant(ctx, reg, time.Now().Add(-time.Hour), time.Minute) {
		t.Fatal("no contender announced a hold within a minute of all five Pods being ready")
	}

	start := time.Now()
	faults, hits := map[string]int{}, map[string]int{}
	// done: enough grants, every kind injected, and every kind aimed at a Pod has hit a holder.
	done := func() bool {
		for _, k := range faultKinds {
			if faults[k] == 0 || (k != faultRestartAPI && hits[k] == 0) {
				return false
			}
		}
		return reg.Counts().Grants >= target
	}
	var deck []string
	for !done() {
		if time.Since(start) > limit {
			t.Errorf("the run did not reach %d grants, every fault kind and a hit holder for each within %s: %d grants, faults %v, holders hit %v",
				target, limit, reg.Counts().Grants, faults, hits)
			break
		}
		time.Sleep(time.Second + rand.N(3*time.Second))
		if len(deck) == 0 {
			deck = slices.Clone(faultKinds)
			rand.Shuffle(len(deck), func(i, j int) { deck[i], deck[j] = deck[j], deck[i] })
		}
		kind := deck[0]
		deck = deck[1:]
		ft, err := f.inject(ctx, kind)
		if err != nil {
			t.Errorf("fault %s: %v", kind, err)
			break
		}
		faults[kind]++
		f.record(ft.fault)
		if ft.failure != "" {
			t.Errorf("fault %d: %s: %s", total(faults), ft.desc, ft.failure)
		}
		ok := waitGrant(ctx, reg, ft.from, chaosLeaseDuration+chaosMargin)
		_, next := reg.Granted()
		f.healAll()
		if !ok {
			t.Errorf("no grant within %s (lease duration + margin) after %s", chaosLeaseDuration+chaosMargin, ft.desc)
			break
		}
		role := ""
		if ft.pod != "" {
			role = ", which did not hold the lock"
			if reg.HeldAt(ft.pod, ft.at) {
				hits[kind]++
				role = ", which held the lock"
				f.held(ft.fault)
			}
		}
		t.Logf("fault %d: %s%s; next grant %s later", total(faults), ft.desc, role, next.Sub(ft.from).Round(time.Millisecond))
		if ft.retire {
			// Out of the kubelet's crash-loop back-off: a fresh Pod replaces this one.
			if err := cs.CoreV1().Pods(ns).Delete(ctx, ft.pod, metav1.DeleteOptions{}); err != nil {
				t.Errorf("replacing Pod %s: %v", ft.pod, err)
				break
			}
			t.Logf("replacing Pod %s, whose containers restarted %d times", ft.pod, chaosMaxRestarts)
		}
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
		if k == faultRestartAPI {
			kinds = append(kinds, fmt.Sprintf("%s %d", k, faults[k]))
		} else {
			kinds = append(kinds, fmt.Sprintf("%s %d (%d on the holder)", k, faults[k], hits[k]))
		}
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

	// The history, checked as a whole.
	h := chaosHistory(recordStart, reg, f, leases)
	v := chaos.Check(h, chaos.CheckOptions{Timeout: 5 * time.Minute})
	saved = true
	saveHistory(t, h, v)
	_, restarts := leases.snapshot()
	t.Logf("history check: %s; the Lease watch restarted %d times", v.Summary(), restarts)
	t.Logf("history check, %s: %s; %d violations of it", chaos.CheckToldBeforeGranted, v.ToldBeforeGrantedSummary(), len(violations(v, chaos.CheckToldBeforeGranted)))
	t.Logf("history check, %s: %s; %d violations of it", chaos.CheckForeignRefused, v.ForeignSummary(), len(violations(v, chaos.CheckForeignRefused)))
	for _, viol := range v.Violations {
		t.Errorf("history check %s", viol)
	}
}

// saveHistory writes the history's artifacts and logs where they are.
func saveHistory(t *testing.T, h *chaos.History, v *chaos.Verdict) {
	t.Helper()
	dir, err := artifactDir(t)
	if err != nil {
		t.Errorf("chaos run history: %v", err)
		return
	}
	paths, drawn, err := writeHistory(dir, h, v)
	if err != nil {
		t.Errorf("chaos run history: %v", err)
		return
	}
	t.Logf("chaos run history (%d operations, %d faults, %d Lease changes): %s; rendered: %s; porcupine's view (%s): %s",
		len(h.Ops), len(h.Faults), len(h.Leases), paths[0], paths[1], drawn, paths[2])
}

// violations returns v's violations of one check.
func violations(v *chaos.Verdict, check string) []chaos.Violation {
	var out []chaos.Violation
	for _, viol := range v.Violations {
		if viol.Check == check {
			out = append(out, viol)
		}
	}
	return out
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

	mu sync.Mutex // guards heals and faults
	// heals end the faults that last (cut-offs, paused side-cars), each no sooner than due.
	heals  []func() error
	faults []*chaos.Fault // for the history
}

// record adds an injected fault to the history.
func (f *faulter) record(fl *chaos.Fault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults = append(f.faults, fl)
}

// held marks a recorded fault as one that hit the holder.
func (f *faulter) held(fl *chaos.Fault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fl.Held = true
}

// history returns the recorded faults in the order injected.
func (f *faulter) history() []chaos.Fault {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]chaos.Fault, 0, len(f.faults))
	for _, fl := range f.faults {
		out = append(out, *fl)
	}
	return out
}

// injected is one fault.
type injected struct {
	desc string
	pod  string    // the Pod hit, or "" for the API server
	at   time.Time // when it struck
	// from is when the next grant becomes due, within the lease duration + margin: when the fault
	// struck, or when the API server was back.
	from time.Time
	// retire says that the Pod's container has now restarted chaosMaxRestarts times: the Pod is
	// to be replaced before the kubelet's back-off keeps it out of the run.
	retire bool
	// fault is its record for the history; a cut-off's or a pause's End is set when it is
	// healed.
	fault *chaos.Fault
	// failure says what the fault found wrong with the product (a foreign release that was not
	// refused); empty when nothing.
	failure string
}

// inject injects one fault of kind. A fault aimed at a container that stopped meanwhile (Pod
// status lags the kubelet) is aimed again, up to three times.
func (f *faulter) inject(ctx context.Context, kind string) (injected, error) {
	if kind == faultRestartAPI {
		return restartAPIServer(ctx)
	}
	var err error
	for range 3 {
		var ft injected
		if ft, err = f.injectPod(ctx, kind); err == nil {
			return ft, nil
		}
		time.Sleep(500 * time.Millisecond)
	}
	return injected{}, err
}

func (f *faulter) injectPod(ctx context.Context, kind string) (injected, error) {
	container := chaosApp
	if kind != faultKillApp && kind != faultForeignRelease {
		container = webhook.SidecarName
	}
	cands, err := f.candidates(ctx, container)
	if err != nil {
		return injected{}, err
	}
	if kind == faultCutOff {
		// Enter every candidate's network namespace first, so that little time passes between
		// choosing the holder and cutting it off.
		var nets []*os.File
		defer func() {
			for _, n := range nets {
				if n != nil {
					n.Close()
				}
			}
		}()
		pids, err := taskPIDs(ctx)
		if err != nil {
			return injected{}, err
		}
		for _, c := range cands {
			n, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pids[c.id]))
			if pids[c.id] == 0 || err != nil {
				return injected{}, fmt.Errorf("network namespace of %s's %s: not running (%v)", c.pod, container, err)
			}
			nets = append(nets, n)
		}
		i := f.pick(cands)
		cut := &cutOff{net: nets[i]}
		if err := cut.apply(ctx, "-I"); err != nil {
			return injected{}, fmt.Errorf("cutting %s off: %w", cands[i].pod, err)
		}
		at := time.Now()
		nets[i] = nil // the cut keeps it open until healed
		desc := fmt.Sprintf("cutting %s off from the API server for %s", cands[i].pod, chaosCut)
		fl := &chaos.Fault{Kind: faultCutOff, Pod: cands[i].pod, Start: at.UTC(), Desc: desc}
		f.addHeal(func() error {
			time.Sleep(time.Until(at.Add(chaosCut)))
			err := cut.heal()
			f.mu.Lock()
			fl.End = time.Now().UTC()
			f.mu.Unlock()
			return err
		})
		return injected{desc: desc, pod: cands[i].pod, at: at, from: at, fault: fl}, nil
	}
	if kind == faultPauseSidecar {
		return f.pauseSidecar(ctx, cands[f.pick(cands)])
	}
	if kind == faultForeignRelease {
		return f.foreignRelease(ctx, cands)
	}
	c := cands[f.pick(cands)]
	at := time.Now()
	if err := sigkill(ctx, c.id); err != nil {
		return injected{}, fmt.Errorf("killing %s's %s: %w", c.pod, container, err)
	}
	desc := fmt.Sprintf("SIGKILL of %s's %s", c.pod, container)
	return injected{desc: desc, pod: c.pod, at: at, from: at, retire: c.restarts+1 >= chaosMaxRestarts,
		fault: &chaos.Fault{Kind: kind, Pod: c.pod, Start: at.UTC(), End: time.Now().UTC(), Desc: desc}}, nil
}

// restartAPIServer crashes the API server and starts it again (hack/cluster/up.sh --restart).
func restartAPIServer(ctx context.Context) (injected, error) {
	root, err := localcluster.ModuleRoot()
	if err != nil {
		return injected{}, err
	}
	cmd := exec.CommandContext(ctx, filepath.Join(root, "hack", "cluster", "up.sh"), "--restart", "kube-apiserver")
	cmd.Env = append(os.Environ(), "METAPARTICLE_CLUSTER_DIR="+cluster.Var("CLUSTER_DIR"), "METAPARTICLE_NODE_IP="+cluster.Var("NODE_IP"))
	at := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		return injected{}, fmt.Errorf("%w: %s", err, out)
	}
	ready := time.Now()
	desc := fmt.Sprintf("the API server's crash and restart (back in %s)", ready.Sub(at).Round(time.Millisecond))
	return injected{desc: desc, at: at, from: ready, fault: &chaos.Fault{Kind: faultRestartAPI, Start: at.UTC(), End: ready.UTC(), Desc: desc}}, nil
}

// addHeal adds the end of a lasting fault for healAll.
func (f *faulter) addHeal(heal func() error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.heals = append(f.heals, heal)
}

// healAll ends every lasting fault: each cut no sooner than chaosCut after it began, each paused
// side-car no sooner than chaosPause after it was stopped.
func (f *faulter) healAll() {
	f.mu.Lock()
	heals := f.heals
	f.heals = nil
	f.mu.Unlock()
	for _, heal := range heals {
		if err := heal(); err != nil {
			f.t.Errorf("healing a fault: %v", err)
		}
	}
}

// pauseSidecar stops c's side-car with SIGSTOP, as a descheduled or frozen process would be; the
// side-car is resumed with SIGCONT chaosPause later, by healAll. Its application keeps running:
// its SDK must tell it the hold is lost, by its own clock of the hold's validity, before another
// Pod's side-car takes the Lease over.
func (f *faulter) pauseSidecar(ctx context.Context, c candidate) (injected, error) {
	at := time.Now()
	if err := signal(ctx, c.id, "SIGSTOP"); err != nil {
		return injected{}, fmt.Errorf("pausing %s's %s: %w", c.pod, webhook.SidecarName, err)
	}
	desc := fmt.Sprintf("SIGSTOP of %s's %s, SIGCONT %s later", c.pod, webhook.SidecarName, chaosPause)
	fl := &chaos.Fault{Kind: faultPauseSidecar, Pod: c.pod, Start: at.UTC(), Desc: desc}
	f.addHeal(func() error {
		time.Sleep(time.Until(at.Add(chaosPause)))
		// Resumed even when the run's context has ended.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		err := signal(ctx, c.id, "SIGCONT")
		f.mu.Lock()
		fl.End = time.Now().UTC()
		f.mu.Unlock()
		if err != nil {
			return fmt.Errorf("resuming %s's %s: %w", c.pod, webhook.SidecarName, err)
		}
		return nil
	})
	return injected{desc: desc, pod: c.pod, at: at, from: at, fault: fl}, nil
}

// foreignRelease execs `chaos -foreign-release` in the holder's application container (cands
// are the Pods whose application runs): a process of the Pod other than its application reads
// the lock's holder from its side-car and asks it to release the hold for the holder's session,
// without the secret and with a wrong one (chaos.AttemptForeignRelease). When the side-car names
// another Pod's session (the holder changed meanwhile), it goes there; when the lock is free or
// the session ended before the DELETEs, it tries again. Both answers must be 401: failure says
// otherwise.
func (f *faulter) foreignRelease(ctx context.Context, cands []candidate) (injected, error) {
	byPod := map[string]candidate{}
	for _, c := range cands {
		byPod[c.pod] = c
	}
	c := cands[f.pick(cands)]
	var fr chaos.ForeignRelease
	var answers []string
	// The contenders release and acquire in a loop: the lock may be free for a moment when the
	// process looks, or the hold it saw may end before its DELETEs arrive. Aim again then.
	for try := 0; ; try++ {
		if try == 20 {
			return injected{}, fmt.Errorf("foreign release in %s: no hold of a running application to aim at in %d tries (last: holder %q, answers %v)", c.pod, try, fr.Holder, answers)
		}
		out, err := cluster.Ctr(ctx, "task", "exec", "--exec-id", fmt.Sprintf("foreign-release-%d", time.Now().UnixNano()), c.id, "/"+chaosApp, "-foreign-release")
		if err != nil {
			return injected{}, fmt.Errorf("foreign release in %s: %w", c.pod, err)
		}
		fr = chaos.ForeignRelease{}
		if err := json.Unmarshal([]byte(out), &fr); err != nil {
			return injected{}, fmt.Errorf("foreign release in %s: %w: %q", c.pod, err, out)
		}
		answers = answers[:0]
		gone := 0
		for _, a := range fr.Attempts {
			answers = append(answers, fmt.Sprintf("%s: %d %s", a.Authorization, a.Status, a.Code))
			if a.Code == string(wire.CodeNoSession) {
				gone++
			}
		}
		if len(fr.Attempts) > 0 && gone < len(fr.Attempts) {
			break
		}
		if len(fr.Attempts) == 0 && fr.Holder != "" {
			// The side-car names another Pod's session: go there if its application runs.
			next, ok := byPod[fr.HolderPod()]
			if !ok {
				return injected{}, fmt.Errorf("foreign release in %s: the side-car shows the holder %q, not a session of this Pod or of another one whose application runs", c.pod, fr.Holder)
			}
			c = next
			continue
		}
		time.Sleep(50 * time.Millisecond)
	}
	desc := fmt.Sprintf("foreign release in %s of session %s's hold (token %d), DELETE with authorization %s", c.pod, fr.Session(), fr.Token, strings.Join(answers, ", authorization "))
	fl := fr.Fault(desc)
	ft := injected{desc: desc, pod: c.pod, at: fr.At, from: fr.End, fault: &fl}
	if !fr.Refused() {
		ft.failure = fmt.Sprintf("got %s; want 401 %s to both: a process of the Pod that does not have the session's secret must not end its hold", strings.Join(answers, ", "), wire.CodeUnauthorized)
	}
	return ft, nil
}

// candidate is a Pod whose container runs.
type candidate struct {
	pod, id  string // Pod name, containerd ID of the container
	restarts int32
}

// candidates returns the contender Pods whose container runs, not those being deleted.
func (f *faulter) candidates(ctx context.Context, container string) ([]candidate, error) {
	list, err := cluster.Clientset.CoreV1().Pods(f.ns).List(ctx, metav1.ListOptions{LabelSelector: labels.Set{"app": chaosApp}.String()})
	if err != nil {
		return nil, err
	}
	var cands []candidate
	for _, p := range list.Items {
		if id, restarts := runningContainer(&p, container); id != "" && p.DeletionTimestamp == nil {
			cands = append(cands, candidate{p.Name, id, restarts})
		}
	}
	if len(cands) == 0 {
		return nil, fmt.Errorf("no Pod of %s has a running %s container", chaosApp, container)
	}
	return cands, nil
}

// pick returns the index of the current holder's candidate, or else of the one restarted least.
func (f *faulter) pick(cands []candidate) int {
	holder := f.reg.Holder()
	best := 0
	for i, c := range cands {
		if c.pod == holder {
			return i
		}
		if c.restarts < cands[best].restarts {
			best = i
		}
	}
	return best
}

// cutOff drops, in one network namespace, every packet to the API server, by its Service address
// and by its own.
type cutOff struct {
	net *os.File // the namespace, held open until healed
}

func (c *cutOff) apply(ctx context.Context, op string) error {
	u, err := url.Parse(cluster.Config.Host)
	if err != nil {
		return err
	}
	const comment = `-m comment --comment "metaparticle-sync e2e chaos cut" -j DROP`
	rules := fmt.Sprintf("*filter\n%s OUTPUT -d %s -p tcp --dport 443 %s\n%s OUTPUT -d %s -p tcp --dport %s %s\nCOMMIT\n",
		op, cluster.Var("API_SERVICE_IP"), comment, op, u.Hostname(), u.Port(), comment)
	cmd := exec.CommandContext(ctx, "nsenter", "--net=/proc/self/fd/3", "iptables-restore", "--noflush", "--wait", "5")
	cmd.ExtraFiles = []*os.File{c.net}
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("iptables-restore %s: %w: %s", op, err, out)
	}
	return nil
}

// heal removes the rules, even when the run's context has ended, and lets the namespace go.
func (c *cutOff) heal() error {
	defer c.net.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return c.apply(ctx, "-D")
}

// taskPIDs maps the containerd ID of every running container to the host PID of its first
// process.
func taskPIDs(ctx context.Context) (map[string]int, error) {
	out, err := cluster.Ctr(ctx, "task", "ls")
	if err != nil {
		return nil, err
	}
	pids := map[string]int{}
	for _, line := range strings.Split(out, "\n") {
		fields := strings.Fields(line)
		if len(fields) >= 3 && fields[2] == "RUNNING" {
			if pid, err := strconv.Atoi(fields[1]); err == nil {
				pids[fields[0]] = pid
			}
		}
	}
	return pids, nil
}
