package edge_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-iot/switchboard/app/testsys"
	conntier "github.com/switchboard-iot/switchboard/conn-tier"
	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/device/protocol"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

// Managing devices over HTTP: delete, disable, enable, rotate, import,
// each against a real edge and node, as an operator without psql would.

// waitOnline waits for a device to be online, as the API says.
func waitOnline(t *testing.T, c *api, id string) {
	t.Helper()
	testsys.Eventually(t, id+" online", func() bool {
		var d db.Device
		resp, b := c.call(http.MethodGet, "/v1/devices/"+id, "")
		return resp.StatusCode == http.StatusOK && json.Unmarshal(b, &d) == nil && d.Online
	})
}

func decode[T any](t *testing.T, resp *http.Response, b []byte, status int) T {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("%s %s: status %d, want %d; body %s", resp.Request.Method, resp.Request.URL.Path, resp.StatusCode, status, b)
	}
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("decoding %s: %v", b, err)
	}
	return v
}

// manageFixture is an edge, a node and a client with an admin (and read)
// key. The node takes any number of connects: the tests dial one device
// many times in a row.
func manageFixture(t *testing.T) (*testsys.System, *testsys.Edge, *testsys.Node, *api) {
	t.Helper()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)
	node := sys.StartNode(t, "node-a", func(c *conntier.Config) { c.DeviceConnectRate = -1 })
	return sys, e, node, newAPI(t, e.URL, sys.APIKey(t, db.ScopeAdmin, db.ScopeRead))
}

func TestDeleteDevice(t *testing.T) {
	t.Parallel()
	sys, e, node, admin := manageFixture(t)
	devSecret := sys.AddDevice(t, "dev-1")
	sys.AddDevice(t, "dev-2")
	ws, _ := node.Dial(t, "dev-1", devSecret)
	waitOnline(t, admin, "dev-1")
	c := newAPI(t, e.URL, sys.APIKey(t, db.ScopeCommands))
	for _, id := range []string{"dev-1", "dev-1", "dev-2"} {
		if resp, b := c.sendCommand(id, `{"name":"read","ttl":"1h"}`); resp.StatusCode != http.StatusAccepted {
			t.Fatalf("sending a command: %d %s", resp.StatusCode, b)
		}
	}
	if _, err := sys.Pool.Exec(t.Context(), `INSERT INTO events (device_id, name) VALUES ('dev-1', 'a'), ('dev-1', 'b'), ('dev-2', 'a');
		INSERT INTO device_sessions (session_id, device_id, node_id, region, connected_at) VALUES (gen_random_uuid(), 'dev-1', 'node-a', 'test', now())`); err != nil {
		t.Fatal(err)
	}

	resp, b := admin.call(http.MethodDelete, "/v1/devices/dev-1", "")
	got := decode[struct {
		ID      string
		Deleted db.DeletedDevice
	}](t, resp, b, http.StatusOK)
	if got.ID != "dev-1" || got.Deleted.Commands < 2 || got.Deleted.Events != 2 || got.Deleted.Sessions != 1 {
		t.Fatalf("delete answered %s; want dev-1 with its 2 commands, 2 events and 1 session", b)
	}
	testsys.WantClosed(t, ws, protocol.CloseBadMessage, "device deleted")
	resp, b = admin.call(http.MethodGet, "/v1/devices/dev-1", "")
	wantProblem(t, resp, b, http.StatusNotFound, "device-not-found")
	if n := count(t, sys, `SELECT (SELECT count(*) FROM commands WHERE device_id = 'dev-1') + (SELECT count(*) FROM events WHERE device_id = 'dev-1')
		+ (SELECT count(*) FROM device_sessions WHERE device_id = 'dev-1')`); n != 0 {
		t.Fatalf("%d rows of the deleted device remain", n)
	}
	if n := count(t, sys, `SELECT (SELECT count(*) FROM commands WHERE device_id = 'dev-2') + (SELECT count(*) FROM events WHERE device_id = 'dev-2')`); n != 2 {
		t.Fatalf("dev-2 has %d commands and events, want its 2 untouched", n)
	}
	if node.Accepts(t, "dev-1", devSecret) {
		t.Fatal("a deleted device connected")
	}

	// Again, as a retry after a lost answer: 404, the device is gone. So
	// is any id no device has, of the old format too.
	for _, id := range []string{"dev-1", "never", "old:1"} {
		resp, b = admin.call(http.MethodDelete, "/v1/devices/"+id, "")
		wantProblem(t, resp, b, http.StatusNotFound, "device-not-found")
	}
}

