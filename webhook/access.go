package webhook

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	authorizationclient "k8s.io/client-go/kubernetes/typed/authorization/v1"
	"k8s.io/utils/clock"

	"github.com/metaparticle-io/sync/internal/leaseaccess"
)

// AccessChecker asks the API server, with SubjectAccessReviews, whether a service account may use
// Leases as the side-car does. Answers (not errors) are cached for a TTL per namespace and service
// account, so a burst of Pods costs one review per verb once the first answer is in; Pods admitted
// concurrently before then each ask. The zero value is not usable; use NewAccessChecker. It is
// safe for concurrent use.
type AccessChecker struct {
	reviews authorizationclient.SubjectAccessReviewInterface
	ttl     time.Duration
	clock   clock.PassiveClock

	mu    sync.Mutex // protects cache
	cache map[string]accessEntry
}

type accessEntry struct {
	missing []string
	expires time.Time
}

// NewAccessChecker returns a checker that caches answers for ttl (30s when ttl is zero or
// negative), reading the time from clk (the real clock when nil).
func NewAccessChecker(reviews authorizationclient.SubjectAccessReviewInterface, ttl time.Duration, clk clock.PassiveClock) *AccessChecker {
	if ttl <= 0 {
		ttl = 30 * time.Second
	}
	if clk == nil {
		clk = clock.RealClock{}
	}
	return &AccessChecker{reviews: reviews, ttl: ttl, clock: clk, cache: map[string]accessEntry{}}
}

// MissingVerbs returns the Lease verbs that serviceAccount in namespace is not allowed, in
// contract.SidecarLeaseVerbs order; nil means it has them all.
func (a *AccessChecker) MissingVerbs(ctx context.Context, namespace, serviceAccount string) ([]string, error) {
	key := namespace + "/" + serviceAccount
	now := a.clock.Now()
	a.mu.Lock()
	e, ok := a.cache[key]
	a.mu.Unlock()
	if ok && now.Before(e.expires) {
		return e.missing, nil
	}

	missing, err := leaseaccess.MissingVerbs(ctx, a.reviews, namespace, serviceAccount)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	a.cache[key] = accessEntry{missing: missing, expires: now.Add(a.ttl)}
	a.mu.Unlock()
	return missing, nil
}

// rbacWarning is the admission warning for a service account that lacks Lease verbs: it says what
// the side-car cannot do without them and gives the exact RoleBinding to create.
func rbacWarning(namespace, serviceAccount, clusterRole string, missing []string) string {
	consequence := "cannot take locks"
	if leaseaccess.OnlyIdleVerbMissing(missing) {
		consequence = "cannot delete idle Leases, which then accumulate in the namespace (locks work); add delete to the Role bound to it, or bind the ClusterRole"
	}
	return fmt.Sprintf("service account %s/%s may not %s leases in namespace %s, so the metaparticle-sync side-car %s: %s",
		namespace, serviceAccount, strings.Join(missing, ", "), namespace, consequence,
		leaseaccess.RoleBindingCommand(namespace, serviceAccount, clusterRole))
}
