// Package batch turns a stream of small database calls into few round
// trips. Items queue while the previous call is in flight and go together
// in the next: an idle system pays no added delay, and a busy one (a
// reconnect storm, a burst of replies) gets large batches instead of a
// flood. A caller may wait for its own item's outcome (Do).
//
// The two forms differ in what becomes of a failed call:
//   - A Batcher is for writes that must never be dropped because the
//     database is away: it retries, with backoff, for as long as the outage
//     lasts. Only two things lose items, both logged: a row the database
//     refuses outright, and items still unwritten when the grace after
//     shutdown runs out.
//   - Calls are requests whose callers wait for the answer: a failed call
//     is answered, not retried, and each caller decides what to do.
//
// In both, a batch the database refuses (the data itself, not an outage)
// is split until the item at fault is alone: only that one fails.
package batch

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/switchboard-iot/switchboard/internal/backoff"
)

// ErrStopped is returned once the batcher has stopped.
var ErrStopped = errors.New("batcher stopped")

// An Outcome is what became of one item: its result, or an error that is
// its caller's alone.
type Outcome[R any] struct {
	Result R
	Err    error
}

// Batcher queues items of type T and writes them with its flush function,
// retrying until the database takes them.
type Batcher[T any] struct{ c *core[T, struct{}] }

// New makes a batcher whose Add waits while limit items are queued and that
// flushes at most max at a time. flush must be safe to retry. When refused
// says the database refused the data itself, retrying cannot help: the batch
// is split until the item at fault is alone, and only that one is dropped.
func New[T any](name string, limit, max int, log *slog.Logger, flush func(context.Context, []T) error, refused func(error) bool) *Batcher[T] {
	call := func(ctx context.Context, items []T) ([]Outcome[struct{}], error) { return nil, flush(ctx, items) }
	return &Batcher[T]{c: newCore(limit, max, log.With("batcher", name), call, refused,
		&backoff.Backoff{Min: 50 * time.Millisecond, Max: time.Second})}
}

// Add queues an item, waiting while the queue is full: the producer slows
// to the database's pace. It fails only when ctx ends or the batcher stopped.
func (b *Batcher[T]) Add(ctx context.Context, item T) error {
	return b.c.add(ctx, entry[T, struct{}]{item: item})
}

// Do queues an item as Add does, and waits until it is written: nil, or
// the database's refusal of it, or an error if it was dropped at shutdown.
// When ctx ends first, Do returns ctx's error and the item stays queued.
func (b *Batcher[T]) Do(ctx context.Context, item T) error {
	_, err := b.c.do(ctx, item)
	return err
}

// TryAdd queues an item unless the queue is full, for items that may be
// shed under overload. It reports whether the item was queued.
func (b *Batcher[T]) TryAdd(item T) bool {
	b.c.mu.Lock()
	defer b.c.mu.Unlock()
	if b.c.stopped || len(b.c.queue) >= b.c.limit {
		return false
	}
	b.c.enqueueLocked(entry[T, struct{}]{item: item})
	return true
}

// Push queues an item without waiting, past the limit if need be. It is for
// producers that are bounded some other way (one item per session, say) and
// must not block.
func (b *Batcher[T]) Push(item T) error {
	b.c.mu.Lock()
	defer b.c.mu.Unlock()
	if b.c.stopped {
		return ErrStopped
	}
	b.c.enqueueLocked(entry[T, struct{}]{item: item})
	return nil
}

// Len reports how many items wait to be written.
func (b *Batcher[T]) Len() int {
	b.c.mu.Lock()
	defer b.c.mu.Unlock()
	return len(b.c.queue)
}

// Retries reports how many failed writes were retried since the batcher
// was made, for a process's metrics: it climbs while the database is away.
func (b *Batcher[T]) Retries() uint64 { return b.c.retries.Load() }

// Run writes batches until ctx is done, then writes what is still queued,
// for up to the grace (10s), and returns. The owner stops the producers
// first, so nothing is queued after the final drain.
func (b *Batcher[T]) Run(ctx context.Context) error { return b.c.run(ctx) }

