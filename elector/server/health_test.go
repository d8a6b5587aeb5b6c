package server

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/metaparticle-io/sync/elector"
	"github.com/metaparticle-io/sync/elector/internal/leasefake"
	"github.com/metaparticle-io/sync/wire"
	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	k8stesting "k8s.io/client-go/testing"
)

func TestHealthEndpoints(t *testing.T) {
	forbidden := func(api *leasefake.API) {
		api.Clientset().PrependReactor("list", "leases", func(k8stesting.Action) (bool, runtime.Object, error) {
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Group: "coordination.k8s.io", Resource: "leases"}, "", nil)
		})
	}
	for _, tc := range []struct {
		name    string
		setup   func(*leasefake.API)
		start   bool
		path    string
		status  int
		contain string
	}{
		{"healthz", nil, true, "/healthz", 200, "ok"},
		{"ready", nil, true, "/readyz", 200, "ok"},
		{"not started", nil, false, "/readyz", 503, "has not synced"},
		{"RBAC forbids leases", forbidden, false, "/readyz", 503, "deploy/rbac/sidecar-role.yaml"},
		{"metrics", nil, true, "/metrics", 200, "metaparticle_sync_sessions 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				api := leasefake.New(t)
				if tc.setup != nil {
					tc.setup(api)
				}
				b := &bed{t: t, api: api}
				if tc.start {
					b = newBed(t, "pod-a", api, nil)
				} else {
					var err error
					b.reg = prometheus.NewRegistry()
					b.e, err = elector.NewEngine(elector.Config{PodName: "pod-a", Namespace: testNS}, api.Leases(testNS), elector.Options{Registerer: b.reg})
					if err != nil {
						t.Fatalf("NewEngine: got %v; want nil", err)
					}
					t.Cleanup(b.e.Halt)
					if tc.setup != nil {
						// Let the informer try, and fail, to list: the bubble's clock runs
						// through the 300 ms only once every goroutine waits for it.
						ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
						defer cancel()
						if err := b.e.Start(ctx); err == nil {
							t.Fatalf("Start: got nil; want the informer unable to sync")
						}
					}
				}
				srv := newPipeServer(t, NewHealthHandler(b.e, b.reg))
				resp, err := srv.Client.Get(srv.URL + tc.path)
				if err != nil {
					t.Fatalf("GET %s: got %v; want a response", tc.path, err)
				}
				defer resp.Body.Close()
				body, _ := io.ReadAll(resp.Body)
				if resp.StatusCode != tc.status || !strings.Contains(string(body), tc.contain) {
					t.Errorf("GET %s: got %d %q; want %d containing %q", tc.path, resp.StatusCode, body, tc.status, tc.contain)
				}
			})
		})
	}
}

// TestReadinessDoesNotFollowTheAPIServer: once synced, the side-car stays ready while its
// writes fail (the API server unreachable); ?verbose shows the trouble, and no probe makes an API
// request. The old /readyz listed Leases on every probe and failed with the API server.
func TestReadinessDoesNotFollowTheAPIServer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBed(t, "pod-a", nil, nil)
		srv := newPipeServer(t, NewHealthHandler(b.e, b.reg))
		get := func(path string) (int, string) {
			t.Helper()
			resp, err := srv.Client.Get(srv.URL + path)
			if err != nil {
				t.Fatalf("GET %s: got %v; want a response", path, err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, string(body)
		}
		var requests atomic.Int64
		b.api.Clientset().PrependReactor("*", "*", func(k8stesting.Action) (bool, runtime.Object, error) {
			requests.Add(1)
			return true, nil, apierrors.NewServiceUnavailable("the API server is being upgraded")
		})
		s := b.open()
		if _, err := b.e.Acquire(context.Background(), s.Key(), "x", wire.AcquireRequest{Try: true}); wire.CodeOf(err) != wire.CodeUnavailable {
			t.Fatalf("acquire while the API server fails: got %v; want %s", err, wire.CodeUnavailable)
		}
		before := requests.Load()
		for _, tc := range []struct {
			path, want string
		}{
			{"/readyz", "ok"},
			{"/readyz?verbose", "[-]api-server (informational): unavailable: the API server did not answer a "}, // write, or list of the new name
			{"/healthz", "ok"},
		} {
			if status, body := get(tc.path); status != http.StatusOK || !strings.Contains(body, tc.want) {
				t.Errorf("GET %s while the API server fails: got %d %q; want 200 containing %q", tc.path, status, body, tc.want)
			}
		}
		if got := requests.Load() - before; got != 0 {
			t.Errorf("API requests made by the probes: got %d; want 0", got)
		}
	})
}
