package e2e

// "switchboard apikeys" (add with scopes and expiry, list, revoke) through
// cli.Run, as main calls it, against real edges; the helpers serve
// devices_test.go too.

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-iot/switchboard/app/cli"
	"github.com/switchboard-iot/switchboard/app/testsys"
)

// switchboard runs the command line on the database at url.
func switchboard(t *testing.T, url, stdin string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut strings.Builder
	env := map[string]string{"DATABASE_URL": url}
	err = cli.Run(context.Background(), args, func(k string) string { return env[k] },
		cli.IO{Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errOut})
	return out.String(), errOut.String(), err
}

// mustRun runs the command line and fails t unless it succeeds.
func mustRun(t *testing.T, url, stdin string, args ...string) (stdout, stderr string) {
	t.Helper()
	stdout, stderr, err := switchboard(t, url, stdin, args...)
	if err != nil {
		t.Fatalf("switchboard %s: %v\n%s", strings.Join(args, " "), err, stderr)
	}
	return stdout, stderr
}

// alone checks that out is one line and returns it.
func alone(t *testing.T, what, out string) string {
	t.Helper()
	line := strings.TrimSuffix(out, "\n")
	if line == "" || strings.ContainsAny(line, "\n ,") {
		t.Fatalf("%s printed %q, want one value alone", what, out)
	}
	return line
}

