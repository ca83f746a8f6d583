package db_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/db"
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
