package edge_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-iot/switchboard/app/testsys"
)

// Answers write every duration one way, without zero units ("1h", not
// "1h0m0s"), whichever way the request wrote it; a request's duration
// that is not one is 400 invalid-duration naming its field, and stores
// nothing.
func TestDurations(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)
	c := newAPI(t, e.URL, sys.APIKey(t))
	sys.AddDevice(t, "dev-1")

	// A command's timeout, given as a Go duration of any spelling or as
	// seconds (dev-1 is offline: the command waits, answered at once).
	for given, want := range map[string]string{
		`"1m30s"`: "1m30s", `"0h1m30s"`: "1m30s", `90`: "1m30s", `"600s"`: "10m", `"1.5s"`: "1.5s",
		`"2500ms"`: "2.5s", `null`: "10s",
	} {
		resp, body := c.sendCommand("dev-1", `{"name":"x","timeout":`+given+`,"ttl":"1h0m0s"}`)
		_, fields := wantCommand(t, resp, body, http.StatusAccepted)
		if got := string(fields["timeout"]); got != `"`+want+`"` {
			t.Errorf("timeout %s answered as %s, want %q", given, got, want)
		}
		wantSchema(t, "Command", body)
	}

	// A job's timeout, ttl and retry backoff, in its answer and in the list.
	start := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	resp, body := c.call(http.MethodPost, "/v1/jobs", `{"name":"x","target":{"devices":["dev-1"]},"start_at":"`+start+
		`","timeout":"1m0s","ttl":3600,"retry":{"max_attempts":2,"backoff":"0h0m30s"}}`)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST /v1/jobs: %d %s", resp.StatusCode, body)
	}
	wantJobDurations := func(body []byte) {
		t.Helper()
		wantSchema(t, "Job", body)
		for _, want := range []string{`"timeout":"1m"`, `"ttl":"1h"`, `"backoff":"30s"`} {
			if !strings.Contains(string(body), want) {
				t.Errorf("job %s: want %s", body, want)
			}
		}
	}
	wantJobDurations(body)
	_, body = c.call(http.MethodGet, "/v1/jobs", "")
	var list struct{ Jobs []json.RawMessage }
	if err := json.Unmarshal(body, &list); err != nil || len(list.Jobs) != 1 {
		t.Fatalf("GET /v1/jobs: %s", body)
	}
	wantJobDurations(list.Jobs[0])

	// A duration that is not one: invalid-duration, the field named
	// (however deep), nothing stored.
	commands := countCommands(t, sys)
	for _, tc := range []struct{ path, body, field string }{
		{"/v1/devices/dev-1/commands", `{"name":"x","timeout":"soon"}`, "timeout:"},
		{"/v1/devices/dev-1/commands", `{"name":"x","ttl":true}`, "ttl:"},
		{"/v1/devices/dev-1/commands", `{"name":"x","ttl":"10"}`, "ttl:"},
		{"/v1/devices/dev-1/commands", `{"name":"x","timeout":1e300}`, "timeout:"},
		{"/v1/jobs", `{"name":"x","target":{"all":true},"timeout":{}}`, "timeout:"},
		{"/v1/jobs", `{"name":"x","target":{"all":true},"ttl":"1 day"}`, "ttl:"},
		{"/v1/jobs", `{"name":"x","target":{"all":true},"retry":{"max_attempts":2,"backoff":"later"}}`, "retry.backoff:"},
		{"/v1/devices/dev-1/rotate", `{"grace":"a while"}`, "grace:"},
		{"/v1/apikeys", `{"name":"x","expires_in":"1 month"}`, "expires_in:"},
	} {
		resp, body := c.call(http.MethodPost, tc.path, tc.body)
		p := wantProblem(t, resp, body, http.StatusBadRequest, "invalid-duration")
		if !strings.HasPrefix(p.Detail, tc.field) || !strings.Contains(p.Detail, `"10s"`) {
			t.Errorf("%s %s: detail %q, want it to name %s and say what a duration is", tc.path, tc.body, p.Detail, tc.field)
		}
	}
	if n := countCommands(t, sys); n != commands {
		t.Errorf("%d commands stored by refused requests", n-commands)
	}
	var jobs int
	if err := sys.Pool.QueryRow(t.Context(), `SELECT count(*) FROM jobs`).Scan(&jobs); err != nil || jobs != 1 {
		t.Errorf("%d jobs (%v), want the one accepted", jobs, err)
	}

	// Problem details write durations the same way.
	resp, body = c.sendCommand("dev-1", `{"name":"x","ttl":"200h"}`)
	if p := wantProblem(t, resp, body, http.StatusBadRequest, "invalid-command"); !strings.Contains(p.Detail, "168h, got 200h") {
		t.Errorf("detail %q, want the bounds written short", p.Detail)
	}
}
