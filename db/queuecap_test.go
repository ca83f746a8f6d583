package db_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

// A device's queue cap: a batch counts the device's live pending commands
// plus its own earlier rows to the device (so a batch alone never passes
// the cap), an expired command no longer counts, the refused rows are told
// apart from those of unknown devices, and an idempotent retry of an
// accepted command is answered whatever the queue holds, while a new key
// to a full queue is refused without being taken.
func TestQueueCap(t *testing.T) {
	t.Parallel()
	store, pool := setup(t, "dev-1", "dev-2")
	ctx := context.Background()
	capped := func(device string, queueCap int) db.NewCommand {
		nc := newCommand(device, time.Hour)
		nc.QueueCap = queueCap
		return nc
	}
	create(t, store, newCommand("dev-1", time.Hour))
	stale := create(t, store, newCommand("dev-1", time.Hour))
	// Past its ttl, not yet swept: it will never be delivered.
	if _, err := pool.Exec(ctx, `UPDATE commands SET expires_at = now() - interval '1 second' WHERE id = $1`, stale.ID); err != nil {
		t.Fatal(err)
	}

	a1, a2, a3, a4 := capped("dev-1", 3), capped("dev-1", 3), capped("dev-1", 3), capped("dev-1", 3)
	b, ghost := capped("dev-2", 3), capped("ghost", 3)
	stored, full, err := store.CreateCommands(ctx, []db.NewCommand{a1, b, a2, ghost, a3, a4})
	if err != nil {
		t.Fatal(err)
	}
	var ids []uuid.UUID
	for _, c := range stored {
		ids = append(ids, c.ID)
	}
	if len(ids) != 3 || !slices.Contains(ids, a1.ID) || !slices.Contains(ids, a2.ID) || !slices.Contains(ids, b.ID) {
		t.Errorf("stored %v, want a1 %s, a2 %s and b %s", ids, a1.ID, a2.ID, b.ID)
	}
	if !slices.Equal(full, []uuid.UUID{a3.ID, a4.ID}) {
		t.Errorf("refused as full %v, want a3 %s and a4 %s", full, a3.ID, a4.ID)
	}
	if got := pendingIDs(t, pool, "dev-1"); len(got) != 4 { // 1 + the stale one + a1, a2
		t.Errorf("dev-1 pending %v, want 4 rows", got)
	}

	if _, _, err := store.CreateCommand(ctx, capped("dev-1", 3)); !errors.Is(err, db.ErrQueueFull) {
		t.Errorf("a command to a full queue: err = %v, want ErrQueueFull", err)
	}
	if _, _, err := store.CreateCommand(ctx, capped("ghost", 3)); !errors.Is(err, db.ErrNotFound) {
		t.Errorf("a command to an unknown device: err = %v, want ErrNotFound", err)
	}
	if _, created, err := store.CreateCommand(ctx, capped("dev-1", 0)); err != nil || !created {
		t.Errorf("no cap: created %v, err %v", created, err)
	}

	apiKey, err := store.AddAPIKey(ctx, db.NewAPIKey{Name: "k", KeyHash: secret.Hash("k")})
	if err != nil {
		t.Fatal(err)
	}
	keyed := func(key string, queueCap int) db.NewCommand {
		nc := capped("dev-1", queueCap)
		nc.APIKeyID, nc.IdempotencyKey, nc.RequestHash = apiKey.ID, key, []byte("hash")
		return nc
	}
	first, created, err := store.CreateCommand(ctx, keyed("k1", 10))
	if err != nil || !created {
		t.Fatalf("a keyed command with room: created %v, err %v", created, err)
	}
	again, created, err := store.CreateCommand(ctx, keyed("k1", 1))
	if err != nil || created || again.ID != first.ID {
		t.Errorf("a retry of an accepted command to a full queue: %s created %v err %v, want %s replayed", again.ID, created, err, first.ID)
	}
	if _, _, err := store.CreateCommand(ctx, keyed("k2", 1)); !errors.Is(err, db.ErrQueueFull) {
		t.Errorf("a new key to a full queue: err = %v, want ErrQueueFull", err)
	}
	var taken bool
	if err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT FROM idempotency_keys WHERE key = 'k2')`).Scan(&taken); err != nil || taken {
		t.Errorf("the refused command's key was taken (%v, %v): a retry would name a command that does not exist", taken, err)
	}
	// The key stays free: with room, the same key stores the command.
	if _, created, err := store.CreateCommand(ctx, keyed("k2", 10)); err != nil || !created {
		t.Errorf("the refused key with room: created %v, err %v", created, err)
	}
}
