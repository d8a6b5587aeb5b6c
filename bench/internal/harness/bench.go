// Package harness is the benchmark harness behind `make bench`: it starts a real kube-apiserver
// and etcd (envtest, on 127.0.0.1), runs the Metaparticle Sync side-car and, in the same run and
// on the same API server, client-go's leader election with a LeaseLock as the baseline, and
// reports both with their ratio against the targets of issue 10. It asserts nothing: a target is
// reported as met or missed, never enforced.
//
// The pure parts (percentiles, ratios, request counting by verb, the report and its
// rendering) are unit-tested; the rest needs the control plane and runs only from
// bench/cmd/bench.
package harness

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/metaparticle-io/sync/internal/testenv"
)

// Options configure a run.
type Options struct {
	// Quick runs fewer samples and shorter windows: a smoke check that the harness works, whose
	// figures are not for quoting.
	Quick bool
	// Only, when set, runs only the phases whose name contains it.
	Only string
	// Root is the repository root (holding go.mod).
	Root string
	// Self is the path of the running bench binary, re-executed as an application process.
	Self string
	// Log receives progress lines.
	Log func(format string, args ...any)
}

// Bench is one run: the control plane, the report being built and the helpers the scenarios
// share.
type Bench struct {
	Options
	Env    *testenv.Env
	Report *Report

	tmp   string
	start time.Time

	handoff, handoffBase []time.Duration
	releases, writes     []time.Duration // our Release calls; probe Lease updates

	mu sync.Mutex // protects Report.Anomalies
}

// RestConfig returns a copy of the admin configuration for one component, with the side-car's
// client-side rate limits (QPS 50, burst 100, server.Run's defaults; the baseline gets the
// same so that neither is throttled differently) and request counting in counter (if not nil).
func (b *Bench) RestConfig(counter *Counter, userAgent string) *rest.Config {
	rc := rest.CopyConfig(b.Env.Config)
	rc.QPS, rc.Burst = 50, 100
	rc.UserAgent = userAgent
	if counter != nil {
		rc.Wrap(counter.Wrap)
	}
	return rc
}

// Namespace creates a namespace named prefix plus a random suffix (or exactly prefix, if exact).
func (b *Bench) Namespace(ctx context.Context, prefix string, exact bool) (string, error) {
	name := prefix
	if !exact {
		var r [3]byte
		_, _ = rand.Read(r[:])
		name = prefix + "-" + hex.EncodeToString(r[:])
	}
	_, err := b.Env.Clientset.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("creating namespace %s: %w", name, err)
	}
	return name, nil
}

// Anomaly records something that invalidates or qualifies a figure (for example a waiter that
// was granted a lock still held).
func (b *Bench) Anomaly(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	b.mu.Lock()
	b.Report.Anomalies = append(b.Report.Anomalies, msg)
	b.mu.Unlock()
	b.logf("ANOMALY: %s", msg)
}

func (b *Bench) logf(format string, args ...any) {
	if b.Log != nil {
		b.Log("[%5.1fs] "+format, append([]any{time.Since(b.start).Seconds()}, args...)...)
	}
}

// writeKubeconfig writes a kubeconfig file for the admin configuration, for the side-car binary.
func (b *Bench) writeKubeconfig() (string, error) {
	c := b.Env.Config
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: c.Host, CertificateAuthorityData: c.CAData}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: c.CertData, ClientKeyData: c.KeyData, Token: c.BearerToken}
	kc.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "admin"}
	kc.CurrentContext = "envtest"
	path := filepath.Join(b.tmp, "kubeconfig")
	return path, clientcmd.WriteToFile(*kc, path)
}

// FindRoot returns the repository root: the nearest directory at or above dir whose go.mod
// declares this module.
func FindRoot(dir string) (string, error) {
	for d := dir; ; d = filepath.Dir(d) {
		if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil && strings.Contains(string(b), "module github.com/metaparticle-io/sync\n") {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no go.mod of github.com/metaparticle-io/sync at or above %s", dir)
		}
	}
}
