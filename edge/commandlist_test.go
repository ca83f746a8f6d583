package edge_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/conn-tier"
	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/device"
	"github.com/switchboard-iot/switchboard/edge"
	"github.com/switchboard-iot/switchboard/internal/command"
)

// commandPage is an answer of GET /v1/commands.
type commandPage struct {
	Commands []json.RawMessage `json:"commands"`
	Next     *string           `json:"next"`
}

// listCommands pages through a command listing (path holds its filters)
// limit at a time, checking each page, and returns the ids in the order
// listed.
func listCommands(t *testing.T, c *api, path string, limit int) []uuid.UUID {
	t.Helper()
	sep := "?"
	if strings.Contains(path, "?") {
		sep = "&"
	}
	var ids []uuid.UUID
	cursor := ""
	for pages := 0; ; pages++ {
		if pages > 100 {
			t.Fatalf("%s: more than 100 pages", path)
		}
		p := fmt.Sprintf("%s%slimit=%d", path, sep, limit)
		if cursor != "" {
			p += "&cursor=" + url.QueryEscape(cursor)
		}
		resp, b := c.call(http.MethodGet, p, "")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d %s", p, resp.StatusCode, b)
		}
		wantSchema(t, "CommandList", b)
		var page commandPage
		if err := json.Unmarshal(b, &page); err != nil {
			t.Fatalf("decoding %s: %v", b, err)
		}
		if page.Commands == nil || len(page.Commands) > limit {
			t.Fatalf("GET %s: %d commands, want a list of at most %d: %s", p, len(page.Commands), limit, b)
		}
		for _, raw := range page.Commands {
			cmd, _ := decodeCommand(t, raw)
			ids = append(ids, cmd.ID)
		}
		if page.Next == nil {
			return ids
		}
		if len(page.Commands) != limit {
			t.Fatalf("GET %s: a page of %d (not the last) and a next", p, len(page.Commands))
		}
		cursor = *page.Next
	}
}

// commandRow is what the listing test knows of each command, read straight
// from the table.
type commandRow struct {
	id      uuid.UUID
	created time.Time
	device  string
	status  command.Status
	name    string
	job     *uuid.UUID
	key     *int64
}

