package e2e

// The command line against an edge: "switchboard devices|apikeys|commands|
// jobs" with SWITCHBOARD_EDGE and SWITCHBOARD_KEY and no database, run
// through cli.Run as main runs it, their -json output parsed; and the
// built binary's exit codes and error messages.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-iot/switchboard/app/cli"
	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/device"
	"github.com/switchboard-iot/switchboard/edge"
	"github.com/switchboard-iot/switchboard/internal/problem"
)

// cliEdge runs the command line as a shell with SWITCHBOARD_EDGE and
// SWITCHBOARD_KEY set would, and no DATABASE_URL: every command it runs
// speaks HTTP only.
type cliEdge struct {
	t        *testing.T
	url, key string
}

func (ce cliEdge) run(stdin string, args ...string) (stdout, stderr string, err error) {
	ce.t.Helper()
	var out, errOut strings.Builder
	env := map[string]string{"SWITCHBOARD_EDGE": ce.url, "SWITCHBOARD_KEY": ce.key}
	err = cli.Run(context.Background(), args, func(k string) string { return env[k] },
		cli.IO{Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errOut})
	return out.String(), errOut.String(), err
}

// must runs the command line and fails the test unless it succeeds.
func (ce cliEdge) must(stdin string, args ...string) (stdout, stderr string) {
	ce.t.Helper()
	stdout, stderr, err := ce.run(stdin, args...)
	if err != nil {
		ce.t.Fatalf("switchboard %s: %v\n%s", strings.Join(args, " "), err, stderr)
	}
	return stdout, stderr
}

func (ce cliEdge) withKey(key string) cliEdge { return cliEdge{ce.t, ce.url, key} }

// jsonOut runs the command line and parses its stdout, one JSON document.
func jsonOut[T any](ce cliEdge, stdin string, args ...string) T {
	ce.t.Helper()
	out, _ := ce.must(stdin, args...)
	var v T
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		ce.t.Fatalf("switchboard %s printed %q: %v", strings.Join(args, " "), out, err)
	}
	return v
}

// refused checks that err is the edge's refusal of the given status and
// problem type, as the command line reports it: exit code 3, the status,
// title and type in the message.
func refused(t *testing.T, what string, err error, status int, pt problem.Type) {
	t.Helper()
	switch {
	case err == nil:
		t.Fatalf("%s succeeded, want %d %s", what, status, pt.Slug())
	case cli.ExitCode(err) != cli.ExitRefused:
		t.Errorf("%s: exit code %d, want %d (refused): %v", what, cli.ExitCode(err), cli.ExitRefused, err)
	}
	if msg := err.Error(); !strings.Contains(msg, fmt.Sprintf("%d %s", status, pt.Title())) || !strings.Contains(msg, pt.URI()) {
		t.Errorf("%s: %q, want the status %d, the title %q and the type %s", what, msg, status, pt.Title(), pt.URI())
	}
}

// compact is JSON on one line, as -json's indented documents do not hold
// it.
func compact(raw json.RawMessage) string {
	var b bytes.Buffer
	_ = json.Compact(&b, raw)
	return b.String()
}

// rows are the lines of a table below its header.
func rows(t *testing.T, table string, header string) []string {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(table, "\n"), "\n")
	if strings.Join(strings.Fields(lines[0]), " ") != header {
		t.Fatalf("table header %q, want %q:\n%s", lines[0], header, table)
	}
	return lines[1:]
}

