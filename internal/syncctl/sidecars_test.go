package syncctl

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/metaparticle-io/sync/internal/contract"
)

// proxyStandIn is an HTTP stand-in for the API server's two answers the sidecars command reads:
// the Pod list, and the pods/proxy subresource, which it answers for each Pod with health[pod]
// (status and body of the side-car's /readyz?verbose), or 503 as the API server does when it
// cannot reach the Pod. The real proxy needs a kubelet and a Pod network, which the test
// environment's API server lacks (it refuses to proxy to loopback); the e2e scenario on the
// local cluster reads real side-cars through it.
func proxyStandIn(t *testing.T, pods []corev1.Pod, health map[string]struct {
	status int
	body   string
}) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/api/v1/namespaces/shop/pods":
			if got := r.URL.Query().Get("fieldSelector"); got != "status.phase=Running" {
				t.Errorf("got Pod list field selector %q; want status.phase=Running", got)
			}
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(corev1.PodList{TypeMeta: metav1.TypeMeta{Kind: "PodList", APIVersion: "v1"}, Items: pods})
		case strings.HasPrefix(r.URL.Path, "/api/v1/namespaces/shop/pods/") && strings.HasSuffix(r.URL.Path, "/proxy/readyz"):
			if _, ok := r.URL.Query()["verbose"]; !ok {
				t.Errorf("got proxy query %q; want verbose", r.URL.RawQuery)
			}
			target := strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/api/v1/namespaces/shop/pods/http:"), "/proxy/readyz")
			h, ok := health[target]
			if !ok {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = w.Write([]byte(`{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"error trying to reach service: dial tcp 10.1.0.9:13132: connect: connection refused","reason":"ServiceUnavailable","code":503}`))
				return
			}
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(h.status)
			_, _ = w.Write([]byte(h.body + "\n"))
		default:
			t.Errorf("unexpected request %s %s", r.Method, r.URL)
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return standInKubeconfig(t, srv.URL)
}

// Without get on pods/proxy not one side-car can be asked: the command fails, saying so, as the
// other commands do when RBAC forbids what they read.
func TestSidecarsWithoutProxyRights(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Path == "/api/v1/namespaces/shop/pods" {
			_ = json.NewEncoder(w).Encode(corev1.PodList{TypeMeta: metav1.TypeMeta{Kind: "PodList", APIVersion: "v1"},
				Items: []corev1.Pod{podWith("web-0", corev1.Container{Name: contract.SidecarContainer})}})
			return
		}
		w.WriteHeader(http.StatusForbidden)
		_, _ = w.Write([]byte(`{"kind":"Status","apiVersion":"v1","status":"Failure","message":"pods \"web-0\" is forbidden: User \"dev\" cannot get resource \"pods/proxy\" in API group \"\" in the namespace \"shop\"","reason":"Forbidden","code":403}`))
	}))
	t.Cleanup(srv.Close)
	path := standInKubeconfig(t, srv.URL)
	var out, errOut bytes.Buffer
	code := Run(context.Background(), "syncctl", []string{"--kubeconfig", path, "sidecars"}, &out, &errOut)
	want := `cannot get resource "pods/proxy"`
	if code != 1 || out.Len() > 0 || !strings.Contains(errOut.String(), want) || !strings.Contains(errOut.String(), "(reading needs list on pods and get on pods/proxy)") {
		t.Errorf("got exit %d, stdout %q, stderr %q; want exit 1, nothing, and the refusal with what reading needs", code, out.String(), errOut.String())
	}
}

// standInKubeconfig writes a kubeconfig for an HTTP stand-in of the API server at url, in
// namespace shop.
func standInKubeconfig(t *testing.T, url string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubeconfig")
	cfg := "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: " + url + "}}]\n" +
		"users: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u, namespace: shop}}]\ncurrent-context: x\n"
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func podWith(name string, containers ...corev1.Container) corev1.Pod {
	return corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop"}, Spec: corev1.PodSpec{Containers: containers},
		Status: corev1.PodStatus{Phase: corev1.PodRunning}}
}

