package syncctl_test

// Integration tests: the CLI, in-process, against a real kube-apiserver and etcd
// (internal/testenv) where real side-cars (package elector, in-process, one Engine per simulated
// Pod) hold the Leases for clients of their HTTP API and of the Go SDK. Skipped under -short.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/metaparticle-io/sync/elector"
	"github.com/metaparticle-io/sync/internal/certmanager"
	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/internal/sidecartest"
	"github.com/metaparticle-io/sync/internal/syncctl"
	"github.com/metaparticle-io/sync/internal/testenv"
	"github.com/metaparticle-io/sync/internal/version"
	"github.com/metaparticle-io/sync/sdk"
	"github.com/metaparticle-io/sync/wire"
)

var env *testenv.Env

// TestMain starts the control plane with the injector's shipped webhook configuration, which
// TestIntegrationCheck serves (startInjector) and breaks; no other test creates an annotated Pod.
func TestMain(m *testing.M) { testenv.MainWithShippedWebhooks(m, &env) }

// waitTimeout bounds every wait of a test; nothing here depends on how fast things happen.
const waitTimeout = 60 * time.Second

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

// sidecar is one Pod's side-car (internal/sidecartest), with this file's helpers.
type sidecar struct {
	*sidecartest.Sidecar
	t *testing.T
}

// halt stops the side-car abruptly, as if its process died: nothing is released.
func (sc *sidecar) halt() { sc.Halt() }

// startSidecar starts the side-car of Pod pod in namespace ns, with the default timings; it is
// shut down, releasing its holds, when t ends.
func startSidecar(t *testing.T, ns, pod string) *sidecar {
	t.Helper()
	return startSidecarConfig(t, elector.Config{PodName: pod, Namespace: ns})
}

func startSidecarConfig(t *testing.T, cfg elector.Config) *sidecar {
	t.Helper()
	return &sidecar{sidecartest.Start(t, env.Config, cfg), t}
}

// call makes a request of the side-car's HTTP API, on session k if k.ID is set, and decodes
// the answer into out, if any.
func (sc *sidecar) call(method, path string, k wire.SessionKey, body, out any, wantStatus int) {
	sc.t.Helper()
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(testCtx(sc.t), method, sc.Server.URL+path, r)
	if err != nil {
		sc.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if k.ID != "" {
		req.Header.Set(wire.HeaderAuthorization, k.Authorization())
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		sc.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != wantStatus {
		sc.t.Fatalf("%s %s: got %s %s; want %d", method, path, resp.Status, b, wantStatus)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			sc.t.Fatalf("%s %s: decoding %s: %v", method, path, b, err)
		}
	}
}

// session opens a session that lives for the test (the longest TTL, no keep-alives needed).
func (sc *sidecar) session() wire.SessionKey {
	var s wire.Session
	sc.call(http.MethodPost, wire.PathSessions, wire.SessionKey{}, wire.OpenSessionRequest{TTLMillis: 300000, Client: "syncctl test"}, &s, http.StatusCreated)
	return s.Key()
}

// acquire takes lock name for session k, through the HTTP API, and returns the grant.
func (sc *sidecar) acquire(k wire.SessionKey, name string) wire.Grant {
	var g wire.Grant
	sc.call(http.MethodPost, wire.SessionLockPath(k.ID, name), k, nil, &g, http.StatusOK)
	return g
}

func (sc *sidecar) release(k wire.SessionKey, name string) {
	sc.call(http.MethodDelete, wire.SessionLockPath(k.ID, name), k, nil, nil, http.StatusNoContent)
}

// win makes a client of the Go SDK stand in election name, waits until it leads, and returns
// the leader it reads back (holder and token).
func (sc *sidecar) win(ctx context.Context, name string) sdk.Leader {
	t := sc.t
	t.Helper()
	c, err := sdk.NewClient(sdk.WithAddress(sc.Addr()))
	if err != nil {
		t.Fatalf("sdk.NewClient: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	elected := make(chan uint64, 1)
	e := c.NewElection(name, func(ctx context.Context) {
		token, _ := sdk.LeaderToken(ctx)
		select {
		case elected <- token:
		default:
		}
		<-ctx.Done()
	}, func() {})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = e.Run(runCtx) }()
	t.Cleanup(func() { stop(); <-done })
	var token uint64
	select {
	case token = <-elected:
	case <-ctx.Done():
		t.Fatalf("not elected in %s", name)
	}
	leader, err := e.Leader(ctx)
	if err != nil {
		t.Fatalf("Election.Leader: %v", err)
	}
	if leader.Token != token || !strings.HasPrefix(leader.Holder, sc.Pod+"/") {
		t.Fatalf("Leader: got %+v; want token %d held by %s/<session>", leader, token, sc.Pod)
	}
	return leader
}

// kubeconfig writes a kubeconfig file for cfg.
func kubeconfig(t *testing.T, cfg *rest.Config) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := certmanager.WriteKubeconfig(cfg, path); err != nil {
		t.Fatalf("WriteKubeconfig: %v", err)
	}
	return path
}

// result is the outcome of one run of the CLI.
type result struct {
	code           int
	stdout, stderr string
}

// cli runs the CLI in-process with the administrator's kubeconfig.
func cli(t *testing.T, args ...string) result {
	t.Helper()
	return cliWith(t, kubeconfig(t, env.Config), args...)
}

func cliWith(t *testing.T, kubeconfigPath string, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	code := syncctl.Run(testCtx(t), "syncctl", append([]string{"--kubeconfig", kubeconfigPath}, args...), &out, &errOut)
	return result{code, out.String(), errOut.String()}
}

// ok fails t unless r succeeded.
func (r result) ok(t *testing.T, what string) string {
	t.Helper()
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("%s: got exit %d, stderr %q; want 0 and nothing\nstdout:\n%s", what, r.code, r.stderr, r.stdout)
	}
	return r.stdout
}

