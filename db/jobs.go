package db

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/switchboard-iot/switchboard/internal/command"
)

// JobStatus is where a fleet job is; the values are what operators see in
// jobs.status.
type JobStatus string

const (
	JobRunning   JobStatus = "running"   // commands are still being created, or are not all final
	JobDone      JobStatus = "done"      // every target's command was created and is final
	JobCancelled JobStatus = "cancelled" // cancelled: no more commands, the undelivered ones expired
	JobAborted   JobStatus = "aborted"   // too many failed: as cancelled, by the abort rule
)

// Final reports whether the job will not change status again.
func (s JobStatus) Final() bool { return s == JobDone || s == JobCancelled || s == JobAborted }

// Why a job's undelivered commands expired.
const (
	JobCancelledError = "job cancelled"
	JobAbortedError   = "job aborted"
)

// JobCounts are a job's commands by status; Unsent are targets whose
// command has not been created yet (and never will be, once the job was
// cancelled or aborted).
type JobCounts struct {
	Unsent    int `json:"unsent"`
	Pending   int `json:"pending"`
	Delivered int `json:"delivered"`
	Done      int `json:"done"`
	Failed    int `json:"failed"`
	Expired   int `json:"expired"`
}

// Final is how many of the job's commands are final.
func (c JobCounts) Final() int { return c.Done + c.Failed + c.Expired }

