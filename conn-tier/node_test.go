package conntier_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchboard-iot/switchboard/app/testsys"
	conntier "github.com/switchboard-iot/switchboard/conn-tier"
	"github.com/switchboard-iot/switchboard/db/dbtest"
	"github.com/switchboard-iot/switchboard/device"
	"github.com/switchboard-iot/switchboard/device/protocol"
)

func TestMain(m *testing.M) { os.Exit(dbtest.Main(m)) }

// ---- 1. Authentication happens before the upgrade ----

func TestAuthBeforeUpgrade(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", nil)
	devSecret := sys.AddDevice(t, "dev-1")

	// refused checks a dial was answered 401 without upgrading.
	refused := func(t *testing.T, header http.Header) string {
		t.Helper()
		ws, resp, err := dialRaw(t, node, header, protocol.Subprotocol)
		if err == nil || ws != nil {
			t.Fatal("the dial succeeded; want it refused")
		}
		if !errors.Is(err, websocket.ErrBadHandshake) {
			t.Fatalf("dial error %v, want a bad handshake with a response", err)
		}
		if resp.StatusCode == http.StatusSwitchingProtocols || resp.Header.Get("Upgrade") != "" ||
			resp.Header.Get("Sec-Websocket-Accept") != "" {
			t.Fatalf("the node upgraded: HTTP %d %v", resp.StatusCode, resp.Header)
		}
		if got := resp.Header.Get("WWW-Authenticate"); !strings.HasPrefix(got, "Basic ") {
			t.Fatalf("WWW-Authenticate %q, want a Basic challenge", got)
		}
		return readProblem(t, resp, http.StatusUnauthorized, "unauthorized").Detail
	}

	t.Run("no credentials", func(t *testing.T) {
		t.Parallel()
		refused(t, http.Header{})
	})
	t.Run("wrong secret and unknown device answer alike", func(t *testing.T) {
		t.Parallel()
		wrong := refused(t, basicAuth("dev-1", devSecret+"x"))
		unknown := refused(t, basicAuth("dev-nobody", devSecret))
		if wrong != unknown {
			t.Fatalf("wrong secret says %q, unknown device %q: the answers tell them apart", wrong, unknown)
		}
		// Nothing of a refused session reaches presence (dev-1 itself may
		// be connected by a sibling subtest).
		if n := count(t, sys, `SELECT count(*) FROM presence WHERE device_id = 'dev-nobody'`); n != 0 {
			t.Fatalf("%d presence rows after refused dials", n)
		}
	})
	t.Run("plain GET with valid credentials", func(t *testing.T) {
		t.Parallel()
		client := node.HTTPClient()
		t.Cleanup(client.CloseIdleConnections)
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, node.Base+protocol.Path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.SetBasicAuth("dev-1", devSecret)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		readProblem(t, resp, http.StatusBadRequest, "websocket-required")
	})
	t.Run("only a foreign subprotocol offered", func(t *testing.T) {
		t.Parallel()
		ws, resp, err := dialRaw(t, node, basicAuth("dev-1", devSecret), "other.v9")
		if err == nil || ws != nil {
			t.Fatal("the dial succeeded; want it refused")
		}
		if resp == nil || resp.Header.Get("Upgrade") != "" {
			t.Fatalf("want a refusal without upgrade, got %v", resp)
		}
		readProblem(t, resp, http.StatusBadRequest, "unsupported-subprotocol")
	})
	t.Run("valid credentials upgrade with switchboard.v1", func(t *testing.T) {
		t.Parallel()
		ws, resp, err := dialRaw(t, node, basicAuth("dev-1", devSecret), "other.v9", protocol.Subprotocol)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		if resp.StatusCode != http.StatusSwitchingProtocols || ws.Subprotocol() != protocol.Subprotocol {
			t.Fatalf("HTTP %d, subprotocol %q; want 101 and %s", resp.StatusCode, ws.Subprotocol(), protocol.Subprotocol)
		}
		closeNormally(t, ws)
	})
	t.Run("device id the database cannot store", func(t *testing.T) {
		t.Parallel()
		refused(t, basicAuth("dev\x00-1", devSecret))
		refused(t, basicAuth("dev-\xff", devSecret))
	})
}

// ---- 2. Presence follows the session ----

