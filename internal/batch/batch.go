// Package batch turns a stream of small database writes into few round trips.
// A Batcher writes whatever queued up while its previous write was in
// flight: an idle system pays no added delay, and a busy one (a reconnect
// storm, a burst of replies) gets large batches instead of a flood.
//
// A batcher never drops what it accepted because the database is away: it
// retries, with backoff, for as long as the outage lasts. Only two things
// lose items, both logged: a row the database refuses outright (found by
// splitting the batch until it is alone), and items still unwritten when
// the grace after shutdown runs out.
package batch

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/switchboard-iot/switchboard/internal/backoff"
)

// ErrStopped is returned once the batcher has stopped.
var ErrStopped = errors.New("batcher stopped")

// Batcher queues items of type T and writes them with its flush function.
type Batcher[T any] struct {
	name    string
	limit   int // Add waits while this many items are queued
	max     int // items per flush
	flush   func(context.Context, []T) error
	refused func(error) bool
	log     *slog.Logger
	ready   chan struct{} // cap 1: the queue has items

	// Grace is how long Run keeps writing after its context ends (10s).
	Grace time.Duration
	// Retry paces the attempts at a failed batch (50ms up to 1s).
	Retry backoff.Backoff

	mu      sync.Mutex // guards the following
	queue   []T
	room    chan struct{} // closed when the queue drops below limit
	stopped bool
}

// New makes a batcher whose Add waits while limit items are queued and that
// flushes at most max at a time. flush must be safe to retry. When refused
// says the database refused the data itself, retrying cannot help: the batch
// is split until the item at fault is alone, and only that one is dropped.
func New[T any](name string, limit, max int, log *slog.Logger, flush func(context.Context, []T) error, refused func(error) bool) *Batcher[T] {
	return &Batcher[T]{
		name:    name,
		limit:   limit,
		max:     max,
		flush:   flush,
		refused: refused,
		log:     log.With("batcher", name),
		ready:   make(chan struct{}, 1),
		Grace:   10 * time.Second,
		Retry:   backoff.Backoff{Min: 50 * time.Millisecond, Max: time.Second},
		room:    make(chan struct{}),
	}
}

// Add queues an item, waiting while the queue is full: the producer slows
// to the database's pace. It fails only when ctx ends or the batcher stopped.
func (b *Batcher[T]) Add(ctx context.Context, item T) error {
	for {
		b.mu.Lock()
		if b.stopped {
			b.mu.Unlock()
			return ErrStopped
		}
		if len(b.queue) < b.limit {
			b.enqueueLocked(item)
			b.mu.Unlock()
			return nil
		}
		room := b.room
		b.mu.Unlock()
		select {
		case <-room:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Full reports whether Add would wait now.
func (b *Batcher[T]) Full() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.queue) >= b.limit
}

// TryAdd queues an item unless the queue is full, for items that may be
// shed under overload. It reports whether the item was queued.
func (b *Batcher[T]) TryAdd(item T) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopped || len(b.queue) >= b.limit {
		return false
	}
	b.enqueueLocked(item)
	return true
}

// Push queues an item without waiting, past the limit if need be. It is for
// producers that are bounded some other way (one item per session, say) and
// must not block.
func (b *Batcher[T]) Push(item T) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopped {
		return ErrStopped
	}
	b.enqueueLocked(item)
	return nil
}

func (b *Batcher[T]) enqueueLocked(item T) {
	b.queue = append(b.queue, item)
	select {
	case b.ready <- struct{}{}:
	default:
	}
}

// Len reports how many items wait to be written.
func (b *Batcher[T]) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.queue)
}

// take removes up to max items from the head of the queue.
func (b *Batcher[T]) take() []T {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := min(len(b.queue), b.max)
	items := make([]T, n)
	copy(items, b.queue)
	wasFull := len(b.queue) >= b.limit
	b.queue = b.queue[n:]
	if len(b.queue) == 0 {
		b.queue = nil // let the backing array go
	}
	if wasFull && len(b.queue) < b.limit && !b.stopped { // stopping closed it for good
		close(b.room)
		b.room = make(chan struct{})
	}
	return items
}

// Run writes batches until ctx is done, then writes what is still queued,
// for up to Grace, and returns. The owner stops the producers first, so
// nothing is queued after the final drain.
func (b *Batcher[T]) Run(ctx context.Context) error {
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	grace := context.AfterFunc(ctx, func() { time.AfterFunc(b.Grace, cancel) })
	defer grace()
	for {
		select {
		case <-b.ready:
			for items := b.take(); len(items) > 0; items = b.take() {
				b.write(wctx, items)
				if ctx.Err() != nil {
					break
				}
			}
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			b.mu.Lock()
			b.stopped = true
			close(b.room) // wake waiting producers: they get ErrStopped
			b.mu.Unlock()
			for items := b.take(); len(items) > 0; items = b.take() {
				b.write(wctx, items)
			}
			return nil
		}
	}
}

// write flushes items, retrying until the database takes them or ctx (the
// shutdown grace) ends.
func (b *Batcher[T]) write(ctx context.Context, items []T) {
	bo := b.Retry
	for {
		err := b.flush(ctx, items)
		switch {
		case err == nil:
			if bo.Attempts() > 0 {
				b.log.Info("batch written after retries", "items", len(items), "attempts", bo.Attempts()+1)
			}
			return
		case b.refused(err) && len(items) == 1:
			b.log.Error("dropping an item the database refuses", "err", err)
			return
		case b.refused(err):
			half := len(items) / 2
			b.write(ctx, items[:half])
			b.write(ctx, items[half:])
			return
		case ctx.Err() != nil:
			b.log.Error("dropping unwritten items: the shutdown grace ran out", "items", len(items), "err", err)
			return
		}
		level := slog.LevelDebug
		if bo.Attempts()%10 == 0 {
			level = slog.LevelWarn // the first failure, then every tenth
		}
		b.log.Log(ctx, level, "batch write failed; retrying", "items", len(items), "attempt", bo.Attempts()+1, "err", err)
		if !bo.Wait(ctx) {
			b.log.Error("dropping unwritten items: the shutdown grace ran out", "items", len(items), "err", err)
			return
		}
	}
}