// TestSidecarsReportsWhatEachSidecarSays: one row per Pod with a side-car (injected with its
// named health port, or listed by hand without it), saying what the side-car's /readyz?verbose
// says, or why it could not be read; Pods without a side-car are left out.
func TestSidecarsReportsWhatEachSidecarSays(t *testing.T) {
	sidecar := corev1.Container{Name: contract.SidecarContainer, Ports: []corev1.ContainerPort{{Name: contract.HealthPortName, ContainerPort: 14001}}}
	byHand := corev1.Container{Name: contract.SidecarContainer}
	app := corev1.Container{Name: "app"}
	pods := []corev1.Pod{
		podWith("web-2", app, byHand),
		podWith("web-0", app, sidecar),
		podWith("web-1", app, sidecar),
		podWith("plain", app),
		podWith("gone", app, sidecar),
		podWith("old", app, sidecar),
	}
	kubeconfig := proxyStandIn(t, pods, map[string]struct {
		status int
		body   string
	}{
		"web-0:14001": {200, "[+]serving ok\n[+]api-server (informational) ok"},
		"web-1:14001": {200, "[+]serving ok\n[-]api-server (informational): forbidden: RBAC forbids update of leases.coordination.k8s.io in namespace shop"},
		"web-2:13132": {503, "[-]serving: the side-car is not ready: its Lease informer has not synced (see /readyz)\n[-]api-server (informational): unavailable: the API server did not answer a list of leases"},
		"old:14001":   {200, "ok"},
	})
	for _, tc := range []struct {
		name string
		args []string
		want []SidecarHealth
	}{
		{"json", []string{"sidecars", "-o", "json"}, []SidecarHealth{
			{Namespace: "shop", Pod: "gone", Error: "cannot read its health port 14001 through the API server: error trying to reach service: dial tcp 10.1.0.9:13132: connect: connection refused"},
			{Namespace: "shop", Pod: "old", Serving: "ok", APIServer: "unknown (the side-car is older than this command)"},
			{Namespace: "shop", Pod: "web-0", Serving: "ok", APIServer: "ok"},
			{Namespace: "shop", Pod: "web-1", Serving: "ok", APIServer: "forbidden: RBAC forbids update of leases.coordination.k8s.io in namespace shop"},
			{Namespace: "shop", Pod: "web-2", Serving: "the side-car is not ready: its Lease informer has not synced (see /readyz)",
				APIServer: "unavailable: the API server did not answer a list of leases"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := Run(context.Background(), "syncctl", append([]string{"--kubeconfig", kubeconfig}, tc.args...), &out, &errOut)
			if code != 0 || errOut.Len() > 0 {
				t.Fatalf("got exit %d, stderr %q; want 0 and nothing", code, errOut.String())
			}
			var got SidecarList
			if err := json.Unmarshal(out.Bytes(), &got); err != nil {
				t.Fatalf("got undecodable output %q: %v", out.String(), err)
			}
			if len(got.Items) != len(tc.want) {
				t.Fatalf("got %d side-cars %+v; want %d", len(got.Items), got.Items, len(tc.want))
			}
			for i := range tc.want {
				if got.Items[i] != tc.want[i] {
					t.Errorf("side-car %d: got %+v; want %+v", i, got.Items[i], tc.want[i])
				}
			}
		})
	}

	var out, errOut bytes.Buffer
	if code := Run(context.Background(), "syncctl", []string{"--kubeconfig", kubeconfig, "health"}, &out, &errOut); code != 0 {
		t.Fatalf("table: got exit %d, stderr %q; want 0", code, errOut.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 6 || strings.Join(strings.Fields(lines[0]), " ") != "POD SERVING API SERVER ERROR" {
		t.Fatalf("table: got\n%s\nwant a header with ERROR and 5 rows", out.String())
	}
	for _, want := range []string{"web-1   ok   forbidden: RBAC forbids update", "gone    unknown   unknown   cannot read its health port 14001"} {
		if !strings.Contains(strings.Join(strings.Fields(out.String()), " "), strings.Join(strings.Fields(want), " ")) {
			t.Errorf("table: got\n%s\nwant a row %q", out.String(), want)
		}
	}
}
