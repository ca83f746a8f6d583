package conformance

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/gorilla/websocket"

	"github.com/switchboard-iot/switchboard/device/protocol"
	"github.com/switchboard-iot/switchboard/internal/backoff"
)

// connectLimit is how long a device may take to come online the first
// time: its runtime starting (node, python) on a busy machine. Not a
// measure of the device: only of the machine.
const connectLimit = 30 * time.Second

// scenarios, in the order they run. Their names are stable: scripts and
// "-run" select them, and the JSON report carries them.
var scenarios = []scenario{
	{"command", "answers commands (echo, fail)", time.Minute, scenarioCommand},
	{"event", "sends events (emit)", time.Minute, scenarioEvent},
	{"state", "applies desired state on connect and on change, and reports it", time.Minute, scenarioState},
	{"redelivery", "a command redelivered after a dropped session runs once", time.Minute, scenarioRedelivery},
	{"reconnect-jitter", "reconnects after its node dies, with jitter", 2 * time.Minute, scenarioJitter},
	{"rebalance-1012", "waits the delay a 1012 gives", time.Minute, scenarioRebalance},
	{"replaced-4008", "waits long after 4008", time.Minute, scenarioReplaced},
	{"disabled-1008", "stops, exit status 3, once disabled (1008)", time.Minute, scenarioDisabled},
	{"rate-limited-4029", "backs off after 4029", 90 * time.Second, scenarioRateLimited},
	{"silent-node", "gives up a silent node within its read timeout", time.Minute, scenarioSilent},
	{"pin", "refuses a certificate that does not match its pin, before sending credentials", time.Minute, scenarioPin},
	{"shutdown", "exits 0 within 5 s of SIGTERM", time.Minute, scenarioShutdown},
}

func jsonEqual(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	ra, _ := json.Marshal(x)
	rb, _ := json.Marshal(y)
	return bytes.Equal(ra, rb)
}

func scenarioCommand(ctx context.Context, sc *scenarioRun) (string, error) {
	d, err := sc.startDevice(ctx, nodeA, fast)
	if err != nil {
		return "", err
	}
	if err := sc.waitOnline(ctx, d, "", connectLimit); err != nil {
		return "", err
	}
	args := map[string]any{"text": "hello", "n": []any{1, 2.5, "three"}, "nested": map[string]any{"ok": true}}
	c, err := sc.sys.api.send(ctx, d.id, "echo", args, "20s")
	if err != nil {
		return "", err
	}
	want, _ := json.Marshal(map[string]any{"echo": args})
	if c.Status != "done" || c.OK == nil || !*c.OK || !jsonEqual(c.Result, want) {
		return "", fmt.Errorf("echo: status %q, ok %v, result %s, error %q; want done, ok true, result %s", c.Status, deref(c.OK), c.Result, c.Error, want)
	}
	c, err = sc.sys.api.send(ctx, d.id, "fail", map[string]any{}, "20s")
	if err != nil {
		return "", err
	}
	if c.Status != "failed" || c.OK == nil || *c.OK || c.Error != "asked to fail" {
		return "", fmt.Errorf("fail: status %q, ok %v, error %q; want failed, ok false, error \"asked to fail\"", c.Status, deref(c.OK), c.Error)
	}
	return "echo answered with its args; fail answered ok:false, \"asked to fail\"", nil
}

func deref(b *bool) any {
	if b == nil {
		return nil
	}
	return *b
}

