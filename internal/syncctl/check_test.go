package syncctl

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	"github.com/metaparticle-io/sync/internal/contract"
)

// Unit tests of syncctl check's injector checks where the API server would call a Service,
// which envtest's API server must never do: the objects the chart installs, in a fake clientset.
// The integration test runs the whole command against a real API server and injector, and the
// e2e runs it on the chart's install (docs/install.md's check step).

var checkNow = time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)

// testCert is a certificate and its key, signed by parent (self-signed when parent is nil).
type testCert struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCert(t *testing.T, cn string, ca bool, dns []string, notAfter time.Time, parent *testCert) *testCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    checkNow.Add(-time.Hour),
		NotAfter:     notAfter,
		DNSNames:     dns,
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	if ca {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage |= x509.KeyUsageCertSign
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}
	signer, signerKey := tmpl, key
	if parent != nil {
		signer, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCert{cert: c, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// install is the chart's objects for a Service-called injector: the webhook configuration, the
// Service, the Deployment behind it (ready replicas of 2) and its serving Secret.
func install(caBundle, servingPEM []byte, ready int32) []runtime.Object {
	const ns, name = "metaparticle-sync", "metaparticle-sync-injector"
	sel := map[string]string{"app.kubernetes.io/name": "metaparticle-sync", "app.kubernetes.io/component": "injector"}
	hooks := []admissionregistrationv1.MutatingWebhook{}
	for _, h := range []string{"inject" + contract.WebhookNameSuffix, "inject-namespace" + contract.WebhookNameSuffix} {
		hooks = append(hooks, admissionregistrationv1.MutatingWebhook{Name: h, ClientConfig: admissionregistrationv1.WebhookClientConfig{
			Service: &admissionregistrationv1.ServiceReference{Namespace: ns, Name: name, Path: ptr.To("/mutate-pods"), Port: ptr.To[int32](443)}, CABundle: caBundle,
		}})
	}
	return []runtime.Object{
		&admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: name}, Webhooks: hooks},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: corev1.ServiceSpec{Selector: sel}},
		&appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app.kubernetes.io/version": "0.1.0"}},
			Spec: appsv1.DeploymentSpec{Replicas: ptr.To[int32](2), Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: sel},
				Spec: corev1.PodSpec{
					Containers: []corev1.Container{{Name: "injector", Args: []string{"--port=9443", "--cert-dir=/tls"},
						VolumeMounts: []corev1.VolumeMount{{Name: "extra", MountPath: "/etc/extra"}, {Name: "tls", MountPath: "/tls/"}}}},
					Volumes: []corev1.Volume{
						{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
						// A Secret of the user's (extraVolumes), which does not exist: only the
						// one at --cert-dir is the serving certificate.
						{Name: "extra", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "not-there"}}},
						{Name: "tls", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: name + "-tls"}}},
					}},
			}},
			Status: appsv1.DeploymentStatus{ReadyReplicas: ready},
		},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-tls"}, Data: map[string][]byte{corev1.TLSCertKey: servingPEM}},
	}
}

// statusOf returns the status of the first result whose message contains what, or "absent".
func statusOf(r *CheckReport, what string) (string, CheckResult) {
	for _, res := range r.Results {
		if strings.Contains(res.Message, what) {
			return res.Status, res
		}
	}
	return "absent", CheckResult{}
}

