package maintenance

import (
	"context"
	"encoding/json"
	"math"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/db/dbtest"
	"github.com/switchboard-iot/switchboard/edge"
)

// The runner's policy: the abort rule, the end of a job, and the batch
// its rate made due, with the clock moved on by what was due.
func TestPlanJob(t *testing.T) {
	t.Parallel()
	if maxJobBatch != edge.MaxJobRate {
		t.Errorf("maxJobBatch %d, want a second's worth at the API's highest rate (%d)", maxJobBatch, edge.MaxJobRate)
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
		{"100 percent never aborts", db.JobState{Total: 10, Created: 10, Rate: 10, Abort: 100,
			Counts: db.JobCounts{Failed: 10}}, db.JobPlan{End: db.JobDone}},
		{"as many failed as allowed", db.JobState{Total: 10, Created: 10, Rate: 10, Abort: 50,
			Counts: db.JobCounts{Done: 5, Failed: 5}}, db.JobPlan{End: db.JobDone}},
		{"all created, some not final", db.JobState{Total: 10, Created: 10, Rate: 10, Abort: 100, Elapsed: 5,
			Counts: db.JobCounts{Done: 9, Delivered: 1}}, db.JobPlan{}},
		{"the rate's due, the fraction kept", db.JobState{Total: 1000, Created: 10, Rate: 400, Abort: 100, Elapsed: 0.0126},
			db.JobPlan{Create: 5, Behind: 0.0001}},
		{"nothing due yet", db.JobState{Total: 10, Created: 1, Rate: 2, Abort: 100, Elapsed: 0.3}, db.JobPlan{}},
		{"no more than the targets left", db.JobState{Total: 10, Created: 8, Rate: 1000, Abort: 100, Elapsed: 0.5},
			db.JobPlan{Create: 2, Behind: 0.498}},
		{"after a pause: a batch at most, a second made up at most", db.JobState{Total: 100_000, Rate: 10_000, Abort: 100, Elapsed: 3600},
			db.JobPlan{Create: maxJobBatch, Behind: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := planJob(tc.s, maxJobBatch)
			if got.End != tc.want.End || got.Create != tc.want.Create || math.Abs(got.Behind-tc.want.Behind) > 1e-9 {
				t.Errorf("planJob(%+v) = %+v, want %+v", tc.s, got, tc.want)
			}
		})
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
