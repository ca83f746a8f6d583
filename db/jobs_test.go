package db_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/command"
)

// batchPlan is a runner's plan that asks for batch commands a step, never
// minding the rate, leaving the rollout's clock behind seconds behind
// now, and ends the job once every command is final (the runner's real
// policy is maintenance's, tested there).
func batchPlan(batch int, behind float64) func(db.JobState) db.JobPlan {
	return func(s db.JobState) db.JobPlan {
		if s.Created < s.Total {
			return db.JobPlan{Create: batch, Behind: behind}
		}
		if s.Counts.Pending+s.Counts.Delivered == 0 {
			return db.JobPlan{End: db.JobDone}
		}
		return db.JobPlan{}
	}
}

// Runners racing on one job (as every edge runs one) create each
// target's command once, in batches no larger than their plan asks (and
// never past the targets), and announce each batch by its commands' seq
// range; the rollout's clock is set where the plan says.
func TestStepJobRace(t *testing.T) {
	t.Parallel()
	var ids []string
	for i := range 300 {
		ids = append(ids, fmt.Sprintf("dev-%03d", i))
	}
	store, pool := setup(t, ids...)
	ctx := context.Background()
	j, err := store.CreateJob(ctx, db.NewJob{
		ID: uuid.Must(uuid.NewV7()), Name: "x", Args: json.RawMessage(`{}`), Timeout: 10 * time.Second, TTL: time.Hour,
		Target: json.RawMessage(`{"all":true}`), Rate: 1000, Abort: 100, MaxTargets: 1000,
	})
	if err != nil {
		t.Fatal(err)
	}
	if j.Total != 300 {
		t.Fatalf("total %d, want 300", j.Total)
	}
	// 64 a step: the fifth batch is what is left, 44.
	plan := batchPlan(64, 0.5)
	var mu sync.Mutex
	var created int
	var wakes []db.JobWake
	var wg sync.WaitGroup
	deadline := time.Now().Add(20 * time.Second)
	for range 4 {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				step, _, err := store.StepJob(ctx, 0, plan)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				created += step.Created
				if step.Wake != nil {
					wakes = append(wakes, *step.Wake)
				}
				all := created == 300
				mu.Unlock()
				if step.Created > 64 {
					t.Errorf("a step created %d, over the batch limit", step.Created)
				}
				if all {
					return
				}
			}
		})
	}
	wg.Wait()
	if created != 300 {
		t.Fatalf("created %d commands, want 300", created)
	}
	var n, devices int
	if err := pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT device_id) FROM commands WHERE job_id = $1`, j.ID).Scan(&n, &devices); err != nil {
		t.Fatal(err)
	}
	if n != 300 || devices != 300 {
		t.Errorf("%d commands for %d devices, want 300 for 300", n, devices)
	}
	var inWakes int
	for _, w := range wakes {
		var k int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM commands WHERE job_id = $1 AND seq BETWEEN $2 AND $3`, j.ID, w.First, w.Last).Scan(&k); err != nil {
			t.Fatal(err)
		}
		inWakes += k
	}
	if inWakes != 300 {
		t.Errorf("the wake-ups' seq ranges hold %d commands, want 300 (each once)", inWakes)
	}
	var targetsCreated int
	var behind float64
	if err := pool.QueryRow(ctx, `SELECT created, extract(epoch FROM now() - advanced_at)::float8 FROM jobs WHERE id = $1`, j.ID).
		Scan(&targetsCreated, &behind); err != nil {
		t.Fatal(err)
	}
	if targetsCreated != 300 || behind < 0.5 || behind > 10 {
		t.Errorf("the job counts %d created and its clock is %vs behind, want 300 and the plan's 0.5s (and the test's time)", targetsCreated, behind)
	}

	// Every command final: the next step ends the job.
	if _, err := pool.Exec(ctx, `UPDATE commands SET status = 'done' WHERE job_id = $1`, j.ID); err != nil {
		t.Fatal(err)
	}
	step, ok, err := store.StepJob(ctx, 0, plan)
	if err != nil || !ok || step.Ended != db.JobDone {
		t.Fatalf("step %+v ok %v err %v, want the job done", step, ok, err)
	}
	if got, err := store.Job(ctx, j.ID); err != nil || got.Status != db.JobDone || got.Counts.Done != 300 || *got.Progress != 1 {
		t.Errorf("job %+v err %v", got, err)
	}
	if _, ok, err := store.StepJob(ctx, 0, plan); ok || err != nil {
		t.Errorf("a finished job was stepped (%v, %v)", ok, err)
	}
}

