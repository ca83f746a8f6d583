package edge_test

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/edge"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

// API keys over HTTP: created, listed a page at a time, revoked, never
// more powerful than the key that made them.

type createdKey struct {
	db.APIKey
	Key string `json:"key"`
}

type keyList struct {
	APIKeys []db.APIKey `json:"apikeys"`
	Next    string      `json:"next"`
}

func TestAPIKeysOverHTTP(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)
	root := newAPI(t, e.URL, sys.APIKey(t)) // every scope

	// Created: 201, the key once, Location; it works with its scopes alone.
	resp, b := root.call(http.MethodPost, "/v1/apikeys", `{"name":" dashboard ","scopes":["read"],"expires_in":"720h"}`)
	k := decode[createdKey](t, resp, b, http.StatusCreated)
	if k.Name != "dashboard" || !slices.Equal(k.Scopes, []db.Scope{db.ScopeRead}) || !strings.HasPrefix(k.Key, "sbk_") ||
		k.ExpiresAt == nil || time.Until(*k.ExpiresAt) < 719*time.Hour || k.RevokedAt != nil {
		t.Fatalf("created %s; want dashboard, read, sbk_…, 30 days", b)
	}
	if loc := resp.Header.Get("Location"); loc != fmt.Sprintf("/v1/apikeys/%d", k.ID) {
		t.Errorf("Location %q", loc)
	}
	dashboard := newAPI(t, e.URL, k.Key)
	if resp, b := dashboard.call(http.MethodGet, "/v1/devices", ""); resp.StatusCode != http.StatusOK {
		t.Fatalf("the new key, GET /v1/devices: %d %s", resp.StatusCode, b)
	}
	resp, b = dashboard.call(http.MethodGet, "/v1/apikeys", "")
	wantProblem(t, resp, b, http.StatusForbidden, "insufficient-scope")

	// Defaults: every scope, no expiry.
	resp, b = root.call(http.MethodPost, "/v1/apikeys", `{"name":"ops"}`)
	if ops := decode[createdKey](t, resp, b, http.StatusCreated); !slices.Equal(ops.Scopes, db.AllScopes) || ops.ExpiresAt != nil {
		t.Fatalf("created %s; want every scope, no expiry", b)
	}

	// Listed a page at a time, oldest first, never with a secret.
	var listed []db.APIKey
	for path, pages := "/v1/apikeys?limit=2", 0; ; pages++ {
		resp, b = root.call(http.MethodGet, path, "")
		page := decode[keyList](t, resp, b, http.StatusOK)
		if strings.Contains(string(b), `"key"`) || strings.Contains(string(b), "sbk_") || strings.Contains(string(b), "hash") {
			t.Fatalf("a listing shows a secret: %s", b)
		}
		listed = append(listed, page.APIKeys...)
		if page.Next == "" {
			if pages != 1 {
				t.Errorf("3 keys by 2 took %d pages, want 2", pages+1)
			}
			break
		}
		path = "/v1/apikeys?limit=2&cursor=" + page.Next
	}
	if len(listed) != 3 || listed[1].ID != k.ID || listed[1].Name != "dashboard" || listed[0].ID >= listed[1].ID {
		t.Fatalf("listed %+v; want the root key, dashboard, ops", listed)
	}
	devicesPage := encodeDevicesCursor(t, root)
	for _, q := range []string{"?limit=0", "?limit=1001", "?cursor=garbage", "?cursor=" + devicesPage, "?name=ops", "?limit=1&limit=2"} {
		resp, b = root.call(http.MethodGet, "/v1/apikeys"+q, "")
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("GET /v1/apikeys%s: %d %s, want 400", q, resp.StatusCode, b)
		}
	}

	// Revoked: 200 with revoked_at; refused at once; a repeat answers the
	// same; an unknown id is 404.
	resp, b = root.call(http.MethodDelete, fmt.Sprintf("/v1/apikeys/%d", k.ID), "")
	revoked := decode[db.APIKey](t, resp, b, http.StatusOK)
	if revoked.ID != k.ID || revoked.RevokedAt == nil {
		t.Fatalf("revoke answered %s", b)
	}
	resp, b = dashboard.call(http.MethodGet, "/v1/devices", "")
	wantProblem(t, resp, b, http.StatusUnauthorized, "unauthorized")
	resp, b = root.call(http.MethodDelete, fmt.Sprintf("/v1/apikeys/%d", k.ID), "")
	if again := decode[db.APIKey](t, resp, b, http.StatusOK); again.RevokedAt == nil || !again.RevokedAt.Equal(*revoked.RevokedAt) {
		t.Fatalf("revoke again answered %s, want revoked_at %v", b, revoked.RevokedAt)
	}
	for _, id := range []string{"999999", "0", "dashboard", "-1"} {
		resp, b = root.call(http.MethodDelete, "/v1/apikeys/"+id, "")
		wantProblem(t, resp, b, http.StatusNotFound, "api-key-not-found")
	}

	// Bad requests store nothing.
	before := count(t, sys, `SELECT count(*) FROM api_keys`)
	for _, tc := range []struct{ body, problem string }{
		{`{}`, "invalid-api-key"},
		{`{"name":"123"}`, "invalid-api-key"},
		{`{"name":"x","scopes":[]}`, "invalid-api-key"},
		{`{"name":"x","scopes":["write"]}`, "invalid-api-key"},
		{`{"name":"x","expires_in":"-1h"}`, "invalid-duration"},
		{`{"name":"x","expires_in":"soon"}`, "invalid-duration"},
		{`{"name":"x","key":"sbk_mine"}`, "invalid-json"},
	} {
		resp, b = root.call(http.MethodPost, "/v1/apikeys", tc.body)
		wantProblem(t, resp, b, http.StatusBadRequest, tc.problem)
	}
	if n := count(t, sys, `SELECT count(*) FROM api_keys`); n != before {
		t.Fatalf("refused requests stored %d keys", n-before)
	}
}

