package conntier_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/websocket"
	"github.com/jackc/pgx/v5"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/db/dbtest"
	"github.com/switchboard-iot/switchboard/device/protocol"
	"github.com/switchboard-iot/switchboard/internal/command"
	"github.com/switchboard-iot/switchboard/internal/problem"
)

// wait bounds every read, dial and poll: a bug fails the test, never hangs it.
const wait = 10 * time.Second

// basicAuth is an Authorization header for device id and secret.
func basicAuth(id, devSecret string) http.Header {
	h := http.Header{}
	h.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(id+":"+devSecret)))
	return h
}

// dialRaw opens a raw WebSocket to node, offering subprotocols. On success
// the connection is closed when the test ends.
func dialRaw(t *testing.T, node *testsys.Node, header http.Header, subprotocols ...string) (*websocket.Conn, *http.Response, error) {
	t.Helper()
	d := websocket.Dialer{TLSClientConfig: node.TLS(), Subprotocols: subprotocols, HandshakeTimeout: wait}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	ws, resp, err := d.DialContext(ctx, node.URL, header)
	if ws != nil {
		t.Cleanup(func() { ws.Close() })
	}
	return ws, resp, err
}

// connect opens a device session with valid credentials and checks that the
// node accepted the subprotocol.
func connect(t *testing.T, node *testsys.Node, id, devSecret string) *websocket.Conn {
	t.Helper()
	ws, resp, err := dialRaw(t, node, basicAuth(id, devSecret), protocol.Subprotocol)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("connecting %s: %v (HTTP %d)", id, err, status)
	}
	if got := ws.Subprotocol(); got != protocol.Subprotocol {
		t.Fatalf("connecting %s: subprotocol %q, want %q", id, got, protocol.Subprotocol)
	}
	return ws
}

// send writes one text frame.
func send(t *testing.T, ws *websocket.Conn, frame string) {
	t.Helper()
	_ = ws.SetWriteDeadline(time.Now().Add(wait))
	if err := ws.WriteMessage(websocket.TextMessage, []byte(frame)); err != nil {
		t.Fatalf("sending %s: %v", frame, err)
	}
}

// readMessage reads one text frame and decodes it.
func readMessage(t *testing.T, ws *websocket.Conn) protocol.Message {
	t.Helper()
	_ = ws.SetReadDeadline(time.Now().Add(wait))
	kind, data, err := ws.ReadMessage()
	if err != nil {
		t.Fatalf("reading a frame: %v", err)
	}
	if kind != websocket.TextMessage {
		t.Fatalf("got a frame of kind %d, want text", kind)
	}
	var m protocol.Message
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("frame %s is not JSON: %v", data, err)
	}
	return m
}

// readSkipping reads the next frame that is not a redelivery of one of
// these commands (delivery is at least once: a device may see one twice).
func readSkipping(t *testing.T, ws *websocket.Conn, redelivered ...uuid.UUID) protocol.Message {
	t.Helper()
	for {
		m := readMessage(t, ws)
		if m.Type != protocol.TypeCommand || !slices.ContainsFunc(redelivered, func(id uuid.UUID) bool { return id.String() == m.ID }) {
			return m
		}
		t.Logf("redelivered: %s", m.ID)
	}
}

// expectClose reads until the node closes the session and checks the code.
func expectClose(t *testing.T, ws *websocket.Conn, code int) *websocket.CloseError {
	t.Helper()
	_ = ws.SetReadDeadline(time.Now().Add(wait))
	for {
		_, data, err := ws.ReadMessage()
		if err == nil {
			t.Logf("frame before the close: %s", data)
			continue
		}
		var ce *websocket.CloseError
		if !errors.As(err, &ce) {
			t.Fatalf("want close code %d, the read failed with: %v", code, err)
		}
		if ce.Code != code {
			t.Fatalf("close code %d (%q), want %d", ce.Code, ce.Text, code)
		}
		return ce
	}
}

// closeNormally ends a session the way a polite device does, and checks the
// node echoes the close.
func closeNormally(t *testing.T, ws *websocket.Conn) {
	t.Helper()
	msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye")
	if err := ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(wait)); err != nil {
		t.Fatalf("sending close: %v", err)
	}
	expectClose(t, ws, websocket.CloseNormalClosure)
	ws.Close()
}

