package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-iot/switchboard/app/cli"
	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/db/dbtest"
)

// TestDev runs "switchboard dev" (what scripts/dev runs) through the same
// entry point as main: it must start its own PostgreSQL, print a banner
// whose commands work, and stop everything, PostgreSQL included, when its
// context ends (as on Ctrl-C).
func TestDev(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a PostgreSQL cluster of its own")
	}
	t.Parallel()
	dir, err := os.MkdirTemp("", "switchboard-devtest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o711); err != nil { // the postgres user must enter it when we are root
		t.Fatal(err)
	}
	dir = filepath.Join(dir, "dev")

	stdout, banner := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- cli.Run(ctx, []string{"dev", "-dir", dir, "-edge-listen", "127.0.0.1:0",
			"-conn-listen", "127.0.0.1:0,127.0.0.1:0", "-ops-listen", "127.0.0.1:0", "-pg-port", "0", "-devices", "4"},
			func(string) string { return "" }, cli.IO{Stdin: strings.NewReader(""), Stdout: banner, Stderr: io.Discard})
		banner.Close()
	}()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("dev returned %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("dev did not stop within 30s of its context ending")
		}
		if _, err := os.Stat(filepath.Join(dir, "pg", "data", "postmaster.pid")); !os.IsNotExist(err) {
			t.Errorf("PostgreSQL still running after dev stopped (postmaster.pid: %v)", err)
		}
	}()

	// Read the banner up to its commands: the edge's URL, the metrics' and
	// the API key.
	var edgeURL, metricsURL, key, signIn string
	lines := bufio.NewScanner(stdout)
	for lines.Scan() && (edgeURL == "" || key == "") {
		line := strings.TrimSpace(lines.Text())
		if v, ok := strings.CutPrefix(line, "edge (HTTP API)"); ok {
			edgeURL = strings.TrimSpace(v)
		}
		if v, ok := strings.CutPrefix(line, "metrics"); ok {
			metricsURL, _, _ = strings.Cut(strings.TrimSpace(v), " ")
		}
		if _, v, ok := strings.Cut(line, "(sign in: "); ok && strings.HasPrefix(line, "console") {
			signIn, _, _ = strings.Cut(v, ",")
		}
		if v, ok := strings.CutPrefix(line, "export SWITCHBOARD_KEY="); ok {
			key = v
		}
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }() // the rest of the banner
	if edgeURL == "" || key == "" || metricsURL == "" {
		t.Fatalf("banner without the edge URL (%q), the metrics' (%q) or the API key (%q)", edgeURL, metricsURL, key)
	}

	// The banner's command, to a thermostat on each node; the simulated
	// devices connect by themselves, so the first tries may find them away.
	reqCtx, stop := context.WithTimeout(ctx, 30*time.Second)
	defer stop()
	for _, device := range []string{"thermostat-1", "thermostat-2"} {
		var c command
		for c.Status != "done" {
			resp := post(t, reqCtx, edgeURL, key, device, "?wait=2s", "", `{"name":"get_state"}`)
			err := json.NewDecoder(resp.Body).Decode(&c)
			resp.Body.Close()
			if err != nil || (resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusAccepted) {
				t.Fatalf("%s: %d %v", device, resp.StatusCode, err)
			}
		}
		if !strings.Contains(string(c.Result), `"celsius"`) {
			t.Fatalf("%s answered %s, want a thermostat's state", device, c.Result)
		}
	}

	// The banner's metrics: the whole process's (edge and both nodes), on
	// the ops listener and not on the edge's port.
	testsys.Eventually(t, "the 4 thermostats' sessions in "+metricsURL, func() bool {
		v, _ := testsys.Scrape(t, nil, metricsURL).Get("switchboard_conn_sessions")
		return v == 4
	})
	if v, _ := testsys.Scrape(t, nil, metricsURL).Get("switchboard_edge_commands_accepted_total"); v < 2 {
		t.Errorf("%s: %v commands accepted by the edge, want the 2 sent at least", metricsURL, v)
	}
	if resp, err := http.Get(edgeURL + "/metrics"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("the edge's own port serves /metrics: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}

	// The banner's one-time console link signs a browser in, once.
	if !strings.HasPrefix(signIn, edgeURL+"/sign-in/") {
		t.Fatalf("banner's console sign-in link %q, want one under %s/sign-in/", signIn, edgeURL)
	}
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	browser := &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for i, want := range []int{http.StatusSeeOther, http.StatusUnauthorized} {
		req, _ := http.NewRequestWithContext(reqCtx, http.MethodGet, signIn, nil)
		resp, err := browser.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want || (i == 0) != (len(resp.Cookies()) == 1) {
			t.Fatalf("sign-in link, use %d: %d with cookies %v, want %d", i+1, resp.StatusCode, resp.Cookies(), want)
		}
	}
}

// devices import refuses an id given twice: the second line would be
// printed with a secret that does not work.
func TestImportRejectsDuplicateIDs(t *testing.T) {
	t.Parallel()
	env := map[string]string{"DATABASE_URL": dbtest.NewDatabase(t)}
	var stdout, stderr strings.Builder
	err := cli.Run(context.Background(), []string{"devices", "import"}, func(k string) string { return env[k] },
		cli.IO{Stdin: strings.NewReader("imp-1\nimp-2\nimp-1\n"), Stdout: &stdout, Stderr: &stderr})
	if err == nil || !strings.Contains(err.Error(), `"imp-1" is also on line 1`) {
		t.Fatalf("import with a duplicate: %v", err)
	}
	if stdout.Len() != 0 {
		t.Fatalf("import printed credentials before failing: %q", stdout.String())
	}
}

// -h lists the flags without showing the database URL the environment
// gave, which may hold a password.
func TestHelpHidesTheDatabaseURL(t *testing.T) {
	t.Parallel()
	env := map[string]string{"DATABASE_URL": "postgres://app:s3cret@db.internal/switchboard"}
	for _, cmd := range [][]string{{"edge", "-h"}, {"conn", "-h"}, {"migrate", "-h"}, {"apikeys", "list", "-h"}} {
		var stdout, stderr strings.Builder
		err := cli.Run(context.Background(), cmd, func(k string) string { return env[k] }, cli.IO{Stdin: strings.NewReader(""), Stdout: &stdout, Stderr: &stderr})
		if err != nil {
			t.Fatalf("%v: %v", cmd, err)
		}
		if out := stdout.String() + stderr.String(); strings.Contains(out, "s3cret") || !strings.Contains(out, "-database-url") {
			t.Fatalf("%v printed:\n%s", cmd, out)
		}
	}
}
