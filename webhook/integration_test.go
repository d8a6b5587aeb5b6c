package webhook_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/internal/testenv"
	"github.com/metaparticle-io/sync/webhook"
)

var (
	env *testenv.Env
	// seen records the names of the Pods the API server sent to the webhook for annotated Pods,
	// seenNamespace those it sent to the webhook for opted-in namespaces.
	seen, seenNamespace = &podLog{}, &podLog{}
)

type podLog struct {
	mu    sync.Mutex // protects names
	names []string
}

func (l *podLog) add(name string) { l.mu.Lock(); l.names = append(l.names, name); l.mu.Unlock() }

func (l *podLog) count(name string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, s := range l.names {
		if s == name {
			n++
		}
	}
	return n
}

func TestMain(m *testing.M) { testenv.MainWithShippedWebhooks(m, &env) }

// startInjector serves the injector's webhook on the local serving address envtest registered.
func startInjector(t *testing.T) {
	t.Helper()
	startOnce.Do(func() {
		cs := kubernetes.NewForConfigOrDie(env.Config)
		in, err := webhook.NewInjector(webhook.DefaultConfig(testImage),
			webhook.NewAccessChecker(cs.AuthorizationV1().SubjectAccessReviews(), time.Second, nil))
		if err != nil {
			startErr = err
			return
		}
		// Events go to the real API server, through client-go's events.k8s.io/v1 broadcaster,
		// as the manager's recorder sends them in the injector.
		broadcaster := events.NewBroadcaster(&events.EventSinkImpl{Interface: cs.EventsV1()})
		if err := broadcaster.StartRecordingToSinkWithContext(context.Background()); err != nil {
			startErr = err
			return
		}
		in = in.WithEvents(broadcaster.NewRecorder(clientgoscheme.Scheme, webhook.EventReporter))
		startErr = env.ServeWebhooks(context.Background(), map[string]http.Handler{
			webhook.Path:          counted(webhook.NewWebhook(in), seen),
			webhook.NamespacePath: counted(webhook.NewWebhook(in.ForOptedInNamespaces()), seenNamespace),
		})
	})
	if startErr != nil {
		t.Fatal(startErr)
	}
}

var (
	startOnce sync.Once
	startErr  error
)

// counted records in log the name of every Pod sent to hook.
func counted(hook http.Handler, log *podLog) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var rev admissionv1.AdmissionReview
		if json.Unmarshal(body, &rev) == nil && rev.Request != nil {
			var p corev1.Pod
			_ = json.Unmarshal(rev.Request.Object.Raw, &p)
			log.add(p.Name)
		}
		r.Body = io.NopCloser(strings.NewReader(string(body)))
		hook.ServeHTTP(w, r)
	})
}

// restrictedApp makes the application container itself restricted-compliant.
func restrictedApp() podOpt {
	return func(p *corev1.Pod) {
		p.Spec.SecurityContext = &corev1.PodSecurityContext{
			RunAsNonRoot:   ptr.To(true),
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		}
		for i := range p.Spec.Containers {
			p.Spec.Containers[i].SecurityContext = &corev1.SecurityContext{
				AllowPrivilegeEscalation: ptr.To(false),
				Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			}
		}
	}
}

func named(name string) podOpt { return func(p *corev1.Pod) { p.Name = name } }

func inNamespace(ns string) podOpt { return func(p *corev1.Pod) { p.Namespace = ns } }

// warningsCollector records the API server's warnings for one client.
type warningsCollector struct {
	mu   sync.Mutex // protects msgs
	msgs []string
}

func (w *warningsCollector) HandleWarningHeader(_ int, _ string, msg string) {
	w.mu.Lock()
	w.msgs = append(w.msgs, msg)
	w.mu.Unlock()
}

func (w *warningsCollector) all() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Join(w.msgs, "\n")
}

func clientWithWarnings(t *testing.T) (client.Client, *warningsCollector) {
	t.Helper()
	w := &warningsCollector{}
	cfg := rest.CopyConfig(env.Config)
	cfg.WarningHandler = w
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return c, w
}

