package edge_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/db/dbtest"
	"github.com/switchboard-iot/switchboard/device"
)

// postStateJob creates a state job and checks the 201, its kind and its
// counts.
func postStateJob(t *testing.T, c *api, body string) db.Job {
	t.Helper()
	resp, b := c.call(http.MethodPost, "/v1/jobs", body)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST /v1/jobs: status %d, want 201; body %s", resp.StatusCode, b)
	}
	var j db.Job
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(b, &j); err != nil || json.Unmarshal(b, &fields) != nil {
		t.Fatalf("decoding %s: %v", b, err)
	}
	if loc := resp.Header.Get("Location"); loc != "/v1/jobs/"+j.ID.String() {
		t.Errorf("Location %q, want /v1/jobs/%s", loc, j.ID)
	}
	if j.Kind != db.KindState || j.StateCounts == nil || j.StateCounts.Unsent != j.Total || j.Counts != nil {
		t.Errorf("a new state job: %s", b)
	}
	// A command's fields mean nothing here: they are left out.
	for _, f := range []string{"name", "args", "timeout", "ttl", "retry", "counts"} {
		if _, ok := fields[f]; ok {
			t.Errorf("a state job shows %q: %s", f, b)
		}
	}
	return j
}

// stateDevices are SDK devices that record the desired documents their
// node sends, and report them back when told to.
type stateDevices struct {
	mu      sync.Mutex
	desired map[string]map[string]any // the latest document each device got
	clients map[string]*device.Client
}

func (s *stateDevices) got(id string) map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.desired[id]
}

// connectState starts these devices on node, recording their desired
// state, and waits for their first sessions.
func connectState(t *testing.T, node *testsys.Node, ids []string, secrets map[string]string) *stateDevices {
	t.Helper()
	s := &stateDevices{desired: map[string]map[string]any{}, clients: map[string]*device.Client{}}
	ctx, cancel := context.WithCancel(context.Background())
	var wg, connected sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for _, id := range ids {
		var once sync.Once
		connected.Add(1)
		c := device.New(device.Config{
			URL: node.URL, ID: id, Secret: secrets[id], TLS: node.TLS(), Log: dbtest.Logger(),
			MinBackoff: 20 * time.Millisecond, MaxBackoff: 500 * time.Millisecond,
			OnConnect: func() { once.Do(connected.Done) },
		})
		c.OnDesired(func(desired json.RawMessage, _ int64) {
			var doc map[string]any
			if err := json.Unmarshal(desired, &doc); err != nil {
				t.Errorf("%s: desired %s: %v", id, desired, err)
			}
			s.mu.Lock()
			s.desired[id] = doc
			s.mu.Unlock()
		})
		s.clients[id] = c
		wg.Go(func() { _ = c.Run(ctx) })
	}
	done := make(chan struct{})
	go func() { connected.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("devices not connected within 30s")
	}
	return s
}