// row returns the fields of the table row whose first column is name (after the NAMESPACE
// column when namespaced is set), or nil.
func row(table, ns, name string) []string {
	for _, line := range strings.Split(table, "\n") {
		f := strings.Fields(line)
		if ns != "" {
			if len(f) < 2 || f[0] != ns {
				continue
			}
			f = f[1:]
		}
		if len(f) > 0 && f[0] == name {
			return f
		}
	}
	return nil
}

// checkRow checks a row of a table without NAMESPACE: NAME HOLDER SESSION HELD-SINCE TOKEN ...
func checkRow(t *testing.T, table string, f []string, name, holder, token string) {
	t.Helper()
	if f == nil {
		t.Fatalf("no row for %q in\n%s", name, table)
	}
	pod, session := syncctl.SplitHolder(holder)
	if holder == "" {
		pod, session, token = "-", "-", "-"
	}
	if len(f) < 6 || f[1] != pod || !strings.HasPrefix(session, f[2]) || f[4] != token {
		t.Errorf("row of %q: got %q; want holder %s, session %s, token %s, in\n%s", name, f, pod, session, token, table)
	}
	if holder == "" && (f[3] != "-" || f[5] != "-") {
		t.Errorf("row of free %q: got %q; want no age and no expiry", name, f)
	}
}

