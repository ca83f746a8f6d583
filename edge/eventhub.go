package edge

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/switchboard-iot/switchboard/db"
)

// eventHub hands the device events stored by any node to this edge's event
// streams. A node wakes every edge once per batch it stored (sb_events);
// the hub then reads what is new, once for all its streams, and gives each
// stream the events its filter takes. Events become visible in id order
// (db.InsertEvents), so "every id above the last one read" misses nothing.
type eventHub struct {
	store  *db.Store
	log    *slog.Logger
	signal chan struct{} // cap 1: events are waiting to be read
	poll   time.Duration // read even without a wake-up: one can be lost

	mu   sync.Mutex // guards the following
	subs map[*eventSub]struct{}
	last int64 // the highest id handed out; meaningful while subs is not empty
}

// eventSub is one stream's subscription. A stream that does not keep up
// (its buffer is full) is dropped: it ends, and its client resumes with
// Last-Event-ID from the stored history.
type eventSub struct {
	match   func(*db.FleetEvent) bool
	events  chan db.Event
	dropped chan struct{} // closed when the hub gave up on this stream
}

// subBuffer is how many events a stream may lag behind the hub.
const subBuffer = 1024

// eventPage is how many events the hub reads per query.
const eventPage = 1000

func newEventHub(store *db.Store, log *slog.Logger) *eventHub {
	return &eventHub{
		store:  store,
		log:    log,
		signal: make(chan struct{}, 1),
		poll:   5 * time.Second,
		subs:   make(map[*eventSub]struct{}),
	}
}

// wake says events may be waiting (a notification, or a listener that
// reconnected and may have missed some).
func (h *eventHub) wake() { raise(h.signal) }

// subscribe starts a subscription and returns the id after which the hub
// will hand it events: a stream that replays history first stops there.
func (h *eventHub) subscribe(ctx context.Context, match func(*db.FleetEvent) bool) (*eventSub, int64, error) {
	s := &eventSub{match: match, events: make(chan db.Event, subBuffer), dropped: make(chan struct{})}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.subs) == 0 {
		// The hub keeps its mark only while it has streams: the first
		// starts it at the newest event. (Under the lock, so that a read
		// in flight cannot move it meanwhile; one index probe.)
		newest, err := h.store.LastEventID(ctx)
		if err != nil {
			return nil, 0, err
		}
		h.last = newest
	}
	h.subs[s] = struct{}{}
	return s, h.last, nil
}

func (h *eventHub) unsubscribe(s *eventSub) {
	h.mu.Lock()
	delete(h.subs, s)
	h.mu.Unlock()
}

// run reads new events whenever woken (and every poll while streams are
// open) until ctx ends.
func (h *eventHub) run(ctx context.Context) error {
	ticker := time.NewTicker(h.poll)
	defer ticker.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-h.signal:
		case <-ticker.C:
		}
		err := h.read(ctx)
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			h.log.Warn("reading device events; retrying", "err", err)
			failing = true
		case err == nil && failing:
			h.log.Info("reading device events again")
			failing = false
		}
	}
}

// read hands out every event after the hub's mark, a page at a time.
func (h *eventHub) read(ctx context.Context) error {
	for {
		h.mu.Lock()
		idle, after := len(h.subs) == 0, h.last
		h.mu.Unlock()
		if idle {
			return nil
		}
		events, err := h.store.EventsAfter(ctx, after, eventPage)
		if err != nil || len(events) == 0 {
			return err
		}
		h.mu.Lock()
		// A subscription made while reading set no mark of its own unless
		// it was the first: then it starts at or after these events.
		for i := range events {
			ev := &events[i]
			if ev.ID <= h.last {
				continue
			}
			for s := range h.subs {
				if !s.match(ev) {
					continue
				}
				select {
				case s.events <- ev.Event:
				default:
					close(s.dropped)
					delete(h.subs, s)
				}
			}
			h.last = ev.ID
		}
		h.mu.Unlock()
		if len(events) < eventPage {
			return nil
		}
	}
}
