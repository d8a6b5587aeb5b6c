package syncctl_test

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/internal/syncctl"
	"github.com/metaparticle-io/sync/internal/version"
	"github.com/metaparticle-io/sync/webhook"
)

// checkImage is the side-car image the test's injector injects.
const checkImage = "example.test/metaparticle/sync-elector:check"

var startInjectorOnce sync.Once

// startInjector serves the injector (package webhook, as cmd/injector runs it, with its RBAC
// check) at the address where the API server calls the shipped webhook configuration.
func startInjector(t *testing.T) {
	t.Helper()
	var err error
	startInjectorOnce.Do(func() {
		var in *webhook.Injector
		in, err = webhook.NewInjector(webhook.DefaultConfig(checkImage), webhook.NewAccessChecker(env.Clientset.AuthorizationV1().SubjectAccessReviews(), 0, nil))
		if err != nil {
			return
		}
		err = env.ServeWebhooks(context.Background(), map[string]http.Handler{
			webhook.Path:          webhook.NewWebhook(in),
			webhook.NamespacePath: webhook.NewWebhook(in.ForOptedInNamespaces()),
		})
	})
	if err != nil {
		t.Fatal(err)
	}
}

// runCheck runs syncctl check with args and -o json, and returns its exit code and report.
func runCheck(t *testing.T, args ...string) (int, syncctl.CheckReport) {
	t.Helper()
	r := cli(t, append([]string{"check", "-o", "json"}, args...)...)
	var report syncctl.CheckReport
	if err := json.Unmarshal([]byte(r.stdout), &report); err != nil {
		t.Fatalf("check %v: got exit %d, stdout %q, stderr %q: %v", args, r.code, r.stdout, r.stderr, err)
	}
	if (r.code == 1) != (report.Failed > 0) || (r.code != 0 && r.code != 1) {
		t.Fatalf("check %v: got exit %d with %d failed checks; want 1 exactly when a check failed", args, r.code, report.Failed)
	}
	t.Logf("check %v: exit %d, %d passed, %d warnings, %d failed", args, r.code, report.Passed, report.Warnings, report.Failed)
	return r.code, report
}

// findCheck returns the first check whose message has what.
func findCheck(report syncctl.CheckReport, what string) (syncctl.CheckResult, bool) {
	for _, r := range report.Results {
		if strings.Contains(r.Message, what) {
			return r, true
		}
	}
	return syncctl.CheckResult{}, false
}

// expect is one check a scenario must report: the message has what, with this status, and the
// message or hint has says.
type expect struct{ what, status, says string }

func expectChecks(t *testing.T, report syncctl.CheckReport, want []expect) {
	t.Helper()
	for _, w := range want {
		got, ok := findCheck(report, w.what)
		if !ok || got.Status != w.status || !strings.Contains(got.Message+"\n"+got.Hint, w.says) {
			t.Errorf("check %q: got %+v (found %v); want %s, saying %q\nall: %+v", w.what, got, ok, w.status, w.says, report.Results)
		}
	}
}

// patchWebhooks changes the injector's webhooks with change until the test ends.
func patchWebhooks(ctx context.Context, t *testing.T, change func(*admissionregistrationv1.MutatingWebhook)) {
	t.Helper()
	mwcs := env.Clientset.AdmissionregistrationV1().MutatingWebhookConfigurations()
	orig, err := mwcs.Get(ctx, "metaparticle-sync-injector", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	broken := orig.DeepCopy()
	for i := range broken.Webhooks {
		change(&broken.Webhooks[i])
	}
	if _, err := mwcs.Update(ctx, broken, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { restoreWebhooks(t, orig) })
}

// restoreWebhooks puts orig back, created again if it was deleted.
func restoreWebhooks(t *testing.T, orig *admissionregistrationv1.MutatingWebhookConfiguration) {
	t.Helper()
	ctx := context.Background()
	mwcs := env.Clientset.AdmissionregistrationV1().MutatingWebhookConfigurations()
	cur, err := mwcs.Get(ctx, orig.Name, metav1.GetOptions{})
	if err != nil {
		again := orig.DeepCopy()
		again.ResourceVersion = ""
		if _, err := mwcs.Create(ctx, again, metav1.CreateOptions{}); err != nil {
			t.Errorf("creating the webhook configuration again: %v", err)
		}
		return
	}
	cur.Webhooks = orig.Webhooks
	if _, err := mwcs.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Errorf("restoring the webhook configuration: %v", err)
	}
}

