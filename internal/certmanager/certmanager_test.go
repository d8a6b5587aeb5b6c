package certmanager_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/metaparticle-io/sync/internal/certmanager"
	"github.com/metaparticle-io/sync/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env) }

// TestIssuanceAndInjection proves real cert-manager behaviour on the envtest API server:
// self-signed Issuer -> CA Certificate -> CA Issuer -> serving Certificate with a Secret, and
// cainjector filling a MutatingWebhookConfiguration's caBundle from it; then re-issuance.
func TestIssuanceAndInjection(t *testing.T) {
	ns := env.Namespace(t)
	cm := certmanager.StartT(t, env.Config, certmanager.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cl := env.Client

	start := time.Now()
	objs := []client.Object{
		certmanager.Object(certmanager.IssuerGVK, ns, "selfsigned", map[string]any{"selfSigned": map[string]any{}}),
		certmanager.Object(certmanager.CertificateGVK, ns, "ca", map[string]any{
			"isCA":       true,
			"commonName": "metaparticle test CA",
			"secretName": "ca-tls",
			"privateKey": map[string]any{"algorithm": "ECDSA", "size": int64(256)},
			"issuerRef":  map[string]any{"kind": "Issuer", "name": "selfsigned"},
		}),
		certmanager.Object(certmanager.IssuerGVK, ns, "ca", map[string]any{"ca": map[string]any{"secretName": "ca-tls"}}),
		certmanager.Object(certmanager.CertificateGVK, ns, "serving", map[string]any{
			"secretName": "serving-tls",
			"dnsNames":   []any{"svc." + ns + ".svc", "svc." + ns + ".svc.cluster.local"},
			"usages":     []any{"server auth"},
			"privateKey": map[string]any{"algorithm": "ECDSA", "size": int64(256)},
			"issuerRef":  map[string]any{"kind": "Issuer", "name": "ca"},
		}),
	}
	for _, o := range objs {
		if err := cl.Create(ctx, o); err != nil {
			t.Fatalf("creating %s %s: %v", o.GetObjectKind().GroupVersionKind().Kind, o.GetName(), err)
		}
	}
	if _, err := cm.WaitReady(ctx, cl, certmanager.CertificateGVK, ns, "serving"); err != nil {
		t.Fatal(err)
	}
	t.Logf("serving Certificate Ready %s after creating the Issuers and Certificates", time.Since(start).Round(time.Millisecond))
	for _, o := range []struct{ kind, name string }{{"Issuer", "selfsigned"}, {"Issuer", "ca"}, {"Certificate", "ca"}} {
		gvk := certmanager.IssuerGVK
		if o.kind == "Certificate" {
			gvk = certmanager.CertificateGVK
		}
		if _, err := cm.WaitReady(ctx, cl, gvk, ns, o.name); err != nil {
			t.Fatal(err)
		}
	}

	secret := getSecret(ctx, t, ns, "serving-tls")
	checkServingSecret(t, secret, "svc."+ns+".svc")
	caSecret := getSecret(ctx, t, ns, "ca-tls")
	if !bytes.Equal(secret.Data["ca.crt"], caSecret.Data["tls.crt"]) {
		t.Errorf("serving Secret's ca.crt is not the CA Certificate's tls.crt")
	}

	// cainjector: a webhook configuration annotated with the serving Certificate gets its CA.
	mwc := &admissionv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{
			Name:        ns + "-inject",
			Annotations: map[string]string{certmanager.InjectCAFromAnnotation: ns + "/serving"},
		},
		Webhooks: []admissionv1.MutatingWebhook{{
			Name: "inject.metaparticle.test",
			ClientConfig: admissionv1.WebhookClientConfig{
				Service: &admissionv1.ServiceReference{Namespace: ns, Name: "svc", Path: ptr.To("/mutate")},
			},
			// Matches nothing that exists, so the API server never calls it.
			Rules: []admissionv1.RuleWithOperations{{
				Operations: []admissionv1.OperationType{admissionv1.Create},
				Rule:       admissionv1.Rule{APIGroups: []string{"nothing.metaparticle.test"}, APIVersions: []string{"v1"}, Resources: []string{"nothings"}},
			}},
			FailurePolicy:           ptr.To(admissionv1.Ignore),
			SideEffects:             ptr.To(admissionv1.SideEffectClassNone),
			AdmissionReviewVersions: []string{"v1"},
		}},
	}
	if err := cl.Create(ctx, mwc); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), mwc) })
	waitCABundle(ctx, t, cm, mwc.Name, secret.Data["ca.crt"])

	// Re-issuance, three ways. Each must produce a new certificate (and, with cert-manager's
	// default rotationPolicy Always, a new key) signed by the same CA.
	reissue := func(t *testing.T, cert, secretName string, trigger func() error) {
		before := getSecret(ctx, t, ns, secretName)
		start := time.Now()
		if err := trigger(); err != nil {
			t.Fatal(err)
		}
		after := waitSecretChanged(ctx, t, cm, ns, secretName, before.Data["tls.crt"])
		if _, err := cm.WaitReady(ctx, cl, certmanager.CertificateGVK, ns, cert); err != nil {
			t.Fatal(err)
		}
		t.Logf("new certificate after %s", time.Since(start).Round(time.Millisecond))
		checkServingSecret(t, after, "svc."+ns+".svc")
		if bytes.Equal(before.Data["tls.key"], after.Data["tls.key"]) {
			t.Errorf("private key not rotated")
		}
	}
	t.Run("manual trigger", func(t *testing.T) {
		reissue(t, "serving", "serving-tls", func() error { return certmanager.TriggerRenewal(ctx, cl, ns, "serving") })
		waitCABundle(ctx, t, cm, mwc.Name, getSecret(ctx, t, ns, "serving-tls").Data["ca.crt"])
	})
	t.Run("secret deleted", func(t *testing.T) {
		reissue(t, "serving", "serving-tls", func() error {
			return cl.Delete(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "serving-tls"}})
		})
		waitCABundle(ctx, t, cm, mwc.Name, getSecret(ctx, t, ns, "serving-tls").Data["ca.crt"])
	})
	t.Run("CA rotated", func(t *testing.T) {
		// Renewing the CA gives it a new key and certificate; the next serving certificate is
		// signed by it and carries it as ca.crt, and cainjector adds it to the caBundle.
		oldCA := getSecret(ctx, t, ns, "ca-tls").Data["tls.crt"]
		if err := certmanager.TriggerRenewal(ctx, cl, ns, "ca"); err != nil {
			t.Fatal(err)
		}
		newCA := waitSecretChanged(ctx, t, cm, ns, "ca-tls", oldCA).Data["tls.crt"]
		if _, err := cm.WaitReady(ctx, cl, certmanager.CertificateGVK, ns, "ca"); err != nil {
			t.Fatal(err)
		}
		reissue(t, "serving", "serving-tls", func() error { return certmanager.TriggerRenewal(ctx, cl, ns, "serving") })
		serving := getSecret(ctx, t, ns, "serving-tls")
		if !bytes.Equal(serving.Data["ca.crt"], newCA) {
			t.Fatal("re-issued serving Secret's ca.crt is not the renewed CA")
		}
		// cainjector merges (its CAInjectorMerging feature, GA): the old CA stays in the bundle
		// next to the new one until it expires, so clients of either certificate keep working.
		waitCABundle(ctx, t, cm, mwc.Name, oldCA, newCA)
	})
	t.Run("renewal time reached", func(t *testing.T) {
		// The shortest lifetime cert-manager's webhook would accept (1h), renewed 10s after
		// issuance: cert-manager renews it by itself, every 10s, until it is deleted.
		short := certmanager.Object(certmanager.CertificateGVK, ns, "short", map[string]any{
			"secretName":  "short-tls",
			"duration":    "1h",
			"renewBefore": "59m50s",
			"dnsNames":    []any{"svc." + ns + ".svc"},
			"privateKey":  map[string]any{"algorithm": "ECDSA", "size": int64(256)},
			"issuerRef":   map[string]any{"kind": "Issuer", "name": "ca"},
		})
		if err := cl.Create(ctx, short); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = cl.Delete(context.Background(), short) }()
		if _, err := cm.WaitReady(ctx, cl, certmanager.CertificateGVK, ns, "short"); err != nil {
			t.Fatal(err)
		}
		reissue(t, "short", "short-tls", func() error { return nil })
	})
}

