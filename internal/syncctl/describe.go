package syncctl

import (
	"context"
	"fmt"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/spf13/cobra"

	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/wire"
)

type describeOptions struct {
	kind   string
	format string
}

func (c *cli) describeCommand() *cobra.Command {
	var o describeOptions
	cmd := &cobra.Command{
		Use:   "describe NAME",
		Short: "Show a lock or an election in detail, with the Pod that holds it",
		Long: `Show a lock or an election in detail: its Lease, holder (Pod and session), fencing token,
acquire and renew times, lease duration and transitions, and the holder's Pod (phase, node,
readiness) when it can be read.

NAME is the name the application gave. Without --kind, it is whichever of the lock and the
election of that name exists; if both do, pass --kind.`,
		Example: c.examples(`
  %[1]s describe test
  %[1]s describe orders/eu --kind lock -n shop -o yaml`),
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usagef("describe takes exactly one NAME, got %d arguments", len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.describe(cmd.Context(), args[0], o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.kind, "kind", "", "lock or election (default: whichever exists)")
	f.StringVarP(&o.format, "output", "o", "", "Output format: json or yaml (default: text)")
	return cmd
}

func (c *cli) describe(ctx context.Context, name string, o describeOptions) error {
	if err := wire.ValidateName(name); err != nil {
		return usagef("invalid name %s: %v", printable(name), err)
	}
	kinds := []wire.Kind{kindLock, kindElection}
	what := "lock or election"
	switch wire.Kind(o.kind) {
	case "":
	case kindLock, kindElection:
		kinds, what = []wire.Kind{wire.Kind(o.kind)}, o.kind
	default:
		return usagef("unknown --kind %q: use lock or election", o.kind)
	}
	if err := documentFormat(o.format); err != nil {
		return err
	}
	cs, err := c.client()
	if err != nil {
		return err
	}
	ns, err := c.namespace()
	if err != nil {
		return err
	}

	var found []*coordinationv1.Lease
	var foundKinds []wire.Kind
	for _, k := range kinds {
		cctx, cancel := c.callContext(ctx)
		l, err := cs.CoordinationV1().Leases(ns).Get(cctx, contract.LeaseName(k, name), metav1.GetOptions{})
		cancel()
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return c.explain(err)
		}
		found, foundKinds = append(found, l), append(foundKinds, k)
	}
	switch len(found) {
	case 0:
		return fmt.Errorf("no %s named %s in namespace %q", what, printable(name), ns)
	case 2:
		return fmt.Errorf("both a lock and an election are named %s in namespace %q: pass --kind lock or --kind election", printable(name), ns)
	}
	l := found[0]
	if got := l.Annotations[contract.AnnotationName]; got != name {
		return fmt.Errorf("lease %s/%s is not the %s %s: its %s annotation says %s", ns, l.Name, foundKinds[0], printable(name), contract.AnnotationName, printable(got))
	}
	d := Description{Item: ItemFromLease(l)}
	d.Kind = foundKinds[0]
	if d.Held {
		d.HolderPod = c.pod(ctx, cs, ns, d.Pod)
	}
	switch o.format {
	case formatJSON:
		return writeJSON(c.out, d, false)
	case formatYAML:
		return writeYAML(c.out, d, false)
	}
	return printDescription(c.out, d, c.clock.Now())
}

// pod reads the holder's Pod. Failing to read it (gone, or RBAC) is part of the description,
// not an error of the command.
func (c *cli) pod(ctx context.Context, cs kubernetes.Interface, ns, name string) *PodInfo {
	info := &PodInfo{Name: name}
	cctx, cancel := c.callContext(ctx)
	defer cancel()
	p, err := cs.CoreV1().Pods(ns).Get(cctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		info.Error = "not found (the Pod is gone, or the holder is not a Pod of this namespace)"
		return info
	case apierrors.IsForbidden(err):
		info.Error = "cannot read it: " + oneLine(apiMessage(err))
		return info
	case err != nil:
		info.Error = "cannot read it: " + oneLine(c.explain(err).Error())
		return info
	}
	info.Phase = string(p.Status.Phase)
	info.Node = p.Spec.NodeName
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady {
			ready := cond.Status == corev1.ConditionTrue
			info.Ready = &ready
		}
	}
	return info
}