func TestDevicesOverHTTP(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", nil)
	ed := sys.StartEdge(t, "edge-a", nil)
	sb := cliEdge{t, ed.URL, sys.APIKey(t, db.ScopeAdmin, db.ScopeRead)}

	// add: the secret alone, or (-json) the API's answer; the secret works.
	secretA := alone(t, "devices add", first(sb.must("", "devices", "add", "cli-a")))
	added := jsonOut[struct{ ID, Secret string }](sb, "", "devices", "add", "cli-b", "-json")
	if added.ID != "cli-b" || added.Secret == "" {
		t.Fatalf("devices add -json: %+v", added)
	}
	for id, s := range map[string]string{"cli-a": secretA, "cli-b": added.Secret} {
		if code := dial(t, node, id, s); code != http.StatusSwitchingProtocols {
			t.Fatalf("%s with its new secret: %d", id, code)
		}
	}
	_, _, err := sb.run("", "devices", "add", "cli-a")
	refused(t, "devices add of an id that exists", err, http.StatusConflict, problem.DeviceExists)

	// import: 1,100 devices in batches of 1,000 (two requests), "id,secret"
	// lines out, a given secret kept.
	var in strings.Builder
	given := "given-secret-0123456789abcdefgh"
	for i := 1; i <= 1100; i++ {
		fmt.Fprintf(&in, "bulk-%04d", i)
		if i == 1050 {
			in.WriteString("," + given)
		}
		in.WriteString("\n")
	}
	csv, _ := sb.must(in.String(), "devices", "import")
	lines := strings.Split(strings.TrimSpace(csv), "\n")
	if len(lines) != 1100 || lines[1049] != "bulk-1050,"+given {
		t.Fatalf("devices import printed %d lines (line 1050: %q), want 1100, the given secret kept", len(lines), lines[min(1049, len(lines)-1)])
	}
	id, bulkSecret, _ := strings.Cut(lines[1099], ",")
	if code := dial(t, node, id, bulkSecret); code != http.StatusSwitchingProtocols {
		t.Fatalf("%s with its imported secret: %d", id, code)
	}
	// Again: every line exists, no secret printed. -json: what became of
	// each line, numbered in the whole input.
	again, said := sb.must("bulk-0001\nbulk-0002\n", "devices", "import")
	if again != "" || strings.Count(said, "skipped bulk-000") != 2 {
		t.Fatalf("importing existing ids printed %q, said %q", again, said)
	}
	entries := jsonOut[[]struct {
		Line       int
		ID, Status string
		Secret     string
		SameSecret *bool `json:"same_secret"`
	}](sb, "# a comment\nbulk-1050,"+given+"\nnew-1\n", "devices", "import", "-json")
	if len(entries) != 2 || entries[0].Line != 2 || entries[0].Status != "exists" || entries[0].SameSecret == nil || !*entries[0].SameSecret ||
		entries[1].Line != 3 || entries[1].ID != "new-1" || entries[1].Status != "added" || entries[1].Secret == "" {
		t.Fatalf("devices import -json: %+v", entries)
	}
	// A bad line stops the import before anything is sent, named by its
	// number.
	if _, _, err := sb.run("ok-1\nbad:id\n", "devices", "import"); err == nil || !strings.Contains(err.Error(), "line 2") || cli.ExitCode(err) != cli.ExitError {
		t.Fatalf("a bad line: %v (exit %d), want line 2 named, exit 1", err, cli.ExitCode(err))
	}
	_, _, err = sb.run("", "devices", "rotate", "ok-1")
	refused(t, "rotating a device the refused import did not add", err, http.StatusNotFound, problem.DeviceNotFound)

	// list: every page (1,000 a page), in id order; -limit; filters.
	const all = 2 + 1100 + 1
	table, said := sb.must("", "devices", "list")
	if got := rows(t, table, "ID ONLINE NODE REGION LABELS"); len(got) != all || !strings.HasPrefix(got[0], "bulk-0001 ") {
		t.Fatalf("devices list: %d rows (first %q), want %d", len(got), got[0], all)
	}
	if !strings.HasPrefix(said, fmt.Sprintf("%d devices, ", all)) {
		t.Errorf("devices list said %q", said)
	}
	listed := jsonOut[[]db.Device](sb, "", "devices", "list", "-json")
	if len(listed) != all || !slices.IsSortedFunc(listed, func(a, b db.Device) int { return strings.Compare(a.ID, b.ID) }) ||
		listed[all-1].ID != "new-1" {
		t.Fatalf("devices list -json: %d devices, want %d in id order", len(listed), all)
	}
	out, said, err := sb.run("", "devices", "list", "-json", "-limit", "1001")
	var limited []db.Device
	if err != nil || json.Unmarshal([]byte(out), &limited) != nil || len(limited) != 1001 || limited[1000].ID != "bulk-1001" || !strings.Contains(said, "more follow") {
		t.Fatalf("devices list -limit 1001: %d devices, said %q, %v", len(limited), said, err)
	}
	if q := jsonOut[[]db.Device](sb, "", "devices", "list", "-json", "-q", "BULK-000"); len(q) != 9 {
		t.Fatalf("devices list -q BULK-000: %d devices, want 9", len(q))
	}

	// label: set and delete; the list filters by them.
	if _, said := sb.must("", "devices", "label", "cli-a", "room=kitchen", "fw=2"); !strings.Contains(said, "fw=2,room=kitchen") {
		t.Errorf("devices label said %q", said)
	}
	d := jsonOut[db.Device](sb, "", "devices", "label", "cli-a", "fw-", "-json")
	if compact(d.Labels) != `{"room":"kitchen"}` {
		t.Fatalf("labels after fw-: %s", d.Labels)
	}
	if k := jsonOut[[]db.Device](sb, "", "devices", "list", "-json", "-label", "room=kitchen"); len(k) != 1 || k[0].ID != "cli-a" {
		t.Fatalf("devices list -label room=kitchen: %+v", k)
	}

	// disable, enable: the node refuses, then lets it in.
	if _, said := sb.must("", "devices", "disable", "cli-a"); !strings.Contains(said, "cli-a is disabled") {
		t.Errorf("devices disable said %q", said)
	}
	if code := dial(t, node, "cli-a", secretA); code != http.StatusUnauthorized {
		t.Fatalf("a disabled device: %d, want 401", code)
	}
	if d := jsonOut[db.Device](sb, "", "devices", "enable", "cli-a", "-json"); d.ID != "cli-a" || d.DisabledAt != nil {
		t.Fatalf("devices enable -json: %+v", d)
	}
	if code := dial(t, node, "cli-a", secretA); code != http.StatusSwitchingProtocols {
		t.Fatalf("an enabled device: %d", code)
	}

	// rotate: the secret alone (-json: with when the old one ends).
	rot := jsonOut[struct {
		ID, Secret string
		Until      time.Time `json:"previous_secret_until"`
	}](sb, "", "devices", "rotate", "cli-a", "-grace", "0", "-json")
	if rot.ID != "cli-a" || rot.Secret == "" || rot.Secret == secretA || rot.Until.After(time.Now()) {
		t.Fatalf("devices rotate -grace 0 -json: %+v", rot)
	}
	if code := dial(t, node, "cli-a", secretA); code != http.StatusUnauthorized {
		t.Fatalf("the replaced secret, no grace: %d, want 401", code)
	}
	newest := alone(t, "devices rotate", first(sb.must("", "devices", "rotate", "cli-a")))
	if code := dial(t, node, "cli-a", newest); code != http.StatusSwitchingProtocols {
		t.Fatalf("the rotated secret: %d", code)
	}

	// delete, and again: 404.
	gone := jsonOut[struct {
		ID      string
		Deleted map[string]int
	}](sb, "", "devices", "delete", "cli-b", "-json")
	if _, ok := gone.Deleted["sessions"]; gone.ID != "cli-b" || !ok {
		t.Fatalf("devices delete -json: %+v", gone)
	}
	_, _, err = sb.run("", "devices", "delete", "cli-b")
	refused(t, "deleting a deleted device", err, http.StatusNotFound, problem.DeviceNotFound)

	// A -database-url on the command line wins over SWITCHBOARD_EDGE; both
	// as flags are a usage error.
	alone(t, "devices add -database-url", first(sb.must("", "devices", "add", "cli-db", "-database-url", sys.DBURL)))
	if _, _, err := sb.run("", "devices", "add", "cli-x", "-database-url", sys.DBURL, "-edge", ed.URL); !errors.Is(err, cli.ErrUsage) {
		t.Fatalf("-edge and -database-url: %v, want a usage error", err)
	}
	// Neither: the error says both ways.
	if _, _, err := (cliEdge{t, "", ""}).run("", "devices", "list"); err == nil || !strings.Contains(err.Error(), "DATABASE_URL") || !strings.Contains(err.Error(), "SWITCHBOARD_EDGE") {
		t.Fatalf("no database, no edge: %v", err)
	}
}

