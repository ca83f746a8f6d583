package edge_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/device"
	"github.com/switchboard-iot/switchboard/edge"
	"github.com/switchboard-iot/switchboard/internal/command"
)

func TestAuth(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)
	key := sys.APIKey(t)
	path := "/v1/commands/" + uuid.NewString()

	t.Run("no key", func(t *testing.T) {
		resp, body := newAPI(t, e.URL, "").call(http.MethodGet, path, "")
		p := wantProblem(t, resp, body, http.StatusUnauthorized, "unauthorized")
		if got := resp.Header.Get("WWW-Authenticate"); !strings.HasPrefix(got, "Bearer") {
			t.Errorf("WWW-Authenticate %q, want a Bearer challenge", got)
		}
		if p.Detail == "" {
			t.Error("401 without a detail")
		}
	})
	t.Run("not bearer", func(t *testing.T) {
		resp, body := newAPI(t, e.URL, "").call(http.MethodGet, path, "", "Authorization", "Basic "+key)
		wantProblem(t, resp, body, http.StatusUnauthorized, "unauthorized")
	})
	t.Run("wrong key", func(t *testing.T) {
		resp, body := newAPI(t, e.URL, "sbk_not-a-key").call(http.MethodGet, path, "")
		wantProblem(t, resp, body, http.StatusUnauthorized, "unauthorized")
		if got := resp.Header.Get("WWW-Authenticate"); !strings.HasPrefix(got, "Bearer") {
			t.Errorf("WWW-Authenticate %q, want a Bearer challenge", got)
		}
	})
	t.Run("good key", func(t *testing.T) {
		c := newAPI(t, e.URL, key)
		// Twice: the second time the key comes from the edge's cache.
		for range 2 {
			resp, body := c.call(http.MethodGet, path, "")
			if resp.StatusCode == http.StatusUnauthorized {
				t.Fatalf("a good key got 401: %s", body)
			}
			wantProblem(t, resp, body, http.StatusNotFound, "command-not-found")
		}
	})
	t.Run("scheme is case-insensitive", func(t *testing.T) {
		resp, body := newAPI(t, e.URL, "").call(http.MethodGet, path, "", "Authorization", "bearer "+key)
		wantProblem(t, resp, body, http.StatusNotFound, "command-not-found")
	})
	t.Run("health needs no key", func(t *testing.T) {
		c := newAPI(t, e.URL, "")
		for _, p := range []string{"/healthz", "/readyz"} {
			resp, body := c.call(http.MethodGet, p, "")
			if resp.StatusCode != http.StatusOK {
				t.Errorf("GET %s: status %d, want 200; body %s", p, resp.StatusCode, body)
			}
		}
	})
}

func TestBadInput(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)
	c := newAPI(t, e.URL, sys.APIKey(t))
	sys.AddDevice(t, "dev-1")

	bad := []struct {
		name, body, query string
		status            int
		slug              string
	}{
		{"malformed JSON", `{"name":`, "", 400, "invalid-json"},
		{"args PostgreSQL cannot store", `{"name":"x","args":{"s":"a\u0000b"}}`, "", 400, "invalid-json"},
		{"not an object", `"read"`, "", 400, "invalid-json"},
		{"unknown field", `{"name":"read","tiemout":"5s"}`, "", 400, "invalid-json"},
		{"two values", `{"name":"read"}{"name":"read"}`, "", 400, "invalid-json"},
		{"empty body", ``, "", 400, "invalid-json"},
		{"no name", `{}`, "", 400, "invalid-command"},
		{"name with a space", `{"name":"has space"}`, "", 400, "invalid-command"},
		{"empty name", `{"name":""}`, "", 400, "invalid-command"},
		{"args an array", `{"name":"read","args":[1]}`, "", 400, "invalid-command"},
		{"args a string", `{"name":"read","args":"x"}`, "", 400, "invalid-command"},
		{"timeout under 1s", `{"name":"read","timeout":"0.5s"}`, "", 400, "invalid-command"},
		{"timeout under 1s as a number", `{"name":"read","timeout":0.5}`, "", 400, "invalid-command"},
		{"timeout over 10m", `{"name":"read","timeout":"11m"}`, "", 400, "invalid-command"},
		{"negative timeout", `{"name":"read","timeout":"-5s"}`, "", 400, "invalid-command"},
		{"timeout not a duration", `{"name":"read","timeout":"soon"}`, "", 400, "invalid-duration"},
		{"ttl over 7d", `{"name":"read","ttl":"200h"}`, "", 400, "invalid-command"},
		{"wait not a duration", `{"name":"read"}`, "?wait=banana", 400, "invalid-wait"},
		{"negative wait", `{"name":"read"}`, "?wait=-1s", 400, "invalid-wait"},
		{"body over 64 KiB", `{"name":"read","args":{"pad":"` + strings.Repeat("a", 70<<10) + `"}}`, "", 413, "request-too-large"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := c.sendCommand("dev-1"+tc.query, tc.body)
			p := wantProblem(t, resp, body, tc.status, tc.slug)
			if p.Detail == "" {
				t.Error("no detail says what is wrong")
			}
			if loc := resp.Header.Get("Location"); loc != "" {
				t.Errorf("a rejected command has a Location %q", loc)
			}
		})
	}
	t.Run("a stream request gets the problem too", func(t *testing.T) {
		resp, body := c.sendCommand("dev-1", `{"name":"has space"}`, "Accept", "text/event-stream")
		wantProblem(t, resp, body, 400, "invalid-command")
	})
	t.Run("unknown route", func(t *testing.T) {
		resp, body := c.call(http.MethodGet, "/v1/nothing-here", "")
		wantProblem(t, resp, body, 404, "not-found")
		resp, body = newAPI(t, e.URL, "").call(http.MethodGet, "/nothing-here", "")
		wantProblem(t, resp, body, 404, "not-found")
	})
	t.Run("command id not a uuid", func(t *testing.T) {
		resp, body := c.call(http.MethodGet, "/v1/commands/not-a-uuid", "")
		wantProblem(t, resp, body, 400, "invalid-command-id")
		resp, body = c.call(http.MethodGet, "/v1/commands/not-a-uuid/events", "", "Accept", "text/event-stream")
		wantProblem(t, resp, body, 400, "invalid-command-id")
	})
	t.Run("unknown command", func(t *testing.T) {
		id := uuid.NewString()
		resp, body := c.call(http.MethodGet, "/v1/commands/"+id, "")
		p := wantProblem(t, resp, body, 404, "command-not-found")
		if !strings.Contains(p.Detail, id) {
			t.Errorf("detail %q does not name the id", p.Detail)
		}
		resp, body = c.call(http.MethodGet, "/v1/commands/"+id+"/events", "", "Accept", "text/event-stream")
		wantProblem(t, resp, body, 404, "command-not-found")
	})
	// Run after the subtests above (they are not parallel): nothing bad was stored.
	if n := countCommands(t, sys); n != 0 {
		t.Errorf("%d commands stored from rejected requests, want 0", n)
	}
}

