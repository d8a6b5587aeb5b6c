package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/metaparticle-io/sync/internal/localcluster"
)

var createOpts = metav1.CreateOptions{}

func TestNodeIsReadyAndAuthenticatedAsANode(t *testing.T) {
	localcluster.Require(t, cluster)
	ctx := testContext(t)
	name, ip := cluster.Var("NODE_NAME"), cluster.Var("NODE_IP")
	node, err := cluster.Clientset.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ready := false
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady {
			ready = c.Status == corev1.ConditionTrue
		}
	}
	if !ready {
		t.Errorf("node %s is not Ready: %+v", name, node.Status.Conditions)
	}
	var internal []string
	for _, a := range node.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			internal = append(internal, a.Address)
		}
	}
	if !slices.Equal(internal, []string{ip}) {
		t.Errorf("node InternalIP = %v, want [%s] (the bridge address)", internal, ip)
	}
	if v := node.Status.NodeInfo.KubeletVersion; v != "v1.37.2" {
		t.Errorf("kubelet version %s, want v1.37.2", v)
	}
	if rt := node.Status.NodeInfo.ContainerRuntimeVersion; !strings.HasPrefix(rt, "containerd://") {
		t.Errorf("container runtime %s, want containerd", rt)
	}

	// The kubelet's own credentials are a node's: system:node:<name> in system:nodes, and the
	// Node authorizer with NodeRestriction keeps them to this node.
	kubeletCS := clientFor(t, filepath.Join(cluster.Var("CLUSTER_DIR"), "pki", "kubelet.kubeconfig"))
	ssr, err := kubeletCS.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authnv1.SelfSubjectReview{}, createOpts)
	if err != nil {
		t.Fatal(err)
	}
	if u := ssr.Status.UserInfo; u.Username != "system:node:"+name || !slices.Contains(u.Groups, "system:nodes") {
		t.Errorf("the kubelet authenticates as %q %v, want system:node:%s in system:nodes", u.Username, u.Groups, name)
	}
	other := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "e2e-some-other-node"}}
	_, err = kubeletCS.CoreV1().Nodes().Create(ctx, other, createOpts)
	if err == nil {
		_ = cluster.Clientset.CoreV1().Nodes().Delete(ctx, other.Name, metav1.DeleteOptions{})
	}
	if !apierrors.IsForbidden(err) {
		t.Errorf("the kubelet's credentials created another node: %v, want Forbidden", err)
	}

	// The kubelet's API authenticates its callers: anonymous is refused, the API server (its
	// kubelet client certificate, authorized through a SubjectAccessReview) gets through.
	caPool := x509.NewCertPool()
	caPool.AppendCertsFromPEM(cluster.Config.CAData)
	anon := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: caPool}}}
	resp, err := anon.Get(fmt.Sprintf("https://%s/pods", net.JoinHostPort(ip, "10250")))
	if err != nil {
		t.Fatalf("kubelet API: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("anonymous GET of the kubelet's /pods: %s, want 401 Unauthorized", resp.Status)
	}
	body, err := cluster.Clientset.CoreV1().RESTClient().Get().
		AbsPath("/api/v1/nodes", name, "proxy", "healthz").DoRaw(ctx)
	if err != nil || string(body) != "ok" {
		t.Errorf("kubelet /healthz through the API server: %q, %v", body, err)
	}
}

