package console_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-iot/switchboard/app/testsys"
	conntier "github.com/switchboard-iot/switchboard/conn-tier"
	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/device/protocol"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

// Managing a device from its page (issue 16): each action against a real
// edge, node and PostgreSQL over loopback, as an operator's browser sends
// the forms.

// manageFixture is an edge, a node that takes any number of connects (the
// tests dial one device many times), device dev-1 with its secret, and a
// browser signed in with a key of scopes read and admin.
func manageFixture(t *testing.T) (*testsys.System, *testsys.Edge, *testsys.Node, string, *browser) {
	t.Helper()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)
	node := sys.StartNode(t, "node-a", func(c *conntier.Config) { c.DeviceConnectRate = -1 })
	devSecret := sys.AddDevice(t, "dev-1")
	b := newBrowser(t, e.URL)
	b.signIn(sys.APIKey(t, db.ScopeRead, db.ScopeAdmin))
	return sys, e, node, devSecret, b
}

// online waits for the store to say the device is online.
func online(t *testing.T, sys *testsys.System, id string) {
	t.Helper()
	testsys.Eventually(t, id+" online", func() bool {
		d, err := sys.Store.Device(t.Context(), id)
		return err == nil && d.Online
	})
}

// formValue reads the value of the named hidden field from a page.
func formValue(t *testing.T, page, name string) string {
	t.Helper()
	m := regexp.MustCompile(`name="` + name + `" value="([^"]*)"`).FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no field %s on the page", name)
	}
	return html.UnescapeString(m[1])
}

// deviceState is what the actions change, to check that a refused one
// changed nothing.
type deviceState struct {
	Exists, Disabled bool
	Labels           string
	Fingerprint      string
}

