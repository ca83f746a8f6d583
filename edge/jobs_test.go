package edge_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/db/dbtest"
	"github.com/switchboard-iot/switchboard/device"
	"github.com/switchboard-iot/switchboard/edge"
	"github.com/switchboard-iot/switchboard/internal/secret"
	"github.com/switchboard-iot/switchboard/maintenance"
)

// fastJobs makes an edge stream its jobs briskly, and fastRunner the job
// runner beside it step them briskly.
func fastJobs(cfg *edge.Config) {
	cfg.JobStreamInterval = 100 * time.Millisecond
	cfg.KeyRate = -1 // the tests poll
}

func fastRunner(cfg *maintenance.Config) { cfg.JobInterval = 50 * time.Millisecond }

// provision adds devices prefix-0000 … and returns their secrets by id.
func provision(t *testing.T, sys *testsys.System, prefix string, n int) (ids []string, secrets map[string]string) {
	t.Helper()
	secrets = make(map[string]string, n)
	creds := make([]db.Credential, n)
	for i := range n {
		id := fmt.Sprintf("%s-%04d", prefix, i)
		s := secret.New("")
		ids, secrets[id] = append(ids, id), s
		creds[i] = db.Credential{ID: id, SecretHash: secret.Hash(s)}
	}
	if _, err := sys.Store.AddDevices(context.Background(), creds); err != nil {
		t.Fatal(err)
	}
	return ids, secrets
}

// fleet is SDK devices run together, stopped when the test ends.
type fleet struct {
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	connected sync.WaitGroup // each device's first session
}

// connect starts these devices, spread over the nodes in turn, each
// answering "get_state" with handle; wait on f.connected for their first
// sessions.
func connect(t *testing.T, nodes []*testsys.Node, ids []string, secrets map[string]string, handle func(id string) device.HandlerFunc) *fleet {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	f := &fleet{cancel: cancel}
	t.Cleanup(func() { cancel(); f.wg.Wait() })
	for i, id := range ids {
		node := nodes[i%len(nodes)]
		var once sync.Once
		f.connected.Add(1)
		c := device.New(device.Config{
			URL: node.URL, ID: id, Secret: secrets[id], TLS: node.TLS(), Log: dbtest.Logger(),
			MinBackoff: 20 * time.Millisecond, MaxBackoff: 500 * time.Millisecond,
			OnConnect: func() { once.Do(f.connected.Done) },
		})
		c.Handle("get_state", handle(id))
		f.wg.Go(func() { _ = c.Run(ctx) })
	}
	return f
}

// waitConnected waits for every device's first session, at most limit.
func (f *fleet) waitConnected(t *testing.T, limit time.Duration) {
	t.Helper()
	done := make(chan struct{})
	go func() { f.connected.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(limit):
		t.Fatalf("devices not connected within %v", limit)
	}
}

func ok(string) device.HandlerFunc {
	return func(context.Context, json.RawMessage) (any, error) { return map[string]any{"celsius": 21.5}, nil }
}

// postJob creates a job and checks the 201 and its Location.
func postJob(t *testing.T, c *api, body string) db.Job {
	t.Helper()
	resp, b := c.call(http.MethodPost, "/v1/jobs", body)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST /v1/jobs: status %d, want 201; body %s", resp.StatusCode, b)
	}
	var j db.Job
	if err := json.Unmarshal(b, &j); err != nil {
		t.Fatalf("decoding %s: %v", b, err)
	}
	if loc := resp.Header.Get("Location"); loc != "/v1/jobs/"+j.ID.String() {
		t.Errorf("Location %q, want /v1/jobs/%s", loc, j.ID)
	}
	if j.Status != db.JobRunning || j.Counts == nil {
		t.Errorf("a new job: %s", b)
	}
	return j
}

func getJob(t *testing.T, c *api, id uuid.UUID) (db.Job, map[string]json.RawMessage) {
	t.Helper()
	resp, b := c.call(http.MethodGet, "/v1/jobs/"+id.String(), "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET job: status %d; body %s", resp.StatusCode, b)
	}
	var j db.Job
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(b, &j); err != nil || json.Unmarshal(b, &fields) != nil {
		t.Fatalf("decoding %s: %v", b, err)
	}
	return j, fields
}

