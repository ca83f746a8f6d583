package console_test

// The attacks of issue 15 on the console, each against a real edge over
// loopback: login CSRF, cross-site writes with the cookie, floods of
// made-up cookies, bytes that are not text, and what a key without the
// read scope may learn.

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/edge"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

const crossSite = "problems/cross-site-request"

// TestSignInCrossSite: another site's page that posts the attacker's key
// to /sign-in (login CSRF) signs no browser in; the console's own form,
// a typed-in request and a client that sends neither header do.
func TestSignInCrossSite(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)
	key := sys.APIKey(t)
	host := strings.TrimPrefix(e.URL, "http://")

	for _, c := range []struct {
		name string
		hdr  []string
	}{
		{"a cross-site form", []string{"Origin", "https://evil.example", "Sec-Fetch-Site", "cross-site"}},
		{"a browser without Sec-Fetch-Site", []string{"Origin", "https://evil.example"}},
		{"a browser without Origin", []string{"Sec-Fetch-Site", "cross-site"}},
		{"a sibling subdomain", []string{"Origin", "http://other." + host, "Sec-Fetch-Site", "same-site"}},
		{"an opaque origin", []string{"Origin", "null"}},
		{"this host over another scheme", []string{"Origin", "https://" + host}},
		{"plain HTTP to a site behind a TLS proxy", []string{"Origin", "http://" + host, "X-Forwarded-Proto", "https"}},
	} {
		resp, body := newBrowser(t, e.URL).postForm("/sign-in", url.Values{"key": {key}}, c.hdr...)
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, crossSite) {
			t.Errorf("%s: %d %s, want 403 %s", c.name, resp.StatusCode, body, crossSite)
		}
		if len(resp.Cookies()) != 0 {
			t.Errorf("%s: cookies %v, want none", c.name, resp.Cookies())
		}
	}
	for _, c := range []struct {
		name string
		hdr  []string
	}{
		{"the console's own form", []string{"Origin", "http://" + host, "Sec-Fetch-Site", "same-origin"}},
		{"behind a TLS proxy", []string{"Origin", "https://" + host, "Sec-Fetch-Site", "same-origin", "X-Forwarded-Proto", "https"}},
		{"a request the user typed", []string{"Sec-Fetch-Site", "none"}},
		{"a client that is not a browser", nil},
	} {
		resp, body := newBrowser(t, e.URL).postForm("/sign-in", url.Values{"key": {key}}, c.hdr...)
		if resp.StatusCode != http.StatusSeeOther || len(resp.Cookies()) == 0 {
			t.Errorf("%s: %d %s, want 303 with a session", c.name, resp.StatusCode, body)
		}
	}
}

// TestCookieWritesCrossSite: a write with the session cookie and even the
// right CSRF token is refused when a browser says another site sent it.
func TestCookieWritesCrossSite(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)
	sys.AddDevice(t, "dev-1")
	key := sys.APIKey(t)
	b := newBrowser(t, e.URL)
	b.signIn(key)
	own := "http://" + strings.TrimPrefix(e.URL, "http://")

	cmd := `{"name":"hello"}`
	for _, hdr := range [][]string{
		{"Origin", "https://evil.example", "Sec-Fetch-Site", "cross-site"},
		{"Origin", "https://evil.example"},
		{"Sec-Fetch-Site", "cross-site"},
		{"Origin", own, "Sec-Fetch-Site", "same-site"},
	} {
		resp, body := b.do(http.MethodPost, "/v1/devices/dev-1/commands", strings.NewReader(cmd),
			append([]string{"Content-Type", "application/json", "X-CSRF-Token", b.csrf}, hdr...)...)
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, crossSite) {
			t.Errorf("a command with the cookie, its token and %v: %d %s, want 403 %s", hdr, resp.StatusCode, body, crossSite)
		}
		resp, body = b.postForm("/sign-out", url.Values{"csrf": {b.csrf}}, hdr...)
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, crossSite) {
			t.Errorf("sign-out with its token and %v: %d %s, want 403 %s", hdr, resp.StatusCode, body, crossSite)
		}
	}
	if resp, _ := b.get("/"); resp.StatusCode != http.StatusOK {
		t.Fatalf("after the refused sign-outs: %d, want still signed in", resp.StatusCode)
	}
	// The console's own page, and a client with the key in its header
	// (no cookie: no CSRF), whatever Origin it sends.
	resp, body := b.do(http.MethodPost, "/v1/devices/dev-1/commands", strings.NewReader(cmd),
		"Content-Type", "application/json", "X-CSRF-Token", b.csrf, "Origin", own, "Sec-Fetch-Site", "same-origin")
	if resp.StatusCode != http.StatusAccepted {
		t.Errorf("a command from the console's page: %d %s, want 202", resp.StatusCode, body)
	}
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, e.URL+"/v1/devices/dev-1/commands", strings.NewReader(cmd))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Origin", "https://tool.example")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusAccepted {
		t.Errorf("a command with the key in Authorization from another origin: %v %v, want 202", resp, err)
	} else {
		resp.Body.Close()
	}
	resp, _ = b.postForm("/sign-out", url.Values{"csrf": {b.csrf}}, "Origin", own, "Sec-Fetch-Site", "same-origin")
	if resp.StatusCode != http.StatusSeeOther {
		t.Errorf("sign-out from the console's page: %d, want 303", resp.StatusCode)
	}
}

