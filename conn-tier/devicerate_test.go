package conntier_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/websocket"

	"github.com/switchboard-iot/switchboard/app/testsys"
	conntier "github.com/switchboard-iot/switchboard/conn-tier"
	"github.com/switchboard-iot/switchboard/db/dbtest"
	"github.com/switchboard-iot/switchboard/device"
	"github.com/switchboard-iot/switchboard/device/protocol"
)

// hangUp closes a session from the device's side and reads until the node
// ends it, whatever its close code (a device over its rate gets 4029).
func hangUp(t *testing.T, ws *websocket.Conn) {
	t.Helper()
	msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye")
	_ = ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(wait))
	_ = ws.SetReadDeadline(time.Now().Add(wait))
	for {
		if _, _, err := ws.ReadMessage(); err != nil {
			if isTimeout(err) {
				t.Fatal("the node did not end the session")
			}
			ws.Close()
			return
		}
	}
}

// The attack of issue 15: connect, send a burst of events, hang up, in a
// loop. The budget belongs to the device, not to the session: the second
// and third sessions find it spent.
func TestDeviceRateSurvivesReconnects(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	// 5 at once, then one every 1000s: nothing refills during the test.
	node := sys.StartNode(t, "node-a", func(c *conntier.Config) { c.DeviceRate, c.DeviceBurst = 0.001, 5 })
	devSecret := sys.AddDevice(t, "dev-1")
	for session := range 3 { // within the default connect burst
		ws := connect(t, node, "dev-1", devSecret)
		for i := range 5 {
			send(t, ws, fmt.Sprintf(`{"type":"event","name":"telemetry","data":{"session":%d,"n":%d}}`, session, i))
		}
		hangUp(t, ws)
	}
	// Stopping the node flushes what it queued.
	if err := node.Stop(); err != nil {
		t.Fatal(err)
	}
	if n := count(t, sys, `SELECT count(*) FROM events WHERE device_id = 'dev-1'`); n != 5 {
		t.Fatalf("%d events stored from 3 sessions of 5, want the 5 of the device's burst", n)
	}
	if n := count(t, sys, `SELECT count(*) FROM events WHERE device_id = 'dev-1' AND (data->>'session')::int > 0`); n != 0 {
		t.Fatalf("%d events of the later sessions stored, want none: the first spent the burst", n)
	}
}

// A device that reconnects faster than its connect rate gets 429 with
// Retry-After before anything is written for it, and connects again once
// it waited. Wrong secrets sent under its id do not spend its budget.
func TestReconnectsAreRateLimited(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	presenceWrites := sys.CountQueries("INSERT INTO presence")
	node := sys.StartNode(t, "node-a", nil) // the default: once a second, in bursts of 3
	devSecret := sys.AddDevice(t, "dev-1")

	// Someone who knows the id but not the secret cannot lock it out.
	attacker := websocket.Dialer{TLSClientConfig: node.TLS(), Subprotocols: []string{protocol.Subprotocol}, NetDialContext: dialFrom("127.0.0.7", "")}
	for i := range 10 {
		_, resp, err := attacker.DialContext(t.Context(), node.URL, basicAuth("dev-1", fmt.Sprint("guess-", i)))
		if err == nil || resp == nil || resp.StatusCode == http.StatusSwitchingProtocols {
			t.Fatalf("a wrong secret connected: %v", err)
		}
		resp.Body.Close()
	}

	began := time.Now()
	accepted := 0
	var refused *http.Response
	for refused == nil && accepted < 20 {
		ws, resp, err := dialRaw(t, node, basicAuth("dev-1", devSecret), protocol.Subprotocol)
		switch {
		case err == nil:
			accepted++
			waitOnline(t, sys, "dev-1", "node-a", uuid.Nil)
			hangUp(t, ws)
		case resp != nil && resp.StatusCode == http.StatusTooManyRequests:
			refused = resp
		default:
			t.Fatalf("connect %d: %v", accepted+1, err)
		}
	}
	if refused == nil {
		t.Fatalf("%d connects in %v were all accepted, want 429 past the connect rate", accepted, time.Since(began))
	}
	// Each second of the loop earned one more connect.
	if most := 3 + int(time.Since(began)/time.Second); accepted < 3 || accepted > most {
		t.Errorf("%d connects accepted before the 429, want 3 to %d", accepted, most)
	}
	readProblem(t, refused, http.StatusTooManyRequests, "too-many-connects")
	if n, err := strconv.Atoi(refused.Header.Get("Retry-After")); err != nil || n < 1 {
		t.Errorf("Retry-After %q, want whole seconds", refused.Header.Get("Retry-After"))
	}
	if n := node.Metric(t, `switchboard_conn_connects_total{node="node-a",result="throttled"}`); n != 1 {
		t.Errorf("%v throttled connects counted, want 1", n)
	}
	if n := presenceWrites.Count(); n != int64(accepted) {
		t.Errorf("%d presence writes for %d sessions and a refusal, want %d", n, accepted, accepted)
	}

	// Once it waited, it connects.
	testsys.EventuallyWithin(t, 5*time.Second, "a connect after Retry-After", func() bool {
		ws, _, err := dialRaw(t, node, basicAuth("dev-1", devSecret), protocol.Subprotocol)
		if err != nil {
			return false
		}
		closeNormally(t, ws)
		return true
	})
}

