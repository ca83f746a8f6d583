package edge_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/edge"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

// Each route needs its scope: a key without it gets 403 and changes
// nothing; a key with it gets through.
func TestScopes(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)
	sys.AddDevice(t, "dev-1")
	missing := uuid.NewString()

	routes := []struct {
		scope        db.Scope
		method, path string
		body         string // "%s" becomes the key's scope: each adds its own device
		allowed      int    // the status with the scope
	}{
		{db.ScopeAdmin, http.MethodPost, "/v1/devices", `{"id":"new-%s"}`, http.StatusCreated},
		{db.ScopeRead, http.MethodGet, "/v1/devices/dev-1", "", http.StatusOK},
		{db.ScopeRead, http.MethodGet, "/v1/devices?label=room", "", http.StatusOK},
		{db.ScopeAdmin, http.MethodPatch, "/v1/devices/dev-1", `{"labels":{"by":"%s"}}`, http.StatusOK},
		{db.ScopeCommands, http.MethodPost, "/v1/devices/dev-1/commands", `{"name":"read"}`, http.StatusAccepted},
		{db.ScopeCommands, http.MethodGet, "/v1/commands/" + missing, "", http.StatusNotFound},
		{db.ScopeCommands, http.MethodGet, "/v1/commands/" + missing + "/events", "", http.StatusNotFound},
	}
	devices := func() int { return count(t, sys, `SELECT count(*) FROM devices`) }
	for _, scope := range db.AllScopes {
		c := newAPI(t, e.URL, sys.APIKey(t, scope))
		for _, rt := range routes {
			body := strings.ReplaceAll(rt.body, "%s", string(scope))
			devicesBefore, commandsBefore := devices(), countCommands(t, sys)
			resp, b := c.call(rt.method, rt.path, body)
			if rt.scope == scope {
				if resp.StatusCode != rt.allowed {
					t.Errorf("%s key, %s %s: status %d, want %d; body %s", scope, rt.method, rt.path, resp.StatusCode, rt.allowed, b)
				}
				continue
			}
			p := wantProblem(t, resp, b, http.StatusForbidden, "insufficient-scope")
			if !strings.Contains(p.Detail, `"`+string(rt.scope)+`"`) {
				t.Errorf("403 detail %q does not name the scope %s", p.Detail, rt.scope)
			}
			if got := resp.Header.Get("WWW-Authenticate"); !strings.Contains(got, `error="insufficient_scope"`) || !strings.Contains(got, `scope="`+string(rt.scope)+`"`) {
				t.Errorf("WWW-Authenticate %q, want insufficient_scope and scope=%q", got, rt.scope)
			}
			if devices() != devicesBefore || countCommands(t, sys) != commandsBefore {
				t.Errorf("%s key, %s %s: refused, but something was stored", scope, rt.method, rt.path)
			}
		}
	}

	// No scopes given: all three.
	c := newAPI(t, e.URL, sys.APIKey(t))
	for _, rt := range routes {
		body := strings.ReplaceAll(rt.body, "%s", "all")
		if resp, b := c.call(rt.method, rt.path, body); resp.StatusCode != rt.allowed {
			t.Errorf("key with every scope, %s %s: status %d, want %d; body %s", rt.method, rt.path, resp.StatusCode, rt.allowed, b)
		}
	}

	// A wrong key is 401 before any scope is looked at.
	resp, b := newAPI(t, e.URL, "sbk_nope").call(http.MethodPost, "/v1/devices", `{"id":"x"}`)
	wantProblem(t, resp, b, http.StatusUnauthorized, "unauthorized")
}

