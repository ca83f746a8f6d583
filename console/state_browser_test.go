package console_test

import (
	"encoding/json"
	"testing"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/testkit/browsertest"
)

// The desired form in Chromium: a patch that is not JSON, or not an
// object, is not sent (#desired-error says why, the page stays, the
// state does not change); a good one is sent, applied, and the page shows
// the new version. Not parallel, as TestJobPageInBrowser.
func TestDesiredFormInBrowser(t *testing.T) {
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)
	sys.AddDevice(t, "dev-1")
	if _, err := sys.Store.PatchDesired(t.Context(), "dev-1", json.RawMessage(`{"target_celsius":20}`), nil); err != nil {
		t.Fatal(err)
	}
	key := sys.APIKey(t, db.ScopeRead, db.ScopeCommands)

	b := browsertest.Start(t)
	b.Navigate(e.URL + "/sign-in")
	b.Type("#key", key)
	b.ClickAndLoad("#sign-in")
	b.Navigate(e.URL + "/devices/dev-1")
	b.Need("the desired form", "form#desired-form")
	b.Need("no error yet", "#desired-error[hidden]")
	for _, c := range []struct{ typed, says string }{
		{`{"target_celsius": `, "Not sent: not valid JSON"},
		{`[1, 2]`, "Not sent: a merge patch is a JSON object"},
	} {
		b.Type("#desired-patch", c.typed)
		b.Click("#save-desired")
		b.WaitFor("the inline error for "+c.typed, "#desired-error", `!el.hidden && el.textContent.startsWith(`+jsQuote(c.says)+`)`)
		if p := b.Path(); p != "/devices/dev-1" {
			t.Fatalf("after a bad patch the browser is at %s", p)
		}
	}
	b.Screenshot("desired-refused")
	if _, v := desiredOf(t, sys); v != 1 {
		t.Fatalf("a refused patch was sent: desired version %d", v)
	}

	b.Type("#desired-patch", `{"target_celsius": 22, "mode": "eco"}`)
	b.ClickAndLoad("#save-desired")
	b.WaitFor("the new version in the form", `input[name="version"]`, `el.value === "2"`)
	b.Need("no error", "#desired-error[hidden]")
	if doc, v := desiredOf(t, sys); v != 2 || doc["target_celsius"] != 22.0 || doc["mode"] != "eco" {
		t.Errorf("after the form: %v at version %d", doc, v)
	}
	b.Screenshot("desired-applied")
	if errs := b.PageErrors(); len(errs) > 0 {
		t.Errorf("page errors: %v", errs)
	}
}

// jsQuote writes s as a JavaScript string literal.
func jsQuote(s string) string {
	out, _ := json.Marshal(s)
	return string(out)
}
