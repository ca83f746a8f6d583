package db_test

import (
	"context"
	"database/sql"
	"errors"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/db/dbtest"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

func TestRotateDeviceSecret(t *testing.T) {
	t.Parallel()
	store, pool := setup(t, "dev-1")
	ctx := context.Background()
	accepts := func(s string) bool {
		t.Helper()
		// The batched read (a node's) leaves unknown ids out.
		many, err := store.ManyDeviceCredentials(ctx, []string{"dev-1", "nope"})
		if err != nil {
			t.Fatal(err)
		}
		c, ok := many["dev-1"]
		if _, unknown := many["nope"]; !ok || unknown || len(many) != 1 {
			t.Fatalf("ManyDeviceCredentials(dev-1, nope) = %+v, want dev-1 alone", many)
		}
		return c.Accepts(s)
	}
	const first, second, third = "secret-of-dev-1", "second-secret", "third-secret"
	if _, err := store.RotateDeviceSecret(ctx, "dev-1", secret.Hash(second), time.Hour); err != nil {
		t.Fatal(err)
	}
	if !accepts(first) || !accepts(second) || accepts("other") {
		t.Fatal("within the grace: want the old and the new secret accepted, no other")
	}
	// The grace ends (moved, not waited for).
	if _, err := pool.Exec(ctx, `UPDATE devices SET previous_secret_until = now() - interval '1 second'`); err != nil {
		t.Fatal(err)
	}
	if accepts(first) || !accepts(second) {
		t.Fatal("after the grace: want the new secret alone")
	}
	// A second rotation within a grace ends the first secret's at once.
	until, err := store.RotateDeviceSecret(ctx, "dev-1", secret.Hash(third), time.Hour)
	if err != nil || time.Until(until) < 59*time.Minute || time.Until(until) > time.Hour {
		t.Fatalf("rotate with an hour's grace: the old secret works until %v (%v)", until, err)
	}
	if accepts(first) || !accepts(second) || !accepts(third) {
		t.Fatal("after a second rotation: want the two latest secrets")
	}
	// Rotating to the secret the device has (a retry) changes nothing.
	again, err := store.RotateDeviceSecret(ctx, "dev-1", secret.Hash(third), 0)
	if err != nil || !again.Equal(until) || !accepts(second) || !accepts(third) {
		t.Fatalf("rotating again to the same secret: until %v, was %v (%v); want nothing changed", again, until, err)
	}
	// No grace: the old secret stops at once.
	if _, err := store.RotateDeviceSecret(ctx, "dev-1", secret.Hash(first), 0); err != nil {
		t.Fatal(err)
	}
	if !accepts(first) || accepts(third) {
		t.Fatal("rotation without grace: want the new secret alone")
	}
	if _, err := store.RotateDeviceSecret(ctx, "nope", secret.Hash(first), 0); !errors.Is(err, db.ErrNotFound) {
		t.Fatalf("rotate an unknown device: %v, want ErrNotFound", err)
	}
}

func TestDisableAndDeleteDevice(t *testing.T) {
	t.Parallel()
	store, pool := setup(t, "dev-1", "dev-2")
	ctx := context.Background()
	// Two live nodes: a close goes to both, whichever holds the session.
	recs := listen(t, pool, db.NodeChannel("n1"), db.NodeChannel("n2"))
	s := online(t, store, "n1", "dev-1")
	if _, err := store.RenewLease(ctx, db.Node{ID: "n2", Region: "ams"}, time.Minute); err != nil {
		t.Fatal(err)
	}
	disabled := func(id string) bool {
		t.Helper()
		c, ok := credentials(t, store, id)
		if !ok {
			t.Fatalf("%s: no credentials", id)
		}
		return c.Disabled
	}

	if err := store.DisableDevice(ctx, "dev-1"); err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		r.waitFor(t, "the close", func(p []string, _ int) bool { return slices.Contains(p, "close dev-1 disabled") })
	}
	if !disabled("dev-1") || disabled("dev-2") {
		t.Fatal("want dev-1 disabled, dev-2 not")
	}
	if d, err := store.Device(ctx, "dev-1"); err != nil || d.DisabledAt == nil {
		t.Fatalf("device view: %+v, %v; want disabled_at", d, err)
	}
	if err := store.EnableDevice(ctx, "dev-1"); err != nil || disabled("dev-1") {
		t.Fatalf("enable: %v", err)
	}
	if err := store.DisableDevice(ctx, "nope"); !errors.Is(err, db.ErrNotFound) {
		t.Fatalf("disable an unknown device: %v, want ErrNotFound", err)
	}
	if err := store.EnableDevice(ctx, "nope"); !errors.Is(err, db.ErrNotFound) {
		t.Fatalf("enable an unknown device: %v, want ErrNotFound", err)
	}

	// Delete: the device, its presence and its commands go; others stay.
	create(t, store, newCommand("dev-1", time.Hour))
	create(t, store, newCommand("dev-1", time.Hour))
	claim(t, store, s, 1) // one delivered, one pending
	other := create(t, store, newCommand("dev-2", time.Hour)).ID
	if _, err := pool.Exec(ctx, `INSERT INTO events (device_id, name) VALUES ('dev-1', 'a'), ('dev-2', 'a');
		INSERT INTO device_sessions (session_id, device_id, node_id, region, connected_at) VALUES (gen_random_uuid(), 'dev-1', 'n1', 'ams', now())`); err != nil {
		t.Fatal(err)
	}
	gone, err := store.DeleteDevice(ctx, "dev-1")
	if err != nil || gone != (db.DeletedDevice{Commands: 2, Events: 1, Sessions: 1}) {
		t.Fatalf("delete: %+v, %v; want 2 commands, 1 event, 1 session", gone, err)
	}
	for _, r := range recs {
		r.waitFor(t, "the close", func(p []string, _ int) bool { return slices.Contains(p, "close dev-1 deleted") })
	}
	if _, err := store.Device(ctx, "dev-1"); !errors.Is(err, db.ErrNotFound) {
		t.Fatalf("deleted device: %v, want ErrNotFound", err)
	}
	var rows int
	_ = pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM presence WHERE device_id = 'dev-1') + (SELECT count(*) FROM commands WHERE device_id = 'dev-1')
		+ (SELECT count(*) FROM events WHERE device_id = 'dev-1') + (SELECT count(*) FROM device_sessions WHERE device_id = 'dev-1')`).Scan(&rows)
	if rows != 0 {
		t.Fatalf("%d presence, command, event and session rows of the deleted device remain", rows)
	}
	if _, err := store.Command(ctx, other); err != nil {
		t.Fatalf("another device's command: %v", err)
	}
	if _, err := store.DeleteDevice(ctx, "dev-1"); !errors.Is(err, db.ErrNotFound) {
		t.Fatalf("delete again: %v, want ErrNotFound", err)
	}
	// The session's end, reported late by its node, harms nothing, and
	// adds nothing to the deleted device's history.
	if err := store.Disconnect(ctx, db.Node{ID: "node-1", Region: "test"}, []db.Session{s}); err != nil {
		t.Fatal(err)
	}
	if _ = pool.QueryRow(ctx, `SELECT count(*) FROM device_sessions WHERE device_id = 'dev-1'`).Scan(&rows); rows != 0 {
		t.Fatalf("the deleted device's session joined its history after the delete")
	}
}

// Ids with ':' are refused from 00004 on; rows made before are kept, and
// can be deleted.
func TestColonDeviceIDs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := dbtest.Pool(t, dbtest.NewEmptyDatabase(t))
	sqlDB := stdlib.OpenDBFromPool(pool)
	defer sqlDB.Close()
	upTo(t, sqlDB, 2)
	if _, err := pool.Exec(ctx, `INSERT INTO devices (id, secret_hash) VALUES ('old:1', '\x00'), ('fine-1', '\x00')`); err != nil {
		t.Fatal(err)
	}
	if err := db.Migrate(ctx, pool, dbtest.Logger()); err != nil {
		t.Fatalf("migrating over an id with ':': %v", err)
	}
	store := db.NewStore(pool)
	if _, err := store.Device(ctx, "old:1"); err != nil {
		t.Fatalf("the old id is gone: %v", err)
	}
	if _, err := store.AddDevices(ctx, []db.Credential{{ID: "new:1", SecretHash: secret.Hash("x")}}); !errors.Is(err, db.ErrInvalid) {
		t.Fatalf("adding an id with ':': %v, want ErrInvalid", err)
	}
	if db.ValidDeviceID("new:1") || !db.ValidDeviceID("new-1.a_b") {
		t.Fatal("ValidDeviceID disagrees with the constraint")
	}
	if gone, err := store.DeleteDevice(ctx, "old:1"); err != nil || gone.Commands != 0 {
		t.Fatalf("deleting the old id: %+v, %v", gone, err)
	}
}

// upTo applies the migrations up to version, as a database made before the
// later ones would have them.
func upTo(t *testing.T, sqlDB *sql.DB, version int64) {
	t.Helper()
	provider, err := goose.NewProvider(goose.DialectPostgres, sqlDB, os.DirFS("migrations"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := provider.UpTo(context.Background(), version); err != nil {
		t.Fatal(err)
	}
}

// An import checks each line as "devices import" and POST
// /v1/devices:import need, and tells which ids existed and whether with
// the secret the line gave.
func TestImportDevices(t *testing.T) {
	t.Parallel()
	store, _ := setup(t, "old-1", "old-2")
	ctx := context.Background()
	strong := secret.New("")
	im := db.NewImport()
	var lines []db.ImportLine
	for n, c := range []secret.Credential{{ID: "new-1"}, {ID: "new-2", Secret: strong}, {ID: "old-1", Secret: "secret-of-old-1-0123456789"}, {ID: "old-2"}} {
		l, err := im.Add(n+1, c, nil)
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, l)
	}
	if lines[0].Given || lines[0].Secret == "" || !lines[1].Given || lines[1].Secret != strong {
		t.Fatalf("lines %+v: want a secret made for new-1, new-2's kept", lines)
	}
	for _, bad := range []struct {
		c    secret.Credential
		says string
	}{
		{secret.Credential{ID: "new-1"}, `line 9: device id "new-1" is also on line 1`},
		{secret.Credential{ID: "x:1"}, `line 9: device id "x:1": want`},
		{secret.Credential{ID: "x-1", Secret: "short"}, "line 9 (x-1): secret is 5 characters"},
	} {
		if _, err := im.Add(9, bad.c, nil); err == nil || !strings.HasPrefix(err.Error(), bad.says) {
			t.Errorf("Add(%+v): %v, want %q", bad.c, err, bad.says)
		}
	}
	existing, err := store.ImportDevices(ctx, lines)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]bool{"old-1": false, "old-2": false}; !maps.Equal(existing, want) {
		t.Fatalf("existing %v, want %v", existing, want)
	}
	// Again, as a retry would: all exist, new-2 with the secret given.
	existing, err = store.ImportDevices(ctx, lines)
	if want := map[string]bool{"new-1": false, "new-2": true, "old-1": false, "old-2": false}; err != nil || !maps.Equal(existing, want) {
		t.Fatalf("a retry: existing %v, %v; want %v", existing, err, want)
	}
	if c, ok := credentials(t, store, "new-1"); !ok || !c.Accepts(lines[0].Secret) {
		t.Fatal("new-1 does not accept the secret made for it")
	}
}
