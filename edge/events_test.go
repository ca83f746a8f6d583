package edge_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/db"
)

// eventData is an event as the API shows it.
type eventData struct {
	ID         int64           `json:"id"`
	DeviceID   string          `json:"device_id"`
	Name       string          `json:"name"`
	Data       json.RawMessage `json:"data"`
	ReceivedAt string          `json:"received_at"`
}

// nextEvent reads a stream's next device event and checks that its SSE
// id and name are the event's own.
func nextEvent(t *testing.T, s *sseReader) eventData {
	t.Helper()
	ev := s.must(t)
	var e eventData
	if err := json.Unmarshal([]byte(ev.Data), &e); err != nil {
		t.Fatalf("event data %q: %v", ev.Data, err)
	}
	if ev.ID != strconv.FormatInt(e.ID, 10) || ev.Name != e.Name || e.ReceivedAt == "" {
		t.Fatalf("SSE event id %q name %q carries %+v: want its id and name", ev.ID, ev.Name, e)
	}
	return e
}

// sendEvents makes the device send telemetry events numbered from..to-1.
func sendEvents(t *testing.T, d *testsys.Device, name string, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		if err := d.Event(t.Context(), name, map[string]int{"n": i}); err != nil {
			t.Fatal(err)
		}
	}
}

func wantN(t *testing.T, e eventData, device string, n int) {
	t.Helper()
	var data struct{ N *int }
	_ = json.Unmarshal(e.Data, &data)
	if e.DeviceID != device || data.N == nil || *data.N != n {
		t.Fatalf("got %s's event %s, want %s's n=%d", e.DeviceID, e.Data, device, n)
	}
}

// A device's events reach a stream on another edge than any the device
// touches, and a client that reconnects elsewhere with Last-Event-ID gets
// what it missed from the history, then the live events: nothing lost,
// nothing twice.
func TestDeviceEventsStreamAndResumeAcrossEdges(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", nil)
	ea, eb := sys.StartEdge(t, "edge-a", nil), sys.StartEdge(t, "edge-b", nil)
	key := sys.APIKey(t, db.ScopeRead)
	d1 := testsys.StartDevice(t, node, "dev-1", sys.AddDevice(t, "dev-1"), nil)
	d2 := testsys.StartDevice(t, node, "dev-2", sys.AddDevice(t, "dev-2"), nil)
	a, b := newAPI(t, ea.URL, key), newAPI(t, eb.URL, key)

	resp, s := b.stream("GET", "/v1/devices/dev-1/events", "")
	sendEvents(t, d2, "telemetry", 0, 1) // another device's: not on this stream
	sendEvents(t, d1, "telemetry", 0, 3)
	var last eventData
	for i := range 3 {
		last = nextEvent(t, s)
		wantN(t, last, "dev-1", i)
	}
	resp.Body.Close()

	// Missed while away, then live after the resume, on the other edge.
	sendEvents(t, d1, "telemetry", 3, 6)
	_, s = a.stream("GET", "/v1/devices/dev-1/events", "", "Last-Event-ID", strconv.FormatInt(last.ID, 10))
	for i := 3; i < 6; i++ {
		wantN(t, nextEvent(t, s), "dev-1", i)
	}
	sendEvents(t, d1, "telemetry", 6, 8)
	for i := 6; i < 8; i++ {
		last = nextEvent(t, s)
		wantN(t, last, "dev-1", i)
	}
	// ?after= resumes as the header does (for clients without headers).
	_, s = b.stream("GET", fmt.Sprintf("/v1/devices/dev-1/events?after=%d", last.ID-1), "")
	wantN(t, nextEvent(t, s), "dev-1", 7)

	// The device shows its latest value of each name.
	_, body := a.call("GET", "/v1/devices/dev-1", "")
	var dev struct {
		Latest map[string]struct {
			ID   int64           `json:"id"`
			Data json.RawMessage `json:"data"`
		} `json:"latest"`
	}
	if err := json.Unmarshal(body, &dev); err != nil {
		t.Fatal(err)
	}
	if l := dev.Latest["telemetry"]; l.ID != last.ID || string(l.Data) != `{"n":7}` {
		t.Fatalf("GET device's latest telemetry = %+v, want event %d", l, last.ID)
	}

	// The history as JSON, newest first, a page at a time.
	var got []string
	for path := "/v1/devices/dev-1/events?limit=3"; ; {
		resp, body := a.call("GET", path, "")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d %s", path, resp.StatusCode, body)
		}
		var page struct {
			Events []eventData `json:"events"`
			Next   string      `json:"next"`
		}
		if err := json.Unmarshal(body, &page); err != nil {
			t.Fatal(err)
		}
		for _, e := range page.Events {
			got = append(got, string(e.Data))
		}
		if page.Next == "" {
			break
		}
		path = "/v1/devices/dev-1/events?limit=3&cursor=" + page.Next
	}
	if want := `[{"n":7} {"n":6} {"n":5} {"n":4} {"n":3} {"n":2} {"n":1} {"n":0}]`; fmt.Sprint(got) != want {
		t.Fatalf("history = %v, want %s", got, want)
	}

	// Bad resume points and queries: 400, unknown devices 404.
	_, body = a.call("GET", "/v1/devices/dev-2/events?limit=1", "")
	var other struct{ Events []eventData }
	if err := json.Unmarshal(body, &other); err != nil || len(other.Events) != 1 {
		t.Fatalf("dev-2's history %s: %v", body, err)
	}
	for _, hdr := range [][]string{
		{"Last-Event-ID", strconv.FormatInt(other.Events[0].ID, 10)}, // another device's event
		{"Last-Event-ID", strconv.FormatInt(last.ID+1000, 10)},       // never sent
		{"Last-Event-ID", "x"},
	} {
		resp, body := a.call("GET", "/v1/devices/dev-1/events", "", append([]string{"Accept", "text/event-stream"}, hdr...)...)
		wantProblem(t, resp, body, http.StatusBadRequest, "invalid-last-event-id")
	}
	for path, slug := range map[string]string{
		"/v1/devices/dev-1/events?cursor=-4":  "invalid-cursor",
		"/v1/devices/dev-1/events?limit=0":    "invalid-query",
		"/v1/devices/dev-1/events?colour=1":   "invalid-query",
		"/v1/devices/dev-1/events?name=a%20b": "invalid-query",
	} {
		resp, body := a.call("GET", path, "")
		wantProblem(t, resp, body, http.StatusBadRequest, slug)
	}
	resp, body = a.call("GET", "/v1/devices/nobody/events", "")
	wantProblem(t, resp, body, http.StatusNotFound, "device-not-found")
}

