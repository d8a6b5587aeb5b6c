package webhook

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	authorizationclient "k8s.io/client-go/kubernetes/typed/authorization/v1"
	"k8s.io/utils/clock"
)

// SidecarLeaseVerbs are the verbs the side-car uses on coordination.k8s.io Leases in its own
// namespace: the watches of the Leases in use (list, watch), the first grant of a name (create), grants, renewals and
// releases (update), and the deletion of idle Leases (delete). deploy/rbac/sidecar-role.yaml and
// the chart grant exactly these. Locks work without delete (see idleVerb).
var SidecarLeaseVerbs = []string{"list", "watch", "create", "update", idleVerb}

// idleVerb is the one verb the side-car can do without: without it, idle Leases are not deleted
// and accumulate in the namespace.
const idleVerb = "delete"

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
// SidecarLeaseVerbs order; nil means it has them all.
func (a *AccessChecker) MissingVerbs(ctx context.Context, namespace, serviceAccount string) ([]string, error) {
	key := namespace + "/" + serviceAccount
	now := a.clock.Now()
	a.mu.Lock()
	e, ok := a.cache[key]
	a.mu.Unlock()
	if ok && now.Before(e.expires) {
		return e.missing, nil
	}

	user := "system:serviceaccount:" + namespace + ":" + serviceAccount
	var missing []string
	for _, verb := range SidecarLeaseVerbs {
		review := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User:   user,
			Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace, "system:authenticated"},
			ResourceAttributes: &authorizationv1.ResourceAttributes{
				Namespace: namespace, Verb: verb, Group: "coordination.k8s.io", Resource: "leases",
			},
		}}
		got, err := a.reviews.Create(ctx, review, metav1.CreateOptions{})
		if err != nil {
			return nil, fmt.Errorf("subject access review for %s %s leases: %w", user, verb, err)
		}
		if !got.Status.Allowed {
			missing = append(missing, verb)
		}
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
	if len(missing) == 1 && missing[0] == idleVerb {
		consequence = "cannot delete idle Leases, which then accumulate in the namespace (locks work); add delete to the Role bound to it, or bind the ClusterRole"
	}
	return fmt.Sprintf("service account %s/%s may not %s leases in namespace %s, so the metaparticle-sync side-car %s: "+
		"kubectl create rolebinding %s-metaparticle-sync --namespace %s --clusterrole %s --serviceaccount %s:%s",
		namespace, serviceAccount, strings.Join(missing, ", "), namespace, consequence,
		serviceAccount, namespace, clusterRole, namespace, serviceAccount)
}