func TestMethodNotAllowed(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)
	c := newAPI(t, e.URL, sys.APIKey(t))

	resp, body := c.call(http.MethodDelete, "/v1/commands/"+uuid.NewString(), "")
	wantProblem(t, resp, body, http.StatusMethodNotAllowed, "method-not-allowed")
	// RFC 9110 15.5.6: a 405 response MUST carry an Allow header.
	if allow := resp.Header.Get("Allow"); allow != http.MethodGet {
		t.Errorf("405 Allow header = %q, want %q", allow, http.MethodGet)
	}
	resp, body = c.call(http.MethodPut, "/v1/devices/dev-1/commands", "")
	wantProblem(t, resp, body, http.StatusMethodNotAllowed, "method-not-allowed")
	if allow := resp.Header.Get("Allow"); allow != "GET, POST" {
		t.Errorf("405 Allow header = %q, want %q", allow, "GET, POST")
	}
}

func TestUnknownDevice(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)
	c := newAPI(t, e.URL, sys.APIKey(t))

	for _, hdr := range [][]string{nil, {"Accept", "text/event-stream"}} {
		resp, body := c.sendCommand("ghost", `{"name":"read"}`, hdr...)
		p := wantProblem(t, resp, body, http.StatusNotFound, "device-not-found")
		if !strings.Contains(p.Detail, "ghost") {
			t.Errorf("detail %q does not name the device", p.Detail)
		}
	}
	resp, body := c.sendCommand("ghost?wait=1s", `{"name":"read"}`)
	wantProblem(t, resp, body, http.StatusNotFound, "device-not-found")
	if n := countCommands(t, sys); n != 0 {
		t.Errorf("%d commands stored for an unknown device, want 0", n)
	}
}

