package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/go-logr/logr"
	"github.com/metaparticle-io/sync/elector"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
)

// NewLogger returns a logger that writes JSON lines to w (log/slog's JSON handler) at the given
// verbosity, and routes client-go's klog output through it too.
func NewLogger(w io.Writer, level int) logr.Logger {
	log := logr.FromSlogHandler(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.Level(-level)}))
	klog.SetLogger(log.WithName("client-go"))
	return log
}

// Run is the elector command: it connects to the API server, serves the lock API and the health
// endpoints, and on ctx's end (SIGTERM) shuts down in order: new work is refused, every hold is
// released, in-flight requests finish, and Run returns. It returns an error for a bad
// configuration, a listener that cannot be opened, or a server that fails.
func Run(ctx context.Context, s Settings, log logr.Logger) error {
	s.complete(os.ReadFile, os.Hostname)
	// Checked here as well as by the Engine, so that a bad configuration is reported before
	// anything that depends on where the side-car runs (the in-cluster configuration).
	if err := s.Config.Validate(); err != nil {
		return fmt.Errorf("invalid configuration: %w", err)
	}
	restCfg, err := s.restConfig()
	if err != nil {
		return err
	}
	restCfg.UserAgent = "metaparticle-sync-elector"
	// Each hold costs one write per RenewPeriod; handoffs cost one or two. Allow bursts of
	// handoffs without client-side throttling delaying renewals.
	restCfg.QPS, restCfg.Burst = DefaultKubeAPIQPS, DefaultKubeAPIBurst
	if s.KubeAPIQPS > 0 {
		restCfg.QPS = float32(s.KubeAPIQPS)
	}
	if s.KubeAPIBurst > 0 {
		restCfg.Burst = s.KubeAPIBurst
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// cfg is the configuration with the Engine's defaults applied.
	e, err := elector.NewEngineForConfig(s.Config, restCfg, elector.Options{Log: log, Registerer: reg})
	if err != nil {
		return err
	}
	cfg := e.Config()

	apiLn, err := net.Listen("tcp", cfg.ListenAddress)
	if err != nil {
		return fmt.Errorf("listening for the lock API: %w", err)
	}
	healthLn, err := net.Listen("tcp", cfg.HealthAddress)
	if err != nil {
		apiLn.Close()
		return fmt.Errorf("listening for health and metrics: %w", err)
	}
	errLog := slog.NewLogLogger(logr.ToSlogHandler(log.WithName("http")), slog.LevelError)
	// No write timeout on the lock API: acquires block and event streams last as long as
	// their sessions.
	apiSrv := &http.Server{Handler: NewHandler(e), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, ErrorLog: errLog}
	healthSrv := &http.Server{Handler: NewHealthHandler(e, reg), ReadHeaderTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second, ErrorLog: errLog}
	errc := make(chan error, 2)
	go func() { errc <- serve("lock API", apiSrv, apiLn) }()
	go func() { errc <- serve("health", healthSrv, healthLn) }()
	log.Info("listening", "api", apiLn.Addr().String(), "health", healthLn.Addr().String())
	go func() {
		if err := e.Start(ctx); err != nil && ctx.Err() == nil {
			log.Error(err, "the side-car cannot start")
		}
	}()

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("stop requested; shutting down")
	case runErr = <-errc:
	}
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if err := e.Shutdown(sctx); err != nil {
		log.Error(err, "not every hold was released; the rest expire after their lease duration")
	}
	if err := apiSrv.Shutdown(sctx); err != nil {
		log.Error(err, "the lock API did not finish its requests in time")
	}
	if err := healthSrv.Shutdown(sctx); err != nil {
		log.Error(err, "the health server did not finish its requests in time")
	}
	return runErr
}

func serve(what string, srv *http.Server, ln net.Listener) error {
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("%s server: %w", what, err)
	}
	return nil
}

func (s Settings) restConfig() (*rest.Config, error) {
	if s.Kubeconfig != "" {
		c, err := clientcmd.BuildConfigFromFlags("", s.Kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("loading kubeconfig %s: %w", s.Kubeconfig, err)
		}
		return c, nil
	}
	c, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("no in-cluster configuration (%v); outside a cluster, pass --kubeconfig or set KUBECONFIG", err)
	}
	return c, nil
}
