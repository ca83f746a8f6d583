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
	"sync"
	"testing"
	"time"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/device"
	"github.com/switchboard-iot/switchboard/edge"
	"github.com/switchboard-iot/switchboard/internal/webhook"
	"github.com/switchboard-iot/switchboard/maintenance"
)

// receiver is a webhook endpoint that verifies each delivery's signature
// and records what it accepted, in arrival order. answer decides each
// request's status (nil: 204).
type receiver struct {
	t      *testing.T
	srv    *httptest.Server
	mu     sync.Mutex
	secret string
	got    []delivered            // accepted (2xx), in order
	starts []time.Time            // every request's arrival
	tries  map[string][]time.Time // webhook-id: its attempts
	answer func(n int) (status int, delay time.Duration)
	n      int
}

type delivered struct {
	ID   string
	Type string          `json:"type"`
	Data json.RawMessage `json:"data"`
}

func newReceiver(t *testing.T, answer func(n int) (int, time.Duration)) *receiver {
	rc := &receiver{t: t, answer: answer, tries: map[string][]time.Time{}}
	rc.srv = httptest.NewServer(http.HandlerFunc(rc.serve))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *receiver) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rc.mu.Lock()
	rc.n++
	n, secret := rc.n, rc.secret
	rc.starts = append(rc.starts, time.Now())
	id := r.Header.Get("webhook-id")
	rc.tries[id] = append(rc.tries[id], time.Now())
	rc.mu.Unlock()
	if err := webhook.Verify(secret, body, r.Header); err != nil {
		rc.t.Errorf("a delivery whose signature does not verify: %v", err)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	status, delay := http.StatusNoContent, time.Duration(0)
	if rc.answer != nil {
		status, delay = rc.answer(n)
	}
	if delay > 0 {
		select { // a slow receiver
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
	}
	if status/100 == 2 {
		var d delivered
		if err := json.Unmarshal(body, &d); err != nil {
			rc.t.Errorf("a delivery that is not JSON: %s", body)
		}
		d.ID = id
		rc.mu.Lock()
		rc.got = append(rc.got, d)
		rc.mu.Unlock()
	}
	w.WriteHeader(status)
}

func (rc *receiver) accepted() []delivered {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return slices.Clone(rc.got)
}

func (rc *receiver) setSecret(s string) {
	rc.mu.Lock()
	rc.secret = s
	rc.mu.Unlock()
}

// devWebhooks starts an edge whose webhooks may reach this machine over
// plain HTTP (the receivers are httptest servers on 127.0.0.1), with a
// short backoff.
func devWebhooks(t *testing.T, sys *testsys.System, backoff time.Duration) *testsys.Edge {
	return sys.StartEdge(t, "edge-a", func(c *edge.Config) {
		c.WebhooksAllowHTTP, c.WebhooksAllowPrivate = true, true
	}, func(m *maintenance.Config) {
		m.WebhooksAllowHTTP, m.WebhooksAllowPrivate = true, true
		m.WebhookInterval, m.WebhookBackoff = 20*time.Millisecond, backoff
	})
}

// createWebhook creates an endpoint and gives its receiver the secret.
func createWebhook(t *testing.T, c *api, rc *receiver, body string) int64 {
	t.Helper()
	resp, b := c.call(http.MethodPost, "/v1/webhooks", body)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("create webhook: %d %s", resp.StatusCode, b)
	}
	var out struct {
		ID     int64  `json:"id"`
		Secret string `json:"secret"`
	}
	if err := json.Unmarshal(b, &out); err != nil || !strings.HasPrefix(out.Secret, "whsec_") {
		t.Fatalf("create webhook: %s (%v)", b, err)
	}
	if resp.Header.Get("Location") != fmt.Sprintf("/v1/webhooks/%d", out.ID) {
		t.Errorf("Location %q", resp.Header.Get("Location"))
	}
	if rc != nil {
		rc.setSecret(out.Secret)
	}
	return out.ID
}

