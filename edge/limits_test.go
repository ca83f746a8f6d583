package edge_test

import (
	"fmt"
	"net"
	"net/http"
	"strconv"
	"testing"

	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/edge"
	"github.com/switchboard-iot/switchboard/internal/authguard"
	"github.com/switchboard-iot/switchboard/internal/clientaddr"
)

// newAPIFrom is newAPI whose connections come from a loopback address of
// their own (127.0.0.x): another client, as the edge sees it.
func newAPIFrom(t *testing.T, base, key, localIP string) *api {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(localIP)}, Timeout: requestTimeout}
	tr := &http.Transport{DialContext: d.DialContext}
	t.Cleanup(tr.CloseIdleConnections)
	return &api{t: t, base: base, key: key, hc: &http.Client{Transport: tr}}
}

// wantRetryAfter checks a Retry-After of whole seconds, at least 1.
func wantRetryAfter(t *testing.T, resp *http.Response) int {
	t.Helper()
	n, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	if err != nil || n < 1 {
		t.Fatalf("Retry-After %q, want a whole number of seconds, at least 1", resp.Header.Get("Retry-After"))
	}
	return n
}

// wantRateLimit checks the draft-10 RateLimit fields and returns r.
func wantRateLimit(t *testing.T, resp *http.Response, policy string) int {
	t.Helper()
	if got := resp.Header.Get("RateLimit-Policy"); got != policy {
		t.Fatalf("RateLimit-Policy %q, want %q", got, policy)
	}
	var r, reset int
	if _, err := fmt.Sscanf(resp.Header.Get("RateLimit"), `"requests";r=%d;t=%d`, &r, &reset); err != nil || reset < 0 {
		t.Fatalf("RateLimit %q, want \"requests\";r=N;t=N: %v", resp.Header.Get("RateLimit"), err)
	}
	return r
}

func TestKeyRateLimit(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	// 5 at once, then one every 1000s: nothing refills during the test.
	e := sys.StartEdge(t, "edge-a", func(c *edge.Config) { c.KeyRate, c.KeyBurst = 0.001, 5 })
	sys.AddDevice(t, "dev-1")
	a := newAPI(t, e.URL, sys.APIKey(t))
	b := newAPI(t, e.URL, sys.APIKey(t))
	const policy = `"requests";q=5;w=5000`
	path := "/v1/commands/" + uuid.NewString()

	for i := range 5 {
		resp, body := a.call(http.MethodGet, path, "")
		wantProblem(t, resp, body, http.StatusNotFound, "command-not-found")
		if r := wantRateLimit(t, resp, policy); r != 4-i {
			t.Fatalf("request %d: r=%d, want %d", i+1, r, 4-i)
		}
	}
	for _, req := range [][2]string{{http.MethodGet, path}, {http.MethodPost, "/v1/devices/dev-1/commands"}} {
		resp, body := a.call(req[0], req[1], `{"name":"read"}`)
		p := wantProblem(t, resp, body, http.StatusTooManyRequests, "rate-limited")
		if p.Detail == "" {
			t.Error("429 without a detail")
		}
		if n := wantRetryAfter(t, resp); n < 900 {
			t.Errorf("Retry-After %d, want about 1000 (one request every 1000s)", n)
		}
		if r := wantRateLimit(t, resp, policy); r != 0 {
			t.Errorf("429 with r=%d, want 0", r)
		}
	}
	if n := countCommands(t, sys); n != 0 {
		t.Errorf("%d commands stored by refused requests, want 0", n)
	}
	// Another key has its own budget; health checks have none.
	resp, body := b.call(http.MethodGet, path, "")
	wantProblem(t, resp, body, http.StatusNotFound, "command-not-found")
	if r := wantRateLimit(t, resp, policy); r != 4 {
		t.Errorf("another key: r=%d, want 4", r)
	}
	for range 10 {
		if resp, _ := newAPI(t, e.URL, "").call(http.MethodGet, "/healthz", ""); resp.StatusCode != http.StatusOK {
			t.Fatalf("/healthz: %d", resp.StatusCode)
		}
	}
}

func TestKeyStreamLimit(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", func(c *edge.Config) { c.KeyStreams = 2 })
	sys.AddDevice(t, "dev-1") // offline: its commands stay pending, their streams open
	a := newAPI(t, e.URL, sys.APIKey(t))
	resp, body := a.sendCommand("dev-1", `{"name":"read"}`)
	wantCommand(t, resp, body, http.StatusAccepted)
	events := "/v1/commands/" + commandIDFrom(t, resp).String() + "/events"

	first, sse := a.stream(http.MethodGet, events, "")
	sse.must(t)
	_, sse = a.stream(http.MethodGet, events, "")
	sse.must(t)

	// A third stream, of either kind, is refused before anything is stored.
	resp, body = a.call(http.MethodGet, events, "", "Accept", "text/event-stream")
	wantProblem(t, resp, body, http.StatusTooManyRequests, "too-many-streams")
	wantRetryAfter(t, resp)
	resp, body = a.sendCommand("dev-1", `{"name":"read"}`, "Accept", "text/event-stream")
	wantProblem(t, resp, body, http.StatusTooManyRequests, "too-many-streams")
	if n := countCommands(t, sys); n != 1 {
		t.Errorf("%d commands stored, want the first one only", n)
	}
	// Requests that do not stream are not held to it, and another key has
	// slots of its own.
	resp, body = a.sendCommand("dev-1", `{"name":"read"}`)
	wantCommand(t, resp, body, http.StatusAccepted)
	newAPI(t, e.URL, sys.APIKey(t)).stream(http.MethodGet, events, "")

	// A closed stream frees its slot.
	first.Body.Close()
	testsys.Eventually(t, "a stream slot freed", func() bool {
		resp := a.open(http.MethodGet, events, "", "Accept", "text/event-stream")
		if resp.StatusCode == http.StatusOK {
			return true
		}
		if resp.StatusCode != http.StatusTooManyRequests {
			t.Fatalf("status %d, want 200 or 429", resp.StatusCode)
		}
		resp.Body.Close()
		return false
	})
}