func TestOfflineDevice(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)
	c := newAPI(t, e.URL, sys.APIKey(t))
	sys.AddDevice(t, "dev-1")

	t.Run("plain", func(t *testing.T) {
		t.Parallel()
		resp, body := c.sendCommand("dev-1", `{"name":"set_temp","args":{"c":21},"timeout":5,"ttl":"1h"}`)
		cmd, _ := wantCommand(t, resp, body, http.StatusAccepted)
		id := commandIDFrom(t, resp)
		if cmd.ID != id {
			t.Errorf("body id %s, Location id %s", cmd.ID, id)
		}
		if cmd.Status != command.Pending || cmd.DeviceID != "dev-1" || cmd.Name != "set_temp" {
			t.Errorf("got %+v, want a pending set_temp for dev-1", cmd)
		}
		if string(cmd.Args) != `{"c": 21}` && string(cmd.Args) != `{"c":21}` {
			t.Errorf("args %s, want {\"c\":21}", cmd.Args)
		}
		if time.Duration(cmd.Timeout) != 5*time.Second {
			t.Errorf("timeout %s, want 5s (a number is seconds)", time.Duration(cmd.Timeout))
		}
		if d := cmd.ExpiresAt.Sub(cmd.CreatedAt); d < time.Hour-time.Second || d > time.Hour+time.Second {
			t.Errorf("expires %s after creation, want the 1h ttl", d)
		}
		if cmd.OK != nil || cmd.Result != nil || cmd.DeliveredAt != nil {
			t.Errorf("a pending command has an outcome: %s", body)
		}
		status, replyTo := row(t, sys, id)
		if status != "pending" || replyTo != "edge-a" {
			t.Errorf("row status %q reply_to %q, want pending and edge-a", status, replyTo)
		}

		resp, body = c.call(http.MethodGet, resp.Header.Get("Location"), "")
		got, _ := wantCommand(t, resp, body, http.StatusOK)
		if got.ID != id || got.Status != command.Pending {
			t.Errorf("GET Location: got id %s status %q, want %s pending", got.ID, got.Status, id)
		}
	})
	t.Run("defaults", func(t *testing.T) {
		t.Parallel()
		resp, body := c.sendCommand("dev-1", `{"name":"read","args":null}`)
		cmd, _ := wantCommand(t, resp, body, http.StatusAccepted)
		if time.Duration(cmd.Timeout) != command.DefaultTimeout {
			t.Errorf("timeout %s, want the default %s", time.Duration(cmd.Timeout), command.DefaultTimeout)
		}
		if d := cmd.ExpiresAt.Sub(cmd.CreatedAt); d < command.DefaultTTL-time.Second || d > command.DefaultTTL+time.Second {
			t.Errorf("expires %s after creation, want the default ttl %s", d, command.DefaultTTL)
		}
		if string(cmd.Args) != "{}" {
			t.Errorf("args %s, want {} for null args", cmd.Args)
		}
	})
	t.Run("limits are inclusive", func(t *testing.T) {
		t.Parallel()
		for _, body := range []string{
			`{"name":"read","timeout":"1s"}`,
			`{"name":"read","timeout":"10m"}`,
			`{"name":"read","ttl":"1s"}`,
			`{"name":"read","ttl":"168h"}`,
			`{"name":"a","args":{}}`,
			`{"name":"` + strings.Repeat("n", 128) + `"}`,
		} {
			resp, b := c.sendCommand("dev-1", body)
			if resp.StatusCode != http.StatusAccepted {
				t.Errorf("%s: status %d, want 202; body %s", body, resp.StatusCode, b)
			}
		}
		resp, body := c.sendCommand("dev-1", `{"name":"`+strings.Repeat("n", 129)+`"}`)
		wantProblem(t, resp, body, http.StatusBadRequest, "invalid-command")
	})
	t.Run("wait runs out", func(t *testing.T) {
		t.Parallel()
		start := time.Now()
		resp, body := c.sendCommand("dev-1?wait=300ms", `{"name":"read"}`)
		took := time.Since(start)
		cmd, _ := wantCommand(t, resp, body, http.StatusAccepted)
		if cmd.Status != command.Pending {
			t.Errorf("status %q, want pending", cmd.Status)
		}
		if id := commandIDFrom(t, resp); id != cmd.ID {
			t.Errorf("Location id %s, body id %s", id, cmd.ID)
		}
		if took < 300*time.Millisecond {
			t.Errorf("answered after %s, before the 300ms wait ran out", took)
		}
		if status, _ := row(t, sys, cmd.ID); status != "pending" {
			t.Errorf("row status %q, want pending", status)
		}
	})
}

