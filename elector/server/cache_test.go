package server

import (
	"testing"
	"time"
)

// TestIntegrationUpdatesFromTheTrimmedCacheKeepManagedFields: the side-car's Lease cache drops
// managedFields, and its Updates, made from cached objects, leave the API server's own intact
// (an Update without managedFields keeps them).
func TestIntegrationUpdatesFromTheTrimmedCacheKeepManagedFields(t *testing.T) {
	ns := env.Namespace(t)
	a := startSidecar(t, ns, "pod-a", fast)
	s := a.c.open(time.Minute)
	g := a.c.mustAcquire(s.ID, "trimmed") // a Create and an Update
	if err := a.c.release(s.ID, "trimmed"); err != nil {
		t.Fatalf("release: got %v; want nil", err)
	}
	g2 := a.c.mustAcquire(s.ID, "trimmed") // an Update of the cached version
	l := getLease(t, ns, g.Lease)
	if l.ResourceVersion == "" || tokenOfGrant(t, g2) <= tokenOfGrant(t, g) {
		t.Fatalf("got Lease version %q, tokens %s then %s; want a second grant", l.ResourceVersion, g.Token, g2.Token)
	}
	if len(l.ManagedFields) == 0 {
		t.Errorf("managedFields of the Lease after Updates from the cache: got none; want the API server's")
	}
}
