package maintenance

import (
	"context"
	"encoding/json"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/db/dbtest"
	"github.com/switchboard-iot/switchboard/edge"
)

// The runner's policy: the abort rule, the end of a job (done only when
// every target succeeded), retries before new targets, and the batch its
// rate made due, with the clock moved on by what was due.
func TestPlanJob(t *testing.T) {
	t.Parallel()
	if maxJobBatch != edge.MaxJobRate {
		t.Errorf("maxJobBatch %d, want a second's worth at the API's highest rate (%d)", maxJobBatch, edge.MaxJobRate)
	}
	if maxRetryWait != edge.MaxJobBackoff {
		t.Errorf("maxRetryWait %v, want the API's largest backoff (%v)", maxRetryWait, edge.MaxJobBackoff)
	}
	for _, tc := range []struct {
		name string
		s    db.JobState
		want db.JobPlan
	}{
		{"more failed than allowed", db.JobState{Total: 100, Created: 20, Rate: 10, Abort: 30, Elapsed: 1,
			Counts: db.JobCounts{Done: 5, Failed: 3, Expired: 2, Pending: 10}}, db.JobPlan{End: db.JobAborted}},
		{"not judged before 10 are final", db.JobState{Total: 100, Created: 20, Rate: 10, Abort: 0, Elapsed: 0.25,
			Counts: db.JobCounts{Failed: 9, Pending: 11}}, db.JobPlan{Create: 2, Behind: 0.05}},
		{"a small job judged when all are final", db.JobState{Total: 3, Created: 3, Rate: 10, Abort: 50,
			Counts: db.JobCounts{Done: 1, Failed: 2}}, db.JobPlan{End: db.JobAborted}},
		{"every target succeeded", db.JobState{Total: 10, Created: 10, Rate: 10, Abort: 0,
			Counts: db.JobCounts{Done: 10}}, db.JobPlan{End: db.JobDone}},
		{"100 percent never aborts, and all failed is not done", db.JobState{Total: 10, Created: 10, Rate: 10, Abort: 100,
			Counts: db.JobCounts{Failed: 10}}, db.JobPlan{End: db.JobDoneWithFailures}},
		{"as many failed as allowed", db.JobState{Total: 10, Created: 10, Rate: 10, Abort: 50,
			Counts: db.JobCounts{Done: 5, Failed: 5}}, db.JobPlan{End: db.JobDoneWithFailures}},
		{"one cancelled is not done", db.JobState{Total: 10, Created: 10, Rate: 10, Abort: 100,
			Counts: db.JobCounts{Done: 9, Cancelled: 1}}, db.JobPlan{End: db.JobDoneWithFailures}},
		{"all created, some not final", db.JobState{Total: 10, Created: 10, Rate: 10, Abort: 100, Elapsed: 5,
			Counts: db.JobCounts{Done: 9, Delivered: 1}}, db.JobPlan{}},
		{"the rate's due, the fraction kept", db.JobState{Total: 1000, Created: 10, Rate: 400, Abort: 100, Elapsed: 0.0126},
			db.JobPlan{Create: 5, Behind: 0.0001}},
		{"nothing due yet", db.JobState{Total: 10, Created: 1, Rate: 2, Abort: 100, Elapsed: 0.3}, db.JobPlan{}},
		{"no more than the targets left", db.JobState{Total: 10, Created: 8, Rate: 1000, Abort: 100, Elapsed: 0.5},
			db.JobPlan{Create: 2, Behind: 0.498}},
		{"after a pause: a batch at most, a second made up at most", db.JobState{Total: 100_000, Rate: 10_000, Abort: 100, Elapsed: 3600},
			db.JobPlan{Create: maxJobBatch, Behind: 1}},
		// Retries: a target awaiting one is neither final nor judged.
		{"retrying keeps the job running, and is due with its waits", db.JobState{Total: 10, Created: 10, Rate: 10, Abort: 0, Elapsed: 1,
			MaxAttempts: 3, Backoff: time.Second, Counts: db.JobCounts{Done: 2, Retrying: 8, Retried: 8}},
			db.JobPlan{Create: 8, Behind: 0.2, RetryWaits: []time.Duration{time.Second, 2 * time.Second}}},
		{"retries share the rate with the targets left", db.JobState{Total: 100, Created: 50, Rate: 10, Abort: 100, Elapsed: 0.5,
			MaxAttempts: 2, Backoff: time.Minute, Counts: db.JobCounts{Done: 40, Retrying: 10}},
			db.JobPlan{Create: 5, Behind: 0, RetryWaits: []time.Duration{time.Minute}}},
		{"the last attempt failed: judged", db.JobState{Total: 10, Created: 10, Rate: 10, Abort: 50,
			MaxAttempts: 3, Backoff: time.Second, Counts: db.JobCounts{Done: 4, Failed: 6, Retried: 12}}, db.JobPlan{End: db.JobAborted}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := planJob(tc.s, maxJobBatch)
			if got.End != tc.want.End || got.Create != tc.want.Create || math.Abs(got.Behind-tc.want.Behind) > 1e-9 ||
				!slices.Equal(got.RetryWaits, tc.want.RetryWaits) {
				t.Errorf("planJob(%+v) = %+v, want %+v", tc.s, got, tc.want)
			}
		})
	}
}