func commandRows(t *testing.T, sys *testsys.System) []commandRow {
	t.Helper()
	rows, err := sys.Pool.Query(t.Context(), `SELECT id, created_at, device_id, status, name, job_id, api_key_id FROM commands`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []commandRow
	for rows.Next() {
		var r commandRow
		if err := rows.Scan(&r.id, &r.created, &r.device, &r.status, &r.name, &r.job, &r.key); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// newestFirst is the listing's order, worked out apart from the SQL:
// created_at, then id (as PostgreSQL compares uuids, bytewise), both
// descending.
func newestFirst(rows []commandRow, keep func(commandRow) bool) []uuid.UUID {
	var kept []commandRow
	for _, r := range rows {
		if keep(r) {
			kept = append(kept, r)
		}
	}
	slices.SortFunc(kept, func(a, b commandRow) int {
		if c := b.created.Compare(a.created); c != 0 {
			return c
		}
		return bytes.Compare(b.id[:], a.id[:])
	})
	ids := []uuid.UUID{}
	for _, r := range kept {
		ids = append(ids, r.id)
	}
	return ids
}

// sendTo sends a command with args {"n":n} and returns its id.
func sendTo(t *testing.T, c *api, deviceID, name string, n int, extra string) uuid.UUID {
	t.Helper()
	resp, b := c.sendCommand(deviceID, fmt.Sprintf(`{"name":%q,"args":{"n":%d}%s}`, name, n, extra))
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("sending %s to %s: %d %s", name, deviceID, resp.StatusCode, b)
	}
	return commandIDFrom(t, resp)
}

func keyOf(t *testing.T, sys *testsys.System, id uuid.UUID) int64 {
	t.Helper()
	var key int64
	if err := sys.Pool.QueryRow(t.Context(), `SELECT api_key_id FROM commands WHERE id = $1`, id).Scan(&key); err != nil {
		t.Fatal(err)
	}
	return key
}

// GET /v1/commands and GET /v1/devices/{id}/commands: every filter, alone
// and together, newest first across cursor pages (ties of created_at
// broken by id on both sides of a page's end), checked against the rows
// sorted here; what each key may see; cursors of other filters and bad
// input refused.
func TestListCommands(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", fastJobs, fastRunner)
	provision(t, sys, "dev", 4) // dev-0003 gets no command
	full := newAPI(t, e.URL, sys.APIKey(t))
	actor := newAPI(t, e.URL, sys.APIKey(t, db.ScopeCommands))
	other := newAPI(t, e.URL, sys.APIKey(t, db.ScopeCommands))
	reader := newAPI(t, e.URL, sys.APIKey(t, db.ScopeRead, db.ScopeAdmin))

	var fullIDs, actorIDs []uuid.UUID
	for i := range 9 {
		fullIDs = append(fullIDs, sendTo(t, full, "dev-0000", []string{"get_state", "reboot"}[i%2], i, ""))
	}
	for i := range 4 {
		actorIDs = append(actorIDs, sendTo(t, actor, "dev-0001", "get_state", i, ""))
	}
	sendTo(t, other, "dev-0001", "reboot", 0, "")
	sendTo(t, other, "dev-0002", "get_state", 1, "")
	job := postJob(t, actor, `{"name":"get_state","target":{"devices":["dev-0000","dev-0002"]},"rate":1000}`)
	waitJob(t, sys, job.ID, 20*time.Second, "the job's commands", func(j db.Job) bool { return j.Created == 2 })
	actorKey := keyOf(t, sys, actorIDs[0])
	otherKey := keyOf(t, sys, sendTo(t, other, "dev-0002", "reboot", 2, ""))

	// Some statuses of each kind: two cancelled by their keys, the others
	// final as a node or a sweep would leave them. (No delivered one: with
	// no node, the sweep would give it back.)
	for _, cancel := range []struct {
		c  *api
		id uuid.UUID
	}{{full, fullIDs[2]}, {actor, actorIDs[1]}} {
		resp, b := cancel.c.call(http.MethodPost, "/v1/commands/"+cancel.id.String()+"/cancel", "")
		if c, _ := wantCommand(t, resp, b, http.StatusOK); c.Status != command.Cancelled {
			t.Fatalf("cancelled: %s", b)
		}
	}
	for status, id := range map[string]uuid.UUID{"done": fullIDs[0], "failed": fullIDs[5], "expired": actorIDs[3]} {
		if _, err := sys.Pool.Exec(t.Context(), `UPDATE commands SET status = $2, completed_at = now() WHERE id = $1`, id, status); err != nil {
			t.Fatal(err)
		}
	}
	// Creation times a minute apart, two commands at each: the order
	// needs the id to break ties, and pages of 3 end inside a tie.
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if _, err := sys.Pool.Exec(t.Context(), `UPDATE commands SET created_at = $1::timestamptz + (seq / 2) * interval '1 minute'`, base); err != nil {
		t.Fatal(err)
	}
	rows := commandRows(t, sys)
	if len(rows) != 18 {
		t.Fatalf("%d commands, want 18", len(rows))
	}
	since, until := base.Add(3*time.Minute), base.Add(7*time.Minute)
	rfc := func(t time.Time) string { return url.QueryEscape(t.Format(time.RFC3339)) }

	t.Run("filters", func(t *testing.T) {
		all := func(commandRow) bool { return true }
		for _, tc := range []struct {
			path string
			keep func(commandRow) bool
		}{
			{"/v1/commands", all},
			{"/v1/commands?status=&name=&device=&job=&since=&until=", all}, // empty is as if not given
			{"/v1/commands?device=dev-0000", func(r commandRow) bool { return r.device == "dev-0000" }},
			{"/v1/devices/dev-0000/commands", func(r commandRow) bool { return r.device == "dev-0000" }},
			{"/v1/devices/dev-0003/commands", func(commandRow) bool { return false }},
			{"/v1/commands?device=ghost", func(commandRow) bool { return false }},
			{"/v1/commands?status=cancelled", func(r commandRow) bool { return r.status == command.Cancelled }},
			{"/v1/commands?status=pending,cancelled", func(r commandRow) bool {
				return r.status == command.Pending || r.status == command.Cancelled
			}},
			{"/v1/commands?status=done&status=failed,expired", func(r commandRow) bool {
				return r.status == command.Done || r.status == command.Failed || r.status == command.Expired
			}},
			{"/v1/commands?status=delivered", func(r commandRow) bool { return r.status == command.Delivered }},
			{"/v1/commands?name=reboot", func(r commandRow) bool { return r.name == "reboot" }},
			{"/v1/commands?job=" + job.ID.String(), func(r commandRow) bool { return r.job != nil && *r.job == job.ID }},
			{"/v1/commands?since=" + rfc(since), func(r commandRow) bool { return !r.created.Before(since) }},
			{"/v1/commands?until=" + rfc(until), func(r commandRow) bool { return r.created.Before(until) }},
			{"/v1/commands?since=" + rfc(since) + "&until=" + rfc(until), func(r commandRow) bool {
				return !r.created.Before(since) && r.created.Before(until)
			}},
			{"/v1/devices/dev-0001/commands?status=pending&name=get_state", func(r commandRow) bool {
				return r.device == "dev-0001" && r.status == command.Pending && r.name == "get_state"
			}},
		} {
			want := newestFirst(rows, tc.keep)
			for _, limit := range []int{1, 3, 1000} {
				if got := listCommands(t, full, tc.path, limit); !slices.Equal(got, want) {
					t.Errorf("%s, %d a page: %v, want %v", tc.path, limit, got, want)
				}
			}
		}
		// Each listed command is what GET /v1/commands/{id} answers.
		resp, b := full.call(http.MethodGet, "/v1/commands?limit=1", "")
		var page commandPage
		if err := json.Unmarshal(b, &page); err != nil || resp.StatusCode != http.StatusOK || len(page.Commands) != 1 {
			t.Fatalf("GET /v1/commands?limit=1: %d %s", resp.StatusCode, b)
		}
		listed, fields := decodeCommand(t, page.Commands[0])
		resp, b = full.call(http.MethodGet, "/v1/commands/"+listed.ID.String(), "")
		if _, got := wantCommand(t, resp, b, http.StatusOK); !reflect.DeepEqual(fields, got) {
			t.Errorf("listed %s, but GET answers %s", page.Commands[0], b)
		}
	})

	t.Run("visibility", func(t *testing.T) {
		// Without read, a key lists what it sent, itself or by its jobs.
		mine := func(key int64) func(commandRow) bool {
			return func(r commandRow) bool { return r.key != nil && *r.key == key }
		}
		for _, tc := range []struct {
			c    *api
			path string
			keep func(commandRow) bool
		}{
			{actor, "/v1/commands", mine(actorKey)},
			{other, "/v1/commands", mine(otherKey)},
			{actor, "/v1/devices/dev-0000/commands", func(r commandRow) bool { return mine(actorKey)(r) && r.device == "dev-0000" }},
			{other, "/v1/commands?device=dev-0000", func(commandRow) bool { return false }},
			{actor, "/v1/commands?job=" + job.ID.String(), func(r commandRow) bool { return r.job != nil }},
			{other, "/v1/commands?job=" + job.ID.String(), func(commandRow) bool { return false }},
		} {
			want := newestFirst(rows, tc.keep)
			if got := listCommands(t, tc.c, tc.path, 2); !slices.Equal(got, want) {
				t.Errorf("%s: %v, want %v", tc.path, got, want)
			}
		}
		if n := len(listCommands(t, actor, "/v1/commands", 1000)); n != 6 {
			t.Errorf("the commands key lists %d, want its 4 and its job's 2", n)
		}
		// No commands scope: 403, as for GET /v1/commands/{id}.
		for _, path := range []string{"/v1/commands", "/v1/devices/dev-0000/commands", "/v1/devices/ghost/commands"} {
			resp, b := reader.call(http.MethodGet, path, "")
			wantProblem(t, resp, b, http.StatusForbidden, "insufficient-scope")
		}
	})

	t.Run("cursors", func(t *testing.T) {
		first := func(path string) string {
			t.Helper()
			resp, b := full.call(http.MethodGet, path, "")
			var page commandPage
			if err := json.Unmarshal(b, &page); err != nil || resp.StatusCode != http.StatusOK || page.Next == nil {
				t.Fatalf("GET %s: %d %s, want a page with a next", path, resp.StatusCode, b)
			}
			return url.QueryEscape(*page.Next)
		}
		pending := first("/v1/commands?status=pending&limit=2")
		for _, path := range []string{
			"/v1/commands?status=cancelled&cursor=" + pending,
			"/v1/commands?cursor=" + pending,
			"/v1/commands?status=pending&name=reboot&cursor=" + pending,
			"/v1/devices/dev-0000/commands?status=pending&cursor=" + pending,
			"/v1/commands?status=pending&cursor=AAAA",
			"/v1/commands?status=pending&cursor=" + pending[:len(pending)-2],
			"/v1/commands?cursor=" + first("/v1/commands?since="+rfc(since)+"&limit=2"),
			"/v1/commands?device=dev-0000&cursor=" + first("/v1/devices/dev-0001/commands?limit=2"),
		} {
			resp, b := full.call(http.MethodGet, path, "")
			wantProblem(t, resp, b, http.StatusBadRequest, "invalid-cursor")
		}
		// The same filters, in another order or spelling, and another page
		// size: the cursor holds.
		for _, path := range []string{
			"/v1/commands?status=pending&limit=5&cursor=" + pending,
			"/v1/commands?cursor=" + pending + "&status=pending",
		} {
			if resp, b := full.call(http.MethodGet, path, ""); resp.StatusCode != http.StatusOK {
				t.Errorf("GET %s: %d %s", path, resp.StatusCode, b)
			}
		}
		statuses := first("/v1/commands?status=pending,cancelled&limit=1")
		if resp, b := full.call(http.MethodGet, "/v1/commands?status=cancelled&status=pending&cursor="+statuses, ""); resp.StatusCode != http.StatusOK {
			t.Errorf("statuses in another order refused the cursor: %d %s", resp.StatusCode, b)
		}
		// A device's listing and ?device= are one listing.
		if resp, b := full.call(http.MethodGet, "/v1/commands?device=dev-0000&cursor="+first("/v1/devices/dev-0000/commands?limit=2"), ""); resp.StatusCode != http.StatusOK {
			t.Errorf("a device's cursor with ?device=: %d %s", resp.StatusCode, b)
		}
	})

	t.Run("bad input", func(t *testing.T) {
		for _, path := range []string{
			"/v1/commands?staus=pending",
			"/v1/commands?limit=0",
			"/v1/commands?limit=1001",
			"/v1/commands?limit=ten",
			"/v1/commands?limit=1&limit=2",
			"/v1/commands?device=a&device=b",
			"/v1/commands?status=bogus",
			"/v1/commands?status=pending,",
			"/v1/commands?status=Pending",
			"/v1/commands?name=not%20a%20name",
			"/v1/commands?job=42",
			"/v1/commands?since=yesterday",
			"/v1/commands?until=2026-01-01",
			"/v1/commands?since=" + rfc(until) + "&until=" + rfc(since),
			"/v1/commands?since=" + rfc(since) + "&until=" + rfc(since),
			"/v1/commands?device=" + strings.Repeat("d", 129),
			"/v1/devices/dev-0000/commands?device=dev-0001",
			"/v1/devices/dev-0000/commands?wait=1s",
		} {
			resp, b := full.call(http.MethodGet, path, "")
			if p := wantProblem(t, resp, b, http.StatusBadRequest, "invalid-query"); p.Detail == "" {
				t.Errorf("%s: no detail", path)
			}
		}
		for _, path := range []string{"/v1/devices/ghost/commands", "/v1/devices/bad:id/commands", "/v1/devices/ghost/commands?status=pending"} {
			resp, b := full.call(http.MethodGet, path, "")
			wantProblem(t, resp, b, http.StatusNotFound, "device-not-found")
		}
	})
}

// POST /v1/commands/{id}/cancel: a pending command ends cancelled, its
// stream says so and ends, and the device never gets it, not even when it
// connects next; a retry answers the same; a delivered command is in
// flight (409) and a final one final (409); scopes and keys as for GET; a
// job's command cancelled alone keeps its job's counts and end right.
func TestCancelCommand(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", nil)
	e := sys.StartEdge(t, "edge-a", fastJobs, fastRunner)
	full := newAPI(t, e.URL, sys.APIKey(t))
	actor := newAPI(t, e.URL, sys.APIKey(t, db.ScopeCommands))
	other := newAPI(t, e.URL, sys.APIKey(t, db.ScopeCommands))
	reader := newAPI(t, e.URL, sys.APIKey(t, db.ScopeRead, db.ScopeAdmin))
	ids, secrets := provision(t, sys, "dev", 4)
	cancel := func(c *api, id uuid.UUID) (*http.Response, []byte) {
		t.Helper()
		return c.call(http.MethodPost, "/v1/commands/"+id.String()+"/cancel", "")
	}
	cancelled := func() float64 {
		v, _ := e.Scrape(t).Get("switchboard_commands_final_total", "status", "cancelled")
		return v
	}
	if v, ok := e.Scrape(t).Get("switchboard_commands_final_total", "status", "cancelled"); !ok || v != 0 {
		t.Fatalf("switchboard_commands_final_total{status=cancelled} = %v (%v), want present at 0", v, ok)
	}

	// dev-0000 is offline: its command waits, streamed.
	resp, sse := full.stream(http.MethodPost, "/v1/devices/dev-0000/commands", `{"name":"get_state","args":{"n":1}}`)
	first := commandIDFrom(t, resp)
	wantEvent(t, sse.must(t), "1", "accepted", first, command.Pending)
	resp, b := cancel(full, first)
	c, _ := wantCommand(t, resp, b, http.StatusOK)
	if c.ID != first || c.Status != command.Cancelled || c.Error != db.CancelledError || c.CompletedAt == nil || c.Attempts != 0 || c.DeliveredAt != nil {
		t.Fatalf("cancelled: %s", b)
	}
	wantEvent(t, sse.must(t), "3", "cancelled", first, command.Cancelled)
	sse.wantEnd(t)
	// A stream opened later, or resumed, ends the same way.
	_, later := full.stream(http.MethodGet, "/v1/commands/"+first.String()+"/events", "")
	if events := later.all(t); eventsSummary(events) != "1:accepted 3:cancelled" {
		t.Errorf("a later stream: %s, want 1:accepted 3:cancelled", eventsSummary(events))
	}
	// A retry answers the command as it is, and counts nothing again.
	resp, b = cancel(full, first)
	if again, _ := wantCommand(t, resp, b, http.StatusOK); again.Status != command.Cancelled || !again.CompletedAt.Equal(*c.CompletedAt) {
		t.Errorf("a second cancel: %s, want the first's answer", b)
	}
	if v := cancelled(); v != 1 {
		t.Errorf("switchboard_commands_final_total{status=cancelled} = %v, want 1", v)
	}

	// The device connects: it gets the command sent after, never the
	// cancelled one before it.
	var mu sync.Mutex
	var got []int
	gate := make(chan struct{})
	testsys.StartDevice(t, node, "dev-0000", secrets["dev-0000"], map[string]device.HandlerFunc{
		"get_state": func(_ context.Context, args json.RawMessage) (any, error) {
			var a struct{ N int }
			_ = json.Unmarshal(args, &a)
			mu.Lock()
			got = append(got, a.N)
			mu.Unlock()
			return map[string]any{"ok": true}, nil
		},
		"gated": func(ctx context.Context, _ json.RawMessage) (any, error) {
			select {
			case <-gate:
				return map[string]any{"gated": true}, nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		},
	})
	resp, b = full.sendCommand("dev-0000?wait=10s", `{"name":"get_state","args":{"n":2}}`)
	if c, _ := wantCommand(t, resp, b, http.StatusOK); c.Status != command.Done {
		t.Fatalf("the next command: %s", b)
	}
	mu.Lock()
	if !slices.Equal(got, []int{2}) {
		t.Errorf("the device got commands %v, want only the one sent after the cancel (2)", got)
	}
	mu.Unlock()
	if status, _ := row(t, sys, first); status != "cancelled" {
		t.Errorf("the cancelled command is %s now", status)
	}

	// Delivered: its device has it.
	held := sendTo(t, full, "dev-0000", "gated", 3, "")
	testsys.Eventually(t, "the gated command delivered", func() bool { s, _ := row(t, sys, held); return s == "delivered" })
	resp, b = cancel(full, held)
	wantProblem(t, resp, b, http.StatusConflict, "command-in-flight")
	close(gate)
	testsys.Eventually(t, "the gated command done", func() bool { s, _ := row(t, sys, held); return s == "done" })
	resp, b = cancel(full, held)
	wantProblem(t, resp, b, http.StatusConflict, "command-final")
	// Failed and expired are final too: dev-0001 stays offline past a 1s ttl.
	stale := sendTo(t, full, "dev-0001", "get_state", 4, `,"ttl":"1s"`)
	testsys.Eventually(t, "the command expired", func() bool { s, _ := row(t, sys, stale); return s == "expired" })
	resp, b = cancel(full, stale)
	wantProblem(t, resp, b, http.StatusConflict, "command-final")
	if s, _ := row(t, sys, stale); s != "expired" {
		t.Errorf("a refused cancel left the command %s", s)
	}

	// Whose command: without read, a key cancels only its own.
	mine := sendTo(t, actor, "dev-0001", "get_state", 5, "")
	for _, c := range []*api{other} {
		resp, b := cancel(c, mine)
		wantProblem(t, resp, b, http.StatusNotFound, "command-not-found")
	}
	resp, b = reader.call(http.MethodPost, "/v1/commands/"+mine.String()+"/cancel", "")
	wantProblem(t, resp, b, http.StatusForbidden, "insufficient-scope")
	if s, _ := row(t, sys, mine); s != "pending" {
		t.Fatalf("refused cancels left the command %s", s)
	}
	theirs := sendTo(t, full, "dev-0001", "get_state", 6, "")
	resp, b = cancel(actor, theirs)
	wantProblem(t, resp, b, http.StatusNotFound, "command-not-found")
	resp, b = cancel(actor, mine)
	if c, _ := wantCommand(t, resp, b, http.StatusOK); c.Status != command.Cancelled {
		t.Errorf("the key's own: %s", b)
	}
	resp, b = cancel(full, theirs) // read sees, and cancels, every key's
	if c, _ := wantCommand(t, resp, b, http.StatusOK); c.Status != command.Cancelled {
		t.Errorf("with read: %s", b)
	}
	resp, b = cancel(full, uuid.Must(uuid.NewV7()))
	wantProblem(t, resp, b, http.StatusNotFound, "command-not-found")
	resp, b = full.call(http.MethodPost, "/v1/commands/not-a-uuid/cancel", "")
	wantProblem(t, resp, b, http.StatusBadRequest, "invalid-command-id")
	if v := cancelled(); v != 3 {
		t.Errorf("switchboard_commands_final_total{status=cancelled} = %v, want 3", v)
	}

	// A job's command cancelled alone: the job counts it, goes on with
	// the other, and ends done_with_failures once that one is done.
	j := postJob(t, full, `{"name":"get_state","target":{"devices":["dev-0002","dev-0003"]},"rate":1000}`)
	waitJob(t, sys, j.ID, 20*time.Second, "the job's commands", func(j db.Job) bool { return j.Created == 2 })
	var jobCmd uuid.UUID
	if err := sys.Pool.QueryRow(t.Context(), `SELECT id FROM commands WHERE job_id = $1 AND device_id = 'dev-0002'`, j.ID).Scan(&jobCmd); err != nil {
		t.Fatal(err)
	}
	resp, b = cancel(full, jobCmd)
	wantCommand(t, resp, b, http.StatusOK)
	if got, _ := getJob(t, full, j.ID); got.Status != db.JobRunning || *got.Counts != (db.JobCounts{Pending: 1, Cancelled: 1}) {
		t.Fatalf("the job after one command's cancel: %s %+v", got.Status, *got.Counts)
	}
	connect(t, []*testsys.Node{node}, ids[3:], secrets, ok).waitConnected(t, 20*time.Second)
	end := waitJob(t, sys, j.ID, 20*time.Second, "the job to end", func(j db.Job) bool { return j.Status.Final() })
	if end.Status != db.JobDoneWithFailures || *end.Counts != (db.JobCounts{Done: 1, Cancelled: 1}) ||
		len(end.Errors) != 1 || end.Errors[0] != (db.JobError{Error: db.CancelledError, Count: 1}) {
		t.Errorf("the job ended %s, counts %+v, errors %+v; want done_with_failures, one done, one cancelled", end.Status, *end.Counts, end.Errors)
	}
}

// TestCancelRace: commands cancelled while a node delivers them. Each ends
// either delivered and answered (its cancel answered 409) or cancelled
// (its cancel answered 200), never both: the device never receives a
// cancelled command. The node's queue is small, so the device's backlog is
// claimed in many rounds, and the cancels (newest first) meet them.
func TestCancelRace(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", func(c *conntier.Config) { c.SendQueue = 4 })
	// 300 commands at one device: past its queue cap, which is not tested here.
	e := sys.StartEdge(t, "edge-a", func(cfg *edge.Config) { fastJobs(cfg); cfg.DeviceQueue = -1 })
	c := newAPI(t, e.URL, sys.APIKey(t))
	devSecret := sys.AddDevice(t, "racer")
	const n = 300

	// Accepted while the device is offline: all pending.
	cmds := make([]uuid.UUID, n)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < n; i += 8 {
				resp, b := c.sendCommand("racer", fmt.Sprintf(`{"name":"step","args":{"n":%d}}`, i))
				if resp.StatusCode != http.StatusAccepted {
					t.Errorf("sending %d: %d %s", i, resp.StatusCode, b)
					return
				}
				cmds[i] = commandIDFrom(t, resp)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	var mu sync.Mutex
	received := make(map[int]int) // n → times the device got it
	started := make(chan struct{})
	testsys.StartDevice(t, node, "racer", devSecret, map[string]device.HandlerFunc{
		"step": func(_ context.Context, args json.RawMessage) (any, error) {
			var a struct{ N int }
			if err := json.Unmarshal(args, &a); err != nil {
				return nil, err
			}
			mu.Lock()
			received[a.N]++
			if len(received) == 1 {
				close(started)
			}
			mu.Unlock()
			return map[string]any{"n": a.N}, nil
		},
	})
	select {
	case <-started:
	case <-time.After(20 * time.Second):
		t.Fatal("the device received no command")
	}

	// Cancel every command, newest first, from several clients at once.
	answers := make([]string, n) // "200", or the problem type's slug
	next := make(chan int)
	for range 8 {
		wg.Go(func() {
			for i := range next {
				resp, b := c.call(http.MethodPost, "/v1/commands/"+cmds[i].String()+"/cancel", "")
				switch resp.StatusCode {
				case http.StatusOK:
					answers[i] = "200"
				case http.StatusConflict:
					var p struct{ Type string }
					_ = json.Unmarshal(b, &p)
					answers[i] = p.Type[strings.LastIndex(p.Type, "/")+1:]
				default:
					t.Errorf("cancel %d: %d %s", i, resp.StatusCode, b)
				}
			}
		})
	}
	for i := n - 1; i >= 0; i-- {
		next <- i
	}
	close(next)
	wg.Wait()

	statuses := make(map[uuid.UUID]string, n)
	testsys.Eventually(t, "every command final", func() bool {
		rows, err := sys.Pool.Query(t.Context(), `SELECT id, status FROM commands WHERE device_id = 'racer'`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		final := 0
		for rows.Next() {
			var id uuid.UUID
			var status string
			if err := rows.Scan(&id, &status); err != nil {
				t.Fatal(err)
			}
			statuses[id] = status
			if command.Status(status).Final() {
				final++
			}
		}
		return final == n
	})
	mu.Lock()
	defer mu.Unlock()
	var done, cancelledN int
	for i, id := range cmds {
		got := received[i]
		switch status := statuses[id]; {
		case status == "cancelled":
			cancelledN++
			if got != 0 || answers[i] != "200" {
				t.Errorf("command %d: cancelled (cancel answered %s), and the device received it %d times", i, answers[i], got)
			}
		case status == "done":
			done++
			if got != 1 || (answers[i] != "command-in-flight" && answers[i] != "command-final") {
				t.Errorf("command %d: done, received %d times, and its cancel answered %s", i, got, answers[i])
			}
		default:
			t.Errorf("command %d: %s, want done or cancelled", i, status)
		}
	}
	t.Logf("%d delivered and answered, %d cancelled", done, cancelledN)
	if done == 0 || cancelledN == 0 {
		t.Errorf("%d done and %d cancelled: the cancels did not meet the deliveries", done, cancelledN)
	}
}