// TestIntegrationCheck: syncctl check on a real API server that calls a real injector (by URL
// on 127.0.0.1, as envtest registers it), healthy and then broken in each way the command must
// see. The Service-called install of the chart is checked by the e2e (docs/install.md's check
// step) and, for its certificates, by TestCheckServiceInstall.
func TestIntegrationCheck(t *testing.T) {
	ns := env.Namespace(t)
	ctx := testCtx(t)
	startInjector(t)

	rbac := env.Clientset.RbacV1()
	if _, err := rbac.ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: contract.SidecarClusterRole},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: contract.SidecarLeaseVerbs}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = rbac.ClusterRoles().Delete(context.Background(), contract.SidecarClusterRole, metav1.DeleteOptions{})
	})
	for _, sa := range []string{"default", "app"} {
		if _, err := rbac.RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: sa + "-metaparticle-sync"},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: contract.SidecarClusterRole},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: sa, Namespace: ns}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("healthy", func(t *testing.T) {
		code, report := runCheck(t, "-n", ns)
		if code != 0 || report.Failed != 0 || report.Warnings != 0 {
			t.Errorf("got exit %d, %d failed, %d warnings; want a clean pass: %+v", code, report.Failed, report.Warnings, report.Results)
		}
		expectChecks(t, report, []expect{
			{"webhook configuration metaparticle-sync-injector", syncctl.CheckPassed, "inject.sync.metaparticle.io, inject-namespace.sync.metaparticle.io"},
			{"caBundle of inject.sync.metaparticle.io, inject-namespace.sync.metaparticle.io", syncctl.CheckPassed, "1 CA certificate"},
			{"serves a certificate signed by the caBundle for 127.0.0.1", syncctl.CheckPassed, "https://127.0.0.1:"},
			{"a dry-run Pod annotated", syncctl.CheckPassed, "gets the side-car " + checkImage + " from injector release " + version.Version},
			{"service account " + ns + "/default", syncctl.CheckPassed, "may list, watch, create, update, delete leases"},
			{"no Pod of namespace " + ns + " runs a side-car", syncctl.CheckPassed, ""},
		})
		// The dry run stored nothing.
		pods, err := env.Clientset.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil || len(pods.Items) != 0 {
			t.Errorf("got %d Pods in %s, %v; want none: a dry run is never stored", len(pods.Items), ns, err)
		}
		// The text form says the same, one line per check and a summary.
		text := cli(t, "check", "-n", ns).ok(t, "check")
		if !strings.Contains(text, "\n√ a dry-run Pod annotated") || !strings.HasSuffix(text, "Status: "+strconv.Itoa(report.Passed)+" passed, 0 warnings, 0 failed\n") {
			t.Errorf("check: got\n%s\nwant a √ line per check and the summary", text)
		}
	})

	t.Run("service accounts and old side-cars", func(t *testing.T) {
		pods := env.Clientset.CoreV1().Pods(ns)
		for _, p := range []struct{ name, sa, version, image string }{
			{"current", "app", version.Version, checkImage},
			{"old", "app", "0.0.1", "example.test/metaparticle/sync-elector:0.0.1"},
			{"unbound", "nobody", version.Version, checkImage},
		} {
			if _, err := pods.Create(ctx, &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: p.name, Labels: map[string]string{contract.LabelInjected: "true"},
					Annotations: map[string]string{contract.AnnotationInjectorVersion: p.version, contract.AnnotationInjectedImage: p.image}},
				Spec: corev1.PodSpec{ServiceAccountName: p.sa, Containers: []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10"}}},
			}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				_ = pods.Delete(context.Background(), p.name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
			})
		}
		code, report := runCheck(t, "-n", ns, "--service-account", "batch")
		if code != 1 {
			t.Errorf("got exit %d; want 1 (service accounts without Lease RBAC)", code)
		}
		expectChecks(t, report, []expect{
			{"service account " + ns + "/app (2 side-car Pods)", syncctl.CheckPassed, "may list, watch"},
			{"service account " + ns + "/nobody (1 side-car Pod)", syncctl.CheckFailed,
				"kubectl create rolebinding nobody-metaparticle-sync --namespace " + ns + " --clusterrole " + contract.SidecarClusterRole + " --serviceaccount " + ns + ":nobody"},
			{"service account " + ns + "/batch may not", syncctl.CheckFailed, "list, watch, create, update, delete leases"},
			{"1 of 3 side-car Pods of namespace " + ns + " run a side-car other than the injector's", syncctl.CheckWarning, ns + " pod/old: release 0.0.1"},
		})
		if _, found := findCheck(report, "service account "+ns+"/default"); found {
			t.Errorf("got a check of %s/default; want only the side-car Pods' service accounts and --service-account", ns)
		}
	})

	t.Run("caBundle of another CA", func(t *testing.T) {
		patchWebhooks(ctx, t, func(h *admissionregistrationv1.MutatingWebhook) { h.ClientConfig.CABundle = env.Config.CAData })
		code, report := runCheck(t, "-n", ns)
		if code != 1 {
			t.Errorf("got exit %d; want 1", code)
		}
		expectChecks(t, report, []expect{
			{"serves a certificate that the caBundle does not verify", syncctl.CheckFailed, "certificate signed by unknown authority"},
			{"a dry-run Pod annotated", syncctl.CheckFailed, "failed calling webhook"},
		})
	})

	t.Run("injector down", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		closed := l.Addr().String()
		l.Close()
		patchWebhooks(ctx, t, func(h *admissionregistrationv1.MutatingWebhook) {
			u := "https://" + closed + webhook.Path
			h.ClientConfig.URL = &u
		})
		code, report := runCheck(t, "-n", ns)
		if code != 1 {
			t.Errorf("got exit %d; want 1", code)
		}
		expectChecks(t, report, []expect{
			{"not checked: the certificate of https://" + closed, syncctl.CheckWarning, "connection refused"},
			{"a dry-run Pod annotated", syncctl.CheckFailed, "connection refused"},
		})
	})

	t.Run("namespace the webhooks leave out", func(t *testing.T) {
		_, report := runCheck(t, "-n", "kube-system")
		expectChecks(t, report, []expect{
			{"a dry-run Pod annotated metaparticle.io/sync: \"true\" in namespace kube-system was created without the side-car", syncctl.CheckFailed, "no webhook of the injector selects namespace kube-system"},
		})
	})

	t.Run("not installed", func(t *testing.T) {
		mwcs := env.Clientset.AdmissionregistrationV1().MutatingWebhookConfigurations()
		orig, err := mwcs.Get(ctx, "metaparticle-sync-injector", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := mwcs.Delete(ctx, orig.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { restoreWebhooks(t, orig) })
		code, report := runCheck(t, "-n", ns)
		if code != 1 {
			t.Errorf("got exit %d; want 1", code)
		}
		expectChecks(t, report, []expect{{"no MutatingWebhookConfiguration has a webhook named *.sync.metaparticle.io", syncctl.CheckFailed, "docs/install.md"}})
		if _, found := findCheck(report, "a dry-run Pod"); found {
			t.Errorf("got a dry run without an injector; want none")
		}
	})

	t.Run("a user who may read only Leases", func(t *testing.T) {
		grantLeaseReader(ctx, t, ns, "lease-reader")
		code, report := runCheck(t, "-n", ns, "--as", "lease-reader")
		if code != 0 || report.Passed != 0 || report.Warnings == 0 {
			t.Errorf("got exit %d, %d passed, %d warnings; want 0 and only warnings (nothing could be checked)", code, report.Passed, report.Warnings)
		}
		expectChecks(t, report, []expect{
			{"not checked: the webhook configuration", syncctl.CheckWarning, "list on mutatingwebhookconfigurations"},
			{"not checked: a dry-run Pod annotated", syncctl.CheckWarning, "create on pods in " + ns},
			{"not checked: the Pods that run a side-car", syncctl.CheckWarning, "list on pods"},
		})
	})
}
