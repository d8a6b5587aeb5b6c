package server

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/metaparticle-io/sync/elector"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// readyTimeout bounds the API server round trip of a readiness check.
const readyTimeout = 2 * time.Second

// NewHealthHandler serves, for the kubelet and Prometheus:
//
//	/healthz  200 while the Engine runs (it is not halted), 503 after
//	/readyz   200 when Engine.Ready reports nothing wrong, 503 with the reason otherwise
//	/metrics  the metrics gathered from g, in the Prometheus text format
func NewHealthHandler(e *elector.Engine, g prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-e.Done():
			plain(w, http.StatusServiceUnavailable, "stopped")
		default:
			plain(w, http.StatusOK, "ok")
		}
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
		defer cancel()
		if err := e.Ready(ctx); err != nil {
			plain(w, http.StatusServiceUnavailable, "not ready: "+err.Error())
			return
		}
		plain(w, http.StatusOK, "ok")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	return mux
}

func plain(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	fmt.Fprintln(w, msg)
}