func clientFor(t *testing.T, kubeconfig string) kubernetes.Interface {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func TestDeploymentOfTwoReplicasBehindAService(t *testing.T) {
	ns := cluster.Namespace(t, nil)
	ctx := testContext(t)
	cs := cluster.Clientset
	labels := map[string]string{"app": "web"}
	server := probe("web", "serve", "-addr", ":8080", "-text", "web")
	server.Ports = []corev1.ContainerPort{{ContainerPort: 8080}}
	server.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{
		HTTPGet: &corev1.HTTPGetAction{Path: "/", Port: intstr.FromInt32(8080)},
	}, PeriodSeconds: 1}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](2),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{server}, TerminationGracePeriodSeconds: ptr.To[int64](5)},
			},
		},
	}
	if _, err := cs.AppsV1().Deployments(ns).Create(ctx, dep, createOpts); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}
	svc, err := cs.CoreV1().Services(ns).Create(ctx, svc, createOpts)
	if err != nil {
		t.Fatal(err)
	}
	_, serviceNet, _ := net.ParseCIDR(cluster.Var("SERVICE_CIDR"))
	if !serviceNet.Contains(net.ParseIP(svc.Spec.ClusterIP)) {
		t.Errorf("ClusterIP %s is outside the Service range %s", svc.Spec.ClusterIP, serviceNet)
	}

	// The controller-manager creates the ReplicaSet and its Pods, the scheduler binds them, the
	// kubelet runs them.
	err = wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		d, err := cs.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
		return err == nil && d.Status.AvailableReplicas == 2, nil
	})
	if err != nil {
		t.Fatalf("deployment never had 2 available replicas: %v", err)
	}
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
	if err != nil {
		t.Fatal(err)
	}
	_, podNet, _ := net.ParseCIDR(cluster.Var("POD_CIDR"))
	ips := map[string]bool{}
	for _, p := range pods.Items {
		if p.Status.Phase != corev1.PodRunning || p.Spec.NodeName != cluster.Var("NODE_NAME") {
			continue
		}
		if !podNet.Contains(net.ParseIP(p.Status.PodIP)) {
			t.Errorf("pod %s has IP %s outside %s", p.Name, p.Status.PodIP, podNet)
		}
		ips[p.Status.PodIP] = true
	}
	if len(ips) != 2 {
		t.Fatalf("running replicas have IPs %v, want 2 distinct ones", ips)
	}

	// kube-proxy translates the ClusterIP for this machine (as for the API server calling a
	// webhook Service) and for Pods.
	url := "http://" + net.JoinHostPort(svc.Spec.ClusterIP, "80") + "/"
	hc := &http.Client{Timeout: 5 * time.Second}
	var lastErr error
	err = wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(context.Context) (bool, error) {
		resp, err := hc.Get(url)
		if err != nil {
			lastErr = err
			return false, nil
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			lastErr = errors.New(resp.Status)
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("GET %s from the node: %v (last: %v)", url, err, lastErr)
	}
	code, r := runOnce(ctx, t, ns, pod("client", probe("get", "get", "-url", url, "-until-ok")))
	if code != 0 || !r.OK || !strings.HasPrefix(r.Body, "web web-") {
		t.Errorf("GET %s from a Pod: exit %d, %+v; want the answer of a web replica", url, code, r)
	}
}

func TestContainersOfAPodTalkOverLoopback(t *testing.T) {
	ns := cluster.Namespace(t, nil)
	ctx := testContext(t)
	// The server listens on 127.0.0.1 only: the client reaches it only if both containers share
	// the Pod's network namespace.
	p := pod("pair",
		probe("client", "get", "-url", "http://127.0.0.1:8080/", "-until-ok"),
		probe("server", "serve", "-addr", "127.0.0.1:8080", "-text", "from-the-other-container"))
	if _, err := cluster.Clientset.CoreV1().Pods(ns).Create(ctx, p, createOpts); err != nil {
		t.Fatal(err)
	}
	got, err := cluster.WaitPod(ctx, ns, "pair", localcluster.ContainerTerminated("client"))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range got.Status.ContainerStatuses {
		if s.Name == "client" && s.State.Terminated.ExitCode != 0 {
			t.Errorf("client exited %d", s.State.Terminated.ExitCode)
		}
	}
	r := logResult(ctx, t, ns, "pair", "client")
	if want := "from-the-other-container pair"; !r.OK || r.Body != want {
		t.Errorf("client got %+v, want body %q", r, want)
	}
}

