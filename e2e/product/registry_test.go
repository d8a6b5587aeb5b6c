package product

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/internal/localcluster"
	"github.com/metaparticle-io/sync/webhook"
)

// docsNamespace and docsApp are the namespace and the Deployment of docs/install.md's first
// annotated Deployment, which hack/stack.sh up --from-registry created by following the page.
const (
	docsNamespace = "shop"
	docsApp       = "lock-example"
)

// Scenario 9 (issue 19): the stack under test was installed by following docs/install.md word
// for word: images and chart pushed to the cluster's registry (CNCF Distribution, TLS on
// loopback), `helm install` from oci://, the page's first Deployment. Every image of it that runs
// was pulled by containerd from that registry: its image ID is the digest the registry holds
// for the pushed index, and the kubelet reported pulling it.
func TestInstalledFromRegistry(t *testing.T) {
	localcluster.Require(t, cluster)
	ctx := testContext(t, time.Minute)
	host, caFile := cluster.Vars["REGISTRY_HOST"], cluster.Vars["REGISTRY_CA"]
	if host == "" || caFile == "" {
		t.Fatalf("the cluster environment names no registry: REGISTRY_HOST %q, REGISTRY_CA %q", host, caFile)
	}
	ca, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca) {
		t.Fatalf("%s holds no certificate", caFile)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}
	prefix := host + "/metaparticle/"
	// pushed returns the digest under which the registry holds image:0.1.0.
	pushed := func(image string) string {
		t.Helper()
		tag, err := name.NewTag(prefix + image + ":0.1.0")
		if err != nil {
			t.Fatal(err)
		}
		d, err := remote.Head(tag, remote.WithContext(ctx), remote.WithTransport(tr))
		if err != nil {
			t.Fatalf("the registry has no %s: %v", tag, err)
		}
		return d.Digest.String()
	}

	injectors, err := cluster.Clientset.CoreV1().Pods(releaseNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(injectors.Items) == 0 {
		t.Fatalf("got no Pods in %s; want the injector's", releaseNamespace)
	}
	apps, err := cluster.Clientset.CoreV1().Pods(docsNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app=" + docsApp})
	if err != nil {
		t.Fatal(err)
	}
	// The page's rolling restart (its upgrade steps) may leave old Pods terminating.
	apps.Items = slices.DeleteFunc(apps.Items, func(p corev1.Pod) bool { return p.DeletionTimestamp != nil })
	if len(apps.Items) != 2 {
		t.Fatalf("got %d Pods of docs/install.md's %s/%s; want its 2 replicas", len(apps.Items), docsNamespace, docsApp)
	}
	// The injector recorded what it injected, as docs/install.md's upgrade steps read it.
	for _, p := range apps.Items {
		if got, want := p.Annotations[contract.AnnotationInjectedImage], prefix+"sync-elector:0.1.0"; got != want || p.Labels[contract.LabelInjected] != "true" {
			t.Errorf("pod %s/%s: got %s %q, label %s %q; want %q and \"true\"", p.Namespace, p.Name,
				contract.AnnotationInjectedImage, got, contract.LabelInjected, p.Labels[contract.LabelInjected], want)
		}
	}
	// The injector recorded an Event on the page's ReplicaSets (the chart grants it events).
	injected, err := cluster.Clientset.EventsV1().Events(docsNamespace).List(ctx, metav1.ListOptions{FieldSelector: "reason=" + webhook.ReasonInjected})
	if err != nil {
		t.Fatal(err)
	}
	if len(injected.Items) == 0 || injected.Items[0].Regarding.Kind != "ReplicaSet" {
		t.Errorf("got %d %s Events in %s; want the injector's, on the ReplicaSets", len(injected.Items), webhook.ReasonInjected, docsNamespace)
	}
	// Each side-car serves the per-name gauge on the port the chart's PodMonitor scrapes (by
	// name; the API server's Pod proxy takes its number).
	for _, p := range apps.Items {
		port := ""
		for _, c := range p.Spec.InitContainers {
			for _, cp := range c.Ports {
				if c.Name == webhook.SidecarName && cp.Name == webhook.HealthPortName {
					port = fmt.Sprint(cp.ContainerPort)
				}
			}
		}
		if port == "" {
			t.Fatalf("pod %s: the side-car has no port named %s; want the one the PodMonitor scrapes", p.Name, webhook.HealthPortName)
		}
		body, err := cluster.Clientset.CoreV1().Pods(p.Namespace).ProxyGet("http", p.Name, port, "/metrics", nil).DoRaw(ctx)
		if err != nil {
			t.Fatalf("pod %s: /metrics through the API server's proxy: %v", p.Name, err)
		}
		if !strings.Contains(string(body), `metaparticle_sync_held{kind="lock",name="test"}`) {
			t.Errorf("pod %s: got no metaparticle_sync_held series for the lock \"test\" on port %s:\n%s", p.Name, webhook.HealthPortName, body)
		}
	}
	statuses := func(p corev1.Pod) []corev1.ContainerStatus {
		return append(append([]corev1.ContainerStatus(nil), p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...)
	}
	images := map[string]bool{}
	for _, group := range []struct {
		pods   []corev1.Pod
		images map[string]string // container → image
	}{
		{injectors.Items, map[string]string{"injector": "sync-injector"}},
		{apps.Items, map[string]string{webhook.SidecarName: "sync-elector", "lock": "sync-example-lock"}},
	} {
		for _, p := range group.pods {
			specs := map[string]string{}
			for _, c := range append(append([]corev1.Container(nil), p.Spec.InitContainers...), p.Spec.Containers...) {
				specs[c.Name] = c.Image
			}
			got := map[string]bool{}
			for _, s := range statuses(p) {
				image, ok := group.images[s.Name]
				if !ok {
					continue
				}
				got[s.Name] = true
				images[image] = true
				if ref := prefix + image + ":0.1.0"; specs[s.Name] != ref {
					t.Errorf("pod %s/%s container %s: got image %q; want %q", p.Namespace, p.Name, s.Name, specs[s.Name], ref)
				}
				// Only a pull records the registry's digest; an imported image's ID is its
				// config's sha256.
				if id := prefix + image + "@" + pushed(image); s.ImageID != id {
					t.Errorf("pod %s/%s container %s: got image ID %q; want %q (the pushed index)", p.Namespace, p.Name, s.Name, s.ImageID, id)
				}
			}
			for c := range group.images {
				if !got[c] {
					t.Errorf("pod %s/%s: got no status of container %s", p.Namespace, p.Name, c)
				}
			}
		}
	}

	// containerd holds each tag as pulled: the whole index (both platforms), under the pushed
	// digest.
	out, err := cluster.Ctr(ctx, "images", "ls")
	if err != nil {
		t.Fatal(err)
	}
	for image := range images {
		ref := prefix + image + ":0.1.0"
		var line []string
		for _, row := range strings.Split(out, "\n") {
			if f := strings.Fields(row); len(f) > 4 && f[0] == ref {
				line = f
			}
		}
		// REF TYPE DIGEST SIZE(2 words) PLATFORMS LABELS
		if line == nil {
			t.Errorf("containerd has no image %s; want it pulled:\n%s", ref, out)
			continue
		}
		if line[1] != "application/vnd.oci.image.index.v1+json" || line[2] != pushed(image) || !strings.Contains(strings.Join(line, " "), "linux/amd64,linux/arm64") {
			t.Errorf("containerd's %s: got %q; want the OCI index %s for linux/amd64,linux/arm64", ref, strings.Join(line, " "), pushed(image))
		}
	}
}