func TestCheckServiceInstall(t *testing.T) {
	ca := newTestCert(t, "metaparticle-sync-ca", true, nil, checkNow.Add(10*365*24*time.Hour), nil)
	otherCA := newTestCert(t, "other-ca", true, nil, checkNow.Add(10*365*24*time.Hour), nil)
	host := "metaparticle-sync-injector.metaparticle-sync.svc"
	good := newTestCert(t, host, false, []string{host}, checkNow.Add(90*24*time.Hour), ca)
	wrongName := newTestCert(t, "injector", false, []string{"injector.default.svc"}, checkNow.Add(90*24*time.Hour), ca)
	expired := newTestCert(t, host, false, []string{host}, checkNow.Add(-time.Minute), ca)
	expiredCA := newTestCert(t, "old-ca", true, nil, checkNow.Add(-time.Minute), nil)
	rotating := append(append([]byte{}, expiredCA.pem...), ca.pem...)

	type want struct{ what, status, says string }
	tests := []struct {
		name    string
		objects []runtime.Object
		want    []want
		healthy bool // every check passes
	}{
		{
			name:    "healthy",
			objects: install(ca.pem, good.pem, 2),
			healthy: true,
			want: []want{
				{"webhook configuration metaparticle-sync-injector", CheckPassed, "inject.sync.metaparticle.io, inject-namespace.sync.metaparticle.io"},
				{"caBundle of inject.sync.metaparticle.io, inject-namespace.sync.metaparticle.io", CheckPassed, "1 CA certificate (CN=metaparticle-sync-ca)"},
				{"injector Deployment", CheckPassed, "2 of 2 replicas ready, release 0.1.0"},
				{"serving certificate", CheckPassed, "signed by the caBundle for " + host},
				{"a dry-run Pod annotated", CheckPassed, "gets the side-car sync:9.9.9 from injector release 9.9.9"},
			},
		},
		{
			name:    "caBundle of another CA",
			objects: install(otherCA.pem, good.pem, 2),
			want:    []want{{"serving certificate", CheckFailed, "not valid for the API server's call"}},
		},
		{
			name:    "serving certificate for another name",
			objects: install(ca.pem, wrongName.pem, 2),
			want:    []want{{"serving certificate", CheckFailed, "not valid for the API server's call to " + host}},
		},
		{
			name:    "expired serving certificate",
			objects: install(ca.pem, expired.pem, 2),
			want:    []want{{"serving certificate", CheckFailed, "expired"}},
		},
		{
			name:    "expired CA",
			objects: install(expiredCA.pem, good.pem, 2),
			want:    []want{{"caBundle", CheckFailed, "expired on"}, {"serving certificate", "absent", ""}},
		},
		{
			name:    "CA rotation: an expired CA next to the valid one",
			objects: install(rotating, good.pem, 2),
			want: []want{
				{"caBundle", CheckWarning, `1 valid CA certificate (CN=metaparticle-sync-ca), and CA certificate "old-ca" expired on`},
				{"serving certificate", CheckPassed, "signed by the caBundle"},
			},
		},
		{
			name:    "empty caBundle",
			objects: install(nil, good.pem, 2),
			want:    []want{{"caBundle", CheckFailed, "is empty"}},
		},
		{
			name:    "caBundle not PEM",
			objects: install([]byte("not a certificate"), good.pem, 2),
			want:    []want{{"caBundle", CheckFailed, "not a list of PEM certificates"}},
		},
		{
			name:    "no replica ready",
			objects: install(ca.pem, good.pem, 0),
			want:    []want{{"injector Deployment", CheckFailed, "0 of 2 replicas ready"}},
		},
		{
			name:    "one replica ready",
			objects: install(ca.pem, good.pem, 1),
			want:    []want{{"injector Deployment", CheckWarning, "1 of 2 replicas ready"}},
		},
		{
			name:    "no Secret",
			objects: install(ca.pem, good.pem, 2)[:3],
			want:    []want{{"Secret metaparticle-sync/metaparticle-sync-injector-tls", CheckFailed, "not found"}},
		},
		{
			name:    "no Service",
			objects: append(install(ca.pem, good.pem, 2)[:1:1], install(ca.pem, good.pem, 2)[2:]...),
			want:    []want{{"Service metaparticle-sync/metaparticle-sync-injector", CheckFailed, "not found"}},
		},
		{
			name:    "not installed",
			objects: install(ca.pem, good.pem, 2)[1:],
			want:    []want{{"no MutatingWebhookConfiguration", CheckFailed, "not installed"}, {"caBundle", "absent", ""}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCLI("syncctl", io.Discard, io.Discard, clocktesting.NewFakeClock(checkNow))
			cs := fake.NewClientset(tt.objects...)
			// The fake has no admission: inject the dry-run Pod as the injector would mark it.
			cs.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
				p := a.(k8stesting.CreateAction).GetObject().(*corev1.Pod).DeepCopy()
				p.Labels = map[string]string{contract.LabelInjected: "true"}
				p.Annotations[contract.AnnotationInjectedImage] = "sync:9.9.9"
				p.Annotations[contract.AnnotationInjectorVersion] = "9.9.9"
				return true, p, nil
			})
			k := &checker{cli: c, cs: cs, ns: "shop", warnings: &warningRecorder{}}
			if err := k.injector(context.Background()); err != nil {
				t.Fatalf("got error %v; want the checks' results", err)
			}
			if tt.healthy && (k.report.Failed != 0 || k.report.Warnings != 0) {
				t.Errorf("got %d failed, %d warnings; want every check passed: %+v", k.report.Failed, k.report.Warnings, k.report.Results)
			}
			for _, w := range tt.want {
				got, res := statusOf(&k.report, w.what)
				if got != w.status || !strings.Contains(res.Message, w.says) {
					var all bytes.Buffer
					_ = printCheckReport(&all, formatTable, &k.report)
					t.Errorf("check %q: got %s %q; want %s, saying %q. All:\n%s", w.what, got, res.Message, w.status, w.says, all.String())
				}
			}
		})
	}
}

