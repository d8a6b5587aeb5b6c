// Package charts_test renders the Helm chart with helm (built by hack/control-plane.sh) and checks
// the objects it produces; the integration tests install it on a real API server.
package charts_test

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/internal/testenv"
	"github.com/metaparticle-io/sync/webhook"
)

const (
	release   = "mps"
	namespace = "metaparticle-sync"
)

// helm returns the helm binary built by hack/control-plane.sh. Without it, unit runs (-short) skip
// and full runs fail.
func helm(t testing.TB) string {
	t.Helper()
	root, err := testenv.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("bash", filepath.Join(root, "hack", "control-plane.sh"), "--print-bin", "helm").Output()
	if err != nil {
		t.Fatalf("locating helm: %v", err)
	}
	bin := strings.TrimSpace(string(out))
	if _, err := os.Stat(bin); err != nil {
		if testing.Short() {
			t.Skipf("helm not built yet (%s); run make control-plane", bin)
		}
		t.Fatalf("helm missing at %s: run make control-plane", bin)
	}
	return bin
}

func chartDir(t testing.TB) string {
	t.Helper()
	root, err := testenv.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(root, "charts", "metaparticle-sync")
}

// runHelm runs helm with args and returns stdout, or the error with stderr.
func runHelm(t testing.TB, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(helm(t), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+t.TempDir(), "HELM_CONFIG_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir())
	if err := cmd.Run(); err != nil {
		return stdout.String(), &helmError{err: err, stderr: stderr.String()}
	}
	return stdout.String(), nil
}

type helmError struct {
	err    error
	stderr string
}

func (e *helmError) Error() string { return e.err.Error() + ": " + e.stderr }

// rendered is the output of helm template, decoded.
type rendered []*unstructured.Unstructured

// render runs helm template with the ci values file name (empty: none) and extra args.
func render(t testing.TB, valuesFile string, args ...string) rendered {
	t.Helper()
	all := []string{"template", release, chartDir(t), "--namespace", namespace}
	if valuesFile != "" {
		all = append(all, "--values", filepath.Join(chartDir(t), "ci", valuesFile))
	}
	out, err := runHelm(t, append(all, args...)...)
	if err != nil {
		t.Fatalf("helm template %s: %v", valuesFile, err)
	}
	return decode(t, out)
}

func decode(t testing.TB, manifest string) rendered {
	t.Helper()
	var objs rendered
	for _, doc := range strings.Split(manifest, "\n---") {
		if strings.TrimSpace(strings.TrimPrefix(doc, "---")) == "" {
			continue
		}
		var m map[string]any
		if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
			t.Fatalf("rendered document is not YAML: %v\n%s", err, doc)
		}
		if len(m) == 0 {
			continue
		}
		objs = append(objs, &unstructured.Unstructured{Object: m})
	}
	return objs
}

// find returns the objects of a kind.
func (r rendered) find(kind string) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, o := range r {
		if o.GetKind() == kind {
			out = append(out, o)
		}
	}
	return out
}

// one converts the single object of a kind (named name, when not empty) into out.
func (r rendered) one(t *testing.T, kind, name string, out any) {
	t.Helper()
	var match []*unstructured.Unstructured
	for _, o := range r.find(kind) {
		if name == "" || o.GetName() == name {
			match = append(match, o)
		}
	}
	if len(match) != 1 {
		t.Fatalf("got %d %s objects named %q; want 1", len(match), kind, name)
	}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(match[0].Object, out); err != nil {
		t.Fatalf("converting %s: %v", kind, err)
	}
}

func TestHelmLint(t *testing.T) {
	for _, f := range []string{"default-values.yaml", "no-cert-manager-values.yaml", "existing-issuer-values.yaml", "url-values.yaml"} {
		if out, err := runHelm(t, "lint", "--strict", chartDir(t), "--values", filepath.Join(chartDir(t), "ci", f)); err != nil {
			t.Errorf("helm lint --strict with %s: %v\n%s", f, err, out)
		}
	}
}