// online starts an edge, a node and a connected SDK device dev-1 with
// handlers: read (echoes its args), fail (an error), gated (answers when
// release is closed) and hang (never answers).
func online(t *testing.T) (sys *testsys.System, e *testsys.Edge, c *api, release chan struct{}) {
	t.Helper()
	sys = testsys.New(t)
	e = sys.StartEdge(t, "edge-a", nil)
	c = newAPI(t, e.URL, sys.APIKey(t))
	secret := sys.AddDevice(t, "dev-1")
	n := sys.StartNode(t, "node-a", nil)
	release = make(chan struct{})
	hang := make(chan struct{})
	testsys.StartDevice(t, n, "dev-1", secret, map[string]device.HandlerFunc{
		"read": func(_ context.Context, args json.RawMessage) (any, error) {
			return map[string]any{"temp": 21.5, "echo": args}, nil
		},
		"fail": func(context.Context, json.RawMessage) (any, error) {
			return nil, errors.New("valve stuck")
		},
		"gated": func(ctx context.Context, _ json.RawMessage) (any, error) {
			select {
			case <-release:
				return map[string]any{"gated": true}, nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		},
		"hang": func(ctx context.Context, _ json.RawMessage) (any, error) {
			select {
			case <-hang:
			case <-ctx.Done():
			}
			return nil, errors.New("too late")
		},
	})
	t.Cleanup(func() { close(hang) }) // runs before the device stops
	return sys, e, c, release
}

func TestOnlineDevice(t *testing.T) {
	t.Parallel()
	sys, _, c, release := online(t)

	t.Run("wait", func(t *testing.T) {
		t.Parallel()
		resp, body := c.sendCommand("dev-1?wait=5s", `{"name":"read","args":{"unit":"C"}}`)
		cmd, fields := wantCommand(t, resp, body, http.StatusOK)
		if cmd.Status != command.Done || cmd.OK == nil || !*cmd.OK {
			t.Fatalf("got %s, want status done and ok true", body)
		}
		var result any
		if err := json.Unmarshal(cmd.Result, &result); err != nil {
			t.Fatal(err)
		}
		want := map[string]any{"temp": 21.5, "echo": map[string]any{"unit": "C"}}
		if !jsonEqual(result, want) {
			t.Errorf("result %s, want %v", cmd.Result, want)
		}
		// delivered_at may be missing: a reply can be stored before the
		// delivery mark (see package command), which then changes nothing.
		if cmd.CompletedAt == nil {
			t.Errorf("a done command without completed_at: %s", body)
		}
		if _, ok := fields["error"]; ok {
			t.Errorf("a done command with an error field: %s", body)
		}
		if id := commandIDFrom(t, resp); id != cmd.ID {
			t.Errorf("Location id %s, body id %s", id, cmd.ID)
		}
		if status, _ := row(t, sys, cmd.ID); status != "done" {
			t.Errorf("row status %q, want done", status)
		}
	})
	t.Run("stream", func(t *testing.T) {
		t.Parallel()
		resp, sse := c.stream(http.MethodPost, "/v1/devices/dev-1/commands", `{"name":"gated"}`)
		id := commandIDFrom(t, resp)
		if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
			t.Errorf("Cache-Control %q, want no-store", cc)
		}
		wantEvent(t, sse.must(t), "1", "accepted", id, command.Pending)
		// The device holds its answer until the test has seen the delivery,
		// so that event shows the command as delivered.
		wantEvent(t, sse.must(t), "2", "delivered", id, command.Delivered)
		close(release)
		cmd, _ := wantEvent(t, sse.must(t), "3", "reply", id, command.Done)
		if cmd.OK == nil || !*cmd.OK || !jsonEqualRaw(t, cmd.Result, `{"gated":true}`) {
			t.Errorf("reply: ok %v result %s, want ok true and {\"gated\":true}", cmd.OK, cmd.Result)
		}
		sse.wantEnd(t)
	})
	t.Run("stream of a fast reply", func(t *testing.T) {
		t.Parallel()
		resp, sse := c.stream(http.MethodPost, "/v1/devices/dev-1/commands", `{"name":"read"}`)
		id := commandIDFrom(t, resp)
		events := sse.all(t)
		if got := eventsSummary(events); got != "1:accepted 2:delivered 3:reply" {
			t.Fatalf("events %q, want 1:accepted 2:delivered 3:reply", got)
		}
		wantEvent(t, events[0], "1", "accepted", id, command.Pending)
		// A delivery and a reply stored close together may reach the edge
		// as one change: the delivered event then shows the newest state.
		if c, _ := decodeCommand(t, []byte(events[1].Data)); c.Status != command.Delivered && c.Status != command.Done {
			t.Errorf("delivered event with status %q", c.Status)
		}
		cmd, _ := wantEvent(t, events[2], "3", "reply", id, command.Done)
		if cmd.OK == nil || !*cmd.OK {
			t.Errorf("reply ok %v, want true", cmd.OK)
		}
	})
	t.Run("stream of an error", func(t *testing.T) {
		t.Parallel()
		resp, sse := c.stream(http.MethodPost, "/v1/devices/dev-1/commands", `{"name":"fail"}`)
		id := commandIDFrom(t, resp)
		events := sse.all(t)
		if got := eventsSummary(events); got != "1:accepted 2:delivered 3:reply" {
			t.Fatalf("events %q, want 1:accepted 2:delivered 3:reply", got)
		}
		cmd, fields := wantEvent(t, events[2], "3", "reply", id, command.Failed)
		if cmd.OK == nil || *cmd.OK {
			t.Errorf("ok %s, want false", fields["ok"])
		}
		if cmd.Error != "valve stuck" {
			t.Errorf("error %q, want the handler's %q", cmd.Error, "valve stuck")
		}
		if status, _ := row(t, sys, id); status != "failed" {
			t.Errorf("row status %q, want failed", status)
		}
	})
	t.Run("unknown handler", func(t *testing.T) {
		t.Parallel()
		resp, body := c.sendCommand("dev-1?wait=5s", `{"name":"nope"}`)
		cmd, _ := wantCommand(t, resp, body, http.StatusOK)
		if cmd.Status != command.Failed || cmd.OK == nil || *cmd.OK || !strings.Contains(cmd.Error, "nope") {
			t.Errorf("got %s, want failed with ok false and an error naming the command", body)
		}
	})
}

func TestNoReplyWithinTimeout(t *testing.T) {
	t.Parallel()
	sys, _, c, _ := online(t)

	start := time.Now()
	resp, sse := c.stream(http.MethodPost, "/v1/devices/dev-1/commands", `{"name":"hang","timeout":"1s"}`)
	id := commandIDFrom(t, resp)
	events := sse.all(t)
	took := time.Since(start)
	if got := eventsSummary(events); got != "1:accepted 2:delivered 3:failed" {
		t.Fatalf("events %q, want 1:accepted 2:delivered 3:failed", got)
	}
	wantEvent(t, events[1], "2", "delivered", id, command.Delivered)
	cmd, fields := wantEvent(t, events[2], "3", "failed", id, command.Failed)
	if _, ok := fields["ok"]; ok {
		t.Errorf("a command the device never answered has an ok field: %s", events[2].Data)
	}
	if cmd.Error == "" {
		t.Error("a timed-out command without an error saying so")
	}
	if took < time.Second {
		t.Errorf("failed after %s, before its 1s timeout", took)
	}
	if status, _ := row(t, sys, id); status != "failed" {
		t.Errorf("row status %q, want failed", status)
	}
	resp, body := c.call(http.MethodGet, "/v1/commands/"+id.String(), "")
	if got, _ := wantCommand(t, resp, body, http.StatusOK); got.Status != command.Failed || got.OK != nil {
		t.Errorf("GET: %s, want failed without ok", body)
	}
}

