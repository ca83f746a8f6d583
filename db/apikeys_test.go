package db_test

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/db/dbtest"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

func TestParseScopes(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []db.Scope
	}{
		{"read", []db.Scope{db.ScopeRead}},
		{"admin,commands", []db.Scope{db.ScopeCommands, db.ScopeAdmin}},
		{" read , commands,read", []db.Scope{db.ScopeCommands, db.ScopeRead}},
		{"commands,read,admin", db.AllScopes},
	} {
		got, err := db.ParseScopes(tc.in)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("ParseScopes(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
		if back, _ := db.ParseScopes(db.FormatScopes(got)); !slices.Equal(back, got) {
			t.Errorf("FormatScopes(%v) does not read back", got)
		}
	}
	for _, bad := range []string{"", ",", "write", "read,Admin", "read;admin"} {
		if got, err := db.ParseScopes(bad); err == nil {
			t.Errorf("ParseScopes(%q) = %v, want an error", bad, got)
		}
	}
}

// listen subscribes a recorder to channel on a notifier of the test's own.
func listen(t *testing.T, pool *pgxpool.Pool, channels ...string) []*recorder {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	n := db.NewNotifier(pool.Config().ConnConfig, dbtest.Logger())
	done := make(chan error)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	var recs []*recorder
	for _, ch := range channels {
		r := newRecorder()
		n.Listen(ch, r.notify, r.ready)
		r.waitFor(t, ch+" ready", func(_ []string, n int) bool { return n == 1 })
		recs = append(recs, r)
	}
	return recs
}

