// Command cert-manager-controllers runs cert-manager's own controllers and its cainjector, from
// the github.com/cert-manager/cert-manager module, in one process against any API server that a
// kubeconfig reaches. It is a test tool: it lets the project prove its Helm chart against real
// cert-manager behaviour on an envtest control plane, which cannot run cert-manager's images.
//
// What runs:
//   - issuers and clusterissuers (clusterissuers only when not scoped to one namespace), with the
//     SelfSigned and CA issuer types;
//   - the certificaterequests approver and the SelfSigned and CA certificaterequests issuers;
//   - the certificates trigger, key-manager, request-manager, issuing, readiness and
//     revision-manager controllers;
//   - cainjector for MutatingWebhookConfigurations, ValidatingWebhookConfigurations,
//     APIServices and CustomResourceDefinitions, from Secrets and Certificates.
//
// ACME, Vault, Venafi, the ingress/gateway shims, the CertificateSigningRequest controllers, the
// metrics server and the webhook are not part of it. The cert-manager CRDs must be installed
// (the program waits for them); hack/cert-manager.sh --print-crds prints where they are.
//
// It exits 0 after SIGTERM or SIGINT once every control loop has stopped.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"

	logf "github.com/cert-manager/cert-manager/pkg/logs"
)

type options struct {
	kubeconfig               string
	namespace                string
	clusterResourceNamespace string
	leaderElect              bool
	leaderElectionNamespace  string
	workers                  int
	crdWait                  time.Duration
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	var o options
	// A FlagSet of our own: controller-runtime registers its own -kubeconfig on flag.CommandLine.
	fs := flag.NewFlagSet("cert-manager-controllers", flag.ContinueOnError)
	fs.StringVar(&o.kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"),
		"kubeconfig of the API server (default $KUBECONFIG; in-cluster config when both are empty)")
	fs.StringVar(&o.namespace, "namespace-scope", "",
		"watch only this namespace (default: all namespaces; clusterissuers is then not run)")
	fs.StringVar(&o.clusterResourceNamespace, "cluster-resource-namespace", "cert-manager",
		"namespace holding the Secrets that ClusterIssuers refer to")
	fs.BoolVar(&o.leaderElect, "leader-elect", false, "run only while holding a leader-election Lease")
	fs.StringVar(&o.leaderElectionNamespace, "leader-election-namespace", "",
		"namespace of the leader-election Lease (default: --cluster-resource-namespace)")
	fs.IntVar(&o.workers, "workers", 5, "concurrent workers per controller")
	fs.DurationVar(&o.crdWait, "crd-wait", 5*time.Minute, "how long to wait for the cert-manager CRDs")
	klog.InitFlags(fs)
	// cert-manager logs its ordinary progress at V(2) (logs.InfoLevel); show it by default.
	_ = fs.Set("v", "2")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "unexpected arguments: %q\n", fs.Args())
		return 2
	}
	if o.leaderElectionNamespace == "" {
		o.leaderElectionNamespace = o.clusterResourceNamespace
	}

	logf.InitLogs()
	defer logf.FlushLogs()
	ctrl.SetLogger(klog.NewKlogr())
	log := logf.Log

	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGTERM, os.Interrupt)
	go cancelOnSignal(signals, cancel)
	ctx = logf.NewContext(ctx, log)

	if err := start(ctx, o); err != nil && !errors.Is(context.Cause(ctx), errSignal) {
		log.Error(err, "exiting")
		return 1
	}
	log.Info("all control loops stopped; exiting")
	return 0
}

var errSignal = errors.New("received a termination signal")

// cancelOnSignal cancels on the first SIGTERM or SIGINT; a second one exits at once.
func cancelOnSignal(ch <-chan os.Signal, cancel context.CancelCauseFunc) {
	s := <-ch
	logf.Log.Info("shutting down", "signal", s.String())
	cancel(errSignal)
	<-ch
	os.Exit(130)
}

// start waits for the CRDs, then runs the controllers and cainjector (once elected, if leader
// election is on) until ctx ends or one of them fails.
func start(ctx context.Context, o options) error {
	cfg, err := loadConfig(o.kubeconfig)
	if err != nil {
		return err
	}
	logf.Log.Info("starting", "apiServer", cfg.Host, "namespaceScope", o.namespace,
		"clusterResourceNamespace", o.clusterResourceNamespace, "leaderElect", o.leaderElect)
	if err := waitForCRDs(ctx, cfg, o.crdWait); err != nil {
		return err
	}
	runAll := func(ctx context.Context) error {
		g, ctx := errgroup.WithContext(ctx)
		g.Go(func() error { return runControllers(ctx, o) })
		g.Go(func() error { return runCAInjector(ctx, cfg, o) })
		return g.Wait()
	}
	if !o.leaderElect {
		return runAll(ctx)
	}
	return runElected(ctx, cfg, o.leaderElectionNamespace, runAll)
}

// loadConfig reads the kubeconfig at path, or the in-cluster configuration when path is empty,
// as cert-manager's own controller does.
func loadConfig(path string) (*rest.Config, error) {
	if path == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("no --kubeconfig or $KUBECONFIG, and not in a cluster: %w", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("loading kubeconfig %s: %w", path, err)
	}
	return cfg, nil
}