// readProblem checks resp is an RFC 9457 problem with this status and type.
func readProblem(t *testing.T, resp *http.Response, status int, slug string) problem.Problem {
	t.Helper()
	if resp == nil {
		t.Fatal("no HTTP response")
	}
	if resp.StatusCode != status {
		t.Fatalf("HTTP %d, want %d", resp.StatusCode, status)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type %q, want application/problem+json", ct)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var p problem.Problem
	if err := json.Unmarshal(body, &p); err != nil {
		t.Fatalf("problem body %q: %v", body, err)
	}
	if p.Type != problem.Base+slug || p.Status != status || p.Title == "" {
		t.Fatalf("problem %+v, want type %s and status %d", p, problem.Base+slug, status)
	}
	return p
}

// presenceRow is one row of presence_live.
type presenceRow struct {
	DeviceID  string
	NodeID    string
	Region    string
	SessionID uuid.UUID
}

func livePresence(t *testing.T, sys *testsys.System, deviceID string) []presenceRow {
	t.Helper()
	rows, err := sys.Pool.Query(context.Background(),
		`SELECT device_id, node_id, region, session_id FROM presence_live WHERE device_id = $1`, deviceID)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[presenceRow])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// waitOnline waits until presence_live shows the device on node, with a
// session other than notSession, and returns the row.
func waitOnline(t *testing.T, sys *testsys.System, deviceID, nodeID string, notSession uuid.UUID) presenceRow {
	t.Helper()
	var row presenceRow
	testsys.Eventually(t, deviceID+" online on "+nodeID, func() bool {
		rows := livePresence(t, sys, deviceID)
		if len(rows) == 1 && rows[0].NodeID == nodeID && rows[0].SessionID != notSession {
			row = rows[0]
			return true
		}
		return false
	})
	if row.Region != "test" {
		t.Fatalf("presence region %q, want test", row.Region)
	}
	return row
}

// waitOffline waits until no presence row, live or not, names the device.
func waitOffline(t *testing.T, sys *testsys.System, deviceID string) {
	t.Helper()
	testsys.Eventually(t, deviceID+" offline", func() bool {
		return count(t, sys, `SELECT count(*) FROM presence WHERE device_id = $1`, deviceID) == 0
	})
}

func count(t *testing.T, sys *testsys.System, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := sys.Pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func lastSeen(t *testing.T, sys *testsys.System, deviceID string) *time.Time {
	t.Helper()
	var at *time.Time
	if err := sys.Pool.QueryRow(context.Background(), `SELECT last_seen_at FROM devices WHERE id = $1`, deviceID).Scan(&at); err != nil {
		t.Fatal(err)
	}
	return at
}

// newCommand stores a pending command for the device, answered to edge-x.
func newCommand(t *testing.T, sys *testsys.System, deviceID, name, args string) command.Command {
	t.Helper()
	c, _, err := sys.Store.CreateCommand(context.Background(), db.NewCommand{
		ID: uuid.New(), DeviceID: deviceID, Name: name, Args: json.RawMessage(args),
		Timeout: 10 * time.Second, TTL: time.Hour, ReplyTo: "edge-x",
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func wake(t *testing.T, sys *testsys.System, deviceIDs ...string) {
	t.Helper()
	var notices []db.Notice
	for _, id := range deviceIDs {
		notices = append(notices, db.Notice{Wake: id})
	}
	if err := sys.Store.Notify(context.Background(), notices); err != nil {
		t.Fatal(err)
	}
}

// commandRow is what a command's row says.
type commandRow struct {
	Status    string
	Attempts  int
	NodeID    *string
	OK        *bool
	Result    []byte
	Error     *string
	Delivered bool // delivered_at is set
	Completed bool // completed_at is set
}

func readCommand(t *testing.T, sys *testsys.System, id uuid.UUID) commandRow {
	t.Helper()
	var r commandRow
	err := sys.Pool.QueryRow(context.Background(), `
		SELECT status, attempts, node_id, ok, result, error, delivered_at IS NOT NULL, completed_at IS NOT NULL
		FROM commands WHERE id = $1`, id).
		Scan(&r.Status, &r.Attempts, &r.NodeID, &r.OK, &r.Result, &r.Error, &r.Delivered, &r.Completed)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func waitStatus(t *testing.T, sys *testsys.System, id uuid.UUID, status string) commandRow {
	t.Helper()
	var r commandRow
	testsys.Eventually(t, "command "+id.String()+" "+status, func() bool {
		r = readCommand(t, sys, id)
		return r.Status == status
	})
	return r
}

// jsonEqual compares two JSON documents by value (jsonb reformats them).
func jsonEqual(t *testing.T, got []byte, want string) bool {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("%q is not JSON: %v", got, err)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("%q is not JSON: %v", want, err)
	}
	return reflect.DeepEqual(g, w)
}

// edgeListener is a stand-in edge: it listens on an edge channel with its
// own notifier and records the command ids it is woken for.
type edgeListener struct {
	mu     sync.Mutex
	ids    []string      // one entry per payload line
	signal chan struct{} // cap 1: something arrived
}

func listenEdge(t *testing.T, sys *testsys.System, edgeID string) *edgeListener {
	t.Helper()
	l := &edgeListener{signal: make(chan struct{}, 1)}
	n := db.NewNotifier(sys.Pool.Config().ConnConfig, dbtest.Logger())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("notifier: %v", err)
		}
	})
	ready := make(chan struct{}, 1)
	n.Listen(db.EdgeChannel(edgeID), func(payload string) {
		l.mu.Lock()
		for _, m := range db.ParseEdgeMessage(payload) { // an id, or the command itself
			l.ids = append(l.ids, m.ID.String())
		}
		l.mu.Unlock()
		select {
		case l.signal <- struct{}{}:
		default:
		}
	}, func() {
		select {
		case ready <- struct{}{}:
		default:
		}
	})
	select {
	case <-ready:
	case <-time.After(wait):
		t.Fatal("edge listener not ready")
	}
	return l
}

// waitWakes waits until the edge was woken at least n times for id.
func (l *edgeListener) waitWakes(t *testing.T, id uuid.UUID, n int) {
	t.Helper()
	deadline := time.After(wait)
	for {
		l.mu.Lock()
		got := 0
		for _, s := range l.ids {
			if s == id.String() {
				got++
			}
		}
		all := append([]string(nil), l.ids...)
		l.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-l.signal:
		case <-deadline:
			t.Fatalf("edge woken %d times for %s, want %d; heard %q", got, id, n, all)
		}
	}
}

// waitListening waits until the node's listener has LISTENed on its node
// channel: a kick sent before that is lost (NOTIFY is not replayed).
func waitListening(t *testing.T, sys *testsys.System, nodeID string) {
	t.Helper()
	want := "LISTEN " + pgx.Identifier{db.NodeChannel(nodeID)}.Sanitize()
	testsys.Eventually(t, nodeID+" listening", func() bool {
		return count(t, sys, `
			SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND application_name = $1 AND state = 'idle' AND query = $2`,
			db.ListenerApplicationName, want) == 1
	})
}

// isTimeout says whether a read failed on its deadline.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