func stateOf(t *testing.T, sys *testsys.System, id string) deviceState {
	t.Helper()
	d, err := sys.Store.Device(t.Context(), id)
	if errors.Is(err, db.ErrNotFound) {
		return deviceState{}
	}
	if err != nil {
		t.Fatal(err)
	}
	fp, err := sys.Store.DeviceSecretFingerprint(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	return deviceState{Exists: true, Disabled: d.DisabledAt != nil, Labels: string(d.Labels), Fingerprint: fp}
}

// actions are the management forms, each with a body that would change
// dev-1 if admitted; csrf and fingerprint are filled in.
func actions(csrf, fingerprint string) map[string]url.Values {
	return map[string]url.Values{
		"/devices/dev-1/disable": {"csrf": {csrf}},
		"/devices/dev-1/rotate":  {"csrf": {csrf}, "fingerprint": {fingerprint}},
		"/devices/dev-1/delete":  {"csrf": {csrf}, "confirm": {"dev-1"}},
		"/devices/dev-1/labels":  {"csrf": {csrf}, "labels": {"room=kitchen"}, "before": {""}},
	}
}

// The management forms are shown to a key with the admin scope only, and
// refused (403) to others, to a form without the session's CSRF token and
// to another site's page even with the token; a refused form changes
// nothing. An unknown device is 404.
func TestManageRefusals(t *testing.T) {
	t.Parallel()
	sys, e, _, _, admin := manageFixture(t)
	forms := []string{`id="manage"`, `id="labels-form"`, `id="disable"`, `id="rotate"`, `id="delete"`, `name="fingerprint"`}
	_, page := admin.get("/devices/dev-1")
	wantIDs(t, "the device page (admin)", page, forms...)
	fingerprint := formValue(t, page, "fingerprint")
	if fingerprint == "" {
		t.Fatal("the rotate form names no secret")
	}
	before := stateOf(t, sys, "dev-1")
	unchanged := func(what string) {
		t.Helper()
		if now := stateOf(t, sys, "dev-1"); now != before {
			t.Errorf("%s changed dev-1: %+v, was %+v", what, now, before)
		}
	}

	// Read (and commands) but not admin: no form, and each refused.
	reader := newBrowser(t, e.URL)
	reader.signIn(sys.APIKey(t, db.ScopeRead, db.ScopeCommands))
	resp, page := reader.get("/devices/dev-1")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("the device page for a read key: %d", resp.StatusCode)
	}
	for _, f := range append(forms, "/devices/dev-1/delete", "/devices/dev-1/disable") {
		if strings.Contains(page, f) {
			t.Errorf("the device page of a key without admin shows %s", f)
		}
	}
	if resp, body := reader.get("/devices/dev-1/delete"); resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "admin scope") {
		t.Errorf("the delete confirmation for a read key: %d, want 403 saying it lacks the admin scope", resp.StatusCode)
	}
	for path, form := range actions(reader.csrf, fingerprint) {
		resp, body := reader.postForm(path, form)
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "lacks the admin scope") {
			t.Errorf("POST %s by a read key: %d, want 403 saying it lacks the admin scope; %s", path, resp.StatusCode, body)
		}
		unchanged("POST " + path + " by a read key")
	}
	// An admin key without read may act, but not see the page.
	adminOnly := newBrowser(t, e.URL)
	adminOnly.signIn(sys.APIKey(t, db.ScopeAdmin))
	if resp, _ := adminOnly.get("/devices/dev-1"); resp.StatusCode != http.StatusForbidden {
		t.Errorf("the device page for an admin key without read: %d, want 403", resp.StatusCode)
	}

	// Without the token, or with another's: 403, as sign-out.
	for _, token := range []string{"", "0123", reader.csrf} {
		for path, form := range actions(token, fingerprint) {
			if resp, _ := admin.postForm(path, form); resp.StatusCode != http.StatusForbidden {
				t.Errorf("POST %s with CSRF token %q: %d, want 403", path, token, resp.StatusCode)
			}
			unchanged("POST " + path + " without the session's token")
		}
	}
	// Another site's page, even with the token.
	own := e.URL
	for _, hdr := range [][]string{
		{"Origin", "https://evil.example", "Sec-Fetch-Site", "cross-site"},
		{"Origin", "https://evil.example"},
		{"Sec-Fetch-Site", "same-site"},
		{"Origin", "null"},
	} {
		for path, form := range actions(admin.csrf, fingerprint) {
			resp, body := admin.postForm(path, form, hdr...)
			if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, crossSite) {
				t.Errorf("POST %s with %v: %d %s, want 403 %s", path, hdr, resp.StatusCode, body, crossSite)
			}
			unchanged(fmt.Sprintf("POST %s with %v", path, hdr))
		}
	}
	// The console's own page passes (checked last: it disables dev-1).
	if resp, body := admin.postForm("/devices/dev-1/disable", url.Values{"csrf": {admin.csrf}}, "Origin", own, "Sec-Fetch-Site", "same-origin"); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("a disable from the console's own page: %d %s, want 303", resp.StatusCode, body)
	}

	// No such device: 404, for every action.
	for _, id := range []string{"nope", "old:1"} {
		for path, form := range actions(admin.csrf, fingerprint) {
			path = strings.Replace(path, "dev-1", id, 1)
			if form.Has("confirm") {
				form.Set("confirm", id)
			}
			if resp, body := admin.postForm(path, form); resp.StatusCode != http.StatusNotFound || !strings.Contains(body, `id="error"`) {
				t.Errorf("POST %s: %d, want 404 with #error", path, resp.StatusCode)
			}
		}
		if resp, _ := admin.get("/devices/" + id + "/delete"); resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET /devices/%s/delete: %d, want 404", id, resp.StatusCode)
		}
	}
}