func TestWebhookAPI(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	strict := sys.StartEdge(t, "edge-strict", nil)
	dev := devWebhooks(t, sys, time.Second)
	admin := sys.APIKey(t)
	c := newAPI(t, dev.URL, admin)
	cs := newAPI(t, strict.URL, admin)

	// Scopes: admin only.
	ro := newAPI(t, dev.URL, sys.APIKey(t, db.ScopeRead, db.ScopeCommands))
	for _, m := range [][2]string{{"POST", "/v1/webhooks"}, {"GET", "/v1/webhooks"}, {"GET", "/v1/webhooks/1"},
		{"PATCH", "/v1/webhooks/1"}, {"DELETE", "/v1/webhooks/1"}, {"GET", "/v1/webhooks/1/deliveries"}} {
		resp, b := ro.call(m[0], m[1], `{}`)
		wantProblem(t, resp, b, http.StatusForbidden, "insufficient-scope")
	}

	// Bad input.
	for _, body := range []string{
		`{"events":["command.completed"]}`,
		`{"url":"https://hooks.example.com/"}`,
		`{"url":"https://hooks.example.com/","events":[]}`,
		`{"url":"https://hooks.example.com/","events":["command.done"]}`,
		`{"url":"ftp://hooks.example.com/","events":["command.completed"]}`,
		`{"url":"https://hooks.example.com/","events":["device.event"],"names":[""]}`,
		`{"url":"https://hooks.example.com/","events":["command.completed"],"paused":true}`,
	} {
		resp, b := c.call(http.MethodPost, "/v1/webhooks", body)
		wantProblem(t, resp, b, http.StatusBadRequest, "invalid-webhook")
	}
	resp, b := c.call(http.MethodPost, "/v1/webhooks", `{"url":`)
	wantProblem(t, resp, b, http.StatusBadRequest, "invalid-json")
	// Without the edge's flags: plain http and private addresses refused.
	for _, u := range []string{"http://hooks.example.com/", "https://127.0.0.1/", "https://10.0.0.1/", "https://[::1]:8443/", "https://localhost/"} {
		resp, b := cs.call(http.MethodPost, "/v1/webhooks", `{"url":"`+u+`","events":["command.completed"]}`)
		wantProblem(t, resp, b, http.StatusBadRequest, "invalid-webhook")
	}

	// Create, read, list (paged), patch, delete.
	id1 := createWebhook(t, c, nil, `{"url":"https://hooks.example.com/a","events":["device.event","command.failed","device.event"],"names":["alarm"]}`)
	id2 := createWebhook(t, cs, nil, `{"url":"https://hooks.example.com/b","events":["job.finished"]}`)
	resp, b = c.call(http.MethodGet, fmt.Sprintf("/v1/webhooks/%d", id1), "")
	var wh db.Webhook
	if resp.StatusCode != 200 || json.Unmarshal(b, &wh) != nil || strings.Contains(string(b), "whsec_") ||
		!slices.Equal(wh.Events, []string{"command.failed", "device.event"}) || !slices.Equal(wh.Names, []string{"alarm"}) || wh.Paused {
		t.Errorf("get webhook: %d %s", resp.StatusCode, b)
	}
	resp, b = c.call(http.MethodGet, "/v1/webhooks?limit=1", "")
	var page struct {
		Webhooks []db.Webhook `json:"webhooks"`
		Next     string       `json:"next"`
	}
	if resp.StatusCode != 200 || json.Unmarshal(b, &page) != nil || len(page.Webhooks) != 1 || page.Webhooks[0].ID != id1 || page.Next == "" {
		t.Fatalf("page 1: %d %s", resp.StatusCode, b)
	}
	resp, b = c.call(http.MethodGet, "/v1/webhooks?limit=1&cursor="+page.Next, "")
	page.Next = ""
	if resp.StatusCode != 200 || json.Unmarshal(b, &page) != nil || len(page.Webhooks) != 1 || page.Webhooks[0].ID != id2 || page.Next != "" {
		t.Fatalf("page 2: %d %s", resp.StatusCode, b)
	}
	resp, b = c.call(http.MethodGet, "/v1/webhooks?cursor=garbage", "")
	wantProblem(t, resp, b, http.StatusBadRequest, "invalid-cursor")
	resp, b = c.call(http.MethodGet, "/v1/webhooks?colour=red", "")
	wantProblem(t, resp, b, http.StatusBadRequest, "invalid-query")

	resp, b = c.call(http.MethodPatch, fmt.Sprintf("/v1/webhooks/%d", id1), `{"paused":true,"events":["command.completed"]}`)
	if resp.StatusCode != 200 || json.Unmarshal(b, &wh) != nil || !wh.Paused || !slices.Equal(wh.Events, []string{"command.completed"}) ||
		!slices.Equal(wh.Names, []string{"alarm"}) || wh.URL != "https://hooks.example.com/a" {
		t.Errorf("patch: %d %s", resp.StatusCode, b)
	}
	resp, b = c.call(http.MethodPatch, fmt.Sprintf("/v1/webhooks/%d", id1), `{}`)
	wantProblem(t, resp, b, http.StatusBadRequest, "invalid-webhook")
	resp, b = cs.call(http.MethodPatch, fmt.Sprintf("/v1/webhooks/%d", id1), `{"url":"http://hooks.example.com/"}`)
	wantProblem(t, resp, b, http.StatusBadRequest, "invalid-webhook")

	resp, b = c.call(http.MethodDelete, fmt.Sprintf("/v1/webhooks/%d", id2), "")
	if resp.StatusCode != http.StatusNoContent {
		t.Errorf("delete: %d %s", resp.StatusCode, b)
	}
	for _, m := range [][2]string{{"GET", ""}, {"PATCH", ""}, {"DELETE", ""}, {"GET", "/deliveries"}} {
		resp, b := c.call(m[0], fmt.Sprintf("/v1/webhooks/%d%s", id2, m[1]), `{"paused":false}`)
		wantProblem(t, resp, b, http.StatusNotFound, "webhook-not-found")
	}
	resp, b = c.call(http.MethodGet, "/v1/webhooks/nope", "")
	wantProblem(t, resp, b, http.StatusNotFound, "webhook-not-found")
}

