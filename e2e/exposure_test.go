package e2e

// What the public ports show an outsider, against the built binary set up
// as fly.toml sets it up: metrics and profiles only on the ops listeners,
// the HTTPS redirect only to the hosts the edge serves, and the security
// headers on every answer of every listener.

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-iot/switchboard/db/dbtest"
)

// answer is what one GET got.
type answer struct {
	status int
	header http.Header
	body   string
}

// fetch GETs url with client, no redirect followed; hdr holds header
// name/value pairs, "Host" among them.
func fetch(t *testing.T, client *http.Client, url string, hdr ...string) answer {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Host" {
			req.Host = hdr[i+1]
		} else {
			req.Header.Set(hdr[i], hdr[i+1])
		}
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return answer{status: resp.StatusCode, header: resp.Header, body: string(body)}
}

func TestPublicSurface(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	t.Parallel()
	bin := binary(t)
	dbEnv := []string{"DATABASE_URL=" + dbtest.NewEmptyDatabase(t)}
	output(t, bin, dbEnv, "", "migrate")

	nodeAddr, nodeOps, cert := loopback(t), loopback(t), filepath.Join(t.TempDir(), "node.pem")
	node := start(t, bin, "node", append(dbEnv, "CONN_LISTEN="+nodeAddr, "CONN_OPS_LISTEN="+nodeOps, "NODE_ID=surface-node",
		"CONN_TLS=self-signed", "CONN_CERT_OUT="+cert), "conn")
	node.ready(t, "http://"+nodeOps+"/readyz")
	// On Fly, with no EDGE_HOSTS: the app's own name is the one it serves.
	edgeAddr, edgeOps := loopback(t), loopback(t)
	edge := start(t, bin, "edge", append(dbEnv, "EDGE_LISTEN="+edgeAddr, "EDGE_OPS_LISTEN="+edgeOps, "EDGE_ID=surface-edge",
		"FLY_APP_NAME=surface-test"), "edge")
	edge.ready(t, "http://"+edgeAddr+"/readyz")

	plain := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	pem, err := os.ReadFile(cert)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	overTLS := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		TLSClientConfig: &tls.Config{RootCAs: roots}}}
	edgeURL, nodeURL := "http://"+edgeAddr, "https://"+nodeAddr

	t.Run("metrics only on the ops listeners", func(t *testing.T) {
		for _, c := range []struct {
			client *http.Client
			url    string
		}{{plain, edgeURL}, {overTLS, nodeURL}} {
			for _, path := range []string{"/metrics", "/debug/pprof/"} {
				if a := fetch(t, c.client, c.url+path); a.status != http.StatusNotFound || strings.Contains(a.body, "switchboard_") {
					t.Errorf("public GET %s%s: %d %.80q; want 404, nothing of the process", c.url, path, a.status, a.body)
				}
			}
			for _, path := range []string{"/healthz", "/readyz"} {
				if a := fetch(t, c.client, c.url+path); a.status != http.StatusOK {
					t.Errorf("public GET %s%s: %d; the platform's checks need 200", c.url, path, a.status)
				}
			}
		}
		for ops, series := range map[string]string{edgeOps: `switchboard_edge_waiting_requests{edge="surface-edge"}`, nodeOps: `switchboard_conn_sessions{node="surface-node"}`} {
			a := fetch(t, plain, "http://"+ops+"/metrics")
			if a.status != http.StatusOK || !strings.Contains(a.body, series) {
				t.Errorf("ops GET http://%s/metrics: %d, want 200 with %s", ops, a.status, series)
			}
			for _, path := range []string{"/healthz", "/readyz", "/debug/pprof/goroutine?debug=1"} {
				if a := fetch(t, plain, "http://"+ops+path); a.status != http.StatusOK {
					t.Errorf("ops GET http://%s%s: %d, want 200", ops, path, a.status)
				}
			}
		}
	})

	t.Run("the HTTPS redirect names only the edge's hosts", func(t *testing.T) {
		a := fetch(t, plain, edgeURL+"/v1/devices?x=1", "Host", "evil.example", "X-Forwarded-Proto", "http")
		if loc := a.header.Get("Location"); loc != "" || a.status != http.StatusMisdirectedRequest ||
			!strings.Contains(a.body, "/problems/misdirected-request") {
			t.Errorf("plain HTTP for evil.example: %d, Location %q, body %s; want 421 misdirected-request and no redirect", a.status, loc, a.body)
		}
		a = fetch(t, plain, edgeURL+"/v1/devices?x=1", "Host", "surface-test.fly.dev", "X-Forwarded-Proto", "http")
		if loc := a.header.Get("Location"); a.status != http.StatusPermanentRedirect || loc != "https://surface-test.fly.dev/v1/devices?x=1" {
			t.Errorf("plain HTTP for the app's own host: %d, Location %q; want 308 to https://surface-test.fly.dev/v1/devices?x=1", a.status, loc)
		}
		// Let's Encrypt asks for the nodes' domain on port 80: answered
		// whatever the host (none pending here: 404), never redirected.
		a = fetch(t, plain, edgeURL+"/.well-known/acme-challenge/token", "Host", "conn.example.com", "X-Forwarded-Proto", "http")
		if a.status != http.StatusNotFound || a.header.Get("Location") != "" {
			t.Errorf("an ACME challenge for the nodes' domain: %d, Location %q; want 404 from the edge itself", a.status, a.header.Get("Location"))
		}
	})

	t.Run("security headers on every answer", func(t *testing.T) {
		type probe struct {
			name   string
			client *http.Client
			url    string
			hdr    []string
			https  bool // the client reached us over HTTPS
		}
		probes := []probe{
			{"edge over HTTPS (its proxy says)", plain, edgeURL + "/healthz", []string{"X-Forwarded-Proto", "https"}, true},
			{"edge 404 over HTTPS", plain, edgeURL + "/nowhere", []string{"X-Forwarded-Proto", "https"}, true},
			{"edge 401 over HTTPS", plain, edgeURL + "/v1/devices", []string{"X-Forwarded-Proto", "https"}, true},
			{"edge redirect", plain, edgeURL + "/", []string{"Host", "surface-test.fly.dev", "X-Forwarded-Proto", "http"}, false},
			{"edge misdirected", plain, edgeURL + "/", []string{"Host", "evil.example", "X-Forwarded-Proto", "http"}, false},
			{"edge over plain HTTP", plain, edgeURL + "/readyz", nil, false},
			{"edge ops", plain, "http://" + edgeOps + "/metrics", nil, false},
			{"node device port", overTLS, nodeURL + "/readyz", nil, true},
			{"node device port 404", overTLS, nodeURL + "/nowhere", nil, true},
			{"node ops", plain, "http://" + nodeOps + "/readyz", nil, false},
		}
		for _, p := range probes {
			a := fetch(t, p.client, p.url, p.hdr...)
			if got := a.header.Get("X-Content-Type-Options"); got != "nosniff" {
				t.Errorf("%s (%d): X-Content-Type-Options %q, want nosniff", p.name, a.status, got)
			}
			hsts := a.header.Get("Strict-Transport-Security")
			if p.https && hsts != "max-age=31536000" {
				t.Errorf("%s (%d): Strict-Transport-Security %q, want max-age=31536000", p.name, a.status, hsts)
			}
			if !p.https && hsts != "" {
				t.Errorf("%s (%d): Strict-Transport-Security %q over plain HTTP, want none", p.name, a.status, hsts)
			}
		}
	})

	node.stop(t)
	edge.stop(t)
}