// status makes an API request with key and returns the status code.
func status(t *testing.T, edgeURL, key, method, path, body string) int {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, edgeURL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestAPIKeysCommandLine(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	url := sys.DBURL
	edgeA, edgeB := sys.StartEdge(t, "edge-a", nil), sys.StartEdge(t, "edge-b", nil)

	// Flags after the name, as docs/cli.md writes them, and before it.
	reader := alone(t, "apikeys add", first(mustRun(t, url, "", "apikeys", "add", "dashboard", "-scopes", "read")))
	ci := alone(t, "apikeys add", first(mustRun(t, url, "", "apikeys", "add", "-scopes", "commands,read", "ci")))
	ops := alone(t, "apikeys add", first(mustRun(t, url, "", "apikeys", "add", "ops", "-expires", "720h")))
	for _, key := range []string{reader, ci, ops} {
		if !strings.HasPrefix(key, "sbk_") {
			t.Fatalf("key %q lacks its sbk_ prefix", key)
		}
	}

	for _, tc := range []struct {
		key, name    string
		method, path string
		body         string
		want         int
	}{
		{reader, "read", http.MethodGet, "/v1/devices/ghost", "", http.StatusNotFound},
		{reader, "read", http.MethodPost, "/v1/devices/ghost/commands", `{"name":"x"}`, http.StatusForbidden},
		{reader, "read", http.MethodPost, "/v1/devices", `{"id":"cli-1"}`, http.StatusForbidden},
		{ci, "commands,read", http.MethodPost, "/v1/devices/ghost/commands", `{"name":"x"}`, http.StatusNotFound},
		{ci, "commands,read", http.MethodPost, "/v1/devices", `{"id":"cli-1"}`, http.StatusForbidden},
		{ops, "default", http.MethodPost, "/v1/devices", `{"id":"cli-1"}`, http.StatusCreated},
	} {
		if got := status(t, edgeA.URL, tc.key, tc.method, tc.path, tc.body); got != tc.want {
			t.Errorf("key with scopes %s, %s %s: %d, want %d", tc.name, tc.method, tc.path, got, tc.want)
		}
	}

	// The list: every key, no secret.
	list, _ := mustRun(t, url, "", "apikeys", "list")
	lines := strings.Split(strings.TrimSpace(list), "\n")
	if len(lines) != 4 || strings.Join(strings.Fields(lines[0]), " ") != "ID NAME SCOPES CREATED EXPIRES REVOKED" {
		t.Fatalf("list:\n%s\nwant a header and three keys", list)
	}
	var opsExpiry time.Time
	if err := sys.Pool.QueryRow(t.Context(), `SELECT expires_at FROM api_keys WHERE name = 'ops'`).Scan(&opsExpiry); err != nil {
		t.Fatal(err)
	}
	if d := time.Until(opsExpiry); d < 719*time.Hour || d > 720*time.Hour {
		t.Fatalf("-expires 720h stored an expiry %v from now", d)
	}
	for i, want := range [][]string{
		{"1", "dashboard", "read", "never", "-"},
		{"2", "ci", "commands,read", "never", "-"},
		{"3", "ops", "commands,read,admin", opsExpiry.UTC().Format(time.RFC3339), "-"},
	} {
		f := strings.Fields(lines[i+1])
		if len(f) != 6 || f[0] != want[0] || f[1] != want[1] || f[2] != want[2] || f[4] != want[3] || f[5] != want[4] {
			t.Errorf("list row %q, want id, name, scopes, created, expires, revoked = %v", lines[i+1], want)
		}
	}
	if strings.Contains(list, "sbk_") {
		t.Fatalf("the list shows a secret:\n%s", list)
	}

	// Revoke: refused on every edge within a second, though both had the
	// key cached (for 30s).
	for _, e := range []*testsys.Edge{edgeA, edgeB} {
		if got := status(t, e.URL, reader, http.MethodGet, "/v1/devices/ghost", ""); got != http.StatusNotFound {
			t.Fatalf("%s before the revocation: %d", e.ID, got)
		}
	}
	_, said := mustRun(t, url, "", "apikeys", "revoke", "dashboard")
	revoked := time.Now()
	if !strings.Contains(said, "revoked") {
		t.Errorf("revoke said %q", said)
	}
	for _, e := range []*testsys.Edge{edgeB, edgeA} {
		testsys.EventuallyWithin(t, 3*time.Second, e.ID+" to refuse the revoked key", func() bool {
			return status(t, e.URL, reader, http.MethodGet, "/v1/devices/ghost", "") == http.StatusUnauthorized
		})
	}
	t.Logf("refused on both edges %v after the revocation", time.Since(revoked).Round(time.Millisecond))
	if _, said := mustRun(t, url, "", "apikeys", "revoke", "dashboard"); !strings.Contains(said, "already revoked") {
		t.Errorf("revoking again said %q", said)
	}
	list, _ = mustRun(t, url, "", "apikeys", "list")
	if row := strings.Fields(strings.Split(list, "\n")[1]); row[len(row)-1] == "-" {
		t.Errorf("the revoked key's row %v shows no revocation time", row)
	}

	// A shared name must be revoked by id.
	mustRun(t, url, "", "apikeys", "add", "ci")
	if _, _, err := switchboard(t, url, "", "apikeys", "revoke", "ci"); err == nil || !strings.Contains(err.Error(), "ids 2, 4") {
		t.Fatalf("revoking a shared name: %v, want the ids to choose from", err)
	}
	mustRun(t, url, "", "apikeys", "revoke", "4")
	if got := status(t, edgeA.URL, ci, http.MethodGet, "/v1/devices/ghost", ""); got != http.StatusNotFound {
		t.Fatalf("the other key of the name was revoked too: %d", got)
	}

	// Bad input: a clear error, a non-zero exit, nothing stored.
	keysBefore := countRows(t, sys, "api_keys")
	for _, tc := range []struct {
		args []string
		says string // in the error, or on stderr for usage errors
	}{
		{[]string{"apikeys", "add", "x", "-scopes", "write"}, `unknown scope "write"`},
		{[]string{"apikeys", "add", "x", "-scopes", ""}, "no scope given"},
		{[]string{"apikeys", "add", "x", "-scopes", "read;admin"}, "unknown scope"},
		{[]string{"apikeys", "add", "x", "-expires", "-1h"}, "-expires"},
		{[]string{"apikeys", "add", "x", "-expires", "30d"}, `invalid value "30d"`},
		{[]string{"apikeys", "add"}, "usage"},
		{[]string{"apikeys", "add", "a", "b"}, "usage"},
		{[]string{"apikeys", "add", "  "}, "needs a name"},
		{[]string{"apikeys", "add", "123"}, "read as a key id"},
		{[]string{"apikeys", "add", "tab\there"}, "control characters"},
		{[]string{"apikeys", "revoke", "nobody"}, `no API key has the name or id "nobody"`},
		{[]string{"apikeys", "revoke"}, "usage"},
		{[]string{"apikeys", "list", "extra"}, "usage"},
		{[]string{"apikeys", "rotate", "ci"}, "usage"},
	} {
		_, stderr, err := switchboard(t, url, "", tc.args...)
		if err == nil {
			t.Errorf("switchboard %q succeeded", tc.args)
			continue
		}
		if said := err.Error() + stderr; !strings.Contains(said, tc.says) {
			t.Errorf("switchboard %q: %v\n%s\nwant it to say %q", tc.args, err, stderr, tc.says)
		}
	}
	if n := countRows(t, sys, "api_keys"); n != keysBefore {
		t.Fatalf("bad input stored %d keys", n-keysBefore)
	}
	if out, _, err := switchboard(t, url, "", "apikeys", "add", "-h"); err != nil || out != "" {
		t.Fatalf("apikeys add -h: %v, printed %q; want the flags on stderr and nothing done", err, out)
	}
}

func first(stdout, _ string) string { return stdout }

func countRows(t *testing.T, sys *testsys.System, table string) int {
	t.Helper()
	var n int
	if err := sys.Pool.QueryRow(t.Context(), `SELECT count(*) FROM `+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