// TestIntegrationList: locks and elections held by real side-cars are listed under their
// original names, with holder and the grants' tokens, in a table, as JSON and as YAML.
func TestIntegrationList(t *testing.T) {
	ns := env.Namespace(t)
	ctx := testCtx(t)
	a, b := startSidecar(t, ns, "pod-a"), startSidecar(t, ns, "pod-b")
	sa := a.session()
	orders := a.acquire(sa, "orders/eu")
	idle := a.acquire(sa, "Idle Lock")
	a.release(sa, "Idle Lock")
	leader := b.win(ctx, "scheduler")

	table := cli(t, "locks", "-n", ns).ok(t, "locks")
	t.Logf("syncctl locks -n %s:\n%s", ns, table)
	checkRow(t, table, row(table, "", "orders/eu"), "orders/eu", orders.Holder, orders.Token)
	if strings.Contains(table, orders.Lease) {
		t.Errorf("the table shows the Lease name %s; want the original name only:\n%s", orders.Lease, table)
	}
	if !strings.Contains(table, "Idle Lock") || !strings.HasPrefix(table, "NAME ") || !strings.Contains(table, "EXPIRES IN (EST.)") {
		t.Errorf("want a header and a row for the free lock \"Idle Lock\":\n%s", table)
	}
	if strings.Contains(table, "scheduler") {
		t.Errorf("locks lists an election:\n%s", table)
	}

	for _, cmd := range []string{"elections", "leaders"} {
		table := cli(t, cmd, "-n", ns).ok(t, cmd)
		checkRow(t, table, row(table, "", "scheduler"), "scheduler", leader.Holder, fmt.Sprint(leader.Token))
		if strings.Contains(table, "orders/eu") {
			t.Errorf("%s lists a lock:\n%s", cmd, table)
		}
	}

	// -A adds the NAMESPACE column; this namespace is one of those listed.
	all := cli(t, "locks", "-A").ok(t, "locks -A")
	if !strings.HasPrefix(all, "NAMESPACE ") {
		t.Errorf("locks -A: want a NAMESPACE column:\n%s", all)
	}
	if f := row(all, ns, "orders/eu"); f == nil || f[1] != "pod-a" || f[4] != orders.Token {
		t.Errorf("locks -A: got row %q for orders/eu in %s:\n%s", f, ns, all)
	}

	// -o json and -o yaml parse, with the grants' values under the documented fields.
	for _, format := range []string{"json", "yaml"} {
		out := cli(t, "locks", "-n", ns, "-o", format).ok(t, "locks -o "+format)
		var list syncctl.List
		var err error
		if format == "json" {
			err = json.Unmarshal([]byte(out), &list)
		} else {
			err = yaml.UnmarshalStrict([]byte(out), &list)
		}
		if err != nil {
			t.Fatalf("locks -o %s: %v\n%s", format, err, out)
		}
		i := slices.IndexFunc(list.Items, func(it syncctl.Item) bool { return it.Name == "orders/eu" })
		j := slices.IndexFunc(list.Items, func(it syncctl.Item) bool { return it.Name == "Idle Lock" })
		if len(list.Items) != 2 || i < 0 || j < 0 {
			t.Fatalf("locks -o %s: got %+v; want orders/eu and Idle Lock", format, list.Items)
		}
		got := list.Items[i]
		if !got.Held || got.Holder != orders.Holder || got.Pod != "pod-a" || got.Token != orders.Token || got.Lease != orders.Lease ||
			got.Kind != wire.KindLock || got.Namespace != ns || got.AcquireTime == nil || got.ExpireTime == nil || got.LeaseDurationSeconds != 15 {
			t.Errorf("locks -o %s: got %+v; want the grant %+v", format, got, orders)
		}
		if free := list.Items[j]; free.Held || free.Holder != "" || free.Token != idle.Token || free.ExpireTime != nil {
			t.Errorf("locks -o %s: got %+v for the released lock; want free with the last token %s", format, free, idle.Token)
		}
	}
	out := cli(t, "leaders", "-n", ns, "-o", "json").ok(t, "leaders -o json")
	var list syncctl.List
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list.Items) != 1 ||
		list.Items[0].Holder != leader.Holder || list.Items[0].Token != fmt.Sprint(leader.Token) || list.Items[0].Kind != wire.KindElection {
		t.Errorf("leaders -o json: got %+v, %v; want the leader %+v", list.Items, err, leader)
	}

	// -o name and -l: -l is ANDed with the kind's own labels, so an election's label finds no lock.
	if out := cli(t, "locks", "-n", ns, "-o", "name").ok(t, "locks -o name"); out != "lock/Idle Lock\nlock/orders/eu\n" && out != "lock/orders/eu\nlock/Idle Lock\n" {
		t.Errorf("locks -o name: got %q; want lock/orders/eu and lock/Idle Lock", out)
	}
	if r := cli(t, "locks", "-n", ns, "-l", "metaparticle.io/kind=election"); r.code != 0 || r.stdout != "" || r.stderr != "No resources found.\n" {
		t.Errorf("locks -l metaparticle.io/kind=election: got exit %d, stdout %q, stderr %q; want no locks, said on stderr", r.code, r.stdout, r.stderr)
	}
	if out := cli(t, "elections", "-n", ns, "-l", "metaparticle.io/kind=election", "--no-headers").ok(t, "elections -l --no-headers"); strings.Contains(out, "HOLDER") || !strings.Contains(out, "scheduler") {
		t.Errorf("elections -l --no-headers: got %q; want the scheduler row and no header", out)
	}

	// Without -n, the namespace of the kubeconfig's context.
	path := kubeconfig(t, env.Config)
	kc, err := clientcmd.LoadFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	kc.Contexts[kc.CurrentContext].Namespace = ns
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	table = cliWith(t, path, "locks").ok(t, "locks in the context's namespace")
	checkRow(t, table, row(table, "", "orders/eu"), "orders/eu", orders.Holder, orders.Token)

	// An empty namespace.
	if r := cli(t, "locks", "-n", env.Namespace(t)); r.code != 0 || r.stdout != "" || r.stderr != "No resources found.\n" {
		t.Errorf("locks in an empty namespace: got exit %d, stdout %q, stderr %q; want nothing on stdout and the notice on stderr", r.code, r.stdout, r.stderr)
	}
}

