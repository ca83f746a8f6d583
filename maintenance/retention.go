package maintenance

import (
	"context"
	"time"

	"github.com/switchboard-iot/switchboard/internal/backoff"
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
func (m *Maintainer) retain(ctx context.Context) error {
	ticker := time.NewTicker(retentionEvery)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
		m.retainOnce(ctx)
	}
}

// retainOnce runs one round.
func (m *Maintainer) retainOnce(ctx context.Context) {
	// batches calls del, a batch at a time, while it says there is more
	// (at most retainBatches times), pausing between batches for the hot
	// path's sake; the metric counts what it deleted under label.
	batches := func(label string, del func() (n int64, more bool, err error)) {
		for range retainBatches {
			n, more, err := del()
			if err != nil {
				if ctx.Err() == nil {
					m.log.Warn("retention: deleting old rows", "what", label, "err", err)
				}
				return
			}
			m.metrics.purged.WithLabelValues(label).Add(float64(n))
			if !more || !backoff.Sleep(ctx, retentionBreathe) {
				return
			}
		}
	}
	// purge deletes table's rows older than keep (none when keep < 0); a
	// short batch was the last.
	purge := func(table string, keep time.Duration, del func(context.Context, time.Duration, int) (int64, error)) {
		if keep >= 0 {
			batches(table, func() (int64, bool, error) {
				n, err := del(ctx, keep, retainBatch)
				return n, n == retainBatch, err
			})
		}
	}
	keepCommands := m.cfg.RetainCommands
	if keepCommands >= 0 {
		keepCommands = max(keepCommands, MinRetainCommands)
	}
	purge("jobs", keepCommands, m.store.PurgeJobs)
	purge("commands", keepCommands, m.store.PurgeCommands)
	purge("events", m.cfg.RetainEvents, m.store.PurgeEvents)
	purge("sessions", m.cfg.RetainEvents, m.store.PurgeSessions)
	if m.cfg.EventsPerDevice >= 0 {
		// A batch trims up to capDevices devices: it was the last when
		// none was over its cap.
		batches("events_capped", func() (int64, bool, error) {
			n, err := m.store.CapDeviceEvents(ctx, m.cfg.EventsPerDevice, capDevices, retainBatch)
			return n, n > 0, err
		})
	}
}
