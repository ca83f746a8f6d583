package db

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/switchboard-iot/switchboard/internal/command"
)

// JobStatus is where a fleet job is; the values are what operators see in
// jobs.status.
type JobStatus string

const (
	JobScheduled        JobStatus = "scheduled"          // waits for its start_at: no command yet
	JobRunning          JobStatus = "running"            // commands are still being created or retried, or are not all final
	JobDone             JobStatus = "done"               // every target's command succeeded
	JobDoneWithFailures JobStatus = "done_with_failures" // every target's command is final, and some did not succeed
	JobCancelled        JobStatus = "cancelled"          // cancelled: no more commands, the undelivered ones cancelled
	JobAborted          JobStatus = "aborted"            // too many failed: as cancelled, by the abort rule
)

// JobStatuses are every status, in the order of a job's life.
var JobStatuses = []JobStatus{JobScheduled, JobRunning, JobDone, JobDoneWithFailures, JobCancelled, JobAborted}

// Final reports whether the job will not change status again.
func (s JobStatus) Final() bool {
	return s == JobDone || s == JobDoneWithFailures || s == JobCancelled || s == JobAborted
}

// Why a job's undelivered commands were cancelled (their error).
const (
	JobCancelledError = "job cancelled"
	JobAbortedError   = "job aborted"
)

// JobCounts are a job's targets by the status of their latest command, so
// that they add up to the job's total (a device deleted during the job
// drops out); Unsent are targets whose command has not been created yet
// (and never will be, once the job ended early).
type JobCounts struct {
	Unsent    int `json:"unsent"`
	Pending   int `json:"pending"`
	Delivered int `json:"delivered"`
	Done      int `json:"done"`
	Failed    int `json:"failed"`
	Expired   int `json:"expired"`
	Cancelled int `json:"cancelled"`
	// Retrying are targets whose latest command failed or expired and
	// that get another attempt once its backoff passed: not final yet.
	Retrying int `json:"retrying"`
	// Retried counts the commands a later attempt replaced (not counted
	// above): the retries the job made.
	Retried int `json:"retried"`
}

// JobCommandStatuses are the statuses a job's command can have: any.
var JobCommandStatuses = command.Statuses

// Final is how many targets' commands are final.
func (c JobCounts) Final() int { return c.Done + c.Failed + c.Expired + c.Cancelled }

// Unsuccessful is how many targets' commands are final and did not succeed.
func (c JobCounts) Unsuccessful() int { return c.Failed + c.Expired + c.Cancelled }

// jobCountsQuery counts a job's commands ($1) by status, whether a later
// attempt replaced them, and whether they may be retried (an attempt left,
// and the job running): one pass over the job's commands, found by the
// index on (job_id, status).
const jobCountsQuery = `
	SELECT c.status, c.retried, c.job_attempt < j.max_attempts AND j.status = 'running', count(*)
	FROM commands c JOIN jobs j ON j.id = c.job_id
	WHERE c.job_id = $1 GROUP BY 1, 2, 3`

// scan adds up the rows of jobCountsQuery.
func (c *JobCounts) scan(rows pgx.Rows) error {
	var status command.Status
	var retried, mayRetry bool
	var n int
	_, err := pgx.ForEachRow(rows, []any{&status, &retried, &mayRetry, &n}, func() error {
		switch {
		case retried:
			c.Retried += n
		case status == command.Pending:
			c.Pending += n
		case status == command.Delivered:
			c.Delivered += n
		case status == command.Done:
			c.Done += n
		case (status == command.Failed || status == command.Expired) && mayRetry:
			c.Retrying += n
		case status == command.Failed:
			c.Failed += n
		case status == command.Expired:
			c.Expired += n
		case status == command.Cancelled:
			c.Cancelled += n
		}
		return nil
	})
	return err
}

// JobError is an error text and how many of a job's targets ended with it.
type JobError struct {
	Error string `json:"error"`
	Count int    `json:"count"`
}

