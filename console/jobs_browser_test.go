package console_test

import (
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/testkit/browsertest"
	"github.com/switchboard-iot/switchboard/maintenance"
)

// A job started from the console's form, with a title and a retry, to
// devices that do not know its command: its page follows it live to
// done_with_failures, fills in why (the errors, with counts), says the
// failures listed at load are stale, and once reloaded lists each
// device's failed command with its error. Not parallel: a browser beside
// the race detector on two cores makes bounded waits a matter of luck.
func TestJobPageInBrowser(t *testing.T) {
	sys := testsys.New(t)
	n := sys.StartNode(t, "node-a", nil)
	e := sys.StartEdge(t, "edge-a", nil, func(cfg *maintenance.Config) { cfg.JobInterval = 20 * time.Millisecond })
	for _, id := range []string{"hall-1", "hall-2"} {
		testsys.StartDevice(t, n, id, sys.AddDevice(t, id), nil) // no handler: "unknown command"
	}
	key := sys.APIKey(t)

	b := browsertest.Start(t)
	b.Navigate(e.URL + "/sign-in")
	b.Type("#key", key)
	b.ClickAndLoad("#sign-in")
	b.Navigate(e.URL + "/jobs")
	b.Need("the jobs page", "form#new-job")
	b.Type("#job-name", "reboot")
	b.Type("#job-title", "Reboot the hall")
	b.Type("#job-attempts", "2")
	b.Type("#job-rate", "50")
	b.ClickAndLoad("#start-job")
	id, err := uuid.Parse(strings.TrimPrefix(b.Path(), "/jobs/"))
	if err != nil {
		t.Fatalf("after starting a job: at %s (#job-error: %s)", b.Path(), b.Text("#job-error"))
	}
	j, err := sys.Store.Job(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	if j.Title != "Reboot the hall" || j.Retry.MaxAttempts != 2 {
		t.Fatalf("the form's job: title %q, retry %+v", j.Title, j.Retry)
	}
	// The form leaves the backoff at its default (10 s): retry at once.
	if _, err := sys.Pool.Exec(t.Context(), `UPDATE jobs SET backoff = '0' WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}

	b.WaitFor("the job's status", "#job-status", `el.textContent.trim() === "done_with_failures"`)
	b.WaitFor("the failed count", `td[data-count="failed"]`, `el.textContent.trim() === "2"`)
	b.WaitFor("the retried count", "#job-retried", `el.textContent.trim() === "2"`)
	b.WaitFor("the job's errors", "#job-errors tbody tr td.error-text", `el.textContent === "unknown command reboot"`)
	b.WaitFor("the cancel button hidden", "#cancel-job", `el.hidden`)
	b.Screenshot("job-done-with-failures")

	b.Navigate(e.URL + "/jobs/" + id.String())
	b.Need("the failure group", `.failure-group[data-error="unknown command reboot"]`)
	if n := b.Count(".failed-commands tbody tr"); n != 2 {
		t.Errorf("%d failed commands listed, want 2", n)
	}
	if got := b.Text(".failed-commands tbody tr td.cmd-error"); got != "unknown command reboot" {
		t.Errorf("a failed command's error: %q", got)
	}
	b.Need("the stale note hidden", "#failures-stale[hidden]")
	b.Screenshot("job-failures")
	if errs := b.PageErrors(); len(errs) > 0 {
		t.Errorf("page errors: %v", errs)
	}
	if j, err := sys.Store.Job(t.Context(), id); err != nil || j.Status != db.JobDoneWithFailures {
		t.Errorf("the job: %s %v", j.Status, err)
	}
}
