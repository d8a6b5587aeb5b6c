// Package sidecartest runs real side-cars (elector Engines serving the v1 HTTP API on a loopback
// port) against a test's API server, for the integration tests of the packages that talk to
// side-cars (the SDK, syncctl). The elector package's own tests cannot use it: it imports elector.
package sidecartest

import (
	"context"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"github.com/metaparticle-io/sync/elector"
	"github.com/metaparticle-io/sync/elector/server"
)

// Sidecar is one Pod's side-car. Its fields are set by Start and read-only afterwards.
type Sidecar struct {
	// Pod is the Pod name in the side-car's Lease holder identities.
	Pod string
	// Engine is the side-car's lock and election engine.
	Engine *elector.Engine
	// Server serves the Engine's HTTP API on 127.0.0.1.
	Server *httptest.Server

	halted atomic.Bool
}

// Start starts the side-car of cfg.PodName in cfg.Namespace on the API server of restCfg. It is
// shut down, releasing its holds, when t ends (unless it was halted).
func Start(t testing.TB, restCfg *rest.Config, cfg elector.Config) *Sidecar {
	t.Helper()
	e, err := elector.NewEngineForConfig(cfg, restCfg, elector.Options{})
	if err != nil {
		t.Fatalf("NewEngineForConfig: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := e.Start(ctx); err != nil {
		t.Fatalf("Engine.Start: %v", err)
	}
	sc := &Sidecar{Pod: cfg.PodName, Engine: e, Server: httptest.NewServer(server.NewHandler(e))}
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := e.Shutdown(sctx); err != nil && !sc.halted.Load() {
			t.Errorf("Engine.Shutdown of %s: %v", cfg.PodName, err)
		}
		sc.Server.CloseClientConnections()
		sc.Server.Close()
	})
	return sc
}

// Addr is the side-car's host:port, as the SDKs take it.
func (sc *Sidecar) Addr() string { return sc.Server.Listener.Addr().String() }

// Halt stops the side-car abruptly, as if its process died: nothing is released, its clients'
// connections are cut, and its holds expire after the lease duration.
func (sc *Sidecar) Halt() {
	sc.halted.Store(true)
	sc.Engine.Halt()
	sc.Server.CloseClientConnections()
}