// Job is one fleet job.
type Job struct {
	ID                 uuid.UUID        `json:"id"`
	Name               string           `json:"name"`
	Args               json.RawMessage  `json:"args"`
	Timeout            command.Duration `json:"timeout"`
	TTL                command.Duration `json:"ttl"`
	Target             json.RawMessage  `json:"target"`
	Rate               float64          `json:"rate"`
	AbortFailedPercent float64          `json:"abort_failed_percent"`
	Status             JobStatus        `json:"status"`
	Total              int              `json:"total"`
	Created            int              `json:"created"` // targets whose command was created so far
	// Counts and Progress (final commands over total) are left out of
	// listings, which would count every job's commands.
	Counts     *JobCounts `json:"counts,omitempty"`
	Progress   *float64   `json:"progress,omitempty"`
	CreatedAt  time.Time  `json:"created_at"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
	// APIKeyID is the key that created the job (0: none), which may see
	// it without the read scope.
	APIKeyID int64 `json:"-"`
}

// NewJob is a job as an edge accepts it.
type NewJob struct {
	ID       uuid.UUID
	Name     string
	Args     json.RawMessage
	Timeout  time.Duration
	TTL      time.Duration
	Target   json.RawMessage // stored as given, for reading back
	Filter   DeviceFilter    // chooses the targets
	Rate     float64
	Abort    float64 // abort_failed_percent
	APIKeyID int64
	// MaxTargets bounds the target set: more is ErrTooManyTargets.
	MaxTargets int
}

// Errors of CreateJob.
var (
	ErrNoTargets      = errors.New("the target matches no device")
	ErrTooManyTargets = errors.New("the target matches too many devices")
)

// UnknownDevicesError lists (some of) the ids of a job's device list that
// name no device.
type UnknownDevicesError struct{ IDs []string }

func (e *UnknownDevicesError) Error() string { return fmt.Sprintf("unknown devices: %q", e.IDs) }

// jobColumns reads a job aliased j.
const jobColumns = `j.id, j.name, j.args, j.timeout, j.ttl, j.target, j.rate, j.abort_failed_percent, j.status,
	j.total, j.created, j.created_at, j.finished_at, coalesce(j.api_key_id, 0)`

func scanJob(row pgx.Row) (Job, error) {
	var j Job
	var timeout, ttl time.Duration
	err := row.Scan(&j.ID, &j.Name, &j.Args, &timeout, &ttl, &j.Target, &j.Rate, &j.AbortFailedPercent, &j.Status,
		&j.Total, &j.Created, &j.CreatedAt, &j.FinishedAt, &j.APIKeyID)
	j.Timeout, j.TTL = command.Duration(timeout), command.Duration(ttl)
	return j, err
}

// CreateJob stores a job and the snapshot of its targets, in one
// transaction: a target set that matches nothing, or too much, or a device
// list naming unknown devices, stores nothing. The snapshot is one
// INSERT…SELECT bounded by MaxTargets, whatever the filter.
func (s *Store) CreateJob(ctx context.Context, nj NewJob) (Job, error) {
	var j Job
	err := s.InTx(ctx, func(tx *Store) error {
		var apiKey *int64
		if nj.APIKeyID != 0 {
			apiKey = &nj.APIKeyID
		}
		// The rollout's clock starts one device back: the first runner
		// to look creates at least one command at once, whatever the rate.
		_, err := tx.db.Exec(ctx, `
			INSERT INTO jobs (id, name, args, timeout, ttl, target, rate, abort_failed_percent, api_key_id, advanced_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now() - make_interval(secs => 1 / $7::float8))`,
			nj.ID, nj.Name, nj.Args, nj.Timeout, nj.TTL, nj.Target, nj.Rate, nj.Abort, apiKey)
		if err != nil {
			return err
		}
		where, args := nj.Filter.where([]any{nj.ID, nj.MaxTargets + 1})
		var n int
		if err := tx.db.QueryRow(ctx, `
			WITH t AS (
				INSERT INTO job_targets (job_id, position, device_id)
				SELECT $1, row_number() OVER (ORDER BY id) - 1, id
				FROM (SELECT d.id FROM `+filteredDevices+` WHERE `+where+` ORDER BY d.id LIMIT $2) s
				RETURNING 1)
			SELECT count(*) FROM t`, args...).Scan(&n); err != nil {
			return err
		}
		switch {
		case n > nj.MaxTargets:
			return ErrTooManyTargets
		case nj.Filter.IDs != nil && n < len(nj.Filter.IDs):
			rows, err := tx.db.Query(ctx, `
				SELECT u.id FROM unnest($1::text[]) AS u(id)
				WHERE NOT EXISTS (SELECT FROM devices d WHERE d.id = u.id) LIMIT 10`, nj.Filter.IDs)
			if err != nil {
				return err
			}
			ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				return err
			}
			return &UnknownDevicesError{IDs: ids}
		case n == 0:
			return ErrNoTargets
		}
		j, err = scanJob(tx.db.QueryRow(ctx, `UPDATE jobs j SET total = $2 WHERE id = $1 RETURNING `+jobColumns, nj.ID, n))
		return err
	})
	if err != nil {
		var unknown *UnknownDevicesError
		if errors.Is(err, ErrNoTargets) || errors.Is(err, ErrTooManyTargets) || errors.As(err, &unknown) {
			return j, err
		}
		return j, translate(err, "create job")
	}
	j.Counts = &JobCounts{Unsent: j.Total}
	j.Progress = new(float64)
	return j, nil
}

// Job returns one job with its counts: one count over the job's commands,
// by the index on (job_id, status).
func (s *Store) Job(ctx context.Context, id uuid.UUID) (Job, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	j, err := scanJob(s.db.QueryRow(ctx, `SELECT `+jobColumns+` FROM jobs j WHERE id = $1`, id))
	if err != nil {
		return j, translate(err, "job "+id.String())
	}
	counts, err := s.jobCounts(ctx, id, j.Total, j.Created)
	if err != nil {
		return j, translate(err, "job counts")
	}
	j.Counts = &counts
	p := 1.0
	if j.Total > 0 {
		p = float64(counts.Final()) / float64(j.Total)
	}
	j.Progress = &p
	return j, nil
}

func (s *Store) jobCounts(ctx context.Context, id uuid.UUID, total, created int) (JobCounts, error) {
	c := JobCounts{Unsent: total - created}
	rows, err := s.db.Query(ctx, `SELECT status, count(*) FROM commands WHERE job_id = $1 GROUP BY status`, id)
	if err != nil {
		return c, err
	}
	var status command.Status
	var n int
	_, err = pgx.ForEachRow(rows, []any{&status, &n}, func() error {
		switch status {
		case command.Pending:
			c.Pending = n
		case command.Delivered:
			c.Delivered = n
		case command.Done:
			c.Done = n
		case command.Failed:
			c.Failed = n
		case command.Expired:
			c.Expired = n
		}
		return nil
	})
	return c, err
}

// Jobs lists jobs newest first (ids are time-ordered), without counts: at
// most limit, with the given status unless it is empty, after the job
// before (a cursor; uuid.Nil starts at the newest).
func (s *Store) Jobs(ctx context.Context, status JobStatus, before uuid.UUID, limit int) ([]Job, error) {
	return s.JobsCreatedBy(ctx, 0, status, before, limit)
}

// JobsCreatedBy is Jobs of the jobs API key apiKeyID created; 0 lists
// every key's.
func (s *Store) JobsCreatedBy(ctx context.Context, apiKeyID int64, status JobStatus, before uuid.UUID, limit int) ([]Job, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	var after any
	if before != uuid.Nil {
		after = before
	}
	rows, err := s.db.Query(ctx, `
		SELECT `+jobColumns+` FROM jobs j
		WHERE ($1 = '' OR j.status = $1) AND ($2::uuid IS NULL OR j.id < $2) AND ($4::bigint = 0 OR j.api_key_id = $4)
		ORDER BY j.id DESC LIMIT $3`, string(status), after, limit, apiKeyID)
	if err != nil {
		return nil, translate(err, "jobs")
	}
	jobs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Job, error) { return scanJob(row) })
	return jobs, translate(err, "jobs")
}

// CancelJob stops a running job: no more commands are created, and its
// undelivered ones expire ("job cancelled"). A job already finished is
// left as it is. It returns the job and the commands that changed, whose
// watching edges must hear of it. The job's row lock orders it with a
// runner creating a batch: the batch commits first and is expired here, or
// is never created.
func (s *Store) CancelJob(ctx context.Context, id uuid.UUID) (Job, []Change, error) {
	var changes []Change
	err := s.InTx(ctx, func(tx *Store) error {
		var status JobStatus
		if err := tx.db.QueryRow(ctx, `SELECT status FROM jobs WHERE id = $1 FOR UPDATE`, id).Scan(&status); err != nil {
			return err
		}
		if status != JobRunning {
			return nil
		}
		var err error
		changes, err = tx.endJob(ctx, id, JobCancelled, JobCancelledError)
		return err
	})
	if err != nil {
		return Job{}, nil, translate(err, "job "+id.String())
	}
	j, err := s.Job(ctx, id)
	return j, changes, err
}

// endJob gives a locked running job its final status and expires its
// pending commands with why.
func (s *Store) endJob(ctx context.Context, id uuid.UUID, status JobStatus, why string) ([]Change, error) {
	if _, err := s.db.Exec(ctx, `UPDATE jobs SET status = $2, finished_at = now(), checked_at = now() WHERE id = $1`, id, status); err != nil {
		return nil, err
	}
	return collectChanges(s.db.Query(ctx, `
		UPDATE commands c SET status = 'expired', completed_at = now(), error = $2
		WHERE c.job_id = $1 AND c.status = 'pending'
		RETURNING `+changeColumns, id, why))
}

// JobWake says a batch of a job's commands was created: the nodes holding
// its devices deliver the job's pending commands numbered First to Last
// (commands.seq), those of their own devices.
type JobWake struct {
	Job         uuid.UUID
	First, Last int64
}

// JobStep is what one runner step did to one job.
type JobStep struct {
	Job     uuid.UUID
	Created int       // commands created in this step
	Wake    *JobWake  // the batch to announce, when commands were created
	Changes []Change  // commands expired by an abort
	Ended   JobStatus // the status the job ended with in this step, or ""
}

// JobState is what a runner step sees of the job it claimed: its pace,
// how far its rollout got, and its commands by status.
type JobState struct {
	Job     uuid.UUID
	Rate    float64 // commands a second
	Abort   float64 // abort_failed_percent
	Total   int     // targets
	Created int     // targets whose command was created
	Counts  JobCounts
	// Elapsed is how far the rollout's clock (jobs.advanced_at) is behind
	// now, in seconds by the database's clock.
	Elapsed float64
}

// JobPlan is what a runner decided to do to the job it claimed (the
// policy is the runner's; StepJob applies it).
type JobPlan struct {
	// End is JobAborted (the pending commands expire, "job aborted") or
	// JobDone; "" leaves the job running.
	End JobStatus
	// Create is how many of the next targets get their command now (at
	// most those left); 0 creates none and moves no clock.
	Create int
	// Behind is where the rollout's clock is set once Create commands
	// were created: this many seconds behind now.
	Behind float64
}

// StepJob advances one running job that no runner looked at within
// interval: it claims the job's row (SKIP LOCKED: two runners never take
// the same job, so never create the same batch), asks plan what to do, and
// does it: ends the job, or creates the batch plan asked for (in one
// INSERT…SELECT from the snapshot), or only marks the job checked. plan
// runs inside the transaction, under the row lock, because its decision is
// only sound for the counts it was given while no other runner can act.
// ok is false when no job was due.
func (s *Store) StepJob(ctx context.Context, interval time.Duration, plan func(JobState) JobPlan) (step JobStep, ok bool, err error) {
	err = s.InTx(ctx, func(tx *Store) error {
		step, ok = JobStep{}, false
		var st JobState
		err := tx.db.QueryRow(ctx, `
			SELECT id, rate, abort_failed_percent, total, created, extract(epoch FROM now() - advanced_at)::float8
			FROM jobs WHERE status = 'running' AND checked_at <= now() - $1::interval
			ORDER BY checked_at LIMIT 1 FOR UPDATE SKIP LOCKED`, interval).
			Scan(&st.Job, &st.Rate, &st.Abort, &st.Total, &st.Created, &st.Elapsed)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		ok, step.Job = true, st.Job
		if st.Counts, err = tx.jobCounts(ctx, st.Job, st.Total, st.Created); err != nil {
			return err
		}
		p := plan(st)
		switch p.End {
		case JobAborted:
			step.Ended = JobAborted
			step.Changes, err = tx.endJob(ctx, step.Job, JobAborted, JobAbortedError)
			return err
		case JobDone:
			step.Ended = JobDone
			_, err = tx.db.Exec(ctx, `UPDATE jobs SET status = 'done', finished_at = now(), checked_at = now() WHERE id = $1`, step.Job)
			return err
		case "":
		default:
			return fmt.Errorf("a job plan cannot end a job as %q", p.End)
		}
		// created never passes total, whatever the plan.
		n := min(p.Create, st.Total-st.Created)
		if n <= 0 {
			_, err = tx.db.Exec(ctx, `UPDATE jobs SET checked_at = now() WHERE id = $1`, step.Job)
			return err
		}
		ids := make([]uuid.UUID, n)
		for i := range ids {
			ids[i] = uuid.Must(uuid.NewV7()) // time-ordered, as the edge's: index-friendly
		}
		// Targets whose device was deleted since the snapshot get no
		// command. A conflict cannot happen under the row lock; the
		// unique index is the schema's guarantee all the same.
		var first, last int64
		if err := tx.db.QueryRow(ctx, `
			WITH ins AS (
				INSERT INTO commands AS c (id, device_id, name, args, timeout, expires_at, api_key_id, job_id)
				SELECT u.id, t.device_id, j.name, j.args, j.timeout, now() + j.ttl, j.api_key_id, j.id
				FROM unnest($2::uuid[]) WITH ORDINALITY AS u(id, i)
				JOIN job_targets t ON t.job_id = $1 AND t.position = $3 + u.i - 1
				JOIN jobs j ON j.id = $1
				WHERE EXISTS (SELECT FROM devices d WHERE d.id = t.device_id)
				ORDER BY u.i
				ON CONFLICT (job_id, device_id) WHERE job_id IS NOT NULL DO NOTHING
				RETURNING c.seq)
			SELECT count(*), coalesce(min(seq), 0), coalesce(max(seq), 0) FROM ins`,
			step.Job, ids, st.Created).Scan(&step.Created, &first, &last); err != nil {
			return err
		}
		if step.Created > 0 {
			step.Wake = &JobWake{Job: step.Job, First: first, Last: last}
		}
		_, err = tx.db.Exec(ctx, `
			UPDATE jobs SET created = created + $2, checked_at = now(),
				advanced_at = now() - make_interval(secs => $3)
			WHERE id = $1`, step.Job, n, p.Behind)
		return err
	})
	return step, ok, translate(err, "step job")
}

// RunningJobs counts the running jobs.
func (s *Store) RunningJobs(ctx context.Context) (int, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	var n int
	err := s.db.QueryRow(ctx, `SELECT count(*) FROM jobs WHERE status = 'running'`).Scan(&n)
	return n, translate(err, "running jobs")
}

// JobDevicesOn returns the devices connected to nodeID (by presence) that
// have a pending command in the batch w announces.
func (s *Store) JobDevicesOn(ctx context.Context, nodeID string, w JobWake) ([]string, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	rows, err := s.db.Query(ctx, `
		SELECT c.device_id FROM commands c JOIN presence p ON p.device_id = c.device_id
		WHERE c.job_id = $1 AND c.status = 'pending' AND c.seq BETWEEN $2 AND $3 AND p.node_id = $4`,
		w.Job, w.First, w.Last, nodeID)
	if err != nil {
		return nil, translate(err, "job devices")
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	return ids, translate(err, "job devices")
}
