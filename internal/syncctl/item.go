package syncctl

import (
	"cmp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/wire"
)

// Item is one lock or election as the CLI shows it: what its Lease says, under field names that
// are part of the CLI's interface (the JSON and YAML output) and do not change.
type Item struct {
	// Kind is "lock" or "election".
	Kind wire.Kind `json:"kind"`
	// Namespace is the Lease's namespace.
	Namespace string `json:"namespace"`
	// Name is the lock or election name as the application gave it (the Lease's
	// metaparticle.io/name annotation); empty if the annotation is missing.
	Name string `json:"name"`
	// Lease is the name of the Lease.
	Lease string `json:"lease"`
	// Held reports whether the Lease names a holder. It may have expired (see ExpireTime).
	Held bool `json:"held"`
	// Holder is the holder identity, "<pod>/<session>"; Pod and Session are its two parts.
	Holder  string `json:"holder,omitempty"`
	Pod     string `json:"pod,omitempty"`
	Session string `json:"session,omitempty"`
	// Token is the fencing token of the current grant, or of the last one when free.
	Token string `json:"token,omitempty"`
	// AcquireTime is when the current holder got it, by the holder's side-car's clock.
	AcquireTime *time.Time `json:"acquireTime,omitempty"`
	// RenewTime is the last write of the holder's side-car (a renewal, or the release when
	// free), by that side-car's clock.
	RenewTime *time.Time `json:"renewTime,omitempty"`
	// ExpireTime is an estimate, set while held: RenewTime plus LeaseDurationSeconds. Other
	// side-cars do not compare clocks; they take over a lease duration after they last saw the
	// Lease change, so the real moment may differ by the clock offset between machines.
	ExpireTime *time.Time `json:"expireTime,omitempty"`
	// LeaseDurationSeconds is how long others wait after the last observed change.
	LeaseDurationSeconds int32 `json:"leaseDurationSeconds"`
	// LeaseTransitions counts the changes of holder.
	LeaseTransitions int32 `json:"leaseTransitions"`
}

// ItemFromLease converts a Lease managed by the side-car into an Item.
func ItemFromLease(l *coordinationv1.Lease) Item {
	it := Item{
		Kind:      wire.Kind(l.Labels[contract.LabelKind]),
		Namespace: l.Namespace,
		Name:      l.Annotations[contract.AnnotationName],
		Lease:     l.Name,
		Token:     l.Annotations[contract.AnnotationToken],
	}
	if h := l.Spec.HolderIdentity; h != nil && *h != "" {
		it.Held = true
		it.Holder = *h
		it.Pod, it.Session = SplitHolder(*h)
	}
	if t := l.Spec.AcquireTime; t != nil && it.Held {
		at := t.UTC()
		it.AcquireTime = &at
	}
	if t := l.Spec.RenewTime; t != nil {
		rt := t.UTC()
		it.RenewTime = &rt
	}
	if d := l.Spec.LeaseDurationSeconds; d != nil {
		it.LeaseDurationSeconds = *d
	}
	if n := l.Spec.LeaseTransitions; n != nil {
		it.LeaseTransitions = *n
	}
	if it.Held && it.RenewTime != nil {
		et := it.RenewTime.Add(time.Duration(it.LeaseDurationSeconds) * time.Second)
		it.ExpireTime = &et
	}
	return it
}

// SplitHolder splits a holder identity "<pod>/<session>" into its parts. An identity without a
// slash (not written by the side-car) is all pod.
func SplitHolder(holder string) (pod, session string) {
	pod, session, _ = strings.Cut(holder, "/")
	return pod, session
}

// Expired reports whether, by the estimate of ExpireTime, the hold has expired at now.
func (it Item) Expired(now time.Time) bool {
	return it.ExpireTime != nil && !now.Before(*it.ExpireTime)
}

// DisplayName is the name to show: the original name, quoted if it could upset a terminal, or
// the Lease name in parentheses when the annotation is missing.
func (it Item) DisplayName() string {
	if it.Name == "" {
		return "(lease " + it.Lease + ")"
	}
	return printable(it.Name)
}

// selector selects the Leases of one kind that the side-car manages.
func selector(kind wire.Kind) string {
	return labels.Set{contract.LabelManagedBy: contract.ManagedByValue, contract.LabelKind: string(kind)}.AsSelector().String()
}

// sortItems orders items by namespace, name and kind.
func sortItems(items []Item) {
	slices.SortFunc(items, func(a, b Item) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name),
			cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Lease, b.Lease))
	})
}

// printable returns s as it is if it is valid UTF-8 without control characters, and quoted in Go
// syntax otherwise, so that names from the API server cannot move the cursor or change colours.
func printable(s string) string {
	if !utf8.ValidString(s) || strings.ContainsFunc(s, unicode.IsControl) {
		return strconv.Quote(s)
	}
	return s
}