func TestRenderDefaults(t *testing.T) {
	r := render(t, "default-values.yaml")
	injector := release + "-metaparticle-sync-injector"

	var d appsv1.Deployment
	r.one(t, "Deployment", injector, &d)
	if got := ptr.Deref(d.Spec.Replicas, 0); got != 2 {
		t.Errorf("got %d replicas; want 2", got)
	}
	pod := d.Spec.Template.Spec
	if pod.SecurityContext == nil || !ptr.Deref(pod.SecurityContext.RunAsNonRoot, false) ||
		pod.SecurityContext.SeccompProfile == nil || pod.SecurityContext.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("got pod securityContext %+v; want runAsNonRoot and RuntimeDefault seccomp", pod.SecurityContext)
	}
	c := pod.Containers[0]
	if sc := c.SecurityContext; sc == nil || ptr.Deref(sc.AllowPrivilegeEscalation, true) || !ptr.Deref(sc.ReadOnlyRootFilesystem, false) ||
		sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("got container securityContext %+v; want restricted", c.SecurityContext)
	}
	if c.Image != "docker.io/metaparticle/sync-injector:0.1.0" {
		t.Errorf("got injector image %q; want the appVersion tag", c.Image)
	}
	for _, want := range []string{
		"--sidecar-image=docker.io/metaparticle/sync-elector:0.1.0", "--sidecar-mode=native", "--sidecar-port=13131",
		"--lease-duration=15s", "--renew-deadline=10s", "--renew-period=5s", "--retry-period=1s",
		"--sidecar-cpu-request=10m", "--sidecar-memory-limit=64Mi", "--cert-dir=/tls", "--enable-http2=false",
		"--sidecar-cluster-role=" + release + "-metaparticle-sync-sidecar", "--sidecar-metrics-names=0",
	} {
		if !slices.Contains(c.Args, want) {
			t.Errorf("got args %q; want %q among them", c.Args, want)
		}
	}
	if c.ReadinessProbe == nil || c.LivenessProbe == nil {
		t.Errorf("got readiness %v, liveness %v; want both probes", c.ReadinessProbe, c.LivenessProbe)
	}
	if pod.Affinity == nil || pod.Affinity.PodAntiAffinity == nil {
		t.Errorf("got affinity %+v; want default pod anti-affinity", pod.Affinity)
	}
	if len(pod.Volumes) != 1 || pod.Volumes[0].Secret == nil || pod.Volumes[0].Secret.SecretName != injector+"-tls" {
		t.Errorf("got volumes %+v; want the serving Secret %s-tls", pod.Volumes, injector)
	}

	var pdb policyv1.PodDisruptionBudget
	r.one(t, "PodDisruptionBudget", injector, &pdb)
	if pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() != 1 {
		t.Errorf("got PDB minAvailable %v; want 1", pdb.Spec.MinAvailable)
	}

	var svc corev1.Service
	r.one(t, "Service", injector, &svc)
	if svc.Spec.Ports[0].Port != 443 || svc.Spec.Ports[0].TargetPort.String() != "webhook" {
		t.Errorf("got service port %+v; want 443 -> webhook", svc.Spec.Ports[0])
	}

	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	r.one(t, "MutatingWebhookConfiguration", injector, &mwc)
	if got, want := mwc.Annotations["cert-manager.io/inject-ca-from"], namespace+"/"+injector+"-serving"; got != want {
		t.Errorf("got inject-ca-from %q; want %q", got, want)
	}
	// The chart's webhooks are the ones in deploy/webhook that the webhook package's integration
	// test proves against the API server, but for names and namespaces.
	shipped := shippedWebhook(t)
	rule := func(w admissionregistrationv1.MutatingWebhook) admissionregistrationv1.MutatingWebhook {
		w.ClientConfig = admissionregistrationv1.WebhookClientConfig{}
		w.NamespaceSelector = nil
		return w
	}
	paths := []string{webhook.Path, webhook.NamespacePath}
	if len(mwc.Webhooks) != len(paths) || len(shipped.Webhooks) != len(paths) {
		t.Fatalf("got %d webhooks in the chart, %d in deploy/webhook; want %d", len(mwc.Webhooks), len(shipped.Webhooks), len(paths))
	}
	for i, wh := range mwc.Webhooks {
		if wh.ClientConfig.Service == nil || wh.ClientConfig.Service.Name != injector || wh.ClientConfig.Service.Namespace != namespace ||
			ptr.Deref(wh.ClientConfig.Service.Path, "") != paths[i] {
			t.Errorf("webhook %s: got clientConfig %+v; want Service %s/%s path %s", wh.Name, wh.ClientConfig, namespace, injector, paths[i])
		}
		if len(wh.ClientConfig.CABundle) != 0 {
			t.Errorf("webhook %s: got a caBundle; want it left to cert-manager's cainjector", wh.Name)
		}
		exprs := wh.NamespaceSelector.MatchExpressions
		if len(exprs) != 2 {
			t.Fatalf("webhook %s: got namespace selector %+v; want the excluded namespaces and the opt-in label", wh.Name, exprs)
		}
		for _, ns := range []string{"kube-system", "kube-public", "kube-node-lease", namespace} {
			if !slices.Contains(exprs[0].Values, ns) {
				t.Errorf("webhook %s: got excluded namespaces %v; want %s among them", wh.Name, exprs[0].Values, ns)
			}
		}
		if !equality.Semantic.DeepEqual(exprs[1], shipped.Webhooks[i].NamespaceSelector.MatchExpressions[1]) {
			t.Errorf("webhook %s: got label selector %+v; want deploy/webhook's %+v", wh.Name, exprs[1], shipped.Webhooks[i].NamespaceSelector.MatchExpressions[1])
		}
		if !equality.Semantic.DeepEqual(rule(wh), rule(shipped.Webhooks[i])) {
			t.Errorf("got chart webhook\n%+v\nwant deploy/webhook's\n%+v", rule(wh), rule(shipped.Webhooks[i]))
		}
	}

	var injectorRole rbacv1.ClusterRole
	r.one(t, "ClusterRole", injector, &injectorRole)
	if !slices.ContainsFunc(injectorRole.Rules, func(r rbacv1.PolicyRule) bool {
		return slices.Equal(r.APIGroups, []string{"events.k8s.io"}) && slices.Equal(r.Resources, []string{"events"}) &&
			slices.Contains(r.Verbs, "create") && slices.Contains(r.Verbs, "patch")
	}) {
		t.Errorf("got injector rules %+v; want create and patch (event series) on events.k8s.io events (its Events on Pods' controllers)", injectorRole.Rules)
	}
	var role rbacv1.ClusterRole
	r.one(t, "ClusterRole", release+"-metaparticle-sync-sidecar", &role)
	if len(role.Rules) != 1 || !slices.Equal(role.Rules[0].Verbs, contract.SidecarLeaseVerbs) ||
		!slices.Equal(role.Rules[0].Resources, []string{"leases"}) {
		t.Errorf("got side-car rules %+v; want exactly %v on leases", role.Rules, contract.SidecarLeaseVerbs)
	}

	kinds := map[string]int{}
	for _, o := range r {
		kinds[o.GetKind()]++
	}
	if kinds["Issuer"] != 2 || kinds["Certificate"] != 2 || kinds["Secret"] != 0 {
		t.Errorf("got %d Issuers, %d Certificates, %d Secrets; want the self-signed chain (2, 2) and no Secret", kinds["Issuer"], kinds["Certificate"], kinds["Secret"])
	}
	serving := r.cert(t, injector+"-serving")
	if got, want := serving.dnsNames, []string{injector + "." + namespace + ".svc", injector + "." + namespace + ".svc.cluster.local"}; !slices.Equal(got, want) {
		t.Errorf("got serving dnsNames %v; want %v", got, want)
	}
	if serving.issuer != release+"-metaparticle-sync-ca" || serving.issuerKind != "Issuer" {
		t.Errorf("got issuer %s %s; want the chart's CA Issuer", serving.issuerKind, serving.issuer)
	}
}