func TestPresence(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", nil)
	devSecret := sys.AddDevice(t, "dev-1")

	ws := connect(t, node, "dev-1", devSecret)
	row := waitOnline(t, sys, "dev-1", "node-a", uuid.Nil)
	if row.DeviceID != "dev-1" || row.SessionID == uuid.Nil {
		t.Fatalf("presence row %+v", row)
	}
	if at := lastSeen(t, sys, "dev-1"); at != nil {
		t.Fatalf("last_seen_at %v before the first session ended", at)
	}
	if n := node.Sessions(); n != 1 {
		t.Fatalf("node reports %d sessions, want 1", n)
	}

	closeNormally(t, ws)
	waitOffline(t, sys, "dev-1")
	at := lastSeen(t, sys, "dev-1")
	if at == nil {
		t.Fatal("last_seen_at not set after the session ended")
	}
	if time.Since(*at) > time.Minute || time.Until(*at) > time.Minute {
		t.Fatalf("last_seen_at %v is not about now", at)
	}
	if n := node.Sessions(); n != 0 {
		t.Fatalf("node reports %d sessions after the close, want 0", n)
	}
}

// ---- 3. Application-level ping ----

func TestAppPing(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", nil)
	devSecret := sys.AddDevice(t, "dev-1")

	ws := connect(t, node, "dev-1", devSecret)
	for i := range 3 {
		send(t, ws, `{"type":"ping"}`)
		if m := readMessage(t, ws); m.Type != protocol.TypePong {
			t.Fatalf("ping %d answered with %+v, want a pong", i, m)
		}
	}
	closeNormally(t, ws)
}

// ---- 4. Bad input closes the session with the protocol's codes ----

func TestBadInput(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", func(c *conntier.Config) { c.MaxFrame = 1024 })

	session := func(t *testing.T, id string) *websocket.Conn {
		return connect(t, node, id, sys.AddDevice(t, id))
	}

	t.Run("frame over MaxFrame", func(t *testing.T) {
		t.Parallel()
		ws := session(t, "dev-big")
		// A frame just under the limit is fine (unknown fields are dropped).
		small := `{"type":"ping","pad":"` + strings.Repeat("x", 990) + `"}`
		if len(small) > 1024 {
			t.Fatalf("test frame is %d bytes", len(small))
		}
		send(t, ws, small)
		if m := readMessage(t, ws); m.Type != protocol.TypePong {
			t.Fatalf("got %+v, want a pong", m)
		}
		send(t, ws, `{"type":"ping","pad":"`+strings.Repeat("x", 2000)+`"}`)
		expectClose(t, ws, protocol.CloseTooBig)
	})
	cases := []struct {
		name, reason string
		frame        func(ws *websocket.Conn) error
	}{
		{"malformed JSON", "malformed JSON", func(ws *websocket.Conn) error {
			return ws.WriteMessage(websocket.TextMessage, []byte(`{"type":"ping"`))
		}},
		{"binary frame", "binary", func(ws *websocket.Conn) error {
			return ws.WriteMessage(websocket.BinaryMessage, []byte(`{"type":"ping"}`))
		}},
		{"not valid UTF-8", "not valid UTF-8", func(ws *websocket.Conn) error {
			return ws.WriteMessage(websocket.TextMessage, []byte("{\"type\":\"event\",\"name\":\"t\",\"data\":\"\xff\"}"))
		}},
		{"not an object", "malformed JSON", func(ws *websocket.Conn) error {
			return ws.WriteMessage(websocket.TextMessage, []byte(`[{"type":"ping"}]`))
		}},
		{"missing type", "missing type", func(ws *websocket.Conn) error {
			return ws.WriteMessage(websocket.TextMessage, []byte(`{"id":"x"}`))
		}},
		{"device sends a command", "may not send command", func(ws *websocket.Conn) error {
			return ws.WriteMessage(websocket.TextMessage,
				[]byte(`{"type":"command","id":"`+uuid.NewString()+`","name":"reboot","args":{}}`))
		}},
		{"device sends a state", "may not send state", func(ws *websocket.Conn) error {
			return ws.WriteMessage(websocket.TextMessage, []byte(`{"type":"state","desired":{},"version":1}`))
		}},
		{"device sends an error frame", "may not send error", func(ws *websocket.Conn) error {
			return ws.WriteMessage(websocket.TextMessage, []byte(`{"type":"error","error":"x"}`))
		}},
		{"report not an object", "reported must be", func(ws *websocket.Conn) error {
			return ws.WriteMessage(websocket.TextMessage, []byte(`{"type":"report","reported":[1]}`))
		}},
		{"reply with a bad id", "id must be", func(ws *websocket.Conn) error {
			return ws.WriteMessage(websocket.TextMessage, []byte(`{"type":"reply","id":"42","ok":true}`))
		}},
		{"reply without ok", "ok must be", func(ws *websocket.Conn) error {
			return ws.WriteMessage(websocket.TextMessage, []byte(`{"type":"reply","id":"`+uuid.NewString()+`"}`))
		}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ws := session(t, fmt.Sprintf("dev-bad-%d", i))
			// The session works until the bad frame.
			send(t, ws, `{"type":"ping"}`)
			if m := readMessage(t, ws); m.Type != protocol.TypePong {
				t.Fatalf("got %+v, want a pong", m)
			}
			_ = ws.SetWriteDeadline(time.Now().Add(wait))
			if err := tc.frame(ws); err != nil {
				t.Fatal(err)
			}
			ce := expectClose(t, ws, protocol.CloseBadMessage)
			if !strings.Contains(ce.Text, tc.reason) {
				t.Fatalf("close reason %q, want it to mention %q", ce.Text, tc.reason)
			}
		})
	}
}

