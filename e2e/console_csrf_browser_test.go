package e2e

import (
	"context"
	"fmt"
	"html"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/secret"
	"github.com/switchboard-iot/switchboard/internal/testkit/browsertest"
)

// TestLoginCSRFInBrowser: another site's page posts the attacker's API key
// to the console's sign-in (login CSRF). A real Chromium sends it with
// the headers it sends any cross-site form; the edge must start no session,
// or the victim would go on working in the attacker's account. Not
// parallel, as TestConsoleInBrowser.
func TestLoginCSRFInBrowser(t *testing.T) {
	sys := testsys.New(t)
	attackerKey := secret.New("sbk_")
	if _, err := sys.Store.AddAPIKey(context.Background(), db.NewAPIKey{Name: "attacker", KeyHash: secret.Hash(attackerKey)}); err != nil {
		t.Fatal(err)
	}
	ed := sys.StartEdge(t, "edge-a", nil)

	// The attacker's site: loopback by its other name, so another site
	// to the browser (the edge is at 127.0.0.1).
	page := fmt.Sprintf(`<!doctype html><title>Win a prize</title>
<form method="post" action="%s/sign-in"><input type="hidden" name="key" value="%s"><button id="go">Claim</button></form>`,
		html.EscapeString(ed.URL), html.EscapeString(attackerKey))
	site := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write([]byte(page))
	}))
	t.Cleanup(site.Close)

	b := browsertest.Start(t)
	b.Navigate(strings.Replace(site.URL, "127.0.0.1", "localhost", 1))
	b.ClickAndLoad("#go")
	b.Screenshot("login-csrf-answer")
	var answer string
	b.Eval(`document.body.innerText`, &answer)
	if !strings.Contains(answer, "cross-site-request") {
		t.Errorf("the edge's answer to the attacker's form: %q, want the cross-site-request problem", answer)
	}

	// The victim opens the console: not signed in as anyone.
	b.Navigate(ed.URL + "/")
	if p := b.Path(); !strings.HasPrefix(p, "/sign-in") {
		var who string
		b.Eval(`(document.querySelector("#key-name") || {}).textContent || ""`, &who)
		t.Fatalf("after the attacker's form the console opens at %s, signed in as %q; want the sign-in page", p, who)
	}
	// The console's own form still signs this browser in.
	b.Type("#key", sys.APIKey(t))
	b.ClickAndLoad("#sign-in")
	if p := b.Path(); p != "/" {
		t.Fatalf("signing in with the console's form: at %s, want /", p)
	}
	if who := b.Text("#key-name"); who != "test" {
		t.Errorf("signed in as %q, want test", who)
	}
}
