package maintenance

import (
	"context"
	"time"

	"github.com/switchboard-iot/switchboard/db"
)

// sweep fails commands whose device did not reply in time, expires those
// never delivered, and gives back those delivered to a node whose lease
// lapsed; then wakes their edges and nodes. Every edge sweeps; each row goes
// to one of them. Leases of long-dead nodes and old idempotency keys are
// reaped on a slower beat.
func (m *Maintainer) sweep(ctx context.Context) error {
	ticker := time.NewTicker(m.cfg.SweepInterval)
	defer ticker.Stop()
	const limit = 1000
	lastReap := time.Now()
	outage := outage{log: m.log, doing: "sweeping commands"}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
		for {
			swept, err := m.store.SweepCommands(ctx, limit)
			// Wake for what was swept even if part of the sweep failed.
			for i := range swept.Changes {
				_ = m.notices.Push(db.Notice{Change: &swept.Changes[i]})
			}
			for _, id := range swept.Devices {
				_ = m.notices.Push(db.Notice{Wake: id})
			}
			if err != nil {
				outage.failed(ctx, err)
				break
			}
			outage.worked()
			m.metrics.swept.Add(float64(len(swept.Changes)))
			for _, ch := range swept.Changes {
				if ch.Command != nil && ch.Command.Status.Final() {
					m.metrics.final.WithLabelValues(string(ch.Command.Status)).Inc()
				}
			}
			m.metrics.requeued.Add(float64(len(swept.Devices)))
			if len(swept.Changes) < limit && len(swept.Devices) < limit {
				break
			}
		}
		if time.Since(lastReap) > time.Minute {
			lastReap = time.Now()
			if n, err := m.store.ReapNodes(ctx, 5*time.Minute); err != nil {
				m.log.Warn("reaping dead nodes", "err", err)
			} else if n > 0 {
				m.log.Info("reaped dead nodes", "nodes", n)
			}
			if _, err := m.store.PurgeIdempotencyKeys(ctx, 10000); err != nil {
				m.log.Warn("purging idempotency keys", "err", err)
			}
		}
	}
}