// TestWebhookDelivery: a receiver that is down for a while, then answers
// 500 now and then and is slow now and then, gets every command's final
// status and its device's connects, each verified, in order per device.
func TestWebhookDelivery(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := devWebhooks(t, sys, 20*time.Millisecond)
	c := newAPI(t, e.URL, sys.APIKey(t))
	rc := newReceiver(t, func(n int) (int, time.Duration) {
		switch {
		case n <= 5: // down
			return http.StatusServiceUnavailable, 0
		case n%4 == 0:
			return http.StatusInternalServerError, 0
		case n%5 == 0: // slow
			return http.StatusNoContent, 300 * time.Millisecond
		}
		return http.StatusNoContent, 0
	})
	id := createWebhook(t, c, rc, `{"url":"`+rc.srv.URL+`/hook","events":["command.completed","command.failed","device.connected"]}`)
	secret := sys.AddDevice(t, "dev-1")
	n := sys.StartNode(t, "node-a", nil)
	testsys.StartDevice(t, n, "dev-1", secret, map[string]device.HandlerFunc{
		"read": func(context.Context, json.RawMessage) (any, error) { return map[string]any{"ok": true}, nil },
		"fail": func(context.Context, json.RawMessage) (any, error) { return nil, errors.New("stuck") },
	})
	var sent []string
	for i := range 12 {
		name := "read"
		if i%3 == 2 {
			name = "fail"
		}
		resp, body := c.sendCommand("dev-1?wait=10s", `{"name":"`+name+`"}`)
		cmd, _ := wantCommand(t, resp, body, http.StatusOK)
		sent = append(sent, cmd.ID.String())
	}
	testsys.Eventually(t, "every event delivered", func() bool { return len(rc.accepted()) >= 13 })
	got := rc.accepted()
	if got[0].Type != "device.connected" {
		t.Errorf("first delivery %s, want device.connected", got[0].Type)
	}
	var order []string
	seen := map[string]bool{}
	for _, d := range got[1:] {
		var cmd struct {
			ID, Status string
		}
		_ = json.Unmarshal(d.Data, &cmd)
		want := map[string]string{"done": "command.completed", "failed": "command.failed"}[cmd.Status]
		if d.Type != want {
			t.Errorf("delivery %s of a %s command", d.Type, cmd.Status)
		}
		if seen[d.ID] { // at least once: a repeat keeps its id, and is allowed
			continue
		}
		seen[d.ID] = true
		order = append(order, cmd.ID)
	}
	if !slices.Equal(order, sent) {
		t.Errorf("commands delivered in the order\n%v, sent\n%v", order, sent)
	}

	// The listing: every delivery delivered (once the edge recorded the
	// last answer, a moment after the receiver sent it), the first with
	// its retries.
	var list struct {
		Deliveries []db.WebhookDelivery `json:"deliveries"`
		Next       string               `json:"next"`
	}
	var resp *http.Response
	var b []byte
	testsys.Eventually(t, "every delivery recorded as delivered", func() bool {
		resp, b = c.call(http.MethodGet, fmt.Sprintf("/v1/webhooks/%d/deliveries?limit=100", id), "")
		list.Deliveries = nil
		if resp.StatusCode != 200 || json.Unmarshal(b, &list) != nil || len(list.Deliveries) != 13 || list.Next != "" {
			return false
		}
		return !slices.ContainsFunc(list.Deliveries, func(d db.WebhookDelivery) bool { return d.Status != "delivered" })
	})
	first := list.Deliveries[len(list.Deliveries)-1]
	if first.EventType != "device.connected" || first.Status != "delivered" || first.Attempts < 6 || first.DeliveredAt == nil ||
		first.LastStatusCode == nil || *first.LastStatusCode != 204 {
		t.Errorf("the first delivery, through the outage: %+v", first)
	}
	for _, d := range list.Deliveries {
		if d.Status != "delivered" {
			t.Errorf("delivery %d: %s", d.ID, d.Status)
		}
	}
	// Paged, newest first.
	resp, b = c.call(http.MethodGet, fmt.Sprintf("/v1/webhooks/%d/deliveries?limit=5", id), "")
	if resp.StatusCode != 200 || json.Unmarshal(b, &list) != nil || len(list.Deliveries) != 5 || list.Next == "" {
		t.Fatalf("deliveries page 1: %d %s", resp.StatusCode, b)
	}
	last := list.Deliveries[4].ID
	resp, b = c.call(http.MethodGet, fmt.Sprintf("/v1/webhooks/%d/deliveries?limit=5&cursor=%s", id, list.Next), "")
	if resp.StatusCode != 200 || json.Unmarshal(b, &list) != nil || len(list.Deliveries) != 5 || list.Deliveries[0].ID >= last {
		t.Fatalf("deliveries page 2: %d %s", resp.StatusCode, b)
	}
}