// A state job over a label: every target's desired state is patched, in
// several batches at the job's rate (never all at once), the online
// devices get their new document (a state frame), an already-patched
// device counts unchanged, and converged grows as devices report. The job
// ends done; its targets list says what happened to each.
func TestStateJobRollout(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", nil)
	e := sys.StartEdge(t, "edge-a", fastJobs, fastRunner)
	c := newAPI(t, e.URL, sys.APIKey(t))
	ids, secrets := provision(t, sys, "therm", 8)
	// Six of eight are thermostats; one of them has the firmware already.
	if _, err := sys.Pool.Exec(t.Context(), `UPDATE devices SET labels = '{"model":"thermostat"}' WHERE id < 'therm-0006'`); err != nil {
		t.Fatal(err)
	}
	c.patchOK("therm-0005", `{"firmware":"2.4.1"}`)
	online := connectState(t, node, ids[:3], secrets)

	j := postStateJob(t, c, `{"desired":{"firmware":"2.4.1","legacy":null},"title":"Firmware 2.4.1","target":{"label":"model=thermostat"},"rate":4}`)
	var patch map[string]any
	if err := json.Unmarshal(j.Desired, &patch); err != nil || j.Total != 6 || len(patch) != 2 || patch["firmware"] != "2.4.1" || patch["legacy"] != nil {
		t.Fatalf("job %+v, want 6 targets and the patch", j)
	}
	j = waitJob(t, sys, j.ID, 30*time.Second, "the job to end", func(j db.Job) bool { return j.Status.Final() })
	j, fields := getJob(t, c, j.ID)
	want := db.StateJobCounts{Patched: 5, Unchanged: 1}
	if j.Status != db.JobDone || j.Created != 6 || *j.Progress != 1 || j.FinishedAt == nil {
		t.Fatalf("job %+v, want done with 6 reached", j)
	}
	if got := *j.StateCounts; got != want {
		t.Errorf("counts %+v, want %+v", got, want)
	}
	if string(fields["kind"]) != `"state"` || string(fields["desired"]) == "" {
		t.Errorf("the job does not say its kind: %v", fields)
	}
	// The rate: 6 targets at 4 a second are several batches, each
	// written at its own transaction time; the first is one target (the
	// rollout's clock starts one device back).
	var batches, first int
	if err := sys.Pool.QueryRow(t.Context(), `SELECT count(DISTINCT patched_at),
		(SELECT count(*) FROM job_targets WHERE job_id = $1 AND patched_at = (SELECT min(patched_at) FROM job_targets WHERE job_id = $1))
		FROM job_targets WHERE job_id = $1`, j.ID).Scan(&batches, &first); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d batches, the first of %d", batches, first)
	if batches < 2 {
		t.Errorf("%d batches for 6 targets at 4/s: the rate was not kept", batches)
	}
	// The online targets got the patched document, the others did not.
	for _, id := range ids[:3] {
		testsys.Eventually(t, id+" to get the new desired state", func() bool {
			return online.got(id)["firmware"] == "2.4.1"
		})
	}
	for _, id := range ids[6:] {
		if st := c.getState(id); st.DesiredVersion != 0 {
			t.Errorf("%s, not a target, at desired version %d", id, st.DesiredVersion)
		}
	}
	if st := c.getState("therm-0005"); st.DesiredVersion != 1 {
		t.Errorf("the unchanged target's version moved to %d", st.DesiredVersion)
	}

	// Converged grows as devices report the patched values.
	converged := func(n int) func() bool {
		return func() bool { j, _ := getJob(t, c, j.ID); return j.StateCounts.Converged == n }
	}
	if j.StateCounts.Converged != 0 {
		t.Errorf("converged %d before any report", j.StateCounts.Converged)
	}
	for i, id := range ids[:2] {
		if err := online.clients[id].Report(map[string]any{"firmware": "2.4.1", "celsius": 20}); err != nil {
			t.Fatal(err)
		}
		testsys.Eventually(t, fmt.Sprintf("%d converged", i+1), converged(i+1))
	}

	// The targets, with their outcomes, a page at a time.
	var targets []db.JobTarget
	next := ""
	for {
		path := "/v1/jobs/" + j.ID.String() + "/targets?limit=4"
		if next != "" {
			path += "&cursor=" + next
		}
		resp, b := c.call(http.MethodGet, path, "")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("targets: %d %s", resp.StatusCode, b)
		}
		var page struct {
			Targets []db.JobTarget `json:"targets"`
			Next    string         `json:"next"`
		}
		if err := json.Unmarshal(b, &page); err != nil {
			t.Fatal(err)
		}
		targets = append(targets, page.Targets...)
		if next = page.Next; next == "" {
			break
		}
	}
	if len(targets) != 6 {
		t.Fatalf("%d targets listed, want 6", len(targets))
	}
	for i, tg := range targets {
		wantOutcome := db.OutcomePatched
		if tg.DeviceID == "therm-0005" {
			wantOutcome = db.OutcomeUnchanged
		}
		if tg.DeviceID != ids[i] || tg.Outcome != wantOutcome || tg.Converged != (i < 2) {
			t.Errorf("target %d: %+v, want %s %s converged %v", i, tg, ids[i], wantOutcome, i < 2)
		}
	}
	resp, b := c.call(http.MethodGet, "/v1/jobs/"+j.ID.String()+"/targets?outcome=unchanged", "")
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), `"therm-0005"`) || strings.Contains(string(b), "therm-0000") {
		t.Errorf("unchanged targets: %d %s", resp.StatusCode, b)
	}
	// A state job has no commands; a command job no targets.
	resp, b = c.call(http.MethodGet, "/v1/jobs/"+j.ID.String()+"/commands", "")
	wantProblem(t, resp, b, http.StatusConflict, "job-kind-mismatch")
	cmd := postJob(t, c, `{"name":"get_state","target":{"devices":["therm-0000"]}}`)
	resp, b = c.call(http.MethodGet, "/v1/jobs/"+cmd.ID.String()+"/targets", "")
	wantProblem(t, resp, b, http.StatusConflict, "job-kind-mismatch")
	// Listed with its kind and patch, without counts.
	resp, b = c.call(http.MethodGet, "/v1/jobs", "")
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), `"kind":"state","title":"Firmware 2.4.1"`) ||
		!strings.Contains(string(b), `"firmware":"2.4.1"`) || strings.Contains(string(b), "state_counts") {
		t.Errorf("the list: %d %s", resp.StatusCode, b)
	}
}

