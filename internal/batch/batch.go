// Package batch turns a stream of small database writes into few round trips.
// A Batcher writes whatever queued up while its previous write was in
// flight: an idle system pays no added delay, and a busy one (a reconnect
// storm, a burst of replies) gets large batches instead of a flood.
package batch

import (
	"context"
	"errors"
	"log/slog"
	"time"
)

// ErrStopped is returned by Add once the batcher has stopped.
var ErrStopped = errors.New("batcher stopped")

// Batcher queues items of type T and writes them with its flush function.
type Batcher[T any] struct {
	name    string
	in      chan T
	max     int
	flush   func(context.Context, []T) error
	refused func(error) bool
	log     *slog.Logger
	stopped chan struct{}
}

// New makes a batcher that holds up to queue items and flushes at most max
// at a time. flush must be safe to retry: a failed batch is tried again with
// backoff, a few times, before it is dropped and logged. When refused says
// the database refused the data itself, retrying cannot help: the batch is
// split until the item at fault is alone, and only that one is dropped.
func New[T any](name string, queue, max int, log *slog.Logger, flush func(context.Context, []T) error, refused func(error) bool) *Batcher[T] {
	return &Batcher[T]{
		name:    name,
		in:      make(chan T, queue),
		max:     max,
		flush:   flush,
		refused: refused,
		log:     log.With("batcher", name),
		stopped: make(chan struct{}),
	}
}

// Add queues an item, waiting while the queue is full (backpressure). Once
// the batcher has stopped it refuses, rather than queue what nobody writes.
func (b *Batcher[T]) Add(ctx context.Context, item T) error {
	select {
	case <-b.stopped:
		return ErrStopped
	default:
	}
	select {
	case b.in <- item:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-b.stopped:
		return ErrStopped
	}
}

// Run writes batches until ctx is done, then writes what is still queued
// and returns. Writes outlive ctx by a few seconds' grace, so the batch in
// flight and those queued behind it still land on shutdown; the owner stops
// the producers first, so nothing is queued after the final drain.
func (b *Batcher[T]) Run(ctx context.Context) error {
	defer close(b.stopped)
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	grace := context.AfterFunc(ctx, func() { time.AfterFunc(5*time.Second, cancel) })
	defer grace()

	items := make([]T, 0, b.max)
	for {
		select {
		case item := <-b.in:
			b.write(wctx, b.fill(append(items[:0], item)))
		case <-ctx.Done():
			for items = b.fill(items[:0]); len(items) > 0; items = b.fill(items[:0]) {
				b.write(wctx, items)
			}
			return nil
		}
	}
}

// fill appends queued items without waiting, up to max.
func (b *Batcher[T]) fill(items []T) []T {
	for len(items) < b.max {
		select {
		case item := <-b.in:
			items = append(items, item)
		default:
			return items
		}
	}
	return items
}

func (b *Batcher[T]) write(ctx context.Context, items []T) {
	backoff := 50 * time.Millisecond
	const attempts = 8
	for attempt := 1; ; attempt++ {
		err := b.flush(ctx, items)
		if err == nil {
			return
		}
		if b.refused(err) {
			if len(items) == 1 {
				b.log.Error("dropping an item the database refuses", "err", err)
				return
			}
			half := len(items) / 2
			b.write(ctx, items[:half])
			b.write(ctx, items[half:])
			return
		}
		if attempt == attempts || ctx.Err() != nil {
			b.log.Error("dropping batch after failed writes", "items", len(items), "attempts", attempt, "err", err)
			return
		}
		b.log.Warn("batch write failed; retrying", "items", len(items), "attempt", attempt, "err", err)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}
