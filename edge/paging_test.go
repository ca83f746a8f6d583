package edge_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/db"
)

// listing is one of the API's lists, as a client pages through it.
type listing struct {
	name   string
	path   string // with its filters, if any
	field  string // the answer's list
	schema string // the answer's schema in edge/openapi.json
	key    string // the field that names an item
	want   []string
	// other is the same listing with other filters: a cursor of this one
	// is refused there.
	other string
}

// page reads one page of a listing.
func (l listing) page(t *testing.T, c *api, query string) (keys []string, next string) {
	t.Helper()
	sep := "?"
	if strings.Contains(l.path, "?") {
		sep = "&"
	}
	resp, body := c.call(http.MethodGet, l.path+sep+query, "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s %s: %d %s", l.name, query, resp.StatusCode, body)
	}
	wantSchema(t, l.schema, body)
	var page map[string]json.RawMessage
	if err := json.Unmarshal(body, &page); err != nil {
		t.Fatal(err)
	}
	var items []map[string]any
	if err := json.Unmarshal(page[l.field], &items); err != nil || items == nil {
		t.Fatalf("%s: %q is not a list: %s", l.name, l.field, body)
	}
	for _, it := range items {
		keys = append(keys, fmt.Sprint(it[l.key]))
	}
	if raw, ok := page["next"]; ok {
		if err := json.Unmarshal(raw, &next); err != nil || next == "" {
			t.Fatalf("%s: next %s: want a cursor, or none on the last page", l.name, raw)
		}
	}
	return keys, next
}

// all pages through the listing, limit at a time: every page holds at
// most limit items, the last has no next and no page is empty.
func (l listing) all(t *testing.T, c *api, limit int) []string {
	t.Helper()
	var keys []string
	query := fmt.Sprintf("limit=%d", limit)
	for pages := 1; ; pages++ {
		if pages > 50 {
			t.Fatalf("%s: more than 50 pages: the cursor does not advance", l.name)
		}
		page, next := l.page(t, c, query)
		if len(page) > limit || len(page) == 0 {
			t.Fatalf("%s, limit %d: page %d holds %d items", l.name, limit, pages, len(page))
		}
		keys = append(keys, page...)
		if next == "" {
			return keys
		}
		query = fmt.Sprintf("limit=%d&cursor=%s", limit, url.QueryEscape(next))
	}
}

