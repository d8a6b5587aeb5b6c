package syncctl

import (
	"context"
	"fmt"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/watch"
	coordinationclient "k8s.io/client-go/kubernetes/typed/coordination/v1"
	"k8s.io/utils/clock"

	"github.com/spf13/cobra"

	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/wire"
)

const (
	kindLock     = wire.KindLock
	kindElection = wire.KindElection
)

// rewatchPause is the pause before watching again after a watch that ended without delivering
// anything, so that a server that keeps closing watches at once is not hammered.
const rewatchPause = time.Second

// selectorAll selects every Lease the side-car manages.
func selectorAll() string {
	return labels.Set{contract.LabelManagedBy: contract.ManagedByValue}.AsSelector().String()
}

type listOptions struct {
	printOptions
	watch    bool
	selector string // -l, ANDed with the managed-by and kind labels
}

func (c *cli) listCommand(kind wire.Kind) *cobra.Command {
	var o listOptions
	plural, holds := "locks", "holds"
	var aliases []string
	if kind == kindElection {
		plural, holds, aliases = "elections", "leads", []string{"leaders"}
	}
	cmd := &cobra.Command{
		Use:     plural,
		Aliases: aliases,
		Short:   fmt.Sprintf("List the %s and who %s them", plural, holds),
		Long: fmt.Sprintf(`List the %[1]s of a namespace (-n, default: the current context's) or of all namespaces (-A),
from the Leases labelled %[2]s.

Columns: NAME is the name the application gave (not the Lease's name); HOLDER is the holder's
Pod and SESSION its session (the holder identity is "<pod>/<session>"), "-" when free; HELD
SINCE is the age of the hold; TOKEN its fencing token. EXPIRES IN (EST.) is an estimate: the
holder's last renewTime plus the Lease's duration, minus this machine's time. renewTime is
written by the holder's clock, and the side-cars never compare clocks (they take over a lease
duration after they last saw a renewal), so the real moment differs by the clock offset.

With --watch the list is printed again whenever a holder, a token or the set of %[1]s changes,
or when a hold's estimated expiry passes; renewals alone do not reprint it. -o json prints one
object {"items": [...]} (one line per change with --watch); -o yaml the same as YAML
documents; -o wide adds the lease transitions, the Lease name and whole session IDs.`, plural, selector(kind)),
		Example: c.examples(strings.ReplaceAll(`
  %[1]s PLURAL
  %[1]s PLURAL -n shop -o wide
  %[1]s PLURAL -A --watch
  %[1]s PLURAL -o yaml`, "PLURAL", plural)),
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return c.list(cmd.Context(), kind, o)
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&o.allNamespaces, "all-namespaces", "A", false, "List the "+plural+" of every namespace")
	f.BoolVarP(&o.watch, "watch", "w", false, "After listing, print the list again whenever it changes (until interrupted)")
	f.StringVarP(&o.format, "output", "o", "", "Output format: json, yaml, wide, name or jsonpath=<template> (default: a table)")
	f.BoolVar(&o.noHeaders, "no-headers", false, "Print the table without its header line")
	f.StringVarP(&o.selector, "selector", "l", "", "Only the Leases with these labels too (e.g. metaparticle.io/pod-uid=<uid>), as kubectl's -l")
	return cmd
}

func (c *cli) list(ctx context.Context, kind wire.Kind, o listOptions) error {
	if err := validFormat(o.format); err != nil {
		return err
	}
	sel := selector(kind)
	if o.selector != "" {
		extra, err := labels.Parse(o.selector)
		if err != nil {
			return usagef("-l %q: %v", o.selector, err)
		}
		sel += "," + extra.String()
	}
	cs, err := c.client()
	if err != nil {
		return err
	}
	ns := metav1.NamespaceAll
	if !o.allNamespaces {
		if ns, err = c.namespace(); err != nil {
			return err
		}
	}
	leases := cs.CoordinationV1().Leases(ns)
	cctx, cancel := c.callContext(ctx)
	l, err := leases.List(cctx, metav1.ListOptions{LabelSelector: sel})
	cancel()
	if err != nil {
		return c.explain(err)
	}
	if !o.watch {
		items := itemsOf(l)
		if len(items) == 0 && (o.format == formatTable || o.format == formatWide) {
			// As kubectl: on stderr, so that scripts reading the table see no lines.
			fmt.Fprintln(c.errOut, "No resources found.")
		}
		return printList(c.out, o.printOptions, items, c.clock.Now(), false)
	}
	return c.watch(ctx, leases, sel, o, l)
}

func itemsOf(l *coordinationv1.LeaseList) []Item {
	items := make([]Item, 0, len(l.Items))
	for i := range l.Items {
		items = append(items, ItemFromLease(&l.Items[i]))
	}
	sortItems(items)
	return items
}

