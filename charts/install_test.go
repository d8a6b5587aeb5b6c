package charts_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/metaparticle-io/sync/internal/certmanager"
	"github.com/metaparticle-io/sync/internal/testenv"
	"github.com/metaparticle-io/sync/webhook"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env) }

// TestIntegrationRenderedObjectsValidate dry-run creates every object the chart renders, for each
// ci values file, so the API server's own validation (and cert-manager's CRD schemas) judge them.
func TestIntegrationRenderedObjectsValidate(t *testing.T) {
	testenv.Require(t, env)
	ctx := context.Background()
	if err := installCertManagerCRDs(ctx); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{namespace, "shop"} {
		err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"default-values.yaml", "no-cert-manager-values.yaml", "existing-issuer-values.yaml", "url-values.yaml"} {
		objs := render(t, f)
		for _, o := range objs {
			if err := env.Client.Create(ctx, o.DeepCopy(), client.DryRunAll); err != nil {
				t.Errorf("%s: %s %s: got %v; want it valid", f, o.GetKind(), o.GetName(), err)
			}
		}
		t.Logf("%s: %d objects pass server-side validation", f, len(objs))
	}
}

func installCertManagerCRDs(ctx context.Context) error {
	_, crds, err := certmanager.Build(ctx, os.Stderr)
	if err != nil {
		return err
	}
	return certmanager.InstallCRDs(ctx, env.Config, crds)
}

// TestIntegrationHelmInstallWithCertManager installs the chart with real cert-manager controllers,
// in URL mode so that the API server calls an injector this test runs on 127.0.0.1 (an envtest API
// server has no Service network): the serving Certificate becomes Ready, cainjector puts the CA
// into the webhook configuration, the API server trusts the injector's certificate and mutates a
// Pod through it; then helm upgrade and helm uninstall.
func TestIntegrationHelmInstallWithCertManager(t *testing.T) {
	testenv.Require(t, env)
	ctx := context.Background()
	cm := certmanager.StartT(t, env.Config, certmanager.Options{})
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := certmanager.WriteKubeconfig(env.Config, kubeconfig); err != nil {
		t.Fatal(err)
	}
	ns := env.Namespace(t)
	port := freePort(t)
	url := fmt.Sprintf("https://127.0.0.1:%d%s", port, webhook.Path)
	helmArgs := func(verb string, extra ...string) []string {
		args := []string{verb, release, chartDir(t), "--kubeconfig", kubeconfig, "--namespace", ns,
			"--set", "webhook.url=" + url, "--set", "replicaCount=1", "--set", "podDisruptionBudget.enabled=false"}
		return append(args, extra...)
	}
	uninstalled := false
	t.Cleanup(func() {
		if !uninstalled {
			_, _ = runHelm(t, "uninstall", release, "--kubeconfig", kubeconfig, "--namespace", ns)
		}
	})

	start := time.Now()
	if out, err := runHelm(t, helmArgs("install")...); err != nil {
		t.Fatalf("helm install: %v\n%s", err, out)
	}
	injector := release + "-metaparticle-sync-injector"
	waitCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if _, err := cm.WaitReady(waitCtx, env.Client, certmanager.CertificateGVK, ns, injector+"-serving"); err != nil {
		t.Fatalf("serving Certificate: %v", err)
	}
	ready := time.Since(start)

	var secret corev1.Secret
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: injector + "-tls"}, &secret); err != nil {
		t.Fatal(err)
	}
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	for {
		if err := env.Client.Get(ctx, client.ObjectKey{Name: injector}, &mwc); err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(mwc.Webhooks[0].ClientConfig.CABundle, secret.Data["ca.crt"]) {
			break
		}
		if waitCtx.Err() != nil {
			t.Fatalf("got caBundle %q; want the serving Secret's ca.crt (cainjector)", mwc.Webhooks[0].ClientConfig.CABundle)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("helm install -> serving Certificate Ready in %s, caBundle injected in %s", ready.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	verifyServing(t, secret.Data["ca.crt"], secret.Data["tls.crt"], "127.0.0.1")

	// The API server calls the injector with cert-manager's certificate and trusts it.
	serveInjector(t, port, secret)
	appNS := env.Namespace(t)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: appNS, Annotations: map[string]string{webhook.AnnotationInject: "true"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "example.test/app:1"}}},
	}
	if err := env.Client.Create(ctx, pod); err != nil {
		t.Fatalf("create an opted-in Pod through the installed webhook: %v", err)
	}
	if pod.Annotations[webhook.AnnotationStatus] != webhook.StatusInjected || len(pod.Spec.InitContainers) != 1 {
		t.Fatalf("got Pod annotations %v, %d init containers; want it injected", pod.Annotations, len(pod.Spec.InitContainers))
	}
	if got, want := pod.Spec.InitContainers[0].Image, "docker.io/metaparticle/sync-elector:0.1.0"; got != want {
		t.Errorf("got side-car image %q; want the chart's %q", got, want)
	}

	if out, err := runHelm(t, helmArgs("upgrade", "--set", "sidecar.logLevel=debug")...); err != nil {
		t.Fatalf("helm upgrade: %v\n%s", err, out)
	}
	var d unstructured.Unstructured
	d.SetGroupVersionKind(schema.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"})
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: injector}, &d); err != nil {
		t.Fatal(err)
	}
	args, _, _ := unstructured.NestedSlice(d.Object, "spec", "template", "spec", "containers")
	if !strings.Contains(fmt.Sprint(args), "--sidecar-log-level=debug") {
		t.Errorf("got Deployment containers %v after upgrade; want --sidecar-log-level=debug", args)
	}

	if out, err := runHelm(t, "uninstall", release, "--kubeconfig", kubeconfig, "--namespace", ns); err != nil {
		t.Fatalf("helm uninstall: %v\n%s", err, out)
	}
	uninstalled = true
	left := leftovers(t, ns)
	// cert-manager's Secrets are cert-manager's, not the chart's (see the chart README).
	want := []string{"Secret/" + release + "-metaparticle-sync-ca", "Secret/" + injector + "-tls"}
	if fmt.Sprint(left) != fmt.Sprint(want) {
		t.Errorf("got leftovers %v after helm uninstall; want only cert-manager's Secrets %v", left, want)
	}
}

