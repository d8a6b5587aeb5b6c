// Package leaseaccess asks the API server whether a service account may use Leases as the
// side-car does (contract.SidecarLeaseVerbs). The injector asks it for each Pod it injects (with
// a cache, in package webhook) and syncctl check for the service accounts of a namespace.
package leaseaccess

import (
	"context"
	"fmt"

	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	authorizationclient "k8s.io/client-go/kubernetes/typed/authorization/v1"

	"github.com/metaparticle-io/sync/internal/contract"
)

// MissingVerbs returns the Lease verbs that serviceAccount in namespace is not allowed, in
// contract.SidecarLeaseVerbs order; nil means it has them all. It sends one SubjectAccessReview
// per verb, as the service account's user and groups, so the caller needs create on
// subjectaccessreviews.
func MissingVerbs(ctx context.Context, reviews authorizationclient.SubjectAccessReviewInterface, namespace, serviceAccount string) ([]string, error) {
	user := "system:serviceaccount:" + namespace + ":" + serviceAccount
	var missing []string
	for _, verb := range contract.SidecarLeaseVerbs {
		review := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User:   user,
			Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace, "system:authenticated"},
			ResourceAttributes: &authorizationv1.ResourceAttributes{
				Namespace: namespace, Verb: verb, Group: "coordination.k8s.io", Resource: "leases",
			},
		}}
		got, err := reviews.Create(ctx, review, metav1.CreateOptions{})
		if err != nil {
			return nil, fmt.Errorf("subject access review for %s %s leases: %w", user, verb, err)
		}
		if !got.Status.Allowed {
			missing = append(missing, verb)
		}
	}
	return missing, nil
}

// OnlyIdleVerbMissing reports whether missing lacks only contract.IdleLeaseVerb: locks work, but
// idle Leases accumulate in the namespace.
func OnlyIdleVerbMissing(missing []string) bool {
	return len(missing) == 1 && missing[0] == contract.IdleLeaseVerb
}

// RoleBindingCommand is the kubectl command that grants serviceAccount of namespace the Lease
// verbs of clusterRole (the chart's side-car ClusterRole), as the injector's RBAC warning and
// syncctl check print it.
func RoleBindingCommand(namespace, serviceAccount, clusterRole string) string {
	return fmt.Sprintf("kubectl create rolebinding %s-metaparticle-sync --namespace %s --clusterrole %s --serviceaccount %s:%s",
		serviceAccount, namespace, clusterRole, namespace, serviceAccount)
}