func TestDisableAndEnableDevice(t *testing.T) {
	t.Parallel()
	sys, _, node, admin := manageFixture(t)
	devSecret := sys.AddDevice(t, "dev-1")
	ws, _ := node.Dial(t, "dev-1", devSecret)
	waitOnline(t, admin, "dev-1")

	resp, b := admin.call(http.MethodPost, "/v1/devices/dev-1/disable", "")
	first := decode[db.Device](t, resp, b, http.StatusOK)
	if first.ID != "dev-1" || first.DisabledAt == nil {
		t.Fatalf("disable answered %s, want the device with disabled_at", b)
	}
	testsys.WantClosed(t, ws, protocol.CloseBadMessage, "device disabled")
	if node.Accepts(t, "dev-1", devSecret) {
		t.Fatal("a disabled device connected")
	}
	// Twice: the same answer, the first disable's time.
	resp, b = admin.call(http.MethodPost, "/v1/devices/dev-1/disable", "")
	if again := decode[db.Device](t, resp, b, http.StatusOK); again.DisabledAt == nil || !again.DisabledAt.Equal(*first.DisabledAt) {
		t.Fatalf("disable again answered %s, want disabled_at %v", b, first.DisabledAt)
	}

	for range 2 { // twice: the same answer
		resp, b = admin.call(http.MethodPost, "/v1/devices/dev-1/enable", "")
		if d := decode[db.Device](t, resp, b, http.StatusOK); d.DisabledAt != nil || strings.Contains(string(b), "disabled_at") {
			t.Fatalf("enable answered %s, want no disabled_at", b)
		}
	}
	if !node.Accepts(t, "dev-1", devSecret) {
		t.Fatal("an enabled device was refused")
	}

	for _, path := range []string{"/v1/devices/nope/disable", "/v1/devices/nope/enable", "/v1/devices/a:b/disable"} {
		resp, b = admin.call(http.MethodPost, path, "")
		wantProblem(t, resp, b, http.StatusNotFound, "device-not-found")
	}
	resp, b = admin.call(http.MethodPost, "/v1/devices/dev-1/disable", `{"reason":"stolen"}`)
	wantProblem(t, resp, b, http.StatusBadRequest, "invalid-json")
	if d, err := sys.Store.Device(t.Context(), "dev-1"); err != nil || d.DisabledAt != nil {
		t.Fatalf("a refused disable disabled the device: %+v %v", d, err)
	}
}

type rotationAnswer struct {
	ID                  string    `json:"id"`
	Secret              string    `json:"secret"`
	PreviousSecretUntil time.Time `json:"previous_secret_until"`
}

