package conntier_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/websocket"
	"github.com/pires/go-proxyproto"

	"github.com/switchboard-iot/switchboard/app/testsys"
	conntier "github.com/switchboard-iot/switchboard/conn-tier"
	"github.com/switchboard-iot/switchboard/device/protocol"
	"github.com/switchboard-iot/switchboard/internal/authguard"
	"github.com/switchboard-iot/switchboard/internal/clientaddr"
)

// dialFrom dials from a loopback address of its own (127.0.0.x), first
// sending a PROXY v2 header naming client when it is set.
func dialFrom(localIP, client string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(localIP)}}
		conn, err := d.DialContext(ctx, network, addr)
		if err != nil || client == "" {
			return conn, err
		}
		h := proxyproto.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.ParseIP(client), Port: 40000}, conn.RemoteAddr())
		if _, err := h.WriteTo(conn); err != nil {
			conn.Close()
			return nil, err
		}
		return conn, nil
	}
}

// connectClient is an HTTPS client of the node from localIP (as client,
// through a PROXY header, when client is set).
func connectClient(t *testing.T, node *testsys.Node, localIP, client string) *http.Client {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: node.TLS(), DialContext: dialFrom(localIP, client)}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: wait}
}

// tryConnect asks the node to authenticate id:devSecret (no upgrade: the
// answer to credentials comes first) and returns the status, or 0 when the
// request failed.
func tryConnect(t *testing.T, node *testsys.Node, hc *http.Client, id, devSecret string) (int, *http.Response) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, node.Base+protocol.Path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.SetBasicAuth(id, devSecret)
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp.StatusCode, resp
}

func overRate(t *testing.T, node *testsys.Node, msgType string) float64 {
	t.Helper()
	return node.Metric(t, `switchboard_conn_messages_over_rate_total{node="`+node.ID+`",type="`+msgType+`"}`)
}

// A device flooding events has the excess dropped and counted, and is
// closed with 4029 once the excess makes another burst.
func TestDeviceFloodIsClosed(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	// 5 at once, then one every 1000s: nothing refills during the test.
	node := sys.StartNode(t, "node-a", func(c *conntier.Config) { c.DeviceRate, c.DeviceBurst = 0.001, 5 })
	ws := connect(t, node, "dev-1", sys.AddDevice(t, "dev-1"))
	waitOnline(t, sys, "dev-1", "node-a", uuid.Nil)

	for i := range 10 {
		send(t, ws, fmt.Sprintf(`{"type":"event","name":"telemetry","data":{"n":%d}}`, i))
	}
	if ce := expectClose(t, ws, protocol.CloseRateLimited); ce.Text != "rate limited" {
		t.Errorf("close reason %q, want \"rate limited\"", ce.Text)
	}
	if n := overRate(t, node, "event"); n != 5 {
		t.Errorf("%v events counted over the rate, want 5", n)
	}
	if n := node.Metric(t, `switchboard_conn_closes_total{node="node-a",reason="rate_limited"}`); n != 1 {
		t.Errorf("%v rate_limited closes counted, want 1", n)
	}
	// Stopping the node flushes what it queued: the five within the rate.
	if err := node.Stop(); err != nil {
		t.Fatal(err)
	}
	if n := count(t, sys, `SELECT count(*) FROM events WHERE device_id = 'dev-1'`); n != 5 {
		t.Fatalf("%d events stored, want the 5 within the rate", n)
	}
	if n := count(t, sys, `SELECT count(*) FROM events WHERE device_id = 'dev-1' AND (data->>'n')::int >= 5`); n != 0 {
		t.Fatalf("%d events over the rate stored", n)
	}
}

// Replies are never dropped: one to a command the session awaits is free
// and stored even while the device is over its rate; one to anything else
// counts against the rate, and is stored too.
func TestRepliesOverTheRate(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", func(c *conntier.Config) { c.DeviceRate, c.DeviceBurst = 0.001, 3 })
	ws := connect(t, node, "dev-1", sys.AddDevice(t, "dev-1"))
	waitOnline(t, sys, "dev-1", "node-a", uuid.Nil)

	for range 4 { // three within the burst, one over: the device is in debt
		send(t, ws, `{"type":"event","name":"telemetry","data":{}}`)
	}
	cmd := newCommand(t, sys, "dev-1", "read", `{}`)
	wake(t, sys, "dev-1")
	if m := readMessage(t, ws); m.Type != protocol.TypeCommand || m.ID != cmd.ID.String() {
		t.Fatalf("got %+v, want command %s", m, cmd.ID)
	}
	send(t, ws, `{"type":"reply","id":"`+cmd.ID.String()+`","ok":true,"result":{"c":20}}`)
	waitStatus(t, sys, cmd.ID, "done")
	if n := overRate(t, node, "reply"); n != 0 {
		t.Fatalf("%v replies counted over the rate, want 0: the reply was awaited", n)
	}
	// A reply to nothing this session awaits counts; the next message
	// makes another burst of excess: 4029.
	send(t, ws, `{"type":"reply","id":"`+uuid.NewString()+`","ok":true}`)
	send(t, ws, `{"type":"event","name":"telemetry","data":{}}`)
	expectClose(t, ws, protocol.CloseRateLimited)
	if r, e := overRate(t, node, "reply"), overRate(t, node, "event"); r != 1 || e != 2 {
		t.Fatalf("over the rate: %v replies and %v events, want 1 and 2", r, e)
	}
}

