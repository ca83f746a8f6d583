package console_test

import (
	"context"
	"encoding/json"
	"errors"
	"html"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/device"
	"github.com/switchboard-iot/switchboard/maintenance"
)

// A job's page says why its devices did not succeed: its errors with their
// counts, and the failed commands grouped by error text, each row with its
// error; the list tells jobs of one command apart by their titles.
func TestJobPageFailures(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	n := sys.StartNode(t, "node-a", nil)
	e := sys.StartEdge(t, "edge-a", nil, func(cfg *maintenance.Config) { cfg.JobInterval = 20 * time.Millisecond })
	// dev-1 does not know the command; dev-2 knows it but is stuck.
	testsys.StartDevice(t, n, "dev-1", sys.AddDevice(t, "dev-1"), nil)
	testsys.StartDevice(t, n, "dev-2", sys.AddDevice(t, "dev-2"), map[string]device.HandlerFunc{
		"reboot": func(context.Context, json.RawMessage) (any, error) { return nil, errors.New("relay <stuck>") },
	})
	b := newBrowser(t, e.URL)
	b.signIn(sys.APIKey(t))
	start := func(body string) string {
		t.Helper()
		resp, out := b.do(http.MethodPost, "/v1/jobs", strings.NewReader(body), "Content-Type", "application/json", "X-CSRF-Token", b.csrf)
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("POST /v1/jobs: %d %s", resp.StatusCode, out)
		}
		var j struct{ ID string }
		if err := json.Unmarshal([]byte(out), &j); err != nil {
			t.Fatal(err)
		}
		return j.ID
	}
	id := start(`{"name":"reboot","title":"Reboot the hall","description":"after the push\nsecond line","target":{"devices":["dev-1","dev-2"]},"retry":{"max_attempts":2,"backoff":"0s"}}`)
	testsys.Eventually(t, "the job to end", func() bool {
		j, err := sys.Store.Job(t.Context(), uuid.MustParse(id))
		if err != nil {
			t.Fatal(err)
		}
		return j.Status.Final()
	})

	resp, body := b.get("/jobs/" + id)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/jobs/%s: %d", id, resp.StatusCode)
	}
	wantIDs(t, "/jobs/{id}", body, "job-status", "job-errors", "failures-stale", "job-retried", "job-about",
		`data-count="cancelled"`, `data-count="retrying"`, `class="failure-group"`)
	for _, want := range []string{
		"<h1>Job Reboot the hall</h1>",
		`<b id="job-status">done_with_failures</b>`,
		"after the push\nsecond line",
		`<td class="error-text">unknown command reboot</td><td>1</td>`,
		`<td class="error-text">relay &lt;stuck&gt;</td><td>1</td>`, // escaped: a device's text is not markup
		`<td><a href="/devices/dev-1">dev-1</a></td><td class="cmd-status">failed</td><td class="cmd-error">unknown command reboot</td>`,
		`<td class="cmd-error">relay &lt;stuck&gt;</td>`,
		"<td>2 of 2</td>", // the last attempt's row
		"up to 2 commands a device",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/jobs/%s lacks %q", id, want)
		}
	}
	if strings.Contains(body, `id="cancel-job" type="button">`) {
		t.Errorf("a finished job's page shows its cancel button")
	}
	// The page renders the errors it lists, for app.js to compare.
	if !strings.Contains(html.UnescapeString(body), `data-errors="[{"error":"relay \u003cstuck\u003e","count":1},{"error":"unknown command reboot","count":1}]"`) {
		t.Errorf("/jobs/%s: data-errors not the job's errors", id)
	}

	// The device's page shows each recent command's error too.
	_, body = b.get("/devices/dev-2")
	if !strings.Contains(body, `<td class="cmd-status">failed</td><td class="cmd-error">relay &lt;stuck&gt;</td>`) {
		t.Errorf("/devices/dev-2: its failed commands' rows lack their error")
	}

	// A scheduled job, and a job of the same command: told apart by title.
	later := start(`{"name":"reboot","title":"Tonight","target":{"devices":["dev-1"]},"start_at":"` + time.Now().Add(time.Hour).UTC().Format(time.RFC3339) + `"}`)
	_, body = b.get("/jobs/" + later)
	if !strings.Contains(body, `<b id="job-status">scheduled</b>`) || !strings.Contains(body, `id="job-start"`) ||
		!strings.Contains(body, `id="cancel-job" type="button">`) || !strings.Contains(body, "No failure yet.") {
		t.Errorf("a scheduled job's page: want its status, start, cancel button and no failure")
	}
	_, body = b.get("/jobs")
	for _, want := range []string{`<a href="/jobs/` + id + `">Reboot the hall</a>`, `<a href="/jobs/` + later + `">Tonight</a>`,
		`<td class="job-status">scheduled</td>`, `<td class="job-status">done_with_failures</td>`} {
		if !strings.Contains(body, want) {
			t.Errorf("/jobs lacks %q", want)
		}
	}
	wantIDs(t, "/jobs", body, "job-title", "job-description", "job-attempts", "job-start-at")
}

// A state job's page shows what it did to its targets (state_counts) and
// its patch, not a command's counts.
func TestStateJobPage(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil, func(cfg *maintenance.Config) { cfg.JobInterval = 20 * time.Millisecond })
	sys.AddDevice(t, "dev-1")
	sys.AddDevice(t, "dev-2")
	b := newBrowser(t, e.URL)
	b.signIn(sys.APIKey(t))
	resp, out := b.do(http.MethodPost, "/v1/jobs", strings.NewReader(`{"desired":{"firmware":"2.4.1"},"target":{"devices":["dev-1","dev-2"]},"rate":100}`),
		"Content-Type", "application/json", "X-CSRF-Token", b.csrf)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST /v1/jobs: %d %s", resp.StatusCode, out)
	}
	var j struct{ ID string }
	if err := json.Unmarshal([]byte(out), &j); err != nil {
		t.Fatal(err)
	}
	testsys.Eventually(t, "the state job to end", func() bool {
		job, err := sys.Store.Job(t.Context(), uuid.MustParse(j.ID))
		return err == nil && job.Status.Final()
	})
	resp, body := b.get("/jobs/" + j.ID)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/jobs/%s: %d", j.ID, resp.StatusCode)
	}
	wantIDs(t, "/jobs/{id}", body, "job-status", "job-state-counts", "job-progress")
	for _, want := range []string{`<td data-state-count="patched">2</td>`, `<td data-state-count="unsent">0</td>`, `value="2" max="2"`,
		html.EscapeString(`{"firmware": "2.4.1"}`)} {
		if !strings.Contains(body, want) {
			t.Errorf("the state job's page lacks %s", want)
		}
	}
	if strings.Contains(body, `id="job-counts"`) {
		t.Error("the state job's page shows a command job's counts")
	}
}
