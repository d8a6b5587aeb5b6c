package elector

import (
	"context"
	"sync"
	"time"

	"k8s.io/utils/clock"

	"github.com/metaparticle-io/sync/wire"
)

// maxQueuedEvents bounds the events queued for a session whose client does not read its event
// stream. A session that overflows it is ended: its client cannot be told what happened to its
// holds, so it must not keep them.
const maxQueuedEvents = 1024

// session is one client of the side-car (an SDK instance in a process). It owns holds, lock
// waits and election candidacies, all of which end when it ends.
type session struct {
	id     string
	holder string // "<pod>/<id>", the Lease holder identity of its holds
	client string // free-form label from the client, for logs
	ttl    time.Duration

	notify  chan struct{} // capacity 1: signalled when events are queued or the session ends
	done    chan struct{} // closed when the session ends
	flushed chan struct{} // closed once the event stream has written EventClosed

	mu        sync.Mutex          // protects the fields below
	ended     bool                // set once, by Engine.endSession
	endReason string              // why it ended, for EventClosed and errors
	endCode   wire.ErrorCode      // error code for calls racing with the end
	gen       uint64              // keep-alive generation: a timer of an older generation is stale
	expiry    clock.Timer         // ends the session when no keep-alive arrives in time
	streaming bool                // an event stream is attached
	events    []wire.Event        // queued for the event stream
	interests map[*nameState]bool // names where it holds, waits or stands
}

// addInterest records that s waits, holds or stands in n. It reports false when s has ended, in
// which case the caller must not register anything for s.
func (s *session) addInterest(n *nameState) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return false
	}
	s.interests[n] = true
	return true
}

// dropInterest forgets n.
func (s *session) dropInterest(n *nameState) {
	s.mu.Lock()
	delete(s.interests, n)
	s.mu.Unlock()
}

// post queues ev for the session's event stream. It reports false when the queue is full.
// Events posted after the session ended are dropped.
func (s *session) post(ev wire.Event) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return true
	}
	if len(s.events) >= maxQueuedEvents {
		return false
	}
	s.events = append(s.events, ev)
	signal(s.notify)
	return true
}

// hasEnded reports whether s has ended.
func (s *session) hasEnded() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ended
}

// endErr is the error for calls on s after it ended.
func (s *session) endErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	code := s.endCode
	if code == "" {
		code = wire.CodeNoSession
	}
	return errorf(code, "session %s ended: %s", s.id, s.endReason)
}

// stream writes the session's events with emit until the session ends, ctx ends (the client
// went away), or emit fails. See Engine.StreamEvents.
func (e *Engine) stream(ctx context.Context, s *session, emit func(wire.Event) error) error {
	if err := emit(wire.Event{Type: wire.EventReady}); err != nil {
		e.endSession(s, "event stream write failed: "+err.Error(), wire.CodeNoSession)
		return err
	}
	ping := e.clock.NewTicker(s.ttl / 3)
	defer ping.Stop()
	for {
		s.mu.Lock()
		evs := s.events
		s.events = nil
		s.mu.Unlock()
		for _, ev := range evs {
			if err := emit(ev); err != nil {
				e.endSession(s, "event stream write failed: "+err.Error(), wire.CodeNoSession)
				return err
			}
			if ev.Type == wire.EventClosed {
				close(s.flushed)
				return nil
			}
		}
		select {
		case <-s.notify:
		case <-ping.C():
			if err := emit(wire.Event{Type: wire.EventPing}); err != nil {
				e.endSession(s, "event stream write failed: "+err.Error(), wire.CodeNoSession)
				return err
			}
		case <-ctx.Done():
			e.endSession(s, "event stream closed by the client", wire.CodeNoSession)
			return ctx.Err()
		case <-e.halted:
			return errorf(wire.CodeShuttingDown, "side-car stopped")
		}
	}
}

// signal wakes the receiver of a capacity-1 channel without blocking.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
