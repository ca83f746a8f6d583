package console_test

import (
	"encoding/json"
	"fmt"
	"html"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/db"
)

// The webhooks pages (issue 17): endpoints with their state, pause and
// resume, and an endpoint's deliveries, against a real edge and
// PostgreSQL over loopback.

// webhookFixture is an edge, three endpoints (the second disabled as the
// sender disables one failing for 24 h, through SQL), deliveries of the
// first, and a browser signed in with a key of scope admin.
func webhookFixture(t *testing.T) (*testsys.System, *testsys.Edge, []db.Webhook, *browser) {
	t.Helper()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)
	var hooks []db.Webhook
	for i, ev := range [][]string{{db.WebhookCommandCompleted}, {db.WebhookDeviceConnected, db.WebhookDeviceDisconnected}, {db.WebhookJobFinished}} {
		w, err := sys.Store.CreateWebhook(t.Context(), fmt.Sprintf("https://hooks.example/%d", i+1), ev, []string{}, "whsec_test")
		if err != nil {
			t.Fatal(err)
		}
		hooks = append(hooks, w)
	}
	if _, err := sys.Pool.Exec(t.Context(), `UPDATE webhooks SET failing_since = now() - interval '25 hours',
		disabled_at = now() - interval '1 hour', disabled_reason = 'every delivery failed for 24h0m0s; last: 503 Service Unavailable'
		WHERE id = $1`, hooks[1].ID); err != nil {
		t.Fatal(err)
	}
	// Deliveries that the sender will not touch: done, given up, and one
	// pending an hour from now.
	if _, err := sys.Pool.Exec(t.Context(), `
		INSERT INTO webhook_deliveries (webhook_id, event_type, device_id, payload, status, attempts, last_status_code, last_error, last_attempt_at, next_attempt_at, delivered_at)
		VALUES ($1, 'command.completed', 'dev-1', '{}', 'delivered', 1, 204, NULL, now(), now(), now()),
		       ($1, 'command.completed', 'dev-2', '{}', 'failed', 9, 500, 'answered 500 Internal Server Error', now(), now(), NULL),
		       ($1, 'command.completed', 'dev-3', '{}', 'pending', 2, NULL, 'dial tcp: connection refused', now(), now() + interval '1 hour', NULL)`,
		hooks[0].ID); err != nil {
		t.Fatal(err)
	}
	b := newBrowser(t, e.URL)
	b.signIn(sys.APIKey(t, db.ScopeAdmin))
	return sys, e, hooks, b
}

// webhookRow is the list's row of endpoint id.
func webhookRow(t *testing.T, page string, id int64) string {
	t.Helper()
	m := regexp.MustCompile(`(?s)<tr data-webhook="` + fmt.Sprint(id) + `">.*?</tr>`).FindString(page)
	if m == "" {
		t.Fatalf("no row of webhook %d", id)
	}
	return html.UnescapeString(m)
}