func scenarioEvent(ctx context.Context, sc *scenarioRun) (string, error) {
	d, err := sc.startDevice(ctx, nodeA, fast)
	if err != nil {
		return "", err
	}
	if err := sc.waitOnline(ctx, d, "", connectLimit); err != nil {
		return "", err
	}
	data := map[string]any{"celsius": 21.5, "tags": []any{"a", "b"}}
	c, err := sc.sys.api.send(ctx, d.id, "emit", map[string]any{"name": "conformance.reading", "data": data}, "20s")
	if err != nil {
		return "", err
	}
	if c.Status != "done" {
		return "", fmt.Errorf("emit: status %q, error %q; want done", c.Status, c.Error)
	}
	want, _ := json.Marshal(data)
	var got []eventJSON
	err = poll(ctx, 10*time.Second, func() (bool, error) {
		got, err = sc.sys.api.events(ctx, d.id, "conformance.reading")
		return len(got) > 0, err
	})
	if err != nil {
		return "", fmt.Errorf("no event conformance.reading stored: %w", err)
	}
	if len(got) != 1 || !jsonEqual(got[0].Data, want) {
		return "", fmt.Errorf("events conformance.reading: %d, the first with data %s; want one with %s", len(got), got[0].Data, want)
	}
	return "the event arrived with its data", nil
}

func scenarioState(ctx context.Context, sc *scenarioRun) (string, error) {
	d, err := sc.provision(ctx, nodeA)
	if err != nil {
		return "", err
	}
	// Desired changes while the device is offline: it must apply the
	// document it is sent on connect.
	if _, err := sc.sys.api.patchDesired(ctx, d.id, map[string]any{"mode": "eco", "target": map[string]any{"celsius": 19.5}}); err != nil {
		return "", err
	}
	if _, err := sc.sys.api.patchDesired(ctx, d.id, map[string]any{"fan": 2, "schedule": []any{"06:00", "22:00"}}); err != nil {
		return "", err
	}
	if err := sc.launch(d, fast); err != nil {
		return "", err
	}
	if err := sc.waitOnline(ctx, d, "", connectLimit); err != nil {
		return "", err
	}
	if err := sc.waitReported(ctx, d); err != nil {
		return "", fmt.Errorf("on connect: %w", err)
	}
	// And a change while it is online.
	if _, err := sc.sys.api.patchDesired(ctx, d.id, map[string]any{"mode": "comfort", "fan": nil}); err != nil {
		return "", err
	}
	if err := sc.waitReported(ctx, d); err != nil {
		return "", fmt.Errorf("after a change online: %w", err)
	}
	return "reported matched desired after connect and after a change", nil
}

