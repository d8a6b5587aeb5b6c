// Package pki writes the certificates, keys and kubeconfigs of the local single-node cluster
// (hack/cluster): one CA, a serving certificate for the API server and for the kubelet, a client
// certificate for every component with the identity Kubernetes' default RBAC expects
// (system:node:<name> in system:nodes, system:kube-controller-manager, system:kube-scheduler,
// system:kube-proxy, an administrator in system:masters), the service-account signing key pair,
// and a kubeconfig per client.
//
// Ensure is idempotent: files that exist are kept, so a running cluster keeps its identity when
// `make cluster-up` runs again.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Validity of every certificate.
const Validity = 365 * 24 * time.Hour

// Cluster describes what the certificates are for.
type Cluster struct {
	// Dir receives every file; it is created with mode 0700.
	Dir string
	// Name of the cluster in the kubeconfigs.
	Name string
	// NodeName is the kubelet's node name: its client certificate is system:node:<NodeName>.
	NodeName string
	// NodeIP is the node's InternalIP: the API server's advertise address and the kubelet's
	// serving address.
	NodeIP net.IP
	// ServiceIP is the ClusterIP of the "kubernetes" Service (the first address of the
	// Service range); Pods reach the API server there, so it is in the serving certificate.
	ServiceIP net.IP
	// Server is the API server URL written into the kubeconfigs.
	Server string
}

// Client is one client identity: a certificate and a kubeconfig named after File.
type Client struct {
	File   string
	CN     string
	Groups []string
}

// Clients returns every client identity the cluster uses.
func (c Cluster) Clients() []Client {
	return []Client{
		{File: "admin", CN: "metaparticle-admin", Groups: []string{"system:masters"}},
		{File: "kubelet", CN: "system:node:" + c.NodeName, Groups: []string{"system:nodes"}},
		{File: "controller-manager", CN: "system:kube-controller-manager"},
		{File: "scheduler", CN: "system:kube-scheduler"},
		{File: "kube-proxy", CN: "system:kube-proxy"},
		// The API server's identity towards the kubelet; hack/cluster binds it to the
		// system:kubelet-api-admin ClusterRole, which the kubelet's webhook authorizer checks.
		{File: "apiserver-to-kubelet", CN: "kube-apiserver-kubelet-client"},
	}
}

// Validate reports what is missing from c.
func (c Cluster) Validate() error {
	var errs []error
	if c.Dir == "" {
		errs = append(errs, errors.New("directory is required"))
	}
	if c.Name == "" || c.NodeName == "" {
		errs = append(errs, errors.New("cluster name and node name are required"))
	}
	if c.NodeIP.To4() == nil || c.ServiceIP.To4() == nil {
		errs = append(errs, errors.New("node IP and service IP must be IPv4 addresses"))
	}
	if c.Server == "" {
		errs = append(errs, errors.New("server URL is required"))
	}
	return errors.Join(errs...)
}

// Path returns the path of a file in the directory.
func (c Cluster) Path(name string) string { return filepath.Join(c.Dir, name) }

// Ensure writes every missing file into c.Dir and keeps those that exist.
func (c Cluster) Ensure() error {
	if err := c.Validate(); err != nil {
		return err
	}
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return err
	}
	ca, err := c.ensureCA()
	if err != nil {
		return fmt.Errorf("CA: %w", err)
	}
	servers := []struct {
		file string
		tmpl x509.Certificate
	}{
		{"apiserver-serving", x509.Certificate{
			Subject: pkix.Name{CommonName: "kube-apiserver"},
			DNSNames: []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc",
				"kubernetes.default.svc.cluster.local", "localhost"},
			IPAddresses: []net.IP{c.NodeIP, c.ServiceIP, net.IPv4(127, 0, 0, 1)},
		}},
		{"kubelet-serving", x509.Certificate{
			Subject:     pkix.Name{CommonName: "system:node:" + c.NodeName, Organization: []string{"system:nodes"}},
			DNSNames:    []string{c.NodeName},
			IPAddresses: []net.IP{c.NodeIP},
		}},
		// The cluster's image registry, on loopback: containerd pulls from it, and images and
		// charts are pushed to it, over TLS as with any real registry.
		{"registry-serving", x509.Certificate{
			Subject:     pkix.Name{CommonName: "metaparticle-sync-registry"},
			DNSNames:    []string{"localhost"},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		}},
	}
	for _, s := range servers {
		s.tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		if err := c.ensureCert(ca, s.file, s.tmpl); err != nil {
			return fmt.Errorf("%s serving certificate: %w", s.file, err)
		}
	}
	for _, cl := range c.Clients() {
		tmpl := x509.Certificate{
			Subject:     pkix.Name{CommonName: cl.CN, Organization: cl.Groups},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}
		file := cl.File + "-client"
		if err := c.ensureCert(ca, file, tmpl); err != nil {
			return fmt.Errorf("%s client certificate: %w", cl.File, err)
		}
		if err := c.ensureKubeconfig(cl.File, file); err != nil {
			return fmt.Errorf("%s kubeconfig: %w", cl.File, err)
		}
	}
	if err := c.ensureServiceAccountKey(); err != nil {
		return fmt.Errorf("service-account key: %w", err)
	}
	return nil
}