func TestAPIKeys(t *testing.T) {
	t.Parallel()
	store, pool := setup(t)
	ctx := context.Background()
	keys := listen(t, pool, db.KeysChannel)[0]

	all, err := store.AddAPIKey(ctx, db.NewAPIKey{Name: "ops", KeyHash: secret.Hash("k1")})
	if err != nil || !slices.Equal(all.Scopes, db.AllScopes) || all.ExpiresAt != nil || all.RevokedAt != nil {
		t.Fatalf("key without scopes or ttl: %+v, %v; want all scopes, no expiry", all, err)
	}
	before := time.Now()
	ro, err := store.AddAPIKey(ctx, db.NewAPIKey{Name: "dashboard", KeyHash: secret.Hash("k2"), Scopes: []db.Scope{db.ScopeRead}, TTL: time.Hour})
	if err != nil || !ro.Has(db.ScopeRead) || ro.Has(db.ScopeCommands) || ro.Has(db.ScopeAdmin) {
		t.Fatalf("read-only key: %+v, %v", ro, err)
	}
	if ro.ExpiresAt == nil || ro.ExpiresAt.Before(before.Add(59*time.Minute)) || ro.ExpiresAt.After(time.Now().Add(61*time.Minute)) {
		t.Fatalf("expires_at %v, want an hour from now", ro.ExpiresAt)
	}
	if ro.Expired(time.Now()) || !ro.Expired(ro.ExpiresAt.Add(time.Nanosecond)) || !ro.Expired(*ro.ExpiresAt) {
		t.Fatal("Expired is wrong about the expiry")
	}
	if _, err := store.AddAPIKey(ctx, db.NewAPIKey{Name: "ops", KeyHash: secret.Hash("k3"), Scopes: []db.Scope{"write"}}); !errors.Is(err, db.ErrInvalid) {
		t.Fatalf("unknown scope stored: %v, want ErrInvalid", err)
	}
	if _, err := store.AddAPIKey(ctx, db.NewAPIKey{Name: "ops", KeyHash: secret.Hash("k1")}); !errors.Is(err, db.ErrExists) {
		t.Fatalf("same hash twice: %v, want ErrExists", err)
	}
	dup, err := store.AddAPIKey(ctx, db.NewAPIKey{Name: "ops", KeyHash: secret.Hash("k4")}) // names may repeat
	if err != nil {
		t.Fatal(err)
	}

	list, err := store.APIKeys(ctx, 0, 0)
	if err != nil || len(list) != 3 || list[0].ID != all.ID || list[1].ID != ro.ID || list[2].ID != dup.ID {
		t.Fatalf("list %+v, %v; want the three keys oldest first", list, err)
	}
	if page, err := store.APIKeys(ctx, all.ID, 1); err != nil || len(page) != 1 || page[0].ID != ro.ID {
		t.Fatalf("a page of 1 after key %d: %+v, %v; want key %d", all.ID, page, err, ro.ID)
	}

	// A shared name is ambiguous; the id is not.
	if _, _, err := store.RevokeAPIKey(ctx, "ops"); !errors.Is(err, db.ErrAmbiguous) {
		t.Fatalf("revoke by a shared name: %v, want ErrAmbiguous", err)
	}
	k, revoked, err := store.RevokeAPIKey(ctx, strconv.FormatInt(all.ID, 10))
	if err != nil || !revoked || k.ID != all.ID || k.RevokedAt == nil {
		t.Fatalf("revoke by id: %+v revoked=%v %v", k, revoked, err)
	}
	keys.waitFor(t, "the revoked key's id on sb_keys", func(p []string, _ int) bool {
		return len(p) == 1 && p[0] == strconv.FormatInt(all.ID, 10)
	})
	// Now the name names one unrevoked key.
	if k, revoked, err := store.RevokeAPIKey(ctx, "ops"); err != nil || !revoked || k.ID != dup.ID {
		t.Fatalf("revoke by name: %+v revoked=%v %v, want key %d", k, revoked, err, dup.ID)
	}
	if k, revoked, err := store.RevokeAPIKey(ctx, "ops"); err != nil || revoked || k.RevokedAt == nil {
		t.Fatalf("revoke again: %+v revoked=%v %v, want the key as it was", k, revoked, err)
	}
	if _, _, err := store.RevokeAPIKey(ctx, "nobody"); !errors.Is(err, db.ErrNotFound) {
		t.Fatalf("revoke an unknown key: %v, want ErrNotFound", err)
	}

	// The lookup returns revoked keys, for the edge to say so.
	got, err := store.APIKeyByHash(ctx, secret.Hash("k1"))
	if err != nil || got.RevokedAt == nil {
		t.Fatalf("revoked key by hash: %+v, %v", got, err)
	}
	if got, err := store.APIKeyByHash(ctx, secret.Hash("k2")); err != nil || got.RevokedAt != nil || !slices.Equal(got.Scopes, []db.Scope{db.ScopeRead}) {
		t.Fatalf("read-only key by hash: %+v, %v", got, err)
	}
	if _, err := store.APIKeyByHash(ctx, secret.Hash("nope")); !errors.Is(err, db.ErrNotFound) {
		t.Fatalf("unknown hash: %v, want ErrNotFound", err)
	}
}

// The bootstrap key is stored once, whatever edges start, with every
// scope; revoked, it stays revoked.
func TestBootstrapKey(t *testing.T) {
	t.Parallel()
	store, _ := setup(t)
	ctx := context.Background()
	hash := secret.Hash("sbk_first")
	k, created, err := store.AddBootstrapKey(ctx, hash)
	if err != nil || !created || k.Name != db.BootstrapKeyName || !slices.Equal(k.Scopes, db.AllScopes) || k.ExpiresAt != nil {
		t.Fatalf("first start: %+v created=%v %v; want a new key with every scope", k, created, err)
	}
	again, created, err := store.AddBootstrapKey(ctx, hash)
	if err != nil || created || again.ID != k.ID {
		t.Fatalf("second start: %+v created=%v %v; want key %d as it was", again, created, err, k.ID)
	}
	if _, _, err := store.RevokeAPIKey(ctx, strconv.FormatInt(k.ID, 10)); err != nil {
		t.Fatal(err)
	}
	again, created, err = store.AddBootstrapKey(ctx, hash)
	if err != nil || created || again.RevokedAt == nil {
		t.Fatalf("start after the revocation: %+v created=%v %v; want the key still revoked", again, created, err)
	}
	if list, _ := store.APIKeys(ctx, 0, 0); len(list) != 1 {
		t.Fatalf("%d keys, want the one bootstrap key", len(list))
	}
}