// ---- 5. A newer session replaces the older one ----

func TestReplacementOnOneNode(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", nil)
	devSecret := sys.AddDevice(t, "dev-1")

	first := connect(t, node, "dev-1", devSecret)
	old := waitOnline(t, sys, "dev-1", "node-a", uuid.Nil)

	second := connect(t, node, "dev-1", devSecret)
	ce := expectClose(t, first, protocol.CloseReplaced)
	if ce.Text == "" {
		t.Error("4008 without a reason")
	}
	first.Close()
	now := waitOnline(t, sys, "dev-1", "node-a", old.SessionID)

	// Once the first session's end is recorded (last_seen_at), the row
	// still names the second session, which still works.
	testsys.Eventually(t, "first session's end recorded", func() bool { return lastSeen(t, sys, "dev-1") != nil })
	if rows := livePresence(t, sys, "dev-1"); len(rows) != 1 || rows[0].SessionID != now.SessionID {
		t.Fatalf("presence %+v, want only session %s", rows, now.SessionID)
	}
	send(t, second, `{"type":"ping"}`)
	if m := readMessage(t, second); m.Type != protocol.TypePong {
		t.Fatalf("second session answered %+v, want a pong", m)
	}
	if n := node.Sessions(); n != 1 {
		t.Fatalf("node reports %d sessions, want 1", n)
	}
	closeNormally(t, second)
	waitOffline(t, sys, "dev-1")
}

func TestReplacementAcrossNodes(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	nodeA := sys.StartNode(t, "node-a", nil)
	nodeB := sys.StartNode(t, "node-b", nil)
	devSecret := sys.AddDevice(t, "dev-1")

	onA := connect(t, nodeA, "dev-1", devSecret)
	old := waitOnline(t, sys, "dev-1", "node-a", uuid.Nil)
	waitListening(t, sys, "node-a") // the kick goes by NOTIFY

	onB := connect(t, nodeB, "dev-1", devSecret)
	expectClose(t, onA, protocol.CloseReplaced)
	onA.Close()
	now := waitOnline(t, sys, "dev-1", "node-b", old.SessionID)

	testsys.Eventually(t, "node-a's session gone", func() bool { return nodeA.Sessions() == 0 })
	testsys.Eventually(t, "session end recorded", func() bool { return lastSeen(t, sys, "dev-1") != nil })
	if rows := livePresence(t, sys, "dev-1"); len(rows) != 1 || rows[0].NodeID != "node-b" || rows[0].SessionID != now.SessionID {
		t.Fatalf("presence %+v, want only node-b's session %s", rows, now.SessionID)
	}
	if n := count(t, sys, `SELECT count(*) FROM presence WHERE node_id = 'node-a'`); n != 0 {
		t.Fatalf("%d presence rows left on node-a", n)
	}
	send(t, onB, `{"type":"ping"}`)
	if m := readMessage(t, onB); m.Type != protocol.TypePong {
		t.Fatalf("node-b's session answered %+v, want a pong", m)
	}
	closeNormally(t, onB)
}

// ---- 6. Command delivery and replies ----