// TestRenderImageRegistry: image.registry moves both images (as make push pushed them), the
// side-car's own registry wins for the side-car, and a digest replaces the tag.
func TestRenderImageRegistry(t *testing.T) {
	sha := "sha256:" + strings.Repeat("ab", 32)
	tests := []struct {
		name                   string
		args                   []string
		wantInjector, wantSide string
	}{
		{"registry", []string{"--set", "image.registry=127.0.0.1:12500/metaparticle"},
			"127.0.0.1:12500/metaparticle/sync-injector:0.1.0", "127.0.0.1:12500/metaparticle/sync-elector:0.1.0"},
		{"trailing slash", []string{"--set", "image.registry=ghcr.io/acme/"},
			"ghcr.io/acme/sync-injector:0.1.0", "ghcr.io/acme/sync-elector:0.1.0"},
		{"side-car registry", []string{"--set", "image.registry=ghcr.io/acme", "--set", "sidecar.image.registry=mirror.example.com/mps"},
			"ghcr.io/acme/sync-injector:0.1.0", "mirror.example.com/mps/sync-elector:0.1.0"},
		{"no registry", []string{"--set", "image.registry=", "--set", "image.repository=quay.io/x/injector", "--set", "sidecar.image.repository=quay.io/x/elector"},
			"quay.io/x/injector:0.1.0", "quay.io/x/elector:0.1.0"},
		{"digests", []string{"--set", "image.digest=" + sha, "--set", "sidecar.image.digest=" + sha, "--set", "sidecar.image.tag=9.9.9"},
			"docker.io/metaparticle/sync-injector@" + sha, "docker.io/metaparticle/sync-elector@" + sha},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := render(t, "", tc.args...)
			var d appsv1.Deployment
			r.one(t, "Deployment", release+"-metaparticle-sync-injector", &d)
			c := d.Spec.Template.Spec.Containers[0]
			if c.Image != tc.wantInjector {
				t.Errorf("injector image: got %q; want %q", c.Image, tc.wantInjector)
			}
			if want := "--sidecar-image=" + tc.wantSide; !slices.Contains(c.Args, want) {
				t.Errorf("got args %q; want %q among them", c.Args, want)
			}
		})
	}
}

