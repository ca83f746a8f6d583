package console_test

import (
	"encoding/json"
	"fmt"
	"html"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/db"
)

// Changing a device's desired state from its page (issue 17): the form
// against a real edge and PostgreSQL over loopback, as a browser sends it.

// desiredOf reads dev-1's desired document and version from the store.
func desiredOf(t *testing.T, sys *testsys.System) (map[string]any, int64) {
	t.Helper()
	st, err := sys.Store.State(t.Context(), "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(st.Desired, &doc); err != nil {
		t.Fatal(err)
	}
	return doc, st.DesiredVersion
}

// desiredFixture is an edge, dev-1 with a desired document at version 1,
// and a browser signed in with a key of scopes read and commands.
func desiredFixture(t *testing.T) (*testsys.System, *testsys.Edge, *browser) {
	t.Helper()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)
	sys.AddDevice(t, "dev-1")
	if _, err := sys.Store.PatchDesired(t.Context(), "dev-1", json.RawMessage(`{"target_celsius":20,"mode":"heat"}`), nil); err != nil {
		t.Fatal(err)
	}
	b := newBrowser(t, e.URL)
	b.signIn(sys.APIKey(t, db.ScopeRead, db.ScopeCommands))
	return sys, e, b
}

// The form applies a merge patch at the version the page showed: set,
// add and remove keys (null), the version grows by one, and the browser
// is sent back to the page (303), which shows the new document.
func TestDesiredForm(t *testing.T) {
	t.Parallel()
	sys, _, b := desiredFixture(t)
	resp, page := b.get("/devices/dev-1")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("the device page: %d", resp.StatusCode)
	}
	wantIDs(t, "the device page (commands)", page, "desired-form", "desired-patch", "desired-error", "save-desired",
		`action="/devices/dev-1/state/desired"`)
	if v := formValue(t, page, "version"); v != "1" {
		t.Fatalf("the desired form's version %q, want 1", v)
	}
	if !strings.Contains(page, "JSON merge patch (RFC 7396)") || !strings.Contains(page, "<code>null</code> is removed") {
		t.Error("the desired form does not say it takes a JSON merge patch, and that null removes a key")
	}
	form := url.Values{"csrf": {b.csrf}, "version": {"1"}, "patch": {"{\r\n  \"target_celsius\": 21.5,\r\n  \"mode\": null,\r\n  \"fan\": {\"speed\": 2}\r\n}"}}
	resp, body := b.postForm("/devices/dev-1/state/desired", form)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/devices/dev-1" {
		t.Fatalf("the desired form: %d to %q, want 303 to the device's page; %s", resp.StatusCode, resp.Header.Get("Location"), body)
	}
	doc, version := desiredOf(t, sys)
	if want := map[string]any{"target_celsius": 21.5, "fan": map[string]any{"speed": 2.0}}; version != 2 || !reflect.DeepEqual(doc, want) {
		t.Fatalf("desired after the form: %v at version %d, want %v at version 2", doc, version, want)
	}
	_, page = b.get("/devices/dev-1")
	if formValue(t, page, "version") != "2" || !strings.Contains(page, `&#34;target_celsius&#34;: 21.5`) {
		t.Errorf("the page after the change: want version 2 in the form and the new document shown")
	}

	// An empty patch changes nothing, the version neither.
	if resp, _ := b.postForm("/devices/dev-1/state/desired", url.Values{"csrf": {b.csrf}, "version": {"2"}, "patch": {"{}"}}); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("an empty patch: %d, want 303", resp.StatusCode)
	}
	if _, v := desiredOf(t, sys); v != 2 {
		t.Errorf("an empty patch moved the version to %d", v)
	}
}