// TestWebhookRetrySpacing: a failing delivery's retries keep to the
// documented backoff, full jitter: the wait scheduled after attempt k
// (next_attempt_at, read by the receiver when the retry comes) is at most
// base × 2^(k-1) after attempt k was answered, and no retry comes before
// its time. (Wall-clock gaps alone would measure the test machine's load.)
func TestWebhookRetrySpacing(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	base := 100 * time.Millisecond
	e := devWebhooks(t, sys, base)
	c := newAPI(t, e.URL, sys.APIKey(t))
	var mu sync.Mutex
	var answered []time.Time // when each failed attempt was answered
	var checked int
	rc := newReceiver(t, func(n int) (int, time.Duration) {
		arrived := time.Now()
		mu.Lock()
		defer mu.Unlock()
		if n > 1 {
			var next time.Time
			if err := sys.Pool.QueryRow(context.Background(), `SELECT next_attempt_at FROM webhook_deliveries`).Scan(&next); err != nil {
				t.Error(err)
			}
			k := n - 1
			if arrived.Before(next) {
				t.Errorf("attempt %d came %s before its time", n, next.Sub(arrived))
			}
			// The wait was scheduled once attempt k's answer was recorded,
			// a moment after the receiver sent it: a second of slack.
			if wait, bound := next.Sub(answered[k-1]), base<<(k-1); wait > bound+time.Second {
				t.Errorf("after attempt %d: a wait of %s, past %s", k, wait, bound)
			}
			checked++
		}
		if n <= 5 {
			answered = append(answered, time.Now())
			return http.StatusInternalServerError, 0
		}
		return http.StatusOK, 0
	})
	createWebhook(t, c, rc, `{"url":"`+rc.srv.URL+`","events":["device.connected"]}`)
	secret := sys.AddDevice(t, "dev-1")
	n := sys.StartNode(t, "node-a", nil)
	testsys.StartDevice(t, n, "dev-1", secret, nil)
	testsys.Eventually(t, "the delivery", func() bool { return len(rc.accepted()) == 1 })
	mu.Lock()
	defer mu.Unlock()
	if checked != 5 {
		t.Errorf("%d retries checked, want 5", checked)
	}
}

