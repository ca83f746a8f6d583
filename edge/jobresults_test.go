package edge_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/device"
	"github.com/switchboard-iot/switchboard/internal/command"
	"github.com/switchboard-iot/switchboard/maintenance"
)

// jobCommandPage is an answer of GET /v1/jobs/{id}/commands.
type jobCommandPage struct {
	Commands []db.JobCommand `json:"commands"`
	Next     string          `json:"next"`
}

// jobCommands reads one page of a job's commands (query holds the
// parameters, "" none), failing the test unless it is a 200.
func jobCommands(t *testing.T, c *api, id uuid.UUID, query string) jobCommandPage {
	t.Helper()
	resp, b := c.call(http.MethodGet, "/v1/jobs/"+id.String()+"/commands"+query, "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET commands%s: %d %s", query, resp.StatusCode, b)
	}
	wantSchema(t, "JobCommandList", b)
	var page jobCommandPage
	if err := json.Unmarshal(b, &page); err != nil {
		t.Fatalf("decoding %s: %v", b, err)
	}
	return page
}

// summary renders a job's commands as "device/attempt:status" for messages.
func summary(cmds []db.JobCommand) string {
	var parts []string
	for _, c := range cmds {
		parts = append(parts, fmt.Sprintf("%s/%d:%s", c.DeviceID, c.JobAttempt, c.Status))
	}
	return strings.Join(parts, " ")
}

// sameSet says whether got and want hold the same strings, in any order.
func sameSet(got, want []string) bool {
	return slices.Equal(slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(want)))
}

// wantSchema checks a JSON answer against a schema of edge/openapi.json:
// the description says what the edge answers.
func wantSchema(t *testing.T, schema string, body []byte) {
	t.Helper()
	_, raw := readOpenAPI(t)
	c := jsonschema.NewCompiler()
	if err := c.AddResource("openapi.json", raw); err != nil {
		t.Fatal(err)
	}
	sch, err := c.Compile("openapi.json#/components/schemas/" + schema)
	if err != nil {
		t.Fatal(err)
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if err := sch.Validate(inst); err != nil {
		t.Errorf("%s is not a %s of edge/openapi.json: %v", body, schema, err)
	}
}

// devicesTarget is a job target naming ids.
func devicesTarget(ids []string) string {
	b, _ := json.Marshal(map[string][]string{"devices": ids})
	return string(b)
}

// The case: a reboot job to 4 devices, none of which knows the
// command, ended "done". Now it ends done_with_failures, says why (its
// errors, with counts), and lists each device's failed command with its
// error; a job whose every command succeeded is done.
func TestJobFinalStates(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", nil)
	e := sys.StartEdge(t, "edge-a", fastJobs, fastRunner)
	c := newAPI(t, e.URL, sys.APIKey(t))
	ids, secrets := provision(t, sys, "hall", 4)
	connect(t, []*testsys.Node{node}, ids, secrets, ok).waitConnected(t, 20*time.Second)

	j := postJob(t, c, `{"name":"reboot","title":"Reboot the hall","description":"after the firmware push","target":`+devicesTarget(ids)+`}`)
	if j.Title != "Reboot the hall" || j.Description != "after the firmware push" || j.Retry.MaxAttempts != 1 {
		t.Errorf("the new job: %+v", j)
	}
	_, sse := c.stream(http.MethodGet, "/v1/jobs/"+j.ID.String(), "")
	events := sse.all(t)
	last := events[len(events)-1]
	if last.Name != "done_with_failures" {
		t.Fatalf("events %s, want the last done_with_failures", eventsSummary(events))
	}
	var ended db.Job
	if err := json.Unmarshal([]byte(last.Data), &ended); err != nil {
		t.Fatal(err)
	}
	wantSchema(t, "Job", []byte(last.Data))
	wantErrors := []db.JobError{{Error: "unknown command reboot", Count: 4}}
	if ended.Status != db.JobDoneWithFailures || *ended.Counts != (db.JobCounts{Failed: 4}) || !slices.Equal(ended.Errors, wantErrors) {
		t.Errorf("the ended job %s, want done_with_failures, 4 failed, errors %+v", last.Data, wantErrors)
	}
	page := jobCommands(t, c, j.ID, "?status=failed")
	if len(page.Commands) != 4 || page.Next != "" {
		t.Fatalf("failed commands: %s (next %q), want 4", summary(page.Commands), page.Next)
	}
	for i, cmd := range page.Commands {
		if cmd.DeviceID != ids[i] || cmd.Error != "unknown command reboot" || cmd.Attempts != 1 || cmd.JobAttempt != 1 ||
			cmd.OK == nil || *cmd.OK || cmd.CompletedAt == nil {
			t.Errorf("failed command %d: %+v", i, cmd)
		}
	}
	if page := jobCommands(t, c, j.ID, "?status=done"); len(page.Commands) != 0 {
		t.Errorf("done commands: %s, want none", summary(page.Commands))
	}
	// The same command by error text, as the job's errors show it.
	if page := jobCommands(t, c, j.ID, "?error="+url.QueryEscape("unknown command reboot")); len(page.Commands) != 4 {
		t.Errorf("commands by error: %s, want 4", summary(page.Commands))
	}

	fine := postJob(t, c, `{"name":"get_state","target":`+devicesTarget(ids)+`}`)
	fine = waitJob(t, sys, fine.ID, 20*time.Second, "the job to end", func(j db.Job) bool { return j.Status.Final() })
	if fine.Status != db.JobDone || fine.Counts.Done != 4 || len(fine.Errors) != 0 {
		t.Errorf("a job whose commands all succeeded: %s %+v %+v, want done", fine.Status, *fine.Counts, fine.Errors)
	}
	resp, b := c.call(http.MethodGet, "/v1/jobs?status=done_with_failures", "")
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), j.ID.String()) || strings.Contains(string(b), fine.ID.String()) ||
		!strings.Contains(string(b), `"title":"Reboot the hall"`) {
		t.Errorf("jobs done with failures: %d %s", resp.StatusCode, b)
	}
}