// leftovers lists what remains in ns, and cluster-wide with the release's label.
func leftovers(t *testing.T, ns string) []string {
	t.Helper()
	ctx := context.Background()
	var out []string
	for _, gvk := range []schema.GroupVersionKind{
		{Group: "apps", Version: "v1", Kind: "DeploymentList"},
		{Version: "v1", Kind: "ServiceList"},
		{Version: "v1", Kind: "SecretList"},
		{Group: "policy", Version: "v1", Kind: "PodDisruptionBudgetList"},
		{Group: "cert-manager.io", Version: "v1", Kind: "IssuerList"},
		{Group: "cert-manager.io", Version: "v1", Kind: "CertificateList"},
		{Group: "rbac.authorization.k8s.io", Version: "v1", Kind: "ClusterRoleList"},
		{Group: "rbac.authorization.k8s.io", Version: "v1", Kind: "ClusterRoleBindingList"},
		{Group: "admissionregistration.k8s.io", Version: "v1", Kind: "MutatingWebhookConfigurationList"},
	} {
		var list unstructured.UnstructuredList
		list.SetGroupVersionKind(gvk)
		opts := []client.ListOption{client.InNamespace(ns)}
		if gvk.Kind == "ClusterRoleList" || gvk.Kind == "ClusterRoleBindingList" || gvk.Kind == "MutatingWebhookConfigurationList" {
			opts = []client.ListOption{client.MatchingLabels{"app.kubernetes.io/instance": release}}
		}
		if err := env.Client.List(ctx, &list, opts...); err != nil {
			t.Fatalf("list %s: %v", gvk.Kind, err)
		}
		for _, o := range list.Items {
			if o.GetKind() == "Secret" && o.GetName() == "default-token" {
				continue
			}
			out = append(out, strings.TrimSuffix(gvk.Kind, "List")+"/"+o.GetName())
		}
	}
	return out
}

// serveInjector runs the injector's webhook on 127.0.0.1:port with the chart's serving Secret.
func serveInjector(t *testing.T, port int, secret corev1.Secret) {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"tls.crt", "tls.key"} {
		if err := os.WriteFile(filepath.Join(dir, f), secret.Data[f], 0o600); err != nil {
			t.Fatal(err)
		}
	}
	in, err := webhook.NewInjector(webhook.DefaultConfig("docker.io/metaparticle/sync-elector:0.1.0"), nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := webhook.NewServer(webhook.ServerOptions{Host: "127.0.0.1", Port: port, CertDir: dir})
	srv.Register(webhook.Path, webhook.NewWebhook(in))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Start(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(30 * time.Second)
	for srv.StartedChecker()(&http.Request{}) != nil {
		if time.Now().After(deadline) {
			t.Fatal("injector did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, p, _ := net.SplitHostPort(l.Addr().String())
	n, _ := strconv.Atoi(p)
	return n
}