// encodeDevicesCursor returns the next of a device listing: a cursor of
// another listing, which the key listing refuses.
func encodeDevicesCursor(t *testing.T, c *api) string {
	t.Helper()
	for _, id := range []string{"cur-1", "cur-2"} {
		if resp, b := c.call(http.MethodPost, "/v1/devices", `{"id":"`+id+`"}`); resp.StatusCode != http.StatusCreated {
			t.Fatalf("adding %s: %d %s", id, resp.StatusCode, b)
		}
	}
	resp, b := c.call(http.MethodGet, "/v1/devices?limit=1", "")
	var page struct{ Next string }
	if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &page) != nil || page.Next == "" {
		t.Fatalf("a device listing: %d %s", resp.StatusCode, b)
	}
	return page.Next
}

// A key gives no more than it has: no scope it lacks, no life past its
// own. It may revoke itself.
func TestAPIKeyEscalation(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)
	adminOnly := newAPI(t, e.URL, sys.APIKey(t, db.ScopeAdmin))
	before := count(t, sys, `SELECT count(*) FROM api_keys`)
	for _, body := range []string{
		`{"name":"x","scopes":["read"]}`,
		`{"name":"x","scopes":["admin","commands"]}`,
		`{"name":"x"}`, // every scope, by default
	} {
		resp, b := adminOnly.call(http.MethodPost, "/v1/apikeys", body)
		if p := wantProblem(t, resp, b, http.StatusForbidden, "privilege-escalation"); !strings.Contains(p.Detail, "lacks") {
			t.Errorf("%s: detail %q, want it to say what the key lacks", body, p.Detail)
		}
	}
	if n := count(t, sys, `SELECT count(*) FROM api_keys`); n != before {
		t.Fatalf("refused escalations stored %d keys", n-before)
	}
	resp, b := adminOnly.call(http.MethodPost, "/v1/apikeys", `{"name":"peer","scopes":["admin"]}`)
	decode[createdKey](t, resp, b, http.StatusCreated)

	// A key that expires in an hour: its keys expire by then.
	key, k := addKey(t, sys, db.NewAPIKey{Name: "temp", TTL: time.Hour})
	temp := newAPI(t, e.URL, key)
	resp, b = temp.call(http.MethodPost, "/v1/apikeys", `{"name":"child"}`)
	if child := decode[createdKey](t, resp, b, http.StatusCreated); child.ExpiresAt == nil || child.ExpiresAt.After(*k.ExpiresAt) {
		t.Fatalf("a key made by a key that expires at %v: %s; want it to expire by then", k.ExpiresAt, b)
	}
	resp, b = temp.call(http.MethodPost, "/v1/apikeys", `{"name":"child","expires_in":"30m"}`)
	if child := decode[createdKey](t, resp, b, http.StatusCreated); child.ExpiresAt == nil || time.Until(*child.ExpiresAt) > 30*time.Minute {
		t.Fatalf("a shorter life is its own: %s", b)
	}
	resp, b = temp.call(http.MethodPost, "/v1/apikeys", `{"name":"child","expires_in":"2h"}`)
	if p := wantProblem(t, resp, b, http.StatusForbidden, "privilege-escalation"); !strings.Contains(p.Detail, "outlive") {
		t.Errorf("detail %q, want it to say the key would outlive its maker", p.Detail)
	}

	// Revoking itself: answered, then refused.
	resp, b = temp.call(http.MethodDelete, fmt.Sprintf("/v1/apikeys/%d", k.ID), "")
	if got := decode[db.APIKey](t, resp, b, http.StatusOK); got.RevokedAt == nil {
		t.Fatalf("self-revocation answered %s", b)
	}
	resp, b = temp.call(http.MethodGet, "/v1/apikeys", "")
	wantProblem(t, resp, b, http.StatusUnauthorized, "unauthorized")
}

