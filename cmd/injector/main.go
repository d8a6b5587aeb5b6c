// Command injector serves the Metaparticle Sync mutating admission webhook, which adds the elector
// side-car to Pods annotated metaparticle.io/sync: "true". Run it with --help for its flags.
package main

import (
	"flag"
	"fmt"
	"os"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/metaparticle-io/sync/webhook"
)

func main() {
	cfgFlags := webhook.BindConfigFlags(flag.CommandLine, webhook.DefaultConfig(""))
	srv := webhook.ServerOptions{Port: 9443, CertDir: "/tmp/k8s-webhook-server/serving-certs", CheckRBAC: true}
	srv.BindFlags(flag.CommandLine)
	metricsAddr := flag.String("metrics-bind-address", ":8080", "Prometheus metrics address; 0 disables")
	healthAddr := flag.String("health-probe-bind-address", ":8081", "health probe address (/healthz, /readyz)")
	zapOpts := zap.Options{}
	zapOpts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))
	cfg, err := cfgFlags.Config()
	if err != nil {
		fail(err)
	}

	mgr, err := ctrl.NewManager(ctrl.GetConfigOrDie(), ctrl.Options{
		Metrics:                metricsserver.Options{BindAddress: *metricsAddr},
		HealthProbeBindAddress: *healthAddr,
		WebhookServer:          webhook.NewServer(srv),
	})
	if err != nil {
		fail(err)
	}
	if err := webhook.Setup(mgr, cfg, srv); err != nil {
		fail(err)
	}
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "injector:", err)
	os.Exit(2)
}