// TestIntegrationDescribe: describe finds the lock or election by its original name and shows
// the holder's Pod, tolerating a Pod that is gone or that the user may not read.
func TestIntegrationDescribe(t *testing.T) {
	ns := env.Namespace(t)
	ctx := testCtx(t)
	web := startSidecar(t, ns, "web-0")
	createPod(ctx, t, ns, "web-0", "node-1")
	s := web.session()
	grant := web.acquire(s, "test")

	out := cli(t, "describe", "test", "-n", ns).ok(t, "describe test")
	t.Logf("syncctl describe test -n %s:\n%s", ns, out)
	for _, want := range []string{
		"Name:            test\n",
		"Kind:            lock\n",
		"Lease:           " + grant.Lease + "\n",
		"Holder:          " + grant.Holder + "\n",
		"  Pod:           web-0\n",
		"Token:           " + grant.Token + "\n",
		"Lease duration:  15s\n",
		"Holder Pod:      web-0\n",
		"  Phase:         Running\n",
		"  Node:          node-1\n",
		"  Ready:         true\n",
		"Held since:", "Renewed:", "Expires in:", "Transitions:",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("describe test: lacks %q:\n%s", want, out)
		}
	}
	var d syncctl.Description
	if err := json.Unmarshal([]byte(cli(t, "describe", "test", "-n", ns, "-o", "json").ok(t, "describe -o json")), &d); err != nil {
		t.Fatal(err)
	}
	if d.Token != grant.Token || d.Holder != grant.Holder || d.HolderPod == nil || d.HolderPod.Phase != "Running" || d.HolderPod.Ready == nil || !*d.HolderPod.Ready {
		t.Errorf("describe -o json: got %+v (pod %+v); want the grant %+v and a ready, running Pod", d, d.HolderPod, grant)
	}

	// The holder's Pod is gone.
	ghost := startSidecar(t, ns, "ghost-0")
	ghost.acquire(ghost.session(), "haunted")
	out = cli(t, "describe", "haunted", "-n", ns).ok(t, "describe haunted")
	if !strings.Contains(out, "Holder Pod:      ghost-0: not found") {
		t.Errorf("describe of a lock held from a Pod that does not exist:\n%s", out)
	}

	// A user who may read Leases but not Pods.
	grantLeaseReader(ctx, t, ns, "lease-reader")
	out = cli(t, "describe", "test", "-n", ns, "--as", "lease-reader").ok(t, "describe as lease-reader")
	t.Logf("syncctl describe test -n %s --as lease-reader:\n%s", ns, out)
	if !strings.Contains(out, "Token:           "+grant.Token) || !strings.Contains(out, `Holder Pod:      web-0: cannot read it: pods "web-0" is forbidden: User "lease-reader" cannot get resource "pods"`) {
		t.Errorf("describe by a user who may not read Pods:\n%s", out)
	}

	// --kind, and names of both kinds.
	web.acquire(s, "both")
	web.win(ctx, "both")
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"describe", "both"}, 1, fmt.Sprintf("error: both a lock and an election are named both in namespace %q: pass --kind lock or --kind election\n", ns)},
		{[]string{"describe", "both", "--kind", "election"}, 0, "Kind:            election\n"},
		{[]string{"describe", "both", "--kind", "lock"}, 0, "Kind:            lock\n"},
		{[]string{"describe", "test", "--kind", "election"}, 1, fmt.Sprintf("error: no election named test in namespace %q\n", ns)},
		{[]string{"describe", "nothing"}, 1, fmt.Sprintf("error: no lock or election named nothing in namespace %q\n", ns)},
	} {
		r := cli(t, append(tc.args, "-n", ns)...)
		got := r.stdout
		if tc.code != 0 {
			got = r.stderr
		}
		if r.code != tc.code || !strings.Contains(got, tc.want) {
			t.Errorf("%q: got exit %d, stdout %q, stderr %q; want exit %d and %q", tc.args, r.code, r.stdout, r.stderr, tc.code, tc.want)
		}
	}
}