func TestIntegrationInjection(t *testing.T) {
	testenv.Require(t, env)
	startInjector(t)
	ctx := context.Background()

	t.Run("annotated Pod gets the side-car", func(t *testing.T) {
		ns := env.Namespace(t)
		pod := newPod(optedIn(), named("annotated"), inNamespace(ns))
		if err := env.Client.Create(ctx, pod); err != nil {
			t.Fatalf("create: %v", err)
		}
		s, native := sidecar(pod)
		if !native || s.Image != testImage {
			t.Fatalf("got side-car %q (native=%v) in the stored Pod; want native side-car %q", s.Name, native, testImage)
		}
		if got := pod.Annotations[webhook.AnnotationStatus]; got != webhook.StatusInjected {
			t.Errorf("got status annotation %q; want %q", got, webhook.StatusInjected)
		}
		if got := seen.count("annotated"); got < 1 {
			t.Errorf("got %d webhook calls for the annotated Pod; want at least 1", got)
		}
		// The stored Pod records what it got, and the label selects it.
		if got := pod.Annotations[contract.AnnotationInjectedImage]; got != testImage {
			t.Errorf("got %s %q; want %q", contract.AnnotationInjectedImage, got, testImage)
		}
		if err := env.Client.Create(ctx, newPod(named("not-injected"), inNamespace(ns))); err != nil {
			t.Fatal(err)
		}
		var list corev1.PodList
		if err := env.Client.List(ctx, &list, client.InNamespace(ns), client.MatchingLabels{contract.LabelInjected: "true"}); err != nil {
			t.Fatal(err)
		}
		if len(list.Items) != 1 || list.Items[0].Name != "annotated" {
			t.Errorf("got %d Pods labelled %s=true; want only the injected one", len(list.Items), contract.LabelInjected)
		}
	})

	t.Run("unannotated and opted-out Pods never reach the webhook", func(t *testing.T) {
		ns := env.Namespace(t)
		for _, p := range []*corev1.Pod{
			newPod(named("plain"), inNamespace(ns)),
			newPod(named("opted-out"), inNamespace(ns), annotated(webhook.AnnotationInject, "false")),
		} {
			if err := env.Client.Create(ctx, p); err != nil {
				t.Fatalf("create %s: %v", p.Name, err)
			}
			if n := countSidecars(p); n != 0 {
				t.Errorf("got %d side-cars in %s; want 0", n, p.Name)
			}
			if got := seen.count(p.Name); got != 0 {
				t.Errorf("got %d webhook calls for %s; want 0 (matchConditions filter it)", got, p.Name)
			}
		}
	})

	// Issue 19: a namespace opts in as a whole with a label, and the API server still sends the
	// injector only the Pods it must change.
	t.Run("labelled namespace injects every Pod but those opted out", func(t *testing.T) {
		ns := env.Namespace(t, map[string]string{webhook.LabelNamespaceInject: "true"})
		for _, tc := range []struct {
			pod              *corev1.Pod
			sidecars, called int
		}{
			{newPod(named("ns-plain"), inNamespace(ns)), 1, 1},
			{newPod(named("ns-annotated"), inNamespace(ns), optedIn()), 1, 1},
			{newPod(named("ns-opted-out"), inNamespace(ns), annotated(webhook.AnnotationInject, "false")), 0, 0},
		} {
			if err := env.Client.Create(ctx, tc.pod); err != nil {
				t.Fatalf("create %s: %v", tc.pod.Name, err)
			}
			if n := countSidecars(tc.pod); n != tc.sidecars {
				t.Errorf("%s: got %d side-cars; want %d", tc.pod.Name, n, tc.sidecars)
			}
			// Reinvocation may call the webhook a second time; never the other webhook.
			if got := seenNamespace.count(tc.pod.Name); (got > 0) != (tc.called > 0) {
				t.Errorf("%s: got %d calls of the namespace webhook; want %d", tc.pod.Name, got, tc.called)
			}
			if got := seen.count(tc.pod.Name); got != 0 {
				t.Errorf("%s: got %d calls of the annotation webhook; want 0 in an opted-in namespace", tc.pod.Name, got)
			}
		}
		bad := newPod(named("ns-bad"), inNamespace(ns), annotated(webhook.AnnotationInject, "yes"))
		if err := env.Client.Create(ctx, bad); err == nil || !strings.Contains(err.Error(), `annotation metaparticle.io/sync: invalid value "yes"`) {
			t.Errorf("got error %v; want a denial naming the annotation and value", err)
		}

		// A namespace labelled anything but "true" is not opted in.
		other := env.Namespace(t, map[string]string{webhook.LabelNamespaceInject: "false"})
		plain := newPod(named("ns-false-plain"), inNamespace(other))
		annotatedPod := newPod(named("ns-false-annotated"), inNamespace(other), optedIn())
		for _, p := range []*corev1.Pod{plain, annotatedPod} {
			if err := env.Client.Create(ctx, p); err != nil {
				t.Fatalf("create %s: %v", p.Name, err)
			}
		}
		if n, calls := countSidecars(plain), seen.count(plain.Name)+seenNamespace.count(plain.Name); n != 0 || calls != 0 {
			t.Errorf("%s: got %d side-cars and %d webhook calls; want none", plain.Name, n, calls)
		}
		if n := countSidecars(annotatedPod); n != 1 {
			t.Errorf("%s: got %d side-cars; want 1", annotatedPod.Name, n)
		}
	})

	// Issue 19: Events where users look, on the Pod's controller.
	t.Run("Events on the Pod's controller", func(t *testing.T) {
		ns := env.Namespace(t)
		if err := env.Client.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "no-leases", Namespace: ns}}); err != nil {
			t.Fatal(err)
		}
		// owned creates a ReplicaSet (no controller runs here) and a Pod it owns, as the
		// ReplicaSet controller would, and returns the ReplicaSet's UID.
		owned := func(rs string, dryRun bool, opts ...podOpt) (types.UID, error) {
			t.Helper()
			set := &appsv1.ReplicaSet{
				ObjectMeta: metav1.ObjectMeta{Name: rs, Namespace: ns},
				Spec: appsv1.ReplicaSetSpec{
					Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": rs}},
					Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": rs}}, Spec: newPod().Spec},
				},
			}
			if err := env.Client.Create(ctx, set); err != nil {
				t.Fatal(err)
			}
			pod := newPod(append(opts, inNamespace(ns), func(p *corev1.Pod) {
				p.Name, p.GenerateName = "", rs+"-"
				p.Labels = map[string]string{"app": rs}
				p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: rs, UID: set.UID, Controller: ptr.To(true)}}
			})...)
			var o []client.CreateOption
			if dryRun {
				o = append(o, client.DryRunAll)
			}
			return set.UID, env.Client.Create(ctx, pod, o...)
		}
		dryUID, err := owned("dry", true, optedIn())
		if err != nil {
			t.Fatal(err)
		}
		injectedUID, err := owned("injected", false, optedIn())
		if err != nil {
			t.Fatal(err)
		}
		refusedUID, err := owned("refused", false, optedIn(), annotated(webhook.AnnotationPort, "80"))
		if err == nil {
			t.Fatal("got the Pod with port 80 admitted; want it refused")
		}
		rbacUID, err := owned("no-rbac", false, optedIn(), withServiceAccount("no-leases"))
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			uid          types.UID
			typ, reason  string
			noteContains string
		}{
			{injectedUID, corev1.EventTypeNormal, webhook.ReasonInjected, "added the side-car " + testImage},
			{refusedUID, corev1.EventTypeWarning, webhook.ReasonRefused, `annotation metaparticle.io/port: invalid value "80"`},
			{rbacUID, corev1.EventTypeWarning, webhook.ReasonNoLeaseRBAC, "kubectl create rolebinding no-leases-metaparticle-sync"},
			{rbacUID, corev1.EventTypeNormal, webhook.ReasonInjected, "added the side-car"},
		} {
			e := waitEvent(ctx, t, ns, tc.uid, tc.reason)
			if e.Type != tc.typ || !strings.Contains(e.Note, tc.noteContains) || e.ReportingController != webhook.EventReporter || e.Regarding.Kind != "ReplicaSet" {
				t.Errorf("got Event %s %s %q by %s on %s; want %s %s containing %q by %s on the ReplicaSet",
					e.Type, e.Reason, e.Note, e.ReportingController, e.Regarding.Kind, tc.typ, tc.reason, tc.noteContains, webhook.EventReporter)
			}
		}
		// The dry run came first; the Events after it are recorded, so it recorded none.
		list, err := kubernetes.NewForConfigOrDie(env.Config).EventsV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "regarding.uid=" + string(dryUID)})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Items) != 0 {
			t.Errorf("got %d Events for a dry-run create; want none (sideEffects: NoneOnDryRun)", len(list.Items))
		}
	})

	t.Run("bad annotation is denied with its reason", func(t *testing.T) {
		ns := env.Namespace(t)
		pod := newPod(optedIn(), named("bad"), inNamespace(ns), annotated(webhook.AnnotationPort, "99999"))
		err := env.Client.Create(ctx, pod)
		if err == nil || !strings.Contains(err.Error(), `annotation metaparticle.io/port: invalid value "99999"`) {
			t.Fatalf("got error %v; want a denial naming the annotation and value", err)
		}
	})

	t.Run("restricted namespace admits the injected Pod", func(t *testing.T) {
		ns := env.Namespace(t, map[string]string{"pod-security.kubernetes.io/enforce": "restricted"})
		privileged := newPod(named("privileged"), inNamespace(ns), func(p *corev1.Pod) {
			p.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{Privileged: ptr.To(true)}
		})
		if err := env.Client.Create(ctx, privileged); err == nil || !strings.Contains(err.Error(), "violates PodSecurity") {
			t.Fatalf("got error %v for a privileged Pod; want a PodSecurity violation (is the policy enforced?)", err)
		}
		for _, mode := range []string{"native", "classic"} {
			pod := newPod(optedIn(), restrictedApp(), named("restricted-"+mode), inNamespace(ns), annotated(webhook.AnnotationMode, mode))
			if err := env.Client.Create(ctx, pod); err != nil {
				t.Fatalf("%s: got %v; want the injected Pod admitted under restricted", mode, err)
			}
			if n := countSidecars(pod); n != 1 {
				t.Errorf("%s: got %d side-cars; want 1", mode, n)
			}
		}
	})

	t.Run("RBAC warning only without Lease permissions", func(t *testing.T) {
		ns := env.Namespace(t)
		for _, sa := range []string{"bare", "with-leases"} {
			if err := env.Client.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa, Namespace: ns}}); err != nil {
				t.Fatal(err)
			}
		}
		role := &rbacv1.Role{
			ObjectMeta: metav1.ObjectMeta{Name: "leases", Namespace: ns},
			Rules:      []rbacv1.PolicyRule{{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: contract.SidecarLeaseVerbs}},
		}
		binding := &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "leases", Namespace: ns},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "leases"},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "with-leases", Namespace: ns}},
		}
		for _, o := range []client.Object{role, binding} {
			if err := env.Client.Create(ctx, o); err != nil {
				t.Fatal(err)
			}
		}
		for _, tc := range []struct {
			sa   string
			want bool
		}{{"bare", true}, {"with-leases", false}} {
			c, warnings := clientWithWarnings(t)
			pod := newPod(optedIn(), named("sa-"+tc.sa), inNamespace(ns), withServiceAccount(tc.sa))
			if err := c.Create(ctx, pod); err != nil {
				t.Fatalf("%s: create: %v", tc.sa, err)
			}
			want := "kubectl create rolebinding " + tc.sa + "-metaparticle-sync --namespace " + ns
			if got := strings.Contains(warnings.all(), want); got != tc.want {
				t.Errorf("%s: got warnings %q; want warning %q present=%v", tc.sa, warnings.all(), want, tc.want)
			}
		}
	})

	t.Run("injected Pod passes server-side validation in a dry run", func(t *testing.T) {
		ns := env.Namespace(t)
		pod := newPod(optedIn(), named("dry"), inNamespace(ns), withInitContainer("init"), withContainer("second"))
		if err := env.Client.Create(ctx, pod, client.DryRunAll); err != nil {
			t.Fatalf("dry-run create: %v", err)
		}
		if n := countSidecars(pod); n != 1 {
			t.Errorf("got %d side-cars; want 1", n)
		}
		err := env.Client.Get(ctx, client.ObjectKeyFromObject(pod), &corev1.Pod{})
		if !apierrors.IsNotFound(err) {
			t.Errorf("got %v reading the dry-run Pod; want NotFound", err)
		}
	})
}

// waitEvent waits for the Event of reason on the object uid in ns, read back from the API server.
func waitEvent(ctx context.Context, t *testing.T, ns string, uid types.UID, reason string) eventsv1.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cs := kubernetes.NewForConfigOrDie(env.Config)
	sel := "regarding.uid=" + string(uid) + ",reason=" + reason
	for {
		list, err := cs.EventsV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: sel})
		if err == nil && len(list.Items) > 0 {
			return list.Items[0]
		}
		select {
		case <-ctx.Done():
			t.Fatalf("got no Event %s on %s: %v (last error %v)", reason, uid, ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