func TestCommandDelivery(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	edge := listenEdge(t, sys, "edge-x")
	node := sys.StartNode(t, "node-a", nil)
	devSecret := sys.AddDevice(t, "dev-1")

	ws := connect(t, node, "dev-1", devSecret)
	waitOnline(t, sys, "dev-1", "node-a", uuid.Nil)

	cmd := newCommand(t, sys, "dev-1", "set-temp", `{"celsius":21.5,"zone":"hall"}`)
	wake(t, sys, "dev-1")
	m := readMessage(t, ws)
	if m.Type != protocol.TypeCommand || m.ID != cmd.ID.String() || m.Name != "set-temp" {
		t.Fatalf("got %+v, want command %s set-temp", m, cmd.ID)
	}
	if !jsonEqual(t, m.Args, `{"celsius":21.5,"zone":"hall"}`) {
		t.Fatalf("args %s", m.Args)
	}

	// The delivery is recorded, then the edge is woken.
	edge.waitWakes(t, cmd.ID, 1)
	row := readCommand(t, sys, cmd.ID)
	if row.Status != "delivered" || row.NodeID == nil || *row.NodeID != "node-a" || !row.Delivered || row.Completed {
		t.Fatalf("after delivery the row is %+v, want delivered by node-a", row)
	}

	send(t, ws, `{"type":"reply","id":"`+cmd.ID.String()+`","ok":true,"result":{"celsius":21.5,"applied":true}}`)
	edge.waitWakes(t, cmd.ID, 2)
	row = readCommand(t, sys, cmd.ID)
	if row.Status != "done" || row.OK == nil || !*row.OK || !row.Completed {
		t.Fatalf("after the reply the row is %+v, want done and ok", row)
	}
	if !jsonEqual(t, row.Result, `{"celsius":21.5,"applied":true}`) {
		t.Fatalf("result %s", row.Result)
	}

	// A failing reply fails the command with the device's error.
	cmd2 := newCommand(t, sys, "dev-1", "reboot", `{}`)
	wake(t, sys, "dev-1")
	if m := readSkipping(t, ws, cmd.ID); m.Type != protocol.TypeCommand || m.ID != cmd2.ID.String() {
		t.Fatalf("got %+v, want command %s", m, cmd2.ID)
	}
	edge.waitWakes(t, cmd2.ID, 1) // delivered; a reply before the mark would skip it
	if row := readCommand(t, sys, cmd2.ID); row.Status != "delivered" {
		t.Fatalf("after delivery the row is %+v, want delivered", row)
	}
	send(t, ws, `{"type":"reply","id":"`+cmd2.ID.String()+`","ok":false,"error":"busy"}`)
	edge.waitWakes(t, cmd2.ID, 2)
	row = waitStatus(t, sys, cmd2.ID, "failed")
	if row.OK == nil || *row.OK || row.Error == nil || *row.Error != "busy" {
		t.Fatalf("failed row %+v, want ok=false error=busy", row)
	}
	closeNormally(t, ws)
}

// ---- 7. Commands stored while the device was away go out on connect ----

func TestPendingCommandsOnConnect(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", nil)
	devSecret := sys.AddDevice(t, "dev-1")
	sys.AddDevice(t, "dev-2")

	var want []uuid.UUID
	for i := range 5 {
		want = append(want, newCommand(t, sys, "dev-1", fmt.Sprintf("step-%d", i), fmt.Sprintf(`{"n":%d}`, i)).ID)
	}
	other := newCommand(t, sys, "dev-2", "not-yours", `{}`)

	ws := connect(t, node, "dev-1", devSecret) // no wake-up: connecting is enough
	for i, id := range want {
		m := readMessage(t, ws)
		if m.Type != protocol.TypeCommand || m.ID != id.String() || m.Name != fmt.Sprintf("step-%d", i) {
			t.Fatalf("frame %d is %+v, want command %s (step-%d)", i, m, id, i)
		}
		if !jsonEqual(t, m.Args, fmt.Sprintf(`{"n":%d}`, i)) {
			t.Fatalf("frame %d args %s", i, m.Args)
		}
	}
	for _, id := range want {
		if row := waitStatus(t, sys, id, "delivered"); *row.NodeID != "node-a" {
			t.Fatalf("command %s delivered by %v", id, row.NodeID)
		}
	}
	// Nothing else was sent (a redelivery is allowed: at least once): the
	// next other frame answers our ping.
	send(t, ws, `{"type":"ping"}`)
	if m := readSkipping(t, ws, want...); m.Type != protocol.TypePong {
		t.Fatalf("got %+v, want a pong", m)
	}
	if row := readCommand(t, sys, other.ID); row.Status != "pending" {
		t.Fatalf("dev-2's command is %s, want pending", row.Status)
	}
	closeNormally(t, ws)
}

// ---- 8. A device cannot answer another device's command ----