// TestRenderHostNetwork: webhook.hostNetwork puts the injector on the node's network, with the
// DNS policy that still resolves Services; by default it stays in its Pod's network.
func TestRenderHostNetwork(t *testing.T) {
	for _, on := range []bool{false, true} {
		r := render(t, "", "--set", fmt.Sprintf("webhook.hostNetwork=%v", on), "--set", "webhook.port=10443")
		var d appsv1.Deployment
		r.one(t, "Deployment", release+"-metaparticle-sync-injector", &d)
		pod := d.Spec.Template.Spec
		wantDNS := corev1.DNSPolicy("")
		if on {
			wantDNS = corev1.DNSClusterFirstWithHostNet
		}
		if pod.HostNetwork != on || pod.DNSPolicy != wantDNS {
			t.Errorf("hostNetwork=%v: got hostNetwork %v, dnsPolicy %q; want %v, %q", on, pod.HostNetwork, pod.DNSPolicy, on, wantDNS)
		}
		surge := d.Spec.Strategy.RollingUpdate != nil && d.Spec.Strategy.RollingUpdate.MaxSurge != nil && d.Spec.Strategy.RollingUpdate.MaxSurge.IntValue() == 0
		if surge != on {
			t.Errorf("hostNetwork=%v: got strategy %+v; want maxSurge 0 exactly with hostNetwork", on, d.Spec.Strategy)
		}
		if pod.NodeSelector["kubernetes.io/os"] != "linux" {
			t.Errorf("hostNetwork=%v: got nodeSelector %v; want kubernetes.io/os: linux", on, pod.NodeSelector)
		}
		if !slices.Contains(pod.Containers[0].Args, "--port=10443") || pod.Containers[0].Ports[0].ContainerPort != 10443 {
			t.Errorf("hostNetwork=%v: got args %q, ports %+v; want the injector on 10443", on, pod.Containers[0].Args, pod.Containers[0].Ports)
		}
	}
}