func TestParseCertificates(t *testing.T) {
	ca := newTestCert(t, "ca", true, nil, checkNow.Add(time.Hour), nil)
	key := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1}})
	tests := []struct {
		name    string
		data    []byte
		want    int
		wantErr string
	}{
		{"one", ca.pem, 1, ""},
		{"two, with blank lines", append(append(append([]byte{}, ca.pem...), "\n\n"...), ca.pem...), 2, ""},
		{"empty", nil, 0, "no certificate"},
		{"a key", key, 0, `type "PRIVATE KEY"`},
		{"trailing garbage", append(append([]byte{}, ca.pem...), "garbage"...), 0, "not PEM"},
		{"bad DER", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2}}), 0, "x509"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseCertificates(tt.data)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %d certificates, error %v; want an error with %q", len(got), err, tt.wantErr)
				}
				return
			}
			if err != nil || len(got) != tt.want {
				t.Fatalf("got %d certificates, error %v; want %d", len(got), err, tt.want)
			}
		})
	}
}

func TestOwner(t *testing.T) {
	ctrl := func(kind, name string) []metav1.OwnerReference {
		return []metav1.OwnerReference{{Kind: kind, Name: name, Controller: ptr.To(true)}}
	}
	tests := []struct {
		name string
		pod  corev1.Pod
		want string
	}{
		{"Deployment's", corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-7d4b9-x", OwnerReferences: ctrl("ReplicaSet", "web-7d4b9"),
			Labels: map[string]string{appsv1.DefaultDeploymentUniqueLabelKey: "7d4b9"}}}, "shop deployment/web"},
		{"bare ReplicaSet's", corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "rs-x", OwnerReferences: ctrl("ReplicaSet", "rs")}}, "shop replicaset/rs"},
		{"StatefulSet's", corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "db", Name: "pg-0", OwnerReferences: ctrl("StatefulSet", "pg")}}, "db statefulset/pg"},
		{"no controller", corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "one"}}, "shop pod/one"},
	}
	for _, tt := range tests {
		if got := owner(tt.pod); got != tt.want {
			t.Errorf("%s: got %q; want %q", tt.name, got, tt.want)
		}
	}
}

func TestSidecarVersions(t *testing.T) {
	pod := func(name, version, image string) corev1.Pod {
		return corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name,
			Annotations: map[string]string{contract.AnnotationInjectorVersion: version, contract.AnnotationInjectedImage: image}}}
	}
	tests := []struct {
		name           string
		version, image string
		pods           []corev1.Pod
		status, says   string
	}{
		{"none", "0.2.0", "sync:0.2.0", nil, CheckPassed, "no Pod of namespace shop runs a side-car"},
		{"all current", "0.2.0", "sync:0.2.0", []corev1.Pod{pod("a", "0.2.0", "sync:0.2.0")}, CheckPassed, "the 1 side-car Pod of namespace shop run the injector's side-car"},
		{"older release", "0.2.0", "sync:0.2.0", []corev1.Pod{pod("a", "0.2.0", "sync:0.2.0"), pod("b", "0.1.0", "sync:0.1.0")}, CheckWarning, "1 of 2 side-car Pods"},
		{"other image, same release", "0.2.0", "sync:0.2.0", []corev1.Pod{pod("a", "0.2.0", "mirror/sync:0.2.0")}, CheckWarning, "1 of 1"},
		{"injector unknown", "", "", []corev1.Pod{pod("a", "0.2.0", "sync:0.2.0")}, CheckWarning, "not checked"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := &checker{cli: newCLI("syncctl", io.Discard, io.Discard, clocktesting.NewFakeClock(checkNow)), ns: "shop", injectorVersion: tt.version, sidecarImage: tt.image}
			k.sidecarVersions(tt.pods)
			if len(k.report.Results) != 1 {
				t.Fatalf("got %d results; want 1", len(k.report.Results))
			}
			got := k.report.Results[0]
			if got.Status != tt.status || !strings.Contains(got.Message, tt.says) {
				t.Errorf("got %s %q; want %s, saying %q", got.Status, got.Message, tt.status, tt.says)
			}
			if tt.status == CheckWarning && tt.version != "" && !strings.Contains(got.Hint, "shop pod/") {
				t.Errorf("got hint %q; want the Pods' owners", got.Hint)
			}
		})
	}
}

func TestPrintCheckReport(t *testing.T) {
	var r CheckReport
	r.add(sectionInjector, CheckPassed, "webhook configuration x has the webhooks y", "")
	r.add(sectionInjector, CheckFailed, "caBundle of y is empty", "fix it\nor else")
	r.add("namespace shop", CheckWarning, "not checked: z", "")
	var out bytes.Buffer
	if err := printCheckReport(&out, formatTable, &r); err != nil {
		t.Fatal(err)
	}
	want := `injector
--------
√ webhook configuration x has the webhooks y
× caBundle of y is empty
    fix it
    or else

namespace shop
--------------
‼ not checked: z

Status: 1 passed, 1 warning, 1 failed
`
	if out.String() != want {
		t.Errorf("got\n%s\nwant\n%s", out.String(), want)
	}
}
