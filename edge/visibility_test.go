package edge_test

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/maintenance"
)

// What each scope may learn (docs/api.md): "read" sees the fleet, every
// key's jobs and commands; "commands" acts, and follows what it sent. A
// commands-only key used to learn labels and device ids through job
// targets (issue 15): a job by selector needs "read" too, and without
// "read" a key sees only its own jobs and commands.
func TestScopeVisibility(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", fastJobs, func(cfg *maintenance.Config) { cfg.JobInterval = 20 * time.Millisecond })
	provision(t, sys, "dev", 3)
	if _, err := sys.Pool.Exec(t.Context(), `UPDATE devices SET labels = '{"room":"kitchen"}'`); err != nil {
		t.Fatal(err)
	}
	full := newAPI(t, e.URL, sys.APIKey(t))
	actor := newAPI(t, e.URL, sys.APIKey(t, db.ScopeCommands))
	other := newAPI(t, e.URL, sys.APIKey(t, db.ScopeCommands))

	// A selector tells which devices match: it needs "read" as well.
	for _, target := range []string{`{"label":"room=kitchen"}`, `{"label":"room=attic"}`, `{"all":true}`, `{"region":"ams"}`} {
		resp, body := actor.call(http.MethodPost, "/v1/jobs", `{"name":"get_state","target":`+target+`}`)
		p := wantProblem(t, resp, body, http.StatusForbidden, "insufficient-scope")
		if !strings.Contains(p.Detail, `"commands"`) || !strings.Contains(p.Detail, `"read"`) {
			t.Errorf("target %s: detail %q should name both scopes", target, p.Detail)
		}
		if got := resp.Header.Get("WWW-Authenticate"); !strings.Contains(got, `scope="commands read"`) {
			t.Errorf("target %s: WWW-Authenticate %q, want scope=\"commands read\"", target, got)
		}
	}
	if n := count(t, sys, `SELECT count(*) FROM jobs`); n != 0 {
		t.Fatalf("refused jobs stored %d rows", n)
	}
	// A device list names its devices already: the key may hear which
	// of them do not exist, as a single command's 404 would tell it.
	resp, body := actor.call(http.MethodPost, "/v1/jobs", `{"name":"get_state","target":{"devices":["dev-0000","ghost"]}}`)
	if p := wantProblem(t, resp, body, http.StatusBadRequest, "unknown-devices"); !strings.Contains(p.Detail, "ghost") {
		t.Errorf("detail %q should name the unknown id", p.Detail)
	}
	mine := postJob(t, actor, `{"name":"get_state","target":{"devices":["dev-0000"]}}`)
	theirs := postJob(t, full, `{"name":"get_state","target":{"label":"room=kitchen"}}`)

	// Jobs: a key without "read" sees its own, and no other's.
	listed := func(c *api) []uuid.UUID {
		t.Helper()
		resp, b := c.call(http.MethodGet, "/v1/jobs", "")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /v1/jobs: %d %s", resp.StatusCode, b)
		}
		var out struct{ Jobs []db.Job }
		if err := json.Unmarshal(b, &out); err != nil {
			t.Fatal(err)
		}
		var ids []uuid.UUID
		for _, j := range out.Jobs {
			ids = append(ids, j.ID)
		}
		return ids
	}
	if got := listed(actor); !slices.Equal(got, []uuid.UUID{mine.ID}) {
		t.Errorf("the commands key lists jobs %v, want its own %v", got, mine.ID)
	}
	if got := listed(other); len(got) != 0 {
		t.Errorf("another commands key lists jobs %v, want none", got)
	}
	if got := listed(full); !slices.Equal(got, []uuid.UUID{theirs.ID, mine.ID}) {
		t.Errorf("a key with read lists jobs %v, want both", got)
	}
	getJob(t, actor, mine.ID)
	getJob(t, full, mine.ID)
	for _, tc := range []struct {
		method, path string
		hdr          []string
	}{
		{http.MethodGet, "/v1/jobs/" + theirs.ID.String(), nil},
		{http.MethodGet, "/v1/jobs/" + theirs.ID.String(), []string{"Accept", "text/event-stream"}},
		{http.MethodPost, "/v1/jobs/" + theirs.ID.String() + "/cancel", nil},
	} {
		resp, body := actor.call(tc.method, tc.path, "", tc.hdr...)
		wantProblem(t, resp, body, http.StatusNotFound, "job-not-found")
	}
	if j, _ := getJob(t, full, theirs.ID); j.Status != db.JobRunning && j.Status != db.JobDone {
		t.Errorf("another key's job is %s after a refused cancel", j.Status)
	}

	// Commands: the key's own, and those its jobs made; no other's.
	resp, _ = full.sendCommand("dev-0001", `{"name":"get_state"}`)
	fullCmd := commandIDFrom(t, resp)
	resp, _ = actor.sendCommand("dev-0001", `{"name":"get_state"}`)
	actorCmd := commandIDFrom(t, resp)
	var jobCmd uuid.UUID
	testsys.Eventually(t, "the job's command", func() bool {
		return sys.Pool.QueryRow(t.Context(), `SELECT id FROM commands WHERE job_id = $1`, mine.ID).Scan(&jobCmd) == nil
	})
	for _, id := range []uuid.UUID{actorCmd, jobCmd} {
		if resp, body := actor.call(http.MethodGet, "/v1/commands/"+id.String(), ""); resp.StatusCode != http.StatusOK {
			t.Errorf("the commands key's own command %s: %d %s", id, resp.StatusCode, body)
		}
	}
	for _, path := range []string{"/v1/commands/" + fullCmd.String(), "/v1/commands/" + fullCmd.String() + "/events"} {
		resp, body := actor.call(http.MethodGet, path, "")
		wantProblem(t, resp, body, http.StatusNotFound, "command-not-found")
	}
	if resp, body := full.call(http.MethodGet, "/v1/commands/"+actorCmd.String(), ""); resp.StatusCode != http.StatusOK {
		t.Errorf("a key with read: another key's command: %d %s", resp.StatusCode, body)
	}
}
