package elector

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"testing/synctest"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	k8stesting "k8s.io/client-go/testing"

	"github.com/metaparticle-io/sync/elector/internal/leasefake"
	"github.com/metaparticle-io/sync/wire"
)

// API trouble (here RBAC that forbids creating Leases, then allows it again) does not fail a
// blocking acquire: it waits, and its session is told it is degraded, then recovered. A try is
// answered with the trouble at once, and a session opened during it learns of it on its stream.
func TestAPITroubleIsToldAndBlockingAcquiresWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, forbid := newForbiddenBed(t)
		retry := b.e.Config().RetryPeriod
		waiter := b.open()
		waiterEvents := b.healthEvents(waiter.Key())
		res := b.acquire(waiter.Key(), "x", wire.AcquireRequest{})
		b.step(retry)
		ev := next(t, waiterEvents)
		if ev.Type != wire.EventDegraded || ev.Code != wire.CodeForbidden {
			t.Fatalf("event: got %+v; want %s with code %s", ev, wire.EventDegraded, wire.CodeForbidden)
		}
		b.step(retry) // the worker tries again, and fails again
		quiet(t, res, "blocking acquire while RBAC forbids it")
		if err := b.e.APIStatus(); codeOf(err) != wire.CodeForbidden {
			t.Errorf("APIStatus: got %v; want code %s", err, wire.CodeForbidden)
		}
		if got := b.e.snapshot().degraded; got != wire.CodeForbidden {
			t.Errorf("metaparticle_sync_api_degraded: got code %q; want %q", got, wire.CodeForbidden)
		}

		late := b.open()
		lateEvents := b.healthEvents(late.Key())
		if ev := next(t, lateEvents); ev.Type != wire.EventDegraded || ev.Code != wire.CodeForbidden {
			t.Errorf("event of a session opened during the trouble: got %+v; want %s with code %s", ev, wire.EventDegraded, wire.CodeForbidden)
		}
		if _, err := b.e.Acquire(t.Context(), late.Key(), "y", wire.AcquireRequest{Try: true}); codeOf(err) != wire.CodeForbidden {
			t.Errorf("try-acquire: got %v; want code %s", err, wire.CodeForbidden)
		}

		forbid.Store(false)
		b.step(retry)
		b.step(retry)
		if o := wait(t, res); o.err != nil {
			t.Fatalf("blocking acquire after RBAC allowed it: got %v; want a grant", o.err)
		}
		for who, ch := range map[string]<-chan wire.Event{"waiter": waiterEvents, "late": lateEvents} {
			if ev := next(t, ch); ev.Type != wire.EventRecovered {
				t.Errorf("%s's event: got %+v; want %s", who, ev, wire.EventRecovered)
			}
			quiet(t, ch, who+"'s events after recovering")
		}
		if err := b.e.APIStatus(); err != nil {
			t.Errorf("APIStatus: got %v; want nil", err)
		}
		if got := b.e.snapshot().degraded; got != "" {
			t.Errorf("metaparticle_sync_api_degraded: got code %q; want none", got)
		}
	})
}

// Reports of API trouble replace each other in a session's queue: a session without an event
// stream (keep-alives only) is never ended by their piling up.
func TestHealthEventsNeverFillTheQueue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBed(t, "pod-a", nil, nil)
		s := b.open() // no event stream
		for i := range maxQueuedEvents + 10 {
			b.e.updateDegradedTo(map[bool]error{true: wire.Errorf(wire.CodeUnavailable, "flap")}[i%2 == 0])
		}
		if _, err := b.e.KeepAlive(s.Key()); err != nil {
			t.Fatalf("KeepAlive after %d reports: got %v; want the session alive", maxQueuedEvents+10, err)
		}
		ch := b.healthEvents(s.Key())
		if ev := next(t, ch); ev.Type != wire.EventRecovered {
			t.Errorf("queued report: got %+v; want the last one, %s", ev, wire.EventRecovered)
		}
		quiet(t, ch, "reports after the last")
	})
}

// newForbiddenBed is newBed whose API server refuses every Lease create with Forbidden while
// the returned flag is set (it starts set).
func newForbiddenBed(t *testing.T) (*bed, *atomic.Bool) {
	t.Helper()
	api := leasefake.New(t)
	forbid := &atomic.Bool{}
	forbid.Store(true)
	api.Clientset().PrependReactor("create", "leases", func(k8stesting.Action) (bool, runtime.Object, error) {
		if forbid.Load() {
			return true, nil, apierrors.NewForbidden(leasesGVR.GroupResource(), "", nil)
		}
		return false, nil, nil
	})
	return newBed(t, "pod-a", api, nil), forbid
}

// A try during the retry period after a failed write is answered with that trouble, not with
// "taken by someone else"; and one failed write on an otherwise idle side-car is reported only
// until writeErrAge retry periods have passed without another.
func TestTroubleOfAFailedTry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, _ := newForbiddenBed(t)
		retry := b.e.Config().RetryPeriod
		s := b.open()
		events := b.healthEvents(s.Key())
		for i, what := range []string{"the try that writes", "a try in the retry period"} {
			if _, err := b.e.Acquire(context.Background(), s.Key(), "x", wire.AcquireRequest{Try: true}); codeOf(err) != wire.CodeForbidden {
				t.Fatalf("%s (%d): got %v; want code %s", what, i, err, wire.CodeForbidden)
			}
		}
		b.step(retry)
		if ev := next(t, events); ev.Type != wire.EventDegraded {
			t.Fatalf("event: got %+v; want %s", ev, wire.EventDegraded)
		}
		for range writeErrAge {
			b.step(retry)
		}
		if ev := next(t, events); ev.Type != wire.EventRecovered {
			t.Errorf("event after %d quiet retry periods: got %+v; want %s", writeErrAge, ev, wire.EventRecovered)
		}
	})
}

// A write that client-go's rate limiter turned away never reached the API server: it does not
// replace the trouble already seen (the CI at d3ad6e6 saw a release after RBAC-refused renewals
// report "unavailable" instead of "forbidden"), but is reported when nothing else is.
func TestClientThrottlingKeepsTheTroubleSeen(t *testing.T) {
	forbidden := apierrors.NewForbidden(schema.GroupResource{Group: "coordination.k8s.io", Resource: "leases"}, "x", errors.New("no update"))
	throttled := fmt.Errorf("client rate limiter Wait returned an error: %w", errors.New("rate: Wait(n=1) would exceed context deadline"))
	tests := []struct {
		name   string
		writes []error
		want   wire.ErrorCode
	}{
		{"forbidden, then throttled", []error{forbidden, throttled}, wire.CodeForbidden},
		{"throttled alone", []error{throttled}, wire.CodeUnavailable},
		{"throttled, then forbidden", []error{throttled, forbidden}, wire.CodeForbidden},
		{"forbidden, throttled, then a success", []error{forbidden, throttled, nil}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := newBed(t, "pod-a", nil, nil)
				for _, err := range tt.writes {
					b.e.noteWrite(err)
				}
				if got := codeOf(b.e.APIStatus()); got != tt.want {
					t.Errorf("APIStatus: got code %q; want %q", got, tt.want)
				}
			})
		})
	}
}