// TestNamespaceScopeWithLeaderElection runs the controllers scoped to one namespace and behind
// leader election: a Certificate there is issued, one in another namespace is left alone.
func TestNamespaceScopeWithLeaderElection(t *testing.T) {
	ns, other := env.Namespace(t), env.Namespace(t)
	cm := certmanager.StartT(t, env.Config, certmanager.Options{NamespaceScope: ns, Args: []string{"--leader-elect"}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for _, n := range []string{ns, other} {
		for _, o := range []client.Object{
			certmanager.Object(certmanager.IssuerGVK, n, "selfsigned", map[string]any{"selfSigned": map[string]any{}}),
			certmanager.Object(certmanager.CertificateGVK, n, "cert", map[string]any{
				"secretName": "cert-tls",
				"dnsNames":   []any{"svc." + n + ".svc"},
				"issuerRef":  map[string]any{"kind": "Issuer", "name": "selfsigned"},
			}),
		} {
			if err := env.Client.Create(ctx, o); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := cm.WaitReady(ctx, env.Client, certmanager.CertificateGVK, ns, "cert"); err != nil {
		t.Fatal(err)
	}
	u := certmanager.Object(certmanager.CertificateGVK, other, "cert", nil)
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(u), u); err != nil {
		t.Fatal(err)
	}
	if _, found, _ := unstructured.NestedSlice(u.Object, "status", "conditions"); found {
		t.Errorf("Certificate outside the scoped namespace got a status: %v", u.Object["status"])
	}
	lease := &coordinationv1.Lease{}
	key := client.ObjectKey{Namespace: certmanager.DefaultClusterResourceNamespace, Name: "cert-manager-test-controllers"}
	if err := env.Client.Get(ctx, key, lease); err != nil {
		t.Fatalf("leader-election Lease: %v", err)
	}
	if lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity == "" {
		t.Errorf("Lease %s has no holder", key)
	}
}

func getSecret(ctx context.Context, t testing.TB, ns, name string) *corev1.Secret {
	t.Helper()
	s := &corev1.Secret{}
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, s); err != nil {
		t.Fatal(err)
	}
	return s
}

// checkServingSecret checks that the Secret holds a key pair for dnsName signed by its ca.crt.
func checkServingSecret(t testing.TB, s *corev1.Secret, dnsName string) {
	t.Helper()
	for _, k := range []string{"tls.crt", "tls.key", "ca.crt"} {
		if len(s.Data[k]) == 0 {
			t.Fatalf("Secret %s has no %s", s.Name, k)
		}
	}
	block, _ := pem.Decode(s.Data["tls.crt"])
	if block == nil {
		t.Fatal("tls.crt is not PEM")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(s.Data["ca.crt"]) {
		t.Fatal("ca.crt holds no certificate")
	}
	if _, err := cert.Verify(x509.VerifyOptions{DNSName: dnsName, Roots: roots}); err != nil {
		t.Errorf("tls.crt does not verify for %s against ca.crt: %v", dnsName, err)
	}
	if !slices.Contains(cert.DNSNames, dnsName) {
		t.Errorf("tls.crt DNS names %v lack %s", cert.DNSNames, dnsName)
	}
}

// waitCABundle waits until the webhook's caBundle holds exactly the certificates of want (in any
// order).
func waitCABundle(ctx context.Context, t testing.TB, cm *certmanager.Controllers, name string, want ...[]byte) {
	t.Helper()
	start := time.Now()
	var wantCerts []string
	for _, w := range want {
		wantCerts = append(wantCerts, pemCerts(t, w)...)
	}
	slices.Sort(wantCerts)
	var got []string
	err := poll(ctx, cm, func(ctx context.Context) (bool, error) {
		mwc := &admissionv1.MutatingWebhookConfiguration{}
		if err := env.Client.Get(ctx, client.ObjectKey{Name: name}, mwc); err != nil {
			return false, err
		}
		got = pemCerts(t, mwc.Webhooks[0].ClientConfig.CABundle)
		slices.Sort(got)
		return slices.Equal(got, wantCerts), nil
	})
	if err != nil {
		t.Fatalf("caBundle of %s never held the expected %d certificates (last: %d): %v", name, len(wantCerts), len(got), err)
	}
	t.Logf("caBundle injected after %s", time.Since(start).Round(time.Millisecond))
}

// pemCerts returns the DER of each certificate in a PEM bundle.
func pemCerts(t testing.TB, b []byte) []string {
	t.Helper()
	var out []string
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			return out
		}
		if block.Type == "CERTIFICATE" {
			out = append(out, string(block.Bytes))
		}
	}
}

func waitSecretChanged(ctx context.Context, t testing.TB, cm *certmanager.Controllers, ns, name string, old []byte) *corev1.Secret {
	t.Helper()
	s := &corev1.Secret{}
	err := poll(ctx, cm, func(ctx context.Context) (bool, error) {
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, s); err != nil {
			return false, client.IgnoreNotFound(err)
		}
		return len(s.Data["tls.crt"]) > 0 && !bytes.Equal(s.Data["tls.crt"], old), nil
	})
	if err != nil {
		t.Fatalf("Secret %s/%s not re-issued: %v", ns, name, err)
	}
	return s
}