func TestTTLExpiry(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)
	c := newAPI(t, e.URL, sys.APIKey(t))
	sys.AddDevice(t, "dev-1")

	t.Run("stream", func(t *testing.T) {
		t.Parallel()
		start := time.Now()
		resp, sse := c.stream(http.MethodPost, "/v1/devices/dev-1/commands", `{"name":"read","ttl":"1s"}`)
		id := commandIDFrom(t, resp)
		events := sse.all(t)
		took := time.Since(start)
		if got := eventsSummary(events); got != "1:accepted 3:expired" {
			t.Fatalf("events %q, want 1:accepted 3:expired", got)
		}
		wantEvent(t, events[0], "1", "accepted", id, command.Pending)
		cmd, fields := wantEvent(t, events[1], "3", "expired", id, command.Expired)
		if _, ok := fields["ok"]; ok || cmd.DeliveredAt != nil {
			t.Errorf("an expired command with ok or delivered_at: %s", events[1].Data)
		}
		if took < time.Second {
			t.Errorf("expired after %s, before its 1s ttl", took)
		}
		if status, _ := row(t, sys, id); status != "expired" {
			t.Errorf("row status %q, want expired", status)
		}
		// Resuming after the accepted event gives only the outcome.
		_, sse = c.stream(http.MethodGet, "/v1/commands/"+id.String()+"/events", "", "Last-Event-ID", "1")
		if got := eventsSummary(sse.all(t)); got != "3:expired" {
			t.Errorf("resumed events %q, want 3:expired", got)
		}
	})
	t.Run("wait", func(t *testing.T) {
		t.Parallel()
		resp, body := c.sendCommand("dev-1?wait=10s", `{"name":"read","ttl":"1s"}`)
		cmd, _ := wantCommand(t, resp, body, http.StatusOK)
		if cmd.Status != command.Expired || cmd.CompletedAt == nil {
			t.Errorf("got %s, want 200 with status expired and completed_at", body)
		}
	})
}

func TestResume(t *testing.T) {
	t.Parallel()
	_, _, c, _ := online(t)
	resp, body := c.sendCommand("dev-1?wait=5s", `{"name":"read"}`)
	cmd, _ := wantCommand(t, resp, body, http.StatusOK)
	if cmd.Status != command.Done {
		t.Fatalf("status %q, want done", cmd.Status)
	}
	path := "/v1/commands/" + cmd.ID.String() + "/events"

	t.Run("from the start", func(t *testing.T) {
		t.Parallel()
		_, sse := c.stream(http.MethodGet, path, "")
		events := sse.all(t)
		if got := eventsSummary(events); got != "1:accepted 2:delivered 3:reply" {
			t.Fatalf("events %q, want all three", got)
		}
		for _, ev := range events {
			// A finished command's replayed events all show its outcome.
			wantEvent(t, ev, ev.ID, ev.Name, cmd.ID, command.Done)
		}
	})
	t.Run("after 1", func(t *testing.T) {
		t.Parallel()
		_, sse := c.stream(http.MethodGet, path, "", "Last-Event-ID", "1")
		events := sse.all(t)
		if got := eventsSummary(events); got != "2:delivered 3:reply" {
			t.Fatalf("events %q, want 2:delivered 3:reply", got)
		}
		wantEvent(t, events[1], "3", "reply", cmd.ID, command.Done)
	})
	t.Run("after 3", func(t *testing.T) {
		t.Parallel()
		_, sse := c.stream(http.MethodGet, path, "", "Last-Event-ID", "3")
		if events := sse.all(t); len(events) != 0 {
			t.Fatalf("events %q, want none", eventsSummary(events))
		}
	})
	for _, bad := range []string{"x", "-1", "1.5"} {
		t.Run("bad Last-Event-ID "+bad, func(t *testing.T) {
			t.Parallel()
			resp, body := c.call(http.MethodGet, path, "", "Accept", "text/event-stream", "Last-Event-ID", bad)
			wantProblem(t, resp, body, http.StatusBadRequest, "invalid-last-event-id")
		})
	}
}

func TestCrossEdgeResume(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	a := sys.StartEdge(t, "edge-a", nil)
	b := sys.StartEdge(t, "edge-b", nil)
	key := sys.APIKey(t)
	ca, cb := newAPI(t, a.URL, key), newAPI(t, b.URL, key)
	secret := sys.AddDevice(t, "dev-1")
	n := sys.StartNode(t, "node-a", nil)

	resp, body := ca.sendCommand("dev-1", `{"name":"read","args":{"n":1}}`)
	cmd, _ := wantCommand(t, resp, body, http.StatusAccepted)
	id := commandIDFrom(t, resp)

	_, sse := cb.stream(http.MethodGet, "/v1/commands/"+id.String()+"/events", "")
	wantEvent(t, sse.must(t), "1", "accepted", cmd.ID, command.Pending)
	var watchers []string
	if err := sys.Pool.QueryRow(t.Context(), `SELECT watchers FROM commands WHERE id = $1`, id).Scan(&watchers); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(watchers, "edge-b") {
		t.Errorf("watchers %v, want edge-b among them", watchers)
	}

	// A second stream, on the accepting edge, follows the same command.
	_, sseA := ca.stream(http.MethodGet, "/v1/commands/"+id.String()+"/events", "")
	wantEvent(t, sseA.must(t), "1", "accepted", cmd.ID, command.Pending)

	testsys.StartDevice(t, n, "dev-1", secret, map[string]device.HandlerFunc{
		"read": func(_ context.Context, args json.RawMessage) (any, error) { return args, nil },
	})
	if got := eventsSummary(sseA.all(t)); got != "2:delivered 3:reply" {
		t.Errorf("edge A's stream: events %q, want 2:delivered 3:reply", got)
	}
	ev := sse.must(t)
	if ev.ID != "2" || ev.Name != "delivered" {
		t.Fatalf("got %s:%s, want 2:delivered", ev.ID, ev.Name)
	}
	got, _ := wantEvent(t, sse.must(t), "3", "reply", id, command.Done)
	if got.OK == nil || !*got.OK || !jsonEqualRaw(t, got.Result, `{"n":1}`) {
		t.Errorf("reply ok %v result %s, want ok and {\"n\":1}", got.OK, got.Result)
	}
	sse.wantEnd(t)
	if status, replyTo := row(t, sys, id); status != "done" || replyTo != "edge-a" {
		t.Errorf("row status %q reply_to %q, want done and edge-a", status, replyTo)
	}
}