// Job errors are told apart by their first JobErrorText characters (a
// device's error may be long, and vary at its end); a job answers its
// maxJobErrors commonest.
const (
	JobErrorText = 256
	maxJobErrors = 10
)

// jobErrorsQuery counts the errors of a job's ($1) targets whose latest
// command did not succeed, commonest first.
const jobErrorsQuery = `
	SELECT left(coalesce(error, ''), $3), count(*) FROM commands
	WHERE job_id = $1 AND status = ANY($4) AND NOT retried
	GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT $2`

// UnsuccessfulStatuses are the final statuses of a command that did not
// succeed.
var UnsuccessfulStatuses = []command.Status{command.Failed, command.Expired, command.Cancelled}

// JobRetry is how a job retries a target whose command failed or expired:
// with a new command, after a backoff (the runner's policy grows it).
type JobRetry struct {
	MaxAttempts int              `json:"max_attempts"` // commands a target may get; 1 never retries
	Backoff     command.Duration `json:"backoff"`      // the wait before a first retry
}

// Job is one fleet job.
type Job struct {
	ID uuid.UUID `json:"id"`
	// Kind is KindCommand (Name, Args, Timeout, TTL, Retry) or KindState
	// (Desired): what the job does to each target.
	Kind JobKind `json:"kind"`
	Name string  `json:"name,omitempty"` // the command's; "" for a state job
	// Title and Description are the operator's, to tell jobs apart.
	Title       string           `json:"title,omitempty"`
	Description string           `json:"description,omitempty"`
	Args        json.RawMessage  `json:"args,omitempty"`    // nil for a state job
	Timeout     command.Duration `json:"timeout,omitempty"` // 0 for a state job
	TTL         command.Duration `json:"ttl,omitempty"`     // 0 for a state job
	// Desired is a state job's JSON merge patch; nil for a command job.
	Desired            json.RawMessage `json:"desired,omitempty"`
	Target             json.RawMessage `json:"target"`
	Rate               float64         `json:"rate"`
	AbortFailedPercent float64         `json:"abort_failed_percent"`
	Retry              JobRetry        `json:"retry,omitzero"`     // zero for a state job
	StartAt            *time.Time      `json:"start_at,omitempty"` // nil: started when created
	Status             JobStatus       `json:"status"`
	Total              int             `json:"total"`
	Created            int             `json:"created"` // targets whose command was created so far
	// Counts, Errors and Progress (final targets over total) are left
	// out of listings, which would count every job's commands.
	Counts *JobCounts `json:"counts,omitempty"`
	// StateCounts are a state job's instead of Counts.
	StateCounts *StateJobCounts `json:"state_counts,omitempty"`
	Errors      []JobError      `json:"errors,omitempty"` // the commonest errors of the targets that did not succeed
	Progress    *float64        `json:"progress,omitempty"`
	CreatedAt   time.Time       `json:"created_at"`
	FinishedAt  *time.Time      `json:"finished_at,omitempty"`
	// APIKeyID is the key that created the job (0: none), which may see
	// it without the read scope.
	APIKeyID int64 `json:"-"`
}

// JobKind says what a job does to each target.
type JobKind string

const (
	KindCommand JobKind = "command" // sends it a command
	KindState   JobKind = "state"   // patches its desired state
)