// createPod creates a Pod that the API server reports running and ready on node (nothing runs
// it: the test environment has no kubelet).
func createPod(ctx context.Context, t *testing.T, ns, name, node string) {
	t.Helper()
	pods := env.Clientset.CoreV1().Pods(ns)
	p, err := pods.Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			NodeName:   node,
			Containers: []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating Pod %s: %v", name, err)
	}
	p.Status.Phase = corev1.PodRunning
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()}}
	if _, err := pods.UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("updating the status of Pod %s: %v", name, err)
	}
}

// grantLeaseReader lets user read (get, list, watch) Leases in ns, and nothing else.
func grantLeaseReader(ctx context.Context, t *testing.T, ns, user string) {
	t.Helper()
	rbac := env.Clientset.RbacV1()
	if _, err := rbac.Roles(ns).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "lease-reader"},
		Rules: []rbacv1.PolicyRule{{
			APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get", "list", "watch"},
		}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := rbac.RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "lease-reader"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "lease-reader"},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// watcher runs the CLI with --watch in the background and hands over its output line by line.
type watcher struct {
	t      *testing.T
	lines  chan string
	seen   []string
	cancel context.CancelFunc
	code   chan int
	stderr *bytes.Buffer
}

func startWatch(t *testing.T, args ...string) *watcher {
	t.Helper()
	ctx, cancel := context.WithCancel(testCtx(t))
	pr, pw := io.Pipe()
	w := &watcher{t: t, lines: make(chan string, 1024), cancel: cancel, code: make(chan int, 1), stderr: &bytes.Buffer{}}
	path := kubeconfig(t, env.Config)
	go func() {
		code := syncctl.Run(ctx, "syncctl", append([]string{"--kubeconfig", path}, args...), pw, w.stderr)
		pw.Close()
		w.code <- code
	}()
	go func() {
		defer close(w.lines)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			w.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		cancel()
		pr.Close() // unblocks a write in progress
	})
	return w
}

// waitFor reads lines until one satisfies ok, and returns it.
func (w *watcher) waitFor(what string, ok func(line string) bool) string {
	w.t.Helper()
	ctx := testCtx(w.t)
	for {
		select {
		case line, open := <-w.lines:
			if !open {
				w.t.Fatalf("waiting for %s: the watch ended (stderr %q); output:\n%s", what, w.stderr.String(), strings.Join(w.seen, "\n"))
			}
			w.seen = append(w.seen, line)
			if ok(line) {
				return line
			}
		case <-ctx.Done():
			w.t.Fatalf("waiting for %s: %v; output so far:\n%s", what, ctx.Err(), strings.Join(w.seen, "\n"))
		}
	}
}

// stop ends the watch as Ctrl-C does and checks that it ended without error.
func (w *watcher) stop() {
	w.t.Helper()
	w.cancel()
	for range w.lines {
	}
	if code := <-w.code; code != 0 || w.stderr.Len() != 0 {
		w.t.Errorf("watch ended with exit %d, stderr %q; want 0 and nothing", code, w.stderr.String())
	}
}