func TestInClusterClientReachesTheAPIServerThroughTheKubernetesService(t *testing.T) {
	ns := cluster.Namespace(t, nil)
	ctx := testContext(t)
	cs := cluster.Clientset

	k8s, err := cs.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if k8s.Spec.ClusterIP != cluster.Var("API_SERVICE_IP") {
		t.Errorf("kubernetes Service ClusterIP %s, want %s", k8s.Spec.ClusterIP, cluster.Var("API_SERVICE_IP"))
	}

	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "settings"}, Data: map[string]string{"color": "blue"}}
	if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, cm, createOpts); err != nil {
		t.Fatal(err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "reader"}}
	if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, sa, createOpts); err != nil {
		t.Fatal(err)
	}
	whoami := func(name string) (int32, probeResult) {
		p := pod(name, probe("whoami", "whoami", "-configmap", "settings"))
		p.Spec.ServiceAccountName = "reader"
		return runOnce(ctx, t, ns, p)
	}
	wantUser := "system:serviceaccount:" + ns + ":reader"
	wantServer := "https://" + net.JoinHostPort(cluster.Var("API_SERVICE_IP"), "443")

	// Without a RoleBinding the token authenticates, and the read is forbidden.
	code, r := whoami("without-rolebinding")
	if code != 3 || !r.Forbidden || r.User != wantUser || r.Server != wantServer {
		t.Errorf("without a RoleBinding: exit %d, %+v; want forbidden for %s via %s", code, r, wantUser, wantServer)
	}

	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "read-settings"},
		Rules: []rbacv1.PolicyRule{{
			APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{"settings"}, Verbs: []string{"get"},
		}},
	}
	if _, err := cs.RbacV1().Roles(ns).Create(ctx, role, createOpts); err != nil {
		t.Fatal(err)
	}
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "reader-reads-settings"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "read-settings"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "reader", Namespace: ns}},
	}
	if _, err := cs.RbacV1().RoleBindings(ns).Create(ctx, rb, createOpts); err != nil {
		t.Fatal(err)
	}
	code, r = whoami("with-rolebinding")
	if code != 0 || !r.OK || r.Data["color"] != "blue" || r.User != wantUser || r.Server != wantServer {
		t.Errorf("with a RoleBinding: exit %d, %+v; want the ConfigMap read as %s via %s", code, r, wantUser, wantServer)
	}
}

func TestRestrictedNamespaceRejectsAPrivilegedPodAndRunsACompliantOne(t *testing.T) {
	ns := cluster.Namespace(t, map[string]string{
		"pod-security.kubernetes.io/enforce":         "restricted",
		"pod-security.kubernetes.io/enforce-version": "latest",
	})
	ctx := testContext(t)
	cs := cluster.Clientset

	bad := pod("privileged", corev1.Container{
		Name: "c", Image: probeImage, ImagePullPolicy: corev1.PullNever, Args: []string{"serve"},
		SecurityContext: &corev1.SecurityContext{Privileged: ptr.To(true)},
	})
	_, err := cs.CoreV1().Pods(ns).Create(ctx, bad, createOpts)
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "violates PodSecurity") {
		t.Errorf("privileged Pod in a restricted namespace: %v, want Forbidden by PodSecurity", err)
	}

	good := pod("compliant", probe("c", "serve"))
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, good, createOpts); err != nil {
		t.Fatalf("compliant Pod rejected: %v", err)
	}
	if _, err := cluster.WaitPod(ctx, ns, "compliant", localcluster.Running); err != nil {
		t.Fatalf("compliant Pod does not run: %v", err)
	}
}