// TestRenderProductionKnobs: the values production installs need reach the objects, merged over
// the chart's safe defaults rather than replacing them.
func TestRenderProductionKnobs(t *testing.T) {
	r := render(t, "",
		"--set", "topologySpreadConstraints[0].maxSkew=1", "--set", "topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone",
		"--set", "topologySpreadConstraints[0].whenUnsatisfiable=DoNotSchedule",
		"--set", "podSecurityContext.fsGroup=2000", "--set", "securityContext.readOnlyRootFilesystem=false",
		"--set", "extraArgs[0]=--zap-devel=false", "--set", "extraEnv[0].name=GOMEMLIMIT", "--set", "extraEnv[0].value=100MiB",
		"--set", "podDisruptionBudget.maxUnavailable=50%",
		"--set", "webhook.namespaceSelector.matchLabels.env=prod", "--set", "webhook.objectSelector.matchLabels.team=payments",
	)
	injector := release + "-metaparticle-sync-injector"
	var d appsv1.Deployment
	r.one(t, "Deployment", injector, &d)
	pod := d.Spec.Template.Spec
	if len(pod.TopologySpreadConstraints) != 1 || pod.TopologySpreadConstraints[0].LabelSelector == nil ||
		pod.TopologySpreadConstraints[0].LabelSelector.MatchLabels["app.kubernetes.io/component"] != "injector" ||
		pod.TopologySpreadConstraints[0].TopologyKey != "topology.kubernetes.io/zone" {
		t.Errorf("got topologySpreadConstraints %+v; want the zone constraint with the injector's selector labels", pod.TopologySpreadConstraints)
	}
	if sc := pod.SecurityContext; sc == nil || ptr.Deref(sc.FSGroup, 0) != 2000 || !ptr.Deref(sc.RunAsNonRoot, false) || sc.SeccompProfile == nil {
		t.Errorf("got pod securityContext %+v; want fsGroup 2000 over the defaults (runAsNonRoot, seccomp)", pod.SecurityContext)
	}
	c := pod.Containers[0]
	if sc := c.SecurityContext; sc == nil || ptr.Deref(sc.ReadOnlyRootFilesystem, true) || ptr.Deref(sc.AllowPrivilegeEscalation, true) ||
		sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 {
		t.Errorf("got container securityContext %+v; want readOnlyRootFilesystem false over the defaults", c.SecurityContext)
	}
	if c.Args[len(c.Args)-1] != "--zap-devel=false" {
		t.Errorf("got args %q; want --zap-devel=false last", c.Args)
	}
	if len(c.Env) != 1 || c.Env[0].Name != "GOMEMLIMIT" || c.Env[0].Value != "100MiB" {
		t.Errorf("got env %+v; want GOMEMLIMIT=100MiB", c.Env)
	}
	var pdb policyv1.PodDisruptionBudget
	r.one(t, "PodDisruptionBudget", injector, &pdb)
	if pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.String() != "50%" || pdb.Spec.MinAvailable != nil {
		t.Errorf("got PDB spec %+v; want maxUnavailable 50%% and no minAvailable", pdb.Spec)
	}
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	r.one(t, "MutatingWebhookConfiguration", injector, &mwc)
	for _, wh := range mwc.Webhooks {
		if wh.NamespaceSelector.MatchLabels["env"] != "prod" || len(wh.NamespaceSelector.MatchExpressions) != 2 {
			t.Errorf("webhook %s: got namespaceSelector %+v; want env=prod ANDed with the chart's two expressions", wh.Name, wh.NamespaceSelector)
		}
		if wh.ObjectSelector == nil || wh.ObjectSelector.MatchLabels["team"] != "payments" {
			t.Errorf("webhook %s: got objectSelector %+v; want team=payments", wh.Name, wh.ObjectSelector)
		}
	}
}