// TestIntegrationWatch: --watch prints the list again when a lock is released and taken, as a
// table and as JSON lines.
func TestIntegrationWatch(t *testing.T) {
	ns := env.Namespace(t)
	a, b := startSidecar(t, ns, "pod-a"), startSidecar(t, ns, "pod-b")
	sa, sb := a.session(), b.session()
	first := a.acquire(sa, "test")

	table := startWatch(t, "locks", "-n", ns, "-w")
	fields := func(line string) []string { return strings.Fields(line) }
	table.waitFor("test held by pod-a", func(line string) bool {
		f := fields(line)
		return len(f) >= 5 && f[0] == "test" && f[1] == "pod-a" && f[4] == first.Token
	})
	js := startWatch(t, "locks", "-n", ns, "--watch", "-o", "json")
	var list syncctl.List
	js.waitFor("a JSON list with test held by pod-a", func(line string) bool {
		if err := json.Unmarshal([]byte(line), &list); err != nil {
			t.Fatalf("a line of -w -o json is not a JSON list: %v: %q", err, line)
		}
		return len(list.Items) == 1 && list.Items[0].Holder == first.Holder
	})

	a.release(sa, "test")
	table.waitFor("test free", func(line string) bool {
		f := fields(line)
		return len(f) >= 6 && f[0] == "test" && f[1] == "-" && f[4] == "-"
	})
	js.waitFor("a JSON list with test free", func(line string) bool {
		if err := json.Unmarshal([]byte(line), &list); err != nil {
			t.Fatalf("a line of -w -o json is not a JSON list: %v: %q", err, line)
		}
		return len(list.Items) == 1 && !list.Items[0].Held && list.Items[0].Token == first.Token
	})

	second := b.acquire(sb, "test")
	table.waitFor("test held by pod-b", func(line string) bool {
		f := fields(line)
		return len(f) >= 5 && f[0] == "test" && f[1] == "pod-b" && f[4] == second.Token
	})
	b.acquire(sb, "another")
	table.waitFor("another held by pod-b", func(line string) bool {
		f := fields(line)
		return len(f) >= 2 && f[0] == "another" && f[1] == "pod-b"
	})
	table.stop()
	js.stop()
	t.Logf("syncctl locks -n %s -w:\n%s", ns, strings.Join(table.seen, "\n"))
	t.Logf("syncctl locks -n %s -w -o json:\n%s", ns, strings.Join(js.seen, "\n"))
}

// TestIntegrationWatchExpiry: when a holder's side-car dies without releasing, --watch prints
// the list again once the hold's estimated expiry has passed, showing it expired. The side-car
// runs with a lease duration of 1 s so that the test does not wait long.
func TestIntegrationWatchExpiry(t *testing.T) {
	ns := env.Namespace(t)
	sc := startSidecarConfig(t, elector.Config{
		PodName: "doomed-0", Namespace: ns,
		LeaseDuration: time.Second, RenewDeadline: 800 * time.Millisecond,
		RenewPeriod: 400 * time.Millisecond, RetryPeriod: 100 * time.Millisecond,
	})
	grant := sc.acquire(sc.session(), "test")
	w := startWatch(t, "locks", "-n", ns, "-w")
	w.waitFor("test held by doomed-0", func(line string) bool {
		f := strings.Fields(line)
		return len(f) >= 5 && f[0] == "test" && f[1] == "doomed-0" && f[4] == grant.Token
	})
	sc.halt() // as if the Pod crashed: nothing is released, renewals stop
	w.waitFor("test expired", func(line string) bool {
		f := strings.Fields(line)
		return len(f) >= 6 && f[0] == "test" && f[1] == "doomed-0" && f[5] == "expired"
	})
	w.stop()
	t.Logf("syncctl locks -n %s -w:\n%s", ns, strings.Join(w.seen, "\n"))
}

// TestIntegrationErrors: an unreachable API server and a user without RBAC give one line on
// stderr and exit code 1.
func TestIntegrationErrors(t *testing.T) {
	ns := env.Namespace(t)

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	down := rest.CopyConfig(env.Config)
	down.Host = "https://" + closed
	downPath := kubeconfig(t, down)

	for _, tc := range []struct {
		name string
		path string
		args []string
		want []string
	}{
		{"unreachable", downPath, []string{"locks", "-n", ns}, []string{"error: cannot reach the API server at https://" + closed, "connection refused"}},
		{"unreachable, watch", downPath, []string{"elections", "-A", "-w"}, []string{"error: cannot reach the API server", "connection refused"}},
		{"unreachable, describe", downPath, []string{"describe", "x", "-n", ns}, []string{"error: cannot reach the API server", "connection refused"}},
		{"forbidden", "", []string{"locks", "-n", ns, "--as", "nobody"}, []string{`error: leases.coordination.k8s.io is forbidden: User "nobody" cannot list resource "leases"`, "(reading needs get, list and watch on leases)"}},
		{"forbidden, all namespaces, watch", "", []string{"leaders", "-A", "-w", "--as", "nobody"}, []string{"is forbidden", "at the cluster scope"}},
		{"forbidden, describe", "", []string{"describe", "x", "-n", ns, "--as", "nobody"}, []string{"is forbidden", `cannot get resource "leases"`}},
		{"no such context", "", []string{"locks", "--context", "elsewhere"}, []string{"error: kubeconfig: ", "elsewhere"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := tc.path
			if path == "" {
				path = kubeconfig(t, env.Config)
			}
			r := cliWith(t, path, tc.args...)
			t.Logf("syncctl %s: exit %d, stderr %q", strings.Join(tc.args, " "), r.code, r.stderr)
			if r.code != 1 || r.stdout != "" || strings.Count(r.stderr, "\n") != 1 {
				t.Errorf("got exit %d, stdout %q, stderr %q; want exit 1, no output and one line on stderr", r.code, r.stdout, r.stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr %q lacks %q", r.stderr, w)
				}
			}
		})
	}
}