// waitJob polls the job's row (not the API, which has its own limits)
// until cond holds.
func waitJob(t *testing.T, sys *testsys.System, id uuid.UUID, limit time.Duration, what string, cond func(db.Job) bool) db.Job {
	t.Helper()
	var j db.Job
	testsys.EventuallyWithin(t, limit, what, func() bool {
		var err error
		j, err = sys.Store.Job(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		return cond(j)
	})
	return j
}

// edgeMetric reads one sample from an edge's /metrics (ops is its ops
// listener); 0 when absent.
func edgeMetric(t *testing.T, ops, series string) float64 {
	t.Helper()
	_, body := newAPI(t, ops, "").call(http.MethodGet, "/metrics", "")
	for line := range strings.Lines(string(body)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	return 0
}

// The "done when": a job to 2,000 devices, half of them offline at
// the start and connecting during the rollout, through two nodes and two
// edges whose runners race for the job. Every device's command ends
// final, once; the counts add up; the nodes were woken once per node per
// batch, never per device.
func TestJobRollout(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	nodes := []*testsys.Node{sys.StartNode(t, "node-a", nil), sys.StartNode(t, "node-b", nil)}
	edges := []*testsys.Edge{sys.StartEdge(t, "edge-a", fastJobs, fastRunner), sys.StartEdge(t, "edge-b", fastJobs, fastRunner)}
	c := newAPI(t, edges[0].URL, sys.APIKey(t))
	ids, secrets := provision(t, sys, "therm", 2000)
	// Every other device is online at the start: the others connect
	// while the job runs, so some get their command on connecting and
	// some by the job's wake-up.
	var early, late []string
	for i, id := range ids {
		if i%2 == 0 {
			early = append(early, id)
		} else {
			late = append(late, id)
		}
	}
	start := time.Now()
	connect(t, nodes, early, secrets, ok).waitConnected(t, 60*time.Second)
	t.Logf("%d devices connected in %v", len(early), time.Since(start).Round(time.Millisecond))

	start = time.Now()
	j := postJob(t, c, `{"name":"get_state","target":{"all":true},"rate":400}`)
	if j.Total != 2000 || j.Counts.Unsent != 2000 {
		t.Fatalf("total %d, counts %+v; want 2000 unsent", j.Total, *j.Counts)
	}
	waitJob(t, sys, j.ID, 20*time.Second, "the first batches", func(j db.Job) bool { return j.Created > 0 })
	lateFleet := connect(t, nodes, late, secrets, ok)
	lateFleet.waitConnected(t, 60*time.Second)
	t.Logf("the other %d connected %v into the job", len(late), time.Since(start).Round(time.Millisecond))
	j = waitJob(t, sys, j.ID, 60*time.Second, "the job to end", func(j db.Job) bool { return j.Status.Final() })
	t.Logf("the job ended after %v", time.Since(start).Round(time.Millisecond))

	j, fields := getJob(t, c, j.ID)
	if j.Status != db.JobDone || j.Total != 2000 || j.Created != 2000 {
		t.Fatalf("job %+v, want done with 2000 created", j)
	}
	want := db.JobCounts{Done: 2000}
	if *j.Counts != want || j.Counts.Final() != j.Total || *j.Progress != 1 {
		t.Errorf("counts %+v progress %v, want %+v and 1", *j.Counts, *j.Progress, want)
	}
	for _, f := range []string{"id", "status", "total", "counts", "name", "args", "target", "rate", "abort_failed_percent", "retry", "created", "progress", "created_at", "finished_at"} {
		if _, ok := fields[f]; !ok {
			t.Errorf("the job has no %q", f)
		}
	}
	if n := count(t, sys, fmt.Sprintf(`SELECT count(DISTINCT device_id) FROM commands WHERE job_id = '%s' AND status = 'done'`, j.ID)); n != 2000 {
		t.Errorf("%d devices have a done command of the job, want 2000", n)
	}
	if n := count(t, sys, fmt.Sprintf(`SELECT count(*) FROM commands WHERE job_id = '%s'`, j.ID)); n != 2000 {
		t.Errorf("%d commands for the job, want one per device (2000)", n)
	}
	if n := count(t, sys, fmt.Sprintf(`SELECT count(*) FROM commands WHERE job_id = '%s' AND reply_to IS NOT NULL`, j.ID)); n != 0 {
		t.Errorf("%d job commands name an edge to wake; no client waits on them", n)
	}

	// One wake-up per node per batch: never one per device.
	var batches, wakeups float64
	for _, e := range edges {
		batches += edgeMetric(t, e.Ops, fmt.Sprintf(`switchboard_edge_job_batches_total{edge=%q}`, e.ID))
		if created := edgeMetric(t, e.Ops, fmt.Sprintf(`switchboard_edge_job_commands_created_total{edge=%q}`, e.ID)); created == 0 {
			t.Logf("edge %s created no commands (the other claimed every step)", e.ID)
		}
	}
	for _, n := range nodes {
		wakeups += n.Metric(t, fmt.Sprintf(`switchboard_conn_job_wakeups_total{node=%q}`, n.ID))
	}
	t.Logf("%v batches, %v job wake-ups at the nodes", batches, wakeups)
	if batches == 0 || wakeups == 0 || wakeups > batches*float64(len(nodes)) {
		t.Errorf("%v job wake-ups for %v batches over %d nodes: want at most one per node per batch", wakeups, batches, len(nodes))
	}
	if batches > 200 {
		t.Errorf("%v batches for 2000 devices at 400/s: batches are not rate × interval", batches)
	}
}

// Two runners can never create a device's command twice for one attempt:
// the schema refuses it, whatever the runners do. A retry is the next
// attempt.
func TestJobCommandsUnique(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	sys.AddDevice(t, "dev-1")
	job := uuid.New()
	insert := `INSERT INTO commands (id, device_id, name, timeout, expires_at, job_id, job_attempt) VALUES ($1, 'dev-1', 'x', '10s', now() + interval '1h', $2, $3)`
	if _, err := sys.Pool.Exec(t.Context(), insert, uuid.New(), job, 1); err != nil {
		t.Fatal(err)
	}
	_, err := sys.Pool.Exec(t.Context(), insert, uuid.New(), job, 1)
	if err == nil || !strings.Contains(err.Error(), "commands_job_attempt") {
		t.Fatalf("a second command of one job for one device: %v, want a unique violation", err)
	}
	if _, err := sys.Pool.Exec(t.Context(), insert, uuid.New(), job, 2); err != nil {
		t.Errorf("the device's second attempt: %v", err)
	}
}

// Cancel cancels what was not delivered, creates nothing more, and leaves
// the final commands as they were.
func TestJobCancel(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", nil)
	e := sys.StartEdge(t, "edge-a", fastJobs, fastRunner)
	c := newAPI(t, e.URL, sys.APIKey(t))
	ids, secrets := provision(t, sys, "dev", 10)
	connect(t, []*testsys.Node{node}, ids[:5], secrets, ok).waitConnected(t, 20*time.Second)

	j := postJob(t, c, `{"name":"get_state","target":{"devices":["dev-0000","dev-0001","dev-0002","dev-0003","dev-0004","dev-0005","dev-0006","dev-0007","dev-0008","dev-0009"]},"rate":1000}`)
	waitJob(t, sys, j.ID, 20*time.Second, "the online devices to answer", func(j db.Job) bool {
		return j.Counts.Done == 5 && j.Counts.Pending == 5
	})
	resp, b := c.call(http.MethodPost, "/v1/jobs/"+j.ID.String()+"/cancel", "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("cancel: status %d; body %s", resp.StatusCode, b)
	}
	var got db.Job
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	want := db.JobCounts{Done: 5, Cancelled: 5}
	if got.Status != db.JobCancelled || got.FinishedAt == nil || *got.Counts != want {
		t.Fatalf("cancelled job %s, want cancelled with counts %+v", b, want)
	}
	if n := count(t, sys, fmt.Sprintf(`SELECT count(*) FROM commands WHERE job_id = '%s' AND status = 'cancelled' AND error = 'job cancelled'`, j.ID)); n != 5 {
		t.Errorf("%d commands cancelled with 'job cancelled', want 5", n)
	}
	// Again: a finished job is answered as it is.
	resp, b = c.call(http.MethodPost, "/v1/jobs/"+j.ID.String()+"/cancel", "")
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), `"status":"cancelled"`) {
		t.Errorf("cancelling again: %d %s", resp.StatusCode, b)
	}

	// A slow job cancelled early leaves targets without a command, for good.
	slow := postJob(t, c, `{"name":"get_state","target":{"label":"!nothing"},"rate":2}`)
	waitJob(t, sys, slow.ID, 20*time.Second, "the first command", func(j db.Job) bool { return j.Created > 0 })
	resp, b = c.call(http.MethodPost, "/v1/jobs/"+slow.ID.String()+"/cancel", "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("cancel: status %d; body %s", resp.StatusCode, b)
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got.Counts.Unsent == 0 || got.Counts.Unsent+got.Created != 10 {
		t.Errorf("cancelled slow job: %s, want unsent targets", b)
	}
	// Another runner's step (another job keeps the runner busy) creates
	// nothing for it.
	other := postJob(t, c, `{"name":"get_state","target":{"devices":["dev-0000"]}}`)
	waitJob(t, sys, other.ID, 20*time.Second, "another job to finish", func(j db.Job) bool { return j.Status == db.JobDone })
	if after, _ := getJob(t, c, slow.ID); after.Created != got.Created || after.Status != db.JobCancelled {
		t.Errorf("after the cancel: created %d (was %d), status %s", after.Created, got.Created, after.Status)
	}
	if n := count(t, sys, fmt.Sprintf(`SELECT count(*) FROM commands WHERE job_id = '%s'`, slow.ID)); n != got.Created {
		t.Errorf("%d commands, want the %d created before the cancel", n, got.Created)
	}
}

// The abort rule: once more than abort_failed_percent of the final
// commands failed, the job stops creating commands.
func TestJobAbort(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", nil)
	e := sys.StartEdge(t, "edge-a", fastJobs, fastRunner)
	c := newAPI(t, e.URL, sys.APIKey(t))
	ids, secrets := provision(t, sys, "dev", 60)
	// Every other device fails: 50% > 30%.
	connect(t, []*testsys.Node{node}, ids, secrets, func(id string) device.HandlerFunc {
		n, _ := strconv.Atoi(id[len(id)-4:])
		if n%2 == 0 {
			return ok(id)
		}
		return func(context.Context, json.RawMessage) (any, error) { return nil, errors.New("sensor fault") }
	}).waitConnected(t, 20*time.Second)

	j := postJob(t, c, `{"name":"get_state","target":{"all":true},"rate":10,"abort_failed_percent":30}`)
	j = waitJob(t, sys, j.ID, 30*time.Second, "the job to end", func(j db.Job) bool { return j.Status.Final() })
	if j.Status != db.JobAborted || j.FinishedAt == nil {
		t.Fatalf("job ended %s, want aborted", j.Status)
	}
	if j.Created >= j.Total || j.Counts.Unsent == 0 {
		t.Errorf("aborted job created %d of %d: the abort did not stop it", j.Created, j.Total)
	}
	if j.Counts.Final() < 10 {
		t.Errorf("aborted with %d final commands, want at least 10 judged", j.Counts.Final())
	}
	// What was delivered still ends; no more is created.
	j = waitJob(t, sys, j.ID, 20*time.Second, "the delivered commands to end", func(j db.Job) bool {
		return j.Counts.Pending+j.Counts.Delivered == 0
	})
	if n := count(t, sys, fmt.Sprintf(`SELECT count(*) FROM commands WHERE job_id = '%s'`, j.ID)); n != j.Created {
		t.Errorf("%d commands, want the %d created", n, j.Created)
	}
}

// A job's event stream: progress events with increasing ids, then one
// named after the final status, and the end.
func TestJobStream(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", nil)
	e := sys.StartEdge(t, "edge-a", fastJobs, fastRunner)
	c := newAPI(t, e.URL, sys.APIKey(t))
	ids, secrets := provision(t, sys, "dev", 20)
	if _, err := sys.Pool.Exec(t.Context(), `UPDATE devices SET labels = '{"room":"kitchen"}' WHERE id < 'dev-0010'`); err != nil {
		t.Fatal(err)
	}
	connect(t, []*testsys.Node{node}, ids, secrets, ok).waitConnected(t, 20*time.Second)

	j := postJob(t, c, `{"name":"get_state","args":{"verbose":true},"target":{"label":"room=kitchen"},"rate":5}`)
	if j.Total != 10 {
		t.Fatalf("total %d, want the 10 kitchen devices", j.Total)
	}
	_, sse := c.stream(http.MethodGet, "/v1/jobs/"+j.ID.String(), "")
	events := sse.all(t)
	if len(events) < 2 {
		t.Fatalf("events %s, want progress then done", eventsSummary(events))
	}
	for i, ev := range events {
		if ev.ID != strconv.Itoa(i+1) {
			t.Errorf("event %d has id %q, want %d", i, ev.ID, i+1)
		}
		want := "progress"
		if i == len(events)-1 {
			want = "done"
		}
		if ev.Name != want {
			t.Errorf("event %d named %q, want %q (%s)", i, ev.Name, want, eventsSummary(events))
		}
	}
	var last db.Job
	if err := json.Unmarshal([]byte(events[len(events)-1].Data), &last); err != nil {
		t.Fatal(err)
	}
	if last.Status != db.JobDone || last.Counts.Done != 10 {
		t.Errorf("last event %s", events[len(events)-1].Data)
	}
	// A finished job's stream is its final event alone; ids go on from
	// Last-Event-ID.
	_, sse = c.stream(http.MethodGet, "/v1/jobs/"+j.ID.String(), "", "Last-Event-ID", "7")
	if events = sse.all(t); len(events) != 1 || events[0].Name != "done" || events[0].ID != "8" {
		t.Errorf("the stream of a finished job: %s", eventsSummary(events))
	}
}

// Listing: newest first, by status, a page at a time.
func TestJobList(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", fastJobs, func(cfg *maintenance.Config) { cfg.JobInterval = time.Hour })
	c := newAPI(t, e.URL, sys.APIKey(t))
	sys.AddDevice(t, "dev-1")
	var made []uuid.UUID
	for range 3 {
		made = append(made, postJob(t, c, `{"name":"get_state","target":{"devices":["dev-1"]}}`).ID)
	}
	resp, b := c.call(http.MethodPost, "/v1/jobs/"+made[0].String()+"/cancel", "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("cancel: %d %s", resp.StatusCode, b)
	}
	list := func(query string) (ids []uuid.UUID, next string) {
		t.Helper()
		resp, b := c.call(http.MethodGet, "/v1/jobs"+query, "")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /v1/jobs%s: %d %s", query, resp.StatusCode, b)
		}
		var out struct {
			Jobs []db.Job `json:"jobs"`
			Next string   `json:"next"`
		}
		if err := json.Unmarshal(b, &out); err != nil {
			t.Fatal(err)
		}
		for _, j := range out.Jobs {
			ids = append(ids, j.ID)
		}
		return ids, out.Next
	}
	page, next := list("?limit=2")
	if len(page) != 2 || page[0] != made[2] || page[1] != made[1] || next == "" {
		t.Fatalf("first page %v next %q, want %v newest first", page, next, made[1:])
	}
	if page, next = list("?limit=2&cursor=" + next); len(page) != 1 || page[0] != made[0] || next != "" {
		t.Errorf("second page %v next %q, want %v and no next", page, next, made[0])
	}
	if page, _ = list("?status=cancelled"); len(page) != 1 || page[0] != made[0] {
		t.Errorf("cancelled jobs %v, want %v", page, made[0])
	}
	if page, _ = list("?status=running"); len(page) != 2 {
		t.Errorf("running jobs %v, want 2", page)
	}
	// An empty parameter is as if not given (a form's empty field).
	if page, _ = list("?status=&limit=&cursor="); len(page) != 3 {
		t.Errorf("jobs with empty parameters %v, want all 3", page)
	}
}