func TestReplyToAnotherDevicesCommand(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", nil)
	secret1 := sys.AddDevice(t, "dev-1")
	secret2 := sys.AddDevice(t, "dev-2")
	sys.AddDevice(t, "dev-3") // stays offline

	ws1 := connect(t, node, "dev-1", secret1)
	ws2 := connect(t, node, "dev-2", secret2)
	waitOnline(t, sys, "dev-1", "node-a", uuid.Nil)
	waitOnline(t, sys, "dev-2", "node-a", uuid.Nil)

	own := newCommand(t, sys, "dev-1", "own", `{}`)
	delivered := newCommand(t, sys, "dev-2", "theirs", `{}`)
	pending := newCommand(t, sys, "dev-3", "offline", `{}`)
	wake(t, sys, "dev-1", "dev-2")
	if m := readMessage(t, ws1); m.ID != own.ID.String() {
		t.Fatalf("dev-1 got %+v, want command %s", m, own.ID)
	}
	if m := readMessage(t, ws2); m.ID != delivered.ID.String() {
		t.Fatalf("dev-2 got %+v, want command %s", m, delivered.ID)
	}
	waitStatus(t, sys, own.ID, "delivered")
	waitStatus(t, sys, delivered.ID, "delivered")

	// dev-1 answers dev-2's and dev-3's commands, then its own: replies are
	// stored in order, so once its own is done the others were handled.
	send(t, ws1, `{"type":"reply","id":"`+delivered.ID.String()+`","ok":true,"result":{"forged":true}}`)
	send(t, ws1, `{"type":"reply","id":"`+pending.ID.String()+`","ok":false,"error":"forged"}`)
	send(t, ws1, `{"type":"reply","id":"`+own.ID.String()+`","ok":true}`)
	waitStatus(t, sys, own.ID, "done")

	if row := readCommand(t, sys, delivered.ID); row.Status != "delivered" || row.OK != nil || row.Result != nil || row.Completed {
		t.Fatalf("dev-2's command became %+v after dev-1's reply", row)
	}
	if row := readCommand(t, sys, pending.ID); row.Status != "pending" || row.OK != nil || row.Error != nil {
		t.Fatalf("dev-3's command became %+v after dev-1's reply", row)
	}
	// The forged replies did not cost dev-1 its session.
	send(t, ws1, `{"type":"ping"}`)
	if m := readSkipping(t, ws1, own.ID); m.Type != protocol.TypePong {
		t.Fatalf("got %+v, want a pong", m)
	}
	// The rightful device can still answer.
	send(t, ws2, `{"type":"reply","id":"`+delivered.ID.String()+`","ok":true,"result":{"real":true}}`)
	if row := waitStatus(t, sys, delivered.ID, "done"); !jsonEqual(t, row.Result, `{"real":true}`) {
		t.Fatalf("dev-2's result %s", row.Result)
	}
	closeNormally(t, ws1)
	closeNormally(t, ws2)
}

// ---- 9. Events are stored ----