// TestRenderMonitors: the PodMonitor scrapes exactly the Pods the injector labels, on the port
// the injector gives the side-car; the ServiceMonitor scrapes the injector's Service port.
func TestRenderMonitors(t *testing.T) {
	r := render(t, "", "--set", "metrics.podMonitor.enabled=true", "--set", "metrics.serviceMonitor.enabled=true",
		"--set", "metrics.podMonitor.namespaces[0]=shop", "--set", "metrics.serviceMonitor.scrapeTimeout=10s")
	pm := r.find("PodMonitor")
	if len(pm) != 1 {
		t.Fatalf("got %d PodMonitors; want 1", len(pm))
	}
	sel, _, _ := unstructured.NestedStringMap(pm[0].Object, "spec", "selector", "matchLabels")
	if !maps.Equal(sel, map[string]string{contract.LabelInjected: "true"}) {
		t.Errorf("got PodMonitor selector %v; want the injector's label %s=true", sel, contract.LabelInjected)
	}
	names, _, _ := unstructured.NestedStringSlice(pm[0].Object, "spec", "namespaceSelector", "matchNames")
	if !slices.Equal(names, []string{"shop"}) {
		t.Errorf("got PodMonitor namespaces %v; want [shop]", names)
	}
	eps, _, _ := unstructured.NestedSlice(pm[0].Object, "spec", "podMetricsEndpoints")
	if len(eps) != 1 || eps[0].(map[string]any)["port"] != webhook.HealthPortName || eps[0].(map[string]any)["path"] != "/metrics" {
		t.Errorf("got PodMetricsEndpoints %v; want port %s path /metrics (the injected side-car's)", eps, webhook.HealthPortName)
	}

	sm := r.find("ServiceMonitor")
	if len(sm) != 1 {
		t.Fatalf("got %d ServiceMonitors; want 1", len(sm))
	}
	seps, _, _ := unstructured.NestedSlice(sm[0].Object, "spec", "endpoints")
	var svc corev1.Service
	r.one(t, "Service", release+"-metaparticle-sync-injector", &svc)
	if len(seps) != 1 || seps[0].(map[string]any)["port"] != "metrics" || seps[0].(map[string]any)["scrapeTimeout"] != "10s" ||
		!slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == "metrics" }) {
		t.Errorf("got ServiceMonitor endpoints %v and Service ports %+v; want port metrics on both, scrapeTimeout 10s", seps, svc.Spec.Ports)
	}
	smNS, _, _ := unstructured.NestedStringSlice(sm[0].Object, "spec", "namespaceSelector", "matchNames")
	if !slices.Equal(smNS, []string{namespace}) {
		t.Errorf("got ServiceMonitor namespaces %v; want the release namespace %s", smNS, namespace)
	}
	if n := len(render(t, "").find("PodMonitor")); n != 0 {
		t.Errorf("got %d PodMonitors by default; want none (prometheus-operator's CRDs may be absent)", n)
	}
}