func TestAPIKeysOverHTTP(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	ed := sys.StartEdge(t, "edge-a", nil)
	sb := cliEdge{t, ed.URL, sys.APIKey(t)}

	stdout, said := sb.must("", "apikeys", "add", "dashboard", "-scopes", "read")
	reader := sb.withKey(alone(t, "apikeys add", stdout))
	if !strings.HasPrefix(reader.key, "sbk_") || !regexp.MustCompile(`^API key 2 \(dashboard\): scopes read, expires never\n$`).MatchString(said) {
		t.Fatalf("apikeys add printed %q, said %q", reader.key, said)
	}
	ops := jsonOut[struct {
		ID        int64
		Name      string
		Scopes    []string
		ExpiresAt *time.Time `json:"expires_at"`
		Key       string
	}](sb, "", "apikeys", "add", "ops", "-expires", "720h", "-json")
	if ops.ID != 3 || !strings.HasPrefix(ops.Key, "sbk_") || len(ops.Scopes) != 3 || ops.ExpiresAt == nil ||
		time.Until(*ops.ExpiresAt) < 719*time.Hour || time.Until(*ops.ExpiresAt) > 720*time.Hour {
		t.Fatalf("apikeys add -expires 720h -json: %+v", ops)
	}

	// list: a table, or every key; -limit.
	table, _ := sb.must("", "apikeys", "list")
	got := rows(t, table, "ID NAME SCOPES CREATED EXPIRES REVOKED")
	if len(got) != 3 || strings.Fields(got[1])[1] != "dashboard" || strings.Contains(table, "sbk_") {
		t.Fatalf("apikeys list:\n%s", table)
	}
	if keys := jsonOut[[]db.APIKey](sb, "", "apikeys", "list", "-json"); len(keys) != 3 || keys[2].Name != "ops" {
		t.Fatalf("apikeys list -json: %+v", keys)
	}
	if out, said, err := sb.run("", "apikeys", "list", "-json", "-limit", "2"); err != nil || strings.Count(out, `"name"`) != 2 || !strings.Contains(said, "more follow") {
		t.Fatalf("apikeys list -limit 2: %q, said %q, %v", out, said, err)
	}

	// A read key reads, and is refused the admin's routes: 403.
	reader.must("", "devices", "list")
	_, _, err := reader.run("", "apikeys", "list")
	refused(t, "apikeys list with a read key", err, http.StatusForbidden, problem.InsufficientScope)

	// revoke by name: the key gets 401 at once on this edge; again says so.
	if _, said := sb.must("", "apikeys", "revoke", "dashboard"); said != "API key 2 (dashboard) is revoked\n" {
		t.Errorf("apikeys revoke said %q", said)
	}
	_, _, err = reader.run("", "devices", "list")
	refused(t, "a revoked key", err, http.StatusUnauthorized, problem.Unauthorized)
	if !strings.Contains(err.Error(), "SWITCHBOARD_KEY") {
		t.Errorf("a 401 does not say where the key came from: %v", err)
	}
	revoked := jsonOut[db.APIKey](sb, "", "apikeys", "revoke", "2", "-json")
	if revoked.ID != 2 || revoked.RevokedAt == nil {
		t.Fatalf("apikeys revoke 2 -json: %+v", revoked)
	}
	if _, said := sb.must("", "apikeys", "revoke", "dashboard"); !strings.Contains(said, "was already revoked") {
		t.Errorf("revoking a revoked key said %q", said)
	}

	// A name two keys share is refused: give the id. A name no key has is
	// refused too.
	sb.must("", "apikeys", "add", "twin")
	sb.must("", "apikeys", "add", "twin")
	for _, name := range []string{"twin", "nobody"} {
		if _, _, err := sb.run("", "apikeys", "revoke", name); cli.ExitCode(err) != cli.ExitRefused {
			t.Errorf("apikeys revoke %s: %v (exit %d), want refused", name, err, cli.ExitCode(err))
		}
	}
	_, _, err = sb.run("", "apikeys", "revoke", "99")
	if err == nil || !strings.Contains(err.Error(), `"99"`) {
		t.Errorf("apikeys revoke 99: %v", err)
	}

	// -key-file instead of SWITCHBOARD_KEY.
	keyFile := t.TempDir() + "/key"
	if err := os.WriteFile(keyFile, []byte(ops.Key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sb.withKey("").must("", "apikeys", "list", "-key-file", keyFile)
	if _, _, err := sb.withKey("").run("", "apikeys", "list"); err == nil || !strings.Contains(err.Error(), "SWITCHBOARD_KEY") {
		t.Errorf("no key: %v", err)
	}
}

// echoAndFail answers "echo" with its args and fails "fail".
func echoAndFail() map[string]device.HandlerFunc {
	return map[string]device.HandlerFunc{
		"echo": func(_ context.Context, args json.RawMessage) (any, error) { return args, nil },
		"fail": func(context.Context, json.RawMessage) (any, error) { return nil, errors.New("the valve is stuck") },
	}
}

func TestCommandsOverHTTP(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", nil)
	// 120 commands at one offline device: past its queue cap (100).
	ed := sys.StartEdge(t, "edge-a", func(c *edge.Config) { c.DeviceQueue = 200 })
	testsys.StartDevice(t, node, "therm-1", sys.AddDevice(t, "therm-1"), echoAndFail())
	sys.AddDevice(t, "offline-1")
	sb := cliEdge{t, ed.URL, sys.APIKey(t, db.ScopeCommands)}

	// Alone: the id; get reads it, once its device answered.
	id := alone(t, "commands send", first(sb.must("", "commands", "send", "therm-1", "echo", "-args", `{"n":1}`)))
	testsys.Eventually(t, "the command to be done", func() bool {
		return jsonOut[command](sb, "", "commands", "get", id, "-json").Status == "done"
	})
	view, _ := sb.must("", "commands", "get", id)
	if !regexp.MustCompile(`(?m)^STATUS +done$`).MatchString(view) || !regexp.MustCompile(`(?m)^RESULT +\{"n":1\}$`).MatchString(view) {
		t.Fatalf("commands get:\n%s", view)
	}

	// -wait: the command once it ended.
	c := jsonOut[command](sb, "", "commands", "send", "therm-1", "echo", "-args", `{"n":2}`, "-wait", "10s", "-json")
	if c.Status != "done" || compact(c.Result) != `{"n":2}` || c.Device != "therm-1" {
		t.Fatalf("commands send -wait 10s -json: %+v", c)
	}

	// -follow: a line per event, to the reply; -json: JSON lines.
	out, _ := sb.must("", "commands", "send", "therm-1", "echo", "-follow", "-args", `{"n":3}`)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if !strings.HasPrefix(lines[0], "accepted ") || !regexp.MustCompile(`^reply +done +ok \{"n":3\}$`).MatchString(lines[len(lines)-1]) {
		t.Fatalf("commands send -follow:\n%s", out)
	}
	out, _ = sb.must("", "commands", "send", "therm-1", "echo", "-follow", "-json")
	var events []struct {
		Event   string
		Seq     int
		Command command
	}
	for line := range strings.Lines(out) {
		var ev struct {
			Event   string
			Seq     int
			Command command
		}
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("commands send -follow -json printed %q: %v", line, err)
		}
		events = append(events, ev)
	}
	if n := len(events); n < 2 || events[0].Event != "accepted" || events[0].Seq != 1 || events[n-1].Event != "reply" ||
		events[n-1].Command.Status != "done" || events[n-1].Command.ID != events[0].Command.ID {
		t.Fatalf("commands send -follow -json: %+v", events)
	}

	// A command that fails exits 5, one still pending when -wait ends 6;
	// the command is printed either way.
	out, _, err := sb.run("", "commands", "send", "therm-1", "fail", "-wait", "10s")
	if cli.ExitCode(err) != cli.ExitNotDone || !strings.Contains(err.Error(), "the valve is stuck") || !regexp.MustCompile(`(?m)^STATUS +failed$`).MatchString(out) {
		t.Fatalf("a failing command: %v (exit %d)\n%s", err, cli.ExitCode(err), out)
	}
	out, _, err = sb.run("", "commands", "send", "offline-1", "echo", "-wait", "200ms", "-json")
	if cli.ExitCode(err) != cli.ExitNotFinal || !strings.Contains(out, `"status": "pending"`) {
		t.Fatalf("a command to an offline device: %v (exit %d)\n%s", err, cli.ExitCode(err), out)
	}
	if _, _, err := sb.run("", "commands", "send", "therm-1", "fail", "-follow"); cli.ExitCode(err) != cli.ExitNotDone {
		t.Fatalf("following a failing command: %v (exit %d)", err, cli.ExitCode(err))
	}

	// The API's refusals: an unknown device, bad args.
	_, _, err = sb.run("", "commands", "send", "ghost", "echo")
	refused(t, "a command to no device", err, http.StatusNotFound, problem.DeviceNotFound)
	_, _, err = sb.run("", "commands", "send", "therm-1", "bad name!")
	refused(t, "a command of a bad name", err, http.StatusBadRequest, problem.InvalidCommand)
	if _, _, err := sb.run("", "commands", "send", "therm-1", "echo", "-args", "[1]"); err == nil || cli.ExitCode(err) != cli.ExitError {
		t.Fatalf("-args [1]: %v, want refused before sending", err)
	}

	// An Idempotency-Key: a repeat answers the first command.
	first1, _ := sb.must("", "commands", "send", "offline-1", "echo", "-idempotency-key", "k-1")
	first2, said := sb.must("", "commands", "send", "offline-1", "echo", "-idempotency-key", "k-1")
	if first1 != first2 || !strings.Contains(said, "Idempotency-Key") {
		t.Fatalf("a repeat with an Idempotency-Key: %q then %q, said %q", first1, first2, said)
	}
}

// TestCommandsListCancelOverHTTP lists and cancels commands:
// GET /v1/commands, GET /v1/devices/{id}/commands and
// POST /v1/commands/{id}/cancel.
func TestCommandsListCancelOverHTTP(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", nil)
	// 120 commands at one offline device: past its queue cap (100).
	ed := sys.StartEdge(t, "edge-a", func(c *edge.Config) { c.DeviceQueue = 200 })
	testsys.StartDevice(t, node, "therm-1", sys.AddDevice(t, "therm-1"), echoAndFail())
	sys.AddDevice(t, "offline-1")
	key := sys.APIKey(t, db.ScopeCommands, db.ScopeRead)
	sb := cliEdge{t, ed.URL, key}

	done := jsonOut[command](sb, "", "commands", "send", "therm-1", "echo", "-wait", "10s", "-json")
	// 120 pending commands: more than a page (100).
	var pending []string
	for i := range 120 {
		resp := post(t, t.Context(), ed.URL, key, "offline-1", "", "", fmt.Sprintf(`{"name":"echo","args":{"i":%d}}`, i))
		var c command
		if err := json.NewDecoder(resp.Body).Decode(&c); err != nil || resp.StatusCode != http.StatusAccepted {
			t.Fatalf("POST a command: %d, %v", resp.StatusCode, err)
		}
		resp.Body.Close()
		pending = append(pending, c.ID)
	}

	all := jsonOut[[]command](sb, "", "commands", "list", "-json")
	if len(all) != 121 || all[0].ID != pending[119] || all[120].ID != done.ID {
		t.Fatalf("commands list -json: %d commands, want 121, newest first", len(all))
	}
	table, _ := sb.must("", "commands", "list", "-device", "therm-1")
	if got := rows(t, table, "ID DEVICE NAME STATUS CREATED OUTCOME"); len(got) != 1 || !strings.HasPrefix(got[0], done.ID+" ") {
		t.Fatalf("commands list -device therm-1:\n%s", table)
	}
	if got := jsonOut[[]command](sb, "", "commands", "list", "-json", "-status", "done"); len(got) != 1 || got[0].ID != done.ID {
		t.Fatalf("commands list -status done: %+v", got)
	}
	out, said, err := sb.run("", "commands", "list", "-json", "-device", "offline-1", "-limit", "110")
	var limited []command
	if err != nil || json.Unmarshal([]byte(out), &limited) != nil || len(limited) != 110 || !strings.Contains(said, "more follow") {
		t.Fatalf("commands list -limit 110: %d, said %q, %v", len(limited), said, err)
	}
	if got := jsonOut[[]command](sb, "", "commands", "list", "-json", "-since", "1h", "-until", time.Now().Add(time.Minute).Format(time.RFC3339)); len(got) != 121 {
		t.Fatalf("commands list -since 1h -until: %d", len(got))
	}
	_, _, err = sb.run("", "commands", "list", "-device", "ghost")
	refused(t, "commands list -device ghost", err, http.StatusNotFound, problem.DeviceNotFound)

	// cancel: a pending command is cancelled; a final one is a 409.
	c := jsonOut[command](sb, "", "commands", "cancel", pending[0], "-json")
	if c.ID != pending[0] || c.Status != "cancelled" {
		t.Fatalf("commands cancel -json: %+v", c)
	}
	if _, said := sb.must("", "commands", "cancel", pending[1]); !strings.Contains(said, "cancelled") {
		t.Errorf("commands cancel said %q", said)
	}
	_, _, err = sb.run("", "commands", "cancel", done.ID)
	if cli.ExitCode(err) != cli.ExitRefused || !strings.Contains(err.Error(), "409 ") {
		t.Fatalf("cancelling a done command: %v (exit %d), want 409", err, cli.ExitCode(err))
	}
}

// TestStateOverHTTP: "state patch" changes desired state (with
// -if-match), "state get" prints it, and -follow prints each change.
func TestStateOverHTTP(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	ed := sys.StartEdge(t, "edge-a", nil)
	sys.AddDevice(t, "therm-1")
	sb := cliEdge{t, ed.URL, sys.APIKey(t, db.ScopeCommands, db.ScopeRead)}
	type state struct {
		Desired, Reported, Delta json.RawMessage
		DesiredVersion           int64 `json:"desired_version"`
	}

	st := jsonOut[state](sb, "", "state", "patch", "therm-1", `{"target_celsius":21,"mode":"heat"}`, "-json")
	if compact(st.Desired) != `{"mode":"heat","target_celsius":21}` || st.DesiredVersion != 1 {
		t.Fatalf("state patch -json: %+v", st)
	}
	view, _ := sb.must(`{"mode":null}`, "state", "patch", "therm-1", "@-", "-if-match", "1")
	if !regexp.MustCompile(`(?m)^DESIRED +\{"target_celsius":21\}$`).MatchString(view) || !regexp.MustCompile(`(?m)^DESIRED VERSION +2$`).MatchString(view) {
		t.Fatalf("state patch @- -if-match 1:\n%s", view)
	}
	_, _, err := sb.run("", "state", "patch", "therm-1", `{"mode":"cool"}`, "-if-match", "1")
	refused(t, "a patch naming a stale version", err, http.StatusPreconditionFailed, problem.StateVersionMismatch)
	if _, _, err := sb.run("", "state", "patch", "therm-1", `[1]`); cli.ExitCode(err) != cli.ExitError {
		t.Fatalf("a patch that is not an object: %v (exit %d), want refused before sending", err, cli.ExitCode(err))
	}
	if _, _, err := sb.run("", "state", "patch", "therm-1", `{}`, "-if-match", "v2"); !errors.Is(err, cli.ErrUsage) {
		t.Fatalf("-if-match v2: %v, want a usage error", err)
	}
	_, _, err = sb.run("", "state", "get", "ghost")
	refused(t, "the state of no device", err, http.StatusNotFound, problem.DeviceNotFound)

	// A report, as a node stores and announces it: get shows the delta.
	if _, _, err := sys.Store.StoreReports(t.Context(), []db.Report{{DeviceID: "therm-1", Patch: json.RawMessage(`{"target_celsius":19}`)}}); err != nil {
		t.Fatal(err)
	}
	view, _ = sb.must("", "state", "get", "therm-1")
	if !regexp.MustCompile(`(?m)^REPORTED +\{"target_celsius":19\}$`).MatchString(view) || !regexp.MustCompile(`(?m)^DELTA +\{"target_celsius":21\}$`).MatchString(view) {
		t.Fatalf("state get:\n%s", view)
	}

	// -follow -json: the state now, then each change, until interrupted.
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		env := map[string]string{"SWITCHBOARD_EDGE": sb.url, "SWITCHBOARD_KEY": sb.key}
		done <- cli.Run(ctx, []string{"state", "get", "therm-1", "-follow", "-json"}, func(k string) string { return env[k] },
			cli.IO{Stdin: strings.NewReader(""), Stdout: pw, Stderr: io.Discard})
		pw.Close()
	}()
	lines := bufio.NewScanner(pr)
	next := func() state {
		t.Helper()
		if !lines.Scan() {
			t.Fatalf("state get -follow ended: %v", lines.Err())
		}
		var st state
		if err := json.Unmarshal(lines.Bytes(), &st); err != nil {
			t.Fatalf("state get -follow -json printed %q: %v", lines.Text(), err)
		}
		return st
	}
	if st := next(); st.DesiredVersion != 2 {
		t.Fatalf("the first state followed: %+v", st)
	}
	sb.must("", "state", "patch", "therm-1", `{"target_celsius":19}`)
	if st := next(); st.DesiredVersion != 3 || compact(st.Delta) != `{}` {
		t.Fatalf("the state after a patch: %+v", st)
	}
	cancel()
	go func() { _, _ = io.Copy(io.Discard, pr) }()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("state get -follow, interrupted: %v", err)
	}
}