// A job retries a target whose command failed (as a new command, the next
// attempt, each keeping its error) before counting it failed: devices that
// fail their first command and answer the second end the job done.
func TestJobRetries(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", nil)
	e := sys.StartEdge(t, "edge-a", fastJobs, fastRunner)
	c := newAPI(t, e.URL, sys.APIKey(t))
	ids, secrets := provision(t, sys, "flaky", 4)
	var mu sync.Mutex
	calls := map[string]int{}
	connect(t, []*testsys.Node{node}, ids, secrets, func(id string) device.HandlerFunc {
		return func(context.Context, json.RawMessage) (any, error) {
			mu.Lock()
			defer mu.Unlock()
			if calls[id]++; calls[id] == 1 {
				return nil, errors.New("warming up")
			}
			return map[string]any{"celsius": 21.5}, nil
		}
	}).waitConnected(t, 20*time.Second)

	j := postJob(t, c, `{"name":"get_state","target":`+devicesTarget(ids)+`,"retry":{"max_attempts":3,"backoff":"0s"}}`)
	if j.Retry != (db.JobRetry{MaxAttempts: 3}) {
		t.Errorf("retry %+v, want 3 attempts, no backoff", j.Retry)
	}
	j = waitJob(t, sys, j.ID, 20*time.Second, "the job to end", func(j db.Job) bool { return j.Status.Final() })
	if j.Status != db.JobDone || *j.Counts != (db.JobCounts{Done: 4, Retried: 4}) || len(j.Errors) != 0 {
		t.Fatalf("job %s %+v %+v, want done: 4 done after 4 retries", j.Status, *j.Counts, j.Errors)
	}
	all := jobCommands(t, c, j.ID, "?attempts=all")
	var want []string
	for _, id := range ids {
		want = append(want, id+"/1:failed")
	}
	for _, id := range ids {
		want = append(want, id+"/2:done")
	}
	// The list is in the order the commands were made: the job runner
	// makes first attempts and retries in as many batches as its steps and
	// the failures take, so they may interleave.
	if got := summary(all.Commands); !sameSet(strings.Fields(got), want) {
		t.Errorf("every attempt: %s, want %s", got, strings.Join(want, " "))
	}
	for _, cmd := range all.Commands {
		if cmd.JobAttempt == 1 && (!cmd.Retried || cmd.Error != "warming up") {
			t.Errorf("a first attempt: %+v, want retried, with its error", cmd)
		}
	}
	if latest := jobCommands(t, c, j.ID, ""); !sameSet(strings.Fields(summary(latest.Commands)), want[4:]) {
		t.Errorf("the latest commands: %s", summary(latest.Commands))
	}
	if n := edgeMetric(t, e.Ops, fmt.Sprintf(`switchboard_edge_job_retries_total{edge=%q}`, e.ID)); n != 4 {
		t.Errorf("%v retries counted, want 4", n)
	}

	// A command no device knows fails every attempt: counted failed once
	// the last fails, with the last attempt's error.
	bad := postJob(t, c, `{"name":"reboot","target":`+devicesTarget(ids[:2])+`,"retry":{"max_attempts":2,"backoff":0}}`)
	bad = waitJob(t, sys, bad.ID, 20*time.Second, "the job to end", func(j db.Job) bool { return j.Status.Final() })
	if bad.Status != db.JobDoneWithFailures || *bad.Counts != (db.JobCounts{Failed: 2, Retried: 2}) ||
		!slices.Equal(bad.Errors, []db.JobError{{Error: "unknown command reboot", Count: 2}}) {
		t.Errorf("job %s %+v %+v, want done_with_failures, 2 failed after 2 retries", bad.Status, *bad.Counts, bad.Errors)
	}
}

