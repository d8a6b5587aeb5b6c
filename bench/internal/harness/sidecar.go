package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/metaparticle-io/sync/elector"
	"github.com/metaparticle-io/sync/elector/server"
	"github.com/metaparticle-io/sync/sdk"
)

// Sidecar is one in-process side-car: an elector Engine with its own Kubernetes client (and so
// its own connection pool, rate limiter and informer), serving the lock API on a loopback port,
// like the elector binary does in a Pod.
type Sidecar struct {
	Pod    string
	Engine *elector.Engine
	Addr   string // host:port of the lock API

	reg    *prometheus.Registry
	srv    *http.Server
	halted atomic.Bool
}

// StartSidecar starts a side-car for Pod pod in namespace ns, counting its API server requests
// in counter (which may be nil). Zero timings in cfg take the side-car's defaults.
func (b *Bench) StartSidecar(ctx context.Context, ns, pod string, counter *Counter, cfg elector.Config) (*Sidecar, error) {
	return b.startSidecar(ctx, ns, pod, counter, cfg, false)
}

// startSidecar is StartSidecar; with oneBudget, renewals share the rate budget of all other
// work, as before they had their own (the baseline of the storm benchmark).
func (b *Bench) startSidecar(ctx context.Context, ns, pod string, counter *Counter, cfg elector.Config, oneBudget bool) (*Sidecar, error) {
	rc := b.RestConfig(counter, "metaparticle-sync-elector")
	cfg.PodName, cfg.Namespace = pod, ns
	reg := prometheus.NewRegistry()
	var e *elector.Engine
	var err error
	if oneBudget {
		var leases elector.LeaseClient
		if leases, err = elector.NewLeaseClient(rc, ns); err == nil {
			e, err = elector.NewEngine(cfg, leases, elector.Options{Registerer: reg, Renewals: leases})
		}
	} else {
		e, err = elector.NewEngineForConfig(cfg, rc, elector.Options{Registerer: reg})
	}
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := e.Start(sctx); err != nil {
		e.Halt()
		return nil, fmt.Errorf("starting side-car %s: %w", pod, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.Halt()
		return nil, err
	}
	s := &Sidecar{Pod: pod, Engine: e, Addr: ln.Addr().String(), reg: reg,
		srv: &http.Server{Handler: server.NewHandler(e), ReadHeaderTimeout: 10 * time.Second}}
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

// ServeHealth serves the side-car's health port (/healthz, /readyz, /metrics) on a loopback
// port, as the elector binary does for the kubelet, until the side-car stops; it returns its
// base URL.
func (s *Sidecar) ServeHealth() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	hs := &http.Server{Handler: server.NewHealthHandler(s.Engine, s.reg), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	go func() {
		<-s.Engine.Done()
		_ = hs.Close()
	}()
	return "http://" + ln.Addr().String(), nil
}

// Client returns a new SDK client of the side-car: a new session, as one application process.
func (s *Sidecar) Client() *sdk.Client {
	c, err := sdk.NewClient(sdk.WithAddress(s.Addr), sdk.WithRetryTimeout(5*time.Second))
	if err != nil {
		panic(err) // only for an invalid address, which StartSidecar never makes
	}
	return c
}

// Waiting returns the side-car's metaparticle_sync_waiting gauge for kind ("lock" or
// "election"): lock waiters and election candidates not leading.
func (s *Sidecar) Waiting(kind string) float64 {
	return s.Sample("metaparticle_sync_waiting", "kind", kind)
}

// Losses returns the side-car's metaparticle_sync_losses_total, summed over its labels: holds
// lost, not released.
func (s *Sidecar) Losses() float64 { return s.Sample("metaparticle_sync_losses_total", "", "") }

// Sample returns the sum of the side-car's gauges or counters called name whose label has
// value (every series when label is ""), -1 if the metrics cannot be gathered.
func (s *Sidecar) Sample(name, label, value string) float64 {
	mfs, err := s.reg.Gather()
	if err != nil {
		return -1
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := label == ""
			for _, l := range m.GetLabel() {
				match = match || l.GetName() == label && l.GetValue() == value
			}
			if match {
				n += m.GetGauge().GetValue() + m.GetCounter().GetValue()
			}
		}
	}
	return n
}

// Kill stops the side-car as if its process died: nothing is released, and its connections
// (event streams, pending acquires) are cut.
func (s *Sidecar) Kill() {
	s.halted.Store(true)
	s.Engine.Halt()
	_ = s.srv.Close()
}

// Stop shuts the side-car down in order (every hold released), as on SIGTERM.
func (s *Sidecar) Stop() {
	if s.halted.Load() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_ = s.Engine.Shutdown(ctx)
	_ = s.srv.Close()
}

// waitFor polls cond every interval until it holds or timeout passes.
func waitFor(timeout, interval time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		time.Sleep(interval)
	}
	return nil
}
