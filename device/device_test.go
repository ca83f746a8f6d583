package device_test

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/websocket"
	"go.uber.org/goleak"

	"github.com/switchboard-iot/switchboard/device"
	"github.com/switchboard-iot/switchboard/device/protocol"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	testID     = "dev-1"
	testSecret = "s3cret:with-colon" // a colon in the secret must survive Basic auth
	waitFor    = 5 * time.Second
)

// accepted is one WebSocket session the fake node accepted.
type accepted struct {
	ws      *websocket.Conn
	header  http.Header // the upgrade request's headers
	offered []string    // subprotocols the client offered
	user    string
	pass    string
	at      time.Time // when the upgrade completed
}

// fakeNode is a connection node reduced to the upgrade: it checks Basic auth,
// accepts switchboard.v1 and hands each session to the test, which then
// speaks the protocol itself.
type fakeNode struct {
	srv      *httptest.Server
	url      string
	tls      *tls.Config
	conns    chan *accepted
	attempts atomic.Int32 // upgrade requests, accepted or not
	accepts  atomic.Int32 // sessions accepted
	busy     atomic.Int32 // attempts still to turn away: 503, Retry-After: 1
	// clockAhead, when set, is how far ahead of the test's clock the node's
	// is: its upgrade then answers with a Date header by that clock.
	clockAhead atomic.Int64

	mu     sync.Mutex
	closed bool
	all    []*websocket.Conn
	done   chan struct{}
}