// TestWebhookDeleted: once DELETE answered, no request reaches the
// deleted endpoint, though its deliveries were failing and due again;
// another endpoint goes on receiving.
func TestWebhookDeleted(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := devWebhooks(t, sys, 10*time.Millisecond)
	c := newAPI(t, e.URL, sys.APIKey(t))
	failing := newReceiver(t, func(int) (int, time.Duration) { return http.StatusInternalServerError, 0 })
	ok := newReceiver(t, nil)
	gone := createWebhook(t, c, failing, `{"url":"`+failing.srv.URL+`","events":["device.connected","device.disconnected"]}`)
	createWebhook(t, c, ok, `{"url":"`+ok.srv.URL+`","events":["device.connected","device.disconnected"]}`)
	secret := sys.AddDevice(t, "dev-1")
	n := sys.StartNode(t, "node-a", nil)
	d := testsys.StartDevice(t, n, "dev-1", secret, nil)
	testsys.Eventually(t, "failing attempts", func() bool {
		failing.mu.Lock()
		defer failing.mu.Unlock()
		return failing.n >= 3
	})
	resp, b := c.call(http.MethodDelete, fmt.Sprintf("/v1/webhooks/%d", gone), "")
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("delete: %d %s", resp.StatusCode, b)
	}
	deleted := time.Now()
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	testsys.Eventually(t, "the other endpoint's disconnect", func() bool {
		got := ok.accepted()
		return len(got) >= 2 && got[len(got)-1].Type == "device.disconnected"
	})
	failing.mu.Lock()
	defer failing.mu.Unlock()
	// An attempt already on its way when the endpoint was deleted may
	// still land (at most the endpoint's concurrency, at once); none is
	// claimed later, so no more than those arrive.
	late := 0
	for _, at := range failing.starts {
		if at.After(deleted) {
			late++
		}
	}
	if late > maintenance.DefaultWebhookConcurrency {
		t.Errorf("%d requests reached the deleted endpoint after its deletion", late)
	}
	var left int
	if err := sys.Pool.QueryRow(t.Context(), `SELECT count(*) FROM webhook_deliveries WHERE webhook_id = $1`, gone).Scan(&left); err != nil || left != 0 {
		t.Errorf("%d deliveries left of the deleted endpoint (%v)", left, err)
	}
}

