package console_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/console"
	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/db/dbtest"
	"github.com/switchboard-iot/switchboard/device"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

func TestMain(m *testing.M) { os.Exit(dbtest.Main(m)) }

// browser is a plain HTTP client with a cookie jar, as a browser signs in:
// it does not follow redirects, so a test sees each 303.
type browser struct {
	t    *testing.T
	base string
	hc   *http.Client
	csrf string // the session's token, read from the last page
}

func newBrowser(t *testing.T, base string) *browser {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &browser{t: t, base: base, hc: &http.Client{Transport: tr, Jar: jar,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

var csrfAttr = regexp.MustCompile(`data-csrf="([0-9a-f]+)"`)

// do makes a request; hdr holds header name/value pairs.
func (b *browser) do(method, path string, body io.Reader, hdr ...string) (*http.Response, string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.t.Context(), 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, b.base+path, body)
	if err != nil {
		b.t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := b.hc.Do(req)
	if err != nil {
		b.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		b.t.Fatal(err)
	}
	if m := csrfAttr.FindSubmatch(out); m != nil {
		b.csrf = string(m[1])
	}
	return resp, string(out)
}

func (b *browser) get(path string) (*http.Response, string) {
	b.t.Helper()
	return b.do(http.MethodGet, path, nil)
}

func (b *browser) postForm(path string, form url.Values, hdr ...string) (*http.Response, string) {
	b.t.Helper()
	return b.do(http.MethodPost, path, strings.NewReader(form.Encode()), append([]string{"Content-Type", "application/x-www-form-urlencoded"}, hdr...)...)
}

// signIn pastes key into the sign-in form and expects a session.
func (b *browser) signIn(key string) *http.Response {
	b.t.Helper()
	resp, body := b.postForm("/sign-in", url.Values{"key": {key}})
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/" {
		b.t.Fatalf("sign in: %d to %q, want 303 to /; body %s", resp.StatusCode, resp.Header.Get("Location"), body)
	}
	if _, body := b.get("/"); b.csrf == "" {
		b.t.Fatalf("the overview after signing in has no CSRF token: %s", body)
	}
	return resp
}

func sessionCookie(t *testing.T, resp *http.Response) *http.Cookie {
	t.Helper()
	for _, c := range resp.Cookies() {
		if c.Name == console.Cookie {
			return c
		}
	}
	t.Fatalf("no %s cookie in %v", console.Cookie, resp.Header["Set-Cookie"])
	return nil
}

// wantIDs checks that a page holds an element with each id (or other
// attribute selector written as name="value").
func wantIDs(t *testing.T, page, body string, ids ...string) {
	t.Helper()
	for _, id := range ids {
		attr := `id="` + id + `"`
		if strings.Contains(id, "=") {
			attr = id
		}
		if !strings.Contains(body, attr) {
			t.Errorf("%s: no %s", page, attr)
		}
	}
}

func TestSignIn(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)

	// Not signed in: every page sends the browser to the sign-in form.
	b := newBrowser(t, e.URL)
	for _, p := range []string{"/", "/devices", "/devices/x", "/jobs", "/jobs/x"} {
		if resp, _ := b.get(p); resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/sign-in" {
			t.Errorf("GET %s signed out: %d to %q, want 303 to /sign-in", p, resp.StatusCode, resp.Header.Get("Location"))
		}
	}
	resp, body := b.get("/sign-in")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /sign-in: %d", resp.StatusCode)
	}
	wantIDs(t, "/sign-in", body, "key", "sign-in", `name="key"`)
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
		t.Errorf("CSP %q, want the pages kept to this host", csp)
	}

	// Unknown, revoked and expired keys: the form again, with the reason.
	revoked := sys.APIKey(t)
	if _, _, err := sys.Store.RevokeAPIKey(context.Background(), "test"); err != nil {
		t.Fatal(err)
	}
	expired := secret.New("sbk_")
	if _, err := sys.Store.AddAPIKey(context.Background(), db.NewAPIKey{Name: "old", KeyHash: secret.Hash(expired), TTL: time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ name, key, says string }{
		{"unknown", "sbk_nope", "Unknown"}, {"revoked", revoked, "revoked"}, {"expired", expired, "expired"}, {"empty", "", "Paste"},
	} {
		resp, body := b.postForm("/sign-in", url.Values{"key": {c.key}})
		if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(body, `id="error"`) || !strings.Contains(body, c.says) {
			t.Errorf("%s key: %d, want 401 with #error saying %q; body %s", c.name, resp.StatusCode, c.says, body)
		}
		if len(resp.Cookies()) != 0 {
			t.Errorf("%s key: cookies %v, want none", c.name, resp.Cookies())
		}
	}

	// A good key: a strict cookie, not Secure over plain HTTP...
	key := sys.APIKey(t)
	ck := sessionCookie(t, b.signIn(key))
	if !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Path != "/" || ck.Secure {
		t.Errorf("cookie %+v: want HttpOnly, SameSite=Strict, Path=/, not Secure over plain HTTP", ck)
	}
	if len(ck.Value) != 64 {
		t.Errorf("cookie value %q: want 256 random bits in hex", ck.Value)
	}
	var stored int
	if err := sys.Pool.QueryRow(context.Background(), `SELECT count(*) FROM console_sessions WHERE id_hash = $1 AND expires_at > now() + interval '11 hours'`, secret.Hash(ck.Value)).Scan(&stored); err != nil || stored != 1 {
		t.Errorf("sessions stored by the cookie's digest for 12 h: %d (%v), want 1", stored, err)
	}
	// ...and Secure behind a TLS-terminating proxy.
	b2 := newBrowser(t, e.URL)
	resp, _ = b2.postForm("/sign-in", url.Values{"key": {key}}, "X-Forwarded-Proto", "https")
	if ck := sessionCookie(t, resp); !ck.Secure || !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode {
		t.Errorf("cookie over HTTPS %+v: want Secure, HttpOnly, SameSite=Strict", ck)
	}
}