// A revocation over HTTP is the CLI's: refused, and its open streams
// ended, on every edge within a second, not only the one that revoked it.
func TestRevocationOverHTTPEndsStreams(t *testing.T) {
	t.Parallel()
	f := newStreamFixture(t)
	key, k := addKey(t, f.sys, db.NewAPIKey{Name: "leaked", Scopes: streamScopes})
	leaked := f.open(t, "key", bearer(key)...)
	bystanders := f.open(t, "other key", bearer(f.sys.APIKey(t, streamScopes...))...)

	revoked := time.Now()
	resp, b := newAPI(t, f.edges[1].URL, f.sys.APIKey(t, db.ScopeAdmin)).call(http.MethodDelete, fmt.Sprintf("/v1/apikeys/%d", k.ID), "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("revoke: %d %s", resp.StatusCode, b)
	}
	wantEnded(t, leaked, revoked, time.Now(), time.Second, "the revocation")
	wantOpen(t, bystanders)
	f.wantRefused(t, "revoked key", bearer(key)...)
}

// The bootstrap key: stored by the edges that are given its SHA-256, once,
// with every scope; the edge is ready only once it is stored; a revoked
// one stays revoked when an edge starts again.
func TestBootstrapKey(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	key := secret.New("sbk_")
	digest := hex.EncodeToString(secret.Hash(key))
	withKey := func(cfg *edge.Config) { cfg.BootstrapKeySHA256 = digest }
	edges := []*testsys.Edge{sys.StartEdge(t, "edge-a", withKey), sys.StartEdge(t, "edge-b", withKey)}
	for _, e := range edges {
		testsys.Eventually(t, e.ID+" ready", func() bool { return e.NotReady(t.Context()) == "" })
		resp, b := newAPI(t, e.URL, key).call(http.MethodPost, "/v1/devices", `{"id":"first-`+e.ID+`"}`)
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("%s: the bootstrap key adds a device: %d %s", e.ID, resp.StatusCode, b)
		}
	}
	resp, b := newAPI(t, edges[0].URL, key).call(http.MethodGet, "/v1/apikeys", "")
	list := decode[keyList](t, resp, b, http.StatusOK)
	if len(list.APIKeys) != 1 || list.APIKeys[0].Name != db.BootstrapKeyName || !slices.Equal(list.APIKeys[0].Scopes, db.AllScopes) {
		t.Fatalf("keys %s; want the one bootstrap key, with every scope", b)
	}
	resp, b = newAPI(t, edges[0].URL, key).call(http.MethodDelete, fmt.Sprintf("/v1/apikeys/%d", list.APIKeys[0].ID), "")
	decode[db.APIKey](t, resp, b, http.StatusOK)
	later := sys.StartEdge(t, "edge-c", withKey)
	testsys.Eventually(t, "edge-c ready", func() bool { return later.NotReady(t.Context()) == "" })
	resp, b = newAPI(t, later.URL, key).call(http.MethodGet, "/v1/devices", "")
	wantProblem(t, resp, b, http.StatusUnauthorized, "unauthorized")

	if _, err := edge.New(edge.Config{ID: "edge-d", BootstrapKeySHA256: "not-a-digest"}); err == nil || !strings.Contains(err.Error(), "64 hex digits") {
		t.Fatalf("a malformed SHA-256: %v, want an error", err)
	}
}