// TestWebhookDisabled: an endpoint that fails every delivery for the
// give-up window (shortened here from 24h) is disabled and shown so; its
// delivery is given up; resuming enables it.
func TestWebhookDisabled(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", func(c *edge.Config) {
		c.WebhooksAllowHTTP, c.WebhooksAllowPrivate = true, true
	}, func(m *maintenance.Config) {
		m.WebhooksAllowHTTP, m.WebhooksAllowPrivate = true, true
		m.WebhookInterval, m.WebhookBackoff, m.WebhookGiveUp = 20*time.Millisecond, 20*time.Millisecond, 700*time.Millisecond
	})
	c := newAPI(t, e.URL, sys.APIKey(t))
	rc := newReceiver(t, func(int) (int, time.Duration) { return http.StatusBadGateway, 0 })
	id := createWebhook(t, c, rc, `{"url":"`+rc.srv.URL+`","events":["device.event"]}`)
	sys.AddDevice(t, "dev-1")
	if _, err := sys.Store.InsertEvents(t.Context(), []db.DeviceEvent{{DeviceID: "dev-1", Name: "alarm"}}); err != nil {
		t.Fatal(err)
	}
	var wh db.Webhook
	testsys.Eventually(t, "the endpoint disabled", func() bool {
		_, b := c.call(http.MethodGet, fmt.Sprintf("/v1/webhooks/%d", id), "")
		return json.Unmarshal(b, &wh) == nil && wh.DisabledAt != nil
	})
	if wh.DisabledReason == nil || !strings.Contains(*wh.DisabledReason, "502") || wh.FailingSince == nil {
		t.Errorf("disabled webhook: %+v", wh)
	}
	_, b := c.call(http.MethodGet, fmt.Sprintf("/v1/webhooks/%d/deliveries", id), "")
	var list struct{ Deliveries []db.WebhookDelivery }
	if json.Unmarshal(b, &list) != nil || len(list.Deliveries) != 1 || list.Deliveries[0].Status != "failed" || list.Deliveries[0].Attempts < 1 {
		t.Errorf("deliveries of a disabled webhook: %s", b)
	}
	resp, b := c.call(http.MethodPatch, fmt.Sprintf("/v1/webhooks/%d", id), `{"paused":false}`)
	wh = db.Webhook{}
	if resp.StatusCode != 200 || json.Unmarshal(b, &wh) != nil || wh.DisabledAt != nil || wh.DisabledReason != nil {
		t.Errorf("resumed: %d %s", resp.StatusCode, b)
	}
}

// TestWebhookPrivateRefused: without -webhooks-allow-private the
// delivery client will not connect to a private address, whatever the
// endpoint's URL passed when it was made (a name re-pointed at one: DNS
// rebinding; stored here directly, as the API would refuse the literal).
func TestWebhookPrivateRefused(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", func(c *edge.Config) { c.WebhooksAllowHTTP = true }, func(m *maintenance.Config) {
		m.WebhooksAllowHTTP = true
		m.WebhookInterval, m.WebhookBackoff = 20*time.Millisecond, 20*time.Millisecond
	})
	c := newAPI(t, e.URL, sys.APIKey(t))
	rc := newReceiver(t, nil)
	wh, err := sys.Store.CreateWebhook(t.Context(), rc.srv.URL, []string{db.WebhookDeviceEvent}, []string{}, webhook.NewSecret())
	if err != nil {
		t.Fatal(err)
	}
	sys.AddDevice(t, "dev-1")
	if _, err := sys.Store.InsertEvents(t.Context(), []db.DeviceEvent{{DeviceID: "dev-1", Name: "alarm"}}); err != nil {
		t.Fatal(err)
	}
	var list struct{ Deliveries []db.WebhookDelivery }
	testsys.Eventually(t, "attempts refused", func() bool {
		_, b := c.call(http.MethodGet, fmt.Sprintf("/v1/webhooks/%d/deliveries", wh.ID), "")
		return json.Unmarshal(b, &list) == nil && len(list.Deliveries) == 1 && list.Deliveries[0].Attempts >= 2
	})
	d := list.Deliveries[0]
	if d.Status != "pending" || d.LastError == nil || !strings.Contains(*d.LastError, "refused address") || d.LastStatusCode != nil {
		t.Errorf("delivery to a private address: %+v", d)
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.n != 0 {
		t.Errorf("the receiver on 127.0.0.1 got %d requests", rc.n)
	}
}
