package e2e

// End-to-end tests: the whole system on one real PostgreSQL, every hop over
// real sockets (HTTP to the edges, TLS WebSockets to the nodes), the two
// tiers meeting only in the database.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/db/dbtest"
	"github.com/switchboard-iot/switchboard/device"
)

func TestMain(m *testing.M) {
	code := dbtest.Main(m)
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// command is the JSON of a command as the edge returns it.
type command struct {
	ID     string          `json:"id"`
	Device string          `json:"device_id"`
	Status string          `json:"status"`
	OK     *bool           `json:"ok"`
	Result json.RawMessage `json:"result"`
	Error  string          `json:"error"`
}

// post sends a command through an edge and returns the response.
func post(t *testing.T, ctx context.Context, edgeURL, key, deviceID, query, accept, body string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, edgeURL+"/v1/devices/"+deviceID+"/commands"+query, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// whoami answers with the device's id and the args it got, so a reply
// proves which device ran the command.
func whoami(id string) map[string]device.HandlerFunc {
	return map[string]device.HandlerFunc{
		"whoami": func(_ context.Context, args json.RawMessage) (any, error) {
			return map[string]any{"device": id, "args": args}, nil
		},
	}
}

func livePresence(t *testing.T, sys *testsys.System) map[string]string {
	t.Helper()
	rows, err := sys.Pool.Query(context.Background(), `SELECT device_id, node_id FROM presence_live`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	got := map[string]string{}
	for rows.Next() {
		var dev, node string
		if err := rows.Scan(&dev, &node); err != nil {
			t.Fatal(err)
		}
		got[dev] = node
	}
	return got
}

func TestEndToEnd(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	key := sys.APIKey(t)
	edges := []*testsys.Edge{sys.StartEdge(t, "edge-a", nil), sys.StartEdge(t, "edge-b", nil)}
	nodes := []*testsys.Node{sys.StartNode(t, "node-a", nil), sys.StartNode(t, "node-b", nil)}

	// 20 devices, alternating between the nodes.
	want := map[string]string{}
	devices := map[string]*testsys.Device{}
	for i := range 20 {
		id := fmt.Sprintf("thermo-%02d", i)
		node := nodes[i%2]
		devices[id] = testsys.StartDevice(t, node, id, sys.AddDevice(t, id), whoami(id))
		want[id] = node.ID
	}
	testsys.Eventually(t, "presence of all 20 devices", func() bool { return len(livePresence(t, sys)) == 20 })
	if got := livePresence(t, sys); !maps.Equal(got, want) {
		t.Fatalf("presence_live = %v, want %v", got, want)
	}

	// Every edge reaches every device, on either node, both ways of waiting.
	// Generous deadlines: 80 round trips at once, with -race, beside the
	// other packages' tests on two cores.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for _, e := range edges {
		for id := range devices {
			wg.Go(func() {
				body := fmt.Sprintf(`{"name":"whoami","args":{"via":%q}}`, e.ID)

				resp := post(t, ctx, e.URL, key, id, "?wait=20s", "", body)
				defer resp.Body.Close()
				var c command
				if err := json.NewDecoder(resp.Body).Decode(&c); err != nil {
					t.Errorf("%s via %s (?wait): %v", id, e.ID, err)
					return
				}
				if resp.StatusCode != http.StatusOK || c.Status != "done" || !strings.Contains(string(c.Result), `"device":"`+id+`"`) ||
					!strings.Contains(string(c.Result), e.ID) {
					t.Errorf("%s via %s (?wait): %d %+v %s", id, e.ID, resp.StatusCode, c, c.Result)
				}

				stream := post(t, ctx, e.URL, key, id, "", "text/event-stream", body)
				defer stream.Body.Close()
				events, err := testsys.NewEventReader(stream.Body).All()
				if err != nil || len(events) != 3 {
					t.Errorf("%s via %s (SSE): %v, %v", id, e.ID, events, err)
					return
				}
				names := []string{events[0].Name, events[1].Name, events[2].Name}
				if !slices.Equal(names, []string{"accepted", "delivered", "reply"}) || !strings.Contains(events[2].Data, `"device":"`+id+`"`) {
					t.Errorf("%s via %s (SSE): %v", id, e.ID, events)
				}
			})
		}
	}
	wg.Wait()

	// A device that goes away leaves presence; the others stay.
	if err := devices["thermo-03"].Stop(); err != nil {
		t.Fatal(err)
	}
	delete(want, "thermo-03")
	testsys.Eventually(t, "thermo-03's presence row to go", func() bool { return maps.Equal(livePresence(t, sys), want) })

	// Wrong secret: 401, and no upgrade.
	req, _ := http.NewRequest(http.MethodGet, nodes[0].Base+"/v1/connect", nil)
	req.SetBasicAuth("thermo-01", "not-the-secret")
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", base64.StdEncoding.EncodeToString([]byte("0123456789abcdef")))
	resp, err := nodes[0].HTTPClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("Upgrade") != "" {
		t.Fatalf("wrong secret: %d, Upgrade %q", resp.StatusCode, resp.Header.Get("Upgrade"))
	}

	// No API key: 401, and nothing stored.
	resp = post(t, ctx, edges[1].URL, "", "thermo-01", "", "", `{"name":"whoami"}`)
	problem, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("no API key: %d %s", resp.StatusCode, problem)
	}
	var n int
	_ = sys.Pool.QueryRow(ctx, `SELECT count(*) FROM commands`).Scan(&n)
	if n != 2*20*2 {
		t.Fatalf("commands stored: %d, want %d (the unauthorized one must not be)", n, 2*20*2)
	}
}

// TestForeignDevice is a device written with another WebSocket library
// (coder/websocket), following only docs/protocol.md. The
// command comes from an edge that never talks to its node.
func TestForeignDevice(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	key := sys.APIKey(t)
	_ = sys.StartEdge(t, "edge-near", nil)
	far := sys.StartEdge(t, "edge-far", nil)
	node := sys.StartNode(t, "node-a", nil)
	devSecret := sys.AddDevice(t, "foreign-1")

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ws, resp, err := websocket.Dial(ctx, node.URL, &websocket.DialOptions{
		HTTPClient:   node.HTTPClient(),
		HTTPHeader:   http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte("foreign-1:"+devSecret))}},
		Subprotocols: []string{"switchboard.v1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	if ws.Subprotocol() != "switchboard.v1" {
		t.Fatalf("subprotocol %q, want switchboard.v1 (status %d)", ws.Subprotocol(), resp.StatusCode)
	}

	// Application ping, for clients without control frames.
	if err := wsjson.Write(ctx, ws, map[string]string{"type": "ping"}); err != nil {
		t.Fatal(err)
	}
	var pong map[string]any
	if err := wsjson.Read(ctx, ws, &pong); err != nil || pong["type"] != "pong" {
		t.Fatalf("pong: %v %v", pong, err)
	}

	// The device answers commands in a goroutine; the test sends one.
	answered := make(chan error, 1)
	go func() {
		var cmd struct {
			Type, ID, Name string
			Args           map[string]any
		}
		if err := wsjson.Read(ctx, ws, &cmd); err != nil {
			answered <- err
			return
		}
		if cmd.Type != "command" || cmd.Name != "set_target" {
			answered <- fmt.Errorf("unexpected frame %+v", cmd)
			return
		}
		answered <- wsjson.Write(ctx, ws, map[string]any{
			"type": "reply", "id": cmd.ID, "ok": true, "result": map[string]any{"target": cmd.Args["celsius"]},
		})
	}()
	resp = post(t, ctx, far.URL, key, "foreign-1", "?wait=10s", "", `{"name":"set_target","args":{"celsius":19.5}}`)
	defer resp.Body.Close()
	var c command
	if err := json.NewDecoder(resp.Body).Decode(&c); err != nil {
		t.Fatal(err)
	}
	if err := <-answered; err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || c.Status != "done" || string(c.Result) != `{"target":19.5}` {
		t.Fatalf("reply through the far edge: %d %+v %s", resp.StatusCode, c, c.Result)
	}

	// A telemetry event is stored.
	if err := wsjson.Write(ctx, ws, map[string]any{"type": "event", "name": "telemetry", "data": map[string]any{"celsius": 20.1}}); err != nil {
		t.Fatal(err)
	}
	testsys.Eventually(t, "the event row", func() bool {
		var n int
		_ = sys.Pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE device_id = 'foreign-1' AND name = 'telemetry'`).Scan(&n)
		return n == 1
	})
	if err := ws.Close(websocket.StatusNormalClosure, "bye"); err != nil {
		t.Fatal(err)
	}
	testsys.Eventually(t, "presence to clear", func() bool { return len(livePresence(t, sys)) == 0 })
}