// Calls batches requests of type T, each answered with an R: a reader of
// many rows by id, say, or an insert whose callers wait for their row.
type Calls[T, R any] struct{ c *core[T, R] }

// NewCalls makes Calls that pass at most max items to call at a time. call
// returns one Outcome per item, in their order, or an error that answers
// every item of the batch. When refused (nil: never) says the database
// refused the data itself, the batch is split until the item at fault is
// alone, and only its caller gets the refusal.
func NewCalls[T, R any](max int, call func(context.Context, []T) ([]Outcome[R], error), refused func(error) bool) *Calls[T, R] {
	if refused == nil {
		refused = func(error) bool { return false }
	}
	return &Calls[T, R]{c: newCore(math.MaxInt, max, slog.New(slog.DiscardHandler), call, refused, nil)}
}

// Do submits item and returns its outcome. When ctx ends first, Do returns
// ctx's error: the item is still called, and its answer dropped, so a
// caller that gives up never holds up the batch.
func (c *Calls[T, R]) Do(ctx context.Context, item T) (R, error) { return c.c.do(ctx, item) }

// Len reports how many items wait for their outcome: queued, or in the
// call under way.
func (c *Calls[T, R]) Len() int {
	c.c.mu.Lock()
	defer c.c.mu.Unlock()
	return len(c.c.queue) + c.c.inFlight
}

// Run calls batches until ctx is done, then answers what is still queued,
// for up to the grace (10s), and returns; Do then fails with ErrStopped.
func (c *Calls[T, R]) Run(ctx context.Context) error { return c.c.run(ctx) }

// core is what the two forms share: the queue, the loop that calls with
// whatever queued, the split of a refused batch and the answers to the
// callers that wait.
type core[T, R any] struct {
	limit int // add waits while this many items are queued
	max   int // items per call
	// call returns one outcome per item, or nil when each is the zero one.
	call    func(context.Context, []T) ([]Outcome[R], error)
	refused func(error) bool
	retry   *backoff.Backoff // paces the attempts at a failed batch; nil: it is answered
	grace   time.Duration    // how long run keeps calling after its context ends
	log     *slog.Logger
	ready   chan struct{} // cap 1: the queue has items
	// retries counts failed calls retried: a Batcher's metric (a
	// database away shows as a climbing rate of them).
	retries atomic.Uint64

	mu       sync.Mutex // guards the following
	queue    []entry[T, R]
	inFlight int           // items taken by the call under way
	room     chan struct{} // closed when the queue drops below limit
	stopped  bool
}

// entry is a queued item and, when its caller waits, where its outcome goes.
type entry[T, R any] struct {
	item   T
	answer chan Outcome[R] // cap 1, so that a caller that gave up never blocks the loop; nil: nobody waits
}

func (e entry[T, R]) tell(o Outcome[R]) {
	if e.answer != nil {
		e.answer <- o
	}
}

func newCore[T, R any](limit, max int, log *slog.Logger, call func(context.Context, []T) ([]Outcome[R], error), refused func(error) bool, retry *backoff.Backoff) *core[T, R] {
	return &core[T, R]{
		limit:   limit,
		max:     max,
		call:    call,
		refused: refused,
		retry:   retry,
		grace:   10 * time.Second,
		log:     log,
		ready:   make(chan struct{}, 1),
		room:    make(chan struct{}),
	}
}