// The SDK waits out a 429's Retry-After rather than its own short backoff.
func TestSDKWaitsOutConnectRetryAfter(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	// One connect every 2s, none in reserve.
	node := sys.StartNode(t, "node-a", func(c *conntier.Config) { c.DeviceConnectRate, c.DeviceConnectBurst = 0.5, 1 })
	devSecret := sys.AddDevice(t, "dev-1")
	closeNormally(t, connect(t, node, "dev-1", devSecret)) // spends the budget

	var refusals atomic.Int32
	refusal := make(chan *device.DialError, 1)
	connected := make(chan time.Time, 1)
	d := device.New(device.Config{
		URL: node.URL, ID: "dev-1", Secret: devSecret, TLS: node.TLS(), Log: dbtest.Logger(),
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		OnDialError: func(err error) {
			var dialErr *device.DialError
			if refusals.Add(1) == 1 && errors.As(err, &dialErr) {
				refusal <- dialErr
			}
		},
		OnConnect: func() {
			select {
			case connected <- time.Now():
			default:
			}
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	began := time.Now()
	go func() { done <- d.Run(ctx) }()
	defer func() { cancel(); <-done }()

	var first *device.DialError
	select {
	case first = <-refusal:
	case at := <-connected:
		t.Fatalf("the SDK connected after %v, want a 429 first", at.Sub(began))
	case <-time.After(wait):
		t.Fatal("no refusal")
	}
	if first.StatusCode != http.StatusTooManyRequests || first.RetryAfter < time.Second {
		t.Fatalf("refused with %d, Retry-After %v; want 429 and at least 1s", first.StatusCode, first.RetryAfter)
	}
	select {
	case at := <-connected:
		if waited := at.Sub(began); waited < first.RetryAfter {
			t.Errorf("connected %v after the refusal, want at least its Retry-After %v", waited, first.RetryAfter)
		}
	case <-time.After(wait):
		t.Fatal("the SDK did not connect after the Retry-After")
	}
	if n := refusals.Load(); n != 1 {
		t.Errorf("%d refused attempts, want 1: the SDK waited out the first", n)
	}
}

// A ping flood is a flood like any other: past the rate it closes with
// 4029, not with 1013 for a full send queue.
func TestPingFloodIsRateLimited(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", nil) // the default rate: 10/s, bursts of 100
	ws := connect(t, node, "dev-1", sys.AddDevice(t, "dev-1"))
	waitOnline(t, sys, "dev-1", "node-a", uuid.Nil)
	// Pings as fast as the socket takes them, not reading the pongs, until
	// the node closes the session (a write then fails).
	ping := []byte(`{"type":"ping"}`)
	_ = ws.SetWriteDeadline(time.Now().Add(wait))
	for range 2000 {
		if ws.WriteMessage(websocket.TextMessage, ping) != nil {
			break
		}
	}
	var ce *websocket.CloseError
	_ = ws.SetReadDeadline(time.Now().Add(wait))
	for {
		_, _, err := ws.ReadMessage()
		if err == nil {
			continue // a pong
		}
		if !errors.As(err, &ce) {
			t.Fatalf("the session ended with %v, want a close frame", err)
		}
		break
	}
	if ce.Code != protocol.CloseRateLimited {
		t.Fatalf("close %d %q, want %d (rate limited)", ce.Code, ce.Text, protocol.CloseRateLimited)
	}
	if n := node.Metric(t, `switchboard_conn_closes_total{node="node-a",reason="slow"}`); n != 0 {
		t.Errorf("%v slow closes counted, want 0", n)
	}
	if n := overRate(t, node, "ping"); n < 100 {
		t.Errorf("%v pings counted over the rate, want at least another burst (100)", n)
	}
}
