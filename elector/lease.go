package elector

import (
	"fmt"
	"strconv"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/wire"
)

// This file builds the Lease objects the side-car writes. Every write is a Create or a
// conditional Update (metadata.resourceVersion set to the version it was computed from), so two
// side-cars never both succeed in changing the same version.

// parseRV returns the resourceVersion of l as the etcd revision it is. Fencing tokens are built
// from it (see the package documentation); an API server whose resourceVersions are not decimal
// integers cannot provide them, and the side-car refuses to grant rather than invent tokens.
func parseRV(l *coordinationv1.Lease) (uint64, error) {
	rv, err := strconv.ParseUint(l.ResourceVersion, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("resourceVersion %q of Lease %s is not a decimal integer: fencing tokens need an etcd-backed API server whose resourceVersions are etcd revisions", l.ResourceVersion, l.Name)
	}
	return rv, nil
}

// holderOf returns spec.holderIdentity, "" when unset.
func holderOf(l *coordinationv1.Lease) string {
	if l == nil || l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

// tokenOf returns the fencing-token annotation, "" when unset.
func tokenOf(l *coordinationv1.Lease) string {
	if l == nil {
		return ""
	}
	return l.Annotations[contract.AnnotationToken]
}

// durationOf returns spec.leaseDurationSeconds, or def when it is unset or not positive.
func durationOf(l *coordinationv1.Lease, def time.Duration) time.Duration {
	if l == nil || l.Spec.LeaseDurationSeconds == nil || *l.Spec.LeaseDurationSeconds <= 0 {
		return def
	}
	return time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second
}

// newLease returns a Lease, to be created, that names holder as holder of the lock or election.
// It carries no fencing token: the token is the creation's resourceVersion, known only after
// the Create, and is written by a second, conditional Update (stampToken).
func newLease(namespace, leaseName string, kind wire.Kind, name, holder string, now time.Time, d time.Duration) *coordinationv1.Lease {
	l := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{
			Name:      leaseName,
			Namespace: namespace,
			Labels:    map[string]string{contract.LabelManagedBy: contract.ManagedByValue, contract.LabelKind: string(kind)},
			Annotations: map[string]string{
				contract.AnnotationName: name,
			},
		},
	}
	setHolder(l, holder, now, d)
	l.Spec.LeaseTransitions = ptr(int32(0))
	return l
}

// takeLease returns base changed to name holder as holder with the given token: the grant on
// the Update path. base must be a copy.
func takeLease(base *coordinationv1.Lease, kind wire.Kind, name, holder string, token uint64, now time.Time, d time.Duration) *coordinationv1.Lease {
	l := base
	ensureMeta(l, kind, name)
	setHolder(l, holder, now, d)
	var transitions int32
	if l.Spec.LeaseTransitions != nil {
		transitions = *l.Spec.LeaseTransitions
	}
	l.Spec.LeaseTransitions = ptr(transitions + 1)
	l.Annotations[contract.AnnotationToken] = strconv.FormatUint(token, 10)
	return l
}

// stampToken returns created with its fencing token set to token. created must be a copy.
func stampToken(created *coordinationv1.Lease, token uint64) *coordinationv1.Lease {
	if created.Annotations == nil {
		created.Annotations = map[string]string{}
	}
	created.Annotations[contract.AnnotationToken] = strconv.FormatUint(token, 10)
	return created
}

// renewLease returns base with renewTime set to now. base must be a copy.
func renewLease(base *coordinationv1.Lease, now time.Time, d time.Duration) *coordinationv1.Lease {
	base.Spec.RenewTime = &metav1.MicroTime{Time: now}
	base.Spec.LeaseDurationSeconds = ptr(int32(d / time.Second))
	return base
}

// releaseLease returns base with the holder cleared, so that the next contender can take it at
// once. The token annotation stays: it records the last grant. base must be a copy.
func releaseLease(base *coordinationv1.Lease, now time.Time) *coordinationv1.Lease {
	delete(base.Annotations, contract.AnnotationPodUID)
	delete(base.Labels, contract.LabelPodUID)
	base.Spec.HolderIdentity = nil
	base.Spec.AcquireTime = nil
	base.Spec.RenewTime = &metav1.MicroTime{Time: now}
	return base
}

func setHolder(l *coordinationv1.Lease, holder string, now time.Time, d time.Duration) {
	l.Spec.HolderIdentity = ptr(holder)
	l.Spec.AcquireTime = &metav1.MicroTime{Time: now}
	l.Spec.RenewTime = &metav1.MicroTime{Time: now}
	l.Spec.LeaseDurationSeconds = ptr(int32(d / time.Second))
}

func ensureMeta(l *coordinationv1.Lease, kind wire.Kind, name string) {
	if l.Labels == nil {
		l.Labels = map[string]string{}
	}
	l.Labels[contract.LabelManagedBy] = contract.ManagedByValue
	l.Labels[contract.LabelKind] = string(kind)
	if l.Annotations == nil {
		l.Annotations = map[string]string{}
	}
	l.Annotations[contract.AnnotationName] = name
}

func ptr[T any](v T) *T { return &v }

func formatToken(t uint64) string { return strconv.FormatUint(t, 10) }
