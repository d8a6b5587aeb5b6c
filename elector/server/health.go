package server

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/metaparticle-io/sync/elector"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// aliveTimeout bounds the liveness check: a side-car whose state cannot be reached within it is
// wedged.
const aliveTimeout = 2 * time.Second

// NewHealthHandler serves, for the kubelet and Prometheus, without making any API request:
//
//	/healthz  liveness: 200 while the Engine runs and its state can be reached, 503 after it
//	          stopped or when it is wedged
//	/readyz   startup and readiness: 200 once the Lease informer has synced and until the
//	          shutdown begins, 503 with the reason otherwise. API server trouble after the first
//	          sync does not make it fail. With ?verbose it lists each check, and the API server
//	          trouble the Engine has seen (informational: it never fails the probe).
//	/metrics  the metrics gathered from g, in the Prometheus text format
//
// Nothing here names a lock, an election or a holder: the port is reachable from other Pods.
func NewHealthHandler(e *elector.Engine, g prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), aliveTimeout)
		defer cancel()
		if err := e.Alive(ctx); err != nil {
			plain(w, http.StatusServiceUnavailable, "not alive: "+err.Error())
			return
		}
		plain(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		err := e.Ready()
		if _, verbose := r.URL.Query()["verbose"]; verbose {
			var b strings.Builder
			check := func(name string, err error) {
				if err != nil {
					// One line each: readers (syncctl sidecars) take a check per line.
					fmt.Fprintf(&b, "[-]%s: %s\n", name, strings.ReplaceAll(err.Error(), "\n", " "))
				} else {
					fmt.Fprintf(&b, "[+]%s ok\n", name)
				}
			}
			check("serving", err)
			check("api-server (informational)", e.APIStatus())
			status := http.StatusOK
			if err != nil {
				status = http.StatusServiceUnavailable
			}
			plain(w, status, strings.TrimSuffix(b.String(), "\n"))
			return
		}
		if err != nil {
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
