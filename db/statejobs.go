package db

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// ErrWrongJobKind: a route of one kind of job (a command job's commands, a
// state job's targets) asked of the other kind.
var ErrWrongJobKind = errors.New("the job is of the other kind")

// A state job's target outcomes (job_targets.outcome); a target not
// reached yet has none ("unsent" in answers).
const (
	OutcomePatched   = "patched"   // its desired document changed
	OutcomeUnchanged = "unchanged" // it already was at the patched state
	OutcomeGone      = "gone"      // the device was deleted since the job was created
	OutcomeTooLarge  = "too_large" // the patch would leave the document over MaxStateBytes: not applied
	OutcomeUnsent    = "unsent"    // not reached yet (or never, once the job was cancelled)
)

// TargetOutcomes are every outcome a target can show, unsent included.
var TargetOutcomes = []string{OutcomeUnsent, OutcomePatched, OutcomeUnchanged, OutcomeGone, OutcomeTooLarge}

// StateJobCounts are a state job's targets by outcome: Unsent, Patched,
// Unchanged, Gone and TooLarge add up to the job's total. Converged counts,
// among the patched and unchanged targets whose device still exists, those
// whose reported document has every key of the patch at the value of the
// desired one (a key the patch deletes: absent from both), read when the
// job is read: it grows as devices report, and may shrink when they
// report something else, or desired changes again.
type StateJobCounts struct {
	Unsent    int `json:"unsent"`
	Patched   int `json:"patched"`
	Unchanged int `json:"unchanged"`
	Gone      int `json:"gone"`
	TooLarge  int `json:"too_large"`
	Converged int `json:"converged"`
}

// Reached is how many targets the job's batches reached.
func (c StateJobCounts) Reached() int { return c.Patched + c.Unchanged + c.Gone + c.TooLarge }

// convergedExpr says whether target jt (of job j, with its device's state
// s LEFT JOINed) has reported the patched keys as desired; false for a
// target not reached (outcome null).
const convergedExpr = `coalesce(jt.outcome IN ('patched', 'unchanged')
	AND EXISTS (SELECT FROM devices d WHERE d.id = jt.device_id)
	AND NOT EXISTS (SELECT FROM jsonb_object_keys(j.desired) k
		WHERE coalesce(s.reported, '{}') -> k IS DISTINCT FROM coalesce(s.desired, '{}') -> k), false)`

// stateJobCountsQuery counts a state job's ($1) targets by outcome, and the
// converged ones: one pass over its job_targets and their device_state
// rows. For a command job the one-time filter on jobs.desired reads
// nothing, so Job may queue it for every job.
const stateJobCountsQuery = `
	SELECT count(*) FILTER (WHERE jt.outcome = 'patched'), count(*) FILTER (WHERE jt.outcome = 'unchanged'),
		count(*) FILTER (WHERE jt.outcome = 'gone'), count(*) FILTER (WHERE jt.outcome = 'too_large'),
		count(*) FILTER (WHERE ` + convergedExpr + `)
	FROM jobs j JOIN job_targets jt ON jt.job_id = j.id
	LEFT JOIN device_state s ON s.device_id = jt.device_id
	WHERE j.id = $1 AND j.desired IS NOT NULL`

func (c *StateJobCounts) scan(row pgx.Row) error {
	return row.Scan(&c.Patched, &c.Unchanged, &c.Gone, &c.TooLarge, &c.Converged)
}

// stateJobRunnerCounts fills a state job's JobState counts for the
// runner's plan: what its batches did (without converged, which the plan
// does not need), in command terms.
func (s *Store) stateJobRunnerCounts(ctx context.Context, st *JobState) error {
	var done, tooLarge int
	err := s.db.QueryRow(ctx, `
		SELECT count(*) FILTER (WHERE outcome IN ('patched', 'unchanged')), count(*) FILTER (WHERE outcome = 'too_large')
		FROM job_targets WHERE job_id = $1 AND position < $2`, st.Job, st.Created).Scan(&done, &tooLarge)
	st.Counts = JobCounts{Done: done, Failed: tooLarge}
	return err
}