func TestJobBadInput(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", fastJobs, fastRunner)
	c := newAPI(t, e.URL, sys.APIKey(t))
	sys.AddDevice(t, "dev-1")
	many := make([]string, edge.MaxJobDevices+1)
	for i := range many {
		many[i] = fmt.Sprintf("%q", fmt.Sprintf("d%d", i))
	}
	bad := []struct {
		name, body string
		slug       string
	}{
		{"malformed JSON", `{"name":`, "invalid-json"},
		{"unknown field", `{"name":"x","target":{"all":true},"rat":5}`, "invalid-json"},
		{"no name", `{"target":{"all":true}}`, "invalid-command"},
		{"timeout over 10m", `{"name":"x","timeout":"11m","target":{"all":true}}`, "invalid-command"},
		{"ttl over 7d", `{"name":"x","ttl":"200h","target":{"all":true}}`, "invalid-command"},
		{"args an array", `{"name":"x","args":[1],"target":{"all":true}}`, "invalid-command"},
		{"no target", `{"name":"x"}`, "invalid-target"},
		{"empty target", `{"name":"x","target":{}}`, "invalid-target"},
		{"two kinds", `{"name":"x","target":{"all":true,"region":"ams"}}`, "invalid-target"},
		{"all false", `{"name":"x","target":{"all":false}}`, "invalid-target"},
		{"bad label selector", `{"name":"x","target":{"label":"=kitchen"}}`, "invalid-target"},
		{"label selector with a bad key", `{"name":"x","target":{"label":"-room=a"}}`, "invalid-target"},
		{"empty label selector", `{"name":"x","target":{"label":""}}`, "invalid-target"},
		{"empty region", `{"name":"x","target":{"region":""}}`, "invalid-target"},
		{"empty device list", `{"name":"x","target":{"devices":[]}}`, "invalid-target"},
		{"too many devices", `{"name":"x","target":{"devices":[` + strings.Join(many, ",") + `]}}`, "invalid-target"},
		{"unknown devices", `{"name":"x","target":{"devices":["dev-1","ghost-1","ghost-2"]}}`, "unknown-devices"},
		{"an impossible device id", `{"name":"x","target":{"devices":["no:colons"]}}`, "unknown-devices"},
		{"a label no device has", `{"name":"x","target":{"label":"room=attic"}}`, "no-targets"},
		{"a region no device is in", `{"name":"x","target":{"region":"nowhere"}}`, "no-targets"},
		{"rate 0", `{"name":"x","target":{"all":true},"rate":0}`, "invalid-rate"},
		{"negative rate", `{"name":"x","target":{"all":true},"rate":-5}`, "invalid-rate"},
		{"rate a string", `{"name":"x","target":{"all":true},"rate":"fast"}`, "invalid-rate"},
		{"rate too high", `{"name":"x","target":{"all":true},"rate":1e9}`, "invalid-rate"},
		{"abort over 100", `{"name":"x","target":{"all":true},"abort_failed_percent":101}`, "invalid-abort-failed-percent"},
		{"negative abort", `{"name":"x","target":{"all":true},"abort_failed_percent":-1}`, "invalid-abort-failed-percent"},
		{"abort a string", `{"name":"x","target":{"all":true},"abort_failed_percent":"half"}`, "invalid-abort-failed-percent"},
		{"title over 128 characters", `{"name":"x","target":{"all":true},"title":"` + strings.Repeat("é", 129) + `"}`, "invalid-job-text"},
		{"title of two lines", `{"name":"x","target":{"all":true},"title":"a\nb"}`, "invalid-job-text"},
		{"description with a control character", `{"name":"x","target":{"all":true},"description":"a\u0007b"}`, "invalid-job-text"},
		{"description over 2000 characters", `{"name":"x","target":{"all":true},"description":"` + strings.Repeat("a", 2001) + `"}`, "invalid-job-text"},
		{"retry without max_attempts", `{"name":"x","target":{"all":true},"retry":{"backoff":"1s"}}`, "invalid-retry"},
		{"retry of 0 attempts", `{"name":"x","target":{"all":true},"retry":{"max_attempts":0}}`, "invalid-retry"},
		{"retry of 11 attempts", `{"name":"x","target":{"all":true},"retry":{"max_attempts":11}}`, "invalid-retry"},
		{"retry of 2.5 attempts", `{"name":"x","target":{"all":true},"retry":{"max_attempts":2.5}}`, "invalid-retry"},
		{"retry attempts a string", `{"name":"x","target":{"all":true},"retry":{"max_attempts":"3"}}`, "invalid-retry"},
		{"negative backoff", `{"name":"x","target":{"all":true},"retry":{"max_attempts":3,"backoff":"-1s"}}`, "invalid-retry"},
		{"backoff over 1h", `{"name":"x","target":{"all":true},"retry":{"max_attempts":3,"backoff":"2h"}}`, "invalid-retry"},
		{"unknown retry field", `{"name":"x","target":{"all":true},"retry":{"max_attempts":3,"on":"failed"}}`, "invalid-json"},
		{"start_at not a time", `{"name":"x","target":{"all":true},"start_at":"tomorrow"}`, "invalid-start-at"},
		{"start_at a number", `{"name":"x","target":{"all":true},"start_at":1767225600}`, "invalid-start-at"},
		{"start_at without a zone", `{"name":"x","target":{"all":true},"start_at":"2030-01-02T03:04:05"}`, "invalid-start-at"},
		{"start_at past 30 days", `{"name":"x","target":{"all":true},"start_at":"2999-01-01T00:00:00Z"}`, "invalid-start-at"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := c.call(http.MethodPost, "/v1/jobs", tc.body)
			p := wantProblem(t, resp, body, http.StatusBadRequest, tc.slug)
			if p.Detail == "" {
				t.Error("no detail says what is wrong")
			}
			if tc.slug == "unknown-devices" && strings.Contains(tc.body, "ghost") &&
				(!strings.Contains(p.Detail, "ghost-1") || !strings.Contains(p.Detail, "ghost-2") || strings.Contains(p.Detail, "dev-1")) {
				t.Errorf("detail %q should name the unknown ids alone", p.Detail)
			}
		})
	}
	if n := count(t, sys, `SELECT count(*) FROM jobs`); n != 0 {
		t.Errorf("%d jobs stored by refused requests", n)
	}

	// A bad query parameter is invalid-query, as for GET /v1/devices and
	// the events routes; the detail names the parameter.
	for _, tc := range []struct{ method, path, slug, detail string }{
		{http.MethodGet, "/v1/jobs/not-a-uuid", "invalid-job-id", ""},
		{http.MethodPost, "/v1/jobs/not-a-uuid/cancel", "invalid-job-id", ""},
		{http.MethodGet, "/v1/jobs?status=sleeping", "invalid-query", "status"},
		{http.MethodGet, "/v1/jobs?limit=0", "invalid-query", "limit"},
		{http.MethodGet, "/v1/jobs?limit=1001", "invalid-query", "limit"},
		{http.MethodGet, "/v1/jobs?limit=x", "invalid-query", "limit"},
		{http.MethodGet, "/v1/jobs?staus=done", "invalid-query", "staus"},
		{http.MethodGet, "/v1/jobs?status=done&status=running", "invalid-query", "status"},
		{http.MethodGet, "/v1/jobs?cursor=tampered", "invalid-cursor", "cursor"},
	} {
		resp, body := c.call(tc.method, tc.path, "")
		p := wantProblem(t, resp, body, http.StatusBadRequest, tc.slug)
		if !strings.Contains(p.Detail, tc.detail) {
			t.Errorf("%s %s: detail %q should name %q", tc.method, tc.path, p.Detail, tc.detail)
		}
	}
	for _, path := range []string{"/v1/jobs/" + uuid.NewString(), "/v1/jobs/" + uuid.NewString() + "/cancel"} {
		method := http.MethodGet
		if strings.HasSuffix(path, "/cancel") {
			method = http.MethodPost
		}
		resp, body := c.call(method, path, "")
		wantProblem(t, resp, body, http.StatusNotFound, "job-not-found")
	}
	resp, body := c.call(http.MethodGet, "/v1/jobs/"+uuid.NewString(), "", "Accept", "text/event-stream", "Last-Event-ID", "x")
	wantProblem(t, resp, body, http.StatusBadRequest, "invalid-last-event-id")

	// Scopes: jobs need "commands".
	reader := newAPI(t, e.URL, sys.APIKey(t, db.ScopeRead))
	for _, tc := range []struct{ method, path string }{
		{http.MethodPost, "/v1/jobs"}, {http.MethodGet, "/v1/jobs"}, {http.MethodGet, "/v1/jobs/" + uuid.NewString()},
		{http.MethodPost, "/v1/jobs/" + uuid.NewString() + "/cancel"},
	} {
		resp, body := reader.call(tc.method, tc.path, `{"name":"x","target":{"all":true}}`)
		wantProblem(t, resp, body, http.StatusForbidden, "insufficient-scope")
	}
}