func TestJobsOverHTTP(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", nil)
	ed := sys.StartEdge(t, "edge-a", func(c *edge.Config) { c.JobStreamInterval = 20 * time.Millisecond })
	for _, id := range []string{"job-1", "job-2", "job-3"} {
		testsys.StartDevice(t, node, id, sys.AddDevice(t, id), echoAndFail())
	}
	sb := cliEdge{t, ed.URL, sys.APIKey(t, db.ScopeCommands, db.ScopeRead)}

	// start -follow: progress lines, to done.
	out, said := sb.must("", "jobs", "start", "echo", "-devices", "job-1,job-2,job-3", "-title", "Morning check", "-args", `{"x":1}`, "-follow")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if !regexp.MustCompile(`^job \S+ \(echo\) is running: 3 devices\n$`).MatchString(said) ||
		!regexp.MustCompile(`^done +created 3/3, 100% final: done 3$`).MatchString(lines[len(lines)-1]) {
		t.Fatalf("jobs start -follow printed\n%s\nsaid %q", out, said)
	}

	// start -json; get -follow -json: JSON lines to the end; get: the counts.
	j := jsonOut[db.Job](sb, "", "jobs", "start", "echo", "-all", "-json", "-rate", "50")
	if j.Total != 3 || j.Rate != 50 || j.Status != db.JobRunning {
		t.Fatalf("jobs start -json: %+v", j)
	}
	out, _ = sb.must("", "jobs", "get", j.ID.String(), "-follow", "-json")
	var last struct {
		Event string
		Seq   int
		Job   db.Job
	}
	for line := range strings.Lines(out) {
		if err := json.Unmarshal([]byte(line), &last); err != nil {
			t.Fatalf("jobs get -follow -json printed %q: %v", line, err)
		}
	}
	if last.Event != "done" || last.Job.ID != j.ID || last.Job.Counts == nil || last.Job.Counts.Done != 3 {
		t.Fatalf("jobs get -follow -json ended with %+v", last)
	}
	if got := jsonOut[db.Job](sb, "", "jobs", "get", j.ID.String(), "-json"); got.Status != db.JobDone || got.Counts.Done != 3 {
		t.Fatalf("jobs get -json: %+v", got)
	}
	view, _ := sb.must("", "jobs", "get", j.ID.String())
	if !regexp.MustCompile(`(?m)^STATUS +done$`).MatchString(view) || !regexp.MustCompile(`(?m)^TARGET +\{"all":true\}$`).MatchString(view) {
		t.Fatalf("jobs get:\n%s", view)
	}

	// results: a device each; -limit.
	results := jsonOut[[]db.JobCommand](sb, "", "jobs", "results", j.ID.String(), "-json")
	if len(results) != 3 || results[0].DeviceID != "job-1" || results[0].Status != "done" || compact(results[0].Result) != "{}" {
		t.Fatalf("jobs results -json: %+v", results)
	}
	table, _ := sb.must("", "jobs", "results", j.ID.String(), "-limit", "2")
	if got := rows(t, table, "DEVICE STATUS ATTEMPT OUTCOME COMMAND"); len(got) != 2 || !strings.HasPrefix(got[1], "job-2 ") {
		t.Fatalf("jobs results -limit 2:\n%s", table)
	}

	// A failing job: done_with_failures, exit 5, its error named.
	_, _, err := sb.run("", "jobs", "start", "fail", "-label", "!nothing", "-follow")
	if cli.ExitCode(err) != cli.ExitNotDone || !strings.Contains(err.Error(), "done_with_failures: 3× the valve is stuck") {
		t.Fatalf("a failing job: %v (exit %d)", err, cli.ExitCode(err))
	}

	// Scheduled, then cancelled; cancelling again says it had ended.
	stdout, said := sb.must("", "jobs", "start", "echo", "-region", "test", "-start-at", "1h")
	later := alone(t, "jobs start", stdout)
	if !strings.Contains(said, "is scheduled: 3 devices, from ") {
		t.Errorf("jobs start -start-at 1h said %q", said)
	}
	if _, said := sb.must("", "jobs", "cancel", later); !strings.Contains(said, "is cancelled") {
		t.Errorf("jobs cancel said %q", said)
	}
	if c := jsonOut[db.Job](sb, "", "jobs", "cancel", later, "-json"); c.Status != db.JobCancelled {
		t.Fatalf("jobs cancel -json again: %+v", c)
	}

	// list: newest first, every page; -status; -limit.
	jobs := jsonOut[[]db.Job](sb, "", "jobs", "list", "-json")
	if len(jobs) != 4 || jobs[0].ID.String() != later || jobs[3].Title != "Morning check" {
		t.Fatalf("jobs list -json: %+v", jobs)
	}
	table, _ = sb.must("", "jobs", "list", "-status", "done")
	if got := rows(t, table, "ID NAME TITLE STATUS DEVICES CREATED"); len(got) != 2 {
		t.Fatalf("jobs list -status done:\n%s", table)
	}
	if out, said, err := sb.run("", "jobs", "list", "-json", "-limit", "1"); err != nil || strings.Count(out, `"status"`) != 1 || !strings.Contains(said, "more follow") {
		t.Fatalf("jobs list -limit 1: %q, said %q, %v", out, said, err)
	}

	// The API's refusals.
	_, _, err = sb.run("", "jobs", "start", "echo", "-devices", "job-1,ghost")
	refused(t, "a job to a device that does not exist", err, http.StatusBadRequest, problem.UnknownDevices)
	_, _, err = sb.run("", "jobs", "get", "00000000-0000-7000-8000-000000000000")
	refused(t, "an unknown job", err, http.StatusNotFound, problem.JobNotFound)
	if _, _, err := sb.run("", "jobs", "start", "echo", "-all", "-label", "a=b"); err == nil || !strings.Contains(err.Error(), "one target") {
		t.Fatalf("two targets: %v", err)
	}
}

