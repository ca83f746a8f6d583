package e2e

// Observability: what an operator scrapes from a real edge and a real node
// (the node's plain-HTTP ops listener, as CONN_OPS_LISTEN serves it) moves
// with real traffic, and the PromQL of docs/operations.md names only series
// that exist.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/device"
)

// opsGet answers a GET of the node's ops listener: its status and body.
func opsGet(t *testing.T, node *testsys.Node, path string) (int, string, error) {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(node.Ops + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

func TestObservability(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	key := sys.APIKey(t)
	e := sys.StartEdge(t, "edge-obs", nil)
	node := sys.StartNode(t, "node-obs", nil)
	dev := testsys.StartDevice(t, node, "obs-1", sys.AddDevice(t, "obs-1"), map[string]device.HandlerFunc{
		"echo": func(_ context.Context, args json.RawMessage) (any, error) { return args, nil },
		"fail": func(context.Context, json.RawMessage) (any, error) { return nil, errors.New("refused") },
	})
	sys.AddDevice(t, "obs-offline") // never connects: its command expires

	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body, err := opsGet(t, node, path); err != nil || code != http.StatusOK {
			t.Fatalf("ops %s: %d %q %v", path, code, body, err)
		}
	}
	testsys.Eventually(t, "the node to count its session", func() bool {
		v, _ := node.ScrapeOps(t).Get("switchboard_conn_sessions", "node", "node-obs")
		return v == 1
	})
	nodeBefore, edgeBefore := node.ScrapeOps(t), e.Scrape(t)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, c := range []struct{ name, want string }{{"echo", "done"}, {"fail", "failed"}} {
		resp := post(t, ctx, e.URL, key, "obs-1", "?wait=10s", "", `{"name":"`+c.name+`","args":{"n":1}}`)
		var got command
		err := json.NewDecoder(resp.Body).Decode(&got)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || got.Status != c.want {
			t.Fatalf("%s: %d %+v %v, want 200 and %s", c.name, resp.StatusCode, got, err, c.want)
		}
	}
	// The shortest ttl, to a device that is away: the edge's sweep expires it.
	resp := post(t, ctx, e.URL, key, "obs-offline", "", "", `{"name":"echo","ttl":"1s"}`)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("command to the offline device: %d", resp.StatusCode)
	}

	// And one that waits for it: the backlog the edges read.
	resp = post(t, ctx, e.URL, key, "obs-offline", "", "", `{"name":"echo","ttl":"1h"}`)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("command to the offline device: %d", resp.StatusCode)
	}

	// The node: frames both ways, final statuses, the round trips from
	// delivery, its region, its pool and listener.
	nodeAfter := node.ScrapeOps(t)
	moved := func(name string, before, after testsys.Metrics, min float64, labels ...string) {
		t.Helper()
		b, _ := before.Get(name, labels...)
		a, ok := after.Get(name, labels...)
		if !ok || a-b < min {
			t.Errorf("%s%v: %v then %v (present %v), want it up by %v", name, labels, b, a, ok, min)
		}
	}
	moved("switchboard_conn_frames_sent_total", nodeBefore, nodeAfter, 2, "type", "command")
	moved("switchboard_conn_frames_received_total", nodeBefore, nodeAfter, 2, "type", "reply")
	moved("switchboard_commands_final_total", nodeBefore, nodeAfter, 1, "status", "done")
	moved("switchboard_commands_final_total", nodeBefore, nodeAfter, 1, "status", "failed")
	moved("switchboard_db_pool_acquires_total", nodeBefore, nodeAfter, 1)
	moved("switchboard_conn_command_reply_seconds_count", nodeBefore, nodeAfter, 2)
	for _, s := range []struct {
		name   string
		labels []string
		want   func(float64) bool
	}{
		{"switchboard_conn_sessions", []string{"node", "node-obs"}, func(v float64) bool { return v == 1 }},
		{"switchboard_conn_node_info", []string{"node", "node-obs", "region", "test"}, func(v float64) bool { return v == 1 }},
		{"switchboard_conn_connects_total", []string{"result", "ok"}, func(v float64) bool { return v >= 1 }},
		{"switchboard_conn_queue_depth", []string{"queue", "commands"}, func(v float64) bool { return v >= 0 }},
		{"switchboard_db_pool_max_conns", nil, func(v float64) bool { return v > 0 }},
		{"switchboard_db_pool_total_conns", nil, func(v float64) bool { return v > 0 }},
		{"switchboard_db_listener_connects_total", nil, func(v float64) bool { return v >= 1 }},
		{"switchboard_db_listener_up", nil, func(v float64) bool { return v == 1 }},
	} {
		if v, ok := nodeAfter.Get(s.name, s.labels...); !ok || !s.want(v) {
			t.Errorf("node: %s%v = %v (present %v)", s.name, s.labels, v, ok)
		}
	}

	// The edge: the round trips it waited on, the wake-ups that carried
	// them, its queues, and the expiry its sweep wrote.
	testsys.Eventually(t, "the edge's sweep to expire the offline device's command", func() bool {
		v, _ := e.Scrape(t).Get("switchboard_commands_final_total", "status", "expired")
		return v >= 1
	})
	edgeAfter := e.Scrape(t)
	moved("switchboard_edge_command_round_trip_seconds_count", edgeBefore, edgeAfter, 1, "status", "done")
	moved("switchboard_edge_command_round_trip_seconds_count", edgeBefore, edgeAfter, 1, "status", "failed")
	moved("switchboard_edge_notify_lag_seconds_count", edgeBefore, edgeAfter, 2)
	moved("switchboard_edge_commands_accepted_total", edgeBefore, edgeAfter, 4)
	for _, q := range []string{"notices", "inserts"} {
		if _, ok := edgeAfter.Get("switchboard_edge_queue_depth", "edge", "edge-obs", "queue", q); !ok {
			t.Errorf("edge: no switchboard_edge_queue_depth{queue=%q}", q)
		}
	}
	// The 1h command is the one left pending (the 1s one expired, the
	// others were answered).
	for status, want := range map[string]float64{"pending": 1, "delivered": 0} {
		if v, ok := edgeAfter.Get("switchboard_edge_commands_unfinished", "status", status); !ok || v != want {
			t.Errorf("edge: switchboard_edge_commands_unfinished{status=%q} = %v (present %v), want %v", status, v, ok, want)
		}
	}
	if v, ok := edgeAfter.Get("switchboard_db_listener_up"); !ok || v != 1 {
		t.Errorf("edge: switchboard_db_listener_up = %v (present %v)", v, ok)
	}

	// The documented queries name series these scrapes have.
	checkDocumentedQueries(t, nodeAfter, edgeAfter)

	// A device that leaves is a disconnect, by its reason.
	disconnects := func() float64 {
		v, _ := node.ScrapeOps(t).Get("switchboard_conn_disconnects_total", "node", "node-obs")
		return v
	}
	before := disconnects()
	if err := dev.Stop(); err != nil {
		t.Fatalf("stopping the device: %v", err)
	}
	testsys.Eventually(t, "the disconnect to be counted", func() bool { return disconnects() == before+1 })
	testsys.Eventually(t, "the node to count no session", func() bool {
		v, _ := node.ScrapeOps(t).Get("switchboard_conn_sessions", "node", "node-obs")
		return v == 0
	})

	// A draining node says so on its ops port while it drains: a session
	// that does not answer its 1001 holds the drain for the close grace
	// (1s), and the ops listener outlives the drain.
	deaf := sys.AddDevice(t, "obs-deaf")
	ws, _, err := websocket.Dial(ctx, node.URL, &websocket.DialOptions{
		HTTPClient:   node.HTTPClient(),
		HTTPHeader:   http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte("obs-deaf:"+deaf))}},
		Subprotocols: []string{"switchboard.v1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow() // never read: the node's close frame goes unanswered
	testsys.Eventually(t, "the deaf device's session", func() bool {
		v, _ := node.ScrapeOps(t).Get("switchboard_conn_sessions", "node", "node-obs")
		return v == 1
	})
	stopped := make(chan error, 1)
	go func() { stopped <- node.Stop() }()
	sawDraining := false
	testsys.Eventually(t, "the ops port's /readyz to say draining", func() bool {
		code, body, err := opsGet(t, node, "/readyz")
		sawDraining = err == nil && code == http.StatusServiceUnavailable && strings.Contains(body, "draining")
		return sawDraining || err != nil // refused: the node stopped before we looked
	})
	if err := <-stopped; err != nil {
		t.Fatalf("stopping the node: %v", err)
	}
	if !sawDraining {
		t.Fatal("the ops listener stopped before /readyz said draining")
	}
	if _, _, err := opsGet(t, node, "/readyz"); err == nil {
		t.Fatal("the ops listener still answers after the node stopped")
	}
}

