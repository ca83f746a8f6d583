package db_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/command"
	"github.com/switchboard-iot/switchboard/internal/pgtest"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func setup(t *testing.T, devices ...string) (*db.Store, *pgxpool.Pool) {
	t.Helper()
	pool := pgtest.NewPool(t)
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
	pool := pgtest.NewPool(t)
	// The database comes migrated; migrating again must change nothing.
	if err := db.Migrate(context.Background(), pool, pgtest.Logger()); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM goose_db_version WHERE version_id > 0`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Fatalf("goose_db_version has %d applied migrations, want 1", n)
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
	hash, err := store.DeviceSecretHash(ctx, "dev-1")
	if err != nil || !secret.Matches("secret-of-dev-1", hash) {
		t.Fatalf("dev-1 kept its first secret? err=%v", err)
	}
	if _, err := store.AddDevices(ctx, []db.Credential{{ID: "bad id with spaces", SecretHash: secret.Hash("z")}}); !errors.Is(err, db.ErrInvalid) {
		t.Fatalf("bad id: err = %v, want ErrInvalid", err)
	}
	if _, err := store.DeviceSecretHash(ctx, "nope"); !errors.Is(err, db.ErrNotFound) {
		t.Fatalf("unknown device: err = %v, want ErrNotFound", err)
	}
}

func newCommand(device string, ttl time.Duration) db.NewCommand {
	return db.NewCommand{
		ID: uuid.Must(uuid.NewV7()), DeviceID: device, Name: "get_state", Args: json.RawMessage(`{"a":1}`),
		Timeout: 10 * time.Second, TTL: ttl, ReplyTo: "edge-a",
	}
}

func TestCommandLifecycle(t *testing.T) {
	t.Parallel()
	store, _ := setup(t, "dev-1", "dev-2")
	ctx := context.Background()

	if _, err := store.CreateCommand(ctx, newCommand("ghost", time.Hour)); !errors.Is(err, db.ErrNotFound) {
		t.Fatalf("unknown device: err = %v, want ErrNotFound", err)
	}
	c, err := store.CreateCommand(ctx, newCommand("dev-1", time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if c.Status != command.Pending || string(c.Args) != `{"a": 1}` || time.Duration(c.Timeout) != 10*time.Second {
		t.Fatalf("created = %+v", c)
	}
	pending, err := store.PendingCommands(ctx, []string{"dev-1", "dev-2"}, 10)
	if err != nil || len(pending) != 1 || pending[0].ID != c.ID {
		t.Fatalf("pending = %v, %v", pending, err)
	}

	changes, err := store.MarkDelivered(ctx, "node-1", []uuid.UUID{c.ID})
	if err != nil || len(changes) != 1 || !slices.Equal(changes[0].Edges, []string{"edge-a"}) {
		t.Fatalf("mark delivered: %v, %v", changes, err)
	}
	if pending, _ := store.PendingCommands(ctx, []string{"dev-1"}, 10); len(pending) != 0 {
		t.Fatalf("delivered command still pending")
	}

	// Another device cannot answer dev-1's command.
	changes, err = store.StoreReplies(ctx, []db.Reply{{ID: c.ID, DeviceID: "dev-2", OK: true}})
	if err != nil || len(changes) != 0 {
		t.Fatalf("foreign reply changed %v (err %v)", changes, err)
	}
	changes, err = store.StoreReplies(ctx, []db.Reply{
		{ID: c.ID, DeviceID: "dev-1", OK: true, Result: json.RawMessage(`{"t":21}`)},
		{ID: c.ID, DeviceID: "dev-1", OK: false, Error: "duplicate in the same batch"},
	})
	if err != nil || len(changes) != 1 {
		t.Fatalf("reply: %v, %v", changes, err)
	}
	got, err := store.Command(ctx, c.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Status.Terminal() || got.DeliveredAt == nil || got.CompletedAt == nil || got.OK == nil {
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

func TestReplyBeforeDeliveryMark(t *testing.T) {
	t.Parallel()
	store, _ := setup(t, "dev-1")
	ctx := context.Background()
	c, err := store.CreateCommand(ctx, newCommand("dev-1", time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.StoreReplies(ctx, []db.Reply{{ID: c.ID, DeviceID: "dev-1", OK: false, Error: "too hot"}}); err != nil {
		t.Fatal(err)
	}
	// The delivery mark lands after the reply: it must not reopen the command.
	changes, err := store.MarkDelivered(ctx, "node-1", []uuid.UUID{c.ID})
	if err != nil || len(changes) != 0 {
		t.Fatalf("late delivery mark changed %v (err %v)", changes, err)
	}
	got, _ := store.Command(ctx, c.ID)
	if got.Status != command.Failed || got.Error != "too hot" || got.OK == nil || *got.OK {
		t.Fatalf("got %+v", got)
	}
	if ev := command.Events(got); ev[len(ev)-1].Name != command.EventReply {
		t.Fatalf("events %v should end with a reply", ev)
	}
}

func TestSweepFailsAndExpires(t *testing.T) {
	t.Parallel()
	store, pool := setup(t, "dev-1")
	ctx := context.Background()
	late, _ := store.CreateCommand(ctx, newCommand("dev-1", time.Hour))
	stale, _ := store.CreateCommand(ctx, newCommand("dev-1", time.Hour))
	fresh, _ := store.CreateCommand(ctx, newCommand("dev-1", time.Hour))
	if _, err := store.MarkDelivered(ctx, "node-1", []uuid.UUID{late.ID}); err != nil {
		t.Fatal(err)
	}
	// Move the clocks of two commands into the past rather than waiting.
	if _, err := pool.Exec(ctx, `UPDATE commands SET reply_deadline = now() - interval '1s' WHERE id = $1`, late.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE commands SET expires_at = now() - interval '1s' WHERE id = $1`, stale.ID); err != nil {
		t.Fatal(err)
	}
	changes, err := store.SweepCommands(ctx, 100)
	if err != nil || len(changes) != 2 {
		t.Fatalf("sweep: %v, %v", changes, err)
	}
	for id, want := range map[uuid.UUID]command.Status{late.ID: command.Failed, stale.ID: command.Expired, fresh.ID: command.Pending} {
		got, _ := store.Command(ctx, id)
		if got.Status != want {
			t.Errorf("command %s: status %s, want %s", id, got.Status, want)
		}
	}
	got, _ := store.Command(ctx, late.ID)
	if got.Error != "no reply within 00:00:10" || command.Events(got)[2].Name != command.EventFailed {
		t.Errorf("timed-out command: %+v", got)
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
	if d, stale, err := store.Connect(ctx, nodeA, []db.Session{s1, s2}); err != nil || len(d) != 0 || len(stale) != 0 {
		t.Fatalf("connect: %v %v %v", d, stale, err)
	}
	// A retried batch writes the same sessions again: nothing changes.
	if d, stale, err := store.Connect(ctx, nodeA, []db.Session{s1, s2}); err != nil || len(d) != 0 || len(stale) != 0 {
		t.Fatalf("connect again: %v %v %v", d, stale, err)
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
	displaced, stale, err := store.Connect(ctx, nodeB, []db.Session{s1b})
	if err != nil || len(stale) != 0 || len(displaced) != 1 || displaced[0] != (db.Displaced{DeviceID: "dev-1", NodeID: "node-a", SessionID: s1.SessionID}) {
		t.Fatalf("displaced = %v, stale = %v, %v", displaced, stale, err)
	}
	// Node A's write of the older session lands late: the newer one stays,
	// and the late one is reported stale, for node A to close.
	displaced, stale, err = store.Connect(ctx, nodeA, []db.Session{s1})
	if err != nil || len(displaced) != 0 || len(stale) != 1 || stale[0] != s1.SessionID {
		t.Fatalf("late older session: displaced = %v, stale = %v, %v", displaced, stale, err)
	}
	// Node A's late disconnect of the old session must not remove B's row.
	if err := store.Disconnect(ctx, []db.Session{s1}); err != nil {
		t.Fatal(err)
	}
	if got := live(); got["dev-1"] != "node-b" {
		t.Fatalf("old session's disconnect removed the new row: %v", got)
	}
	d, err := store.Device(ctx, "dev-1")
	if err != nil || !d.Online || d.Presence.NodeID != "node-b" || d.Presence.Region != "fra" {
		t.Fatalf("device = %+v, %v", d, err)
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
	d, _ = store.Device(ctx, "dev-2")
	if d.LastSeenAt != nil {
		t.Fatalf("dev-2 never disconnected but has last_seen_at")
	}
	_ = store.Disconnect(ctx, []db.Session{s2})
	d, _ = store.Device(ctx, "dev-2")
	if d.Online || d.LastSeenAt == nil {
		t.Fatalf("after disconnect: %+v", d)
	}
}

func TestParseNodeMessages(t *testing.T) {
	sid := uuid.New()
	got := db.ParseNodeMessages("wake dev-1\nkick dev-2 " + sid.String() + "\nbogus line\nkick dev-3 not-a-uuid\nwake dev-4")
	want := []db.NodeMessage{{DeviceID: "dev-1"}, {Kick: true, DeviceID: "dev-2", SessionID: sid}, {DeviceID: "dev-4"}}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestInsertEvents(t *testing.T) {
	t.Parallel()
	store, pool := setup(t, "dev-1")
	ctx := context.Background()
	err := store.InsertEvents(ctx, []db.DeviceEvent{
		{DeviceID: "dev-1", Name: "telemetry", Data: json.RawMessage(`{"c":20.5}`)},
		{DeviceID: "dev-1", Name: "alert"},
	})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	rows, _ := pool.Query(ctx, `SELECT name || ':' || coalesce(data::text, 'null') FROM events ORDER BY id`)
	for rows.Next() {
		var s string
		_ = rows.Scan(&s)
		names = append(names, s)
	}
	if strings.Join(names, ",") != `telemetry:{"c": 20.5},alert:null` {
		t.Fatalf("events = %v", names)
	}
}