func TestSignInLink(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)
	sys.APIKey(t)
	var keyID int64
	if err := sys.Pool.QueryRow(context.Background(), `SELECT id FROM api_keys`).Scan(&keyID); err != nil {
		t.Fatal(err)
	}
	path, err := console.NewSignInLink(context.Background(), sys.Store, keyID)
	if err != nil {
		t.Fatal(err)
	}
	b := newBrowser(t, e.URL)
	resp, body := b.get(path)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/" {
		t.Fatalf("GET %s: %d to %q, want 303 to /; %s", path, resp.StatusCode, resp.Header.Get("Location"), body)
	}
	sessionCookie(t, resp)
	if resp, body := b.get("/"); resp.StatusCode != http.StatusOK || !strings.Contains(body, `id="online-count"`) {
		t.Fatalf("overview after the link: %d %s", resp.StatusCode, body)
	}
	// Once only, in any browser; an expired or unknown link neither. Each
	// is a page (not JSON) that says so and links to the sign-in form.
	expired := secret.RandomHex(32)
	if err := sys.Store.CreateConsoleLink(context.Background(), secret.Hash(expired), keyID, -time.Second); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{path, "/sign-in/" + expired, "/sign-in/0123"} {
		resp, body := newBrowser(t, e.URL).get(p)
		if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(body, `id="error"`) || len(resp.Cookies()) != 0 {
			t.Errorf("GET %s again: %d, cookies %v; want 401 with #error and no cookie", p, resp.StatusCode, resp.Cookies())
		}
		if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") || !strings.Contains(body, `id="link-spent"`) ||
			!strings.Contains(body, `<a id="sign-in-again" href="/sign-in">`) || !strings.Contains(body, "used already, has expired") {
			t.Errorf("GET %s again: %s, want a page saying the link was used or expired, with a link to sign in; %s", p, ct, body)
		}
	}
}

