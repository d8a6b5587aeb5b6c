package elector

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	k8stesting "k8s.io/client-go/testing"
)

func TestHealthEndpoints(t *testing.T) {
	forbidden := func(api *fakeAPI) {
		api.cs.PrependReactor("list", "leases", func(k8stesting.Action) (bool, runtime.Object, error) {
			return true, nil, apierrors.NewForbidden(leasesGVR.GroupResource(), "", nil)
		})
	}
	for _, tc := range []struct {
		name    string
		setup   func(*fakeAPI)
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
			api := newFakeAPI(t)
			if tc.setup != nil {
				tc.setup(api)
			}
			b := &bed{t: t, api: api}
			if tc.start {
				b = newBed(t, "pod-a", api, nil)
			} else {
				var err error
				b.e, err = NewEngine(Config{PodName: "pod-a", Namespace: testNS}, fakeLeases(api.cs, testNS), Options{})
				if err != nil {
					t.Fatal(err)
				}
				if tc.setup != nil {
					// Let the informer try, and fail, to list.
					ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
					defer cancel()
					if err := b.e.Start(ctx); err == nil {
						t.Fatalf("Start succeeded; want the informer unable to sync")
					}
				}
				t.Cleanup(b.e.Halt)
			}
			reg := b.reg
			if reg == nil {
				b.reg = newRegistryFor(b.e)
				reg = b.reg
			}
			srv := httptest.NewServer(NewHealthHandler(b.e, reg))
			defer srv.Close()
			resp, err := http.Get(srv.URL + tc.path)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.status || !strings.Contains(string(body), tc.contain) {
				t.Errorf("GET %s: %d %q; want %d containing %q", tc.path, resp.StatusCode, body, tc.status, tc.contain)
			}
		})
	}
}
