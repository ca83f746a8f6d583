package db_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/db/dbtest"
	"github.com/switchboard-iot/switchboard/internal/command"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

func TestMain(m *testing.M) { os.Exit(dbtest.Main(m)) }

func setup(t *testing.T, devices ...string) (*db.Store, *pgxpool.Pool) {
	t.Helper()
	pool := dbtest.NewPool(t)
	store := db.NewStore(pool)
	var creds []db.Credential
	for _, id := range devices {
		creds = append(creds, db.Credential{ID: id, SecretHash: secret.Hash("secret-of-" + id)})
	}
	if len(creds) > 0 {
		if _, err := store.AddDevices(context.Background(), creds); err != nil {
			t.Fatal(err)
		}
	}
	return store, pool
}

func TestMigrateIsIdempotent(t *testing.T) {
	t.Parallel()
	pool := dbtest.NewPool(t)
	// The database comes migrated; migrating again must change nothing.
	if err := db.Migrate(context.Background(), pool, dbtest.Logger()); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM goose_db_version WHERE version_id > 0`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob("migrations/*.sql")
	if err != nil || len(files) == 0 {
		t.Fatalf("migration files: %v %v", files, err)
	}
	if n != len(files) {
		t.Fatalf("goose_db_version has %d applied migrations, want %d", n, len(files))
	}
}

// What the tiers ask of the pool, without holding it: a ping, its size, and
// whether an error is PostgreSQL's answer (its code) or no answer at all.
func TestPingMaxConnsErrorCode(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store, pool := setup(t)
	if err := store.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	if got, want := store.MaxConns(), int(pool.Config().MaxConns); got != want {
		t.Errorf("MaxConns = %d, want %d", got, want)
	}
	_, err := pool.Exec(ctx, `SELECT 1/0`)
	if code := db.ErrorCode(err); code != "22012" { // division_by_zero
		t.Errorf("ErrorCode(%v) = %q, want 22012", err, code)
	}
	if !db.IsRefused(err) {
		t.Errorf("IsRefused(%v) = false", err)
	}
	for _, err := range []error{nil, context.DeadlineExceeded, errors.New("dial tcp: connection refused")} {
		if code := db.ErrorCode(err); code != "" {
			t.Errorf("ErrorCode(%v) = %q, want none", err, code)
		}
	}
}

func TestAddDevicesReportsExisting(t *testing.T) {
	t.Parallel()
	store, _ := setup(t, "dev-1")
	ctx := context.Background()
	existing, err := store.AddDevices(ctx, []db.Credential{
		{ID: "dev-1", SecretHash: secret.Hash("x")},
		{ID: "dev-2", SecretHash: secret.Hash("y")},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(existing, []string{"dev-1"}) {
		t.Fatalf("existing = %v, want [dev-1]", existing)
	}
	if creds, ok := credentials(t, store, "dev-1"); !ok || !creds.Accepts("secret-of-dev-1") {
		t.Fatalf("dev-1 kept its first secret? found %v", ok)
	}
	if _, err := store.AddDevices(ctx, []db.Credential{{ID: "bad id with spaces", SecretHash: secret.Hash("z")}}); !errors.Is(err, db.ErrInvalid) {
		t.Fatalf("bad id: err = %v, want ErrInvalid", err)
	}
	if _, ok := credentials(t, store, "nope"); ok {
		t.Fatal("unknown device: credentials found")
	}
}

// credentials reads a device's credentials as a node does, and whether the
// device exists.
func credentials(t *testing.T, store *db.Store, id string) (db.DeviceCredentials, bool) {
	t.Helper()
	many, err := store.ManyDeviceCredentials(context.Background(), []string{id})
	if err != nil {
		t.Fatal(err)
	}
	c, ok := many[id]
	return c, ok
}

func newCommand(device string, ttl time.Duration) db.NewCommand {
	return db.NewCommand{
		ID: uuid.Must(uuid.NewV7()), DeviceID: device, Name: "get_state", Args: json.RawMessage(`{"a":1}`),
		Timeout: 10 * time.Second, TTL: ttl, ReplyTo: "edge-a",
	}
}

func create(t *testing.T, store *db.Store, nc db.NewCommand) command.Command {
	t.Helper()
	c, created, err := store.CreateCommand(context.Background(), nc)
	if err != nil || !created {
		t.Fatalf("create command: created=%v err=%v", created, err)
	}
	return c
}

// online registers a session of device on node (leasing the node) and
// returns it.
func online(t *testing.T, store *db.Store, node, device string) db.Session {
	t.Helper()
	ctx := context.Background()
	n := db.Node{ID: node, Region: "ams"}
	if _, err := store.RenewLease(ctx, n, time.Minute); err != nil {
		t.Fatal(err)
	}
	s := db.Session{DeviceID: device, SessionID: uuid.New()}
	if _, err := store.Connect(ctx, n, []db.Session{s}); err != nil {
		t.Fatal(err)
	}
	nodeOf.Store(s.SessionID, node)
	return s
}

// nodeOf says which node online put each session on.
var nodeOf sync.Map // session id → node id

// claim claims up to room of the device's pending commands for session s,
// as its node's deliverer does, and returns the changes, oldest first.
func claim(t *testing.T, store *db.Store, s db.Session, room int) []db.Change {
	t.Helper()
	node, _ := nodeOf.Load(s.SessionID)
	changes, err := store.ClaimDeliveries(context.Background(), node.(string), []db.Claim{{DeviceID: s.DeviceID, SessionID: s.SessionID, Room: room}})
	if err != nil {
		t.Fatal(err)
	}
	return changes
}

// claimIDs is claim's commands' ids.
func claimIDs(t *testing.T, store *db.Store, s db.Session, room int) []uuid.UUID {
	t.Helper()
	return changeIDs(claim(t, store, s, room))
}

func changeIDs(changes []db.Change) []uuid.UUID {
	var ids []uuid.UUID
	for _, c := range changes {
		ids = append(ids, c.ID)
	}
	return ids
}

// pendingIDs reads the pending commands of these devices, in the order a
// node claims them.
func pendingIDs(t *testing.T, pool *pgxpool.Pool, devices ...string) []uuid.UUID {
	t.Helper()
	rows, err := pool.Query(context.Background(),
		`SELECT id FROM commands WHERE device_id = ANY($1) AND status = 'pending' ORDER BY seq`, devices)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

func TestCommandLifecycle(t *testing.T) {
	t.Parallel()
	store, pool := setup(t, "dev-1", "dev-2")
	ctx := context.Background()

	if _, _, err := store.CreateCommand(ctx, newCommand("ghost", time.Hour)); !errors.Is(err, db.ErrNotFound) {
		t.Fatalf("unknown device: err = %v, want ErrNotFound", err)
	}
	c := create(t, store, newCommand("dev-1", time.Hour))
	if c.Status != command.Pending || string(c.Args) != `{"a": 1}` || time.Duration(c.Timeout) != 10*time.Second || c.Attempts != 0 {
		t.Fatalf("created = %+v", c)
	}
	if got := pendingIDs(t, pool, "dev-1", "dev-2"); !slices.Equal(got, []uuid.UUID{c.ID}) {
		t.Fatalf("pending = %v", got)
	}

	s := online(t, store, "node-1", "dev-1")
	changes := claim(t, store, s, 10)
	if len(changes) != 1 || changes[0].ID != c.ID || !slices.Equal(changes[0].Edges, []string{"edge-a"}) ||
		changes[0].Command.Status != command.Delivered || changes[0].Command.Attempts != 1 {
		t.Fatalf("claimed: %+v", changes)
	}
	if got := pendingIDs(t, pool, "dev-1"); len(got) != 0 {
		t.Fatalf("delivered command still pending")
	}

	// Another device cannot answer dev-1's command.
	changes, err := store.StoreReplies(ctx, []db.Reply{{ID: c.ID, DeviceID: "dev-2", OK: true}})
	if err != nil || len(changes) != 0 {
		t.Fatalf("foreign reply changed %v (err %v)", changes, err)
	}
	changes, err = store.StoreReplies(ctx, []db.Reply{{ID: c.ID, DeviceID: "dev-1", OK: true, Result: json.RawMessage(`{"t":21}`)}})
	if err != nil || len(changes) != 1 {
		t.Fatalf("reply: %v, %v", changes, err)
	}
	got, err := store.Command(ctx, c.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != command.Done || got.DeliveredAt == nil || got.CompletedAt == nil || got.OK == nil || got.Attempts != 1 {
		t.Fatalf("after reply: %+v", got)
	}
	// A later duplicate reply changes nothing: the first answer stands.
	changes, err = store.StoreReplies(ctx, []db.Reply{{ID: c.ID, DeviceID: "dev-1", OK: false, Error: "late"}})
	if err != nil || len(changes) != 0 {
		t.Fatalf("late reply changed %v (err %v)", changes, err)
	}
	again, _ := store.Command(ctx, c.ID)
	if again.Status != got.Status || again.Error != got.Error {
		t.Fatalf("late reply rewrote %+v into %+v", got, again)
	}
}

// A claim takes only what is pending, unexpired and its session's to
// take: the device's current session, within its room, oldest first. A
// command cancelled or expired first is never claimed, and a claim for a
// session that ended or was replaced gets nothing.
func TestClaimDeliveries(t *testing.T) {
	t.Parallel()
	store, pool := setup(t, "dev-1", "dev-2")
	ctx := context.Background()
	old := online(t, store, "node-a", "dev-1")
	var ids []uuid.UUID
	for range 4 {
		ids = append(ids, create(t, store, newCommand("dev-1", time.Hour)).ID)
	}
	current := online(t, store, "node-b", "dev-1")
	if got := claim(t, store, old, 10); len(got) != 0 {
		t.Fatalf("a replaced session claimed %v", changeIDs(got))
	}
	// The second is cancelled, the third expired: neither is claimed.
	if _, ch, err := store.CancelCommand(ctx, ids[1], 0); err != nil || ch == nil {
		t.Fatalf("cancel: %v, %v", ch, err)
	}
	if _, err := pool.Exec(ctx, `UPDATE commands SET expires_at = now() - interval '1s' WHERE id = $1`, ids[2]); err != nil {
		t.Fatal(err)
	}
	changes := claim(t, store, current, 1)
	if got := changeIDs(changes); !slices.Equal(got, ids[:1]) {
		t.Fatalf("room 1 claimed %v, want the oldest %v", got, ids[0])
	}
	c := changes[0].Command
	if c.Status != command.Delivered || c.Attempts != 1 || c.DeliveredAt == nil {
		t.Fatalf("claimed %+v", c)
	}
	var node string
	var session uuid.UUID
	var deadline time.Time
	if err := pool.QueryRow(ctx, `SELECT node_id, session_id, reply_deadline FROM commands WHERE id = $1`, ids[0]).
		Scan(&node, &session, &deadline); err != nil {
		t.Fatal(err)
	}
	if node != "node-b" || session != current.SessionID || !deadline.Equal(c.DeliveredAt.Add(time.Duration(c.Timeout))) {
		t.Fatalf("claimed by %s session %s with deadline %v, want node-b session %s, deadline its timeout after delivery",
			node, session, deadline, current.SessionID)
	}
	if got := claimIDs(t, store, current, 10); !slices.Equal(got, ids[3:]) {
		t.Fatalf("claimed %v, want only %v", got, ids[3])
	}
	for id, want := range map[uuid.UUID]command.Status{ids[1]: command.Cancelled, ids[2]: command.Pending} {
		if got, _ := store.Command(ctx, id); got.Status != want || got.Attempts != 0 {
			t.Errorf("command %s: %s after %d attempts, want %s after none", id, got.Status, got.Attempts, want)
		}
	}
	// A session that ended claims nothing; another device's commands are
	// not its to take.
	other := create(t, store, newCommand("dev-2", time.Hour))
	if err := store.Disconnect(ctx, db.Node{ID: "node-b", Region: "ams"}, []db.Session{current}); err != nil {
		t.Fatal(err)
	}
	if got := claim(t, store, current, 10); len(got) != 0 {
		t.Fatalf("an ended session claimed %v", changeIDs(got))
	}
	if got := claimIDs(t, store, online(t, store, "node-a", "dev-1"), 10); !slices.Equal(got, []uuid.UUID{ids[0], ids[3]}) {
		t.Fatalf("the next session claimed %v, want the two given back", got)
	}
	if got, _ := store.Command(ctx, other.ID); got.Status != command.Pending {
		t.Fatalf("dev-2's command is %s", got.Status)
	}
}

// A claim whose answer was lost is given back by its node: the commands
// delivered to its sessions that it does not hold go back to pending, their
// attempt uncounted; those it holds, and other sessions' and nodes', stay.
func TestGiveBackUnwritten(t *testing.T) {
	t.Parallel()
	store, pool := setup(t, "dev-1", "dev-2")
	ctx := context.Background()
	var ids []uuid.UUID
	for range 3 {
		ids = append(ids, create(t, store, newCommand("dev-1", time.Hour)).ID)
	}
	other := create(t, store, newCommand("dev-2", time.Hour)).ID
	s1 := online(t, store, "node-1", "dev-1")
	s2 := online(t, store, "node-2", "dev-2")
	claim(t, store, s1, 10)
	claim(t, store, s2, 10)
	n, err := store.GiveBackUnwritten(ctx, "node-1", []db.Session{s1}, []uuid.UUID{ids[0]})
	if err != nil || n != 2 {
		t.Fatalf("gave back %d, %v; want the 2 node-1 does not hold", n, err)
	}
	if got := pendingIDs(t, pool, "dev-1", "dev-2"); !slices.Equal(got, ids[1:]) {
		t.Fatalf("pending %v, want %v", got, ids[1:])
	}
	for id, want := range map[uuid.UUID]command.Status{ids[0]: command.Delivered, ids[1]: command.Pending, other: command.Delivered} {
		got, _ := store.Command(ctx, id)
		wantAttempts := 1
		if want == command.Pending {
			wantAttempts = 0
		}
		if got.Status != want || got.Attempts != wantAttempts {
			t.Errorf("command %s: %s after %d attempts, want %s after %d", id, got.Status, got.Attempts, want, wantAttempts)
		}
	}
	// Another node's give-back touches nothing of node-1's.
	if n, err := store.GiveBackUnwritten(ctx, "node-2", []db.Session{s1}, nil); err != nil || n != 0 {
		t.Fatalf("node-2 gave back %d of node-1's, %v", n, err)
	}
	if got := claimIDs(t, store, s1, 10); !slices.Equal(got, ids[1:]) {
		t.Fatalf("claimed again %v, want %v in order", got, ids[1:])
	}
}

// Redelivery: a session that ends without answering gives its commands
// back, in their order; the next session gets them again and counts a
// second attempt. A claim for a session that is no longer current misses.
func TestRedelivery(t *testing.T) {
	t.Parallel()
	store, pool := setup(t, "dev-1")
	ctx := context.Background()
	first := create(t, store, newCommand("dev-1", time.Hour))
	second := create(t, store, newCommand("dev-1", time.Hour))
	third := create(t, store, newCommand("dev-1", time.Hour))

	// Session 1 gets the first two; it closes without a reply.
	s1 := online(t, store, "node-1", "dev-1")
	if got := claimIDs(t, store, s1, 2); !slices.Equal(got, []uuid.UUID{first.ID, second.ID}) {
		t.Fatalf("claimed %v", got)
	}
	if got := pendingIDs(t, pool, "dev-1"); !slices.Equal(got, []uuid.UUID{third.ID}) {
		t.Fatalf("pending while delivered = %v", got)
	}
	if err := store.Disconnect(ctx, db.Node{ID: "node-1", Region: "test"}, []db.Session{s1}); err != nil {
		t.Fatal(err)
	}
	if got := pendingIDs(t, pool, "dev-1"); !slices.Equal(got, []uuid.UUID{first.ID, second.ID, third.ID}) {
		t.Fatalf("pending after the session ended = %v, want all three in their first order", got)
	}
	// A claim of the ended session comes late: it misses, and counts nothing.
	if got := claim(t, store, s1, 10); len(got) != 0 {
		t.Fatalf("claim for an ended session: %v", changeIDs(got))
	}
	if got, _ := store.Command(ctx, third.ID); got.Attempts != 0 || got.Status != command.Pending {
		t.Fatalf("a missed claim changed the command: %+v", got)
	}

	// Session 2 (on another node) gets them; session 3 replaces it on a
	// third node before it answers: Connect gives them back at once.
	s2 := online(t, store, "node-2", "dev-1")
	claim(t, store, s2, 10)
	s3 := online(t, store, "node-3", "dev-1")
	if got := pendingIDs(t, pool, "dev-1"); !slices.Equal(got, []uuid.UUID{first.ID, second.ID, third.ID}) {
		t.Fatalf("pending after a newer session replaced the old = %v", got)
	}
	if got := claim(t, store, s2, 10); len(got) != 0 {
		t.Fatalf("claim for a replaced session: %v", changeIDs(got))
	}
	claim(t, store, s3, 1)
	got, _ := store.Command(ctx, first.ID)
	if got.Status != command.Delivered || got.Attempts != 3 { // sessions 1, 2 and 3
		t.Fatalf("third delivery: %+v", got)
	}

	// A reply from an old session to a command given back still counts.
	if _, err := store.StoreReplies(ctx, []db.Reply{{ID: second.ID, DeviceID: "dev-1", OK: true}}); err != nil {
		t.Fatal(err)
	}
	got, _ = store.Command(ctx, second.ID)
	if got.Status != command.Done || got.Attempts != 2 || got.DeliveredAt == nil {
		t.Fatalf("late reply to a given-back command: %+v", got)
	}

	// The node of session 3 dies: once its lease lapses, the sweep gives
	// the delivery back and names the device to wake.
	if _, err := pool.Exec(ctx, `UPDATE nodes SET lease_expires_at = now() - interval '1s' WHERE id = 'node-3'`); err != nil {
		t.Fatal(err)
	}
	swept, err := store.SweepCommands(ctx, 100)
	if err != nil || !slices.Equal(swept.Devices, []string{"dev-1"}) || len(swept.Changes) != 0 {
		t.Fatalf("sweep after a lapsed lease: %+v, %v", swept, err)
	}
	got, _ = store.Command(ctx, first.ID)
	if got.Status != command.Pending || got.Attempts != 3 {
		t.Fatalf("after the lease lapsed: %+v", got)
	}
}

// A batch stores its rows in the order given (seq follows it, whatever
// their ids), leaves out those of unknown devices, and fails whole on a row
// the database refuses.
func TestCreateCommands(t *testing.T) {
	t.Parallel()
	store, pool := setup(t, "dev-1", "dev-2")
	ctx := context.Background()
	a, b, c := newCommand("dev-1", time.Hour), newCommand("dev-2", time.Hour), newCommand("dev-1", time.Hour)
	ghost := newCommand("ghost", time.Hour)
	stored, _, err := store.CreateCommands(ctx, []db.NewCommand{c, ghost, b, a})
	if err != nil {
		t.Fatal(err)
	}
	var ids []uuid.UUID
	for _, s := range stored {
		if s.Status != command.Pending || string(s.Args) != `{"a": 1}` || time.Duration(s.Timeout) != 10*time.Second {
			t.Fatalf("stored %+v", s)
		}
		ids = append(ids, s.ID)
	}
	if slices.SortFunc(ids, func(x, y uuid.UUID) int { return bytes.Compare(x[:], y[:]) }); !slices.Equal(ids, []uuid.UUID{a.ID, b.ID, c.ID}) {
		t.Fatalf("stored %v, want %v", ids, []uuid.UUID{a.ID, b.ID, c.ID})
	}
	if got := pendingIDs(t, pool, "dev-1", "dev-2"); !slices.Equal(got, []uuid.UUID{c.ID, b.ID, a.ID}) {
		t.Fatalf("pending = %v, want the batch's order %v", got, []uuid.UUID{c.ID, b.ID, a.ID})
	}

	bad := newCommand("dev-2", time.Hour)
	bad.Args = json.RawMessage(`{"a":`) // the edge checks JSON; the database does too
	if _, _, err := store.CreateCommands(ctx, []db.NewCommand{newCommand("dev-1", time.Hour), bad}); !errors.Is(err, db.ErrInvalid) {
		t.Fatalf("a refused row: err = %v, want ErrInvalid", err)
	}
	if got := pendingIDs(t, pool, "dev-1", "dev-2"); len(got) != 3 {
		t.Fatalf("a refused batch stored rows: pending = %v", got)
	}
}

// Each device's claim is bounded by its room, so one deep backlog cannot
// crowd out the others; rows come oldest first, in one statement.
func TestClaimsAreFair(t *testing.T) {
	t.Parallel()
	store, _ := setup(t, "big", "small-1", "small-2")
	var big []uuid.UUID
	for range 20 {
		big = append(big, create(t, store, newCommand("big", time.Hour)).ID)
	}
	small1 := create(t, store, newCommand("small-1", time.Hour)).ID
	small2 := create(t, store, newCommand("small-2", time.Hour)).ID
	var claims []db.Claim
	for _, id := range []string{"big", "small-1", "small-2"} {
		s := online(t, store, "node-1", id)
		claims = append(claims, db.Claim{DeviceID: id, SessionID: s.SessionID, Room: 5})
	}
	changes, err := store.ClaimDeliveries(context.Background(), "node-1", claims)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := changeIDs(changes), append(slices.Clone(big[:5]), small1, small2); !slices.Equal(got, want) {
		t.Fatalf("claimed %v, want big's five oldest and one of each small", got)
	}
}

func TestIdempotentCreate(t *testing.T) {
	t.Parallel()
	store, pool := setup(t, "dev-1")
	ctx := context.Background()
	key, err := store.AddAPIKey(ctx, db.NewAPIKey{Name: "k", KeyHash: secret.Hash("k")})
	if err != nil {
		t.Fatal(err)
	}
	keyID := key.ID
	nc := newCommand("dev-1", time.Hour)
	nc.APIKeyID, nc.IdempotencyKey, nc.RequestHash = keyID, "order-42", []byte("hash-1")
	first := create(t, store, nc)

	repeat := nc
	repeat.ID = uuid.Must(uuid.NewV7())
	c, created, err := store.CreateCommand(ctx, repeat)
	if err != nil || created || c.ID != first.ID {
		t.Fatalf("repeat: %v created=%v err=%v, want the first command %v", c.ID, created, err, first.ID)
	}
	other := repeat
	other.RequestHash = []byte("hash-2")
	if _, _, err := store.CreateCommand(ctx, other); !errors.Is(err, db.ErrKeyReused) {
		t.Fatalf("same key, other request: %v, want ErrKeyReused", err)
	}
	// A key past its window names a new command.
	if _, err := pool.Exec(ctx, `UPDATE idempotency_keys SET created_at = now() - interval '25 hours'`); err != nil {
		t.Fatal(err)
	}
	if c := create(t, store, other); c.ID != other.ID {
		t.Fatalf("key past its window: got %v, want a new command %v", c.ID, other.ID)
	}
	if n, err := store.PurgeIdempotencyKeys(ctx, 100); err != nil || n != 0 {
		t.Fatalf("purge removed %d (err %v), want 0: the key was just reused", n, err)
	}
	var n int
	_ = pool.QueryRow(ctx, `SELECT count(*) FROM commands`).Scan(&n)
	if n != 2 {
		t.Fatalf("%d commands stored, want 2", n)
	}
	// An unknown device takes no key.
	ghost := newCommand("ghost", time.Hour)
	ghost.APIKeyID, ghost.IdempotencyKey, ghost.RequestHash = keyID, "ghost-1", []byte("h")
	if _, _, err := store.CreateCommand(ctx, ghost); !errors.Is(err, db.ErrNotFound) {
		t.Fatalf("unknown device with a key: %v, want ErrNotFound", err)
	}
	_ = pool.QueryRow(ctx, `SELECT count(*) FROM idempotency_keys WHERE key = 'ghost-1'`).Scan(&n)
	if n != 0 {
		t.Fatal("a command refused for an unknown device took its idempotency key")
	}
}

func TestSweepFailsAndExpires(t *testing.T) {
	t.Parallel()
	store, pool := setup(t, "dev-1")
	ctx := context.Background()
	late := create(t, store, newCommand("dev-1", time.Hour))
	recent := create(t, store, newCommand("dev-1", time.Hour))
	claim(t, store, online(t, store, "node-1", "dev-1"), 2)
	stale := create(t, store, newCommand("dev-1", time.Hour))
	fresh := create(t, store, newCommand("dev-1", time.Hour))
	// Past its deadline, but within the grace: the node's to fail.
	if _, err := pool.Exec(ctx, `UPDATE commands SET reply_deadline = now() - interval '1s' WHERE id = $1`, recent.ID); err != nil {
		t.Fatal(err)
	}
	// Move the clocks of two commands into the past rather than waiting.
	// The delivering node fails a command on time; the sweep is the
	// backstop, a grace later.
	if _, err := pool.Exec(ctx, `UPDATE commands SET reply_deadline = now() - $2::interval - interval '1s' WHERE id = $1`, late.ID, db.SweepGrace); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE commands SET expires_at = now() - interval '1s' WHERE id = $1`, stale.ID); err != nil {
		t.Fatal(err)
	}
	swept, err := store.SweepCommands(ctx, 100)
	if err != nil || len(swept.Changes) != 2 || len(swept.Devices) != 0 {
		t.Fatalf("sweep: %+v, %v", swept, err)
	}
	for id, want := range map[uuid.UUID]command.Status{late.ID: command.Failed, stale.ID: command.Expired, fresh.ID: command.Pending, recent.ID: command.Delivered} {
		got, _ := store.Command(ctx, id)
		if got.Status != want {
			t.Errorf("command %s: status %s, want %s", id, got.Status, want)
		}
	}
	got, _ := store.Command(ctx, late.ID)
	if got.Error != "no reply within 10s of delivery 1" || command.Events(got)[2].Name != command.EventFailed {
		t.Errorf("timed-out command: %+v", got)
	}
	got, _ = store.Command(ctx, stale.ID)
	if got.Error != "not delivered within ttl" {
		t.Errorf("expired command: %+v", got)
	}
}

