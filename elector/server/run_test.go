package server

import (
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/metaparticle-io/sync/elector"
	"github.com/metaparticle-io/sync/elector/internal/leasefake"
	"github.com/metaparticle-io/sync/wire"
)

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("Listen: got %v; want nil", err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestIntegrationRun runs the elector command's Run as main does, against the real API server
// through a kubeconfig file, and stops it as SIGTERM would.
func TestIntegrationRun(t *testing.T) {
	ns := env.Namespace(t)
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: env.Config.Host, CertificateAuthorityData: env.Config.CAData}
	kc.AuthInfos["test"] = &clientcmdapi.AuthInfo{ClientCertificateData: env.Config.CertData, ClientKeyData: env.Config.KeyData, Token: env.Config.BearerToken}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test"}
	kc.CurrentContext = "test"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatalf("writing the kubeconfig: got %v; want nil", err)
	}
	apiAddr, healthAddr := freeAddr(t), freeAddr(t)
	args := []string{"--pod-name=web-0", "--namespace=" + ns, "--listen=" + apiAddr, "--health-listen=" + healthAddr,
		"--lease-duration=3s", "--renew-deadline=2s", "--renew-period=1s", "--retry-period=200ms", "--kubeconfig=" + path}
	s, err := ParseSettings(args, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatalf("ParseSettings: got %v; want nil", err)
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	done := make(chan error, 1)
	go func() { done <- Run(ctx, s, leasefake.Logger(t)) }()

	health := "http://" + healthAddr
	eventually(t, "/readyz to say ok", func() bool {
		resp, err := http.Get(health + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	c := newAPIClient(t, "http://"+apiAddr)
	sess := c.open(time.Minute)
	g := c.mustAcquire(sess.ID, "run")

	resp, err := http.Get(health + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: got %v; want a response", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `metaparticle_sync_holds{kind="lock"} 1`) {
		t.Errorf("got /metrics:\n%s\nwant it reporting the hold", body)
	}

	stop() // SIGTERM
	if err := await(t, done, "Run's return after its context ended"); err != nil {
		t.Fatalf("Run: got %v; want nil", err)
	}
	// Released, and then deleted: nobody holds it, and no other side-car may watch it.
	if l, err := env.Clientset.CoordinationV1().Leases(ns).Get(context.Background(), g.Lease, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("got Lease %s after shutdown: %v (holder %q); want it released and deleted", g.Lease, err, holderOf(l))
	}
	if _, err := http.Get("http://" + apiAddr + wire.PathSessions); err == nil {
		t.Errorf("GET of the lock API after Run returned: got an answer; want the connection refused")
	}
}

func TestRunRefusesBadConfiguration(t *testing.T) {
	s := Settings{Config: elector.Config{PodName: "p", Namespace: "n", LeaseDuration: 5 * time.Second, RenewDeadline: 6 * time.Second}}
	err := Run(context.Background(), s, leasefake.Logger(t))
	if err == nil || !strings.Contains(err.Error(), "renew deadline 6s must be less than lease duration 5s") {
		t.Errorf("Run: got %v; want the timing rule explained", err)
	}
}