func TestEvents(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", nil)
	devSecret := sys.AddDevice(t, "dev-1")

	ws := connect(t, node, "dev-1", devSecret)
	send(t, ws, `{"type":"event","name":"telemetry","data":{"c":21}}`)
	send(t, ws, `{"type":"event","name":"alert","data":{"smoke":true}}`)
	testsys.Eventually(t, "events stored", func() bool {
		return count(t, sys, `SELECT count(*) FROM events WHERE device_id = 'dev-1'`) == 2
	})
	type event struct {
		Name string
		Data []byte
	}
	rows, err := sys.Pool.Query(t.Context(), `SELECT name, data FROM events WHERE device_id = 'dev-1' ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	var got []event
	for rows.Next() {
		var e event
		if err := rows.Scan(&e.Name, &e.Data); err != nil {
			t.Fatal(err)
		}
		got = append(got, e)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if got[0].Name != "telemetry" || !jsonEqual(t, got[0].Data, `{"c":21}`) ||
		got[1].Name != "alert" || !jsonEqual(t, got[1].Data, `{"smoke":true}`) {
		t.Fatalf("stored events %q", got)
	}
	closeNormally(t, ws)
}

// ---- 10. Heartbeat ----

// heartbeat is a fast heartbeat for tests. The read timeout leaves ten
// pings of slack: on a loaded machine a pong can be late.
func heartbeat(c *conntier.Config) {
	c.PingInterval = 100 * time.Millisecond
	c.ReadTimeout = time.Second
}

func TestHeartbeatDropsSilentDevice(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", heartbeat)
	devSecret := sys.AddDevice(t, "dev-1")

	ws := connect(t, node, "dev-1", devSecret)
	// The pong proves the session is up and its presence row committed
	// (the node writes presence before it reads the first frame).
	send(t, ws, `{"type":"ping"}`)
	if m := readMessage(t, ws); m.Type != protocol.TypePong {
		t.Fatalf("got %+v, want a pong", m)
	}
	// From now on the client never reads, so it never answers a ping.
	waitOffline(t, sys, "dev-1")
	if n := node.Sessions(); n != 0 {
		t.Fatalf("node still holds %d sessions", n)
	}
	if lastSeen(t, sys, "dev-1") == nil {
		t.Fatal("last_seen_at not set")
	}
	// The client sees the socket end (it does not just time out).
	_ = ws.SetReadDeadline(time.Now().Add(wait))
	for {
		_, _, err := ws.ReadMessage()
		if err == nil {
			continue
		}
		if isTimeout(err) {
			t.Fatalf("the node did not drop the socket: %v", err)
		}
		break
	}
}

func TestHeartbeatKeepsAnsweringDevice(t *testing.T) {
	t.Parallel()
	const readTimeout = time.Second
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", heartbeat)
	devSecret := sys.AddDevice(t, "dev-1")

	ws := connect(t, node, "dev-1", devSecret)
	start := time.Now()

	// The reader answers pings (as gorilla does by default) and counts them:
	// the node's own pings are the clock.
	const wantPings = 25 // 25 × 100ms ≈ 2.5s, two and a half read timeouts
	enough := make(chan struct{})
	pings := 0
	ws.SetPingHandler(func(data string) error {
		pings++
		if pings == wantPings {
			close(enough)
		}
		err := ws.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(wait))
		if errors.Is(err, websocket.ErrCloseSent) {
			return nil // a ping that crossed our close frame: nothing to answer
		}
		return err
	})
	frames := make(chan protocol.Message, 1)
	readErr := make(chan error, 1)
	stop := make(chan struct{})
	readerDone := make(chan struct{})
	t.Cleanup(func() { close(stop); ws.Close(); <-readerDone })
	go func() {
		defer close(readerDone)
		_ = ws.SetReadDeadline(time.Now().Add(wait))
		for {
			_, data, err := ws.ReadMessage()
			if err != nil {
				readErr <- err
				return
			}
			var m protocol.Message
			if err := json.Unmarshal(data, &m); err != nil {
				readErr <- err
				return
			}
			select {
			case frames <- m:
			case <-stop:
				return
			}
		}
	}()

	session := waitOnline(t, sys, "dev-1", "node-a", uuid.Nil)
	select {
	case <-enough:
	case err := <-readErr:
		t.Fatalf("session ended while answering pings: %v", err)
	case m := <-frames:
		t.Fatalf("unexpected frame %+v", m)
	}
	if elapsed := time.Since(start); elapsed < 2*readTimeout {
		t.Fatalf("%d pings came in %v, faster than the ping interval allows", wantPings, elapsed)
	}
	// Still the same, working session.
	send(t, ws, `{"type":"ping"}`)
	select {
	case m := <-frames:
		if m.Type != protocol.TypePong {
			t.Fatalf("got %+v, want a pong", m)
		}
	case err := <-readErr:
		t.Fatalf("session ended while answering pings: %v", err)
	}
	if rows := livePresence(t, sys, "dev-1"); len(rows) != 1 || rows[0].SessionID != session.SessionID {
		t.Fatalf("presence %+v, want the first session %s", rows, session.SessionID)
	}
	if n := node.Sessions(); n != 1 {
		t.Fatalf("node reports %d sessions, want 1", n)
	}

	// A polite close ends the reader.
	msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye")
	if err := ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(wait)); err != nil {
		t.Fatal(err)
	}
	if err := <-readErr; !websocket.IsCloseError(err, websocket.CloseNormalClosure) {
		t.Fatalf("reader ended with %v, want the echoed 1000", err)
	}
	waitOffline(t, sys, "dev-1")
}

// ---- 11. Shutdown ----

func TestShutdown(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", nil)
	other := sys.StartNode(t, "node-b", nil)

	var clients []*websocket.Conn
	for i := range 3 {
		id := fmt.Sprintf("dev-%d", i)
		clients = append(clients, connect(t, node, id, sys.AddDevice(t, id)))
		waitOnline(t, sys, id, "node-a", uuid.Nil)
	}
	otherSecret := sys.AddDevice(t, "dev-other")
	onOther := connect(t, other, "dev-other", otherSecret)
	waitOnline(t, sys, "dev-other", "node-b", uuid.Nil)

	stopped := make(chan error, 1)
	go func() { stopped <- node.Stop() }()
	for i, ws := range clients {
		ce := expectClose(t, ws, protocol.CloseGoingAway)
		t.Logf("client %d: %d %q", i, ce.Code, ce.Text)
	}
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatalf("Stop: %v", err)
		}
	case <-time.After(wait):
		t.Fatal("Stop did not return")
	}
	if n := count(t, sys, `SELECT count(*) FROM nodes WHERE id = 'node-a'`); n != 0 {
		t.Fatalf("%d nodes rows left for node-a", n)
	}
	if n := count(t, sys, `SELECT count(*) FROM presence WHERE node_id = 'node-a'`); n != 0 {
		t.Fatalf("%d presence rows left for node-a", n)
	}
	// The other node is untouched.
	if rows := livePresence(t, sys, "dev-other"); len(rows) != 1 || rows[0].NodeID != "node-b" {
		t.Fatalf("dev-other presence %+v", rows)
	}
	send(t, onOther, `{"type":"ping"}`)
	if m := readMessage(t, onOther); m.Type != protocol.TypePong {
		t.Fatalf("got %+v, want a pong", m)
	}
	// The stopped node accepts no one.
	if ws, _, err := dialRaw(t, node, basicAuth("dev-0", "x"), protocol.Subprotocol); err == nil {
		ws.Close()
		t.Fatal("a stopped node accepted a connection")
	}
	closeNormally(t, onOther)
}

// ---- 12. Lease and health ----

func TestLeaseAndHealth(t *testing.T) {
	t.Parallel()
	const ttl = 600 * time.Millisecond
	sys := testsys.New(t)
	reg := prometheus.NewRegistry()
	node := sys.StartNode(t, "node-a", func(c *conntier.Config) {
		c.LeaseTTL = ttl
		c.Metrics = reg
	})
	devSecret := sys.AddDevice(t, "dev-1")

	leased := func() bool {
		return count(t, sys, `SELECT count(*) FROM nodes WHERE id = $1 AND lease_expires_at > now()`, "node-a") == 1
	}
	// StartNode returns before Run has taken the lease: wait for the row.
	testsys.Eventually(t, "node-a's lease", leased)
	// The heartbeat renews it: it outlives several TTLs.
	testsys.Eventually(t, "lease renewed past its first ttl", func() bool {
		return count(t, sys, `SELECT count(*) FROM nodes WHERE id = 'node-a' AND heartbeat_at > started_at + $1::interval`, 2*ttl) == 1
	})
	if !leased() {
		t.Fatal("lease lapsed while running")
	}

	client := node.HTTPClient()
	t.Cleanup(client.CloseIdleConnections)
	get := func(path string) (int, string) {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, node.Base+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		if resp.TLS == nil {
			t.Fatalf("GET %s was not served over TLS", path)
		}
		return resp.StatusCode, string(body)
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body := get(path); code != http.StatusOK {
			t.Fatalf("GET %s: %d %q", path, code, body)
		}
	}

	ws := connect(t, node, "dev-1", devSecret)
	send(t, ws, `{"type":"ping"}`)
	if m := readMessage(t, ws); m.Type != protocol.TypePong {
		t.Fatalf("got %+v, want a pong", m)
	}
	// The metrics are on the ops listener only: the device port is the
	// internet's.
	if code, body := get("/metrics"); code != http.StatusNotFound {
		t.Errorf("GET /metrics on the device port: %d %.80q, want 404", code, body)
	}
	for _, want := range []string{
		`switchboard_conn_sessions{node="node-a"}`,
		`switchboard_conn_connects_total{node="node-a",result="ok"}`,
		`switchboard_conn_frames_received_total{node="node-a",type="ping"}`,
	} {
		if v := node.Metric(t, want); v != 1 {
			t.Errorf("ops /metrics: %s = %v, want 1", want, v)
		}
	}
	closeNormally(t, ws)
}

// ---- Found bugs ----

// A frame the protocol accepts but PostgreSQL cannot store (a NUL character
// in a JSON string or in a reply's error) must not hold up other devices'
// writes: each stalled for the batcher's whole retry schedule (~6.4s) and,
// when they share the failing batch, were dropped with it.
func TestUnstorableFrameDoesNotStallOthers(t *testing.T) {
	t.Parallel()

	// stored polls for a row another device's write makes: milliseconds
	// without the poison frame; 3s is generous.
	stored := func(t *testing.T, sys *testsys.System, what, sql string) {
		t.Helper()
		deadline := time.After(3 * time.Second)
		poll := time.NewTicker(10 * time.Millisecond)
		defer poll.Stop()
		for count(t, sys, sql) == 0 {
			select {
			case <-deadline:
				t.Fatalf("%s not stored within 3s", what)
			case <-poll.C:
			}
		}
	}
	// poison sends frame on bad, then a ping whose answer (or a 1008 close)
	// shows the node has read the frame.
	poison := func(t *testing.T, bad *websocket.Conn, frame string) {
		t.Helper()
		send(t, bad, frame)
		send(t, bad, `{"type":"ping"}`)
		_ = bad.SetReadDeadline(time.Now().Add(wait))
		if _, _, err := bad.ReadMessage(); err != nil && !websocket.IsCloseError(err, protocol.CloseBadMessage) {
			t.Fatal(err)
		}
	}

	t.Run("event", func(t *testing.T) {
		t.Parallel()
		sys := testsys.New(t)
		node := sys.StartNode(t, "node-a", nil)
		bad := connect(t, node, "dev-bad", sys.AddDevice(t, "dev-bad"))
		good := connect(t, node, "dev-good", sys.AddDevice(t, "dev-good"))

		poison(t, bad, `{"type":"event","name":"telemetry","data":{"s":"\u0000"}}`)
		send(t, good, `{"type":"event","name":"telemetry","data":{"c":21}}`)
		stored(t, sys, "dev-good's event", `SELECT count(*) FROM events WHERE device_id = 'dev-good'`)
	})
	t.Run("reply", func(t *testing.T) {
		t.Parallel()
		sys := testsys.New(t)
		node := sys.StartNode(t, "node-a", nil)
		bad := connect(t, node, "dev-bad", sys.AddDevice(t, "dev-bad"))
		good := connect(t, node, "dev-good", sys.AddDevice(t, "dev-good"))
		waitOnline(t, sys, "dev-bad", "node-a", uuid.Nil)
		waitOnline(t, sys, "dev-good", "node-a", uuid.Nil)
		badCmd := newCommand(t, sys, "dev-bad", "x", `{}`)
		goodCmd := newCommand(t, sys, "dev-good", "x", `{}`)
		wake(t, sys, "dev-bad", "dev-good")
		readMessage(t, bad)
		readMessage(t, good)
		waitStatus(t, sys, badCmd.ID, "delivered")
		waitStatus(t, sys, goodCmd.ID, "delivered")

		poison(t, bad, `{"type":"reply","id":"`+badCmd.ID.String()+`","ok":false,"error":"a\u0000b"}`)
		send(t, good, `{"type":"reply","id":"`+goodCmd.ID.String()+`","ok":true}`)
		stored(t, sys, "dev-good's reply", `SELECT count(*) FROM commands WHERE device_id = 'dev-good' AND status = 'done'`)
	})
}

// ---- Flow control and backstops ----

// A device that comes back to more commands than its send queue holds is
// paced, not dropped: every command is answered on its one session.
func TestBacklogIsPacedNotDropped(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	// A queue of 10 commands and 300 of them: the deliverer reads them all
	// at once.
	node := sys.StartNode(t, "node-a", func(c *conntier.Config) { c.SendQueue = 10 })
	devSecret := sys.AddDevice(t, "dev-1")
	var ids []uuid.UUID
	for i := range 300 {
		ids = append(ids, newCommand(t, sys, "dev-1", "step", fmt.Sprintf(`{"n":%d}`, i)).ID)
	}
	testsys.StartDevice(t, node, "dev-1", devSecret, map[string]device.HandlerFunc{
		"step": func(_ context.Context, args json.RawMessage) (any, error) { return args, nil },
	})
	first := waitOnline(t, sys, "dev-1", "node-a", uuid.Nil)
	for _, id := range ids {
		waitStatus(t, sys, id, "done")
	}
	// Still the first session: the node never closed it (1013) to make room.
	if rows := livePresence(t, sys, "dev-1"); len(rows) != 1 || rows[0].SessionID != first.SessionID {
		t.Fatalf("presence after the backlog: %+v, want the first session %s", rows, first.SessionID)
	}
}

// A command whose wake-up was lost (stored without a NOTIFY) still reaches
// its connected device, by the node's periodic rescan.
func TestRescanFindsUnannouncedCommands(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", func(c *conntier.Config) { c.RescanInterval = 200 * time.Millisecond })
	ws := connect(t, node, "dev-1", sys.AddDevice(t, "dev-1"))
	waitOnline(t, sys, "dev-1", "node-a", uuid.Nil)
	cmd := newCommand(t, sys, "dev-1", "late", `{}`) // no wake
	if m := readMessage(t, ws); m.Type != protocol.TypeCommand || m.ID != cmd.ID.String() {
		t.Fatalf("got %+v, want command %s", m, cmd.ID)
	}
	closeNormally(t, ws)
}
