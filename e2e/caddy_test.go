package e2e

// Self-hosting: the repository's Caddyfile in front of two real edges, run
// by a real Caddy, streams Server-Sent Events to clients as the edges write
// them (scripts/test installs Caddy and sets CADDY_BIN).

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/device"
)

// caddyBinary is the Caddy to run: $CADDY_BIN, else caddy on PATH.
func caddyBinary(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("CADDY_BIN"); bin != "" {
		return bin
	}
	bin, err := exec.LookPath("caddy")
	if err != nil {
		t.Skip("no Caddy: set CADDY_BIN or put caddy on PATH (scripts/test installs it)")
	}
	return bin
}

// testCaddyfile is the repository's Caddyfile with its site and upstreams
// replaced: plain HTTP on a loopback port, the given edges behind it, the
// reverse_proxy options kept as they are. Caddy's admin endpoint and
// automatic HTTPS are off, and its folders are the test's: it takes no
// port or file of anyone else's.
func testCaddyfile(t *testing.T, site string, upstreams []string) string {
	t.Helper()
	repo, err := os.ReadFile("../Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	text := string(repo)
	for _, want := range []string{"lb_policy least_conn", "health_uri /readyz", "flush_interval -1", "header_up Fly-Client-IP {remote_host}"} {
		if !strings.Contains(text, want) {
			t.Fatalf("the Caddyfile lacks %q, which this test expects", want)
		}
	}
	for _, r := range []struct{ old, new string }{
		{"api.example.com {", "http://" + site + " {"},
		// The test's clients speak plain HTTP to Caddy, and an edge
		// redirects what reached its proxy over plain HTTP: say https, as
		// the real site (TLS ended at Caddy) does.
		{"reverse_proxy edge-1:8080 edge-2:8080 edge-3:8080 {", "reverse_proxy " + strings.Join(upstreams, " ") + " {\n\t\theader_up X-Forwarded-Proto https"},
	} {
		if !strings.Contains(text, r.old) {
			t.Fatalf("the Caddyfile lacks %q: update this test with it", r.old)
		}
		text = strings.Replace(text, r.old, r.new, 1)
	}
	return "{\n\tadmin off\n\tauto_https off\n}\n\n" + text
}

// startCaddy runs Caddy (bin) with a test Caddyfile until the test ends,
// and returns its address once it proxies to a ready edge.
func startCaddy(t *testing.T, bin string, edges []*testsys.Edge) string {
	t.Helper()
	// A free port for Caddy: taken, noted and given back. Another process
	// could take it between; Caddy would then fail to start, and say so.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	var upstreams []string
	for _, e := range edges {
		upstreams = append(upstreams, strings.TrimPrefix(e.URL, "http://"))
	}
	dir := t.TempDir()
	config := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(config, []byte(testCaddyfile(t, addr, upstreams)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "validate", "--config", config, "--adapter", "caddyfile").CombinedOutput(); err != nil {
		t.Fatalf("caddy validate: %v\n%s", err, out)
	}

	out := &testsys.Output{}
	cmd := exec.Command(bin, "run", "--config", config, "--adapter", "caddyfile")
	cmd.Stdout, cmd.Stderr = out, out
	// Caddy's storage and config folders: the test's own.
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+filepath.Join(dir, "data"), "XDG_CONFIG_HOME="+filepath.Join(dir, "config"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("caddy's output:\n%s", out.String())
		}
	})

	client := &http.Client{Timeout: 2 * time.Second}
	testsys.Eventually(t, "Caddy to proxy /readyz to an edge", func() bool {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("caddy exited: %v\n%s", err, out.String())
		default:
		}
		resp, err := client.Get("http://" + addr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return "http://" + addr
}

// eventStream opens an event stream through Caddy (a 30 s bound), checks
// that it is one, and reads its Server-Sent Events on a goroutine of its
// own, handing each to the channel it returns, which closes when the stream
// ends; the stream ends when the test does.
func eventStream(t *testing.T, method, url, key, body string) <-chan testsys.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		resp.Body.Close()
		cancel()
		t.Fatalf("%s %s through Caddy: %d %s", method, url, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	events := make(chan testsys.Event)
	done := make(chan struct{})
	t.Cleanup(func() {
		cancel()
		<-done
	})
	go func() {
		defer close(done)
		defer close(events)
		defer resp.Body.Close()
		er := testsys.NewEventReader(resp.Body)
		for {
			ev, err := er.Next()
			if err != nil {
				return
			}
			select {
			case events <- ev:
			case <-ctx.Done():
				return
			}
		}
	}()
	return events
}

// nextEvent waits for the stream's next event.
func nextEvent(t *testing.T, events <-chan testsys.Event, what string) testsys.Event {
	t.Helper()
	select {
	case ev, ok := <-events:
		if !ok {
			t.Fatalf("the stream ended before %s", what)
		}
		return ev
	case <-time.After(20 * time.Second):
		t.Fatalf("no %s within 20s", what)
	}
	panic("unreachable")
}

func TestCaddy(t *testing.T) {
	t.Parallel()
	bin := caddyBinary(t)
	sys := testsys.New(t)
	key := sys.APIKey(t)
	edges := []*testsys.Edge{sys.StartEdge(t, "edge-c1", nil), sys.StartEdge(t, "edge-c2", nil)}
	node := sys.StartNode(t, "node-c", nil)

	// The device holds the "hold" command until the test lets it go: its
	// reply cannot come before the test has read the earlier events.
	started, release := make(chan struct{}, 1), make(chan struct{})
	dev := testsys.StartDevice(t, node, "caddy-1", sys.AddDevice(t, "caddy-1"), map[string]device.HandlerFunc{
		"hold": func(ctx context.Context, args json.RawMessage) (any, error) {
			started <- struct{}{}
			select {
			case <-release:
				return map[string]any{"held": args}, nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		},
	})
	proxy := startCaddy(t, bin, edges)

	t.Run("command reply over SSE", func(t *testing.T) {
		events := eventStream(t, http.MethodPost, proxy+"/v1/devices/caddy-1/commands", key, `{"name":"hold","args":{"n":7}}`)
		// Through Caddy while the device still holds the command: nothing
		// held these events back for the end of the response.
		if ev := nextEvent(t, events, "accepted"); ev.Name != "accepted" {
			t.Fatalf("first event %+v, want accepted", ev)
		}
		select {
		case <-started:
		case <-time.After(20 * time.Second):
			t.Fatal("the device did not get the command within 20s")
		}
		if ev := nextEvent(t, events, "delivered"); ev.Name != "delivered" {
			t.Fatalf("second event %+v, want delivered", ev)
		}
		close(release)
		ev := nextEvent(t, events, "reply")
		var c command
		if err := json.Unmarshal([]byte(ev.Data), &c); err != nil || ev.Name != "reply" || c.Status != "done" ||
			string(c.Result) != `{"held":{"n":7}}` {
			t.Fatalf("third event %+v (%v), want the reply", ev, err)
		}
		if _, open := <-events; open {
			t.Fatal("the stream went on after the reply")
		}
	})

	t.Run("device events over SSE", func(t *testing.T) {
		events := eventStream(t, http.MethodGet, proxy+"/v1/devices/caddy-1/events", key, "")
		// The stream may go live a moment after its headers: the device
		// sends until one event comes through (events are at most once).
		send := time.NewTicker(200 * time.Millisecond)
		defer send.Stop()
		deadline := time.After(20 * time.Second)
		var ev testsys.Event
		for sent := 0; ev.Name == ""; {
			if err := dev.Event(t.Context(), "telemetry", map[string]any{"celsius": 21.5, "seq": sent}); err != nil && !errors.Is(err, device.ErrNotConnected) {
				t.Fatal(err)
			}
			sent++
			select {
			case got, ok := <-events:
				if !ok {
					t.Fatal("the stream ended")
				}
				ev = got
			case <-send.C:
			case <-deadline:
				t.Fatalf("no event within 20s (%d sent)", sent)
			}
		}
		var got struct {
			DeviceID   string          `json:"device_id"`
			Name       string          `json:"name"`
			Data       json.RawMessage `json:"data"`
			ReceivedAt time.Time       `json:"received_at"`
		}
		if err := json.Unmarshal([]byte(ev.Data), &got); err != nil {
			t.Fatalf("event data %q: %v", ev.Data, err)
		}
		var data struct{ Celsius float64 }
		if ev.ID == "" || ev.Name != "telemetry" || got.DeviceID != "caddy-1" || got.Name != "telemetry" ||
			json.Unmarshal(got.Data, &data) != nil || data.Celsius != 21.5 || got.ReceivedAt.IsZero() {
			t.Fatalf("event %+v, data %+v", ev, got)
		}
	})
}