// Cancel stops a state job: the targets not reached stay unpatched and
// unsent, for good.
func TestStateJobCancel(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", fastJobs, fastRunner)
	c := newAPI(t, e.URL, sys.APIKey(t))
	provision(t, sys, "dev", 10)
	j := postStateJob(t, c, `{"desired":{"mode":"eco"},"target":{"all":true},"rate":1}`)
	waitJob(t, sys, j.ID, 20*time.Second, "the first patch", func(j db.Job) bool { return j.Created > 0 })
	resp, b := c.call(http.MethodPost, "/v1/jobs/"+j.ID.String()+"/cancel", "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("cancel: %d %s", resp.StatusCode, b)
	}
	var got db.Job
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got.Status != db.JobCancelled || got.StateCounts.Unsent == 0 || got.StateCounts.Unsent+got.StateCounts.Patched != 10 {
		t.Fatalf("cancelled: %s", b)
	}
	// Another job keeps the runner stepping: the cancelled one is never
	// stepped again.
	other := postStateJob(t, c, `{"desired":{"x":1},"target":{"devices":["dev-0000"]}}`)
	waitJob(t, sys, other.ID, 20*time.Second, "another job to finish", func(j db.Job) bool { return j.Status == db.JobDone })
	if n := count(t, sys, `SELECT count(*) FROM device_state WHERE desired ? 'mode'`); n != got.StateCounts.Patched {
		t.Errorf("%d devices patched, want the %d patched before the cancel", n, got.StateCounts.Patched)
	}
	if after, _ := getJob(t, c, j.ID); after.Created != got.Created || *after.StateCounts != *got.StateCounts {
		t.Errorf("after the cancel: %+v, was %+v", *after.StateCounts, *got.StateCounts)
	}
}