// Every list of the API takes limit and cursor and answers next, alike:
// devices, a device's sessions, its events and the fleet's, jobs, API
// keys. Each pages through every item once, in its order, with no next
// on the last page (also when it is full); the page size has the same
// bounds everywhere; a cursor is refused with other filters, or on
// another listing.
func TestListsPageAlike(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)
	c := newAPI(t, e.URL, sys.APIKey(t))
	ctx := t.Context()

	// Six of each (pages of 2, 3 and 6 end full), beside others that the
	// filters leave out.
	var devices, keys []string
	for i := range 6 {
		id := fmt.Sprintf("dev-%d", i)
		sys.AddDevice(t, id)
		devices = append(devices, id)
	}
	for range 5 {
		sys.APIKey(t, db.ScopeRead)
	}
	var keyList struct{ APIKeys []db.APIKey }
	resp, b := c.call(http.MethodGet, "/v1/apikeys", "")
	if err := json.Unmarshal(b, &keyList); err != nil || len(keyList.APIKeys) != 6 {
		t.Fatalf("GET /v1/apikeys: %d %s, want 6 keys", resp.StatusCode, b)
	}
	for _, k := range keyList.APIKeys {
		keys = append(keys, fmt.Sprint(k.ID))
	}

	var sessions []string // newest first
	start := time.Now().Add(-time.Hour).Truncate(time.Microsecond)
	for i := range 6 {
		id := uuid.Must(uuid.NewV7())
		if _, err := sys.Pool.Exec(ctx, `INSERT INTO device_sessions (session_id, device_id, node_id, region, connected_at)
			VALUES ($1, 'dev-0', 'node-a', 'test', $2), ($3, 'dev-1', 'node-a', 'test', $2)`,
			id, start.Add(time.Duration(i)*time.Minute), uuid.Must(uuid.NewV7())); err != nil {
			t.Fatal(err)
		}
		sessions = append([]string{id.String()}, sessions...)
	}

	var events []string // dev-0's telemetry, newest first; alerts between them
	for i := range 6 {
		last, err := sys.Store.InsertEvents(ctx, []db.DeviceEvent{
			{DeviceID: "dev-1", Name: "alert", Data: json.RawMessage(`{}`)},
			{DeviceID: "dev-0", Name: "telemetry", Data: json.RawMessage(fmt.Sprint(i))},
		})
		if err != nil {
			t.Fatal(err)
		}
		events = append([]string{fmt.Sprint(last)}, events...)
	}

	var jobs []string // newest first
	for range 6 {
		resp, b := c.call(http.MethodPost, "/v1/jobs", `{"name":"x","target":{"devices":["dev-0"]},"start_at":"`+
			time.Now().Add(24*time.Hour).UTC().Format(time.RFC3339)+`"}`)
		var j db.Job
		if err := json.Unmarshal(b, &j); err != nil || resp.StatusCode != http.StatusCreated {
			t.Fatalf("POST /v1/jobs: %d %s", resp.StatusCode, b)
		}
		jobs = append([]string{j.ID.String()}, jobs...)
	}

	lists := []listing{
		{name: "devices", path: "/v1/devices?q=dev-", field: "devices", schema: "DeviceList", key: "id", want: devices, other: "/v1/devices?q=dev"},
		{name: "sessions", path: "/v1/devices/dev-0/sessions", field: "sessions", schema: "SessionList", key: "session_id", want: sessions, other: "/v1/devices/dev-1/sessions"},
		{name: "device events", path: "/v1/devices/dev-0/events", field: "events", schema: "EventPage", key: "id", want: events, other: "/v1/devices/dev-0/events?name=telemetry"},
		{name: "fleet events", path: "/v1/events?name=telemetry", field: "events", schema: "EventPage", key: "id", want: events, other: "/v1/events?name=telemetry&region=test"},
		{name: "jobs", path: "/v1/jobs", field: "jobs", schema: "JobList", key: "id", want: jobs, other: "/v1/jobs?status=scheduled"},
		{name: "API keys", path: "/v1/apikeys", field: "apikeys", schema: "APIKeyList", key: "id", want: keys, other: "/v1/devices/dev-0/events"},
	}
	cursors := map[string]string{} // a first page's next, by listing
	for _, l := range lists {
		for _, limit := range []int{1, 2, 4, 6, 7} {
			if got := l.all(t, c, limit); !slices.Equal(got, l.want) {
				t.Errorf("%s, %d a page: %v, want %v", l.name, limit, got, l.want)
			}
		}
		_, cursors[l.name] = l.page(t, c, "limit=2")
		// The default page holds all six, and an empty limit or cursor is
		// as if not given.
		if got, next := l.page(t, c, "limit=&cursor="); !slices.Equal(got, l.want) || next != "" {
			t.Errorf("%s?limit=&cursor=: %v next %q, want all six and no next", l.name, got, next)
		}
	}

	for _, l := range lists {
		sep := "?"
		if strings.Contains(l.path, "?") {
			sep = "&"
		}
		bad := []struct{ query, slug, detail string }{
			{"limit=0", "invalid-query", "limit"},
			{"limit=1001", "invalid-query", "1 to 1000"},
			{"limit=ten", "invalid-query", "limit"},
			{"limit=1&limit=2", "invalid-query", "limit"},
			{"cursor=not-a-cursor", "invalid-cursor", "cursor"},
		}
		for other, c := range cursors { // another listing's cursor
			if other != l.name {
				bad = append(bad, struct{ query, slug, detail string }{"cursor=" + c, "invalid-cursor", "other filters"})
			}
		}
		for _, tc := range bad {
			resp, body := c.call(http.MethodGet, l.path+sep+tc.query, "")
			p := wantProblem(t, resp, body, http.StatusBadRequest, tc.slug)
			if !strings.Contains(p.Detail, tc.detail) {
				t.Errorf("%s?%s: detail %q does not mention %q", l.name, tc.query, p.Detail, tc.detail)
			}
		}
		// Its own cursor, with other filters.
		sep = "?"
		if strings.Contains(l.other, "?") {
			sep = "&"
		}
		resp, body := c.call(http.MethodGet, l.other+sep+"cursor="+cursors[l.name], "")
		p := wantProblem(t, resp, body, http.StatusBadRequest, "invalid-cursor")
		if !strings.Contains(p.Detail, "other filters") {
			t.Errorf("%s's cursor on %s: detail %q, want it to say the filters differ", l.name, l.other, p.Detail)
		}
	}
}
