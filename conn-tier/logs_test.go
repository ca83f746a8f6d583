package conntier_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/app/testsys"
	conntier "github.com/switchboard-iot/switchboard/conn-tier"
	"github.com/switchboard-iot/switchboard/device/protocol"
)

// otherNames are field names the logs must not use: a device is "device",
// a node "node", and so on, in every line of every part.
var otherNames = []string{"device_id", "deviceID", "deviceId", "node_id", "nodeID", "edge_id", "edgeID",
	"command_id", "commandID", "job_id", "jobID", "key_id", "keyID", "id"}

// checkNames fails the test for a line with a field named otherwise.
func checkNames(t *testing.T, lines []map[string]any) {
	t.Helper()
	for _, m := range lines {
		for _, name := range otherNames {
			if _, ok := m[name]; ok {
				t.Errorf("a log line names a field %q: %v", name, m)
			}
		}
	}
}

// refuse dials node with header and checks it was refused with status.
func refuse(t *testing.T, node *testsys.Node, header http.Header, status int) {
	t.Helper()
	if ws, resp, err := dialRaw(t, node, header, protocol.Subprotocol); ws != nil || resp == nil || resp.StatusCode != status {
		t.Fatalf("dial: %v, want HTTP %d", err, status)
	}
}

// TestLogs runs two nodes logging JSON, as `switchboard conn` does when
// its stderr is not a terminal, and reads their logs line by line: each
// line parses, and connects, refusals, replacements and the summary are
// there with their fields.
func TestLogs(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	var logs testsys.Logs
	sys.Log = logs.Logger()
	// The summary comes as the node stops, not by the hour.
	hourly := func(c *conntier.Config) { c.LogInterval = time.Hour }
	nodeA := sys.StartNode(t, "node-a", hourly)
	nodeB := sys.StartNode(t, "node-b", hourly)
	devSecret := sys.AddDevice(t, "dev-1")

	first := connect(t, nodeA, "dev-1", devSecret)
	old := waitOnline(t, sys, "dev-1", "node-a", uuid.Nil)
	c := logs.Await(t, "device connected", map[string]any{"level": "DEBUG", "device": "dev-1", "node": "node-a", "session": old.SessionID})
	if c["remote"] == nil {
		t.Errorf("the connect line has no remote address: %v", c)
	}

	// Refused: a wrong secret, an unknown device, no credentials. Each
	// with the client's address; the log tells apart what the 401 does not.
	refuse(t, nodeA, basicAuth("dev-1", "wrong"), http.StatusUnauthorized)
	refuse(t, nodeA, basicAuth("nobody", "x"), http.StatusUnauthorized)
	refuse(t, nodeA, http.Header{}, http.StatusUnauthorized)
	for _, want := range []map[string]any{
		{"device": "dev-1", "reason": "wrong_secret"},
		{"device": "nobody", "reason": "unknown_device"},
		{"reason": "no_credentials"},
	} {
		want["level"], want["node"], want["status"], want["remote"] = "INFO", "node-a", 401, "127.0.0.1"
		logs.Await(t, "device connect refused", want)
	}

	// A 4008 on the same node: both sessions named.
	second := connect(t, nodeA, "dev-1", devSecret)
	expectClose(t, first, protocol.CloseReplaced)
	now := waitOnline(t, sys, "dev-1", "node-a", old.SessionID)
	logs.Await(t, "session replaced", map[string]any{"level": "INFO", "device": "dev-1", "node": "node-a",
		"old_session": old.SessionID, "new_session": now.SessionID})
	logs.Await(t, "device disconnected", map[string]any{"level": "DEBUG", "device": "dev-1", "session": old.SessionID, "reason": "replaced"})

	// Across nodes: the newer session's node logs it, naming the other.
	waitListening(t, sys, "node-a")
	onB := connect(t, nodeB, "dev-1", devSecret)
	expectClose(t, second, protocol.CloseReplaced)
	onBRow := waitOnline(t, sys, "dev-1", "node-b", now.SessionID)
	logs.Await(t, "session replaced", map[string]any{"device": "dev-1", "node": "node-b", "old_node": "node-a",
		"old_session": now.SessionID, "new_session": onBRow.SessionID})
	testsys.Eventually(t, "node-a's session gone", func() bool { return nodeA.Sessions() == 0 })

	// node-a's summary, as it stops: its connects, its disconnects and
	// refusals by reason.
	if err := nodeA.Stop(); err != nil {
		t.Fatal(err)
	}
	logs.Await(t, "sessions summary", map[string]any{"level": "INFO", "node": "node-a", "sessions": 0, "connects": 2,
		"disconnects": map[string]any{"replaced": 2},
		"refused":     map[string]any{"wrong_secret": 1, "unknown_device": 1, "no_credentials": 1}})

	// node-b drains its session as it stops: the drain's lines and the
	// summary that counts it.
	stopped := make(chan error, 1)
	go func() { stopped <- nodeB.Stop() }()
	expectClose(t, onB, protocol.CloseGoingAway)
	onB.Close()
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	logs.Await(t, "draining", map[string]any{"node": "node-b", "sessions": 1})
	logs.Await(t, "drained", map[string]any{"node": "node-b", "closed": 1})
	logs.Await(t, "sessions summary", map[string]any{"node": "node-b", "connects": 1, "disconnects": map[string]any{"draining": 1}})
	checkNames(t, logs.Lines(t))
}

// TestRefusalFlood: a flood of refused connects logs at most RefusalLogs
// lines a LogInterval, then one line counting the rest; the summary counts
// them all.
func TestRefusalFlood(t *testing.T) {
	t.Parallel()
	const limit, flood = 5, 40
	sys := testsys.New(t)
	var logs testsys.Logs
	sys.Log = logs.Logger()
	node := sys.StartNode(t, "node-a", func(c *conntier.Config) { c.LogInterval, c.RefusalLogs = time.Hour, limit })
	client := node.HTTPClient()
	for range flood {
		resp, err := client.Get(node.Base + protocol.Path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("HTTP %d, want 401", resp.StatusCode)
		}
	}
	if got := len(logs.Find(t, "device connect refused", nil)); got != limit {
		t.Errorf("%d refusals logged, want %d", got, limit)
	}
	if err := node.Stop(); err != nil {
		t.Fatal(err)
	}
	more := logs.Find(t, "device connect refused: more not logged", nil)
	if len(more) != 1 || more[0]["more"] != float64(flood-limit) {
		t.Errorf("the count of the rest: %v, want one line with more=%d", more, flood-limit)
	}
	logs.Await(t, "sessions summary", map[string]any{"refused": map[string]any{"no_credentials": flood}})
	if got := len(logs.Find(t, "device connect refused", nil)); got != limit {
		t.Errorf("%d refusals logged in all, want %d", got, limit)
	}
}
