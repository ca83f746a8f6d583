package db_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/db"
)

// A state job's batches: each step patches the plan's batch of targets in
// rollout order, in one statement, and records each target's outcome:
// patched (the version bumped once), unchanged (already there: no bump),
// gone (deleted since the job was made), too_large (left as it was). Only
// the patched devices that are online are to be woken. The job ends done
// with failures for the one too large; the counts add up, converged grows
// as devices report, and the targets list pages.
func TestStateJobSteps(t *testing.T) {
	t.Parallel()
	store, pool := setup(t, "a", "b", "c", "d", "e")
	ctx := context.Background()
	// a is at the patched state already; c is too full for the patch;
	// b and c are online.
	if _, err := store.PatchDesired(ctx, "a", json.RawMessage(`{"fw":"2.4.1"}`), nil); err != nil {
		t.Fatal(err)
	}
	big := `{"blob":"` + strings.Repeat("x", db.MaxStateBytes-20) + `"}` // 8 bytes short of the limit
	if _, err := store.PatchDesired(ctx, "c", json.RawMessage(big), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := store.PatchDesired(ctx, "d", json.RawMessage(`{"old":1,"mode":"heat"}`), nil); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"b", "c"} {
		if _, err := pool.Exec(ctx, `INSERT INTO presence (device_id, node_id, region, session_id) VALUES ($1, 'node-1', 'r', $2)`, id, uuid.New()); err != nil {
			t.Fatal(err)
		}
	}
	j, err := store.CreateJob(ctx, db.NewJob{ID: uuid.Must(uuid.NewV7()), Desired: json.RawMessage(`{"fw":"2.4.1","old":null}`),
		Target: json.RawMessage(`{"all":true}`), Rate: 100, Abort: 100, MaxTargets: 10})
	if err != nil {
		t.Fatal(err)
	}
	if j.Kind != db.KindState || j.StateCounts == nil || j.StateCounts.Unsent != 5 || j.Counts != nil || j.Args != nil {
		t.Fatalf("a new state job: %+v", j)
	}
	if _, err := store.DeleteDevice(ctx, "e"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := store.JobCommands(ctx, j.ID, 0, db.JobCommandFilter{}, 0, 10); !errors.Is(err, db.ErrWrongJobKind) {
		t.Errorf("a state job's commands: %v, want ErrWrongJobKind", err)
	}

	// batchPlan's, but ending as the runner does: with failures when
	// any target is (the too-large one counts failed).
	plan := func(s db.JobState) db.JobPlan {
		p := batchPlan(2, 0)(s)
		if p.End == db.JobDone && s.Counts.Unsuccessful() > 0 {
			p.End = db.JobDoneWithFailures
		}
		return p
	}
	var steps []db.JobStep
	for range 10 {
		step, ok, err := store.StepJob(ctx, 0, plan)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		steps = append(steps, step)
		if step.Ended != "" {
			break
		}
	}
	// Two a step over five targets: 2, 2, 1, then the end.
	var sizes []int
	for _, s := range steps {
		sizes = append(sizes, s.Created)
	}
	if !slices.Equal(sizes, []int{2, 2, 1, 0}) || steps[3].Ended != db.JobDoneWithFailures {
		t.Fatalf("steps %+v, want batches of 2, 2, 1 and then the end (done_with_failures)", steps)
	}
	// a unchanged, b patched (online), then c too large, d patched (offline), then e gone.
	wantPatched, wantNotices := []int{1, 1, 0}, [][]db.Notice{{{State: "b"}}, nil, nil}
	for i := range 3 {
		if steps[i].Patched != wantPatched[i] || !slices.Equal(steps[i].Notices, wantNotices[i]) || steps[i].Wake != nil {
			t.Errorf("step %d: patched %d notices %v, want %d and %v", i, steps[i].Patched, steps[i].Notices, wantPatched[i], wantNotices[i])
		}
	}
	for id, want := range map[string]string{"a": `{"fw": "2.4.1"}`, "b": `{"fw": "2.4.1"}`, "d": `{"fw": "2.4.1", "mode": "heat"}`} {
		st, err := store.State(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		var got, w any
		_ = json.Unmarshal(st.Desired, &got)
		_ = json.Unmarshal([]byte(want), &w)
		gb, _ := json.Marshal(got)
		wb, _ := json.Marshal(w)
		if string(gb) != string(wb) {
			t.Errorf("%s desired %s, want %s", id, st.Desired, want)
		}
		if wantVersion := map[string]int64{"a": 1, "b": 1, "d": 2}[id]; st.DesiredVersion != wantVersion {
			t.Errorf("%s at version %d, want %d", id, st.DesiredVersion, wantVersion)
		}
	}
	if st, _ := store.State(ctx, "c"); st.DesiredVersion != 1 || strings.Contains(string(st.Desired), "fw") {
		t.Errorf("c, too large for the patch: version %d, want it untouched", st.DesiredVersion)
	}

	got, err := store.Job(ctx, j.ID)
	if err != nil {
		t.Fatal(err)
	}
	want := db.StateJobCounts{Patched: 2, Unchanged: 1, Gone: 1, TooLarge: 1}
	if got.Status != db.JobDoneWithFailures || *got.StateCounts != want || *got.Progress != 1 || got.Counts != nil {
		t.Fatalf("the job: %s %+v progress %v, want %+v", got.Status, *got.StateCounts, *got.Progress, want)
	}
	// Converged grows as devices report the patched keys (and the
	// deleted key gone); another key's value does not matter.
	report := func(id, patch string) {
		t.Helper()
		if _, _, err := store.StoreReports(ctx, []db.Report{{DeviceID: id, Patch: json.RawMessage(patch)}}); err != nil {
			t.Fatal(err)
		}
	}
	converged := func() int {
		t.Helper()
		got, err := store.Job(ctx, j.ID)
		if err != nil {
			t.Fatal(err)
		}
		return got.StateCounts.Converged
	}
	report("a", `{"fw":"2.4.1","celsius":20}`)
	report("d", `{"fw":"2.4.1","old":1}`) // still has the key the patch deleted
	if n := converged(); n != 1 {
		t.Errorf("converged %d, want 1 (a)", n)
	}
	report("d", `{"old":null}`)
	report("b", `{"fw":"2.4.0"}`)
	if n := converged(); n != 2 {
		t.Errorf("converged %d, want 2 (a, d)", n)
	}

	// The targets, in rollout order, a page of two at a time.
	var all []db.JobTarget
	for from := int64(0); ; {
		page, more, err := store.JobTargets(ctx, j.ID, 0, nil, from, 2)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, page...)
		if !more {
			break
		}
		from = page[len(page)-1].Position + 1
	}
	var outcomes []string
	for _, tg := range all {
		outcomes = append(outcomes, tg.DeviceID+":"+tg.Outcome)
		if tg.Converged != (tg.DeviceID == "a" || tg.DeviceID == "d") {
			t.Errorf("%s converged %v", tg.DeviceID, tg.Converged)
		}
		if (tg.Outcome == db.OutcomePatched) != (tg.DesiredVersion != nil) || tg.PatchedAt == nil {
			t.Errorf("%s: version %v at %v", tg.DeviceID, tg.DesiredVersion, tg.PatchedAt)
		}
	}
	if w := []string{"a:unchanged", "b:patched", "c:too_large", "d:patched", "e:gone"}; !slices.Equal(outcomes, w) {
		t.Errorf("targets %v, want %v", outcomes, w)
	}
	page, _, err := store.JobTargets(ctx, j.ID, 0, []string{db.OutcomeGone, db.OutcomeTooLarge}, 0, 10)
	if err != nil || len(page) != 2 || page[0].DeviceID != "c" || page[1].DeviceID != "e" {
		t.Errorf("gone and too large: %+v %v", page, err)
	}
	if _, _, err := store.JobTargets(ctx, uuid.New(), 0, nil, 0, 10); !errors.Is(err, db.ErrNotFound) {
		t.Errorf("an unknown job's targets: %v", err)
	}
}

// A cancelled state job patches nothing more: its unreached targets stay
// unsent. A command job has no targets list.
func TestStateJobCancel(t *testing.T) {
	t.Parallel()
	store, _ := setup(t, "a", "b", "c")
	ctx := context.Background()
	j, err := store.CreateJob(ctx, db.NewJob{ID: uuid.Must(uuid.NewV7()), Desired: json.RawMessage(`{"fw":"2"}`),
		Target: json.RawMessage(`{"all":true}`), Rate: 1, Abort: 100, MaxTargets: 10})
	if err != nil {
		t.Fatal(err)
	}
	if step, _, err := store.StepJob(ctx, 0, batchPlan(1, 0)); err != nil || step.Created != 1 {
		t.Fatalf("first step %+v %v", step, err)
	}
	got, _, err := store.CancelJob(ctx, j.ID)
	if err != nil {
		t.Fatal(err)
	}
	if want := (db.StateJobCounts{Unsent: 2, Patched: 1}); got.Status != db.JobCancelled || *got.StateCounts != want {
		t.Fatalf("cancelled: %s %+v, want %+v", got.Status, *got.StateCounts, want)
	}
	if _, ok, err := store.StepJob(ctx, 0, batchPlan(1, 0)); ok || err != nil {
		t.Errorf("a step after the cancel: ok %v, %v", ok, err)
	}
	for _, id := range []string{"b", "c"} {
		if st, _ := store.State(ctx, id); st.DesiredVersion != 0 {
			t.Errorf("%s patched after the cancel", id)
		}
	}
	cmdJob, err := store.CreateJob(ctx, db.NewJob{ID: uuid.Must(uuid.NewV7()), Name: "x", Args: json.RawMessage(`{}`), Timeout: time.Second,
		TTL: time.Hour, Target: json.RawMessage(`{"all":true}`), Rate: 1, Abort: 100, MaxTargets: 10})
	if err != nil {
		t.Fatal(err)
	}
	if cmdJob.Kind != db.KindCommand || cmdJob.Desired != nil {
		t.Errorf("a command job: %+v", cmdJob)
	}
	if _, _, err := store.JobTargets(ctx, cmdJob.ID, 0, nil, 0, 10); !errors.Is(err, db.ErrWrongJobKind) {
		t.Errorf("a command job's targets: %v, want ErrWrongJobKind", err)
	}
}