// retryPlan is a runner's plan that creates up to 10 commands a step and
// retries a target's first failure at once and its second after an hour.
func retryPlan(s db.JobState) db.JobPlan {
	return db.JobPlan{Create: 10, RetryWaits: []time.Duration{0, time.Hour}}
}

// A retry is a new command to the same device, the next attempt; the one
// it replaces is marked retried and keeps its error. The counts read each
// target's latest command: one awaiting a retry is retrying, not failed,
// until it has no attempt left or the job ended. The per-device results
// list the latest commands, or every attempt.
func TestStepJobRetries(t *testing.T) {
	t.Parallel()
	store, pool := setup(t, "dev-0", "dev-1", "dev-2")
	ctx := context.Background()
	j, err := store.CreateJob(ctx, db.NewJob{
		ID: uuid.Must(uuid.NewV7()), Name: "reboot", Args: json.RawMessage(`{}`), Timeout: 10 * time.Second, TTL: time.Hour,
		Target: json.RawMessage(`{"all":true}`), Rate: 1000, Abort: 100, MaxAttempts: 3, Backoff: time.Second, MaxTargets: 10,
		APIKeyID: 7,
	})
	if err != nil {
		t.Fatal(err)
	}
	if j.Retry != (db.JobRetry{MaxAttempts: 3, Backoff: command.Duration(time.Second)}) {
		t.Errorf("retry %+v, want 3 attempts, 1s", j.Retry)
	}
	step := func(wantCreated, wantRetried int) {
		t.Helper()
		st, ok, err := store.StepJob(ctx, 0, retryPlan)
		if err != nil || !ok {
			t.Fatalf("step: ok %v err %v", ok, err)
		}
		if st.Created != wantCreated || st.Retried != wantRetried {
			t.Fatalf("step created %d (retried %d), want %d (%d)", st.Created, st.Retried, wantCreated, wantRetried)
		}
		if st.Wake != nil {
			var n int
			if err := pool.QueryRow(ctx, `SELECT count(*) FROM commands WHERE job_id = $1 AND status = 'pending' AND seq BETWEEN $2 AND $3`,
				j.ID, st.Wake.First, st.Wake.Last).Scan(&n); err != nil || n != wantCreated {
				t.Errorf("the wake-up's seq range holds %d pending commands (%v), want %d", n, err, wantCreated)
			}
		}
	}
	// end ends a device's latest command of the job.
	end := func(device, status, why string) {
		t.Helper()
		tag, err := pool.Exec(ctx, `UPDATE commands SET status = $3, error = $4, completed_at = now()
			WHERE job_id = $1 AND device_id = $2 AND NOT retried`, j.ID, device, status, why)
		if err != nil || tag.RowsAffected() != 1 {
			t.Fatalf("ending %s's command: %v (%d rows)", device, err, tag.RowsAffected())
		}
	}
	counts := func(want db.JobCounts) db.Job {
		t.Helper()
		got, err := store.Job(ctx, j.ID)
		if err != nil {
			t.Fatal(err)
		}
		if *got.Counts != want {
			t.Errorf("counts %+v, want %+v", *got.Counts, want)
		}
		return got
	}

	step(3, 0)
	end("dev-0", "failed", "unknown command reboot")
	end("dev-1", "expired", "not delivered within ttl")
	end("dev-2", "done", "")
	got := counts(db.JobCounts{Done: 1, Retrying: 2})
	wantErrors := []db.JobError{{Error: "not delivered within ttl", Count: 1}, {Error: "unknown command reboot", Count: 1}}
	if !slices.Equal(got.Errors, wantErrors) {
		t.Errorf("errors %+v, want %+v", got.Errors, wantErrors)
	}

	// The first failures retry at once: attempt 2 of each.
	step(2, 2)
	counts(db.JobCounts{Done: 1, Pending: 2, Retried: 2})
	end("dev-0", "failed", "unknown command reboot")
	end("dev-1", "failed", "no reply within 10s of delivery 1")
	// The second wait is an hour: nothing is due.
	step(0, 0)
	counts(db.JobCounts{Done: 1, Retrying: 2, Retried: 2})
	if _, err := pool.Exec(ctx, `UPDATE commands SET completed_at = now() - interval '2 hours'
		WHERE job_id = $1 AND device_id = 'dev-0' AND NOT retried`, j.ID); err != nil {
		t.Fatal(err)
	}
	step(1, 1)
	end("dev-0", "failed", "unknown command reboot")
	// dev-0 has no attempt left: failed for good.
	counts(db.JobCounts{Done: 1, Failed: 1, Retrying: 1, Retried: 3})

	// The per-device results: each target's latest command in the order
	// the job created them, or every attempt; by status, device, error.
	list := func(f db.JobCommandFilter, after int64, limit int) ([]db.JobCommand, bool) {
		t.Helper()
		cmds, more, err := store.JobCommands(ctx, j.ID, 0, f, after, limit)
		if err != nil {
			t.Fatal(err)
		}
		return cmds, more
	}
	summary := func(cmds []db.JobCommand) string {
		var parts []string
		for _, c := range cmds {
			parts = append(parts, fmt.Sprintf("%s/%d:%s", c.DeviceID, c.JobAttempt, c.Status))
		}
		return strings.Join(parts, " ")
	}
	for _, tc := range []struct {
		f    db.JobCommandFilter
		want string
	}{
		{db.JobCommandFilter{}, "dev-2/1:done dev-1/2:failed dev-0/3:failed"},
		{db.JobCommandFilter{AllAttempts: true}, "dev-0/1:failed dev-1/1:expired dev-2/1:done dev-0/2:failed dev-1/2:failed dev-0/3:failed"},
		{db.JobCommandFilter{Statuses: []command.Status{command.Failed}}, "dev-1/2:failed dev-0/3:failed"},
		{db.JobCommandFilter{Device: "dev-0", AllAttempts: true}, "dev-0/1:failed dev-0/2:failed dev-0/3:failed"},
		{db.JobCommandFilter{Error: "unknown command reboot", AllAttempts: true}, "dev-0/1:failed dev-0/2:failed dev-0/3:failed"},
		{db.JobCommandFilter{Error: "unknown command reboot"}, "dev-0/3:failed"},
	} {
		if cmds, more := list(tc.f, 0, 100); summary(cmds) != tc.want || more {
			t.Errorf("%+v: %s (more %v), want %s", tc.f, summary(cmds), more, tc.want)
		}
	}
	all := db.JobCommandFilter{AllAttempts: true}
	page, more := list(all, 0, 4)
	if len(page) != 4 || !more {
		t.Fatalf("a first page of 4: %s, more %v", summary(page), more)
	}
	if page, more = list(all, page[3].Seq, 4); summary(page) != "dev-1/2:failed dev-0/3:failed" || more {
		t.Errorf("the next page: %s, more %v", summary(page), more)
	}
	if page[0].Retried || page[0].Error == "" || page[0].CompletedAt == nil {
		t.Errorf("a failed command: %+v", page[0])
	}
	// Another key's job, or none, is not found.
	for _, tc := range []struct {
		id uuid.UUID
		by int64
	}{{j.ID, 8}, {uuid.New(), 0}} {
		if _, _, err := store.JobCommands(ctx, tc.id, tc.by, all, 0, 10); !errors.Is(err, db.ErrNotFound) {
			t.Errorf("job %s for key %d: %v, want ErrNotFound", tc.id, tc.by, err)
		}
	}
	if cmds, _, err := store.JobCommands(ctx, j.ID, 7, all, 0, 10); err != nil || len(cmds) != 6 {
		t.Errorf("the job for its key: %d commands, %v", len(cmds), err)
	}

	// Cancelled: no retry will come, so what awaited one failed.
	if _, _, err := store.CancelJob(ctx, j.ID); err != nil {
		t.Fatal(err)
	}
	counts(db.JobCounts{Done: 1, Failed: 2, Retried: 3})
}

