package edge

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/command"
)

// The inserter is the edge's group commit: requests that arrive while a
// commands INSERT is in flight are stored together by the next one, many
// rows per statement and per commit. An idle edge adds no delay (a lone
// request is flushed at once); a busy one pays one round trip and one
// commit for a whole batch instead of one each. Requests with an
// Idempotency-Key go their own way (db.CreateCommand), since each must find
// or take its key.
type inserter struct {
	db   *db.Store
	in   chan *insert // unbuffered: a request waits in its send until run takes it
	stop chan struct{}
	// inside counts requests in create: queued or in the statement (the
	// edge's "inserts" queue depth).
	inside atomic.Int64
}

// waiting reports how many requests wait for their command to be stored.
func (ins *inserter) waiting() int { return int(ins.inside.Load()) }

// insert is one request's command and, once stored, its outcome.
type insert struct {
	nc   db.NewCommand
	c    command.Command
	err  error
	done chan struct{}
}

// maxInsertBatch bounds a statement's rows (and its arrays' size).
const maxInsertBatch = 500

// errEdgeStopping answers requests that come after the inserter stopped.
var errEdgeStopping = errors.New("the edge is stopping")

func newInserter(store *db.Store) *inserter {
	return &inserter{db: store, in: make(chan *insert), stop: make(chan struct{})}
}

// create stores nc, in a batch with whatever else is being accepted. Like
// db.CreateCommand, an unknown device is db.ErrNotFound. It does not take
// a context: a client that hangs up as the insert commits must not leave
// a command stored but never announced, so the request waits it out (each
// statement is bounded by db.CallTimeout).
func (ins *inserter) create(nc db.NewCommand) (command.Command, error) {
	ins.inside.Add(1)
	defer ins.inside.Add(-1)
	req := &insert{nc: nc, done: make(chan struct{})}
	select {
	case ins.in <- req:
	case <-ins.stop:
		return command.Command{}, errEdgeStopping
	}
	<-req.done // run answers every request it took
	return req.c, req.err
}

// run stores batches until ctx ends. The edge stops it after its HTTP
// server has drained, so no request is left waiting. One statement is in
// flight at a time: requests gather behind it into the next, the largest
// batches and the fewest statements (measured against two and four at
// once: BENCHMARKS.md).
func (ins *inserter) run(ctx context.Context) error {
	defer close(ins.stop)
	batch := make([]*insert, 0, maxInsertBatch)
	for {
		batch = batch[:0]
		select {
		case req := <-ins.in:
			batch = append(batch, req)
		case <-ctx.Done():
			return nil
		}
	gather:
		for len(batch) < maxInsertBatch {
			select {
			case req := <-ins.in:
				batch = append(batch, req)
			default:
				break gather
			}
		}
		// The statement outlives a stopping edge: its requests are waiting.
		ins.flush(context.WithoutCancel(ctx), batch)
	}
}

// flush stores a batch and answers each request in it.
func (ins *inserter) flush(ctx context.Context, batch []*insert) {
	ins.store(ctx, batch)
	for _, req := range batch {
		close(req.done)
	}
}

// store stores a batch, setting each request's outcome.
func (ins *inserter) store(ctx context.Context, batch []*insert) {
	ncs := make([]db.NewCommand, len(batch))
	for i, req := range batch {
		ncs[i] = req.nc
	}
	stored, err := ins.db.CreateCommands(ctx, ncs)
	if errors.Is(err, db.ErrInvalid) && len(batch) > 1 {
		// One row was refused and took the statement with it: store each
		// alone, so that only the one at fault fails.
		for i := range batch {
			ins.store(ctx, batch[i:i+1])
		}
		return
	}
	byID := make(map[uuid.UUID]*command.Command, len(stored))
	for i := range stored {
		byID[stored[i].ID] = &stored[i]
	}
	for _, req := range batch {
		switch c, ok := byID[req.nc.ID]; {
		case err != nil:
			req.err = err
		case ok:
			req.c = *c
		default:
			req.err = fmt.Errorf("device %s: %w", req.nc.DeviceID, db.ErrNotFound)
		}
	}
}