func TestRotateDevice(t *testing.T) {
	t.Parallel()
	sys, _, node, admin := manageFixture(t)
	old := sys.AddDevice(t, "dev-1")

	// No body: a random secret, the old one working for a day.
	resp, b := admin.call(http.MethodPost, "/v1/devices/dev-1/rotate", "")
	r := decode[rotationAnswer](t, resp, b, http.StatusOK)
	if left := time.Until(r.PreviousSecretUntil); r.ID != "dev-1" || r.Secret == "" || r.Secret == old || left < 23*time.Hour+59*time.Minute || left > 24*time.Hour {
		t.Fatalf("rotate answered %s; want a new secret and the old one for 24h", b)
	}
	if !node.Accepts(t, "dev-1", old) || !node.Accepts(t, "dev-1", r.Secret) {
		t.Fatal("within the grace: want the old and the new secret accepted")
	}

	// A secret of the client's, with a grace: a retry answers the same and
	// changes nothing.
	mine := secret.New("")
	body := fmt.Sprintf(`{"secret":%q,"grace":"1h"}`, mine)
	resp, b = admin.call(http.MethodPost, "/v1/devices/dev-1/rotate", body)
	given := decode[rotationAnswer](t, resp, b, http.StatusOK)
	if left := time.Until(given.PreviousSecretUntil); given.Secret != mine || left < 59*time.Minute || left > time.Hour {
		t.Fatalf("rotate to a given secret answered %s", b)
	}
	resp, b = admin.call(http.MethodPost, "/v1/devices/dev-1/rotate", body)
	if again := decode[rotationAnswer](t, resp, b, http.StatusOK); again != given {
		t.Fatalf("a retry answered %s, want %+v", b, given)
	}
	if node.Accepts(t, "dev-1", old) || !node.Accepts(t, "dev-1", r.Secret) || !node.Accepts(t, "dev-1", mine) {
		t.Fatal("after the retry: want the two latest secrets accepted, the first refused")
	}

	// No grace: the replaced secret stops at once.
	resp, b = admin.call(http.MethodPost, "/v1/devices/dev-1/rotate", `{"grace":"0s"}`)
	latest := decode[rotationAnswer](t, resp, b, http.StatusOK)
	if node.Accepts(t, "dev-1", mine) || !node.Accepts(t, "dev-1", latest.Secret) {
		t.Fatal("grace 0s: want the replaced secret refused, the new one accepted")
	}

	// Refused, and nothing changes.
	for _, tc := range []struct {
		path, body, problem string
		status              int
	}{
		{"/v1/devices/dev-1/rotate", `{"grace":"-1h"}`, "invalid-duration", http.StatusBadRequest},
		{"/v1/devices/dev-1/rotate", `{"grace":"a while"}`, "invalid-duration", http.StatusBadRequest},
		{"/v1/devices/dev-1/rotate", `{"secret":"changeme-changeme-changeme"}`, "invalid-secret", http.StatusBadRequest},
		{"/v1/devices/dev-1/rotate", `{"secret":"short"}`, "invalid-secret", http.StatusBadRequest},
		{"/v1/devices/dev-1/rotate", `{"graze":"1h"}`, "invalid-json", http.StatusBadRequest},
		{"/v1/devices/nope/rotate", "", "device-not-found", http.StatusNotFound},
		{"/v1/devices/a:b/rotate", "", "device-not-found", http.StatusNotFound},
	} {
		resp, b = admin.call(http.MethodPost, tc.path, tc.body)
		wantProblem(t, resp, b, tc.status, tc.problem)
	}
	if !node.Accepts(t, "dev-1", latest.Secret) {
		t.Fatal("a refused rotation changed the secret")
	}
}

type importAnswer struct {
	Added    int `json:"added"`
	Existing int `json:"existing"`
	Devices  []struct {
		Line       int    `json:"line"`
		ID         string `json:"id"`
		Status     string `json:"status"`
		Secret     string `json:"secret"`
		SameSecret *bool  `json:"same_secret"`
	} `json:"devices"`
}

