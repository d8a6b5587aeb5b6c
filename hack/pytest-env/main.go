// Command pytest-env is test support for the Python SDK's tests (sdk/python/tests): it starts a
// real kube-apiserver and etcd through internal/testenv, writes an administrator kubeconfig for
// them, and serves a tiny line protocol on standard input and output until standard input closes
// or it receives SIGTERM or SIGINT; then it stops the control plane and removes its files.
//
// Output: first one line of JSON, {"kubeconfig": "<path>", "host": "<API server URL>"}. Then
// one answer line per command:
//
//	namespace <name>   creates the namespace; answers "ok <name>" or "error <message>"
//
// It is not part of the product and is built only by the Python tests (or `make python-test`).
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/metaparticle-io/sync/internal/testenv"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "pytest-env:", err)
		os.Exit(1)
	}
}

func run() error {
	env, err := testenv.Start()
	if err != nil {
		return err
	}
	defer func() {
		if err := env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "pytest-env: stopping the control plane:", err)
		}
	}()
	dir, err := os.MkdirTemp("", "pytest-env-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*kubeconfigFor(env.Config), kubeconfig); err != nil {
		return fmt.Errorf("writing the kubeconfig: %w", err)
	}
	hello, _ := json.Marshal(map[string]string{"kubeconfig": kubeconfig, "host": env.Config.Host})
	fmt.Printf("%s\n", hello)

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, os.Interrupt)
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	for {
		select {
		case <-signals:
			return nil
		case line, ok := <-lines:
			if !ok {
				return nil // the tests ended, or died
			}
			fmt.Println(serve(env, line))
		}
	}
}

// serve runs one command and returns its answer line.
func serve(env *testenv.Env, line string) string {
	cmd, arg, _ := strings.Cut(strings.TrimSpace(line), " ")
	switch cmd {
	case "namespace":
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: arg}}
		if _, err := env.Clientset.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
			return "error " + strings.ReplaceAll(err.Error(), "\n", " ")
		}
		return "ok " + arg
	default:
		return fmt.Sprintf("error unknown command %q", cmd)
	}
}

// kubeconfigFor returns a kubeconfig with cfg's server and credentials.
func kubeconfigFor(cfg *rest.Config) *clientcmdapi.Config {
	c := clientcmdapi.NewConfig()
	c.Clusters["envtest"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	c.AuthInfos["admin"] = &clientcmdapi.AuthInfo{
		ClientCertificateData: cfg.CertData,
		ClientKeyData:         cfg.KeyData,
		Token:                 cfg.BearerToken,
	}
	c.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "admin"}
	c.CurrentContext = "envtest"
	return c
}