func webhookOf(t *testing.T, sys *testsys.System, id int64) db.Webhook {
	t.Helper()
	w, err := sys.Store.GetWebhook(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// The list shows each endpoint's url, events and state; a disabled one as
// disabled, with why and since when. Resuming it enables it again, as the
// API's PATCH {"paused": false} does; pause and resume are idempotent.
func TestWebhooksPage(t *testing.T) {
	t.Parallel()
	sys, _, hooks, b := webhookFixture(t)
	resp, page := b.get("/webhooks")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/webhooks: %d", resp.StatusCode)
	}
	wantIDs(t, "/webhooks", page, "webhooks", `href="/webhooks"`, `data-page="webhooks"`)
	active, disabled := webhookRow(t, page, hooks[0].ID), webhookRow(t, page, hooks[1].ID)
	if !strings.Contains(active, "https://hooks.example/1") || !strings.Contains(active, "command.completed") ||
		!strings.Contains(active, `"wh-status status on">active<`) || !strings.Contains(active, `data-action="pause"`) || strings.Contains(active, `data-action="resume"`) {
		t.Errorf("an active endpoint's row: want its url, events, active, and Pause alone; %s", active)
	}
	if !strings.Contains(disabled, `"wh-status status disabled">disabled<`) || !strings.Contains(disabled, "disabled since") ||
		!strings.Contains(disabled, "every delivery failed for 24h0m0s; last: 503 Service Unavailable") ||
		!strings.Contains(disabled, "device.connected, device.disconnected") || !strings.Contains(disabled, ">Re-enable</button>") {
		t.Errorf("a disabled endpoint's row: want disabled, since when, its reason, and Re-enable; %s", disabled)
	}

	// Re-enable, from the list: back to the list, and it is active.
	for range 2 {
		resp, body := b.postForm(fmt.Sprintf("/webhooks/%d/resume", hooks[1].ID), url.Values{"csrf": {b.csrf}, "from": {"list"}})
		if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/webhooks" {
			t.Fatalf("resume from the list: %d to %q, want 303 to /webhooks; %s", resp.StatusCode, resp.Header.Get("Location"), body)
		}
	}
	if w := webhookOf(t, sys, hooks[1].ID); w.DisabledAt != nil || w.DisabledReason != nil || w.FailingSince != nil || w.Paused {
		t.Fatalf("the endpoint after resume: %+v, want enabled, its failures forgotten", w)
	}
	_, page = b.get("/webhooks")
	if row := webhookRow(t, page, hooks[1].ID); !strings.Contains(row, ">active<") || strings.Contains(row, "503") {
		t.Errorf("the re-enabled endpoint's row: %s", row)
	}

	// Pause, from its page: back to its page, which says paused.
	path := fmt.Sprintf("/webhooks/%d", hooks[0].ID)
	for range 2 {
		resp, body := b.postForm(path+"/pause", url.Values{"csrf": {b.csrf}, "from": {"page"}})
		if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != path {
			t.Fatalf("pause: %d to %q, want 303 to %s; %s", resp.StatusCode, resp.Header.Get("Location"), path, body)
		}
	}
	if w := webhookOf(t, sys, hooks[0].ID); !w.Paused {
		t.Fatal("the endpoint is not paused")
	}
	_, page = b.get(path)
	if !strings.Contains(page, `"wh-status status paused">paused<`) || !strings.Contains(page, ">Resume</button>") || strings.Contains(page, `data-action="pause"`) {
		t.Errorf("a paused endpoint's page: want paused and Resume alone")
	}
	if resp, _ := b.postForm(path+"/resume", url.Values{"csrf": {b.csrf}}); resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != path {
		t.Errorf("resume: %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	if w := webhookOf(t, sys, hooks[0].ID); w.Paused {
		t.Error("the endpoint is still paused after resume")
	}

	// No such endpoint.
	for _, id := range []string{"999", "x", "0"} {
		if resp, body := b.get("/webhooks/" + id); resp.StatusCode != http.StatusNotFound || !strings.Contains(body, `id="error"`) {
			t.Errorf("/webhooks/%s: %d, want 404 with #error", id, resp.StatusCode)
		}
		if resp, _ := b.postForm("/webhooks/"+id+"/pause", url.Values{"csrf": {b.csrf}}); resp.StatusCode != http.StatusNotFound {
			t.Errorf("pause /webhooks/%s: %d, want 404", id, resp.StatusCode)
		}
	}
}

// An endpoint's page lists its deliveries, newest first, with status,
// attempts, last answer, last attempt and last error; both lists page
// with the API's cursors.
func TestWebhookDeliveriesPage(t *testing.T) {
	t.Parallel()
	_, _, hooks, b := webhookFixture(t)
	path := fmt.Sprintf("/webhooks/%d", hooks[0].ID)
	resp, page := b.get(path)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: %d", path, resp.StatusCode)
	}
	wantIDs(t, path, page, "webhook", "deliveries")
	rows := regexp.MustCompile(`(?s)<tr data-delivery="\d+">.*?</tr>`).FindAllString(page, -1)
	if len(rows) != 3 {
		t.Fatalf("%s: %d deliveries, want 3", path, len(rows))
	}
	for i, want := range [][]string{
		{"dev-3", `"dl-status">pending <small>(next try`, `"dl-attempts">2<`, `"dl-code">none<`, "dial tcp: connection refused"},
		{"dev-2", `"dl-status">failed<`, `"dl-attempts">9<`, `"dl-code">500<`, "answered 500 Internal Server Error"},
		{"dev-1", `"dl-status">delivered<`, `"dl-attempts">1<`, `"dl-code">204<`, `<td class="dl-error"></td>`},
	} {
		for _, s := range want {
			if !strings.Contains(rows[i], s) {
				t.Errorf("delivery row %d: no %s; %s", i, s, rows[i])
			}
		}
		if !strings.Contains(rows[i], `<td class="dl-last"><time datetime=`) {
			t.Errorf("delivery row %d: no last attempt time", i)
		}
	}
	if _, page := b.get(fmt.Sprintf("/webhooks/%d", hooks[2].ID)); !strings.Contains(page, "No delivery yet") {
		t.Error("an endpoint without deliveries: the page does not say so")
	}

	// Deliveries, two a page, with the API's cursor.
	_, page = b.get(path + "?limit=2")
	link := next(page)
	var api struct{ Next string }
	if _, body := b.get("/v1/webhooks/" + fmt.Sprint(hooks[0].ID) + "/deliveries?limit=2"); json.Unmarshal([]byte(body), &api) != nil || api.Next == "" {
		t.Fatalf("the API's deliveries: %s", body)
	}
	if link != path+"?cursor="+api.Next+"&limit=2" {
		t.Errorf("deliveries' next link %q, want the API's cursor %q with limit=2", link, api.Next)
	}
	_, page = b.get(link)
	if !strings.Contains(page, "dev-1") || strings.Contains(page, "dev-2") || next(page) != "" {
		t.Errorf("the deliveries' second page: want the oldest alone and no next link")
	}
	// Endpoints, two a page, with the API's cursor.
	_, page = b.get("/webhooks?limit=2")
	if _, body := b.get("/v1/webhooks?limit=2"); json.Unmarshal([]byte(body), &api) != nil || api.Next == "" {
		t.Fatalf("the API's webhooks: %s", body)
	}
	if link := next(page); link != "/webhooks?cursor="+api.Next+"&limit=2" {
		t.Errorf("webhooks' next link %q, want the API's cursor %q with limit=2", link, api.Next)
	}
	_, page = b.get(next(page))
	if !strings.Contains(page, fmt.Sprintf(`data-webhook="%d"`, hooks[2].ID)) || strings.Contains(page, fmt.Sprintf(`data-webhook="%d"`, hooks[0].ID)) || next(page) != "" {
		t.Errorf("the webhooks' second page: want the third endpoint alone and no next link")
	}
	// A cursor of another list, or a damaged one, or a bad limit: 400.
	for _, p := range []string{"/webhooks?cursor=" + api.Next[:len(api.Next)-2], path + "?cursor=" + api.Next, "/webhooks?limit=0", path + "?limit=x", "/webhooks?limit=1001"} {
		if resp, body := b.get(p); resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, `id="error"`) {
			t.Errorf("%s: %d, want 400 with #error", p, resp.StatusCode)
		}
	}
}

