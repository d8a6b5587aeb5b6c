package elector

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/metaparticle-io/sync/elector/internal/leasefake"
)

// countingUpdates counts the Updates that go through a LeaseClient.
type countingUpdates struct {
	LeaseClient
	mu sync.Mutex
	n  int
}

func (c *countingUpdates) Update(ctx context.Context, l *coordinationv1.Lease, o metav1.UpdateOptions) (*coordinationv1.Lease, error) {
	c.mu.Lock()
	c.n++
	c.mu.Unlock()
	return c.LeaseClient.Update(ctx, l, o)
}

func (c *countingUpdates) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// Renewals go through Options.Renewals, and only they: with a rate budget of their own they never
// wait behind other work, releases included (a storm of try-and-release would otherwise starve
// them: make bench's storm lost all 300 holds that way).
func TestRenewalsUseTheirOwnClient(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		api := leasefake.New(t)
		renewals := &countingUpdates{LeaseClient: api.Leases(testNS)}
		b := newBedWith(t, Config{PodName: "pod-a"}, api, nil, func(o *Options) { o.Renewals = renewals })
		s := b.open()
		g := b.mustAcquire(s.Key(), "x") // a Create and the Update that stamps the token
		if got := renewals.count(); got != 0 {
			t.Fatalf("Updates through Renewals after a grant: got %d; want 0", got)
		}
		b.step(b.e.Config().RenewPeriod)
		if got := renewals.count(); got != 1 {
			t.Fatalf("Updates through Renewals after a renew period: got %d; want 1 (the renewal)", got)
		}
		if err := b.e.Release(context.Background(), s.Key(), "x", g.Token); err != nil {
			t.Fatalf("Release: got %v; want nil", err)
		}
		if got := renewals.count(); got != 1 {
			t.Errorf("Updates through Renewals after the release: got %d; want 1 (the release goes with other work)", got)
		}
		if h := holderOfStored(b.api, g.Lease); h != "" {
			t.Errorf("Lease after the release: got holder %q; want none", h)
		}
	})
}