// NewJob is a job as an edge accepts it.
type NewJob struct {
	ID   uuid.UUID
	Name string
	// Desired, when set, makes a state job: Name, Args, Timeout, TTL and
	// the retry are then unset.
	Desired     json.RawMessage
	Title       string
	Description string
	Args        json.RawMessage
	Timeout     time.Duration
	TTL         time.Duration
	Target      json.RawMessage // stored as given, for reading back
	Filter      DeviceFilter    // chooses the targets
	Rate        float64
	Abort       float64 // abort_failed_percent
	// MaxAttempts (0 is 1: no retry) and Backoff are the job's JobRetry.
	MaxAttempts int
	Backoff     time.Duration
	// StartAt, when later than the database's now, schedules the job; nil
	// starts it at once.
	StartAt  *time.Time
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
const jobColumns = `j.id, j.name, j.title, j.description, j.args, j.timeout, j.ttl, j.target, j.rate, j.abort_failed_percent,
	j.max_attempts, j.backoff, j.start_at, j.status, j.total, j.created, j.created_at, j.finished_at, coalesce(j.api_key_id, 0),
	j.desired`

func scanJob(row pgx.Row) (Job, error) {
	var j Job
	var timeout, ttl, backoff time.Duration
	err := row.Scan(&j.ID, &j.Name, &j.Title, &j.Description, &j.Args, &timeout, &ttl, &j.Target, &j.Rate, &j.AbortFailedPercent,
		&j.Retry.MaxAttempts, &backoff, &j.StartAt, &j.Status, &j.Total, &j.Created, &j.CreatedAt, &j.FinishedAt, &j.APIKeyID,
		&j.Desired)
	j.Timeout, j.TTL, j.Retry.Backoff = command.Duration(timeout), command.Duration(ttl), command.Duration(backoff)
	j.Kind = KindCommand
	if j.Desired != nil {
		// A state job has no command: its command fields are left out
		// of its JSON rather than shown empty.
		j.Kind, j.Args, j.Retry = KindState, nil, JobRetry{}
	}
	return j, err
}

// rolloutStart sets a job's rollout clock one device back: the first
// runner to look creates at least one command at once, whatever the rate.
const rolloutStart = `advanced_at = now() - make_interval(secs => 1 / rate)`

// CreateJob stores a job and the snapshot of its targets, in one
// transaction: a target set that matches nothing, or too much, or a device
// list naming unknown devices, stores nothing. The snapshot is one
// INSERT…SELECT bounded by MaxTargets, whatever the filter, taken now even
// for a job scheduled to start later. The job is scheduled when its
// StartAt is later than the database's clock, else running.
func (s *Store) CreateJob(ctx context.Context, nj NewJob) (Job, error) {
	var j Job
	err := s.InTx(ctx, func(tx *Store) error {
		var apiKey *int64
		if nj.APIKeyID != 0 {
			apiKey = &nj.APIKeyID
		}
		_, err := tx.db.Exec(ctx, `
			INSERT INTO jobs (id, name, title, description, args, timeout, ttl, target, rate, abort_failed_percent,
				max_attempts, backoff, start_at, status, api_key_id, desired)
			VALUES ($1, $2, $3, $4, coalesce($5, '{}'::jsonb), $6, $7, $8, $9, $10, $11, $12, $13,
				CASE WHEN $13::timestamptz > now() THEN 'scheduled' ELSE 'running' END, $14, $15)`,
			nj.ID, nj.Name, nj.Title, nj.Description, nj.Args, nj.Timeout, nj.TTL, nj.Target, nj.Rate, nj.Abort,
			max(nj.MaxAttempts, 1), nj.Backoff, nj.StartAt, apiKey, nj.Desired)
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
		j, err = scanJob(tx.db.QueryRow(ctx, `UPDATE jobs j SET total = $2, `+rolloutStart+` WHERE id = $1 RETURNING `+jobColumns, nj.ID, n))
		return err
	})
	if err != nil {
		var unknown *UnknownDevicesError
		if errors.Is(err, ErrNoTargets) || errors.Is(err, ErrTooManyTargets) || errors.As(err, &unknown) {
			return j, err
		}
		return j, translate(err, "create job")
	}
	if j.Kind == KindState {
		j.StateCounts = &StateJobCounts{Unsent: j.Total}
	} else {
		j.Counts = &JobCounts{Unsent: j.Total}
	}
	j.Progress = new(float64)
	return j, nil
}

// Job returns one job with its counts and its commonest errors, in one
// round trip; both find the job's commands by the index on (job_id,
// status).
func (s *Store) Job(ctx context.Context, id uuid.UUID) (Job, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	var j Job
	var counts JobCounts
	var sc StateJobCounts
	var b pgx.Batch
	b.Queue(`SELECT `+jobColumns+` FROM jobs j WHERE id = $1`, id).QueryRow(func(row pgx.Row) (err error) {
		j, err = scanJob(row)
		return err
	})
	b.Queue(jobCountsQuery, id).Query(counts.scan)
	b.Queue(stateJobCountsQuery, id).QueryRow(sc.scan)
	b.Queue(jobErrorsQuery, id, maxJobErrors, JobErrorText, UnsuccessfulStatuses).Query(func(rows pgx.Rows) (err error) {
		j.Errors, err = pgx.CollectRows(rows, pgx.RowToStructByPos[JobError])
		return err
	})
	if err := s.db.SendBatch(ctx, &b).Close(); err != nil {
		return Job{}, translate(err, "job "+id.String())
	}
	p := 1.0
	if j.Kind == KindState {
		sc.Unsent = j.Total - j.Created
		j.StateCounts = &sc
		if j.Total > 0 {
			p = float64(sc.Reached()) / float64(j.Total)
		}
		j.Progress = &p
		return j, nil
	}
	counts.Unsent = j.Total - j.Created
	j.Counts = &counts
	if j.Total > 0 {
		p = float64(counts.Final()) / float64(j.Total)
	}
	j.Progress = &p
	return j, nil
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

// JobCommand is one command of a job: its target's attempt JobAttempt.
// The command's name, args and timeout are the job's.
type JobCommand struct {
	ID         uuid.UUID      `json:"id"`
	DeviceID   string         `json:"device_id"`
	Status     command.Status `json:"status"`
	JobAttempt int            `json:"job_attempt"` // 1, then 2… for each retry
	Retried    bool           `json:"retried"`     // a later attempt replaced it
	// Attempts counts its deliveries, as a command's do.
	Attempts    int             `json:"attempts"`
	OK          *bool           `json:"ok,omitempty"`
	Result      json.RawMessage `json:"result,omitempty"`
	Error       string          `json:"error,omitempty"`
	CreatedAt   time.Time       `json:"created_at"`
	ExpiresAt   time.Time       `json:"expires_at"`
	DeliveredAt *time.Time      `json:"delivered_at,omitempty"`
	CompletedAt *time.Time      `json:"completed_at,omitempty"`
	Seq         int64           `json:"-"` // where a page ends
}

// JobCommandFilter chooses among a job's commands.
type JobCommandFilter struct {
	Statuses []command.Status // none: every status
	Device   string           // "": every device
	Error    string           // "": any; else the first JobErrorText characters of the error
	// AllAttempts lists the attempts a retry replaced too; else each
	// target's latest command.
	AllAttempts bool
}

// JobCommands returns up to limit commands of job id that f chooses, in
// the order the job created them (commands.seq), after the one numbered
// afterSeq (0: from the first), and whether more follow. A job that does
// not exist, or that API key createdBy did not create (0: any key's), is
// ErrNotFound. The page reads the index on (job_id, status, seq) once per
// status, limit rows at most each, merged: a page costs the same wherever
// it is, whatever the filter.
func (s *Store) JobCommands(ctx context.Context, id uuid.UUID, createdBy int64, f JobCommandFilter, afterSeq int64, limit int) ([]JobCommand, bool, error) {
	if limit < 1 || limit > MaxPage {
		return nil, false, fmt.Errorf("job commands: limit %d: %w", limit, ErrInvalid)
	}
	ctx, cancel := bound(ctx)
	defer cancel()
	statuses := f.Statuses
	if len(statuses) == 0 {
		statuses = JobCommandStatuses
	}
	args := []any{id, statuses, afterSeq, limit + 1}
	where := ""
	if !f.AllAttempts {
		where += " AND NOT c.retried"
	}
	if f.Device != "" {
		args = append(args, f.Device)
		where += " AND c.device_id = $" + strconv.Itoa(len(args))
	}
	if f.Error != "" {
		args = append(args, f.Error, JobErrorText)
		where += fmt.Sprintf(" AND left(coalesce(c.error, ''), $%d) = $%d", len(args), len(args)-1)
	}
	var state *bool // nil: no such job (for this key)
	var cmds []JobCommand
	var b pgx.Batch
	b.Queue(`SELECT (SELECT desired IS NOT NULL FROM jobs WHERE id = $1 AND ($2::bigint = 0 OR api_key_id = $2))`, id, createdBy).
		QueryRow(func(row pgx.Row) error { return row.Scan(&state) })
	b.Queue(`
		SELECT c.id, c.device_id, c.status, c.job_attempt, c.retried, c.attempts, c.ok, c.result, coalesce(c.error, ''),
			c.created_at, c.expires_at, c.delivered_at, c.completed_at, c.seq
		FROM unnest($2::text[]) AS s(status)
		CROSS JOIN LATERAL (
			SELECT * FROM commands c
			WHERE c.job_id = $1 AND c.status = s.status AND c.seq > $3`+where+`
			ORDER BY c.seq LIMIT $4) c
		ORDER BY c.seq LIMIT $4`, args...).
		Query(func(rows pgx.Rows) (err error) {
			cmds, err = pgx.CollectRows(rows, pgx.RowToStructByPos[JobCommand])
			return err
		})
	if err := s.db.SendBatch(ctx, &b).Close(); err != nil {
		return nil, false, translate(err, "job commands")
	}
	switch {
	case state == nil:
		return nil, false, fmt.Errorf("job %s: %w", id, ErrNotFound)
	case *state:
		return nil, false, fmt.Errorf("job %s is a state job: %w", id, ErrWrongJobKind)
	}
	if len(cmds) > limit {
		return cmds[:limit], true, nil
	}
	return cmds, false, nil
}

// CancelJob stops a scheduled or running job: no more commands are
// created, and its undelivered ones are cancelled ("job cancelled"). A job already
// finished is left as it is. It returns the job and the commands that
// changed, whose watching edges must hear of it. The job's row lock orders
// it with a runner creating a batch: the batch commits first and is ended
// here, or is never created.
func (s *Store) CancelJob(ctx context.Context, id uuid.UUID) (Job, []Change, error) {
	var changes []Change
	err := s.InTx(ctx, func(tx *Store) error {
		var status JobStatus
		if err := tx.db.QueryRow(ctx, `SELECT status FROM jobs WHERE id = $1 FOR UPDATE`, id).Scan(&status); err != nil {
			return err
		}
		if status != JobRunning && status != JobScheduled {
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

// StartDueJobs starts the scheduled jobs whose start_at has come, with a
// fresh rollout clock, and returns their ids. Every runner may call it: an
// UPDATE starts each job once, and a job cancelled meanwhile (its row
// locked first) is no longer scheduled.
func (s *Store) StartDueJobs(ctx context.Context) ([]uuid.UUID, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	rows, err := s.db.Query(ctx, `
		UPDATE jobs SET status = 'running', checked_at = '-infinity', `+rolloutStart+`
		WHERE status = 'scheduled' AND start_at <= now()
		RETURNING id`)
	if err != nil {
		return nil, translate(err, "start jobs")
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	return ids, translate(err, "start jobs")
}

// endJob gives a locked running job its final status and cancels its
// pending commands with why, as a client's cancel of each would: a node
// claims a command before it writes it, so none of these is delivered
// after. Those already delivered end as their devices answer.
func (s *Store) endJob(ctx context.Context, id uuid.UUID, status JobStatus, why string) ([]Change, error) {
	if _, err := s.db.Exec(ctx, `UPDATE jobs SET status = $2, finished_at = now(), checked_at = now() WHERE id = $1`, id, status); err != nil {
		return nil, err
	}
	return collectChanges(s.db.Query(ctx, `
		UPDATE commands c SET status = 'cancelled', completed_at = now(), error = $2
		WHERE c.job_id = $1 AND c.status = ANY($3)
		RETURNING `+changeColumns, id, why, command.From(command.Cancelled)))
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
	Created int // commands created in this step, retries included
	Retried int // of those, retries of a target's failed or expired command
	// QueueFull counts, of those, the commands stored failed because their
	// device's queue was full (JobPlan.QueueCap).
	QueueFull int
	Wake      *JobWake // the batch to announce, when commands were created
	// Patched, for a state job, counts the targets whose desired
	// document this step changed; Notices wake the nodes of those online.
	Patched int
	Notices []Notice
	Changes []Change  // commands ended by an abort
	Ended   JobStatus // the status the job ended with in this step, or ""
}

// JobState is what a runner step sees of the job it claimed: its pace,
// how far its rollout got, its retry setting, and its targets by the
// status of their latest command.
type JobState struct {
	Job         uuid.UUID
	Rate        float64 // commands a second
	Abort       float64 // abort_failed_percent
	Total       int     // targets
	Created     int     // targets whose command was created
	MaxAttempts int     // commands a target may get
	Backoff     time.Duration
	Counts      JobCounts
	// Elapsed is how far the rollout's clock (jobs.advanced_at) is behind
	// now, in seconds by the database's clock.
	Elapsed float64
	// State is true for a state job: its Counts are its targets'
	// outcomes in command terms (patched and unchanged are Done,
	// too_large Failed; gone drop out), so that one plan serves both.
	State bool
}

// JobPlan is what a runner decided to do to the job it claimed (the
// policy is the runner's; StepJob applies it).
type JobPlan struct {
	// End is JobAborted (the pending commands end, "job aborted"), JobDone
	// or JobDoneWithFailures; "" leaves the job running.
	End JobStatus
	// Create is how many commands to create now: the retries that are
	// due first, then the next targets' (at most those left); 0 creates
	// none and moves no clock.
	Create int
	// RetryWaits[k-1] is how long after a target's attempt k ended (failed
	// or expired) its retry is due; an attempt without a wait is not
	// retried.
	RetryWaits []time.Duration
	// Behind is where the rollout's clock is set once Create commands
	// were created: this many seconds behind now.
	Behind float64
	// QueueCap, above 0, is the cap of a device's pending commands: a
	// target whose device has that many gets its command stored failed,
	// with QueueFullError, never delivered (it counts failed, and is
	// retried as any failed command is).
	QueueCap int
}

// StepJob advances one running job that no runner looked at within
// interval: it claims the job's row (SKIP LOCKED: two runners never take
// the same job, so never create the same batch), asks plan what to do, and
// does it: ends the job, or creates the batch plan asked for (due retries,
// then the next targets, each in one INSERT…SELECT), or only marks the
// job checked. plan runs inside the transaction, under the row lock,
// because its decision is only sound for the counts it was given while no
// other runner can act. ok is false when no job was due.
func (s *Store) StepJob(ctx context.Context, interval time.Duration, plan func(JobState) JobPlan) (step JobStep, ok bool, err error) {
	err = s.InTx(ctx, func(tx *Store) error {
		step, ok = JobStep{}, false
		var st JobState
		err := tx.db.QueryRow(ctx, `
			SELECT id, rate, abort_failed_percent, total, created, max_attempts, backoff,
				extract(epoch FROM now() - advanced_at)::float8, desired IS NOT NULL
			FROM jobs WHERE status = 'running' AND checked_at <= now() - $1::interval
			ORDER BY checked_at LIMIT 1 FOR UPDATE SKIP LOCKED`, interval).
			Scan(&st.Job, &st.Rate, &st.Abort, &st.Total, &st.Created, &st.MaxAttempts, &st.Backoff, &st.Elapsed, &st.State)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		ok, step.Job = true, st.Job
		if st.State {
			if err := tx.stateJobRunnerCounts(ctx, &st); err != nil {
				return err
			}
		} else {
			rows, err := tx.db.Query(ctx, jobCountsQuery, st.Job)
			if err != nil {
				return err
			}
			if err := st.Counts.scan(rows); err != nil {
				return err
			}
		}
		st.Counts.Unsent = st.Total - st.Created
		p := plan(st)
		switch p.End {
		case JobAborted:
			step.Ended = JobAborted
			step.Changes, err = tx.endJob(ctx, step.Job, JobAborted, JobAbortedError)
			return err
		case JobDone, JobDoneWithFailures:
			step.Ended = p.End
			_, err = tx.db.Exec(ctx, `UPDATE jobs SET status = $2, finished_at = now(), checked_at = now() WHERE id = $1`, step.Job, p.End)
			return err
		case "":
		default:
			return fmt.Errorf("a job plan cannot end a job as %q", p.End)
		}
		if p.Create <= 0 {
			_, err = tx.db.Exec(ctx, `UPDATE jobs SET checked_at = now() WHERE id = $1`, step.Job)
			return err
		}
		if st.State {
			return tx.patchJobTargets(ctx, st, p, &step)
		}
		ids := make([]uuid.UUID, p.Create)
		for i := range ids {
			ids[i] = uuid.Must(uuid.NewV7()) // time-ordered, as the edge's: index-friendly
		}
		var retries batchSeqs
		if st.MaxAttempts > 1 && len(p.RetryWaits) > 0 {
			if retries, err = tx.retryJobCommands(ctx, st, p.RetryWaits, p.QueueCap, ids); err != nil {
				return err
			}
		}
		// created never passes total, whatever the plan.
		n := min(p.Create-retries.n, st.Total-st.Created)
		var targets batchSeqs
		if n > 0 {
			if targets, err = tx.createJobCommands(ctx, st, p.QueueCap, ids[retries.n:retries.n+n]); err != nil {
				return err
			}
		}
		step.Retried, step.Created = retries.n, retries.n+targets.n
		step.QueueFull = retries.full + targets.full
		if step.Created > 0 {
			// One range for both (the retries were numbered first):
			// between them are only other jobs' commands.
			step.Wake = &JobWake{Job: step.Job, First: targets.first, Last: targets.last}
			if retries.n > 0 {
				step.Wake.First = retries.first
			}
			if targets.n == 0 {
				step.Wake.Last = retries.last
			}
		}
		_, err = tx.db.Exec(ctx, `
			UPDATE jobs SET created = created + $2, checked_at = now(),
				advanced_at = now() - make_interval(secs => $3)
			WHERE id = $1`, step.Job, max(n, 0), p.Behind)
		return err
	})
	return step, ok, translate(err, "step job")
}

// batchSeqs is what one INSERT of a step created: n commands, numbered
// first to last (commands.seq), full of them failed for a full queue.
type batchSeqs struct {
	n, full     int
	first, last int64
}

// queueFullColumns are the status, completed_at and error of a job's new
// command, aliased f.full when its device's queue is full: failed at once,
// never delivered.
const queueFullColumns = `CASE WHEN f.full THEN 'failed' ELSE 'pending' END,
	CASE WHEN f.full THEN now() END, CASE WHEN f.full THEN '` + QueueFullError + `' END`

// queueFullJoin computes f.full for the device of a job's new command
// (device, an SQL expression) under the cap capArg.
func queueFullJoin(device, capArg string) string {
	return `CROSS JOIN LATERAL (SELECT ` + capArg + `::int > 0 AND ` +
		pendingCount(device, capArg+"::int") + ` >= ` + capArg + `::int AS full) f`
}

// createJobCommands creates the commands of the job's next targets, one
// per id, in rollout order. Targets whose device was deleted since the
// snapshot get no command. A conflict cannot happen under the row lock;
// the unique index is the schema's guarantee all the same. A target whose
// device has queueCap pending commands (above 0) gets its command failed
// (QueueFullError): a job has one command per device in a batch, so each
// row's count is its device's.
func (s *Store) createJobCommands(ctx context.Context, st JobState, queueCap int, ids []uuid.UUID) (b batchSeqs, err error) {
	err = s.db.QueryRow(ctx, `
		WITH ins AS (
			INSERT INTO commands AS c (id, device_id, name, args, timeout, expires_at, api_key_id, job_id,
				status, completed_at, error)
			SELECT u.id, t.device_id, j.name, j.args, j.timeout, now() + j.ttl, j.api_key_id, j.id,
				`+queueFullColumns+`
			FROM unnest($2::uuid[]) WITH ORDINALITY AS u(id, i)
			JOIN job_targets t ON t.job_id = $1 AND t.position = $3 + u.i - 1
			JOIN jobs j ON j.id = $1
			`+queueFullJoin("t.device_id", "$4")+`
			WHERE EXISTS (SELECT FROM devices d WHERE d.id = t.device_id)
			ORDER BY u.i
			ON CONFLICT (job_id, device_id, job_attempt) WHERE job_id IS NOT NULL DO NOTHING
			RETURNING c.seq, c.status)
		SELECT count(*), count(*) FILTER (WHERE status = 'failed'), coalesce(min(seq), 0), coalesce(max(seq), 0) FROM ins`,
		st.Job, ids, st.Created, queueCap).Scan(&b.n, &b.full, &b.first, &b.last)
	return b, err
}

// retryJobCommands retries up to len(ids) of the job's targets whose
// latest command failed or expired with an attempt left, once its wait
// (waits[attempt-1]) passed since it ended, oldest first: each gets a new
// command, the next attempt, and the old one is marked retried, in one
// statement. A retry to a device whose queue is full fails at once, as in
// createJobCommands.
func (s *Store) retryJobCommands(ctx context.Context, st JobState, waits []time.Duration, queueCap int, ids []uuid.UUID) (b batchSeqs, err error) {
	err = s.db.QueryRow(ctx, `
		WITH due AS (
			SELECT c.id, c.device_id, c.job_attempt, row_number() OVER (ORDER BY c.seq) AS i
			FROM commands c
			WHERE c.job_id = $1 AND c.status = ANY($5) AND NOT c.retried AND c.job_attempt < $4
			  AND c.completed_at <= now() - ($3::interval[])[c.job_attempt]
			ORDER BY c.seq LIMIT cardinality($2::uuid[])),
		marked AS (UPDATE commands c SET retried = true FROM due WHERE c.id = due.id),
		ins AS (
			INSERT INTO commands AS c (id, device_id, name, args, timeout, expires_at, api_key_id, job_id, job_attempt,
				status, completed_at, error)
			SELECT u.id, due.device_id, j.name, j.args, j.timeout, now() + j.ttl, j.api_key_id, j.id, due.job_attempt + 1,
				`+queueFullColumns+`
			FROM due JOIN unnest($2::uuid[]) WITH ORDINALITY AS u(id, i) ON u.i = due.i
			JOIN jobs j ON j.id = $1
			`+queueFullJoin("due.device_id", "$6")+`
			ORDER BY due.i
			RETURNING c.seq, c.status)
		SELECT count(*), count(*) FILTER (WHERE status = 'failed'), coalesce(min(seq), 0), coalesce(max(seq), 0) FROM ins`,
		st.Job, ids, waits, st.MaxAttempts, []command.Status{command.Failed, command.Expired}, queueCap).Scan(&b.n, &b.full, &b.first, &b.last)
	return b, err
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