// A thousand wrong secrets cost a handful of look-ups; then the address
// gets 429 before any. Credentials that failed are refused again without
// one. A valid device elsewhere still connects.
func TestAuthFailuresAreThrottled(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	lookups := sys.CountQueries("FROM devices WHERE id")
	const burst = 5
	node := sys.StartNode(t, "node-a", func(c *conntier.Config) {
		c.AuthGuard = authguard.Config{FailureRate: 0.001, FailureBurst: burst}
	})
	devSecret := sys.AddDevice(t, "dev-1")

	// The same wrong secret, and an unknown device with any secret: one
	// look-up each, then refused from memory (and not charged: no 429).
	same := connectClient(t, node, "127.0.0.3", "")
	for i := range 100 {
		if got, _ := tryConnect(t, node, same, "dev-1", "wrong"); got != http.StatusUnauthorized {
			t.Fatalf("wrong secret, attempt %d: %d, want 401", i+1, got)
		}
		if got, _ := tryConnect(t, node, same, "ghost", strconv.Itoa(i)); got != http.StatusUnauthorized {
			t.Fatalf("unknown device, attempt %d: %d, want 401", i+1, got)
		}
	}
	if n := lookups.Count(); n != 2 {
		t.Fatalf("%d look-ups for 200 attempts with two failed credentials, want 2", n)
	}

	// A thousand different wrong secrets from one address.
	stuffer := connectClient(t, node, "127.0.0.1", "")
	throttled := 0
	for i := range 1000 {
		got, resp := tryConnect(t, node, stuffer, "dev-1", fmt.Sprintf("guess-%d", i))
		switch got {
		case http.StatusUnauthorized:
			if throttled > 0 {
				t.Fatalf("attempt %d got 401 after %d got 429", i+1, throttled)
			}
		case http.StatusTooManyRequests:
			throttled++
			readProblem(t, resp, http.StatusTooManyRequests, "too-many-auth-failures")
			if n, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || n < 1 {
				t.Fatalf("Retry-After %q, want whole seconds", resp.Header.Get("Retry-After"))
			}
		default:
			t.Fatalf("attempt %d: status %d", i+1, got)
		}
	}
	if n := lookups.Count() - 2; n > burst {
		t.Fatalf("%d look-ups for 1000 wrong secrets, want at most %d", n, burst)
	}
	if throttled != 1000-burst {
		t.Fatalf("%d attempts got 429, want %d", throttled, 1000-burst)
	}
	if n := node.Metric(t, `switchboard_conn_connects_total{node="node-a",result="throttled"}`); n != float64(throttled) {
		t.Errorf("%v throttled connects counted, want %d", n, throttled)
	}

	// The right secret from that address waits too; from another it
	// connects.
	if got, _ := tryConnect(t, node, stuffer, "dev-1", devSecret); got != http.StatusTooManyRequests {
		t.Fatalf("the right secret from the throttled address: %d, want 429", got)
	}
	d := websocket.Dialer{TLSClientConfig: node.TLS(), Subprotocols: []string{protocol.Subprotocol}, NetDialContext: dialFrom("127.0.0.2", "")}
	ws, _, err := d.DialContext(t.Context(), node.URL, basicAuth("dev-1", devSecret))
	if err != nil {
		t.Fatalf("a valid device from another address: %v", err)
	}
	closeNormally(t, ws)
}

