package edge_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/device/protocol"
	"github.com/switchboard-iot/switchboard/maintenance"
)

// A job's command has the single command's limits, and a job's bytes
// (targets × args) are capped: a refused job stores nothing, not even a
// target snapshot (issue 15: ~1 MB args to every target were accepted).
func TestJobSizeLimits(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	// No runner steps the jobs: the test looks at what creation stored.
	e := sys.StartEdge(t, "edge-a", fastJobs, func(cfg *maintenance.Config) { cfg.JobInterval = time.Hour })
	c := newAPI(t, e.URL, sys.APIKey(t))
	provision(t, sys, "dev", 1200)
	if _, err := sys.Pool.Exec(t.Context(), `UPDATE devices SET labels = '{"batch":"small"}' WHERE id < 'dev-1000'`); err != nil {
		t.Fatal(err)
	}
	pad := func(n int) string { return `{"pad":"` + strings.Repeat("a", n) + `"}` }
	stored := func() int {
		return count(t, sys, `SELECT count(*) FROM jobs`) + count(t, sys, `SELECT count(*) FROM job_targets`) + countCommands(t, sys)
	}

	// ~1 MB of args fits the job's 1 MiB body but not a command: 413, as
	// the single command answers the same args.
	huge := pad(1000 << 10)
	resp, body := c.call(http.MethodPost, "/v1/jobs", `{"name":"x","args":`+huge+`,"target":{"devices":["dev-0000"]}}`)
	p := wantProblem(t, resp, body, http.StatusRequestEntityTooLarge, "request-too-large")
	if !strings.Contains(p.Detail, "args") {
		t.Errorf("detail %q should say the args are too large", p.Detail)
	}
	resp, body = c.sendCommand("dev-0000", `{"name":"x","args":`+huge+`}`)
	wantProblem(t, resp, body, http.StatusRequestEntityTooLarge, "request-too-large")
	// Just over the args limit, in a body a single command may send.
	resp, body = c.call(http.MethodPost, "/v1/jobs", `{"name":"x","args":`+pad(63<<10)+`,"target":{"devices":["dev-0000"]}}`)
	wantProblem(t, resp, body, http.StatusRequestEntityTooLarge, "request-too-large")
	resp, body = c.sendCommand("dev-0000", `{"name":"x","args":`+pad(63<<10)+`}`)
	wantProblem(t, resp, body, http.StatusRequestEntityTooLarge, "request-too-large")

	// 60 KiB of args is a command's, but not to 1,200 devices (72 MB).
	args := pad(60 << 10)
	resp, body = c.call(http.MethodPost, "/v1/jobs", `{"name":"x","args":`+args+`,"target":{"all":true}}`)
	p = wantProblem(t, resp, body, http.StatusRequestEntityTooLarge, "job-too-large")
	if !strings.Contains(p.Detail, "64 MiB") {
		t.Errorf("detail %q should name the limit", p.Detail)
	}
	if n := stored(); n != 0 {
		t.Fatalf("refused jobs stored %d rows", n)
	}
	// To 1,000 devices it is 59 MiB: within the limit.
	j := postJob(t, c, `{"name":"x","args":`+args+`,"target":{"label":"batch=small"}}`)
	if j.Total != 1000 {
		t.Errorf("total %d, want 1000", j.Total)
	}
}

// A job stream's Last-Event-ID must be one a stream could have sent: the
// largest int64 was taken, and the next event's id overflowed to a
// negative number (issue 15). Every stream's resume point is checked.
func TestLastEventIDBounds(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", fastJobs, func(cfg *maintenance.Config) { cfg.JobInterval = time.Hour })
	c := newAPI(t, e.URL, sys.APIKey(t))
	sys.AddDevice(t, "dev-1")
	j := postJob(t, c, `{"name":"get_state","target":{"devices":["dev-1"]}}`)
	resp, _ := c.sendCommand("dev-1", `{"name":"get_state"}`)
	cmd := commandIDFrom(t, resp)

	for _, path := range []string{
		"/v1/jobs/" + j.ID.String(),
		"/v1/commands/" + cmd.String() + "/events",
		"/v1/devices/dev-1/events",
		"/v1/events",
	} {
		for _, id := range []string{"9223372036854775807", "9223372036854775808", "-1", "1e3"} {
			resp, body := c.call(http.MethodGet, path, "", "Accept", "text/event-stream", "Last-Event-ID", id)
			wantProblem(t, resp, body, http.StatusBadRequest, "invalid-last-event-id")
		}
	}
	// A sane resume point still resumes.
	_, sse := c.stream(http.MethodGet, "/v1/jobs/"+j.ID.String(), "", "Last-Event-ID", "41")
	if ev := sse.must(t); ev.ID != "42" || ev.Name != "progress" {
		t.Errorf("resumed after 41: event %q %q, want id 42", ev.ID, ev.Name)
	}
}

// Args are measured as a node sends them, after jsonb: 1e70000 is seven
// bytes in a request and 70,001 digits in a frame, so a command carrying it
// would outgrow a device's 64 KiB.
func TestArgsMeasuredAsStored(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)
	c := newAPI(t, e.URL, sys.APIKey(t))
	sys.AddDevice(t, "dev-1")
	for _, args := range []string{`{"n":1e70000}`, `{"a":[1e40000,2e40000]}`, `{"f":1e-16000,"g":1e-16000,"h":1e-16000,"i":1e-16000,"j":1e-16000}`} {
		resp, body := c.sendCommand("dev-1", `{"name":"x","args":`+args+`}`)
		wantProblem(t, resp, body, http.StatusRequestEntityTooLarge, "request-too-large")
		resp, body = c.call(http.MethodPost, "/v1/jobs", `{"name":"x","args":`+args+`,"target":{"devices":["dev-1"]}}`)
		wantProblem(t, resp, body, http.StatusRequestEntityTooLarge, "request-too-large")
	}
	if n := countCommands(t, sys); n != 0 {
		t.Fatalf("refused commands stored %d rows", n)
	}

	// The measure is an upper bound of what PostgreSQL gives back, compacted.
	for _, args := range []string{
		`{"a":1e5}`, `{"a":-1.5e-3}`, `{"a":1.50}`, `{"a":0e99}`, `{"a":-0.0}`, `{"a":12.5e1}`,
		`{"a":1E+2, "b" : [ 1, 2 ]}`, `{"s":"\u00e9\n\/\"<&>"}`, `{"a":123456789e-20}`, `{"a":5e-1}`,
	} {
		var stored string
		if err := sys.Pool.QueryRow(t.Context(), `SELECT $1::jsonb::text`, args).Scan(&stored); err != nil {
			t.Fatal(err)
		}
		frame, err := protocol.Encode(protocol.Message{Type: protocol.TypeCommand, Args: json.RawMessage(stored)})
		if err != nil {
			t.Fatal(err)
		}
		sent := len(frame) - len(`{"type":"command","args":}`)
		size, err := protocol.StoredSize([]byte(args))
		if err != nil || size < sent {
			t.Errorf("%s: measured %d (%v), but a node sends %d bytes (%s)", args, size, err, sent, stored)
		}
	}
}
