package edge

import (
	"context"
	"time"
)

// Default retention: what a small operator need not change.
const (
	DefaultRetainCommands  = 30 * 24 * time.Hour
	DefaultRetainEvents    = 7 * 24 * time.Hour
	DefaultEventsPerDevice = 10_000
)

// MinRetainCommands keeps commands at least as long as the idempotency
// keys that name them (24 h), so a retried request never finds its key
// pointing at a deleted command.
const MinRetainCommands = 25 * time.Hour

const (
	retainBatch      = 1000 // rows per delete: a short transaction
	retainBatches    = 100  // batches per round at most: the rest waits for the next round
	capDevices       = 100  // devices over their cap trimmed per batch
	retentionEvery   = time.Minute
	retentionBreathe = 50 * time.Millisecond // between batches, for the hot path's sake
)

// retain deletes what retention says is old, every minute, a batch at a
// time. Every edge runs it; batches skip rows another edge is deleting.
func (e *Edge) retain(ctx context.Context) error {
	ticker := time.NewTicker(retentionEvery)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
		e.retainOnce(ctx)
	}
}

// retainOnce runs one round.
func (e *Edge) retainOnce(ctx context.Context) {
	purge := func(table string, keep time.Duration, del func(context.Context, time.Duration, int) (int64, error)) {
		if keep < 0 {
			return
		}
		for range retainBatches {
			n, err := del(ctx, keep, retainBatch)
			if err != nil {
				if ctx.Err() == nil {
					e.log.Warn("retention: deleting old rows", "table", table, "err", err)
				}
				return
			}
			e.metrics.purged.WithLabelValues(table).Add(float64(n))
			if n < retainBatch || !e.breathe(ctx) {
				return
			}
		}
	}
	keepCommands := e.cfg.RetainCommands
	if keepCommands >= 0 {
		keepCommands = max(keepCommands, MinRetainCommands)
	}
	purge("jobs", keepCommands, e.store.PurgeJobs)
	purge("commands", keepCommands, e.store.PurgeCommands)
	purge("events", e.cfg.RetainEvents, e.store.PurgeEvents)
	purge("sessions", e.cfg.RetainEvents, e.store.PurgeSessions)
	if e.cfg.EventsPerDevice < 0 {
		return
	}
	for range retainBatches {
		n, err := e.store.CapDeviceEvents(ctx, e.cfg.EventsPerDevice, capDevices, retainBatch)
		if err != nil {
			if ctx.Err() == nil {
				e.log.Warn("retention: capping events per device", "err", err)
			}
			return
		}
		e.metrics.purged.WithLabelValues("events_capped").Add(float64(n))
		if n == 0 || !e.breathe(ctx) {
			return
		}
	}
}

// breathe pauses between batches; false when ctx ended.
func (e *Edge) breathe(ctx context.Context) bool {
	t := time.NewTimer(retentionBreathe)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