func TestDevices(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)
	c := newAPI(t, e.URL, sys.APIKey(t))
	n := sys.StartNode(t, "node-a", nil)

	t.Run("provision", func(t *testing.T) {
		resp, body := c.call(http.MethodPost, "/v1/devices", `{"id":"new-1"}`)
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("status %d, want 201; body %s", resp.StatusCode, body)
		}
		if loc := resp.Header.Get("Location"); loc != "/v1/devices/new-1" {
			t.Errorf("Location %q, want /v1/devices/new-1", loc)
		}
		var created struct{ ID, Secret string }
		if err := json.Unmarshal(body, &created); err != nil {
			t.Fatal(err)
		}
		if created.ID != "new-1" || created.Secret == "" {
			t.Fatalf("got %s, want id new-1 and a secret", body)
		}
		// The secret shown is the one the device connects with.
		d := testsys.StartDevice(t, n, "new-1", created.Secret, nil)
		if err := d.Stop(); err != nil {
			t.Errorf("device with the provisioned secret: %v", err)
		}

		resp, body = c.call(http.MethodPost, "/v1/devices", `{"id":"new-1"}`)
		wantProblem(t, resp, body, http.StatusConflict, "device-exists")
		resp, body = c.call(http.MethodPost, "/v1/devices", `{"id":"bad id"}`)
		wantProblem(t, resp, body, http.StatusBadRequest, "invalid-device-id")
		// HTTP Basic auth splits at the first ':': such an id could never connect.
		resp, body = c.call(http.MethodPost, "/v1/devices", `{"id":"has:colon"}`)
		if p := wantProblem(t, resp, body, http.StatusBadRequest, "invalid-device-id"); !strings.Contains(p.Detail, `no ":"`) {
			t.Errorf("detail %q does not explain the ':' rule", p.Detail)
		}
		resp, body = c.call(http.MethodPost, "/v1/devices", `{}`)
		wantProblem(t, resp, body, http.StatusBadRequest, "invalid-device-id")
		resp, body = c.call(http.MethodPost, "/v1/devices", `{"id":"`+strings.Repeat("d", 129)+`"}`)
		wantProblem(t, resp, body, http.StatusBadRequest, "invalid-device-id")
		resp, body = c.call(http.MethodPost, "/v1/devices", `{"id":"new-2","secret":"mine"}`)
		wantProblem(t, resp, body, http.StatusBadRequest, "invalid-json")
	})

	t.Run("presence", func(t *testing.T) {
		secret := sys.AddDevice(t, "dev-1")
		get := func() (int, deviceView) {
			t.Helper()
			resp, body := c.call(http.MethodGet, "/v1/devices/dev-1", "")
			var d deviceView
			if resp.StatusCode == http.StatusOK {
				if err := json.Unmarshal(body, &d); err != nil {
					t.Fatal(err)
				}
			}
			return resp.StatusCode, d
		}
		if code, d := get(); code != http.StatusOK || d.ID != "dev-1" || d.Online || d.Presence != nil {
			t.Fatalf("before connecting: status %d device %+v, want 200 offline", code, d)
		}
		dev := testsys.StartDevice(t, n, "dev-1", secret, nil)
		var d deviceView
		testsys.Eventually(t, "dev-1 online", func() bool {
			var code int
			code, d = get()
			return code == http.StatusOK && d.Online
		})
		if d.Presence == nil || d.Presence.NodeID != "node-a" {
			t.Errorf("presence %+v, want node_id node-a", d.Presence)
		}
		if err := dev.Stop(); err != nil {
			t.Fatal(err)
		}
		testsys.Eventually(t, "dev-1 offline", func() bool {
			var code int
			code, d = get()
			return code == http.StatusOK && !d.Online
		})
		if d.Presence != nil || d.LastSeenAt == nil {
			t.Errorf("offline device: presence %+v last_seen_at %v, want no presence and a last_seen_at", d.Presence, d.LastSeenAt)
		}
	})

	t.Run("unknown", func(t *testing.T) {
		resp, body := c.call(http.MethodGet, "/v1/devices/ghost", "")
		wantProblem(t, resp, body, http.StatusNotFound, "device-not-found")
	})
}

type deviceView struct {
	ID         string     `json:"id"`
	Online     bool       `json:"online"`
	LastSeenAt *time.Time `json:"last_seen_at"`
	Presence   *struct {
		NodeID string `json:"node_id"`
	} `json:"presence"`
}