// Disable closes the device's session and refuses its connections; enable
// lets it in again; each form sent twice changes nothing more.
func TestManageDisableEnable(t *testing.T) {
	t.Parallel()
	sys, _, node, devSecret, b := manageFixture(t)
	ws, status := node.Dial(t, "dev-1", devSecret)
	if status != http.StatusSwitchingProtocols {
		t.Fatalf("dev-1 connects: %d", status)
	}
	online(t, sys, "dev-1")
	b.get("/devices/dev-1")
	for range 2 {
		resp, body := b.postForm("/devices/dev-1/disable", url.Values{"csrf": {b.csrf}})
		if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/devices/dev-1" {
			t.Fatalf("disable: %d to %q, want 303 to the device's page; %s", resp.StatusCode, resp.Header.Get("Location"), body)
		}
	}
	testsys.WantClosed(t, ws, protocol.CloseBadMessage, "device disabled")
	if node.Accepts(t, "dev-1", devSecret) {
		t.Fatal("a disabled device connected")
	}
	if !stateOf(t, sys, "dev-1").Disabled {
		t.Fatal("the store does not say dev-1 is disabled")
	}
	_, page := b.get("/devices/dev-1")
	wantIDs(t, "a disabled device's page", page, "enable")
	if strings.Contains(page, `id="disable"`) || !strings.Contains(page, "<dt>Disabled</dt>") {
		t.Errorf("a disabled device's page: want Enable, not Disable, and since when it is disabled")
	}

	for range 2 {
		if resp, _ := b.postForm("/devices/dev-1/enable", url.Values{"csrf": {b.csrf}}); resp.StatusCode != http.StatusSeeOther {
			t.Fatalf("enable: %d, want 303", resp.StatusCode)
		}
	}
	if !node.Accepts(t, "dev-1", devSecret) {
		t.Fatal("an enabled device is refused")
	}
	if _, page := b.get("/devices/dev-1"); !strings.Contains(page, `id="disable"`) {
		t.Errorf("an enabled device's page has no Disable")
	}
}

var newSecret = regexp.MustCompile(`<code id="new-secret">([^<]+)</code>`)

// Rotate shows the new secret once, says that the old one works for the
// CLI's default grace (24h), and both connect meanwhile, as the store
// says; the same form sent again rotates nothing (409).
func TestManageRotate(t *testing.T) {
	t.Parallel()
	sys, _, node, oldSecret, b := manageFixture(t)
	_, page := b.get("/devices/dev-1")
	form := url.Values{"csrf": {b.csrf}, "fingerprint": {formValue(t, page, "fingerprint")}}
	start := time.Now()
	resp, body := b.postForm("/devices/dev-1/rotate", form)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("rotate: %d %s", resp.StatusCode, body)
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("the page with the secret: Cache-Control %q, want no-store", cc)
	}
	m := newSecret.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("the rotation's page shows no #new-secret: %s", body)
	}
	fresh := html.UnescapeString(m[1])
	wantIDs(t, "the rotation's page", body, "grace", "back")
	if !strings.Contains(body, "The old secret keeps working for 24h") || !strings.Contains(body, "only time it is shown") {
		t.Errorf("the rotation's page does not say the old secret works for 24h, nor that the new one is shown once")
	}

	// The store: the new secret, and the old one for 24 hours.
	creds, err := sys.Store.ManyDeviceCredentials(t.Context(), []string{"dev-1"})
	if err != nil {
		t.Fatal(err)
	}
	c := creds["dev-1"]
	if !secret.Matches(fresh, c.SecretHash) || !c.Accepts(oldSecret) || !c.Accepts(fresh) {
		t.Fatalf("the store: want the shown secret as dev-1's and the old one still accepted")
	}
	var until time.Time
	if err := sys.Pool.QueryRow(t.Context(), `SELECT previous_secret_until FROM devices WHERE id = 'dev-1'`).Scan(&until); err != nil {
		t.Fatal(err)
	}
	if d := until.Sub(start); d < 24*time.Hour-time.Minute || d > 24*time.Hour+time.Minute {
		t.Errorf("the old secret works until %v, %v from the rotation; want 24h", until, d)
	}
	for _, s := range []string{oldSecret, fresh} {
		if !node.Accepts(t, "dev-1", s) {
			t.Errorf("dev-1 is refused with the %s secret within the grace", map[bool]string{true: "old", false: "new"}[s == oldSecret])
		}
	}

	// The secret is shown once: not on the device's page.
	if _, page := b.get("/devices/dev-1"); strings.Contains(page, fresh) {
		t.Error("the device's page shows its new secret")
	}
	// The form again (a reload, a double click): 409, nothing rotated,
	// and the old secret still works.
	fp := stateOf(t, sys, "dev-1").Fingerprint
	resp, body = b.postForm("/devices/dev-1/rotate", form)
	if resp.StatusCode != http.StatusConflict || !strings.Contains(body, "sent twice") || newSecret.MatchString(body) {
		t.Errorf("the rotate form again: %d, want 409 saying it was sent twice, with no secret", resp.StatusCode)
	}
	if stateOf(t, sys, "dev-1").Fingerprint != fp || !node.Accepts(t, "dev-1", oldSecret) || !node.Accepts(t, "dev-1", fresh) {
		t.Error("the rotate form sent again changed the secrets")
	}
}