// TestSessionCookieFlood: made-up session cookies on the pages are charged
// to the source address like unknown API keys: past the failure burst the
// address gets 429 before any look-up, on the pages as on the API.
func TestSessionCookieFlood(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)
	b := newBrowser(t, e.URL)
	u, _ := url.Parse(e.URL)
	var redirected, throttled int
	for range 30 {
		b.hc.Jar.SetCookies(u, []*http.Cookie{{Name: "sb_session", Value: secret.RandomHex(32)}})
		resp, body := b.get("/devices")
		switch resp.StatusCode {
		case http.StatusSeeOther:
			redirected++
		case http.StatusTooManyRequests:
			throttled++
			if resp.Header.Get("Retry-After") == "" || !strings.Contains(body, "problems/too-many-auth-failures") {
				t.Errorf("429 without Retry-After or its type: %v %s", resp.Header, body)
			}
		default:
			t.Fatalf("a made-up cookie: %d %s", resp.StatusCode, body)
		}
	}
	if redirected > 20 || throttled < 10 {
		t.Errorf("30 made-up cookies: %d sent to sign in, %d throttled; want at most 20 looked up, the rest 429", redirected, throttled)
	}
	// Sign-out looks cookies up too, and the API shares the address's
	// budget: it is spent.
	if resp, _ := b.postForm("/sign-out", url.Values{"csrf": {"x"}}); resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("sign-out after the flood of cookies: %d, want 429", resp.StatusCode)
	}
	if resp, _ := b.get("/v1/devices"); resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("the API after the flood of cookies: %d, want 429", resp.StatusCode)
	}
}

// TestConsoleKeyRate: the console's JSON endpoints take the key's request
// tokens as /v1 does.
func TestConsoleKeyRate(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", func(c *edge.Config) { c.KeyRate, c.KeyBurst = 0.01, 5 })
	b := newBrowser(t, e.URL)
	b.signIn(sys.APIKey(t))
	for i := range 10 {
		resp, body := b.get("/console/api/overview")
		if resp.StatusCode == http.StatusTooManyRequests {
			if !strings.Contains(body, "problems/rate-limited") || resp.Header.Get("Retry-After") == "" || resp.Header.Get("RateLimit") == "" {
				t.Errorf("429 without its type, Retry-After or RateLimit: %v %s", resp.Header, body)
			}
			if i > 5 {
				t.Errorf("429 after %d requests, want at the 6th at the latest (a burst of 5)", i+1)
			}
			return
		}
		if resp.StatusCode != http.StatusOK || resp.Header.Get("RateLimit") == "" {
			t.Fatalf("GET /console/api/overview: %d, RateLimit %q, want 200 with the RateLimit field", resp.StatusCode, resp.Header.Get("RateLimit"))
		}
	}
	t.Errorf("10 requests of a key with a burst of 5 and no refill: none refused")
}

// TestNotText: bytes that are not text (invalid UTF-8, NUL) in a page's
// address are refused with 400 before the database sees them.
func TestNotText(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)
	sys.AddDevice(t, "dev-1")
	b := newBrowser(t, e.URL)
	b.signIn(sys.APIKey(t))
	for _, p := range []string{"/devices/%FF", "/devices/dev%00", "/devices/%C0%AF", "/devices?region=lab%00", "/devices?region=%C0%AF",
		"/devices?label=room%3D%FF", "/devices?q=dev%00", "/jobs/%FF", "/devices?%FF=1"} {
		resp, body := b.get(p)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, `id="error"`) {
			t.Errorf("GET %s: %d, want 400 with #error; %s", p, resp.StatusCode, body)
		}
	}
	if resp, body := b.get("/console/api/overview?x=%00"); resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "problems/invalid-query") {
		t.Errorf("GET /console/api/overview?x=%%00: %d %s, want 400 invalid-query", resp.StatusCode, body)
	}
	if resp, _ := b.get("/devices/dev-1"); resp.StatusCode != http.StatusOK {
		t.Errorf("GET /devices/dev-1: %d, want 200", resp.StatusCode)
	}
}

