package db

import (
	"context"
	"time"
)

// Retention: final commands and events older than their keep are deleted,
// oldest first, a batch at a time. Each batch is its own short
// transaction that skips rows another process is deleting, so purging
// never holds locks the command path waits on, and several edges may
// purge at once without doing the same work.

// PurgeCommands deletes up to limit commands that became final (done,
// failed, expired, cancelled) more than keep ago, and returns how many it deleted. A
// job's commands stay as long as the job does: they are its counts.
func (s *Store) PurgeCommands(ctx context.Context, keep time.Duration, limit int) (int64, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	tag, err := s.db.Exec(ctx, `
		DELETE FROM commands WHERE id IN (
			SELECT c.id FROM commands c WHERE c.completed_at < now() - $1::interval
			AND (c.job_id IS NULL OR NOT EXISTS (SELECT FROM jobs j WHERE j.id = c.job_id))
			ORDER BY c.completed_at LIMIT $2 FOR UPDATE SKIP LOCKED)`, keep, limit)
	return tag.RowsAffected(), translate(err, "purge commands")
}

// PurgeJobs deletes up to limit jobs that finished more than keep ago (and
// their targets), and returns how many it deleted; PurgeCommands then
// deletes their commands.
func (s *Store) PurgeJobs(ctx context.Context, keep time.Duration, limit int) (int64, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	tag, err := s.db.Exec(ctx, `
		DELETE FROM jobs WHERE id IN (
			SELECT id FROM jobs WHERE finished_at < now() - $1::interval
			LIMIT $2 FOR UPDATE SKIP LOCKED)`, keep, limit)
	return tag.RowsAffected(), translate(err, "purge jobs")
}

// PurgeEvents deletes up to limit events received more than keep ago, and
// returns how many it deleted. A device's latest value of each name
// (event_latest) stays for as long as the device does; its count drops.
func (s *Store) PurgeEvents(ctx context.Context, keep time.Duration, limit int) (int64, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	var n int64
	err := s.db.QueryRow(ctx, `
		WITH gone AS (
			DELETE FROM events WHERE id IN (
				SELECT id FROM events WHERE received_at < now() - $1::interval
				ORDER BY received_at LIMIT $2 FOR UPDATE SKIP LOCKED)
			RETURNING device_id, name),
		counted AS (`+uncount+`)
		SELECT count(*) FROM gone`, keep, limit).Scan(&n)
	return n, translate(err, "purge events")
}

// uncount takes the events a statement deleted (the CTE "gone") off their
// devices' counts.
const uncount = `
	UPDATE event_latest l SET stored = greatest(l.stored - g.n, 0)
	FROM (SELECT device_id, name, count(*) AS n FROM gone GROUP BY 1, 2) g
	WHERE l.device_id = g.device_id AND l.name = g.name`

// CapDeviceEvents deletes the oldest events of up to devices devices that
// store more than keep, at most perDevice each, and returns how many it
// deleted. Devices over their cap are found from event_latest's counts
// (one row per device and event name), not by counting events.
func (s *Store) CapDeviceEvents(ctx context.Context, keep, devices, perDevice int) (int64, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	var n int64
	err := s.db.QueryRow(ctx, `
		WITH over AS (
			SELECT device_id, sum(stored) - $1 AS excess FROM event_latest
			GROUP BY device_id HAVING sum(stored) > $1 LIMIT $2),
		gone AS (
			DELETE FROM events WHERE id IN (
				SELECT x.id FROM over o, LATERAL (
					SELECT e.id FROM events e WHERE e.device_id = o.device_id
					ORDER BY e.id LIMIT least(o.excess, $3)) x)
			RETURNING device_id, name),
		counted AS (`+uncount+`)
		SELECT count(*) FROM gone`, keep, devices, perDevice).Scan(&n)
	return n, translate(err, "cap device events")
}

// PurgeSessions deletes up to limit entries of the presence history that
// ended more than keep ago, and returns how many it deleted.
func (s *Store) PurgeSessions(ctx context.Context, keep time.Duration, limit int) (int64, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	tag, err := s.db.Exec(ctx, `
		DELETE FROM device_sessions WHERE session_id IN (
			SELECT session_id FROM device_sessions WHERE disconnected_at < now() - $1::interval
			ORDER BY disconnected_at LIMIT $2 FOR UPDATE SKIP LOCKED)`, keep, limit)
	return tag.RowsAffected(), translate(err, "purge sessions")
}