func TestShutdownEndsStreams(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	// A drain long enough that waiting it out would show: open streams
	// must end at once, not hold the shutdown.
	const drain = time.Minute
	e := sys.StartEdge(t, "edge-a", func(cfg *edge.Config) { cfg.DrainTimeout = drain })
	c := newAPI(t, e.URL, sys.APIKey(t))
	sys.AddDevice(t, "dev-1")

	resp, sse := c.stream(http.MethodPost, "/v1/devices/dev-1/commands", `{"name":"read"}`)
	id := commandIDFrom(t, resp)
	wantEvent(t, sse.must(t), "1", "accepted", id, command.Pending)

	ended := make(chan error, 1)
	go func() {
		_, err := sse.Next()
		ended <- err
	}()
	stopped := make(chan error, 1)
	start := time.Now()
	go func() { stopped <- e.Stop() }()
	select {
	case err := <-stopped:
		if err != nil {
			t.Errorf("Stop: %v", err)
		}
	case <-time.After(drain / 2):
		t.Fatalf("Stop did not return within %v with a stream open: it waits out the drain", drain/2)
	}
	select {
	case err := <-ended:
		if !errors.Is(err, io.EOF) {
			t.Errorf("stream ended with %v, want a clean EOF", err)
		}
	case <-time.After(requestTimeout):
		t.Fatal("the stream did not end after Stop")
	}
	t.Logf("shutdown with an open stream took %s", time.Since(start))
	// A stopped edge reports itself not ready, so balancers send clients
	// elsewhere; why, only on its ops listener.
	rec := httptest.NewRecorder()
	e.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	if rec.Code != http.StatusServiceUnavailable || strings.Contains(rec.Body.String(), "draining") {
		t.Errorf("public /readyz of a stopped edge: %d %s, want 503 without the reason", rec.Code, rec.Body)
	}
	if why := e.NotReady(t.Context()); why != "draining" {
		t.Errorf("a stopped edge is not ready because %q, want draining", why)
	}
	// The command is not lost: it waits for its device.
	if status, _ := row(t, sys, id); status != "pending" {
		t.Errorf("row status %q, want pending", status)
	}
}

// TestStreamHousekeeping runs an edge with short keep-alives, a short
// longest wait and metrics.
func TestStreamHousekeeping(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-h", func(cfg *edge.Config) {
		cfg.KeepAlive = 50 * time.Millisecond
		cfg.MaxWait = 200 * time.Millisecond
		cfg.Metrics = prometheus.NewRegistry()
	})
	c := newAPI(t, e.URL, sys.APIKey(t))
	sys.AddDevice(t, "dev-1")

	t.Run("keep-alive comments on a quiet stream", func(t *testing.T) {
		t.Parallel()
		_, sse := c.stream(http.MethodPost, "/v1/devices/dev-1/commands", `{"name":"read","ttl":"1s"}`)
		if got := eventsSummary(sse.all(t)); got != "1:accepted 3:expired" {
			t.Errorf("events %q, want 1:accepted 3:expired", got)
		}
		if sse.Comments == 0 {
			t.Error("no keep-alive comment in a second of a quiet stream, with KeepAlive 50ms")
		}
	})
	t.Run("wait is capped", func(t *testing.T) {
		t.Parallel()
		start := time.Now()
		resp, body := c.sendCommand("dev-1?wait=10s", `{"name":"read"}`)
		took := time.Since(start)
		if cmd, _ := wantCommand(t, resp, body, http.StatusAccepted); cmd.Status != command.Pending {
			t.Errorf("status %q, want pending", cmd.Status)
		}
		// Uncapped, the wait would last its 10s.
		if took < 200*time.Millisecond || took >= 10*time.Second {
			t.Errorf("answered after %s, want about MaxWait (200ms), not the 10s asked", took)
		}
	})
	t.Run("a closed stream stops waiting", func(t *testing.T) {
		t.Parallel()
		scraper := newAPI(t, e.Ops, "")
		waiting := func() float64 {
			t.Helper()
			resp, body := scraper.call(http.MethodGet, "/metrics", "")
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("GET /metrics: status %d", resp.StatusCode)
			}
			for line := range strings.Lines(string(body)) {
				if strings.HasPrefix(line, "switchboard_edge_waiting_requests{") {
					var v float64
					fields := strings.Fields(line)
					if _, err := fmt.Sscan(fields[len(fields)-1], &v); err != nil {
						t.Fatalf("metric line %q: %v", line, err)
					}
					return v
				}
			}
			t.Fatalf("no switchboard_edge_waiting_requests in /metrics:\n%s", body)
			return 0
		}
		resp, sse := c.stream(http.MethodPost, "/v1/devices/dev-1/commands", `{"name":"hold","ttl":"1h"}`)
		wantEvent(t, sse.must(t), "1", "accepted", uuid.Nil, command.Pending)
		if v := waiting(); v < 1 {
			t.Fatalf("waiting requests %v with a stream open, want at least 1", v)
		}
		resp.Body.Close()
		testsys.Eventually(t, "no waiting requests once the streams closed", func() bool { return waiting() == 0 })
	})
}

func jsonEqual(a, b any) bool {
	ja, err1 := json.Marshal(a)
	jb, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && string(ja) == string(jb)
}

func jsonEqualRaw(t *testing.T, raw json.RawMessage, want string) bool {
	t.Helper()
	var a, b any
	if err := json.Unmarshal(raw, &a); err != nil {
		return false
	}
	if err := json.Unmarshal([]byte(want), &b); err != nil {
		t.Fatal(err)
	}
	return jsonEqual(a, b)
}

// An id the database cannot store gets 400, not 503 (a client error is not
// an outage).
func TestUnstorableDeviceID(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)
	c := newAPI(t, e.URL, sys.APIKey(t))
	resp, body := c.call(http.MethodPost, "/v1/devices", `{"id":"a\u0000b"}`)
	wantProblem(t, resp, body, http.StatusBadRequest, "invalid-json")
}

func TestEdgeIDIsValidated(t *testing.T) {
	for _, id := range []string{"", "has space", strings.Repeat("x", 49), "-leading"} {
		if _, err := edge.New(edge.Config{ID: id}); err == nil {
			t.Errorf("edge.New accepted id %q", id)
		}
	}
	if id := edge.NewID(strings.Repeat("m", 60)); !db.ValidChannelID(id) {
		t.Errorf("NewID made an invalid id %q", id)
	}
}