// TestCommandLineBinaryOverHTTP runs the built binary against an edge:
// what it prints and its exit codes, as a shell sees them.
func TestCommandLineBinaryOverHTTP(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	t.Parallel()
	bin := binary(t)
	sys := testsys.New(t)
	ed := sys.StartEdge(t, "edge-a", nil)
	key := sys.APIKey(t)

	run := func(env []string, args ...string) (stdout, stderr string, code int) {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err := cmd.Run()
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatal(err)
		}
		return out.String(), errOut.String(), cmd.ProcessState.ExitCode()
	}
	onEdge := []string{"SWITCHBOARD_EDGE=" + ed.URL, "SWITCHBOARD_KEY=" + key}

	secret, _, code := run(onEdge, "devices", "add", "bin-1")
	if code != 0 || strings.TrimSpace(secret) == "" {
		t.Fatalf("devices add: exit %d, printed %q", code, secret)
	}
	// The API's refusal: its status, title, detail and type on stderr, exit 3.
	out, stderr, code := run(onEdge, "devices", "add", "bin-1")
	if code != cli.ExitRefused || out != "" ||
		stderr != `switchboard: POST /v1/devices: 409 `+problem.DeviceExists.Title()+`: a device has the id "bin-1" (`+problem.DeviceExists.URI()+")\n" {
		t.Fatalf("devices add of an existing id: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	// A wrong key: 401.
	_, stderr, code = run([]string{"SWITCHBOARD_EDGE=" + ed.URL, "SWITCHBOARD_KEY=sbk_wrong"}, "devices", "list")
	if code != cli.ExitRefused || !strings.Contains(stderr, "401 Unauthorized") || !strings.Contains(stderr, problem.Unauthorized.URI()) {
		t.Fatalf("a wrong key: exit %d, stderr %q", code, stderr)
	}
	// No edge there: exit 4.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String()
	ln.Close()
	_, stderr, code = run([]string{"SWITCHBOARD_EDGE=" + closed, "SWITCHBOARD_KEY=" + key}, "jobs", "list")
	if code != cli.ExitUnavailable || !strings.Contains(stderr, "cannot be reached") {
		t.Fatalf("no edge: exit %d, stderr %q", code, stderr)
	}
	// No key: exit 1, saying where to put one.
	_, stderr, code = run([]string{"SWITCHBOARD_EDGE=" + ed.URL}, "commands", "get", "x")
	if code != cli.ExitError || !strings.Contains(stderr, "SWITCHBOARD_KEY") {
		t.Fatalf("no key: exit %d, stderr %q", code, stderr)
	}

	// version -json: the module, the commit and the toolchain stamped in.
	out, _, code = run(nil, "version", "-json")
	var v struct {
		Module, Version, Commit, Go, Platform string
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil || code != 0 {
		t.Fatalf("version -json: exit %d, %q: %v", code, out, err)
	}
	if v.Module != "github.com/switchboard-iot/switchboard" || v.Version == "" || v.Go != runtime.Version() ||
		v.Platform != runtime.GOOS+"/"+runtime.GOARCH || v.Commit != "" && !regexp.MustCompile(`^[0-9a-f]{40}$`).MatchString(v.Commit) {
		t.Fatalf("version -json: %+v", v)
	}
	if out, _, code := run(nil, "version"); code != 0 || !regexp.MustCompile(`(?m)^GO +`+regexp.QuoteMeta(runtime.Version())+`$`).MatchString(out) {
		t.Fatalf("version: exit %d\n%s", code, out)
	}
}