// A thousand wrong keys cost a handful of look-ups; then the address gets
// 429 before any. A key that failed is refused again without a look-up.
func TestAuthFailuresAreThrottled(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	lookups := sys.CountQueries("FROM api_keys")
	const burst = 5
	e := sys.StartEdge(t, "edge-a", func(c *edge.Config) {
		c.AuthGuard = authguard.Config{FailureRate: 0.001, FailureBurst: burst}
	})
	path := "/v1/commands/" + uuid.NewString()

	// One wrong key, a hundred times: one look-up, and no 429 (repeating a
	// failure costs nothing, so it is not charged).
	same := newAPIFrom(t, e.URL, "sbk_wrong", "127.0.0.3")
	for range 100 {
		resp, body := same.call(http.MethodGet, path, "")
		wantProblem(t, resp, body, http.StatusUnauthorized, "unauthorized")
	}
	if n := lookups.Count(); n != 1 {
		t.Fatalf("%d look-ups for one wrong key sent 100 times, want 1", n)
	}

	// A thousand different wrong keys from one address.
	stuffer := newAPIFrom(t, e.URL, "", "127.0.0.1")
	throttled := 0
	for i := range 1000 {
		resp, body := stuffer.call(http.MethodGet, path, "", "Authorization", fmt.Sprintf("Bearer sbk_guess-%d", i))
		switch resp.StatusCode {
		case http.StatusUnauthorized:
			if throttled > 0 {
				t.Fatalf("attempt %d got 401 after %d got 429", i+1, throttled)
			}
		case http.StatusTooManyRequests:
			throttled++
			wantProblem(t, resp, body, http.StatusTooManyRequests, "too-many-auth-failures")
			wantRetryAfter(t, resp)
		default:
			t.Fatalf("attempt %d: status %d; body %s", i+1, resp.StatusCode, body)
		}
	}
	if n := lookups.Count(); n > 1+burst {
		t.Fatalf("%d look-ups for 1000 wrong keys, want at most %d", n-1, burst)
	}
	if throttled != 1000-burst {
		t.Fatalf("%d attempts got 429, want %d", throttled, 1000-burst)
	}

	// The address stays blocked, a right key included (it is not cached);
	// others are not.
	key := sys.APIKey(t)
	resp, body := newAPIFrom(t, e.URL, key, "127.0.0.1").call(http.MethodGet, path, "")
	wantProblem(t, resp, body, http.StatusTooManyRequests, "too-many-auth-failures")
	resp, body = newAPIFrom(t, e.URL, key, "127.0.0.2").call(http.MethodGet, path, "")
	wantProblem(t, resp, body, http.StatusNotFound, "command-not-found")
}

// Fly-Client-IP names the client only when a trusted proxy sends it.
func TestTrustedProxy(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	trusted, err := clientaddr.ParseTrusted("127.0.0.5")
	if err != nil {
		t.Fatal(err)
	}
	e := sys.StartEdge(t, "edge-a", func(c *edge.Config) {
		c.AuthGuard = authguard.Config{FailureRate: 0.001, FailureBurst: 3}
		c.TrustedProxies = trusted
	})
	path := "/v1/commands/" + uuid.NewString()
	attempt := func(c *api, client string, i int) int {
		t.Helper()
		resp, _ := c.call(http.MethodGet, path, "", "Authorization", fmt.Sprintf("Bearer sbk_guess-%s-%d", client, i), clientaddr.Header, client)
		return resp.StatusCode
	}
	proxy := newAPIFrom(t, e.URL, "", "127.0.0.5")
	for i := range 3 {
		if got := attempt(proxy, "198.51.100.7", i); got != http.StatusUnauthorized {
			t.Fatalf("through the proxy, attempt %d: %d, want 401", i+1, got)
		}
	}
	if got := attempt(proxy, "198.51.100.7", 3); got != http.StatusTooManyRequests {
		t.Fatalf("through the proxy, a 4th failure: %d, want 429", got)
	}
	if got := attempt(proxy, "198.51.100.8", 0); got != http.StatusUnauthorized {
		t.Fatalf("through the proxy, another client: %d, want 401", got)
	}

	// From an untrusted peer the header is ignored: it cannot dodge the
	// limit by naming someone else.
	direct := newAPIFrom(t, e.URL, "", "127.0.0.1")
	for i := range 3 {
		if got := attempt(direct, fmt.Sprintf("198.51.100.%d", 20+i), i); got != http.StatusUnauthorized {
			t.Fatalf("direct, attempt %d: %d, want 401", i+1, got)
		}
	}
	if got := attempt(direct, "198.51.100.30", 0); got != http.StatusTooManyRequests {
		t.Fatalf("direct, a 4th failure under another name: %d, want 429", got)
	}
}