func TestPresence(t *testing.T) {
	t.Parallel()
	store, pool := setup(t, "dev-1", "dev-2")
	ctx := context.Background()
	nodeA := db.Node{ID: "node-a", Region: "ams"}
	nodeB := db.Node{ID: "node-b", Region: "fra"}
	for _, n := range []db.Node{nodeA, nodeB} {
		if created, err := store.RenewLease(ctx, n, time.Minute); err != nil || !created {
			t.Fatalf("lease %s: created=%v err=%v", n.ID, created, err)
		}
	}
	if created, err := store.RenewLease(ctx, nodeA, time.Minute); err != nil || created {
		t.Fatalf("renewal: created=%v err=%v", created, err)
	}
	s1 := db.Session{DeviceID: "dev-1", SessionID: uuid.Must(uuid.NewV7()), RemoteAddr: "127.0.0.1:1"}
	s2 := db.Session{DeviceID: "dev-2", SessionID: uuid.Must(uuid.NewV7())}
	if d, err := store.Connect(ctx, nodeA, []db.Session{s1, s2}); err != nil || len(d) != 0 {
		t.Fatalf("connect: %v %v", d, err)
	}
	// A retried batch writes the same sessions again: nothing changes.
	if d, err := store.Connect(ctx, nodeA, []db.Session{s1, s2}); err != nil || len(d) != 0 {
		t.Fatalf("connect again: %v %v", d, err)
	}
	live := func() map[string]string {
		rows, err := pool.Query(ctx, `SELECT device_id, node_id FROM presence_live`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		m := map[string]string{}
		for rows.Next() {
			var dev, node string
			_ = rows.Scan(&dev, &node)
			m[dev] = node
		}
		return m
	}
	if got := live(); got["dev-1"] != "node-a" || got["dev-2"] != "node-a" {
		t.Fatalf("presence_live = %v", got)
	}

	// dev-1 reconnects on node B: node A's session is displaced.
	s1b := db.Session{DeviceID: "dev-1", SessionID: uuid.Must(uuid.NewV7())}
	displaced, err := store.Connect(ctx, nodeB, []db.Session{s1b})
	if err != nil || len(displaced) != 1 || displaced[0] != (db.Displaced{DeviceID: "dev-1", NodeID: "node-a", SessionID: s1.SessionID}) {
		t.Fatalf("displaced = %v, %v", displaced, err)
	}
	// The newest session is the one PostgreSQL registered last, whatever
	// the session ids (and the nodes' clocks behind them) say.
	var seqA, seqB int64
	older := db.Session{DeviceID: "dev-2", SessionID: uuid.MustParse("00000000-0000-7000-8000-000000000001")} // a UUIDv7 of 1970
	if _, err := store.Connect(ctx, nodeB, []db.Session{older}); err != nil {
		t.Fatal(err)
	}
	if got := live(); got["dev-2"] != "node-b" {
		t.Fatalf("a session with a smaller id did not replace the row: %v", got)
	}
	_ = pool.QueryRow(ctx, `SELECT registered_seq FROM presence WHERE device_id = 'dev-1'`).Scan(&seqA)
	_ = pool.QueryRow(ctx, `SELECT registered_seq FROM presence WHERE device_id = 'dev-2'`).Scan(&seqB)
	if seqB <= seqA {
		t.Fatalf("registered_seq %d of the later write is not above %d", seqB, seqA)
	}
	if d, err := store.Connect(ctx, nodeA, []db.Session{s2}); err != nil || len(d) != 1 || d[0].SessionID != older.SessionID {
		t.Fatalf("dev-2 back to node A: displaced %v, %v", d, err)
	}
	// Node A's late disconnect of the old session must not remove B's row.
	if err := store.Disconnect(ctx, db.Node{ID: "node-1", Region: "test"}, []db.Session{s1}); err != nil {
		t.Fatal(err)
	}
	if got := live(); got["dev-1"] != "node-b" {
		t.Fatalf("old session's disconnect removed the new row: %v", got)
	}
	d, err := store.Device(ctx, "dev-1")
	if err != nil || !d.Online || d.Presence.NodeID != "node-b" || d.Presence.Region != "fra" {
		t.Fatalf("device = %+v, %v", d, err)
	}

	if d, _ := store.Device(ctx, "dev-2"); d.LastSeenAt != nil {
		t.Fatalf("dev-2 never disconnected but has last_seen_at")
	}

	// Node A's lease lapses: its rows stay in presence but leave presence_live.
	if _, err := pool.Exec(ctx, `UPDATE nodes SET lease_expires_at = now() - interval '1s' WHERE id = 'node-a'`); err != nil {
		t.Fatal(err)
	}
	if got := live(); len(got) != 1 || got["dev-1"] != "node-b" {
		t.Fatalf("presence_live with a lapsed lease = %v", got)
	}
	d, _ = store.Device(ctx, "dev-2")
	if d.Online {
		t.Fatalf("dev-2 on a lapsed node reads online")
	}
	if n, err := store.ReapNodes(ctx, 0); err != nil || n != 1 {
		t.Fatalf("reap = %d, %v", n, err)
	}
	var rows int
	_ = pool.QueryRow(ctx, `SELECT count(*) FROM presence WHERE node_id = 'node-a'`).Scan(&rows)
	if rows != 0 {
		t.Fatalf("reaped node kept %d presence rows", rows)
	}
	// Node A comes back and re-asserts dev-2; dev-1 moved on and stays on B.
	if created, err := store.RenewLease(ctx, nodeA, time.Minute); err != nil || !created {
		t.Fatalf("lease after reap: created=%v err=%v", created, err)
	}
	if err := store.Reassert(ctx, nodeA, []db.Session{s1, s2}); err != nil {
		t.Fatal(err)
	}
	if got := live(); got["dev-1"] != "node-b" || got["dev-2"] != "node-a" {
		t.Fatalf("after reassert: %v", got)
	}

	if err := store.RemoveNode(ctx, "node-b"); err != nil {
		t.Fatal(err)
	}
	if got := live(); len(got) != 1 {
		t.Fatalf("after removing node-b: %v", got)
	}
	_ = store.Disconnect(ctx, db.Node{ID: "node-1", Region: "test"}, []db.Session{s2})
	d, _ = store.Device(ctx, "dev-2")
	if d.Online || d.LastSeenAt == nil {
		t.Fatalf("after disconnect: %+v", d)
	}
}

// Sessions that their node never disconnects (it died, or restarted)
// still join the presence history: when a newer session replaces them,
// when the dead node is reaped, or when the node's next process clears
// its rows. A session replaced on a live node is left to that node.
func TestPresenceHistoryOfLostNodes(t *testing.T) {
	t.Parallel()
	store, pool := setup(t, "dev-1", "dev-2", "dev-3", "dev-4")
	ctx := context.Background()
	nodeA, nodeB, nodeC := db.Node{ID: "node-a", Region: "ams"}, db.Node{ID: "node-b", Region: "fra"}, db.Node{ID: "node-c", Region: "fra"}
	for _, n := range []db.Node{nodeA, nodeB, nodeC} {
		if _, err := store.RenewLease(ctx, n, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	// A session id is a UUIDv7: its first 48 bits are when it started.
	startedAgo := func(device string, ago time.Duration) db.Session {
		id := uuid.Must(uuid.NewV7())
		ms := time.Now().Add(-ago).UnixMilli()
		for i := range 6 {
			id[i] = byte(ms >> (40 - 8*i))
		}
		return db.Session{DeviceID: device, SessionID: id, RemoteAddr: "127.0.0.1:1"}
	}
	session := func(device string) db.Session { return startedAgo(device, 0) }
	connect := func(n db.Node, ss ...db.Session) {
		t.Helper()
		if _, err := store.Connect(ctx, n, ss); err != nil {
			t.Fatal(err)
		}
	}
	history := func(device string) []db.SessionRecord {
		t.Helper()
		h, err := store.DeviceSessions(ctx, device, 10)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	// dev-1 and dev-2 connected to node A a minute ago; dev-4 a moment ago.
	a1, a2, a4 := startedAgo("dev-1", time.Minute), startedAgo("dev-2", time.Minute), session("dev-4")
	connect(nodeA, a1, a2, a4)

	// A live node's replaced session waits for that node's Disconnect.
	b3, c3 := session("dev-3"), session("dev-3")
	connect(nodeB, b3)
	connect(nodeC, c3)
	if h := history("dev-3"); len(h) != 0 {
		t.Fatalf("a session replaced on a live node was recorded by the replacement: %+v", h)
	}

	// Node A dies: its last heartbeat was 30 s ago (after dev-1 and dev-2
	// connected, before dev-4 did), its lease lapsed.
	var heartbeat time.Time
	if err := pool.QueryRow(ctx, `UPDATE nodes SET heartbeat_at = now() - interval '30s', lease_expires_at = now() - interval '1s'
		WHERE id = 'node-a' RETURNING heartbeat_at`).Scan(&heartbeat); err != nil {
		t.Fatal(err)
	}
	ended := func(h []db.SessionRecord, s db.Session, node, region string, at time.Time) {
		t.Helper()
		for _, r := range h {
			if r.SessionID != s.SessionID {
				continue
			}
			if r.NodeID != node || r.Region != region || r.RemoteAddr != s.RemoteAddr || !r.DisconnectedAt.Equal(at) {
				t.Fatalf("session %s recorded as %+v: want node %s, region %s, ended %v", s.SessionID, r, node, region, at)
			}
			if started := time.Unix(s.SessionID.Time().UnixTime()); r.ConnectedAt.Sub(started).Abs() > time.Millisecond {
				t.Fatalf("session %s connected_at %v, want its id's %v", s.SessionID, r.ConnectedAt, started)
			}
			return
		}
		t.Fatalf("session %s of %s is not in the history %+v", s.SessionID, s.DeviceID, h)
	}
	// dev-1 comes back on node B: its session on dead A ended at A's last heartbeat.
	connect(nodeB, session("dev-1"))
	ended(history("dev-1"), a1, "node-a", "ams", heartbeat)

	// dev-2 stays away until A is reaped: its session is recorded then,
	// and the device was last seen at A's heartbeat, in A's region.
	if n, err := store.ReapNodes(ctx, 0); err != nil || n != 1 {
		t.Fatalf("reap = %d, %v", n, err)
	}
	ended(history("dev-2"), a2, "node-a", "ams", heartbeat)
	// dev-4's session began after A's last heartbeat: it ended as it began.
	if h := history("dev-4"); len(h) != 1 || !h[0].DisconnectedAt.Equal(h[0].ConnectedAt) {
		t.Fatalf("dev-4's session, begun after its node's last heartbeat: %+v, want it ended at its start", h)
	}
	ended(history("dev-4"), a4, "node-a", "ams", history("dev-4")[0].ConnectedAt)
	if d, err := store.Device(ctx, "dev-4"); err != nil || d.LastSeenAt == nil || !d.LastSeenAt.Equal(history("dev-4")[0].ConnectedAt) {
		t.Fatalf("dev-4 after its node was reaped: %+v, %v; want last seen when its session began", d, err)
	}
	if d, err := store.Device(ctx, "dev-2"); err != nil || d.Online || d.LastSeenAt == nil || !d.LastSeenAt.Equal(heartbeat) || d.Region != "ams" {
		t.Fatalf("dev-2 after its node was reaped: %+v, %v; want offline, last seen %v in ams", d, err, heartbeat)
	}

	// Node C restarts: its next process clears dev-3's session, ended now.
	before := time.Now()
	if err := store.ClearNode(ctx, "node-c"); err != nil {
		t.Fatal(err)
	}
	var cleared []db.SessionRecord
	for _, r := range history("dev-3") {
		if r.SessionID == c3.SessionID {
			cleared = append(cleared, r)
		}
	}
	if len(cleared) != 1 || cleared[0].NodeID != "node-c" || cleared[0].DisconnectedAt.Before(before.Add(-time.Second)) {
		t.Fatalf("dev-3's history after node-c cleared its rows: %+v", history("dev-3"))
	}
	// Node B's late Disconnect of dev-3's first session records it once.
	for range 2 {
		if err := store.Disconnect(ctx, nodeB, []db.Session{b3}); err != nil {
			t.Fatal(err)
		}
	}
	if h := history("dev-3"); len(h) != 2 {
		t.Fatalf("dev-3's history = %+v, want its two sessions once each", h)
	}

	// Node A was not dead, only cut off: it re-asserts dev-2's session and
	// later disconnects it. The history then holds the real end.
	if _, err := store.RenewLease(ctx, nodeA, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := store.Reassert(ctx, nodeA, []db.Session{a2}); err != nil {
		t.Fatal(err)
	}
	before = time.Now()
	if err := store.Disconnect(ctx, nodeA, []db.Session{a2}); err != nil {
		t.Fatal(err)
	}
	if h := history("dev-2"); len(h) != 1 || h[0].DisconnectedAt.Before(before.Add(-time.Second)) {
		t.Fatalf("dev-2's history after node-a disconnected it for real: %+v", h)
	}
}

func TestParseNodeMessages(t *testing.T) {
	sid := uuid.New()
	got := db.ParseNodeMessages("wake dev-1\nkick dev-2 " + sid.String() + "\nbogus line\nkick dev-3 not-a-uuid\nwake dev-4\nclose dev-5 disabled\nclose dev-6\njob " + sid.String() + " 3 9\njob " + sid.String() + " 9 3")
	want := []db.NodeMessage{{DeviceID: "dev-1"}, {Kick: true, DeviceID: "dev-2", SessionID: sid}, {DeviceID: "dev-4"}, {DeviceID: "dev-5", Close: "disabled"},
		{Job: db.JobWake{Job: sid, First: 3, Last: 9}}}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

// The delivering node fails a command whose reply clock ran out, unless it
// was answered or delivered again (to another session) meanwhile.
func TestFailUnanswered(t *testing.T) {
	t.Parallel()
	store, _ := setup(t, "dev-1")
	ctx := context.Background()
	s1 := online(t, store, "node-1", "dev-1")
	silent := create(t, store, newCommand("dev-1", time.Hour))
	answered := create(t, store, newCommand("dev-1", time.Hour))
	claim(t, store, s1, 2)
	if _, err := store.StoreReplies(ctx, []db.Reply{{ID: answered.ID, DeviceID: "dev-1", OK: true}}); err != nil {
		t.Fatal(err)
	}
	changes, err := store.FailUnanswered(ctx, []db.Delivery{
		{ID: silent.ID, DeviceID: "dev-1", SessionID: s1.SessionID},
		{ID: answered.ID, DeviceID: "dev-1", SessionID: s1.SessionID},
	})
	if err != nil || len(changes) != 1 || changes[0].ID != silent.ID {
		t.Fatalf("fail unanswered: %v, %v", changes, err)
	}
	got, _ := store.Command(ctx, silent.ID)
	if got.Status != command.Failed || got.Error != "no reply within 10s of delivery 1" {
		t.Fatalf("silent: %+v", got)
	}

	// A clock of an earlier delivery runs out after a redelivery: no change.
	again := create(t, store, newCommand("dev-1", time.Hour))
	claim(t, store, s1, 1)
	s2 := online(t, store, "node-2", "dev-1")
	if got := claimIDs(t, store, s2, 1); !slices.Equal(got, []uuid.UUID{again.ID}) {
		t.Fatalf("the newer session claimed %v, want %v given back to it", got, again.ID)
	}
	if changes, err := store.FailUnanswered(ctx, []db.Delivery{{ID: again.ID, DeviceID: "dev-1", SessionID: s1.SessionID}}); err != nil || len(changes) != 0 {
		t.Fatalf("an old session's clock failed the redelivered command: %v, %v", changes, err)
	}
}