// The fleet's stream takes the events its filters select: by name, by the
// device's labels, by region.
func TestFleetEventsFiltered(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", nil)
	e := sys.StartEdge(t, "edge-a", nil)
	c := newAPI(t, e.URL, sys.APIKey(t, db.ScopeRead))
	kitchen := testsys.StartDevice(t, node, "kitchen-1", sys.AddDevice(t, "kitchen-1"), nil)
	hall := testsys.StartDevice(t, node, "hall-1", sys.AddDevice(t, "hall-1"), nil)
	if _, err := sys.Pool.Exec(t.Context(), `UPDATE devices SET labels = '{"room":"kitchen"}' WHERE id = 'kitchen-1'`); err != nil {
		t.Fatal(err)
	}

	_, alerts := c.stream("GET", "/v1/events?name=alert&label=room=kitchen", "")
	_, all := c.stream("GET", "/v1/events", "")
	sendEvents(t, hall, "alert", 0, 1)
	sendEvents(t, kitchen, "telemetry", 1, 2)
	sendEvents(t, kitchen, "alert", 2, 3)
	wantN(t, nextEvent(t, alerts), "kitchen-1", 2)
	// Two devices' events may be stored in either order; each device's
	// come in the order it sent them.
	var first eventData
	seen := map[string]bool{}
	for range 3 {
		e := nextEvent(t, all)
		seen[e.DeviceID+":"+string(e.Data)] = true
		if e.DeviceID == "kitchen-1" && e.Name == "alert" {
			first = e
		}
	}
	if !seen[`hall-1:{"n":0}`] || !seen[`kitchen-1:{"n":1}`] || first.ID == 0 {
		t.Fatalf("the fleet stream gave %v, want all three events", seen)
	}

	// Resuming the filtered stream replays only what it selects.
	sendEvents(t, hall, "alert", 3, 4)
	sendEvents(t, kitchen, "alert", 4, 5)
	_, s := c.stream("GET", "/v1/events?name=alert&label=room=kitchen", "", "Last-Event-ID", strconv.FormatInt(first.ID, 10))
	wantN(t, nextEvent(t, s), "kitchen-1", 4)

	// History, filtered by region (the node's).
	resp, body := c.call("GET", "/v1/events?region=test&name=telemetry", "")
	var page struct{ Events []eventData }
	if err := json.Unmarshal(body, &page); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v1/events: %d %s", resp.StatusCode, body)
	}
	if len(page.Events) != 1 {
		t.Fatalf("telemetry in region test: %s, want kitchen-1's one", body)
	}

	resp, body = c.call("GET", "/v1/events?label=-room", "")
	wantProblem(t, resp, body, http.StatusBadRequest, "invalid-label-selector")
	resp, body = c.call("GET", "/v1/events?after=1", "")
	wantProblem(t, resp, body, http.StatusBadRequest, "invalid-query") // after= is for streams
}

// A device's ended sessions make its presence history, newest first.
func TestDeviceSessions(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", nil)
	e := sys.StartEdge(t, "edge-a", nil)
	c := newAPI(t, e.URL, sys.APIKey(t, db.ScopeRead))
	devSecret := sys.AddDevice(t, "dev-1")
	for range 2 {
		d := testsys.StartDevice(t, node, "dev-1", devSecret, nil)
		if err := d.Stop(); err != nil {
			t.Fatal(err)
		}
	}
	var page struct{ Sessions []db.SessionRecord }
	testsys.Eventually(t, "two ended sessions in the history", func() bool {
		resp, body := c.call("GET", "/v1/devices/dev-1/sessions", "")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET sessions: %d %s", resp.StatusCode, body)
		}
		if err := json.Unmarshal(body, &page); err != nil {
			t.Fatal(err)
		}
		return len(page.Sessions) == 2
	})
	newest, oldest := page.Sessions[0], page.Sessions[1]
	if newest.NodeID != "node-a" || newest.Region != "test" || newest.RemoteAddr == "" {
		t.Fatalf("session %+v: want node-a, region test and the device's address", newest)
	}
	if newest.ConnectedAt.Before(oldest.DisconnectedAt.Add(-time.Second)) || newest.DisconnectedAt.Before(newest.ConnectedAt) {
		t.Fatalf("sessions out of order: %+v then %+v", oldest, newest)
	}
	if newest.ConnectedAt.IsZero() || time.Since(newest.ConnectedAt) > time.Minute {
		t.Fatalf("connected_at %v: want the session's start, from its id", newest.ConnectedAt)
	}
	resp, body := c.call("GET", "/v1/devices/dev-1/sessions?limit=0", "")
	wantProblem(t, resp, body, http.StatusBadRequest, "invalid-query")
	resp, body = c.call("GET", "/v1/devices/nobody/sessions", "")
	wantProblem(t, resp, body, http.StatusNotFound, "device-not-found")
}