// A form of a version that is no longer the document's (another operator,
// the API or a job changed it meanwhile, or the form was sent twice)
// overwrites nothing: 409, saying it changed meanwhile, with the current
// state and version, and the patch as typed to send again.
func TestDesiredFormConflict(t *testing.T) {
	t.Parallel()
	sys, _, b := desiredFixture(t)
	_, page := b.get("/devices/dev-1")
	shown := formValue(t, page, "version")
	// Another writer, meanwhile.
	if _, err := sys.Store.PatchDesired(t.Context(), "dev-1", json.RawMessage(`{"target_celsius":19}`), nil); err != nil {
		t.Fatal(err)
	}
	typed := `{"target_celsius": 23}`
	resp, body := b.postForm("/devices/dev-1/state/desired", url.Values{"csrf": {b.csrf}, "version": {shown}, "patch": {typed}})
	text := html.UnescapeString(body)
	if resp.StatusCode != http.StatusConflict || !strings.Contains(body, `id="desired-error"`) ||
		!strings.Contains(text, "changed meanwhile") || !strings.Contains(text, "here is the current state") {
		t.Fatalf("a stale version: %d, want 409 with #desired-error saying it changed meanwhile; %s", resp.StatusCode, body)
	}
	if !strings.Contains(text, ">"+typed+"</textarea>") {
		t.Error("the conflict's page does not hold the patch as typed")
	}
	if formValue(t, body, "version") != "2" || !strings.Contains(body, `&#34;target_celsius&#34;: 19`) {
		t.Error("the conflict's page does not show the current state, at version 2")
	}
	doc, version := desiredOf(t, sys)
	if version != 2 || doc["target_celsius"] != 19.0 {
		t.Fatalf("after a stale form: %v at version %d, want the other writer's 19 at version 2", doc, version)
	}
	// Sent again from that page (the current version): applied.
	if resp, _ := b.postForm("/devices/dev-1/state/desired", url.Values{"csrf": {b.csrf}, "version": {"2"}, "patch": {typed}}); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("the patch at the current version: %d, want 303", resp.StatusCode)
	}
	if doc, version := desiredOf(t, sys); version != 3 || doc["target_celsius"] != 23.0 {
		t.Errorf("after the patch at the current version: %v at version %d", doc, version)
	}
}

// A patch that is not a JSON object, or that PostgreSQL cannot store,
// changes nothing: the page again (400) with the patch as typed and what
// is wrong; too large a document says the limit (413).
func TestDesiredFormRefusals(t *testing.T) {
	t.Parallel()
	sys, _, b := desiredFixture(t)
	doc0, v0 := desiredOf(t, sys)
	unchanged := func(what string) {
		t.Helper()
		if doc, v := desiredOf(t, sys); v != v0 || !reflect.DeepEqual(doc, doc0) {
			t.Errorf("%s changed desired: %v at version %d, was %v at %d", what, doc, v, doc0, v0)
		}
	}
	for _, c := range []struct{ patch, says string }{
		{`{"target_celsius": 21`, "not valid JSON"},
		{`{target_celsius: 21}`, "not valid JSON: invalid character"},
		{`[{"op": "replace"}]`, "a merge patch is a JSON object"},
		{`21`, "not a number"},
		{`"x"`, "not a string"},
		{`null`, "not null"},
		{``, "type a merge patch"},
		{`{"a": 1} {"b": 2}`, "more follows the object"},
		{`{"a": 1}}`, "more follows the object"},
		{`{"a": "\u0000"}`, "cannot be stored"},
		{`{"a": 1e999999}`, "cannot be stored"},
	} {
		resp, body := b.postForm("/devices/dev-1/state/desired", url.Values{"csrf": {b.csrf}, "version": {"1"}, "patch": {c.patch}})
		text := html.UnescapeString(body)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, `id="desired-error"`) || !strings.Contains(text, c.says) {
			t.Errorf("patch %q: %d, want 400 with #desired-error saying %q; %s", c.patch, resp.StatusCode, c.says, body)
		}
		if !strings.Contains(text, ">"+c.patch+"</textarea>") {
			t.Errorf("patch %q: the form does not hold the patch as typed", c.patch)
		}
		unchanged(fmt.Sprintf("patch %q", c.patch))
	}
	for _, version := range []string{"", "x", "-1"} {
		if resp, body := b.postForm("/devices/dev-1/state/desired", url.Values{"csrf": {b.csrf}, "version": {version}, "patch": {`{"a":1}`}}); resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "form is damaged") {
			t.Errorf("version %q: %d, want 400 saying the form is damaged", version, resp.StatusCode)
		}
		unchanged("version " + version)
	}
	// Over 32 KiB once applied: the limit.
	big := `{"blob": "` + strings.Repeat("x", db.MaxStateBytes) + `"}`
	if resp, body := b.postForm("/devices/dev-1/state/desired", url.Values{"csrf": {b.csrf}, "version": {"1"}, "patch": {big}}); resp.StatusCode != http.StatusRequestEntityTooLarge ||
		!strings.Contains(body, "the limit is 32 KiB") {
		t.Errorf("a patch over the limit: %d, want 413 saying the limit is 32 KiB", resp.StatusCode)
	}
	unchanged("a patch over the limit")
	// A form far over any patch: 413, not a 403 blaming the token.
	huge := strings.Repeat("x", 300<<10)
	if resp, body := b.postForm("/devices/dev-1/state/desired", url.Values{"csrf": {b.csrf}, "version": {"1"}, "patch": {huge}}); resp.StatusCode != http.StatusRequestEntityTooLarge ||
		!strings.Contains(body, "too large") {
		t.Errorf("a form of 300 KiB: %d, want 413 saying it is too large", resp.StatusCode)
	}
	unchanged("a form of 300 KiB")
	// No such device.
	for _, id := range []string{"nope", "old:1"} {
		if resp, _ := b.postForm("/devices/"+id+"/state/desired", url.Values{"csrf": {b.csrf}, "version": {"0"}, "patch": {`{"a":1}`}}); resp.StatusCode != http.StatusNotFound {
			t.Errorf("the desired form of %s: %d, want 404", id, resp.StatusCode)
		}
	}
}