// add queues e, waiting while the queue is full.
func (c *core[T, R]) add(ctx context.Context, e entry[T, R]) error {
	for {
		c.mu.Lock()
		if c.stopped {
			c.mu.Unlock()
			return ErrStopped
		}
		if len(c.queue) < c.limit {
			c.enqueueLocked(e)
			c.mu.Unlock()
			return nil
		}
		room := c.room
		c.mu.Unlock()
		select {
		case <-room:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// do queues item and waits for its outcome or the end of ctx.
func (c *core[T, R]) do(ctx context.Context, item T) (R, error) {
	var zero R
	answer := make(chan Outcome[R], 1)
	if err := c.add(ctx, entry[T, R]{item: item, answer: answer}); err != nil {
		return zero, err
	}
	select {
	case o := <-answer:
		return o.Result, o.Err
	case <-ctx.Done():
		return zero, ctx.Err()
	}
}

func (c *core[T, R]) enqueueLocked(e entry[T, R]) {
	c.queue = append(c.queue, e)
	select {
	case c.ready <- struct{}{}:
	default:
	}
}

// take removes up to max entries from the head of the queue; they are in
// flight until done.
func (c *core[T, R]) take() []entry[T, R] {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := min(len(c.queue), c.max)
	batch := make([]entry[T, R], n)
	copy(batch, c.queue)
	wasFull := len(c.queue) >= c.limit
	c.queue = c.queue[n:]
	if len(c.queue) == 0 {
		c.queue = nil // let the backing array go
	}
	if wasFull && len(c.queue) < c.limit && !c.stopped { // stopping closed it for good
		close(c.room)
		c.room = make(chan struct{})
	}
	c.inFlight = n
	return batch
}

// run calls batches until ctx is done, then calls with what is still
// queued, for up to the grace, and returns. A call outlives ctx: its
// callers are waiting.
func (c *core[T, R]) run(ctx context.Context) error {
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	grace := context.AfterFunc(ctx, func() { time.AfterFunc(c.grace, cancel) })
	defer grace()
	for {
		select {
		case <-c.ready:
			for batch := c.take(); len(batch) > 0; batch = c.take() {
				c.flush(wctx, batch)
				if ctx.Err() != nil {
					break
				}
			}
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			c.mu.Lock()
			c.stopped = true
			close(c.room) // wake waiting producers: they get ErrStopped
			c.mu.Unlock()
			for batch := c.take(); len(batch) > 0; batch = c.take() {
				c.flush(wctx, batch)
			}
			return nil
		}
	}
}

// flush calls with a batch taken from the queue and answers its entries.
func (c *core[T, R]) flush(ctx context.Context, batch []entry[T, R]) {
	items := make([]T, len(batch))
	for i := range batch {
		items[i] = batch[i].item
	}
	c.write(ctx, batch, items)
	c.mu.Lock()
	c.inFlight = 0
	c.mu.Unlock()
}

// write calls with items (those of batch), and answers each entry. A failed
// call is retried until the database takes it or ctx (the shutdown grace)
// ends, or answered at once when there is no retry.
func (c *core[T, R]) write(ctx context.Context, batch []entry[T, R], items []T) {
	var bo backoff.Backoff
	if c.retry != nil {
		bo = *c.retry
	}
	failed := func(err error) {
		for _, e := range batch {
			e.tell(Outcome[R]{Err: err})
		}
	}
	for {
		outcomes, err := c.call(ctx, items)
		switch {
		case err == nil:
			if bo.Attempts() > 0 {
				c.log.Info("batch written after retries", "items", len(items), "attempts", bo.Attempts()+1)
			}
			for i, e := range batch {
				if outcomes == nil {
					e.tell(Outcome[R]{})
				} else {
					e.tell(outcomes[i])
				}
			}
			return
		case c.refused(err) && len(items) == 1:
			if c.retry != nil { // a Batcher drops it: say so
				c.log.Error("dropping an item the database refuses", "err", err)
			}
			failed(err)
			return
		case c.refused(err):
			half := len(items) / 2
			c.write(ctx, batch[:half], items[:half])
			c.write(ctx, batch[half:], items[half:])
			return
		case c.retry == nil:
			failed(err)
			return
		case ctx.Err() != nil:
			c.log.Error("dropping unwritten items: the shutdown grace ran out", "items", len(items), "err", err)
			failed(err)
			return
		}
		level := slog.LevelDebug
		if bo.Attempts()%10 == 0 {
			level = slog.LevelWarn // the first failure, then every tenth
		}
		c.retries.Add(1)
		c.log.Log(ctx, level, "batch write failed; retrying", "items", len(items), "attempt", bo.Attempts()+1, "err", err)
		if !bo.Wait(ctx) {
			c.log.Error("dropping unwritten items: the shutdown grace ran out", "items", len(items), "err", err)
			failed(err)
			return
		}
	}
}