func count(t *testing.T, sys *testsys.System, query string) int {
	t.Helper()
	var n int
	if err := sys.Pool.QueryRow(t.Context(), query).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// addKey stores a key and returns it with its record.
func addKey(t *testing.T, sys *testsys.System, nk db.NewAPIKey) (string, db.APIKey) {
	t.Helper()
	key := secret.New("sbk_")
	nk.KeyHash = secret.Hash(key)
	k, err := sys.Store.AddAPIKey(context.Background(), nk)
	if err != nil {
		t.Fatal(err)
	}
	return key, k
}

// An expired key is refused with 401, also when the edge had it cached.
func TestExpiredKey(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", func(cfg *edge.Config) { cfg.APIKeyCache = time.Hour })
	path := "/v1/devices/ghost"

	key, k := addKey(t, sys, db.NewAPIKey{Name: "old", TTL: time.Hour})
	if _, err := sys.Pool.Exec(t.Context(), `UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1`, k.ID); err != nil {
		t.Fatal(err)
	}
	resp, b := newAPI(t, e.URL, key).call(http.MethodGet, path, "")
	if p := wantProblem(t, resp, b, http.StatusUnauthorized, "unauthorized"); !strings.Contains(p.Detail, "expired") {
		t.Errorf("detail %q, want it to say the key expired", p.Detail)
	}

	// A key that expires while cached: refused at its expiry, not when its
	// cache entry lapses (an hour here).
	const ttl = 3 * time.Second
	key, k = addKey(t, sys, db.NewAPIKey{Name: "brief", TTL: ttl})
	c := newAPI(t, e.URL, key)
	if resp, b := c.call(http.MethodGet, path, ""); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("a fresh key: status %d, want 404 (device-not-found); body %s", resp.StatusCode, b)
	}
	testsys.EventuallyWithin(t, 2*ttl+5*time.Second, "the cached key to expire", func() bool {
		resp, _ := c.call(http.MethodGet, path, "")
		return resp.StatusCode == http.StatusUnauthorized
	})
	if time.Now().Before(*k.ExpiresAt) {
		t.Fatalf("refused before its expiry %v", k.ExpiresAt)
	}
}

// A revoked key is refused on every edge within a second, though each had
// it cached for 30s; and an edge whose listener was away drops its cache
// when it reconnects, since the revocation is not replayed.
func TestRevokedKey(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	cache := func(cfg *edge.Config) { cfg.APIKeyCache = 30 * time.Second }
	edges := []*testsys.Edge{sys.StartEdge(t, "edge-a", cache), sys.StartEdge(t, "edge-b", cache)}
	path := "/v1/devices/ghost"
	key, _ := addKey(t, sys, db.NewAPIKey{Name: "leaked"})
	var clients []*api
	for _, e := range edges {
		c := newAPI(t, e.URL, key)
		if resp, b := c.call(http.MethodGet, path, ""); resp.StatusCode != http.StatusNotFound {
			t.Fatalf("%s before the revocation: status %d; body %s", e.ID, resp.StatusCode, b)
		}
		clients = append(clients, c)
	}
	if _, _, err := sys.Store.RevokeAPIKey(context.Background(), "leaked"); err != nil {
		t.Fatal(err)
	}
	revoked := time.Now()
	for i, c := range clients {
		testsys.EventuallyWithin(t, 3*time.Second, edges[i].ID+" to refuse the revoked key", func() bool {
			resp, _ := c.call(http.MethodGet, path, "")
			return resp.StatusCode == http.StatusUnauthorized
		})
	}
	t.Logf("refused on both edges %v after the revocation", time.Since(revoked).Round(time.Millisecond))
	resp, b := clients[1].call(http.MethodGet, path, "")
	if p := wantProblem(t, resp, b, http.StatusUnauthorized, "unauthorized"); !strings.Contains(p.Detail, "revoked") {
		t.Errorf("detail %q, want it to say the key was revoked", p.Detail)
	}

	// A revocation the listener missed: written without a notice, then the
	// edges' listener connections are cut. Each drops its cache when it
	// is back, long before the 30s.
	key2, k2 := addKey(t, sys, db.NewAPIKey{Name: "missed"})
	c := newAPI(t, edges[0].URL, key2)
	if resp, b := c.call(http.MethodGet, path, ""); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("before: status %d; body %s", resp.StatusCode, b)
	}
	if _, err := sys.Pool.Exec(t.Context(), `UPDATE api_keys SET revoked_at = now() WHERE id = $1`, k2.ID); err != nil {
		t.Fatal(err)
	}
	if resp, _ := c.call(http.MethodGet, path, ""); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("without a notice the cached key should still work (else this test proves nothing): %d", resp.StatusCode)
	}
	if _, err := sys.Pool.Exec(t.Context(), `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE datname = current_database() AND application_name = $1`, db.ListenerApplicationName); err != nil {
		t.Fatal(err)
	}
	testsys.EventuallyWithin(t, 10*time.Second, "the cache to be dropped after the listener reconnects", func() bool {
		resp, _ := c.call(http.MethodGet, path, "")
		return resp.StatusCode == http.StatusUnauthorized
	})
}