// Delete asks for the device's id to be typed, then removes the device
// with its data, closes its session, and the list says it is gone.
func TestManageDelete(t *testing.T) {
	t.Parallel()
	sys, _, node, devSecret, b := manageFixture(t)
	sys.AddDevice(t, "dev-2")
	ws, _ := node.Dial(t, "dev-1", devSecret)
	online(t, sys, "dev-1")
	if _, err := sys.Pool.Exec(t.Context(), `INSERT INTO events (device_id, name) VALUES ('dev-1', 'a')`); err != nil {
		t.Fatal(err)
	}

	_, page := b.get("/devices/dev-1")
	if !strings.Contains(page, `href="/devices/dev-1/delete"`) {
		t.Fatal("the device's page has no link to delete it")
	}
	resp, page := b.get("/devices/dev-1/delete")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("the delete confirmation: %d", resp.StatusCode)
	}
	wantIDs(t, "the delete confirmation", page, "confirm-delete", "confirm", "cancel-delete", `name="csrf"`)
	for _, typed := range []string{"", "dev-2", "DEV-1", "dev"} {
		resp, body := b.postForm("/devices/dev-1/delete", url.Values{"csrf": {b.csrf}, "confirm": {typed}})
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, `id="error"`) || !strings.Contains(body, `id="confirm"`) {
			t.Errorf("delete with %q typed: %d, want 400 with the confirmation and #error", typed, resp.StatusCode)
		}
		if !stateOf(t, sys, "dev-1").Exists {
			t.Fatalf("delete with %q typed deleted dev-1", typed)
		}
	}

	resp, body := b.postForm("/devices/dev-1/delete", url.Values{"csrf": {b.csrf}, "confirm": {"dev-1"}})
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/devices?deleted=dev-1" {
		t.Fatalf("delete: %d to %q, want 303 to the list; %s", resp.StatusCode, resp.Header.Get("Location"), body)
	}
	testsys.WantClosed(t, ws, protocol.CloseBadMessage, "device deleted")
	if stateOf(t, sys, "dev-1").Exists || node.Accepts(t, "dev-1", devSecret) {
		t.Fatal("dev-1 is still there after its delete")
	}
	var rows int
	if err := sys.Pool.QueryRow(t.Context(), `SELECT count(*) FROM events WHERE device_id = 'dev-1'`).Scan(&rows); err != nil || rows != 0 {
		t.Errorf("the deleted device's events: %d (%v), want none", rows, err)
	}
	_, list := b.get(resp.Header.Get("Location"))
	if !strings.Contains(list, `id="notice"`) || !strings.Contains(list, "<b>dev-1</b> was deleted") || strings.Contains(list, `data-device="dev-1"`) ||
		!strings.Contains(list, `data-device="dev-2"`) {
		t.Errorf("the list after the delete: want #notice saying dev-1 was deleted, and dev-2 alone")
	}
	// A made-up link does not say a device that is there was deleted.
	if _, list := b.get("/devices?deleted=dev-2"); strings.Contains(list, `id="notice"`) {
		t.Error("/devices?deleted=dev-2 says dev-2 was deleted")
	}
	// The form again: the device is gone (404), and nothing else is.
	if resp, _ := b.postForm("/devices/dev-1/delete", url.Values{"csrf": {b.csrf}, "confirm": {"dev-1"}}); resp.StatusCode != http.StatusNotFound {
		t.Errorf("the delete form again: %d, want 404", resp.StatusCode)
	}
	if !stateOf(t, sys, "dev-2").Exists {
		t.Error("dev-2 went with dev-1")
	}
}