// The pages and forms are the admin scope's, as /v1/webhooks is: others
// get 403, no nav link, and their forms change nothing; so do forms
// without the session's CSRF token.
func TestWebhooksRefusals(t *testing.T) {
	t.Parallel()
	sys, e, hooks, admin := webhookFixture(t)
	path := fmt.Sprintf("/webhooks/%d", hooks[0].ID)
	other := newBrowser(t, e.URL)
	other.signIn(sys.APIKey(t, db.ScopeRead, db.ScopeCommands))
	if _, page := other.get("/"); strings.Contains(page, `href="/webhooks"`) {
		t.Error("the nav of a key without admin links the webhooks")
	}
	for _, p := range []string{"/webhooks", path} {
		if resp, body := other.get(p); resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "lacks the admin scope") {
			t.Errorf("%s for a key without admin: %d, want 403 saying it lacks the admin scope", p, resp.StatusCode)
		}
	}
	for _, action := range []string{"/pause", "/resume"} {
		if resp, body := other.postForm(fmt.Sprintf("/webhooks/%d", hooks[1].ID)+action, url.Values{"csrf": {other.csrf}}); resp.StatusCode != http.StatusForbidden ||
			!strings.Contains(body, "lacks the admin scope") {
			t.Errorf("%s by a key without admin: %d, want 403", action, resp.StatusCode)
		}
	}
	for _, token := range []string{"", "0123", other.csrf} {
		if resp, _ := admin.postForm(path+"/pause", url.Values{"csrf": {token}}); resp.StatusCode != http.StatusForbidden {
			t.Errorf("pause with CSRF token %q: %d, want 403", token, resp.StatusCode)
		}
		if resp, _ := admin.postForm(fmt.Sprintf("/webhooks/%d/resume", hooks[1].ID), url.Values{"csrf": {token}}); resp.StatusCode != http.StatusForbidden {
			t.Errorf("resume with CSRF token %q: %d, want 403", token, resp.StatusCode)
		}
	}
	if resp, body := admin.postForm(path+"/pause", url.Values{"csrf": {admin.csrf}}, "Origin", "https://evil.example"); resp.StatusCode != http.StatusForbidden || !strings.Contains(body, crossSite) {
		t.Errorf("pause from another site: %d, want 403 %s", resp.StatusCode, crossSite)
	}
	if w := webhookOf(t, sys, hooks[0].ID); w.Paused {
		t.Error("a refused pause paused the endpoint")
	}
	if w := webhookOf(t, sys, hooks[1].ID); w.DisabledAt == nil {
		t.Error("a refused resume enabled the endpoint")
	}
}
