package edge_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/edge"
)

// TestLogs runs an edge (with its maintenance) logging JSON, as `switchboard
// edge` does when its stderr is not a terminal, and reads the log line by
// line: refused credentials with the client's address, at most RefusalLogs
// of them, then a count of the rest; a job's creation and end.
func TestLogs(t *testing.T) {
	t.Parallel()
	const limit = 4
	sys := testsys.New(t)
	var logs testsys.Logs
	sys.Log = logs.Logger()
	e := sys.StartEdge(t, "edge-a", func(c *edge.Config) {
		fastJobs(c)
		c.LogInterval, c.RefusalLogs = time.Hour, limit
	}, fastRunner)
	readOnly := newAPI(t, e.URL, sys.APIKey(t, db.ScopeRead))
	sys.AddDevice(t, "dev-1")

	// A key without the scope: 403, with the key's id.
	if resp, _ := readOnly.call(http.MethodPost, "/v1/jobs", `{"desired":{"a":1},"target":{"all":true}}`); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("POST /v1/jobs with a read key: %d, want 403", resp.StatusCode)
	}
	scope := logs.Await(t, "request refused", map[string]any{"level": "INFO", "edge": "edge-a", "status": 403,
		"reason": "insufficient_scope", "remote": "127.0.0.1", "method": "POST", "path": "/v1/jobs"})
	if k, _ := scope["key"].(float64); k <= 0 {
		t.Errorf("the 403 line names no key: %v", scope)
	}
	// No key, an unknown key: 401s, with no key to name.
	if resp, _ := newAPI(t, e.URL, "").call(http.MethodGet, "/v1/devices", ""); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("no key: %d, want 401", resp.StatusCode)
	}
	if resp, _ := newAPI(t, e.URL, "sbk_unknown").call(http.MethodGet, "/v1/devices", ""); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("an unknown key: %d, want 401", resp.StatusCode)
	}
	for _, reason := range []string{"no_key", "unknown_key"} {
		m := logs.Await(t, "request refused", map[string]any{"status": 401, "reason": reason, "remote": "127.0.0.1", "path": "/v1/devices"})
		if _, ok := m["key"]; ok {
			t.Errorf("a refusal of an unknown key names one: %v", m)
		}
	}

	// A job: created (by the edge) and ended (by maintenance), named.
	admin := newAPI(t, e.URL, sys.APIKey(t))
	j := postStateJob(t, admin, `{"desired":{"mode":"eco"},"target":{"all":true}}`)
	logs.Await(t, "job created", map[string]any{"level": "INFO", "edge": "edge-a", "job": j.ID, "kind": "state", "total": 1, "status": "running"})
	end := logs.Await(t, "job ended", map[string]any{"level": "INFO", "edge": "edge-a", "job": j.ID, "kind": "state", "total": 1, "status": "done"})
	if _, ok := end["counts"].(map[string]any); !ok {
		t.Errorf("the job's end has no counts: %v", end)
	}

	// A flood: only the limit is logged; the rest are counted as the
	// edge stops.
	const flood = 30
	anon := newAPI(t, e.URL, "")
	for range flood {
		if resp, _ := anon.call(http.MethodGet, "/v1/devices", ""); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("no key: %d, want 401", resp.StatusCode)
		}
	}
	if got := len(logs.Find(t, "request refused", nil)); got != limit {
		t.Errorf("%d refusals logged, want %d", got, limit)
	}
	if err := e.Stop(); err != nil {
		t.Fatal(err)
	}
	more := logs.Find(t, "request refused: more not logged", nil)
	if want := 3 + flood - limit; len(more) != 1 || more[0]["more"] != float64(want) {
		t.Errorf("the count of the rest: %v, want one line with more=%d", more, want)
	}
	for _, m := range logs.Lines(t) {
		for _, name := range []string{"device_id", "node_id", "edge_id", "command_id", "job_id", "key_id", "id"} {
			if _, ok := m[name]; ok {
				t.Errorf("a log line names a field %q: %v", name, m)
			}
		}
	}
}
