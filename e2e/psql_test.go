package e2e

import (
	"bytes"
	"context"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/internal/pgcluster"
)

// The psql cookbook (docs/operations.md) runs as printed, with psql, against the real
// schema of a system with a connected device, a command and events: every
// query is valid, and the ones about that device find it.
func TestPsqlCookbook(t *testing.T) {
	t.Parallel()
	psql, err := pgcluster.Tool("psql")
	if err != nil {
		t.Fatal(err)
	}
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", nil)
	edge := sys.StartEdge(t, "edge-a", nil)
	dev := testsys.StartDevice(t, node, "thermostat-1", sys.AddDevice(t, "thermostat-1"), nil)
	sys.AddDevice(t, "thermostat-2") // never connected
	if _, err := sys.Pool.Exec(t.Context(), `UPDATE devices SET labels = '{"model":"thermostat"}'`); err != nil {
		t.Fatal(err)
	}
	if err := dev.Event(t.Context(), "telemetry", map[string]float64{"celsius": 20.5}); err != nil {
		t.Fatal(err)
	}
	key := sys.APIKey(t)
	post(t, t.Context(), edge.URL, key, "thermostat-1", "?wait=5s", "", `{"name":"unknown"}`).Body.Close()
	// A job to both: the connected one answers, the other's command waits.
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, edge.URL+"/v1/jobs",
		strings.NewReader(`{"name":"reboot","target":{"label":"model=thermostat"}}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST /v1/jobs: %s", resp.Status)
	}
	// Both job commands created (the runner may create them in two
	// batches), and the connected device's answered.
	testsys.Eventually(t, "the event and the job's commands to be stored", func() bool {
		var events, jobCommands, answered int
		_ = sys.Pool.QueryRow(t.Context(), `SELECT (SELECT count(*) FROM event_latest),
			(SELECT count(*) FROM commands WHERE job_id IS NOT NULL),
			(SELECT count(*) FROM commands WHERE job_id IS NOT NULL AND status <> 'pending')`).Scan(&events, &jobCommands, &answered)
		return events == 1 && jobCommands == 2 && answered == 1
	})

	_, queries, ok := strings.Cut(docSection(t, "docs/operations.md", "## The psql cookbook"), "```sql\n")
	if !ok {
		t.Fatal("docs/operations.md's psql cookbook has no ```sql block")
	}
	queries, _, _ = strings.Cut(queries, "```")
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, psql, "-X", "-v", "ON_ERROR_STOP=1", "--no-psqlrc", "-d", sys.DBURL)
	cmd.Stdin = strings.NewReader(queries)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("psql ran the cookbook's queries: %v\n%s", err, out.String())
	}
	for _, want := range []string{
		"thermostat-1 | node-a",    // who is online
		"test   | node-a  |     1", // per region and node
		"never connected",          // offline by region
		"telemetry | {\"celsius\": 20.5}",
		"| reboot | running |     2 |       2 | pending        |     1", // the job: one waits
		"| reboot | running |     2 |       2 | failed         |     1", // the other answered (unknown command: ok false)
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("psql's output lacks %q:\n%s", want, out.String())
		}
	}
}