// waitReported waits until the device's reported document holds every key
// of its desired one with the same value.
func (sc *scenarioRun) waitReported(ctx context.Context, d *device) error {
	var st stateJSON
	err := poll(ctx, 10*time.Second, func() (bool, error) {
		var err error
		st, err = sc.sys.api.state(ctx, d.id)
		if err != nil || len(st.Delta) > 0 {
			return false, err
		}
		for k, v := range st.Desired {
			if !jsonEqual(st.Reported[k], v) {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		desired, _ := json.Marshal(st.Desired)
		reported, _ := json.Marshal(st.Reported)
		return fmt.Errorf("reported %s does not match desired %s (version %d): %w", reported, desired, st.DesiredVersion, err)
	}
	return nil
}

func scenarioRedelivery(ctx context.Context, sc *scenarioRun) (string, error) {
	d, err := sc.startDevice(ctx, nodeA, fast)
	if err != nil {
		return "", err
	}
	if err := sc.waitOnline(ctx, d, "", connectLimit); err != nil {
		return "", err
	}
	const work = 4 * time.Second
	c, err := sc.sys.api.send(ctx, d.id, "work", map[string]any{"ms": work.Milliseconds()}, "")
	if err != nil {
		return "", err
	}
	err = poll(ctx, 10*time.Second, func() (bool, error) {
		c, err = sc.sys.api.command(ctx, c.ID)
		return c.Status != "pending", err
	})
	if err != nil || c.Status != "delivered" {
		return "", fmt.Errorf("work: status %q, want delivered (%v)", c.Status, err)
	}
	// Half a second into the work, its session drops: the node gives the
	// command back and delivers it again on the next session, while the
	// first run still works.
	if !backoff.Sleep(ctx, 500*time.Millisecond) {
		return "", ctx.Err()
	}
	d.front.cut()
	err = poll(ctx, 20*time.Second, func() (bool, error) {
		c, err = sc.sys.api.command(ctx, c.ID)
		return c.Status == "done" || c.Status == "failed", err
	})
	if err != nil {
		return "", fmt.Errorf("work was not answered: status %q: %w", c.Status, err)
	}
	if c.Status != "done" || !jsonEqual(c.Result, []byte(`{"done":true}`)) {
		return "", fmt.Errorf("work: status %q, result %s, error %q; want done, {\"done\":true}", c.Status, c.Result, c.Error)
	}
	if c.Attempts < 2 {
		return "", fmt.Errorf("work was delivered %d time(s): the session did not drop in time to test a redelivery", c.Attempts)
	}
	// The effect events: one, however long the second one would take.
	var effects int
	countEffects := func() (int, error) {
		events, err := sc.sys.api.events(ctx, d.id, "effect")
		n := 0
		for _, e := range events {
			var data struct {
				Command string `json:"command"`
			}
			if json.Unmarshal(e.Data, &data) == nil && data.Command == c.ID {
				n++
			}
		}
		return n, err
	}
	err = poll(ctx, 10*time.Second, func() (bool, error) {
		effects, err = countEffects()
		return effects > 0, err
	})
	if err != nil {
		return "", fmt.Errorf("no effect event for the command: %w", err)
	}
	// A second run would have sent its effect before its reply; events are
	// stored in batches: give them a second to land.
	if !backoff.Sleep(ctx, time.Second) {
		return "", ctx.Err()
	}
	if effects, err = countEffects(); err != nil {
		return "", err
	}
	if effects != 1 {
		return "", fmt.Errorf("the command (delivered %d times) ran %d times: %d effect events; want 1", c.Attempts, effects, effects)
	}
	return fmt.Sprintf("delivered %d times, ran once (1 effect event), done", c.Attempts), nil
}

func scenarioJitter(ctx context.Context, sc *scenarioRun) (string, error) {
	n := sc.cfg.JitterDevices
	// The first reconnect waits up to the minimum backoff: large enough
	// here that jitter shows over the noise of twenty processes waking on
	// a busy machine.
	set := settings{minBackoff: 4 * time.Second, maxBackoff: 8 * time.Second}
	devices := make([]*device, n)
	for i := range devices {
		var err error
		if devices[i], err = sc.startDevice(ctx, nodeA, set); err != nil {
			return "", err
		}
	}
	for _, d := range devices {
		if err := sc.waitOnline(ctx, d, nodeA, connectLimit+time.Duration(n)*time.Second); err != nil {
			return "", err
		}
	}
	// node-a dies, as the devices see it: every connection to it cut at
	// once, without a close frame, and new ones sent to node-b.
	killed := time.Now()
	for _, d := range devices {
		d.front.route(sc.sys.nodeAddrs[nodeB])
		d.front.cut()
	}
	limit := set.maxBackoff + 4*time.Second
	delays := make([]time.Duration, n)
	err := poll(ctx, limit, func() (bool, error) {
		for i, d := range devices {
			if delays[i] == 0 {
				if a := d.front.acceptsAfter(killed); len(a) > 0 {
					delays[i] = a[0].Sub(killed)
				}
			}
		}
		return !slices.Contains(delays, 0), nil
	})
	if err != nil {
		missing := 0
		for _, dl := range delays {
			if dl == 0 {
				missing++
			}
		}
		return "", fmt.Errorf("%d of %d devices did not try to reconnect: %w", missing, n, err)
	}
	for _, d := range devices {
		if err := sc.waitOnline(ctx, d, nodeB, limit); err != nil {
			return "", err
		}
	}
	slices.Sort(delays)
	// The spread of the middle of the reconnects (a straggler or two
	// aside): full jitter spreads them over the whole first backoff.
	lo, hi := delays[n/10], delays[n-1-n/10]
	spread := hi - lo
	want := set.minBackoff / 5
	detail := fmt.Sprintf("%d devices reconnected %v to %v after their node died; the middle %d within %v of each other",
		n, delays[0].Round(time.Millisecond), delays[n-1].Round(time.Millisecond), n-2*(n/10), spread.Round(time.Millisecond))
	if spread < want {
		return "", fmt.Errorf("%s: want a spread of at least %v (a fifth of SWITCHBOARD_MIN_BACKOFF_MS=%d): no jitter", detail, want, set.minBackoff.Milliseconds())
	}
	return detail, nil
}

func scenarioRebalance(ctx context.Context, sc *scenarioRun) (string, error) {
	d, err := sc.startDevice(ctx, nodeA, fast)
	if err != nil {
		return "", err
	}
	if err := sc.waitOnline(ctx, d, nodeA, connectLimit); err != nil {
		return "", err
	}
	const delay = 3 * time.Second
	var moved time.Time
	err = poll(ctx, 5*time.Second, func() (bool, error) {
		moved = time.Now()
		return sc.sys.nodes[nodeA].MoveDevice(d.id, delay), nil
	})
	if err != nil {
		return "", fmt.Errorf("the device has no session on %s to close: %w", nodeA, err)
	}
	back, err := sc.nextConnect(ctx, d, moved, delay+fast.maxBackoff+6*time.Second)
	if err != nil {
		return "", fmt.Errorf("after 1012 \"rebalance: reconnect in %v\": %w", delay, err)
	}
	detail := fmt.Sprintf("closed with 1012 \"rebalance: reconnect in %v\"; reconnected after %v", delay, back.Round(time.Millisecond))
	if back < delay-100*time.Millisecond {
		return "", fmt.Errorf("%s: too soon, want %v or more", detail, delay)
	}
	return detail, nil
}

// nextConnect waits for the device's first connection after t and returns
// how long after t it came.
func (sc *scenarioRun) nextConnect(ctx context.Context, d *device, t time.Time, limit time.Duration) (time.Duration, error) {
	var at time.Time
	err := poll(ctx, limit, func() (bool, error) {
		if a := d.front.acceptsAfter(t); len(a) > 0 {
			at = a[0]
			return true, nil
		}
		if !d.running() {
			return false, fmt.Errorf("%w with status %d", errExited, d.exitCode)
		}
		return false, nil
	})
	if err != nil {
		return 0, fmt.Errorf("no reconnect: %w", err)
	}
	return at.Sub(t), nil
}

// dial opens a session as the device, straight to node (not through the
// device's front).
func (sc *scenarioRun) dial(ctx context.Context, node string, d *device) (*websocket.Conn, error) {
	dialer := websocket.Dialer{TLSClientConfig: sc.sys.nodeTLS, Subprotocols: []string{protocol.Subprotocol}, HandshakeTimeout: 10 * time.Second}
	header := map[string][]string{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(d.id+":"+d.secret))}}
	ws, resp, err := dialer.DialContext(ctx, "wss://"+sc.sys.nodeAddrs[node]+protocol.Path, header)
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	return ws, err
}

func scenarioReplaced(ctx context.Context, sc *scenarioRun) (string, error) {
	set := fast
	set.replacedDelay = 4 * time.Second
	d, err := sc.startDevice(ctx, nodeA, set)
	if err != nil {
		return "", err
	}
	if err := sc.waitOnline(ctx, d, nodeA, connectLimit); err != nil {
		return "", err
	}
	// Another session of the same device, the suite's, replaces the
	// device's (4008), then leaves at once.
	replaced := time.Now()
	ws, err := sc.dial(ctx, nodeB, d)
	if err != nil {
		return "", fmt.Errorf("connecting a second session: %w", err)
	}
	_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	ws.Close()
	back, err := sc.nextConnect(ctx, d, replaced, set.replacedDelay+8*time.Second)
	if err != nil {
		return "", fmt.Errorf("after 4008: %w", err)
	}
	detail := fmt.Sprintf("replaced (4008) with SWITCHBOARD_REPLACED_DELAY_MS=%d; reconnected after %v", set.replacedDelay.Milliseconds(), back.Round(time.Millisecond))
	if back < set.replacedDelay/2-100*time.Millisecond {
		return "", fmt.Errorf("%s: too soon, want %v or more", detail, set.replacedDelay/2)
	}
	return detail, nil
}

func scenarioDisabled(ctx context.Context, sc *scenarioRun) (string, error) {
	d, err := sc.startDevice(ctx, nodeA, fast)
	if err != nil {
		return "", err
	}
	if err := sc.waitOnline(ctx, d, nodeA, connectLimit); err != nil {
		return "", err
	}
	disabled := time.Now()
	if err := sc.sys.api.disable(ctx, d.id); err != nil {
		return "", err
	}
	code, err := d.waitExit(ctx, 10*time.Second)
	if err != nil {
		return "", fmt.Errorf("after 1008 \"device disabled\": %w", err)
	}
	took := time.Since(disabled).Round(time.Millisecond)
	tries := len(d.front.acceptsAfter(disabled))
	detail := fmt.Sprintf("exited with status %d %v after 1008 \"device disabled\", after %d more connect(s)", code, took, tries)
	if code != 3 {
		return "", fmt.Errorf("%s: want status 3", detail)
	}
	return detail, nil
}

func scenarioRateLimited(ctx context.Context, sc *scenarioRun) (string, error) {
	// Several devices: a wait after 4029 is random (full jitter), so the
	// suite judges their mean.
	const n = 8
	set := settings{minBackoff: 2 * time.Second, maxBackoff: 8 * time.Second}
	devices := make([]*device, n)
	for i := range devices {
		var err error
		if devices[i], err = sc.startDevice(ctx, nodeStrict, set); err != nil {
			return "", err
		}
	}
	for _, d := range devices {
		if err := sc.waitOnline(ctx, d, nodeStrict, connectLimit); err != nil {
			return "", err
		}
	}
	// node-strict allows half a message a second in bursts of 2: a few
	// events in a row and the session is closed with 4029.
	start := time.Now()
	for _, d := range devices {
		for i := range 8 {
			if _, err := sc.sys.api.send(ctx, d.id, "emit", map[string]any{"name": "conformance.flood", "data": map[string]any{"i": i}}, ""); err != nil {
				return "", err
			}
		}
	}
	var total time.Duration
	for _, d := range devices {
		var closed time.Time
		err := poll(ctx, 15*time.Second, func() (bool, error) {
			// The session the events went on ends: closed with 4029.
			if ends := d.front.endsAfter(start); len(ends) > 0 {
				closed = ends[0]
				return true, nil
			}
			return false, nil
		})
		if err != nil {
			return "", fmt.Errorf("device %s was not closed with 4029 after 8 events (is it sending them?): %w", d.id, err)
		}
		back, err := sc.nextConnect(ctx, d, closed, set.maxBackoff+5*time.Second)
		if err != nil {
			return "", fmt.Errorf("device %s after 4029: %w", d.id, err)
		}
		total += back
	}
	mean := total / n
	want := set.minBackoff / 8
	detail := fmt.Sprintf("%d devices closed with 4029 reconnected after %v on average (SWITCHBOARD_MIN_BACKOFF_MS=%d)", n, mean.Round(time.Millisecond), set.minBackoff.Milliseconds())
	if mean < want {
		return "", fmt.Errorf("%s: want at least %v on average: no backoff", detail, want)
	}
	return detail, nil
}

func scenarioSilent(ctx context.Context, sc *scenarioRun) (string, error) {
	set := fast
	set.readTimeout = 4 * time.Second
	d, err := sc.startDevice(ctx, nodeA, set)
	if err != nil {
		return "", err
	}
	if err := sc.waitOnline(ctx, d, nodeA, connectLimit); err != nil {
		return "", err
	}
	// The node pings every second: a session that lasts past the read
	// timeout shows the device counts pings as life.
	since := time.Now()
	if !backoff.Sleep(ctx, set.readTimeout+time.Second) {
		return "", ctx.Err()
	}
	if a := d.front.acceptsAfter(since); len(a) > 0 {
		return "", fmt.Errorf("the device reconnected %v into a healthy session (pinged every %v, SWITCHBOARD_READ_TIMEOUT_MS=%d)",
			a[0].Sub(since).Round(time.Millisecond), pingInterval, set.readTimeout.Milliseconds())
	}
	silenced := time.Now()
	d.front.silence()
	back, err := sc.nextConnect(ctx, d, silenced, set.readTimeout+set.maxBackoff+5*time.Second)
	if err != nil {
		return "", fmt.Errorf("the node went silent, its socket open, and SWITCHBOARD_READ_TIMEOUT_MS=%d passed: %w", set.readTimeout.Milliseconds(), err)
	}
	if err := sc.waitOnline(ctx, d, "", 10*time.Second); err != nil {
		return "", err
	}
	return fmt.Sprintf("the node went silent; the device reconnected after %v (SWITCHBOARD_READ_TIMEOUT_MS=%d)", back.Round(time.Millisecond), set.readTimeout.Milliseconds()), nil
}

func scenarioPin(ctx context.Context, sc *scenarioRun) (string, error) {
	set := fast
	set.pin = true
	d, err := sc.startDevice(ctx, nodeA, set)
	if err != nil {
		return "", err
	}
	// The pin matches the node's certificate: the device connects.
	if err := sc.waitOnline(ctx, d, nodeA, connectLimit); err != nil {
		return "", fmt.Errorf("with SWITCHBOARD_PIN the node's own fingerprint: %w", err)
	}
	// An impostor answers from now on, with a certificate the device's CA
	// file trusts but whose fingerprint is not the pin.
	d.front.useImpostor(sc.sys.impostor)
	d.front.cut()
	err = poll(ctx, fast.maxBackoff+5*time.Second, func() (bool, error) {
		_, done, _ := d.front.impostorCounts()
		return done >= 2, nil
	})
	hellos, done, leaks := d.front.impostorCounts()
	if leaks > 0 {
		return "", fmt.Errorf("the device sent its request (and credentials) to a certificate that does not match its pin, %d time(s) in %d", leaks, done)
	}
	if err != nil && done == 0 {
		return "", fmt.Errorf("the device did not try to reconnect after its session was cut (%d TLS hellos): %w", hellos, err)
	}
	// The node again: the device, still trying, connects.
	d.front.route(sc.sys.nodeAddrs[nodeA])
	if err := sc.waitOnline(ctx, d, nodeA, fast.maxBackoff+10*time.Second); err != nil {
		return "", fmt.Errorf("once the impostor left: %w", err)
	}
	return fmt.Sprintf("connected with the pin; refused the impostor %d time(s) without a request; connected again once it left", done), nil
}

func scenarioShutdown(ctx context.Context, sc *scenarioRun) (string, error) {
	d, err := sc.startDevice(ctx, nodeA, fast)
	if err != nil {
		return "", err
	}
	if err := sc.waitOnline(ctx, d, nodeA, connectLimit); err != nil {
		return "", err
	}
	stopped := time.Now()
	d.terminate()
	code, err := d.waitExit(ctx, 5*time.Second)
	if err != nil {
		return "", fmt.Errorf("after SIGTERM: %w", err)
	}
	took := time.Since(stopped).Round(time.Millisecond)
	if code != 0 {
		return "", fmt.Errorf("exited with status %d %v after SIGTERM; want 0", code, took)
	}
	// It said goodbye (or at least closed its socket): the node saw it go.
	if err := poll(ctx, 5*time.Second, func() (bool, error) {
		dev, err := sc.sys.api.device(ctx, d.id)
		return !dev.Online, err
	}); err != nil {
		return "", fmt.Errorf("still online after it exited: %w", err)
	}
	return fmt.Sprintf("exited with status 0 %v after SIGTERM", took), nil
}