// checkDocumentedQueries reads the PromQL in the Observability section of
// docs/operations.md and checks that every switchboard_ series it names is
// in a real scrape of an edge or a node (a histogram's _bucket, _sum and
// _count counting as the histogram).
func checkDocumentedQueries(t *testing.T, scrapes ...testsys.Metrics) {
	t.Helper()
	section := docSection(t, "docs/operations.md", "## Observability")
	blocks := regexp.MustCompile("(?s)```promql\n(.*?)```").FindAllStringSubmatch(section, -1)
	if len(blocks) == 0 {
		t.Fatal("the Observability section has no ```promql block")
	}
	var names []string
	queries := 0
	for _, b := range blocks {
		for line := range strings.Lines(b[1]) {
			if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
				queries++
			}
		}
		names = append(names, regexp.MustCompile(`switchboard_[a-z_]+`).FindAllString(b[1], -1)...)
	}
	if queries < 5 {
		t.Errorf("the Observability section has %d queries, want the five first ones at least", queries)
	}
	slices.Sort(names)
	for _, name := range slices.Compact(names) {
		if !slices.ContainsFunc(scrapes, func(m testsys.Metrics) bool { return m.HasFamily(name) }) {
			t.Errorf("the Observability queries of docs/operations.md name %s, which no /metrics serves", name)
		}
	}
}