// watch prints the list, then follows the Leases with a watch from the list's resourceVersion
// and prints the list again whenever view.changed says so. A watch that the server ends is
// resumed from the last resourceVersion seen; when that is too old (410 Gone), the Leases are
// listed again. It returns nil when ctx ends, and an error when the API server refuses.
func (c *cli) watch(ctx context.Context, leases coordinationclient.LeaseInterface, sel string, o listOptions, l *coordinationv1.LeaseList) error {
	v := newView(c.clock)
	v.reset(l)
	rv := l.ResourceVersion
	if err := c.printView(v, o); err != nil {
		return err
	}
	var timer clock.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	// arm sets the timer to the next estimated expiry, when the list must be printed again.
	arm := func() <-chan time.Time {
		if timer != nil {
			timer.Stop()
		}
		next, ok := v.nextExpiry()
		if !ok {
			timer = nil
			return nil
		}
		timer = c.clock.NewTimer(next.Sub(c.clock.Now()))
		return timer.C()
	}
	expiry := arm()
	for {
		w, err := leases.Watch(ctx, metav1.ListOptions{
			LabelSelector:       sel,
			ResourceVersion:     rv,
			AllowWatchBookmarks: true,
		})
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return c.explain(err)
		}
		delivered, relist := false, false
	events:
		for {
			select {
			case <-ctx.Done():
				w.Stop()
				return nil
			case <-expiry:
				timer = nil
			case ev, ok := <-w.ResultChan():
				if ctx.Err() != nil {
					// The watch may report the end of ctx as an error event first.
					w.Stop()
					return nil
				}
				if !ok {
					break events
				}
				delivered = true
				switch ev.Type {
				case watch.Added, watch.Modified, watch.Deleted:
					lease, ok := ev.Object.(*coordinationv1.Lease)
					if !ok {
						continue
					}
					rv = lease.ResourceVersion
					if ev.Type == watch.Deleted {
						v.remove(lease)
					} else {
						v.set(lease)
					}
				case watch.Bookmark:
					if m, err := meta.Accessor(ev.Object); err == nil {
						rv = m.GetResourceVersion()
					}
					continue
				case watch.Error:
					err := apierrors.FromObject(ev.Object)
					if apierrors.IsResourceExpired(err) || apierrors.IsGone(err) {
						relist = true
						break events
					}
					w.Stop()
					return c.explain(err)
				}
			}
			if v.changed() {
				if err := c.printView(v, o); err != nil {
					w.Stop()
					return err
				}
			}
			expiry = arm()
		}
		w.Stop()
		switch {
		case relist:
			cctx, cancel := c.callContext(ctx)
			l, err := leases.List(cctx, metav1.ListOptions{LabelSelector: sel})
			cancel()
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return c.explain(err)
			}
			v.reset(l)
			rv = l.ResourceVersion
			if v.changed() {
				if err := c.printView(v, o); err != nil {
					return err
				}
			}
			expiry = arm()
		case !delivered:
			select {
			case <-ctx.Done():
				return nil
			case <-c.clock.After(rewatchPause):
			}
		}
	}
}

// printView prints the view's list and records it as printed. In a table, lists after the
// first are separated by a blank line.
func (c *cli) printView(v *view, o listOptions) error {
	now := c.clock.Now()
	items := v.items()
	if v.printed && (o.format == formatTable || o.format == formatWide) {
		fmt.Fprintln(c.out)
	}
	v.markPrinted(now)
	return printList(c.out, o.printOptions, items, now, true)
}

// view is the state of the watched Leases, and what was last printed of it.
type view struct {
	clock   clock.PassiveClock
	byKey   map[string]Item // by namespace/lease
	printed bool
	last    string // fingerprint of the last printed list
}

func newView(clk clock.PassiveClock) *view {
	return &view{clock: clk, byKey: map[string]Item{}}
}

func leaseKey(l *coordinationv1.Lease) string { return l.Namespace + "/" + l.Name }

func (v *view) set(l *coordinationv1.Lease) { v.byKey[leaseKey(l)] = ItemFromLease(l) }

func (v *view) remove(l *coordinationv1.Lease) { delete(v.byKey, leaseKey(l)) }

func (v *view) reset(l *coordinationv1.LeaseList) {
	v.byKey = map[string]Item{}
	for i := range l.Items {
		v.set(&l.Items[i])
	}
}

func (v *view) items() []Item {
	items := make([]Item, 0, len(v.byKey))
	for _, it := range v.byKey {
		items = append(items, it)
	}
	sortItems(items)
	return items
}

// changed reports whether the list differs, in what matters to people, from the last one
// printed: an item added or removed, or a change of holder, token, acquire time, duration,
// transitions, or of whether the hold has expired by the estimate. Renewals alone do not count.
func (v *view) changed() bool {
	return !v.printed || fingerprint(v.items(), v.clock.Now()) != v.last
}

func (v *view) markPrinted(now time.Time) {
	v.printed = true
	v.last = fingerprint(v.items(), now)
}

// nextExpiry is the earliest estimated expiry still to come of a held item.
func (v *view) nextExpiry() (time.Time, bool) {
	now := v.clock.Now()
	var next time.Time
	for _, it := range v.byKey {
		if it.ExpireTime != nil && it.ExpireTime.After(now) && (next.IsZero() || it.ExpireTime.Before(next)) {
			next = *it.ExpireTime
		}
	}
	return next, !next.IsZero()
}

// fingerprint sums up what view.changed compares, for sorted items.
func fingerprint(items []Item, now time.Time) string {
	var b strings.Builder
	for _, it := range items {
		var acquired int64
		if it.AcquireTime != nil {
			acquired = it.AcquireTime.UnixNano()
		}
		fmt.Fprintf(&b, "%s\x00%s\x00%s\x00%q\x00%t\x00%s\x00%s\x00%d\x00%d\x00%d\x00%t\n",
			it.Kind, it.Namespace, it.Lease, it.Name, it.Held, it.Holder, it.Token, acquired,
			it.LeaseDurationSeconds, it.LeaseTransitions, it.Expired(now))
	}
	return b.String()
}