// A job with a start_at ahead is scheduled: listed, cancellable, and it
// creates no command until then.
func TestJobScheduled(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", nil)
	e := sys.StartEdge(t, "edge-a", fastJobs, fastRunner)
	c := newAPI(t, e.URL, sys.APIKey(t))
	ids, secrets := provision(t, sys, "dev", 2)
	connect(t, []*testsys.Node{node}, ids, secrets, ok).waitConnected(t, 20*time.Second)

	schedule := func(in time.Duration) db.Job {
		t.Helper()
		start := time.Now().Add(in).Truncate(time.Millisecond)
		resp, b := c.call(http.MethodPost, "/v1/jobs", `{"name":"get_state","title":"later","target":`+devicesTarget(ids)+
			`,"start_at":"`+start.Format(time.RFC3339Nano)+`"}`)
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("POST /v1/jobs: %d %s", resp.StatusCode, b)
		}
		var j db.Job
		if err := json.Unmarshal(b, &j); err != nil {
			t.Fatal(err)
		}
		if j.Status != db.JobScheduled || j.StartAt == nil || !j.StartAt.Equal(start) || *j.Counts != (db.JobCounts{Unsent: 2}) {
			t.Fatalf("a job to start at %s: %s", start, b)
		}
		return j
	}
	soon := schedule(8 * time.Second) // past the two POSTs and the reads below, even on a machine loaded to 20
	far := schedule(time.Hour)
	if n := count(t, sys, fmt.Sprintf(`SELECT count(*) FROM commands WHERE job_id IN ('%s', '%s')`, soon.ID, far.ID)); n != 0 {
		t.Errorf("%d commands of scheduled jobs before their start", n)
	}
	resp, b := c.call(http.MethodGet, "/v1/jobs?status=scheduled", "")
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), soon.ID.String()) || !strings.Contains(string(b), far.ID.String()) {
		t.Errorf("scheduled jobs: %d %s", resp.StatusCode, b)
	}
	resp, b = c.call(http.MethodPost, "/v1/jobs/"+far.ID.String()+"/cancel", "")
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), `"status":"cancelled"`) {
		t.Errorf("cancelling a scheduled job: %d %s", resp.StatusCode, b)
	}

	// The stream of a scheduled job follows it through its start.
	_, sse := c.stream(http.MethodGet, "/v1/jobs/"+soon.ID.String(), "")
	first := sse.must(t)
	if first.Name != "progress" || !strings.Contains(first.Data, `"status":"scheduled"`) {
		t.Errorf("the first event %+v, want progress while scheduled", first)
	}
	events := sse.all(t)
	if len(events) == 0 || events[len(events)-1].Name != "done" {
		t.Fatalf("events %s, want it to end done", eventsSummary(events))
	}
	var done db.Job
	if err := json.Unmarshal([]byte(events[len(events)-1].Data), &done); err != nil {
		t.Fatal(err)
	}
	if done.Counts.Done != 2 {
		t.Errorf("the scheduled job ended %+v", *done.Counts)
	}
	var started time.Time
	if err := sys.Pool.QueryRow(t.Context(), `SELECT min(created_at) FROM commands WHERE job_id = $1`, soon.ID).Scan(&started); err != nil {
		t.Fatal(err)
	}
	if started.Before(*soon.StartAt) {
		t.Errorf("the first command was created at %v, before the start_at %v", started, soon.StartAt)
	}
}