func TestRenderWithoutCertManager(t *testing.T) {
	r := render(t, "no-cert-manager-values.yaml")
	injector := release + "-metaparticle-sync-injector"
	if n := len(r.find("Certificate")) + len(r.find("Issuer")); n != 0 {
		t.Errorf("got %d cert-manager objects; want none", n)
	}
	var secret corev1.Secret
	r.one(t, "Secret", injector+"-tls", &secret)
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	r.one(t, "MutatingWebhookConfiguration", injector, &mwc)
	if _, ok := mwc.Annotations["cert-manager.io/inject-ca-from"]; ok {
		t.Errorf("got inject-ca-from without cert-manager; want none")
	}
	caBundle := mwc.Webhooks[0].ClientConfig.CABundle
	if !bytes.Equal(caBundle, secret.Data["ca.crt"]) {
		t.Errorf("got caBundle different from the Secret's ca.crt; want the same CA")
	}
	verifyServing(t, caBundle, secret.Data["tls.crt"], injector+"."+namespace+".svc")

	var rb rbacv1.RoleBinding
	r.one(t, "RoleBinding", "", &rb)
	if rb.Namespace != "shop" || rb.Subjects[0].Name != "orders" || rb.RoleRef.Name != release+"-metaparticle-sync-sidecar" {
		t.Errorf("got RoleBinding %s/%s -> %+v for %+v; want shop's orders bound to the side-car ClusterRole", rb.Namespace, rb.Name, rb.RoleRef, rb.Subjects)
	}
	var d appsv1.Deployment
	r.one(t, "Deployment", injector, &d)
	if d.Spec.Template.Annotations["metaparticle.io/tls-generation"] == "" {
		t.Errorf("got no tls-generation annotation; want one so that Pods restart on upgrade with the new certificate")
	}
}

func TestRenderExistingIssuer(t *testing.T) {
	r := render(t, "existing-issuer-values.yaml")
	if n := len(r.find("Issuer")); n != 0 {
		t.Errorf("got %d Issuers; want none with an existing issuer", n)
	}
	if n := len(r.find("Certificate")); n != 1 {
		t.Errorf("got %d Certificates; want only the serving one", n)
	}
	c := r.cert(t, release+"-metaparticle-sync-injector-serving")
	if c.issuer != "corporate-ca" || c.issuerKind != "ClusterIssuer" {
		t.Errorf("got issuer %s %s; want ClusterIssuer corporate-ca", c.issuerKind, c.issuer)
	}
}

func TestRenderURLMode(t *testing.T) {
	r := render(t, "url-values.yaml")
	injector := release + "-metaparticle-sync-injector"
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	r.one(t, "MutatingWebhookConfiguration", injector, &mwc)
	for i, want := range []string{"https://127.0.0.1:9443/mutate-pods", "https://127.0.0.1:9443/mutate-pods-of-opted-in-namespaces"} {
		if i >= len(mwc.Webhooks) {
			t.Fatalf("got %d webhooks; want 2", len(mwc.Webhooks))
		}
		cc := mwc.Webhooks[i].ClientConfig
		if cc.Service != nil || ptr.Deref(cc.URL, "") != want {
			t.Errorf("webhook %d: got clientConfig %+v; want the URL %s and no Service", i, cc, want)
		}
	}
	c := r.cert(t, injector+"-serving")
	if !slices.Equal(c.ipAddresses, []string{"127.0.0.1"}) {
		t.Errorf("got ipAddresses %v; want [127.0.0.1]", c.ipAddresses)
	}
	if n := len(r.find("PodDisruptionBudget")); n != 0 {
		t.Errorf("got %d PDBs; want none when disabled", n)
	}

	// Without cert-manager the generated certificate carries the URL's IP too.
	r = render(t, "url-values.yaml", "--set", "certManager.enabled=false")
	var secret corev1.Secret
	r.one(t, "Secret", injector+"-tls", &secret)
	verifyServing(t, secret.Data["ca.crt"], secret.Data["tls.crt"], "127.0.0.1")
}

