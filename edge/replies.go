package edge

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/backoff"
	"github.com/switchboard-iot/switchboard/internal/command"
)

// replyRouter maps command ids to the HTTP requests waiting on them, and
// hands each the command's newest state when a wake-up names it. Most
// wake-ups carry the command itself; for the others (a large command, a
// listener that reconnected) one query per round reads the rows of every
// id that has a waiter here.
type replyRouter struct {
	store  *db.Store
	log    *slog.Logger
	signal chan struct{}       // cap 1: ids are due for a read
	lag    prometheus.Observer // notification lag; set before the edge runs

	mu      sync.Mutex // guards the following
	waiters map[uuid.UUID]map[*waiter]struct{}
	due     map[uuid.UUID]struct{} // woken, not yet read
}

func newReplyRouter(store *db.Store, log *slog.Logger) *replyRouter {
	return &replyRouter{
		store:   store,
		log:     log,
		signal:  make(chan struct{}, 1),
		waiters: make(map[uuid.UUID]map[*waiter]struct{}),
		due:     make(map[uuid.UUID]struct{}),
	}
}

// waiter is one request waiting on a command. It keeps only the newest
// state: a slow reader skips steps, never loses the outcome.
type waiter struct {
	id      uuid.UUID
	changed chan struct{} // cap 1

	mu     sync.Mutex // guards latest
	latest *command.Command
}

// set records c unless it is older than what the waiter has: reads may
// finish out of order, a command's steps only move forward.
func (w *waiter) set(c command.Command) {
	w.mu.Lock()
	if w.latest != nil && step(c) < step(*w.latest) {
		w.mu.Unlock()
		return
	}
	w.latest = &c
	w.mu.Unlock()
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

func step(c command.Command) int {
	events := command.Events(c)
	return events[len(events)-1].Seq
}

// get returns the newest state the router saw, if any.
func (w *waiter) get() (command.Command, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.latest == nil {
		return command.Command{}, false
	}
	return *w.latest, true
}

// wait registers a waiter. Register before the command can change (before
// it is even inserted), so no wake-up can slip past.
func (r *replyRouter) wait(id uuid.UUID) *waiter {
	w := &waiter{id: id, changed: make(chan struct{}, 1)}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.waiters[id] == nil {
		r.waiters[id] = make(map[*waiter]struct{})
	}
	r.waiters[id][w] = struct{}{}
	return w
}

func (r *replyRouter) done(w *waiter) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.waiters[w.id], w)
	if len(r.waiters[w.id]) == 0 {
		delete(r.waiters, w.id)
	}
}

// waiting reports how many requests are waiting.
func (r *replyRouter) waiting() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, ws := range r.waiters {
		n += len(ws)
	}
	return n
}

// onNotify runs on the notifier's goroutine. A wake-up that carries the
// command hands it to its waiters at once (setting a waiter never blocks);
// one that carries only the id marks it due for a read.
func (r *replyRouter) onNotify(payload string) {
	read := false
	now := time.Now()
	messages := db.ParseEdgeMessage(payload)
	for _, m := range messages {
		if m.Command != nil && r.lag != nil {
			r.lag.Observe(max(now.Sub(changedAt(m.Command)), 0).Seconds())
		}
	}
	r.mu.Lock()
	for _, m := range messages {
		switch {
		case r.waiters[m.ID] == nil:
		case m.Command != nil:
			for w := range r.waiters[m.ID] {
				w.set(*m.Command)
			}
		default:
			r.due[m.ID] = struct{}{}
			read = true
		}
	}
	r.mu.Unlock()
	if read {
		r.poke()
	}
}

// changedAt is when c last changed: its newest timestamp.
func changedAt(c *command.Command) time.Time {
	t := c.CreatedAt
	for _, at := range []*time.Time{c.DeliveredAt, c.CompletedAt} {
		if at != nil && at.After(t) {
			t = *at
		}
	}
	return t
}

// onReady re-reads every waited command: wake-ups sent while the listener
// was away are lost, the rows are not.
func (r *replyRouter) onReady() {
	r.mu.Lock()
	for id := range r.waiters {
		r.due[id] = struct{}{}
	}
	r.mu.Unlock()
	r.poke()
}

func (r *replyRouter) poke() {
	select {
	case r.signal <- struct{}{}:
	default:
	}
}

// run reads due commands and hands them to their waiters.
func (r *replyRouter) run(ctx context.Context) error {
	for {
		select {
		case <-r.signal:
		case <-ctx.Done():
			return nil
		}
		r.mu.Lock()
		ids := make([]uuid.UUID, 0, len(r.due))
		for id := range r.due {
			ids = append(ids, id)
		}
		clear(r.due)
		r.mu.Unlock()
		if len(ids) == 0 {
			continue
		}
		cmds, err := r.store.Commands(ctx, ids)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			// The waiters' own deadline checks cover what this misses.
			r.log.Warn("reading woken commands", "commands", len(ids), "err", err)
			if !backoff.Sleep(ctx, time.Second) {
				return nil
			}
			r.mu.Lock()
			for _, id := range ids {
				r.due[id] = struct{}{}
			}
			r.mu.Unlock()
			r.poke()
			continue
		}
		r.mu.Lock()
		for _, c := range cmds {
			for w := range r.waiters[c.ID] {
				w.set(c)
			}
		}
		r.mu.Unlock()
	}
}