// TestOverviewScopes: the fleet overview (devices online, regions, nodes,
// everyone's jobs and commands) is the read scope's; a session of a key
// without it is told so, and its JSON is refused.
func TestOverviewScopes(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)
	sys.StartNode(t, "node-a", nil)
	sys.AddDevice(t, "dev-1")
	fleet := []string{`id="online-count"`, `id="offline-count"`, `id="regions"`, `id="nodes"`, `id="jobs-running"`, `id="chart-rate"`, `data-node="node-a"`}
	for _, scope := range []db.Scope{db.ScopeCommands, db.ScopeAdmin} {
		b := newBrowser(t, e.URL)
		b.signIn(sys.APIKey(t, scope))
		resp, body := b.get("/")
		if resp.StatusCode != http.StatusOK || !strings.Contains(body, `id="no-read"`) {
			t.Errorf("/ for a %s key: %d, want 200 with #no-read saying what it may not see", scope, resp.StatusCode)
		}
		for _, s := range fleet {
			if strings.Contains(body, s) {
				t.Errorf("/ for a %s key shows %s", scope, s)
			}
		}
		if strings.Contains(body, `href="/devices"`) {
			t.Errorf("/ for a %s key links to the devices it may not read", scope)
		}
		for _, p := range []string{"/console/api/overview", "/console/api/stats"} {
			if resp, body := b.get(p); resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "problems/insufficient-scope") {
				t.Errorf("%s for a %s key: %d %s, want 403 insufficient-scope", p, scope, resp.StatusCode, body)
			}
		}
	}
	b := newBrowser(t, e.URL)
	b.signIn(sys.APIKey(t, db.ScopeRead))
	_, body := b.get("/")
	wantIDs(t, "/ for a read key", body, append(fleet, `href="/devices"`)...)
	if strings.Contains(body, `id="no-read"`) {
		t.Errorf("/ for a read key says it may not see the fleet")
	}
	for _, p := range []string{"/console/api/overview", "/console/api/stats"} {
		if resp, body := b.get(p); resp.StatusCode != http.StatusOK {
			t.Errorf("%s for a read key: %d %s, want 200", p, resp.StatusCode, body)
		}
	}
}

// A key without read sees its own jobs only, on the console as on the API
// (docs/api.md, "What each scope may learn"): another key's job is not
// listed and its page is a 404.
func TestJobPagesScopes(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)
	sys.AddDevice(t, "dev-1")
	startJob := func(key, name string) string {
		req, _ := http.NewRequest(http.MethodPost, e.URL+"/v1/jobs", strings.NewReader(`{"name":"`+name+`","target":{"devices":["dev-1"]}}`))
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var j struct{ ID string }
		if err := json.NewDecoder(resp.Body).Decode(&j); err != nil || resp.StatusCode != http.StatusCreated {
			t.Fatalf("POST /v1/jobs: %d %v", resp.StatusCode, err)
		}
		return j.ID
	}
	own, other := sys.APIKey(t, db.ScopeCommands), sys.APIKey(t, db.ScopeCommands, db.ScopeRead)
	ownJob, otherJob := startJob(own, "own_job"), startJob(other, "other_job")

	b := newBrowser(t, e.URL)
	b.signIn(own)
	if _, body := b.get("/jobs"); !strings.Contains(body, ownJob) || strings.Contains(body, otherJob) {
		t.Errorf("/jobs for a commands key: want its job %s and not %s; got %s", ownJob, otherJob, body)
	}
	if resp, _ := b.get("/jobs/" + otherJob); resp.StatusCode != http.StatusNotFound {
		t.Errorf("another key's job page for a commands key: %d, want 404", resp.StatusCode)
	}
	if resp, _ := b.get("/jobs/" + ownJob); resp.StatusCode != http.StatusOK {
		t.Errorf("its own job page for a commands key: %d, want 200", resp.StatusCode)
	}
	b = newBrowser(t, e.URL)
	b.signIn(other)
	if _, body := b.get("/jobs"); !strings.Contains(body, ownJob) || !strings.Contains(body, otherJob) {
		t.Errorf("/jobs for a read key: want both jobs")
	}
}
