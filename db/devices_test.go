package db_test

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
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
	if err := store.RotateDeviceSecret(ctx, "dev-1", secret.Hash(second), time.Hour); err != nil {
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
	if err := store.RotateDeviceSecret(ctx, "dev-1", secret.Hash(third), time.Hour); err != nil {
		t.Fatal(err)
	}
	if accepts(first) || !accepts(second) || !accepts(third) {
		t.Fatal("after a second rotation: want the two latest secrets")
	}
	// No grace: the old secret stops at once.
	if err := store.RotateDeviceSecret(ctx, "dev-1", secret.Hash(first), 0); err != nil {
		t.Fatal(err)
	}
	if !accepts(first) || accepts(third) {
		t.Fatal("rotation without grace: want the new secret alone")
	}
	if err := store.RotateDeviceSecret(ctx, "nope", secret.Hash(first), 0); !errors.Is(err, db.ErrNotFound) {
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
	mine := []uuid.UUID{create(t, store, newCommand("dev-1", time.Hour)).ID, create(t, store, newCommand("dev-1", time.Hour)).ID}
	deliver(t, store, s, mine[0])
	other := create(t, store, newCommand("dev-2", time.Hour)).ID
	n, err := store.DeleteDevice(ctx, "dev-1")
	if err != nil || n != 2 {
		t.Fatalf("delete: %d commands, %v; want 2", n, err)
	}
	for _, r := range recs {
		r.waitFor(t, "the close", func(p []string, _ int) bool { return slices.Contains(p, "close dev-1 deleted") })
	}
	if _, err := store.Device(ctx, "dev-1"); !errors.Is(err, db.ErrNotFound) {
		t.Fatalf("deleted device: %v, want ErrNotFound", err)
	}
	var rows int
	_ = pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM presence WHERE device_id = 'dev-1') + (SELECT count(*) FROM commands WHERE device_id = 'dev-1')`).Scan(&rows)
	if rows != 0 {
		t.Fatalf("%d presence and command rows of the deleted device remain", rows)
	}
	if _, err := store.Command(ctx, other); err != nil {
		t.Fatalf("another device's command: %v", err)
	}
	if _, err := store.DeleteDevice(ctx, "dev-1"); !errors.Is(err, db.ErrNotFound) {
		t.Fatalf("delete again: %v, want ErrNotFound", err)
	}
	// The session's end, reported late by its node, harms nothing.
	if err := store.Disconnect(ctx, db.Node{ID: "node-1", Region: "test"}, []db.Session{s}); err != nil {
		t.Fatal(err)
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
	if n, err := store.DeleteDevice(ctx, "old:1"); err != nil || n != 0 {
		t.Fatalf("deleting the old id: %d, %v", n, err)
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