// A state job's request: exactly one kind, a merge patch that fits a
// document, no command field beside it; scopes as for any job.
func TestStateJobBadInput(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", fastJobs, fastRunner)
	c := newAPI(t, e.URL, sys.APIKey(t))
	sys.AddDevice(t, "dev-1")
	for _, tc := range []struct {
		name, body string
		status     int
		slug       string
	}{
		{"both kinds", `{"name":"x","desired":{"a":1},"target":{"all":true}}`, 400, "invalid-job-kind"},
		{"neither kind", `{"target":{"all":true}}`, 400, "invalid-command"},
		{"args with desired", `{"desired":{"a":1},"args":{},"target":{"all":true}}`, 400, "invalid-job-kind"},
		{"timeout with desired", `{"desired":{"a":1},"timeout":"5s","target":{"all":true}}`, 400, "invalid-job-kind"},
		{"ttl with desired", `{"desired":{"a":1},"ttl":"1h","target":{"all":true}}`, 400, "invalid-job-kind"},
		{"retry with desired", `{"desired":{"a":1},"retry":{"max_attempts":2},"target":{"all":true}}`, 400, "invalid-job-kind"},
		{"abort with desired", `{"desired":{"a":1},"abort_failed_percent":10,"target":{"all":true}}`, 400, "invalid-job-kind"},
		{"desired an array", `{"desired":[1],"target":{"all":true}}`, 400, "invalid-json"},
		{"desired a string", `{"desired":"fw","target":{"all":true}}`, 400, "invalid-json"},
		{"desired null", `{"desired":null,"target":{"all":true}}`, 400, "invalid-json"},
		{"desired over 32 KiB", `{"desired":{"blob":"` + strings.Repeat("x", db.MaxStateBytes) + `"},"target":{"all":true}}`, 413, "state-too-large"},
		{"no target", `{"desired":{"a":1}}`, 400, "invalid-target"},
		{"rate 0", `{"desired":{"a":1},"target":{"all":true},"rate":0}`, 400, "invalid-rate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := c.call(http.MethodPost, "/v1/jobs", tc.body)
			if p := wantProblem(t, resp, body, tc.status, tc.slug); p.Detail == "" {
				t.Error("no detail says what is wrong")
			}
		})
	}
	if n := count(t, sys, `SELECT count(*) FROM jobs`); n != 0 {
		t.Errorf("%d jobs stored by refused requests", n)
	}
	for _, tc := range []struct{ path, slug string }{
		{"/v1/jobs/not-a-uuid/targets", "invalid-job-id"},
		{"/v1/jobs/" + uuid.NewString() + "/targets?outcome=lost", "invalid-query"},
		{"/v1/jobs/" + uuid.NewString() + "/targets?limit=0", "invalid-query"},
		{"/v1/jobs/" + uuid.NewString() + "/targets?cursor=tampered", "invalid-cursor"},
		{"/v1/jobs/" + uuid.NewString() + "/targets?state=x", "invalid-query"},
	} {
		resp, body := c.call(http.MethodGet, tc.path, "")
		wantProblem(t, resp, body, http.StatusBadRequest, tc.slug)
	}
	resp, body := c.call(http.MethodGet, "/v1/jobs/"+uuid.NewString()+"/targets", "")
	wantProblem(t, resp, body, http.StatusNotFound, "job-not-found")

	// Scopes: commands to make and see a state job, and read too for a
	// selector; another key's job is not found without read.
	reader := newAPI(t, e.URL, sys.APIKey(t, db.ScopeRead))
	resp, body = reader.call(http.MethodPost, "/v1/jobs", `{"desired":{"a":1},"target":{"devices":["dev-1"]}}`)
	wantProblem(t, resp, body, http.StatusForbidden, "insufficient-scope")
	commander := newAPI(t, e.URL, sys.APIKey(t, db.ScopeCommands))
	resp, body = commander.call(http.MethodPost, "/v1/jobs", `{"desired":{"a":1},"target":{"all":true}}`)
	wantProblem(t, resp, body, http.StatusForbidden, "insufficient-scope")
	j := postStateJob(t, commander, `{"desired":{"a":1},"target":{"devices":["dev-1"]}}`)
	resp, body = reader.call(http.MethodGet, "/v1/jobs/"+j.ID.String()+"/targets", "")
	wantProblem(t, resp, body, http.StatusForbidden, "insufficient-scope")
	other := newAPI(t, e.URL, sys.APIKey(t, db.ScopeCommands))
	resp, body = other.call(http.MethodGet, "/v1/jobs/"+j.ID.String()+"/targets", "")
	wantProblem(t, resp, body, http.StatusNotFound, "job-not-found")
	resp, body = commander.call(http.MethodGet, "/v1/jobs/"+j.ID.String()+"/targets", "")
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"device_id":"dev-1"`) {
		t.Errorf("its own job's targets: %d %s", resp.StatusCode, body)
	}
}