func newFakeNode(t *testing.T) *fakeNode {
	t.Helper()
	n := &fakeNode{conns: make(chan *accepted, 16), done: make(chan struct{})}
	up := websocket.Upgrader{Subprotocols: []string{protocol.Subprotocol}}
	mux := http.NewServeMux()
	mux.HandleFunc(protocol.Path, func(w http.ResponseWriter, r *http.Request) {
		n.attempts.Add(1)
		if n.busy.Add(-1) >= 0 {
			w.Header().Set("Retry-After", "1")
			http.Error(w, "node full", http.StatusServiceUnavailable)
			return
		}
		user, pass, ok := r.BasicAuth()
		if !ok || user != testID || pass != testSecret {
			w.Header().Set("WWW-Authenticate", `Basic realm="switchboard"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		var header http.Header
		if ahead := time.Duration(n.clockAhead.Load()); ahead != 0 {
			header = http.Header{"Date": {time.Now().Add(ahead).UTC().Format(http.TimeFormat)}}
		}
		ws, err := up.Upgrade(w, r, header)
		if err != nil {
			return
		}
		n.mu.Lock()
		if n.closed {
			n.mu.Unlock()
			ws.Close()
			return
		}
		n.all = append(n.all, ws)
		n.mu.Unlock()
		n.accepts.Add(1)
		a := &accepted{ws: ws, header: r.Header.Clone(), offered: websocket.Subprotocols(r), user: user, pass: pass, at: time.Now()}
		select {
		case n.conns <- a:
		case <-n.done:
		}
	})
	n.srv = httptest.NewUnstartedServer(mux)
	n.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	n.srv.StartTLS()
	pool := x509.NewCertPool()
	pool.AddCert(n.srv.Certificate())
	n.tls = &tls.Config{RootCAs: pool}
	n.url = "wss://" + strings.TrimPrefix(n.srv.URL, "https://") + protocol.Path
	t.Cleanup(func() {
		n.mu.Lock()
		n.closed = true
		close(n.done)
		for _, ws := range n.all {
			ws.Close()
		}
		n.mu.Unlock()
		n.srv.Close()
	})
	return n
}

// accept waits for the SDK's next session.
func (n *fakeNode) accept(t *testing.T) *accepted {
	t.Helper()
	select {
	case a := <-n.conns:
		return a
	case <-time.After(waitFor):
		t.Fatalf("the SDK did not connect within %v", waitFor)
		return nil
	}
}

// running is a Client whose Run goroutine the test owns.
type running struct {
	c            *device.Client
	cancel       context.CancelFunc
	ended        chan struct{} // closed when Run returned; err is then set
	err          error
	connected    chan struct{} // one value per OnConnect
	disconnected chan error    // one value per OnDisconnect
}

// start runs a client against n. edit may change the config; setup may
// register handlers (before Run, as the SDK requires).
func start(t *testing.T, n *fakeNode, edit func(*device.Config), setup func(*device.Client)) *running {
	t.Helper()
	r := &running{
		ended:        make(chan struct{}),
		connected:    make(chan struct{}, 64),
		disconnected: make(chan error, 64),
	}
	cfg := device.Config{
		URL:          n.url,
		ID:           testID,
		Secret:       testSecret,
		TLS:          n.tls,
		Log:          slog.New(slog.DiscardHandler),
		MinBackoff:   10 * time.Millisecond,
		MaxBackoff:   100 * time.Millisecond,
		OnConnect:    func() { r.connected <- struct{}{} },
		OnDisconnect: func(err error) { r.disconnected <- err },
	}
	if edit != nil {
		edit(&cfg)
	}
	r.c = device.New(cfg)
	if setup != nil {
		setup(r.c)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() {
		defer close(r.ended)
		r.err = r.c.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.ended:
		case <-time.After(2 * waitFor):
			t.Errorf("Run did not return within %v of its context ending", 2*waitFor)
		}
	})
	return r
}

// waitEnded waits for Run to return and gives its error.
func (r *running) waitEnded(t *testing.T) error {
	t.Helper()
	select {
	case <-r.ended:
		return r.err
	case <-time.After(waitFor):
		t.Fatalf("Run did not return within %v", waitFor)
		return nil
	}
}

func (r *running) waitConnected(t *testing.T) {
	t.Helper()
	select {
	case <-r.connected:
	case <-time.After(waitFor):
		t.Fatalf("OnConnect was not called within %v", waitFor)
	}
}

func (r *running) waitDisconnected(t *testing.T) error {
	t.Helper()
	select {
	case err := <-r.disconnected:
		return err
	case <-time.After(waitFor):
		t.Fatalf("OnDisconnect was not called within %v", waitFor)
		return nil
	}
}

func writeText(t *testing.T, ws *websocket.Conn, frame string) {
	t.Helper()
	_ = ws.SetWriteDeadline(time.Now().Add(waitFor))
	if err := ws.WriteMessage(websocket.TextMessage, []byte(frame)); err != nil {
		t.Fatalf("node write: %v", err)
	}
}

func writeClose(t *testing.T, ws *websocket.Conn, code int, reason string) {
	t.Helper()
	if err := ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(waitFor)); err != nil {
		t.Fatalf("node close %d: %v", code, err)
	}
}

func sendCommand(t *testing.T, ws *websocket.Conn, id, name, args string) {
	t.Helper()
	writeText(t, ws, `{"type":"command","id":"`+id+`","name":"`+name+`","args":`+args+`}`)
}

// readFrame reads one data frame from the SDK, as raw JSON and decoded by the
// protocol package (so it is also a valid frame).
func readFrame(t *testing.T, ws *websocket.Conn) (map[string]any, protocol.Message) {
	t.Helper()
	_ = ws.SetReadDeadline(time.Now().Add(waitFor))
	typ, frame, err := ws.ReadMessage()
	if err != nil {
		t.Fatalf("node read: %v", err)
	}
	if typ != websocket.TextMessage {
		t.Fatalf("frame type %d, want text", typ)
	}
	var raw map[string]any
	if err := json.Unmarshal(frame, &raw); err != nil {
		t.Fatalf("frame %s is not a JSON object: %v", frame, err)
	}
	msg, err := protocol.Decode(frame)
	if err != nil {
		t.Fatalf("frame %s does not decode: %v", frame, err)
	}
	return raw, msg
}

// readReply reads a frame that must be the reply to id.
func readReply(t *testing.T, ws *websocket.Conn, id string) (map[string]any, protocol.Message) {
	t.Helper()
	raw, msg := readFrame(t, ws)
	if msg.Type != protocol.TypeReply || msg.ID != id {
		t.Fatalf("got %v, want the reply to %s", raw, id)
	}
	return raw, msg
}

// readClose reads until the SDK's close frame and returns its code.
func readClose(t *testing.T, ws *websocket.Conn) int {
	t.Helper()
	_ = ws.SetReadDeadline(time.Now().Add(waitFor))
	for {
		_, frame, err := ws.ReadMessage()
		if err == nil {
			t.Logf("frame before close: %s", frame)
			continue
		}
		var ce *websocket.CloseError
		if !errors.As(err, &ce) {
			t.Fatalf("node read ended with %v, want a close frame", err)
		}
		return ce.Code
	}
}

func TestConnectSendsCredentialsAndSubprotocol(t *testing.T) {
	t.Parallel()
	n := newFakeNode(t)
	r := start(t, n, nil, nil)

	a := n.accept(t)
	wantAuth := "Basic " + base64.StdEncoding.EncodeToString([]byte(testID+":"+testSecret))
	if got := a.header.Get("Authorization"); got != wantAuth {
		t.Errorf("Authorization = %q, want %q", got, wantAuth)
	}
	if a.user != testID || a.pass != testSecret {
		t.Errorf("Basic auth = %q:%q, want %q:%q", a.user, a.pass, testID, testSecret)
	}
	if !slices.Contains(a.offered, protocol.Subprotocol) {
		t.Errorf("offered subprotocols %q, want %q among them", a.offered, protocol.Subprotocol)
	}
	if got := a.ws.Subprotocol(); got != protocol.Subprotocol {
		t.Errorf("negotiated subprotocol %q, want %q", got, protocol.Subprotocol)
	}
	r.waitConnected(t)
	if got := n.attempts.Load(); got != 1 {
		t.Errorf("%d upgrade attempts, want 1", got)
	}
}

func TestCommands(t *testing.T) {
	t.Parallel()
	n := newFakeNode(t)
	gotArgs := make(chan json.RawMessage, 1)
	r := start(t, n, nil, func(c *device.Client) {
		c.Handle("add", func(_ context.Context, args json.RawMessage) (any, error) {
			gotArgs <- append(json.RawMessage(nil), args...)
			var in struct{ A, B int }
			if err := json.Unmarshal(args, &in); err != nil {
				return nil, err
			}
			return in.A + in.B, nil
		})
		c.Handle("fail", func(context.Context, json.RawMessage) (any, error) {
			return nil, errors.New("relay stuck")
		})
		c.Handle("func", func(context.Context, json.RawMessage) (any, error) {
			return func() {}, nil
		})
		c.Handle("chan", func(context.Context, json.RawMessage) (any, error) {
			return make(chan int), nil
		})
	})
	a := n.accept(t)
	r.waitConnected(t)

	t.Run("result", func(t *testing.T) {
		id := uuid.NewString()
		sendCommand(t, a.ws, id, "add", `{"a":1,"b":2}`)
		raw, _ := readReply(t, a.ws, id)
		want := map[string]any{"type": "reply", "id": id, "ok": true, "result": float64(3)}
		if !reflect.DeepEqual(raw, want) {
			t.Errorf("reply %v, want %v", raw, want)
		}
		select {
		case args := <-gotArgs:
			var got map[string]any
			if err := json.Unmarshal(args, &got); err != nil {
				t.Fatalf("handler args %s: %v", args, err)
			}
			if want := map[string]any{"a": float64(1), "b": float64(2)}; !reflect.DeepEqual(got, want) {
				t.Errorf("handler args %v, want %v", got, want)
			}
		default:
			t.Error("the add handler was not called")
		}
	})

	failures := []struct {
		name, command, errPrefix string
	}{
		{"handler error", "fail", "relay stuck"},
		{"unknown command", "nope", "unknown command nope"},
		{"func result", "func", "result is not JSON"},
		{"chan result", "chan", "result is not JSON"},
	}
	for _, tc := range failures {
		t.Run(tc.name, func(t *testing.T) {
			id := uuid.NewString()
			sendCommand(t, a.ws, id, tc.command, `{}`)
			raw, msg := readReply(t, a.ws, id)
			if ok, present := raw["ok"]; !present || ok != false {
				t.Errorf("reply %v: want ok false", raw)
			}
			if msg.OK == nil || *msg.OK {
				t.Errorf("decoded ok %v, want false", msg.OK)
			}
			if !strings.HasPrefix(msg.Error, tc.errPrefix) {
				t.Errorf("error %q, want it to start with %q", msg.Error, tc.errPrefix)
			}
			if _, present := raw["result"]; present {
				t.Errorf("failed reply %v carries a result", raw)
			}
		})
	}
}

func TestRedeliveredCommandRunsOnce(t *testing.T) {
	t.Parallel()
	n := newFakeNode(t)
	var calls atomic.Int32
	r := start(t, n, nil, func(c *device.Client) {
		c.Handle("count", func(context.Context, json.RawMessage) (any, error) {
			return map[string]int32{"call": calls.Add(1)}, nil
		})
	})
	a := n.accept(t)
	r.waitConnected(t)

	id := uuid.NewString()
	wantResult := `{"call":1}`
	for i := range 2 {
		sendCommand(t, a.ws, id, "count", `{}`)
		_, msg := readReply(t, a.ws, id)
		if msg.OK == nil || !*msg.OK || string(msg.Result) != wantResult {
			t.Fatalf("delivery %d on the first session: ok %v result %s error %q, want ok true result %s", i+1, msg.OK, msg.Result, msg.Error, wantResult)
		}
	}
	if got := calls.Load(); got != 1 {
		t.Fatalf("handler ran %d times for one id on one session, want 1", got)
	}

	// The node goes away; the command is redelivered on the next session.
	_ = a.ws.Close()
	b := n.accept(t)
	r.waitConnected(t)
	sendCommand(t, b.ws, id, "count", `{}`)
	_, msg := readReply(t, b.ws, id)
	if msg.OK == nil || !*msg.OK || string(msg.Result) != wantResult {
		t.Fatalf("redelivery after reconnect: ok %v result %s error %q, want ok true result %s", msg.OK, msg.Result, msg.Error, wantResult)
	}
	if got := calls.Load(); got != 1 {
		t.Fatalf("handler ran %d times after a redelivery on a new session, want 1", got)
	}

	// A new id still runs.
	id2 := uuid.NewString()
	sendCommand(t, b.ws, id2, "count", `{}`)
	if _, msg := readReply(t, b.ws, id2); string(msg.Result) != `{"call":2}` {
		t.Errorf("a new id gave result %s, want {\"call\":2}", msg.Result)
	}
}

// A handler cut short by its session ending is run again when the command
// is redelivered, instead of the redelivery getting a cancellation back.
func TestInterruptedCommandRunsAgain(t *testing.T) {
	t.Parallel()
	n := newFakeNode(t)
	var calls atomic.Int32
	started := make(chan struct{}, 1)
	r := start(t, n, nil, func(c *device.Client) {
		c.Handle("slow", func(ctx context.Context, _ json.RawMessage) (any, error) {
			if calls.Add(1) == 1 {
				started <- struct{}{}
				<-ctx.Done() // the first run outlives its session
				return nil, ctx.Err()
			}
			return "finished", nil
		})
	})
	a := n.accept(t)
	r.waitConnected(t)
	id := uuid.NewString()
	sendCommand(t, a.ws, id, "slow", `{}`)
	select {
	case <-started:
	case <-time.After(waitFor):
		t.Fatal("the handler did not start")
	}
	_ = a.ws.Close()

	b := n.accept(t)
	r.waitConnected(t)
	sendCommand(t, b.ws, id, "slow", `{}`)
	_, msg := readReply(t, b.ws, id)
	if msg.OK == nil || !*msg.OK || string(msg.Result) != `"finished"` {
		t.Fatalf("redelivery: ok %v result %s error %q, want the second run's result", msg.OK, msg.Result, msg.Error)
	}
	if got := calls.Load(); got != 2 {
		t.Fatalf("handler ran %d times, want 2 (the interrupted run and the redelivery)", got)
	}
}

// A reply finished after its session ended is sent on the next session:
// the node has the command as delivered and still takes its answer.
func TestReplyOutlivesItsSession(t *testing.T) {
	t.Parallel()
	n := newFakeNode(t)
	started, release := make(chan struct{}), make(chan struct{})
	r := start(t, n, nil, func(c *device.Client) {
		c.Handle("slow", func(context.Context, json.RawMessage) (any, error) {
			close(started)
			<-release // ignores its context: the work finishes regardless
			return "finished", nil
		})
	})
	a := n.accept(t)
	r.waitConnected(t)
	id := uuid.NewString()
	sendCommand(t, a.ws, id, "slow", `{}`)
	select {
	case <-started:
	case <-time.After(waitFor):
		t.Fatal("the handler did not start")
	}
	_ = a.ws.Close()
	r.waitDisconnected(t)
	close(release)

	b := n.accept(t)
	r.waitConnected(t)
	_, msg := readReply(t, b.ws, id)
	if msg.OK == nil || !*msg.OK || string(msg.Result) != `"finished"` {
		t.Fatalf("reply on the next session: ok %v result %s error %q", msg.OK, msg.Result, msg.Error)
	}
}

func TestEvents(t *testing.T) {
	t.Parallel()
	n := newFakeNode(t)
	ctx := t.Context()

	// Before Run there is no session.
	idle := device.New(device.Config{URL: n.url, ID: testID, Secret: testSecret, TLS: n.tls, Log: slog.New(slog.DiscardHandler)})
	if err := idle.Event(ctx, "telemetry", map[string]any{"temp": 1}); !errors.Is(err, device.ErrNotConnected) {
		t.Errorf("Event without Run = %v, want ErrNotConnected", err)
	}

	r := start(t, n, nil, nil)
	a := n.accept(t)
	r.waitConnected(t)
	if err := r.c.Event(ctx, "telemetry", map[string]any{"temp": 21.5, "unit": "C"}); err != nil {
		t.Fatalf("Event while connected: %v", err)
	}
	raw, _ := readFrame(t, a.ws)
	want := map[string]any{"type": "event", "name": "telemetry", "data": map[string]any{"temp": 21.5, "unit": "C"}}
	if !reflect.DeepEqual(raw, want) {
		t.Errorf("event frame %v, want %v", raw, want)
	}

	if err := r.c.Event(ctx, "telemetry", make(chan int)); err == nil || errors.Is(err, device.ErrNotConnected) {
		t.Errorf("Event with unmarshallable data = %v, want a JSON error", err)
	}

	// After Run returned there is no session either.
	r.cancel()
	if err := r.waitEnded(t); err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
	if err := r.c.Event(ctx, "telemetry", map[string]any{"temp": 2}); !errors.Is(err, device.ErrNotConnected) {
		t.Errorf("Event after Run returned = %v, want ErrNotConnected", err)
	}
}

func TestHeartbeat(t *testing.T) {
	t.Parallel()
	n := newFakeNode(t)
	r := start(t, n, nil, nil)
	a := n.accept(t)
	r.waitConnected(t)

	pongs := make(chan string, 1)
	a.ws.SetPongHandler(func(data string) error {
		pongs <- data
		return nil
	})
	if err := a.ws.WriteControl(websocket.PingMessage, []byte("hb-1"), time.Now().Add(waitFor)); err != nil {
		t.Fatalf("node ping: %v", err)
	}
	writeText(t, a.ws, `{"type":"ping"}`) // an application ping: not a command, ignored
	// The SDK answers a ping from its read loop before it reads the next
	// frame, so the reply to a later command comes after the pong. Pongs
	// are handled while the node reads: the reply is the frame to read.
	id := uuid.NewString()
	sendCommand(t, a.ws, id, "nope", `{}`)
	readReply(t, a.ws, id)
	select {
	case data := <-pongs:
		if data != "hb-1" {
			t.Errorf("pong data %q, want %q", data, "hb-1")
		}
	default:
		t.Error("the SDK did not answer the WebSocket ping with a pong")
	}
}

func TestReconnect(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		drop     func(t *testing.T, ws *websocket.Conn)
		wantCode int // close code OnDisconnect must report, 0 for any error
	}{
		{"connection dropped", func(t *testing.T, ws *websocket.Conn) { _ = ws.Close() }, 0},
		{"going away", func(t *testing.T, ws *websocket.Conn) {
			writeClose(t, ws, protocol.CloseGoingAway, "draining")
			if code := readClose(t, ws); code != protocol.CloseGoingAway {
				t.Errorf("the SDK echoed close code %d, want %d", code, protocol.CloseGoingAway)
			}
			_ = ws.Close()
		}, protocol.CloseGoingAway},
		{"internal error", func(t *testing.T, ws *websocket.Conn) {
			writeClose(t, ws, protocol.CloseInternalError, "database down")
			_ = ws.Close()
		}, protocol.CloseInternalError},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			n := newFakeNode(t)
			r := start(t, n, nil, nil)
			a := n.accept(t)
			r.waitConnected(t)

			tc.drop(t, a.ws)
			b := n.accept(t)
			// OnDisconnect runs before the SDK waits and redials.
			select {
			case err := <-r.disconnected:
				if err == nil {
					t.Error("OnDisconnect(nil), want the reason the session ended")
				}
				if tc.wantCode != 0 {
					var ce *websocket.CloseError
					if !errors.As(err, &ce) || ce.Code != tc.wantCode {
						t.Errorf("OnDisconnect(%v), want close code %d", err, tc.wantCode)
					}
				}
			default:
				t.Error("the SDK redialed without calling OnDisconnect")
			}
			r.waitConnected(t)
			if b.user != testID || b.pass != testSecret {
				t.Errorf("redial authenticated as %q:%q", b.user, b.pass)
			}
			if got := n.accepts.Load(); got != 2 {
				t.Errorf("%d sessions accepted, want 2", got)
			}
		})
	}
}

func TestReadTimeoutRedials(t *testing.T) {
	t.Parallel()
	n := newFakeNode(t)
	r := start(t, n, func(c *device.Config) { c.ReadTimeout = 200 * time.Millisecond }, nil)
	n.accept(t)
	r.waitConnected(t)
	// The node stays silent (no frames, no pings): the SDK gives up on it
	// after ReadTimeout and dials again.
	n.accept(t)
	err := r.waitDisconnected(t)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("OnDisconnect(%v), want a read timeout", err)
	}
}

func TestUnauthorized(t *testing.T) {
	t.Parallel()
	n := newFakeNode(t)
	r := start(t, n, func(c *device.Config) { c.Secret = "wrong" }, nil)
	if err := r.waitEnded(t); !errors.Is(err, device.ErrUnauthorized) {
		t.Fatalf("Run = %v, want ErrUnauthorized", err)
	}
	// Run has returned, so these counts are final.
	if got := n.attempts.Load(); got != 1 {
		t.Errorf("%d upgrade attempts, want 1 (no redial after 401)", got)
	}
	if got := n.accepts.Load(); got != 0 {
		t.Errorf("%d sessions accepted with a wrong secret", got)
	}
	select {
	case <-r.connected:
		t.Error("OnConnect called although the credentials were refused")
	default:
	}
}

// 4008 says another session of this device is active: the SDK does not
// give up for good (the other may be its own ghost), it waits a long
// jittered delay, well past its reconnect backoff, and dials again.
func TestReplacedWaitsAndRetries(t *testing.T) {
	t.Parallel()
	n := newFakeNode(t)
	r := start(t, n, func(c *device.Config) { c.ReplacedDelay = time.Second }, nil) // backoff 10ms..100ms
	a := n.accept(t)
	r.waitConnected(t)
	closed := time.Now()
	writeClose(t, a.ws, protocol.CloseReplaced, "replaced by a newer session")
	if err := r.waitDisconnected(t); !errors.Is(err, device.ErrReplaced) {
		t.Errorf("OnDisconnect(%v), want ErrReplaced", err)
	}
	b := n.accept(t)
	if elapsed := b.at.Sub(closed); elapsed < 500*time.Millisecond {
		t.Errorf("redialed %v after 4008, want at least half of ReplacedDelay (1s)", elapsed)
	}
	r.waitConnected(t)
	select {
	case <-r.ended:
		t.Fatalf("Run returned %v after 4008, want it to keep the device connected", r.err)
	default:
	}
}

func TestRebalanceWaitsTheGivenDelay(t *testing.T) {
	t.Parallel()
	n := newFakeNode(t)
	r := start(t, n, nil, nil) // backoff 10ms..100ms: far below the asked delay
	a := n.accept(t)
	r.waitConnected(t)

	closed := time.Now()
	writeClose(t, a.ws, protocol.CloseRebalance, "1s")
	b := n.accept(t)
	elapsed := b.at.Sub(closed)
	if elapsed < 900*time.Millisecond {
		t.Errorf("redialed %v after close 1012 \"1s\", want about 1s", elapsed)
	}
	if elapsed > waitFor {
		t.Errorf("redialed %v after close 1012 \"1s\", want about 1s", elapsed)
	}
	err := r.waitDisconnected(t)
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != protocol.CloseRebalance {
		t.Errorf("OnDisconnect(%v), want close code 1012", err)
	}
}

// After 4029 (rate limited) the SDK waits at least twice MinBackoff, each
// time: more than its plain backoff would.
func TestRateLimitedBacksOff(t *testing.T) {
	t.Parallel()
	n := newFakeNode(t)
	const minBackoff = 200 * time.Millisecond
	// A plain backoff would wait at most MaxBackoff, under 2·MinBackoff.
	r := start(t, n, func(cfg *device.Config) { cfg.MinBackoff, cfg.MaxBackoff = minBackoff, 300*time.Millisecond }, nil)
	a := n.accept(t)
	r.waitConnected(t)
	for range 2 {
		closed := time.Now()
		writeClose(t, a.ws, protocol.CloseRateLimited, "rate limited")
		a = n.accept(t)
		if elapsed := a.at.Sub(closed); elapsed < 2*minBackoff {
			t.Fatalf("redialed %v after 4029, want at least %v", elapsed, 2*minBackoff)
		}
		r.waitConnected(t)
	}
}

func TestCancelClosesNormally(t *testing.T) {
	t.Parallel()
	n := newFakeNode(t)
	r := start(t, n, nil, nil)
	a := n.accept(t)
	r.waitConnected(t)

	r.cancel()
	if err := r.waitEnded(t); err != nil {
		t.Errorf("Run after cancel = %v, want nil", err)
	}
	if code := readClose(t, a.ws); code != websocket.CloseNormalClosure {
		t.Errorf("node saw close code %d, want %d", code, websocket.CloseNormalClosure)
	}
	if got := n.attempts.Load(); got != 1 {
		t.Errorf("%d upgrade attempts, want 1", got)
	}
}

func TestCancelWhileNodeKeepsSending(t *testing.T) {
	t.Parallel()
	n := newFakeNode(t)
	r := start(t, n, nil, nil) // ReadTimeout stays at its 60s default
	a := n.accept(t)
	r.waitConnected(t)

	// The node keeps the session busy, as a node with steady traffic does.
	stop := make(chan struct{})
	flooding := make(chan struct{})
	go func() {
		defer close(flooding)
		for {
			select {
			case <-stop:
				return
			default:
			}
			_ = a.ws.SetWriteDeadline(time.Now().Add(waitFor))
			if err := a.ws.WriteMessage(websocket.TextMessage, []byte(`{"type":"pong"}`)); err != nil {
				return
			}
		}
	}()
	defer func() {
		close(stop)
		<-flooding
		_ = a.ws.Close() // unblocks a Run that missed its cancellation
	}()

	r.cancel()
	select {
	case <-r.ended:
		if r.err != nil {
			t.Errorf("Run after cancel = %v, want nil", r.err)
		}
	case <-time.After(waitFor):
		t.Errorf("Run did not return within %v of cancel while the node kept sending frames", waitFor)
	}
}

// NetDialContext opens the socket (a load generator picks its source
// address with it); OnDialError hears of each failed attempt with the
// node's status, if it answered.
func TestDialHooks(t *testing.T) {
	t.Parallel()
	n := newFakeNode(t)
	var dials atomic.Int32
	dialErrs := make(chan error, 64)
	hooks := func(c *device.Config) {
		c.NetDialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		}
		c.OnDialError = func(err error) { dialErrs <- err }
	}
	r := start(t, n, hooks, nil)
	n.accept(t)
	r.waitConnected(t)
	if dials.Load() != 1 {
		t.Errorf("NetDialContext called %d times for one session, want 1", dials.Load())
	}

	refused := start(t, n, func(c *device.Config) { hooks(c); c.Secret = "wrong" }, nil)
	if err := refused.waitEnded(t); !errors.Is(err, device.ErrUnauthorized) {
		t.Fatalf("Run = %v, want ErrUnauthorized", err)
	}
	var dialErr *device.DialError
	if err := <-dialErrs; !errors.As(err, &dialErr) || dialErr.StatusCode != http.StatusUnauthorized || !errors.Is(err, device.ErrUnauthorized) {
		t.Fatalf("OnDialError(%v), want a *DialError with status 401 wrapping ErrUnauthorized", err)
	}

	// Nothing listens: no status, and the SDK keeps trying.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "wss://" + ln.Addr().String() + protocol.Path
	ln.Close()
	start(t, n, func(c *device.Config) { hooks(c); c.URL = url }, nil)
	for range 2 {
		select {
		case err := <-dialErrs:
			if !errors.As(err, &dialErr) || dialErr.StatusCode != 0 || dialErr.URL != url {
				t.Fatalf("OnDialError(%v), want a *DialError for %s without a status", err, url)
			}
		case <-time.After(waitFor):
			t.Fatal("OnDialError not called for a refused connection")
		}
	}
}

// A node that turns the device away with a Retry-After is not asked again
// sooner, though the device's own backoff would be much shorter.
func TestRetryAfter(t *testing.T) {
	t.Parallel()
	n := newFakeNode(t)
	n.busy.Store(2)
	dialErrs := make(chan error, 2)
	began := time.Now()
	start(t, n, func(c *device.Config) { c.OnDialError = func(err error) { dialErrs <- err } }, nil)
	n.accept(t)
	if waited := time.Since(began); waited < 2*time.Second {
		t.Fatalf("connected %v after two refusals with Retry-After: 1, want at least 2s", waited)
	}
	for range 2 {
		var dialErr *device.DialError
		if err := <-dialErrs; !errors.As(err, &dialErr) || dialErr.StatusCode != http.StatusServiceUnavailable || dialErr.RetryAfter != time.Second {
			t.Fatalf("OnDialError(%#v), want status 503 and RetryAfter 1s", err)
		}
	}
	if got := n.attempts.Load(); got != 3 {
		t.Fatalf("%d attempts, want 3", got)
	}
}

// The SDK passes newer desired documents to OnDesired, in order, and
// skips versions not newer than the last; Report writes a report frame.
func TestDesiredStateAndReport(t *testing.T) {
	t.Parallel()
	n := newFakeNode(t)
	type desired struct {
		doc     string
		version int64
	}
	got := make(chan desired, 16)
	r := start(t, n, nil, func(c *device.Client) {
		c.OnDesired(func(doc json.RawMessage, version int64) { got <- desired{string(doc), version} })
		c.Handle("ping", func(context.Context, json.RawMessage) (any, error) { return "pong", nil })
	})
	a := n.accept(t)
	r.waitConnected(t)
	writeText(t, a.ws, `{"type":"state","desired":{"target_celsius":20},"version":2}`)
	writeText(t, a.ws, `{"type":"state","desired":{"target_celsius":19},"version":1}`) // older: skipped
	writeText(t, a.ws, `{"type":"state","desired":{"target_celsius":20},"version":2}`) // the same: skipped
	writeText(t, a.ws, `{"type":"state","desired":{"target_celsius":21},"version":3}`)
	for _, want := range []desired{{`{"target_celsius":20}`, 2}, {`{"target_celsius":21}`, 3}} {
		select {
		case d := <-got:
			if d != want {
				t.Fatalf("OnDesired(%s, %d), want (%s, %d)", d.doc, d.version, want.doc, want.version)
			}
		case <-time.After(waitFor):
			t.Fatalf("OnDesired was not called with version %d", want.version)
		}
	}
	// Commands still work after state frames, and nothing more was passed.
	sendCommand(t, a.ws, "0b6e7c1a-4c2d-4f3e-9a1b-2c3d4e5f6a7b", "ping", `{}`)
	readReply(t, a.ws, "0b6e7c1a-4c2d-4f3e-9a1b-2c3d4e5f6a7b")
	select {
	case d := <-got:
		t.Fatalf("OnDesired called again with version %d", d.version)
	default:
	}

	if err := r.c.Report(map[string]any{"celsius": 20.5, "old": nil}); err != nil {
		t.Fatal(err)
	}
	raw, _ := readFrame(t, a.ws)
	want := map[string]any{"type": "report", "reported": map[string]any{"celsius": 20.5, "old": nil}}
	if !reflect.DeepEqual(raw, want) {
		t.Errorf("report frame %v, want %v", raw, want)
	}
	if err := r.c.Report([]int{1}); err == nil {
		t.Error("Report of an array: no error, want one (a report is an object)")
	}
}

// sendCommandBy sends a command whose deadline is in d by a clock ahead of
// the test's by ahead (the node's).
func sendCommandBy(t *testing.T, ws *websocket.Conn, id, name string, ahead, d time.Duration) {
	t.Helper()
	deadline := protocol.FormatDeadline(time.Now().Add(ahead + d))
	writeText(t, ws, `{"type":"command","id":"`+id+`","name":"`+name+`","args":{},"deadline":"`+deadline+`"}`)
}

// A command carries the time the node stops waiting for its reply: the
// handler's context ends then, and a command that came after it is
// answered without running the handler.
func TestCommandDeadline(t *testing.T) {
	t.Parallel()
	n := newFakeNode(t)
	type call struct {
		deadline    time.Time
		hasDeadline bool
	}
	calls := make(chan call, 8)
	slowEnded := make(chan struct{})
	r := start(t, n, nil, func(c *device.Client) {
		c.Handle("look", func(ctx context.Context, _ json.RawMessage) (any, error) {
			d, ok := ctx.Deadline()
			calls <- call{d, ok}
			return "looked", nil
		})
		c.Handle("slow", func(ctx context.Context, _ json.RawMessage) (any, error) {
			d, ok := ctx.Deadline()
			calls <- call{d, ok}
			<-ctx.Done() // gives up when nobody waits any more
			defer close(slowEnded)
			return nil, ctx.Err()
		})
	})
	a := n.accept(t)
	r.waitConnected(t)
	nextCall := func(t *testing.T) call {
		t.Helper()
		select {
		case c := <-calls:
			return c
		case <-time.After(waitFor):
			t.Fatal("the handler was not called")
			return call{}
		}
	}

	t.Run("passed before it came", func(t *testing.T) {
		id := uuid.NewString()
		sendCommandBy(t, a.ws, id, "look", 0, -time.Second)
		_, msg := readReply(t, a.ws, id)
		if *msg.OK || msg.Error != device.ErrDeadlinePassed {
			t.Fatalf("reply ok %v, error %q; want ok false, %q", *msg.OK, msg.Error, device.ErrDeadlinePassed)
		}
		// A redelivery gets the same answer, still without a run.
		sendCommandBy(t, a.ws, id, "look", 0, -time.Second)
		if _, again := readReply(t, a.ws, id); again.Error != device.ErrDeadlinePassed {
			t.Fatalf("redelivery answered %q", again.Error)
		}
		if len(calls) != 0 {
			t.Fatal("the handler ran for a command past its deadline")
		}
	})
	t.Run("the handler's context ends at the deadline", func(t *testing.T) {
		id := uuid.NewString()
		sent := time.Now()
		sendCommandBy(t, a.ws, id, "slow", 0, 300*time.Millisecond)
		c := nextCall(t)
		if !c.hasDeadline || c.deadline.Sub(sent.Add(300*time.Millisecond)).Abs() > 50*time.Millisecond {
			t.Fatalf("handler deadline %v (%v), want about %v", c.deadline, c.hasDeadline, sent.Add(300*time.Millisecond))
		}
		// It gives up unanswered: the node fails the command at its
		// deadline itself. The next frame is the reply to the next command.
		select {
		case <-slowEnded:
		case <-time.After(waitFor):
			t.Fatal("the handler did not return at its deadline")
		}
		next := uuid.NewString()
		sendCommand(t, a.ws, next, "look", `{}`)
		nextCall(t)
		readReply(t, a.ws, next)
	})
	t.Run("an older node sends no deadline", func(t *testing.T) {
		id := uuid.NewString()
		sendCommand(t, a.ws, id, "look", `{}`)
		if c := nextCall(t); c.hasDeadline {
			t.Fatalf("handler deadline %v without one in the frame", c.deadline)
		}
		if _, msg := readReply(t, a.ws, id); !*msg.OK {
			t.Fatalf("reply %q", msg.Error)
		}
	})
}

// A device whose clock is off reads deadlines by the node's clock, which
// the upgrade's Date header tells: it neither drops every command as late
// nor gives handlers hours.
func TestCommandDeadlineWithClockSkew(t *testing.T) {
	t.Parallel()
	for _, ahead := range []time.Duration{time.Hour, -time.Hour} {
		t.Run(fmt.Sprintf("node clock %v ahead", ahead), func(t *testing.T) {
			t.Parallel()
			n := newFakeNode(t)
			n.clockAhead.Store(int64(ahead))
			deadlines := make(chan time.Time, 1)
			r := start(t, n, nil, func(c *device.Client) {
				c.Handle("look", func(ctx context.Context, _ json.RawMessage) (any, error) {
					d, _ := ctx.Deadline()
					deadlines <- d
					return nil, nil
				})
			})
			a := n.accept(t)
			r.waitConnected(t)

			id := uuid.NewString()
			sent := time.Now()
			sendCommandBy(t, a.ws, id, "look", ahead, 5*time.Second)
			if _, msg := readReply(t, a.ws, id); !*msg.OK {
				t.Fatalf("reply %q, want ok", msg.Error)
			}
			// Date is whole seconds: the local deadline may be up to a
			// second (and the handshake's time) later, never earlier.
			d := <-deadlines
			if want := sent.Add(5 * time.Second); d.Before(want.Add(-100*time.Millisecond)) || d.After(want.Add(1500*time.Millisecond)) {
				t.Fatalf("handler deadline %v, want about %v by the device's clock", d, want)
			}
		})
	}
}

// An error frame (the node refused an event, or a type it does not know)
// is logged and given to OnError; the session goes on.
func TestErrorFrames(t *testing.T) {
	t.Parallel()
	n := newFakeNode(t)
	errs := make(chan *device.FrameError, 4)
	r := start(t, n, func(cfg *device.Config) {
		cfg.OnError = func(err *device.FrameError) { errs <- err }
	}, func(c *device.Client) {
		c.Handle("ping", func(context.Context, json.RawMessage) (any, error) { return "pong", nil })
	})
	a := n.accept(t)
	r.waitConnected(t)

	writeText(t, a.ws, `{"type":"error","error":"invalid-event-name","message":"event: name must match","name":"door open"}`)
	select {
	case err := <-errs:
		want := &device.FrameError{Code: protocol.ErrInvalidEventName, Message: "event: name must match", Name: "door open"}
		if !reflect.DeepEqual(err, want) {
			t.Fatalf("OnError got %+v, want %+v", err, want)
		}
		if !strings.Contains(err.Error(), "door open") {
			t.Errorf("error text %q does not name the event", err)
		}
	case <-time.After(waitFor):
		t.Fatal("OnError was not called")
	}
	// A frame of a newer protocol is ignored; the session answers on.
	writeText(t, a.ws, `{"type":"hello-from-v1.9","x":1}`)
	id := uuid.NewString()
	sendCommand(t, a.ws, id, "ping", `{}`)
	if _, msg := readReply(t, a.ws, id); !*msg.OK {
		t.Fatalf("reply %q", msg.Error)
	}
	if got := n.accepts.Load(); got != 1 {
		t.Fatalf("%d sessions, want the first one kept", got)
	}
}

// Event refuses, without sending it, an event the node would refuse, with
// the FrameError the node would answer.
func TestEventRefusedBeforeSending(t *testing.T) {
	t.Parallel()
	n := newFakeNode(t)
	r := start(t, n, nil, nil)
	a := n.accept(t)
	r.waitConnected(t)
	ctx := t.Context()

	var fe *device.FrameError
	if err := r.c.Event(ctx, "door open", 1); !errors.As(err, &fe) || fe.Code != protocol.ErrInvalidEventName || fe.Name != "door open" {
		t.Fatalf("Event with a bad name = %v, want an %s FrameError naming it", err, protocol.ErrInvalidEventName)
	}
	if err := r.c.Event(ctx, "telemetry", map[string]string{"s": "a\x00b"}); !errors.As(err, &fe) || fe.Code != protocol.ErrInvalidEventData || fe.Name != "telemetry" {
		t.Fatalf("Event with a NUL = %v, want an %s FrameError", err, protocol.ErrInvalidEventData)
	}
	if err := r.c.Event(ctx, "telemetry", 21); err != nil {
		t.Fatal(err)
	}
	// The first frame the node reads is the good event.
	if raw, _ := readFrame(t, a.ws); raw["name"] != "telemetry" || raw["data"] != float64(21) {
		t.Fatalf("node read %v, want only the good event", raw)
	}
}

// A pinned device connects to the node whose certificate has that SHA-256,
// whoever issued it, and to no other: a mismatch fails the TLS handshake,
// before any request carries the credentials.
func TestPin(t *testing.T) {
	t.Parallel()
	n := newFakeNode(t)
	sum := sha256.Sum256(n.srv.Certificate().Raw)
	hexed := make([]string, len(sum))
	for i, b := range sum {
		hexed[i] = fmt.Sprintf("%02X", b)
	}
	pin := strings.Join(hexed, ":") // as nodes log it

	for name, p := range map[string]string{"AB:CD form": pin, "lower case, no colons": strings.ToLower(strings.ReplaceAll(pin, ":", ""))} {
		t.Run(name, func(t *testing.T) {
			// No roots: only the pin makes the certificate acceptable.
			r := start(t, n, func(cfg *device.Config) { cfg.TLS, cfg.Pin = nil, p }, nil)
			n.accept(t)
			r.waitConnected(t)
			r.cancel()
			r.waitEnded(t)
		})
	}
	t.Run("another certificate", func(t *testing.T) {
		// httptest's servers share one certificate: pin another one's.
		other := newFakeNode(t)
		wrong := sha256.Sum256([]byte("another certificate"))
		dialErrs := make(chan error, 1)
		// The right roots, the wrong pin: the pin wins.
		r := start(t, other, func(cfg *device.Config) {
			cfg.Pin = fmt.Sprintf("%X", wrong)
			cfg.OnDialError = func(err error) {
				select {
				case dialErrs <- err:
				default:
				}
			}
		}, nil)
		select {
		case err := <-dialErrs:
			if !errors.Is(err, device.ErrPinMismatch) {
				t.Fatalf("dial error %v, want ErrPinMismatch", err)
			}
		case <-time.After(waitFor):
			t.Fatal("no dial error")
		}
		r.cancel()
		r.waitEnded(t)
		if got := other.attempts.Load(); got != 0 {
			t.Fatalf("%d upgrade requests reached the node, want none (the credentials were sent)", got)
		}
	})
	t.Run("a pin that does not parse", func(t *testing.T) {
		c := device.New(device.Config{URL: n.url, ID: testID, Secret: testSecret, Pin: "AB:CD"})
		if err := c.Run(t.Context()); err == nil || !strings.Contains(err.Error(), "SHA-256") {
			t.Fatalf("Run = %v, want the pin refused", err)
		}
	})
}
