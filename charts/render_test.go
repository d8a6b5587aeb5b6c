// Package charts_test renders the Helm chart with helm (built by hack/control-plane.sh) and checks
// the objects it produces; the integration tests install it on a real API server.
package charts_test

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
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
	if c.Image != "metaparticle/sync-injector:0.1.0" {
		t.Errorf("got injector image %q; want the appVersion tag", c.Image)
	}
	for _, want := range []string{
		"--sidecar-image=metaparticle/sync-elector:0.1.0", "--sidecar-mode=native", "--sidecar-port=13131",
		"--lease-duration=15s", "--renew-deadline=10s", "--renew-period=5s", "--retry-period=1s",
		"--sidecar-cpu-request=10m", "--sidecar-memory-limit=64Mi", "--cert-dir=/tls", "--enable-http2=false",
		"--sidecar-cluster-role=" + release + "-metaparticle-sync-sidecar",
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
	wh := mwc.Webhooks[0]
	if wh.ClientConfig.Service == nil || wh.ClientConfig.Service.Name != injector || wh.ClientConfig.Service.Namespace != namespace ||
		ptr.Deref(wh.ClientConfig.Service.Path, "") != webhook.Path {
		t.Errorf("got clientConfig %+v; want Service %s/%s path %s", wh.ClientConfig, namespace, injector, webhook.Path)
	}
	if len(wh.ClientConfig.CABundle) != 0 {
		t.Errorf("got a caBundle; want it left to cert-manager's cainjector")
	}
	excluded := wh.NamespaceSelector.MatchExpressions[0].Values
	for _, ns := range []string{"kube-system", "kube-public", "kube-node-lease", namespace} {
		if !slices.Contains(excluded, ns) {
			t.Errorf("got excluded namespaces %v; want %s among them", excluded, ns)
		}
	}

	// The chart's webhook is the one in deploy/webhook that the webhook package's integration
	// test proves against the API server, but for names and namespaces.
	shipped := shippedWebhook(t)
	rule := func(w admissionregistrationv1.MutatingWebhook) admissionregistrationv1.MutatingWebhook {
		w.ClientConfig = admissionregistrationv1.WebhookClientConfig{}
		w.NamespaceSelector = nil
		return w
	}
	if !equality.Semantic.DeepEqual(rule(wh), rule(shipped.Webhooks[0])) {
		t.Errorf("got chart webhook\n%+v\nwant deploy/webhook's\n%+v", rule(wh), rule(shipped.Webhooks[0]))
	}

	var role rbacv1.ClusterRole
	r.one(t, "ClusterRole", release+"-metaparticle-sync-sidecar", &role)
	if len(role.Rules) != 1 || !slices.Equal(role.Rules[0].Verbs, webhook.SidecarLeaseVerbs) ||
		!slices.Equal(role.Rules[0].Resources, []string{"leases"}) {
		t.Errorf("got side-car rules %+v; want exactly %v on leases", role.Rules, webhook.SidecarLeaseVerbs)
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
	cc := mwc.Webhooks[0].ClientConfig
	if cc.Service != nil || ptr.Deref(cc.URL, "") != "https://127.0.0.1:9443/mutate-pods" {
		t.Errorf("got clientConfig %+v; want the URL and no Service", cc)
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
