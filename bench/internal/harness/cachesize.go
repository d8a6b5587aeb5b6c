package harness

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/metaparticle-io/sync/elector"
	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/wire"
)

// cacheSize is the side-car's RSS with n managed Leases in its namespace that it does not use
// (a lock-per-order pattern: every order's lock left behind), once it is ready: watching the
// names it uses (none here), and, as the baseline, watching and caching every managed Lease of
// the namespace (--watch-scope=namespace, the design before issue 18).
type cacheSize struct {
	leases           int
	rss, rssNS       float64 // MiB, VmRSS
	detail, detailNS map[string]float64
	sync, syncNS     time.Duration // from exec to ready
}

// cacheSizes measures cacheSize for each count, in one namespace that grows from one count to
// the next. The Leases are made as the side-car makes them (labels, name and token
// annotations, a released holder) by a client with a field manager, so that each carries
// managedFields as it would on a real cluster.
func (b *Bench) cacheSizes(ctx context.Context, bin string, counts []int, settle time.Duration) ([]cacheSize, error) {
	ns, err := b.Namespace(ctx, "bench-cache", false)
	if err != nil {
		return nil, err
	}
	kubeconfig, err := b.writeKubeconfig()
	if err != nil {
		return nil, err
	}
	rc := b.RestConfig(nil, "bench-seed")
	rc.QPS, rc.Burst = 5000, 5000
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	var out []cacheSize
	made := 0
	for _, n := range counts {
		if err := makeLeases(ctx, cs, ns, made, n); err != nil {
			return out, err
		}
		made = n
		c := cacheSize{leases: n}
		for _, scope := range []string{elector.WatchNames, elector.WatchNamespace} {
			p, _, d, err := b.launchElector(bin, kubeconfig, ns, fmt.Sprintf("cache-%d-%s", n, scope), "--watch-scope="+scope)
			if err != nil {
				return out, err
			}
			time.Sleep(settle)
			rss, detail, err := p.rss()
			p.stop()
			if err != nil {
				return out, err
			}
			if scope == elector.WatchNames {
				c.rss, c.detail, c.sync = rss, detail, d
			} else {
				c.rssNS, c.detailNS, c.syncNS = rss, detail, d
			}
		}
		out = append(out, c)
	}
	return out, nil
}

// makeLeases creates the managed Leases from..to-1 of ns.
func makeLeases(ctx context.Context, cs kubernetes.Interface, ns string, from, to int) error {
	var mu sync.Mutex
	var errs []error
	released := metav1.NewMicroTime(time.Now())
	parallel(to-from, 32, func(i int) {
		name := fmt.Sprintf("order-%06d", from+i)
		l := &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{
				Name:        contract.LeaseName(wire.KindLock, name),
				Labels:      map[string]string{contract.LabelManagedBy: contract.ManagedByValue, contract.LabelKind: string(wire.KindLock)},
				Annotations: map[string]string{contract.AnnotationName: name, contract.AnnotationToken: "1"},
			},
			Spec: coordinationv1.LeaseSpec{LeaseDurationSeconds: ptr.To[int32](15), RenewTime: &released, LeaseTransitions: ptr.To[int32](1)},
		}
		if _, err := cs.CoordinationV1().Leases(ns).Create(ctx, l, metav1.CreateOptions{FieldManager: "metaparticle-sync-elector"}); err != nil {
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		}
	})
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("creating Leases %d to %d: %w", from, to, err)
	}
	return nil
}