// TestCookieAPI: the API takes the session cookie in place of a key; a
// request that changes something needs the CSRF token too; sign-out and
// revocation end it.
func TestCookieAPI(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)
	sys.AddDevice(t, "dev-1")
	b := newBrowser(t, e.URL)
	b.signIn(sys.APIKey(t))

	if resp, body := b.get("/v1/devices/dev-1"); resp.StatusCode != http.StatusOK || !strings.Contains(body, `"dev-1"`) {
		t.Fatalf("GET /v1/devices/dev-1 with the cookie: %d %s", resp.StatusCode, body)
	}
	cmd := `{"name":"hello"}`
	for _, token := range []string{"", "wrong"} {
		resp, body := b.do(http.MethodPost, "/v1/devices/dev-1/commands", strings.NewReader(cmd), "Content-Type", "application/json", "X-CSRF-Token", token)
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "problems/csrf-token-invalid") {
			t.Errorf("POST with the cookie and token %q: %d %s, want 403 csrf-token-invalid", token, resp.StatusCode, body)
		}
	}
	resp, body := b.do(http.MethodPost, "/v1/devices/dev-1/commands", strings.NewReader(cmd), "Content-Type", "application/json", "X-CSRF-Token", b.csrf)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST with the cookie and its token: %d %s, want 202", resp.StatusCode, body)
	}
	var c struct{ ID string }
	if err := json.Unmarshal([]byte(body), &c); err != nil || c.ID == "" {
		t.Fatalf("202 body %s: %v", body, err)
	}
	// The device page lists it.
	if _, page := b.get("/devices/dev-1"); !strings.Contains(page, `data-command="`+c.ID+`"`) {
		t.Errorf("device page without the command %s", c.ID)
	}

	// Sign-out is a form with the token: without it, nothing happens.
	if resp, _ := b.postForm("/sign-out", url.Values{}); resp.StatusCode != http.StatusForbidden {
		t.Errorf("sign-out without the token: %d, want 403", resp.StatusCode)
	}
	if resp, _ := b.get("/"); resp.StatusCode != http.StatusOK {
		t.Fatalf("after a refused sign-out: %d, want still signed in", resp.StatusCode)
	}
	// Keep the cookie, as a thief would, to try it after.
	u, _ := url.Parse(e.URL)
	old := b.hc.Jar.Cookies(u)
	resp, _ = b.postForm("/sign-out", url.Values{"csrf": {b.csrf}})
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/sign-in" {
		t.Fatalf("sign-out: %d to %q, want 303 to /sign-in", resp.StatusCode, resp.Header.Get("Location"))
	}
	if ck := sessionCookie(t, resp); ck.MaxAge >= 0 {
		t.Errorf("sign-out cookie %+v: want it deleted", ck)
	}
	b.hc.Jar.SetCookies(u, old)
	if resp, _ := b.get("/devices"); resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/sign-in" {
		t.Errorf("a page with the old cookie: %d to %q, want 303 to /sign-in", resp.StatusCode, resp.Header.Get("Location"))
	}
	b.hc.Jar.SetCookies(u, old) // the page dropped it
	if resp, body := b.get("/v1/devices/dev-1"); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("the API with the old cookie: %d %s, want 401", resp.StatusCode, body)
	}

	// A revoked key's sessions stop, on the pages and the API.
	b = newBrowser(t, e.URL)
	b.signIn(sys.APIKey(t, db.ScopeRead))
	if resp, _ := b.get("/v1/devices/dev-1"); resp.StatusCode != http.StatusOK {
		t.Fatalf("before the revocation: %d", resp.StatusCode)
	}
	var id string
	if err := sys.Pool.QueryRow(context.Background(), `SELECT max(id)::text FROM api_keys`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	if _, _, err := sys.Store.RevokeAPIKey(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	testsys.EventuallyWithin(t, 3*time.Second, "the API to refuse a revoked key's session", func() bool {
		resp, _ := b.get("/v1/devices/dev-1")
		return resp.StatusCode == http.StatusUnauthorized
	})
	if resp, _ := b.get("/"); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("a page of a revoked key's session: %d, want 303", resp.StatusCode)
	}
}

// TestScopes: the key's scopes decide what the console shows.
func TestScopes(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)
	sys.AddDevice(t, "dev-1")

	reader := newBrowser(t, e.URL)
	reader.signIn(sys.APIKey(t, db.ScopeRead))
	resp, body := reader.get("/devices/dev-1")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("device page for a read key: %d", resp.StatusCode)
	}
	wantIDs(t, "device page (read)", body, "presence", "events")
	for _, hidden := range []string{`id="command"`, `id="send"`, `href="/jobs"`} {
		if strings.Contains(body, hidden) {
			t.Errorf("a read-only key's device page shows %s", hidden)
		}
	}
	if resp, _ := reader.get("/jobs"); resp.StatusCode != http.StatusForbidden {
		t.Errorf("/jobs for a read-only key: %d, want 403", resp.StatusCode)
	}

	commander := newBrowser(t, e.URL)
	commander.signIn(sys.APIKey(t, db.ScopeCommands))
	resp, body = commander.get("/devices")
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "may not read devices") {
		t.Errorf("/devices for a commands-only key: %d, want 403 saying the key may not read devices", resp.StatusCode)
	}
	if resp, body := commander.get("/jobs"); resp.StatusCode != http.StatusOK || !strings.Contains(body, `id="new-job"`) {
		t.Errorf("/jobs for a commands key: %d", resp.StatusCode)
	}
}