// A job whose start_at is ahead is scheduled: no runner steps it until
// StartDueJobs starts it; it may be cancelled meanwhile.
func TestScheduledJob(t *testing.T) {
	t.Parallel()
	store, pool := setup(t, "dev-0")
	ctx := context.Background()
	create := func(start time.Time) db.Job {
		t.Helper()
		j, err := store.CreateJob(ctx, db.NewJob{
			ID: uuid.Must(uuid.NewV7()), Name: "x", Title: "nightly", Description: "the nightly check", Args: json.RawMessage(`{}`),
			Timeout: time.Second, TTL: time.Hour, Target: json.RawMessage(`{"all":true}`), Rate: 1, Abort: 100, MaxTargets: 10,
			StartAt: &start,
		})
		if err != nil {
			t.Fatal(err)
		}
		return j
	}
	later := create(time.Now().Add(time.Hour))
	if later.Status != db.JobScheduled || later.StartAt == nil || later.Title != "nightly" || later.Description != "the nightly check" || later.Total != 1 {
		t.Fatalf("a job to start in an hour: %+v", later)
	}
	if _, ok, err := store.StepJob(ctx, 0, batchPlan(10, 0)); ok || err != nil {
		t.Errorf("a scheduled job was stepped (%v, %v)", ok, err)
	}
	if started, err := store.StartDueJobs(ctx); err != nil || len(started) != 0 {
		t.Errorf("started %v (%v) before start_at", started, err)
	}
	if _, err := pool.Exec(ctx, `UPDATE jobs SET start_at = now() - interval '1 second' WHERE id = $1`, later.ID); err != nil {
		t.Fatal(err)
	}
	if started, err := store.StartDueJobs(ctx); err != nil || !slices.Equal(started, []uuid.UUID{later.ID}) {
		t.Fatalf("started %v (%v), want %v", started, err, later.ID)
	}
	if st, ok, err := store.StepJob(ctx, 0, batchPlan(10, 0)); !ok || err != nil || st.Created != 1 {
		t.Errorf("the started job's first step: %+v %v %v", st, ok, err)
	}
	past := create(time.Now().Add(-time.Minute))
	if past.Status != db.JobRunning {
		t.Errorf("a start_at already past: %s, want running", past.Status)
	}
	cancelled := create(time.Now().Add(time.Hour))
	got, _, err := store.CancelJob(ctx, cancelled.ID)
	if err != nil || got.Status != db.JobCancelled || got.FinishedAt == nil {
		t.Fatalf("cancelling a scheduled job: %+v %v", got, err)
	}
	if _, err := pool.Exec(ctx, `UPDATE jobs SET start_at = now() - interval '1 second' WHERE id = $1`, cancelled.ID); err != nil {
		t.Fatal(err)
	}
	if started, err := store.StartDueJobs(ctx); err != nil || len(started) != 0 {
		t.Errorf("a cancelled job was started: %v %v", started, err)
	}
	// The plan may end a job with failures.
	if _, err := pool.Exec(ctx, `UPDATE commands SET status = 'failed', error = 'x', completed_at = now() WHERE job_id = $1`, later.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE jobs SET checked_at = '-infinity', status = CASE WHEN id = $1 THEN 'running' ELSE 'done' END`, later.ID); err != nil {
		t.Fatal(err)
	}
	st, ok, err := store.StepJob(ctx, 0, func(db.JobState) db.JobPlan { return db.JobPlan{End: db.JobDoneWithFailures} })
	if err != nil || !ok || st.Ended != db.JobDoneWithFailures {
		t.Fatalf("step %+v ok %v err %v, want done_with_failures", st, ok, err)
	}
	if j, err := store.Job(ctx, later.ID); err != nil || j.Status != db.JobDoneWithFailures || j.FinishedAt == nil || *j.Progress != 1 {
		t.Errorf("job %+v %v", j, err)
	}
}
