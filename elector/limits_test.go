package elector

import (
	"context"
	"testing"
	"testing/synctest"

	"github.com/metaparticle-io/sync/wire"
)

// Each limit refuses the request beyond it with too_many and changes nothing; once a unit of it
// is given back, the same request is no longer refused.
func TestLimitsRefuseWithTooMany(t *testing.T) {
	for _, tc := range []struct {
		name   string
		limits Limits
		// fill uses the limit up and returns what gives one unit back; over makes the request
		// beyond the limit. Acquires in over are tries, so that they return.
		fill func(b *bed, s wire.Session) (free func())
		over func(b *bed, s wire.Session) error
	}{
		{"sessions", Limits{MaxSessions: 2},
			func(b *bed, _ wire.Session) func() {
				o := b.open()
				return func() { _ = b.e.CloseSession(o.Key()) }
			},
			func(b *bed, _ wire.Session) error { return second(b.e.OpenSession(wire.OpenSessionRequest{})) }},
		{"names per session", Limits{MaxNamesPerSession: 2},
			func(b *bed, s wire.Session) func() {
				b.mustAcquire(s.Key(), "a")
				g := b.mustAcquire(s.Key(), "b")
				return func() { _ = b.e.Release(context.Background(), s.Key(), "b", g.Token) }
			},
			func(b *bed, s wire.Session) error {
				return second(b.e.Acquire(context.Background(), s.Key(), "c", wire.AcquireRequest{Try: true}))
			}},
		{"names per session, elections", Limits{MaxNamesPerSession: 1},
			func(b *bed, s wire.Session) func() {
				g := b.mustAcquire(s.Key(), "a")
				return func() { _ = b.e.Release(context.Background(), s.Key(), "a", g.Token) }
			},
			func(b *bed, s wire.Session) error { return second(b.e.Join(s.Key(), "e")) }},
		{"pending acquires", Limits{MaxPendingAcquires: 1},
			func(b *bed, s wire.Session) func() {
				g := b.mustAcquire(s.Key(), "held")
				b.acquire(b.open().Key(), "held", wire.AcquireRequest{})
				settled(b.t, "waiters of held", func() int { return b.waiting(wire.KindLock, "held") }, 1)
				// The release grants the lock to the waiter, which ends its wait.
				return func() { _ = b.e.Release(context.Background(), s.Key(), "held", g.Token) }
			},
			func(b *bed, _ wire.Session) error {
				return second(b.e.Acquire(context.Background(), b.open().Key(), "other", wire.AcquireRequest{Try: true}))
			}},
		{"watches", Limits{MaxWatches: 1},
			func(b *bed, _ wire.Session) func() {
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan struct{})
				go func() {
					defer close(done)
					_ = b.e.Watch(ctx, wire.KindElection, "w", func(wire.LockState) error { return nil })
				}()
				return func() { cancel(); <-done }
			},
			func(b *bed, _ wire.Session) error {
				// A watch that is let in ends at once: its first emit fails.
				stop := wire.Errorf(wire.CodeInternal, "stop")
				err := b.e.Watch(context.Background(), wire.KindElection, "w", func(wire.LockState) error { return stop })
				if err == stop {
					return nil
				}
				return err
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := newBedWith(t, Config{PodName: "pod-a", Limits: tc.limits}, nil, nil)
				s := b.open()
				free := tc.fill(b, s)
				b.settle()
				before := b.api.WriteCount()
				if err := tc.over(b, s); codeOf(err) != wire.CodeTooMany {
					t.Fatalf("the request beyond the limit: got %v; want code %s", err, wire.CodeTooMany)
				}
				b.settle()
				if got := b.api.WritesSince(before); len(got) > 0 {
					t.Errorf("writes after the refused request: got %q; want none", got)
				}
				free()
				b.settle()
				if err := tc.over(b, s); codeOf(err) == wire.CodeTooMany {
					t.Errorf("the same request after a unit was given back: got %v; want it let in", err)
				}
			})
		})
	}
}

// The limits default, and a negative one is refused at construction.
func TestLimitsDefaultsAndValidation(t *testing.T) {
	c := Config{PodName: "p", Namespace: "ns"}.withDefaults()
	want := Limits{DefaultMaxSessions, DefaultMaxNamesPerSession, DefaultMaxPendingAcquires, DefaultMaxWatches, DefaultMaxNames}
	if c.Limits != want {
		t.Errorf("default limits: got %+v; want %+v", c.Limits, want)
	}
	bad := Config{PodName: "p", Namespace: "ns", Limits: Limits{MaxSessions: -1}}
	if err := bad.Validate(); err == nil {
		t.Errorf("Validate of max sessions -1: got nil; want an error")
	}
}