// Behind a trusted proxy the PROXY protocol header names the client; from
// anyone else it is not believed.
func TestProxyProtocol(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	trusted, err := clientaddr.ParseTrusted("127.0.0.5/32")
	if err != nil {
		t.Fatal(err)
	}
	node := sys.StartNode(t, "node-a", func(c *conntier.Config) {
		c.AuthGuard = authguard.Config{FailureRate: 0.001, FailureBurst: 2}
		c.TrustedProxies = trusted
	})
	devSecret := sys.AddDevice(t, "dev-1")

	first := connectClient(t, node, "127.0.0.5", "198.51.100.7")
	for i := range 2 {
		if got, _ := tryConnect(t, node, first, "dev-1", fmt.Sprint("guess-", i)); got != http.StatusUnauthorized {
			t.Fatalf("attempt %d through the proxy: %d, want 401", i+1, got)
		}
	}
	if got, _ := tryConnect(t, node, first, "dev-1", "guess-2"); got != http.StatusTooManyRequests {
		t.Fatalf("a 3rd failure through the proxy: %d, want 429", got)
	}
	other := connectClient(t, node, "127.0.0.5", "198.51.100.8")
	if got, _ := tryConnect(t, node, other, "dev-1", "guess-3"); got != http.StatusUnauthorized {
		t.Fatalf("another client through the proxy: %d, want 401", got)
	}

	// A device through the proxy is present under the address it named.
	d := websocket.Dialer{TLSClientConfig: node.TLS(), Subprotocols: []string{protocol.Subprotocol}, NetDialContext: dialFrom("127.0.0.5", "198.51.100.9")}
	ws, _, err := d.DialContext(t.Context(), node.URL, basicAuth("dev-1", devSecret))
	if err != nil {
		t.Fatalf("a device through the proxy: %v", err)
	}
	waitOnline(t, sys, "dev-1", "node-a", uuid.Nil)
	var remote string
	if err := sys.Pool.QueryRow(t.Context(), `SELECT remote_addr FROM presence WHERE device_id = 'dev-1'`).Scan(&remote); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(remote, "198.51.100.9:") {
		t.Errorf("presence remote_addr %q, want the client the proxy named", remote)
	}
	closeNormally(t, ws)

	// The trusted proxy without a header is served as itself (a platform
	// health check); others may not send one.
	if got, _ := tryConnect(t, node, connectClient(t, node, "127.0.0.5", ""), "dev-1", "guess-5"); got != http.StatusUnauthorized {
		t.Errorf("the proxy without a header got %d, want 401 (served as itself)", got)
	}
	if got, _ := tryConnect(t, node, connectClient(t, node, "127.0.0.1", "198.51.100.10"), "dev-1", devSecret); got != 0 {
		t.Errorf("an untrusted peer with a header got %d, want the connection refused", got)
	}
	if got, _ := tryConnect(t, node, connectClient(t, node, "127.0.0.1", ""), "dev-1", "guess-4"); got != http.StatusUnauthorized {
		t.Errorf("an untrusted peer without a header got %d, want 401", got)
	}
}

// The server's HTTP deadlines do not reach an upgraded session: gorilla
// clears them as it takes the connection over, and the session keeps its
// own per frame.
func TestSessionsOutliveHTTPTimeouts(t *testing.T) {
	t.Parallel()
	const httpTimeout = time.Second
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", func(c *conntier.Config) {
		c.HTTPTimeout = httpTimeout
		c.PingInterval, c.ReadTimeout = 100*time.Millisecond, 5*time.Second
	})
	ws := connect(t, node, "dev-1", sys.AddDevice(t, "dev-1"))
	// The node's pings are the clock: 30 of them take at least 2.9s, well
	// past the read and write timeouts of 1s.
	const wantPings = 30
	enough := make(chan struct{})
	pings := 0
	ws.SetPingHandler(func(data string) error {
		if pings++; pings == wantPings {
			close(enough)
		}
		err := ws.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(wait))
		if errors.Is(err, websocket.ErrCloseSent) {
			return nil
		}
		return err
	})
	frames := make(chan protocol.Message, 1)
	readErr := make(chan error, 1)
	go func() {
		for {
			_ = ws.SetReadDeadline(time.Now().Add(wait))
			var m protocol.Message
			if err := ws.ReadJSON(&m); err != nil {
				readErr <- err
				return
			}
			frames <- m
		}
	}()
	select {
	case <-enough:
	case err := <-readErr:
		t.Fatalf("the session ended after %d pings: %v", pings, err)
	}
	send(t, ws, `{"type":"ping"}`)
	select {
	case m := <-frames:
		if m.Type != protocol.TypePong {
			t.Fatalf("got %+v, want a pong", m)
		}
	case err := <-readErr:
		t.Fatalf("the session ended: %v", err)
	}
	msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye")
	if err := ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(wait)); err != nil {
		t.Fatal(err)
	}
	if err := <-readErr; !websocket.IsCloseError(err, websocket.CloseNormalClosure) {
		t.Fatalf("reader ended with %v, want the echoed 1000", err)
	}
}