type authority struct {
	cert *x509.Certificate
	key  crypto.Signer
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func (c Cluster) ensureCA() (*authority, error) {
	crt, key := c.Path("ca.crt"), c.Path("ca.key")
	if exists(crt) && exists(key) {
		return loadCA(crt, key)
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: c.Name + "-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(Validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		return nil, err
	}
	if err := writeKey(key, k); err != nil {
		return nil, err
	}
	if err := writePEM(crt, "CERTIFICATE", der, 0o644); err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &authority{cert: cert, key: k}, nil
}

func loadCA(crtPath, keyPath string) (*authority, error) {
	cert, err := ReadCert(crtPath)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("%s: no PEM block", keyPath)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", keyPath, err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%s: not a signing key", keyPath)
	}
	return &authority{cert: cert, key: signer}, nil
}

// ReadCert reads the first certificate of a PEM file.
func ReadCert(p string) (*x509.Certificate, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s: no certificate", p)
	}
	return x509.ParseCertificate(blk.Bytes)
}

func (c Cluster) ensureCert(ca *authority, file string, tmpl x509.Certificate) error {
	crt, key := c.Path(file+".crt"), c.Path(file+".key")
	if exists(crt) && exists(key) {
		return nil
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl.SerialNumber = serial()
	tmpl.NotBefore = now.Add(-time.Hour)
	tmpl.NotAfter = now.Add(Validity)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	tmpl.BasicConstraintsValid = true
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, ca.cert, k.Public(), ca.key)
	if err != nil {
		return err
	}
	if err := writeKey(key, k); err != nil {
		return err
	}
	return writePEM(crt, "CERTIFICATE", der, 0o644)
}

func (c Cluster) ensureServiceAccountKey() error {
	key, pub := c.Path("sa.key"), c.Path("sa.pub")
	if exists(key) && exists(pub) {
		return nil
	}
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	der, err := x509.MarshalPKIXPublicKey(k.Public())
	if err != nil {
		return err
	}
	if err := writeKey(key, k); err != nil {
		return err
	}
	return writePEM(pub, "PUBLIC KEY", der, 0o644)
}

func (c Cluster) ensureKubeconfig(name, certFile string) error {
	p := c.Path(name + ".kubeconfig")
	if exists(p) {
		return nil
	}
	read := func(f string) ([]byte, error) { return os.ReadFile(c.Path(f)) }
	caPEM, err := read("ca.crt")
	if err != nil {
		return err
	}
	crtPEM, err := read(certFile + ".crt")
	if err != nil {
		return err
	}
	keyPEM, err := read(certFile + ".key")
	if err != nil {
		return err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[c.Name] = &clientcmdapi.Cluster{Server: c.Server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{ClientCertificateData: crtPEM, ClientKeyData: keyPEM}
	cfg.Contexts[c.Name] = &clientcmdapi.Context{Cluster: c.Name, AuthInfo: name, Namespace: "default"}
	cfg.CurrentContext = c.Name
	b, err := clientcmd.Write(*cfg)
	if err != nil {
		return err
	}
	return writeFile(p, b, 0o600)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return n.Add(n, big.NewInt(1))
}

func writeKey(p string, k crypto.Signer) error {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return err
	}
	return writePEM(p, "PRIVATE KEY", der, 0o600)
}

func writePEM(p, typ string, der []byte, mode os.FileMode) error {
	return writeFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode)
}

// writeFile replaces p atomically, so an interrupted run never leaves half a file behind.
func writeFile(p string, b []byte, mode os.FileMode) error {
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, mode); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}