// patchJobTargets is a state job's batch: it merges the job's patch into
// the desired documents of its next targets (at most plan.Create, those
// left), in one statement, and records each target's outcome. As
// PatchDesired does, a document that would not change keeps its version,
// and one that would pass MaxStateBytes is left as it is; the merge reads
// each row as it is when locked (ON CONFLICT … DO UPDATE), so a PATCH
// racing the batch is merged with, never overwritten. The targets' device
// rows are locked (FOR KEY SHARE) so that none is deleted between the
// check and the write. Rows are locked in device id order, so two batches
// (of two state jobs) never deadlock on each other; a deadlock with a
// node's report batch rolls the step back, and the next tick makes it
// again. The step's Notices wake the nodes of the changed
// devices that are online (by presence); offline ones get their document
// when they connect.
func (s *Store) patchJobTargets(ctx context.Context, st JobState, plan JobPlan, step *JobStep) error {
	n := min(plan.Create, st.Total-st.Created)
	rows, err := s.db.Query(ctx, `
		WITH t AS (
			SELECT position, device_id FROM job_targets
			WHERE job_id = $1 AND position >= $2 AND position < $2 + $3),
		live AS (
			SELECT d.id FROM devices d WHERE d.id IN (SELECT device_id FROM t) ORDER BY d.id FOR KEY SHARE OF d),
		patch AS (SELECT desired AS p, sb_merge_patch('{}', desired) AS fresh FROM jobs WHERE id = $1),
		cur AS (
			SELECT live.id, s.device_id IS NOT NULL AS has_row,
				octet_length(sb_merge_patch(coalesce(s.desired, '{}'), patch.p)::text) > $4 AS big
			FROM live CROSS JOIN patch LEFT JOIN device_state s ON s.device_id = live.id),
		up AS (
			INSERT INTO device_state AS s (device_id, desired, desired_version, desired_updated_at)
			SELECT cur.id, patch.fresh, 1, now() FROM cur CROSS JOIN patch
			WHERE NOT cur.big AND (cur.has_row OR patch.fresh <> '{}')
			ORDER BY cur.id
			ON CONFLICT (device_id) DO UPDATE
				SET desired = sb_merge_patch(s.desired, (SELECT p FROM patch)),
					desired_version = s.desired_version + 1, desired_updated_at = now()
				WHERE sb_merge_patch(s.desired, (SELECT p FROM patch)) IS DISTINCT FROM s.desired
				  AND octet_length(sb_merge_patch(s.desired, (SELECT p FROM patch))::text) <= $4
			RETURNING s.device_id, s.desired_version)
		UPDATE job_targets jt SET patched_at = now(), desired_version = up.desired_version,
			outcome = CASE WHEN up.device_id IS NOT NULL THEN 'patched' WHEN cur.id IS NULL THEN 'gone'
				WHEN cur.big THEN 'too_large' ELSE 'unchanged' END
		FROM t LEFT JOIN cur ON cur.id = t.device_id LEFT JOIN up ON up.device_id = t.device_id
		WHERE jt.job_id = $1 AND jt.position = t.position
		RETURNING jt.device_id, jt.outcome = 'patched', EXISTS (SELECT FROM presence p WHERE p.device_id = jt.device_id)`,
		st.Job, st.Created, n, MaxStateBytes)
	if err != nil {
		return err
	}
	var id string
	var patched, online bool
	step.Patched, step.Notices = 0, nil
	_, err = pgx.ForEachRow(rows, []any{&id, &patched, &online}, func() error {
		if patched {
			step.Patched++
			if online {
				step.Notices = append(step.Notices, Notice{State: id})
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	step.Created = n
	_, err = s.db.Exec(ctx, `
		UPDATE jobs SET created = created + $2, checked_at = now(),
			advanced_at = now() - make_interval(secs => $3)
		WHERE id = $1`, st.Job, n, plan.Behind)
	return err
}

// JobTarget is one target of a state job and what its batch did.
type JobTarget struct {
	DeviceID string `json:"device_id"`
	Outcome  string `json:"outcome"` // one of TargetOutcomes
	// DesiredVersion is the version the patch made (patched only).
	DesiredVersion *int64     `json:"desired_version,omitempty"`
	PatchedAt      *time.Time `json:"patched_at,omitempty"` // when its batch ran
	// Converged: its reported document has the patched keys as desired
	// now (patched and unchanged targets only; false otherwise).
	Converged bool  `json:"converged"`
	Position  int64 `json:"-"` // where a page ends
}

// JobTargets returns up to limit targets of state job id whose outcome is
// among outcomes (none: any), in rollout order from position fromPos (0:
// the first), and whether more follow. A job that does not
// exist, or that API key createdBy did not create (0: any key's), is
// ErrNotFound; a command job is ErrWrongJobKind.
func (s *Store) JobTargets(ctx context.Context, id uuid.UUID, createdBy int64, outcomes []string, fromPos int64, limit int) ([]JobTarget, bool, error) {
	if limit < 1 || limit > MaxPage {
		return nil, false, fmt.Errorf("job targets: limit %d: %w", limit, ErrInvalid)
	}
	ctx, cancel := bound(ctx)
	defer cancel()
	if len(outcomes) == 0 {
		outcomes = TargetOutcomes
	}
	var state *bool
	var targets []JobTarget
	var b pgx.Batch
	b.Queue(`SELECT (SELECT desired IS NOT NULL FROM jobs WHERE id = $1 AND ($2::bigint = 0 OR api_key_id = $2))`, id, createdBy).
		QueryRow(func(row pgx.Row) error { return row.Scan(&state) })
	b.Queue(`
		SELECT jt.device_id, coalesce(jt.outcome, 'unsent'), jt.desired_version, jt.patched_at, `+convergedExpr+`, jt.position
		FROM jobs j JOIN job_targets jt ON jt.job_id = j.id
		LEFT JOIN device_state s ON s.device_id = jt.device_id
		WHERE j.id = $1 AND j.desired IS NOT NULL AND jt.position >= $2 AND coalesce(jt.outcome, 'unsent') = ANY($3)
		ORDER BY jt.position LIMIT $4`, id, fromPos, outcomes, limit+1).
		Query(func(rows pgx.Rows) (err error) {
			targets, err = pgx.CollectRows(rows, pgx.RowToStructByPos[JobTarget])
			return err
		})
	if err := s.db.SendBatch(ctx, &b).Close(); err != nil {
		return nil, false, translate(err, "job targets")
	}
	switch {
	case state == nil:
		return nil, false, fmt.Errorf("job %s: %w", id, ErrNotFound)
	case !*state:
		return nil, false, fmt.Errorf("job %s is a command job: %w", id, ErrWrongJobKind)
	}
	if len(targets) > limit {
		return targets[:limit], true, nil
	}
	return targets, false, nil
}