func TestImportDevices(t *testing.T) {
	t.Parallel()
	sys, _, node, admin := manageFixture(t)
	sys.AddDevice(t, "old-1")
	given := secret.New("")
	importCSV := func(body string) (*http.Response, []byte) {
		return admin.call(http.MethodPost, "/v1/devices:import", body, "Content-Type", "text/csv")
	}

	// CSV: the CLI's lines; a comment, a blank line, an id that exists.
	resp, b := importCSV("# kitchen\ncsv-1\n\ncsv-2," + given + "\nold-1\n")
	got := decode[importAnswer](t, resp, b, http.StatusOK)
	if got.Added != 2 || got.Existing != 1 || len(got.Devices) != 3 {
		t.Fatalf("CSV import answered %s; want 2 added, 1 existing", b)
	}
	for i, want := range []struct {
		line           int
		id, status     string
		secret, hidden bool
	}{{2, "csv-1", "added", true, false}, {4, "csv-2", "added", true, false}, {5, "old-1", "exists", false, true}} {
		d := got.Devices[i]
		if d.Line != want.line || d.ID != want.id || d.Status != want.status || (d.Secret != "") != want.secret || d.SameSecret != nil {
			t.Errorf("line %d: %+v, want %+v", i, d, want)
		}
	}
	if got.Devices[1].Secret != given || !node.Accepts(t, "csv-1", got.Devices[0].Secret) {
		t.Fatalf("the secrets answered do not work: %s", b)
	}

	// Again: a retry; with the secret given, same_secret says it is the one.
	resp, b = importCSV("csv-1\ncsv-2," + given + "\n")
	got = decode[importAnswer](t, resp, b, http.StatusOK)
	if got.Added != 0 || got.Existing != 2 || got.Devices[0].SameSecret != nil || got.Devices[1].SameSecret == nil || !*got.Devices[1].SameSecret ||
		got.Devices[0].Secret != "" || got.Devices[1].Secret != "" {
		t.Fatalf("the retry answered %s; want both existing, csv-2 with its secret, no secret shown", b)
	}

	// JSON lines, with labels.
	resp, b = admin.call(http.MethodPost, "/v1/devices:import", `{"id":"json-1","labels":{"room":"attic"}}`+"\n"+`{"id":"json-2","secret":"`+secret.New("")+`"}`,
		"Content-Type", "application/x-ndjson; charset=utf-8")
	if got = decode[importAnswer](t, resp, b, http.StatusOK); got.Added != 2 {
		t.Fatalf("JSON lines import answered %s", b)
	}
	if d, err := sys.Store.Device(t.Context(), "json-1"); err != nil || string(d.Labels) != `{"room": "attic"}` {
		t.Fatalf("json-1: %s %v; want its label", d.Labels, err)
	}

	// A bad line stores nothing, and is named.
	devices := count(t, sys, `SELECT count(*) FROM devices`)
	var many strings.Builder
	for i := range 10_001 {
		fmt.Fprintf(&many, "bulk-%d\n", i)
	}
	for _, tc := range []struct {
		ctype, body string
		status      int
		problem     string
		says        string
	}{
		{"text/csv", "new-1\nnew:2\n", http.StatusBadRequest, "invalid-import", `line 2: device id "new:2"`},
		{"text/csv", "new-1\nnew-1\n", http.StatusBadRequest, "invalid-import", `line 2: device id "new-1" is also on line 1`},
		{"text/csv", "new-1,changeme-changeme-changeme\n", http.StatusBadRequest, "invalid-import", "line 1 (new-1): secret is the same 9 characters"},
		{"text/csv", "# nothing\n", http.StatusBadRequest, "invalid-import", "no device"},
		{"application/jsonl", `{"id":"new-1"}` + "\n" + `{"id":"new-2","room":"x"}`, http.StatusBadRequest, "invalid-import", `line 2: json: unknown field "room"`},
		{"application/jsonl", `{"id":"new-1","labels":{"room":null}}`, http.StatusBadRequest, "invalid-import", `line 1: label "room"`},
		{"application/jsonl", `{"id":"new-1","labels":{"-bad":"x"}}`, http.StatusBadRequest, "invalid-import", `line 1: label "-bad"`},
		{"application/json", `{"id":"new-1"}`, http.StatusUnsupportedMediaType, "unsupported-media-type", "text/csv"},
		{"text/csv", many.String(), http.StatusRequestEntityTooLarge, "import-too-large", "at most 10000"},
		{"text/csv", strings.Repeat("x", 3<<20), http.StatusRequestEntityTooLarge, "import-too-large", "limited to 2048 KiB"},
	} {
		resp, b := admin.call(http.MethodPost, "/v1/devices:import", tc.body, "Content-Type", tc.ctype)
		if p := wantProblem(t, resp, b, tc.status, tc.problem); !strings.Contains(p.Detail, tc.says) {
			t.Errorf("%.40q: detail %q, want it to say %q", tc.body, p.Detail, tc.says)
		}
	}
	if n := count(t, sys, `SELECT count(*) FROM devices`); n != devices {
		t.Fatalf("refused imports stored %d devices", n-devices)
	}

	// The route is the import's alone: /devices/{id} needs the slash, so
	// no device route takes "devices:import" for an id.
	resp, b = admin.call(http.MethodGet, "/v1/devices:import", "")
	wantProblem(t, resp, b, http.StatusMethodNotAllowed, "method-not-allowed")
	if allow := resp.Header.Get("Allow"); allow != http.MethodPost {
		t.Errorf("GET /v1/devices:import: Allow %q, want POST", allow)
	}
	resp, b = admin.call(http.MethodDelete, "/v1/devices:import", "")
	wantProblem(t, resp, b, http.StatusMethodNotAllowed, "method-not-allowed")
}