// TestIntegrationSidecarsOnTheRealAPIServer: the Pods with a side-car container are listed by
// the real API server, and each side-car is asked through its pods/proxy subresource. The test
// environment has no kubelet and no Pod network, so the Pod's IP is loopback, which the API
// server refuses to proxy to: the row says so, from the API server's own answer (the e2e
// scenario on the local cluster reads real side-cars).
func TestIntegrationSidecarsOnTheRealAPIServer(t *testing.T) {
	ns := env.Namespace(t)
	ctx := testCtx(t)
	pods := env.Clientset.CoreV1().Pods(ns)
	for _, p := range []struct {
		name    string
		sidecar bool
	}{{"web-0", true}, {"plain", false}} {
		containers := []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10"}}
		if p.sidecar {
			containers = append(containers, corev1.Container{Name: contract.SidecarContainer, Image: "registry.k8s.io/pause:3.10",
				Ports: []corev1.ContainerPort{{Name: contract.HealthPortName, ContainerPort: 13132}}})
		}
		created, err := pods.Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: p.name}, Spec: corev1.PodSpec{NodeName: "node-1", Containers: containers}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("creating Pod %s: %v", p.name, err)
		}
		// A loopback Pod IP, which the API server refuses to proxy to without dialling it.
		created.Status.Phase = corev1.PodRunning
		created.Status.PodIP = "127.0.0.1"
		created.Status.PodIPs = []corev1.PodIP{{IP: "127.0.0.1"}}
		if _, err := pods.UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("updating the status of Pod %s: %v", p.name, err)
		}
	}
	out := cli(t, "sidecars", "-n", ns, "-o", "json", "--request-timeout", "3s").ok(t, "sidecars")
	var got syncctl.SidecarList
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("got undecodable output %q: %v", out, err)
	}
	if len(got.Items) != 1 || got.Items[0].Pod != "web-0" || got.Items[0].Namespace != ns {
		t.Fatalf("got side-cars %+v; want web-0 of %s only", got.Items, ns)
	}
	if h := got.Items[0]; !strings.HasPrefix(h.Error, "cannot read its health port 13132 through the API server: ") || h.Serving != "" || h.APIServer != "" {
		t.Errorf("got %+v; want only why its health port could not be read", h)
	}
	t.Logf("the API server's answer for an unreachable side-car: %s", got.Items[0].Error)
}

// TestIntegrationVersion: version prints the client's release and each injector Deployment's,
// read from the real API server.
func TestIntegrationVersion(t *testing.T) {
	ns := env.Namespace(t)
	ctx := testCtx(t)
	sel := map[string]string{"app.kubernetes.io/name": "metaparticle-sync", "app.kubernetes.io/component": "injector"}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "injector", Namespace: ns, Labels: map[string]string{
			"app.kubernetes.io/name": "metaparticle-sync", "app.kubernetes.io/component": "injector", "app.kubernetes.io/version": "9.8.7"}},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: sel},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: sel},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "injector", Image: "example.test/injector:9.8.7"}}}},
		},
	}
	if err := env.Client.Create(ctx, d); err != nil {
		t.Fatal(err)
	}
	out := cli(t, "version").ok(t, "version")
	if !strings.HasPrefix(out, "Client: syncctl "+version.Version+"\n") || !strings.Contains(out, "Injector: "+ns+"/injector 9.8.7\n") {
		t.Errorf("version: got %q; want the client's release and the injector %s/injector 9.8.7", out, ns)
	}
	var v syncctl.Versions
	if err := json.Unmarshal([]byte(cli(t, "version", "--client", "-o", "json").ok(t, "version --client -o json")), &v); err != nil || v.Client != version.Version || v.Injectors != nil {
		t.Errorf("version --client -o json: got %+v, %v; want the client's release only", v, err)
	}
}