// The backoff doubles with each attempt, up to maxRetryWait.
func TestRetryWaits(t *testing.T) {
	t.Parallel()
	got := retryWaits(10, 10*time.Minute)
	want := []time.Duration{10 * time.Minute, 20 * time.Minute, 40 * time.Minute, time.Hour, time.Hour, time.Hour, time.Hour, time.Hour, time.Hour}
	if !slices.Equal(got, want) {
		t.Errorf("retryWaits(10, 10m) = %v, want %v", got, want)
	}
	if got := retryWaits(1, time.Second); len(got) != 0 {
		t.Errorf("one attempt: waits %v, want none", got)
	}
	if got := retryWaits(3, 0); !slices.Equal(got, []time.Duration{0, 0}) {
		t.Errorf("no backoff: waits %v, want 0s each", got)
	}
}

// A poke steps the jobs at once: a new job's first batch does not wait
// for the runner's tick.
func TestPokeStepsJobs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store := db.NewStore(dbtest.NewPool(t))
	addDevice(t, store, "dev-1")
	m := start(t, store, Config{JobInterval: time.Hour})
	j, err := store.CreateJob(ctx, db.NewJob{ID: uuid.Must(uuid.NewV7()), Name: "x", Args: json.RawMessage(`{}`),
		Timeout: time.Second, TTL: time.Hour, Target: json.RawMessage(`{"all":true}`), Rate: 100, Abort: 100, MaxTargets: 10})
	if err != nil {
		t.Fatal(err)
	}
	m.Poke()
	eventually(t, "the poked runner to create the job's command", func() bool {
		got, err := store.Job(ctx, j.ID)
		if err != nil {
			t.Fatal(err)
		}
		return got.Created == 1
	})
	eventually(t, "the batch to be counted", func() bool {
		return value(t, m.metrics.jobBatches) == 1 && value(t, m.metrics.jobCommands) == 1
	})
}

// A state job's batches, run by the runner: the patched devices that are
// online are woken ("state DEVICE" on their node's channel, so the node
// sends them their new desired document); those offline are not; the
// patches are counted; the job ends done.
func TestRunnerPatchesStateJob(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := dbtest.NewPool(t)
	store := db.NewStore(pool)
	addDevice(t, store, "online-1")
	addDevice(t, store, "offline-1")
	if _, err := pool.Exec(ctx, `INSERT INTO presence (device_id, node_id, region, session_id) VALUES ('online-1', 'node-1', 'r', $1)`, uuid.New()); err != nil {
		t.Fatal(err)
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `LISTEN "`+db.NodeChannel("node-1")+`"`); err != nil {
		t.Fatal(err)
	}
	m := start(t, store, Config{JobInterval: 50 * time.Millisecond})
	j, err := store.CreateJob(ctx, db.NewJob{ID: uuid.Must(uuid.NewV7()), Desired: json.RawMessage(`{"fw":"2"}`),
		Target: json.RawMessage(`{"all":true}`), Rate: 100, Abort: 100, MaxTargets: 10})
	if err != nil {
		t.Fatal(err)
	}
	m.Poke()
	wait, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	n, err := conn.Conn().WaitForNotification(wait)
	if err != nil {
		t.Fatalf("no wake-up for the online device: %v", err)
	}
	if n.Payload != "state online-1" {
		t.Errorf("the node was told %q, want %q", n.Payload, "state online-1")
	}
	eventually(t, "the job to end", func() bool {
		got, err := store.Job(ctx, j.ID)
		if err != nil {
			t.Fatal(err)
		}
		return got.Status == db.JobDone && got.StateCounts.Patched == 2
	})
	if got := value(t, m.metrics.jobPatches); got != 2 {
		t.Errorf("%v patches counted, want 2", got)
	}
	if got := value(t, m.metrics.jobBatches); got != 0 {
		t.Errorf("%v command batches counted for a state job", got)
	}
}