// The form is shown to a key with the commands scope only, and refused
// (403) to others, to a form without the session's CSRF token, and to
// another site's page even with the token; a refused form changes nothing.
func TestDesiredFormScopeAndCSRF(t *testing.T) {
	t.Parallel()
	sys, e, b := desiredFixture(t)
	_, v0 := desiredOf(t, sys)
	unchanged := func(what string) {
		t.Helper()
		if _, v := desiredOf(t, sys); v != v0 {
			t.Errorf("%s changed desired: version %d, was %d", what, v, v0)
		}
	}
	form := func(csrf string) url.Values {
		return url.Values{"csrf": {csrf}, "version": {"1"}, "patch": {`{"target_celsius": 30}`}}
	}
	for _, scopes := range [][]db.Scope{{db.ScopeRead}, {db.ScopeRead, db.ScopeAdmin}} {
		other := newBrowser(t, e.URL)
		other.signIn(sys.APIKey(t, scopes...))
		resp, page := other.get("/devices/dev-1")
		if resp.StatusCode != http.StatusOK || !strings.Contains(page, `data-state="desired"`) {
			t.Fatalf("the device page for a key of %v: %d, want it with the state", scopes, resp.StatusCode)
		}
		for _, f := range []string{`id="desired-form"`, `/state/desired`} {
			if strings.Contains(page, f) {
				t.Errorf("the device page of a key of %v (no commands) shows %s", scopes, f)
			}
		}
		if resp, body := other.postForm("/devices/dev-1/state/desired", form(other.csrf)); resp.StatusCode != http.StatusForbidden ||
			!strings.Contains(body, "lacks the commands scope") {
			t.Errorf("the desired form by a key of %v: %d, want 403 saying it lacks the commands scope; %s", scopes, resp.StatusCode, body)
		}
		unchanged(fmt.Sprintf("the desired form by a key of %v", scopes))
	}
	// Without the token, or with another session's.
	other := newBrowser(t, e.URL)
	other.signIn(sys.APIKey(t, db.ScopeRead, db.ScopeCommands))
	for _, token := range []string{"", "0123", other.csrf} {
		if resp, _ := b.postForm("/devices/dev-1/state/desired", form(token)); resp.StatusCode != http.StatusForbidden {
			t.Errorf("the desired form with CSRF token %q: %d, want 403", token, resp.StatusCode)
		}
		unchanged("the desired form without the session's token")
	}
	// Another site's page, even with the token.
	for _, hdr := range [][]string{
		{"Origin", "https://evil.example", "Sec-Fetch-Site", "cross-site"},
		{"Sec-Fetch-Site", "same-site"},
		{"Origin", "null"},
	} {
		if resp, body := b.postForm("/devices/dev-1/state/desired", form(b.csrf), hdr...); resp.StatusCode != http.StatusForbidden || !strings.Contains(body, crossSite) {
			t.Errorf("the desired form with %v: %d %s, want 403 %s", hdr, resp.StatusCode, body, crossSite)
		}
		unchanged(fmt.Sprintf("the desired form with %v", hdr))
	}
	// The console's own page passes.
	if resp, _ := b.postForm("/devices/dev-1/state/desired", form(b.csrf), "Origin", e.URL, "Sec-Fetch-Site", "same-origin"); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("the desired form from the console's own page: %d, want 303", resp.StatusCode)
	}
}