// The labels form sets the labels to its key=value lines with the API's
// rules: a bad line shows the form again with the lines as typed and the
// rule broken, and changes nothing; a good one changes only what the
// operator changed from what the page showed.
func TestManageLabels(t *testing.T) {
	t.Parallel()
	sys, _, _, _, b := manageFixture(t)
	if _, err := sys.Store.PatchLabels(t.Context(), "dev-1", false, map[string]string{"room": "kitchen", "floor": "2"}, nil); err != nil {
		t.Fatal(err)
	}
	_, page := b.get("/devices/dev-1")
	wantIDs(t, "the device page", page, "labels-form", "labels-text", "save-labels")
	before := formValue(t, page, "before")
	if before != "floor=2,room=kitchen," || !strings.Contains(page, ">floor=2\nroom=kitchen\n</textarea>") {
		t.Fatalf("the labels form: before %q; want the labels as sorted lines, in the textarea too", before)
	}
	labelsOf := func() map[string]string {
		t.Helper()
		d, err := sys.Store.Device(t.Context(), "dev-1")
		if err != nil {
			t.Fatal(err)
		}
		l := map[string]string{}
		if err := json.Unmarshal(d.Labels, &l); err != nil {
			t.Fatal(err)
		}
		return l
	}
	many := ""
	for i := range db.MaxLabels + 1 {
		many += fmt.Sprintf("k%d=v\n", i)
	}
	for _, c := range []struct{ typed, says string }{
		{"room=kit chen", "a value is at most 63"},
		{"bad key=x", "a key is 1-63"},
		{"-room=x", "a key is 1-63"},
		{"room", `"room": want key=value`},
		{"room=a\nroom=b", "given twice"},
		{"room=" + strings.Repeat("x", 64), "a value is at most 63"},
		{many, "at most 64"},
	} {
		resp, body := b.postForm("/devices/dev-1/labels", url.Values{"csrf": {b.csrf}, "labels": {c.typed}, "before": {before}})
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, `id="labels-error"`) || !strings.Contains(html.UnescapeString(body), c.says) {
			t.Errorf("labels %q: %d, want 400 with #labels-error saying %q", c.typed, resp.StatusCode, c.says)
		}
		if !strings.Contains(html.UnescapeString(body), ">"+c.typed+"</textarea>") {
			t.Errorf("labels %q: the form does not hold the lines as typed", c.typed)
		}
		if l := labelsOf(); len(l) != 2 || l["room"] != "kitchen" || l["floor"] != "2" {
			t.Errorf("labels %q refused, but the labels are now %v", c.typed, l)
		}
	}

	// Another operator adds a label meanwhile: it stays, while this form
	// changes room, removes floor and adds fw.
	if _, err := sys.Store.PatchLabels(t.Context(), "dev-1", false, map[string]string{"zone": "a"}, nil); err != nil {
		t.Fatal(err)
	}
	form := url.Values{"csrf": {b.csrf}, "labels": {"room = hall\r\n\r\nfw=2.1\r\n"}, "before": {before}}
	for range 2 { // sent twice: the same labels
		resp, body := b.postForm("/devices/dev-1/labels", form)
		if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/devices/dev-1" {
			t.Fatalf("labels: %d to %q, want 303 to the device's page; %s", resp.StatusCode, resp.Header.Get("Location"), body)
		}
		if l := labelsOf(); len(l) != 3 || l["room"] != "hall" || l["fw"] != "2.1" || l["zone"] != "a" {
			t.Fatalf("labels after the form: %v, want room=hall, fw=2.1 and zone=a", l)
		}
	}
	if _, page := b.get("/devices/dev-1"); !strings.Contains(page, `data-label="fw"`) || strings.Contains(page, `data-label="floor"`) {
		t.Errorf("the device's page does not show the new labels")
	}
	// All removed.
	_, page = b.get("/devices/dev-1")
	if resp, _ := b.postForm("/devices/dev-1/labels", url.Values{"csrf": {b.csrf}, "labels": {""}, "before": {formValue(t, page, "before")}}); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("removing every label: %d", resp.StatusCode)
	}
	if l := labelsOf(); len(l) != 0 {
		t.Errorf("labels after removing them all: %v", l)
	}
}