func TestKubeletRefusesARootImageWhenThePodSaysRunAsNonRoot(t *testing.T) {
	ns := cluster.Namespace(t, nil)
	ctx := testContext(t)
	cs := cluster.Clientset

	// The same image runs when the Pod does not insist on a non-root user ...
	control := pod("root-allowed", corev1.Container{Name: "c", Image: probeRootImage, ImagePullPolicy: corev1.PullNever, Args: []string{"serve"}})
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, control, createOpts); err != nil {
		t.Fatal(err)
	}
	if _, err := cluster.WaitPod(ctx, ns, "root-allowed", localcluster.Running); err != nil {
		t.Fatalf("the root image does not run at all: %v", err)
	}

	// ... and the kubelet refuses to start it when the Pod says runAsNonRoot.
	refused := pod("root-refused", corev1.Container{
		Name: "c", Image: probeRootImage, ImagePullPolicy: corev1.PullNever, Args: []string{"serve"},
		SecurityContext: &corev1.SecurityContext{RunAsNonRoot: ptr.To(true)},
	})
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, refused, createOpts); err != nil {
		t.Fatalf("the API server rejected the Pod (the kubelet should refuse it): %v", err)
	}
	var reason, message string
	_, err := cluster.WaitPod(ctx, ns, "root-refused", func(p *corev1.Pod) (bool, error) {
		if p == nil {
			return false, nil
		}
		for _, s := range p.Status.ContainerStatuses {
			if s.State.Running != nil || s.State.Terminated != nil {
				return false, fmt.Errorf("the container was started: %+v", s.State)
			}
			if w := s.State.Waiting; w != nil && w.Reason == "CreateContainerConfigError" {
				reason, message = w.Reason, w.Message
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(message, "runAsNonRoot") || !strings.Contains(message, "root") {
		t.Errorf("container waiting with %s: %q, want the kubelet's runAsNonRoot refusal", reason, message)
	}
}

func TestUnusedClusterIPFailsLocally(t *testing.T) {
	ns := cluster.Namespace(t, nil)
	ctx := testContext(t)
	cs := cluster.Clientset

	// An address of the Service range that no Service has.
	_, serviceNet, _ := net.ParseCIDR(cluster.Var("SERVICE_CIDR"))
	svcs, err := cs.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{}
	for _, s := range svcs.Items {
		used[s.Spec.ClusterIP] = true
	}
	var unused string
	for last := 250; last > 200 && unused == ""; last-- {
		ip := slices.Clone(serviceNet.IP.To4())
		ip[3] = byte(last)
		if !used[ip.String()] && ip.String() != cluster.Var("DNS_IP") {
			unused = ip.String()
		}
	}
	addr := net.JoinHostPort(unused, "80")

	// The machine routes the whole Service range to its own stack ...
	out, err := localcluster.Command(ctx, "ip", "-4", "route", "get", unused)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out, "local "+unused+" dev lo") {
		t.Errorf("ip route get %s = %q, want a local route on lo", unused, out)
	}
	// ... so a connection to an unused ClusterIP is refused here, at once.
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err == nil {
		conn.Close()
		t.Fatalf("connected to unused ClusterIP %s", addr)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial %s from the node: %v, want connection refused", addr, err)
	}
	// The same from a Pod.
	code, r := runOnce(ctx, t, ns, pod("dial-unused", probe("dial", "dial", "-addr", addr)))
	if code != 3 || !r.Refused {
		t.Errorf("dial %s from a Pod: exit %d, %+v; want connection refused", addr, code, r)
	}

	// Pods have routes to the bridge and the Service range only: nothing else is reachable.
	_, r = runOnce(ctx, t, ns, pod("routes", probe("routes", "routes")))
	want := []string{
		fmt.Sprintf("%s via 0.0.0.0 dev eth0", cluster.Var("POD_CIDR")),
		fmt.Sprintf("%s via %s dev eth0", serviceNet, cluster.Var("NODE_IP")),
	}
	got := slices.Sorted(slices.Values(r.Routes))
	slices.Sort(want)
	if !r.OK || !slices.Equal(got, want) {
		t.Errorf("routes in a Pod = %q, want %q (and no default route)", got, want)
	}

	// Pods resolve names only through the DNS ClusterIP, where no server runs and which is
	// routed to this machine's stack: no query reaches the machine's own resolvers. (The answer
	// is a refusal, or silence when the kernel rate-limits its ICMP errors.)
	_, r = runOnce(ctx, t, ns, pod("lookup", probe("lookup", "lookup", "-name", "example.com.")))
	dns := cluster.Var("DNS_IP")
	if !slices.Equal(r.Nameservers, []string{dns}) {
		t.Errorf("a Pod's resolv.conf names %v, want only %s", r.Nameservers, dns)
	}
	if r.OK || !strings.Contains(r.Error, net.JoinHostPort(dns, "53")) {
		t.Errorf("DNS lookup from a Pod: %+v; want it to fail at %s", r, dns)
	}
	out, err = localcluster.Command(ctx, "ip", "-4", "route", "get", dns)
	if err != nil || !strings.HasPrefix(out, "local "+dns+" dev lo") {
		t.Errorf("ip route get %s = %q, %v; want a local route on lo", dns, out, err)
	}
}