// GET /v1/jobs/{id}/commands: cursor pages, filters checked, and scopes as
// for the job: a key without read sees its own jobs' commands only.
func TestJobCommandsRoute(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", fastJobs, func(cfg *maintenance.Config) { cfg.JobInterval = 20 * time.Millisecond })
	ids, _ := provision(t, sys, "dev", 5)
	actor := newAPI(t, e.URL, sys.APIKey(t, db.ScopeCommands))
	full := newAPI(t, e.URL, sys.APIKey(t))
	j := postJob(t, actor, `{"name":"get_state","target":`+devicesTarget(ids)+`,"rate":1000}`)
	waitJob(t, sys, j.ID, 20*time.Second, "every command", func(j db.Job) bool { return j.Created == 5 })

	// Pages of 2, in the order the job created them (device order).
	var got []string
	query := "?limit=2"
	for range 5 {
		page := jobCommands(t, actor, j.ID, query)
		for _, cmd := range page.Commands {
			got = append(got, cmd.DeviceID)
			if cmd.Status != command.Pending || cmd.ExpiresAt.IsZero() {
				t.Errorf("a command to an offline device: %+v", cmd)
			}
		}
		if page.Next == "" {
			break
		}
		query = "?limit=2&cursor=" + page.Next
	}
	if !slices.Equal(got, ids) {
		t.Errorf("paged through %v, want %v", got, ids)
	}
	page := jobCommands(t, full, j.ID, "?status=pending,failed&limit=1")
	if len(page.Commands) != 1 || page.Next == "" {
		t.Fatalf("a first page of pending: %+v", page)
	}
	// A cursor holds its filter: another is refused.
	for _, q := range []string{"?cursor=" + page.Next, "?status=failed&cursor=" + page.Next, "?status=pending&cursor=" + page.Next[:len(page.Next)-2] + "AA"} {
		resp, body := full.call(http.MethodGet, "/v1/jobs/"+j.ID.String()+"/commands"+q, "")
		wantProblem(t, resp, body, http.StatusBadRequest, "invalid-cursor")
	}
	if next := jobCommands(t, full, j.ID, "?status=failed,pending&limit=1&cursor="+page.Next); len(next.Commands) != 1 || next.Commands[0].DeviceID != ids[1] {
		t.Errorf("the second page, statuses in another order: %s", summary(next.Commands))
	}
	if page := jobCommands(t, full, j.ID, "?device="+ids[3]); summary(page.Commands) != ids[3]+"/1:pending" {
		t.Errorf("one device's: %s", summary(page.Commands))
	}

	for _, tc := range []struct{ query, slug, detail string }{
		{"?status=sleeping", "invalid-query", "status"},
		{"?status=failed&status=done", "invalid-query", "status"},
		{"?attempts=some", "invalid-query", "attempts"},
		{"?limit=0", "invalid-query", "limit"},
		{"?limit=1001", "invalid-query", "limit"},
		{"?staus=failed", "invalid-query", "staus"},
		{"?error=" + strings.Repeat("x", 257), "invalid-query", "error"},
		{"?device=" + strings.Repeat("d", 129), "invalid-query", "device"},
		{"?cursor=tampered", "invalid-cursor", "cursor"},
	} {
		resp, body := full.call(http.MethodGet, "/v1/jobs/"+j.ID.String()+"/commands"+tc.query, "")
		if p := wantProblem(t, resp, body, http.StatusBadRequest, tc.slug); !strings.Contains(p.Detail, tc.detail) {
			t.Errorf("%s: detail %q should name %q", tc.query, p.Detail, tc.detail)
		}
	}
	resp, body := full.call(http.MethodGet, "/v1/jobs/not-a-uuid/commands", "")
	wantProblem(t, resp, body, http.StatusBadRequest, "invalid-job-id")
	resp, body = full.call(http.MethodGet, "/v1/jobs/"+uuid.NewString()+"/commands", "")
	wantProblem(t, resp, body, http.StatusNotFound, "job-not-found")

	// Scopes: commands; without read, the key's own jobs only.
	other := newAPI(t, e.URL, sys.APIKey(t, db.ScopeCommands))
	resp, body = other.call(http.MethodGet, "/v1/jobs/"+j.ID.String()+"/commands", "")
	wantProblem(t, resp, body, http.StatusNotFound, "job-not-found")
	reader := newAPI(t, e.URL, sys.APIKey(t, db.ScopeRead))
	resp, body = reader.call(http.MethodGet, "/v1/jobs/"+j.ID.String()+"/commands", "")
	wantProblem(t, resp, body, http.StatusForbidden, "insufficient-scope")
	if n := len(jobCommands(t, full, j.ID, "").Commands); n != 5 {
		t.Errorf("a key with read sees %d of another key's job's commands, want 5", n)
	}
}
