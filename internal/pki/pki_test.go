package pki

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
)

func testCluster(t *testing.T) Cluster {
	return Cluster{
		Dir:       filepath.Join(t.TempDir(), "pki"),
		Name:      "metaparticle-sync",
		NodeName:  "node-a",
		NodeIP:    net.ParseIP("10.217.0.1"),
		ServiceIP: net.ParseIP("10.217.1.1"),
		Server:    "https://10.217.0.1:6443",
	}
}

func verify(t *testing.T, c Cluster, file string, usage x509.ExtKeyUsage) *x509.Certificate {
	t.Helper()
	ca, err := ReadCert(c.Path("ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ReadCert(c.Path(file + ".crt"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		t.Errorf("%s does not verify for usage %v: %v", file, usage, err)
	}
	return cert
}

func TestEnsureWritesAVerifiableCluster(t *testing.T) {
	c := testCluster(t)
	if err := c.Ensure(); err != nil {
		t.Fatal(err)
	}

	api := verify(t, c, "apiserver-serving", x509.ExtKeyUsageServerAuth)
	for _, ip := range []string{"10.217.0.1", "10.217.1.1", "127.0.0.1"} {
		if err := api.VerifyHostname(ip); err != nil {
			t.Errorf("API server certificate: %v", err)
		}
	}
	if err := api.VerifyHostname("kubernetes.default.svc"); err != nil {
		t.Errorf("API server certificate: %v", err)
	}
	kubelet := verify(t, c, "kubelet-serving", x509.ExtKeyUsageServerAuth)
	if err := kubelet.VerifyHostname("10.217.0.1"); err != nil {
		t.Errorf("kubelet serving certificate: %v", err)
	}
	registry := verify(t, c, "registry-serving", x509.ExtKeyUsageServerAuth)
	for _, host := range []string{"127.0.0.1", "localhost"} {
		if err := registry.VerifyHostname(host); err != nil {
			t.Errorf("registry serving certificate: %v", err)
		}
	}

	want := map[string]struct {
		cn     string
		groups []string
	}{
		"admin":                {"metaparticle-admin", []string{"system:masters"}},
		"kubelet":              {"system:node:node-a", []string{"system:nodes"}},
		"controller-manager":   {"system:kube-controller-manager", nil},
		"scheduler":            {"system:kube-scheduler", nil},
		"kube-proxy":           {"system:kube-proxy", nil},
		"apiserver-to-kubelet": {"kube-apiserver-kubelet-client", nil},
	}
	for file, w := range want {
		cert := verify(t, c, file+"-client", x509.ExtKeyUsageClientAuth)
		if cert.Subject.CommonName != w.cn || !slices.Equal(cert.Subject.Organization, w.groups) {
			t.Errorf("%s: subject CN=%q O=%q, want CN=%q O=%q", file, cert.Subject.CommonName, cert.Subject.Organization, w.cn, w.groups)
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: pool(t, c), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
			t.Errorf("%s client certificate is also valid for serving", file)
		}

		kc, err := clientcmd.LoadFromFile(c.Path(file + ".kubeconfig"))
		if err != nil {
			t.Fatalf("%s kubeconfig: %v", file, err)
		}
		rc, err := clientcmd.NewDefaultClientConfig(*kc, nil).ClientConfig()
		if err != nil {
			t.Fatalf("%s kubeconfig: %v", file, err)
		}
		if rc.Host != c.Server || len(rc.CAData) == 0 || len(rc.CertData) == 0 || len(rc.KeyData) == 0 {
			t.Errorf("%s kubeconfig: host %q, CA/cert/key present %v/%v/%v", file, rc.Host, len(rc.CAData) > 0, len(rc.CertData) > 0, len(rc.KeyData) > 0)
		}
		if info, err := os.Stat(c.Path(file + ".kubeconfig")); err != nil || info.Mode().Perm() != 0o600 {
			t.Errorf("%s kubeconfig mode: %v %v", file, info.Mode(), err)
		}
	}

	// The service-account public key is the signing key's.
	key := parsePEM(t, c.Path("sa.key"))
	priv, err := x509.ParsePKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.ParsePKIXPublicKey(parsePEM(t, c.Path("sa.pub")))
	if err != nil {
		t.Fatal(err)
	}
	if !priv.(*rsa.PrivateKey).PublicKey.Equal(pub) {
		t.Error("sa.pub is not the public half of sa.key")
	}
	for _, f := range []string{"ca.key", "sa.key", "admin-client.key"} {
		if info, err := os.Stat(c.Path(f)); err != nil || info.Mode().Perm() != 0o600 {
			t.Errorf("%s mode: %v %v", f, info.Mode(), err)
		}
	}
}

func pool(t *testing.T, c Cluster) *x509.CertPool {
	ca, err := ReadCert(c.Path("ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	p := x509.NewCertPool()
	p.AddCert(ca)
	return p
}

func parsePEM(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM block", p)
	}
	return blk.Bytes
}

func TestEnsureIsIdempotent(t *testing.T) {
	c := testCluster(t)
	if err := c.Ensure(); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, c.Dir)
	if err := c.Ensure(); err != nil {
		t.Fatal(err)
	}
	after := snapshot(t, c.Dir)
	if len(before) != len(after) {
		t.Fatalf("second Ensure changed the file set: %d files, then %d", len(before), len(after))
	}
	for f, b := range before {
		if after[f] != b {
			t.Errorf("second Ensure rewrote %s", f)
		}
	}

	// A missing client certificate is issued again by the same CA; the rest stays.
	if err := os.Remove(c.Path("scheduler-client.crt")); err != nil {
		t.Fatal(err)
	}
	if err := c.Ensure(); err != nil {
		t.Fatal(err)
	}
	verify(t, c, "scheduler-client", x509.ExtKeyUsageClientAuth)
	if snapshot(t, c.Dir)["ca.crt"] != before["ca.crt"] {
		t.Error("the CA changed")
	}
}

func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".tmp") {
			t.Errorf("temporary file %s left behind", e.Name())
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		m[e.Name()] = string(b)
	}
	return m
}

func TestValidate(t *testing.T) {
	for name, change := range map[string]func(*Cluster){
		"no dir":        func(c *Cluster) { c.Dir = "" },
		"no node name":  func(c *Cluster) { c.NodeName = "" },
		"IPv6 node IP":  func(c *Cluster) { c.NodeIP = net.ParseIP("fd00::1") },
		"no service IP": func(c *Cluster) { c.ServiceIP = nil },
		"no server":     func(c *Cluster) { c.Server = "" },
	} {
		t.Run(name, func(t *testing.T) {
			c := testCluster(t)
			change(&c)
			if err := c.Ensure(); err == nil {
				t.Fatal("Ensure accepted an invalid cluster")
			}
			if _, err := os.Stat(c.Dir); c.Dir != "" && err == nil {
				t.Error("Ensure wrote files for an invalid cluster")
			}
		})
	}
}