// TestPages renders each page of a live system and checks the ids the
// browser tests rely on.
func TestPages(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)
	b := newBrowser(t, e.URL)
	b.signIn(sys.APIKey(t))

	// No device yet: the empty states say what to run.
	for _, p := range []string{"/", "/devices"} {
		_, body := b.get(p)
		if !strings.Contains(body, `id="empty-devices"`) || !strings.Contains(body, "switchboard devices add my-device") ||
			!strings.Contains(body, "devices import") {
			t.Errorf("%s with no device: no #empty-devices with the command to run", p)
		}
	}

	n := sys.StartNode(t, "node-a", nil)
	devSecret := sys.AddDevice(t, "dev-1")
	sys.AddDevice(t, "dev-2")
	if _, err := sys.Store.PatchDesired(context.Background(), "dev-1", json.RawMessage(`{"target_celsius":21}`), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := sys.Store.PatchLabels(context.Background(), "dev-1", false, map[string]string{"room": "kitchen"}, nil); err != nil {
		t.Fatal(err)
	}
	d := testsys.StartDevice(t, n, "dev-1", devSecret, map[string]device.HandlerFunc{
		"echo": func(_ context.Context, args json.RawMessage) (any, error) { return args, nil },
	})
	if err := d.Event(context.Background(), "telemetry", map[string]float64{"celsius": 21.5}); err != nil {
		t.Fatal(err)
	}
	testsys.Eventually(t, "the event stored", func() bool {
		_, body := b.get("/devices/dev-1")
		return strings.Contains(body, `data-event="telemetry"`)
	})
	resp, body := b.do(http.MethodPost, "/v1/devices/dev-1/commands?wait=10s", strings.NewReader(`{"name":"echo","args":{"x":1}}`),
		"Content-Type", "application/json", "X-CSRF-Token", b.csrf)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("command: %d %s", resp.StatusCode, body)
	}

	resp, body = b.get("/")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/: %d", resp.StatusCode)
	}
	wantIDs(t, "/", body, "online-count", "offline-count", "regions", "nodes", "jobs-running", "chart-rate", "chart-latency",
		"banner-db", "banner-live", "sign-out", `data-node="node-a"`, `href="/devices"`, `href="/jobs"`, `name="csrf"`)
	if !regexp.MustCompile(`id="online-count">1<`).MatchString(body) || !regexp.MustCompile(`id="offline-count">1<`).MatchString(body) {
		t.Errorf("/: want 1 online and 1 offline")
	}
	var o db.Overview
	if resp, body := b.get("/console/api/overview"); resp.StatusCode != http.StatusOK || json.Unmarshal([]byte(body), &o) != nil ||
		o.Online != 1 || o.Offline != 1 || len(o.Nodes) != 1 || o.Nodes[0].Sessions != 1 {
		t.Errorf("/console/api/overview: %d %s", resp.StatusCode, body)
	}

	_, body = b.get("/devices")
	wantIDs(t, "/devices", body, "filter", "devices", "total", `data-device="dev-1"`, `data-device="dev-2"`, `name="q"`, `name="online"`, `name="region"`, `name="label"`,
		`href="/devices/dev-1"`)
	if !strings.Contains(body, `<td class="status on">online</td>`) || !strings.Contains(body, `<td class="status off">offline</td>`) {
		t.Errorf("/devices: want a td.status online and one offline")
	}
	_, body = b.get("/devices?online=true&label=room%3Dkitchen")
	if !strings.Contains(body, `data-device="dev-1"`) || strings.Contains(body, `data-device="dev-2"`) {
		t.Errorf("/devices filtered: want dev-1 alone")
	}
	if resp, body := b.get("/devices?label=%3D%3D%3D"); resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, `id="error"`) {
		t.Errorf("/devices with a bad label: %d, want 400 with #error", resp.StatusCode)
	}
	// Pages: one device a page is too few to test with 50 a page; check
	// the keyset link by starting after dev-1.
	if _, body := b.get("/devices?after=dev-1"); strings.Contains(body, `data-device="dev-1"`) || !strings.Contains(body, `data-device="dev-2"`) {
		t.Errorf("/devices?after=dev-1: want dev-2 alone")
	}

	_, body = b.get("/devices/dev-1")
	wantIDs(t, "/devices/dev-1", body, "presence", "sessions", "labels", "latest", "events", "commands", "command", "command-name",
		"command-args", "send", "args-error", "command-status", "command-steps", "command-result", `data-event="telemetry"`,
		`data-event-id="`, `data-command="`, `data-label="room"`, `<option value="echo">`,
		`data-connected="yes"`, `data-page="device"`, // not data-online: html/template reads on* attributes as script
		"state", `data-state="desired"`, `data-state="delta"`)
	if !strings.Contains(body, `{&#34;target_celsius&#34;: 21}`) {
		t.Errorf("/devices/dev-1: the desired state is not shown")
	}

	if resp, _ := b.get("/devices/nope"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("/devices/nope: %d, want 404", resp.StatusCode)
	}

	_, body = b.get("/jobs")
	wantIDs(t, "/jobs", body, "new-job", "target-kind", "target-value", "job-name", "job-args", "job-rate", "start-job", "jobs", "job-error")
	resp, body = b.do(http.MethodPost, "/v1/jobs", strings.NewReader(`{"name":"echo","target":{"label":"room=kitchen"},"rate":100}`),
		"Content-Type", "application/json", "X-CSRF-Token", b.csrf)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST /v1/jobs: %d %s", resp.StatusCode, body)
	}
	var job struct{ ID string }
	_ = json.Unmarshal([]byte(body), &job)
	if _, body := b.get("/jobs"); !strings.Contains(body, `data-job="`+job.ID+`"`) {
		t.Errorf("/jobs without the new job")
	}
	_, body = b.get("/jobs/" + job.ID)
	wantIDs(t, "/jobs/{id}", body, "job-progress", "job-status", "cancel-job", `data-count="pending"`, `data-count="delivered"`,
		`data-count="done"`, `data-count="failed"`, `data-count="expired"`, `data-count="unsent"`)
	if resp, _ := b.get("/jobs/00000000-0000-0000-0000-000000000000"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown job: %d, want 404", resp.StatusCode)
	}

	// The stats: 15 minutes of 30-second buckets, the command in one.
	var stats struct {
		Buckets []db.StatBucket
	}
	testsys.Eventually(t, "the commands in the stats", func() bool {
		resp, body := b.get("/console/api/stats")
		if resp.StatusCode != http.StatusOK || json.Unmarshal([]byte(body), &stats) != nil {
			t.Fatalf("/console/api/stats: %d %s", resp.StatusCode, body)
		}
		total := 0
		for _, s := range stats.Buckets {
			total += s.Count
		}
		return total >= 1
	})
	if len(stats.Buckets) != 30 || stats.Buckets[29].Start.Sub(stats.Buckets[0].Start) != 29*30*time.Second {
		t.Errorf("stats: %d buckets from %v, want 30 of 30 s", len(stats.Buckets), stats.Buckets[0].Start)
	}

	// The presence history: once the device is gone, its ended session.
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	testsys.Eventually(t, "the ended session on the device page", func() bool {
		_, body := b.get("/devices/dev-1")
		return strings.Contains(body, `data-session="`) && !strings.Contains(body, ">connected</td>") &&
			strings.Contains(body, `<dd class="status off">offline</dd>`)
	})

	// Static files are served, and hold no reference to another host.
	for _, f := range []string{"/static/app.js", "/static/app.css"} {
		resp, body := b.get(f)
		if resp.StatusCode != http.StatusOK || strings.Contains(body, "https://") || strings.Contains(body, "//cdn") {
			t.Errorf("%s: %d, or it names another host", f, resp.StatusCode)
		}
	}
}

// TestDatabaseDown: a page whose store calls fail says so in #banner-db,
// with 503, instead of a bare 500.
func TestDatabaseDown(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	pool, err := pgxpool.New(context.Background(), sys.DBURL)
	if err != nil {
		t.Fatal(err)
	}
	pool.Close() // every query now fails
	r := chi.NewRouter()
	console.New(console.Config{Store: db.NewStore(pool)}).Register(r)
	for _, p := range []string{"/", "/devices", "/console/api/overview"} {
		req := httptest.NewRequest(http.MethodGet, p, nil)
		req.AddCookie(&http.Cookie{Name: console.Cookie, Value: "0123"})
		w := httptest.NewRecorder()
		r.ServeHTTP(w, req)
		if w.Code != http.StatusServiceUnavailable || !strings.Contains(w.Body.String(), "The database is unreachable") {
			t.Errorf("GET %s with the database down: %d %s, want 503 saying the database is unreachable", p, w.Code, w.Body)
		}
		if p != "/console/api/overview" && !strings.Contains(w.Body.String(), `id="banner-db" class="banner" role="alert"`) {
			t.Errorf("GET %s: #banner-db not shown", p)
		}
	}
}
