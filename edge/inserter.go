package edge

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/batch"
	"github.com/switchboard-iot/switchboard/internal/command"
)

// The inserter is the edge's group commit: requests that arrive while a
// commands INSERT is in flight are stored together by the next one, many
// rows per statement and per commit. An idle edge adds no delay (a lone
// request is flushed at once); a busy one pays one round trip and one
// commit for a whole batch instead of one each. One statement is in flight
// at a time: requests gather behind it into the next, the largest batches
// and the fewest statements (measured against two and four at once:
// BENCHMARKS.md). Requests with an Idempotency-Key go their own way
// (db.CreateCommand), since each must find or take its key.
type inserter struct {
	store *db.Store
	calls *batch.Calls[db.NewCommand, command.Command]
}

// maxInsertBatch bounds a statement's rows (and its arrays' size).
const maxInsertBatch = 500

func newInserter(store *db.Store) *inserter {
	ins := &inserter{store: store}
	// A row PostgreSQL refuses takes the statement with it: the batch is
	// split, so that only the one at fault fails.
	ins.calls = batch.NewCalls(maxInsertBatch, ins.insert, func(err error) bool { return errors.Is(err, db.ErrInvalid) })
	return ins
}

// waiting reports how many requests wait for their command to be stored
// (the edge's "inserts" queue depth).
func (ins *inserter) waiting() int { return ins.calls.Len() }

// run stores batches until ctx ends. The edge stops it after its HTTP
// server has drained, so no request is left waiting.
func (ins *inserter) run(ctx context.Context) error { return ins.calls.Run(ctx) }

// create stores nc, in a batch with whatever else is being accepted. Like
// db.CreateCommand, an unknown device is db.ErrNotFound. It does not take
// a context: a client that hangs up as the insert commits must not leave
// a command stored but never announced, so the request waits it out (each
// statement is bounded by db.CallTimeout).
func (ins *inserter) create(nc db.NewCommand) (command.Command, error) {
	return ins.calls.Do(context.Background(), nc)
}

// insert stores a batch of commands in one statement: each its stored
// command, db.ErrQueueFull for a device whose queue is full, or
// db.ErrNotFound for an unknown device.
func (ins *inserter) insert(ctx context.Context, ncs []db.NewCommand) ([]batch.Outcome[command.Command], error) {
	stored, full, err := ins.store.CreateCommands(ctx, ncs)
	if err != nil {
		return nil, err
	}
	byID := make(map[uuid.UUID]*command.Command, len(stored))
	for i := range stored {
		byID[stored[i].ID] = &stored[i]
	}
	out := make([]batch.Outcome[command.Command], len(ncs))
	for i, nc := range ncs {
		if c, ok := byID[nc.ID]; ok {
			out[i].Result = *c
		} else if slices.Contains(full, nc.ID) {
			out[i].Err = fmt.Errorf("device %s: %w", nc.DeviceID, db.ErrQueueFull)
		} else {
			out[i].Err = fmt.Errorf("device %s: %w", nc.DeviceID, db.ErrNotFound)
		}
	}
	return out, nil
}