// TestRenderRefusesBadValues proves typos and conflicts fail the install with a clear message.
func TestRenderRefusesBadValues(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"typo", []string{"--set", "webhok.port=1"}, "additional properties 'webhok' not allowed"},
		{"nested typo", []string{"--set", "sidecar.leaseDurations=20s"}, "additional properties 'leaseDurations' not allowed"},
		{"bad enum", []string{"--set", "sidecar.mode=sidecar"}, "'native', 'classic'"},
		{"bad duration", []string{"--set", "sidecar.leaseDuration=soon"}, "/sidecar/leaseDuration"},
		{"issuer without cert-manager", []string{"--set", "certManager.enabled=false", "--set", "certManager.issuerRef.name=x"},
			"certManager.issuerRef is set but certManager.enabled is false"},
		{"registry with a scheme", []string{"--set", "image.registry=https://ghcr.io/acme"}, "/image/registry"},
		{"full name under a registry", []string{"--set", "image.repository=myreg.example.com/sync-injector"}, `image.repository "myreg.example.com/sync-injector" starts with a registry host`},
		{"side-car full name under a registry", []string{"--set", "sidecar.image.repository=localhost/x"}, `sidecar.image.repository "localhost/x" starts with a registry host`},
		{"empty path element", []string{"--set", "image.registry=ghcr.io//acme"}, "empty path element"},
		{"URL not ending with /mutate-pods", []string{"--set", "webhook.url=https://127.0.0.1:9443/inject"}, "must end with /mutate-pods"},
		{"extra arg without dashes", []string{"--set", "extraArgs[0]=zap-devel"}, "/extraArgs/0"},
		{"spread without a key", []string{"--set", "topologySpreadConstraints[0].maxSkew=1"}, "/topologySpreadConstraints/0"},
		{"both PDB bounds", []string{"--set", "podDisruptionBudget.maxUnavailable=1", "--set", "podDisruptionBudget.minAvailable=0"}, "not both"},
		{"selector typo", []string{"--set", "webhook.objectSelector.matchLabel.x=y"}, "additional properties 'matchLabel' not allowed"},
		{"plain-http URL", []string{"--set", "webhook.url=http://127.0.0.1:1/x"}, "/webhook/url"},
		{"PDB blocks drains", []string{"--set", "podDisruptionBudget.minAvailable=2"}, "must be below replicaCount"},
		{"Kubernetes too old", []string{"--kube-version", "1.28.0"}, "kubeVersion"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := runHelm(t, append([]string{"template", release, chartDir(t), "--namespace", namespace}, tt.args...)...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got error %v; want one containing %q", err, tt.want)
			}
		})
	}
}

// certSpec is the part of a cert-manager Certificate the tests look at.
type certSpec struct {
	dnsNames, ipAddresses []string
	issuer, issuerKind    string
}

func (r rendered) cert(t *testing.T, name string) certSpec {
	t.Helper()
	for _, o := range r.find("Certificate") {
		if o.GetName() != name {
			continue
		}
		var c certSpec
		c.dnsNames, _, _ = unstructured.NestedStringSlice(o.Object, "spec", "dnsNames")
		c.ipAddresses, _, _ = unstructured.NestedStringSlice(o.Object, "spec", "ipAddresses")
		c.issuer, _, _ = unstructured.NestedString(o.Object, "spec", "issuerRef", "name")
		c.issuerKind, _, _ = unstructured.NestedString(o.Object, "spec", "issuerRef", "kind")
		return c
	}
	t.Fatalf("got no Certificate %s", name)
	return certSpec{}
}

// verifyServing checks that certPEM is valid for host under the CA in caPEM.
func verifyServing(t *testing.T, caPEM, certPEM []byte, host string) {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatalf("got a CA bundle with no certificate")
	}
	block, _ := pem.Decode(certPEM)
	if block == nil {
		t.Fatalf("got a serving certificate that is not PEM")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: host}); err != nil {
		t.Errorf("serving certificate for %s does not verify under the CA: %v", host, err)
	}
}

func shippedWebhook(t *testing.T) admissionregistrationv1.MutatingWebhookConfiguration {
	t.Helper()
	root, _ := testenv.ModuleRoot()
	b, err := os.ReadFile(filepath.Join(root, "deploy", "webhook", "mutatingwebhookconfiguration.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	if err := yaml.UnmarshalStrict(b, &mwc); err != nil {
		t.Fatal(err)
	}
	return mwc
}