// poll runs cond until it is true, ctx ends or the controllers exit.
func poll(ctx context.Context, cm *certmanager.Controllers, cond wait.ConditionWithContextFunc) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-cm.Exited():
			cancel()
		case <-ctx.Done():
		}
	}()
	err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, cond)
	select {
	case <-cm.Exited():
		return fmt.Errorf("cert-manager controllers exited; see %s", cm.LogPath)
	default:
		return err
	}
}

// TestWriteKubeconfig checks that the kubeconfig handed to the controllers round-trips the
// connection settings of a rest.Config like envtest's.
func TestWriteKubeconfig(t *testing.T) {
	in := &rest.Config{
		Host: "https://127.0.0.1:6443",
		TLSClientConfig: rest.TLSClientConfig{
			CAData: []byte("ca"), CertData: []byte("cert"), KeyData: []byte("key"), ServerName: "kubernetes",
		},
		BearerToken: "token",
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := certmanager.WriteKubeconfig(in, path); err != nil {
		t.Fatal(err)
	}
	out, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	if out.Host != in.Host || string(out.CAData) != "ca" || string(out.CertData) != "cert" ||
		string(out.KeyData) != "key" || out.ServerName != "kubernetes" || out.BearerToken != "token" {
		t.Errorf("round trip lost settings: got host %q ca %q cert %q key %q server name %q token %q",
			out.Host, out.CAData, out.CertData, out.KeyData, out.ServerName, out.BearerToken)
	}
}