// A client that retries a POST with the same Idempotency-Key gets the first
// command back, on any edge, in the mode it asks for; another request under
// the key is refused; keys belong to their API key.
func TestIdempotencyKey(t *testing.T) {
	t.Parallel()
	sys, e, c, release := online(t)
	other := sys.StartEdge(t, "edge-b", nil)
	c2 := newAPI(t, other.URL, c.key)
	body := `{"name":"gated","args":{"n":1}}`

	resp, b := c.sendCommand("dev-1", body, "Idempotency-Key", "order-7")
	first, _ := wantCommand(t, resp, b, http.StatusAccepted)
	if resp.Header.Get("Idempotent-Replayed") != "" {
		t.Error("the first request is marked as a replay")
	}
	// The same request again, whitespace aside, through the other edge.
	resp, b = c2.sendCommand("dev-1", `{"name": "gated", "args": {"n": 1}}`, "Idempotency-Key", "order-7")
	again, _ := wantCommand(t, resp, b, http.StatusAccepted)
	if again.ID != first.ID || resp.Header.Get("Idempotent-Replayed") != "true" || commandIDFrom(t, resp) != first.ID {
		t.Fatalf("repeat: %s (replayed %q), want the first command %s", again.ID, resp.Header.Get("Idempotent-Replayed"), first.ID)
	}
	// A repeat that waits follows the first command to its outcome, though
	// another edge accepted it.
	done := make(chan struct{})
	go func() {
		defer close(done)
		resp, b := c2.sendCommand("dev-1?wait=10s", body, "Idempotency-Key", "order-7")
		if got, _ := wantCommand(t, resp, b, http.StatusOK); got.ID != first.ID || got.Status != command.Done {
			t.Errorf("waiting repeat: %s", b)
		}
	}()
	testsys.Eventually(t, "the repeat waiting", func() bool { return waitingOn(t, sys, first.ID, "edge-b") })
	close(release)
	<-done

	resp, b = c.sendCommand("dev-1", `{"name":"gated","args":{"n":2}}`, "Idempotency-Key", "order-7")
	wantProblem(t, resp, b, http.StatusUnprocessableEntity, "idempotency-key-reused")
	resp, b = c.sendCommand("dev-1", body, "Idempotency-Key", strings.Repeat("k", 256))
	wantProblem(t, resp, b, http.StatusBadRequest, "invalid-idempotency-key")

	// Another API key's "order-7" is its own.
	c3 := newAPI(t, e.URL, sys.APIKey(t))
	resp, b = c3.sendCommand("dev-1", body, "Idempotency-Key", "order-7")
	if got, _ := wantCommand(t, resp, b, http.StatusAccepted); got.ID == first.ID {
		t.Fatal("another API key's request under the same key got the first command")
	}
	if n := countCommands(t, sys); n != 2 {
		t.Fatalf("%d commands stored, want 2", n)
	}
}

// waitingOn reports whether edgeID asked to be woken for the command.
func waitingOn(t *testing.T, sys *testsys.System, id uuid.UUID, edgeID string) bool {
	t.Helper()
	var watching bool
	if err := sys.Pool.QueryRow(context.Background(), `SELECT $2 = ANY(watchers) FROM commands WHERE id = $1`, id, edgeID).Scan(&watching); err != nil {
		t.Fatal(err)
	}
	return watching
}

// Behind a proxy that reports the request came over plain HTTP (Fly's,
// Caddy's X-Forwarded-Proto: http), the edge redirects to HTTPS on the
// hosts it serves (Config.Hosts), except the connection nodes' ACME
// HTTP-01 challenges, which it answers on port 80 from the shared storage
// (none pending here: 404).
func TestPlainHTTPRedirect(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", func(c *edge.Config) { c.Hosts = []string{"api.example.com", "alt.example.com:8443"} })
	c := newAPI(t, e.URL, sys.APIKey(t))
	c.hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

	resp, _ := c.call(http.MethodGet, "/v1/devices/dev-1?x=1", "", "X-Forwarded-Proto", "http", "Host", "API.example.com")
	if resp.StatusCode != http.StatusPermanentRedirect || resp.Header.Get("Location") != "https://api.example.com/v1/devices/dev-1?x=1" {
		t.Fatalf("plain HTTP: %d, Location %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	resp, _ = c.call(http.MethodGet, "/", "", "X-Forwarded-Proto", "http", "Host", "alt.example.com:80")
	if resp.StatusCode != http.StatusPermanentRedirect || resp.Header.Get("Location") != "https://alt.example.com:8443/" {
		t.Fatalf("plain HTTP to a host served on another port: %d, Location %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	// A host the edge does not serve gets no redirect (the Host header is
	// the client's to write): 421.
	for _, host := range []string{"evil.example", "api.example.com.evil.example", strings.TrimPrefix(e.URL, "http://")} {
		resp, body := c.call(http.MethodGet, "/v1/devices/dev-1", "", "X-Forwarded-Proto", "http", "Host", host)
		wantProblem(t, resp, body, http.StatusMisdirectedRequest, "misdirected-request")
		if loc := resp.Header.Get("Location"); loc != "" {
			t.Errorf("plain HTTP for %s: redirected to %q", host, loc)
		}
	}
	resp, body := c.call(http.MethodGet, "/.well-known/acme-challenge/some-token", "", "X-Forwarded-Proto", "http")
	wantProblem(t, resp, body, http.StatusNotFound, "not-found")
	resp, body = c.call(http.MethodGet, "/v1/devices/dev-1", "", "X-Forwarded-Proto", "https")
	wantProblem(t, resp, body, http.StatusNotFound, "device-not-found")
}
