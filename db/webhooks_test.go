package db_test

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/switchboard-iot/switchboard/db"
)

// outbox returns an endpoint's deliveries' types and devices, in order.
func outbox(t *testing.T, pool *pgxpool.Pool, webhook int64) []string {
	t.Helper()
	rows, err := pool.Query(context.Background(), `
		SELECT event_type || ':' || coalesce(device_id, '-') || ':' || coalesce(payload->'data'->>'name', payload->'data'->>'status', '')
		FROM webhook_deliveries WHERE webhook_id = $1 ORDER BY id`, webhook)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	return out
}

// TestWebhookOutbox: the triggers write a delivery per matching endpoint
// in the transaction of the change, and none for a change rolled back.
func TestWebhookOutbox(t *testing.T) {
	t.Parallel()
	store, pool := setup(t, "dev-1", "dev-2")
	ctx := context.Background()
	alarms, err := store.CreateWebhook(ctx, "https://a.example.com/", []string{db.WebhookDeviceEvent}, []string{"alarm"}, "whsec_AAAA")
	if err != nil {
		t.Fatal(err)
	}
	all, err := store.CreateWebhook(ctx, "https://b.example.com/", []string{db.WebhookDeviceEvent, db.WebhookCommandExpired, db.WebhookJobFinished,
		db.WebhookDeviceConnected}, []string{}, "whsec_BBBB")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.InsertEvents(ctx, []db.DeviceEvent{
		{DeviceID: "dev-1", Name: "telemetry", Data: json.RawMessage(`{"t":1}`)},
		{DeviceID: "dev-1", Name: "alarm", Data: json.RawMessage(`{"smoke":true}`)},
		{DeviceID: "dev-2", Name: "alarm"},
	}); err != nil {
		t.Fatal(err)
	}
	// Rolled back: no delivery.
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO events (device_id, name) VALUES ('dev-1', 'alarm')`); err != nil {
		t.Fatal(err)
	}
	_ = tx.Rollback(ctx)
	// A command that expires; one that is cancelled sends nothing.
	if _, err := pool.Exec(ctx, `
		INSERT INTO commands (id, device_id, name, timeout, expires_at) VALUES
			(gen_random_uuid(), 'dev-2', 'open', '1s', now()), (gen_random_uuid(), 'dev-2', 'shut', '1s', now())`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE commands SET status = CASE name WHEN 'open' THEN 'expired' ELSE 'cancelled' END, completed_at = now()`); err != nil {
		t.Fatal(err)
	}
	// A job that finishes.
	if _, err := pool.Exec(ctx, `INSERT INTO jobs (id, name, timeout, ttl, target, rate) VALUES (gen_random_uuid(), 'reboot', '1s', '1m', '{}', 1)`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE jobs SET status = 'aborted'`); err != nil {
		t.Fatal(err)
	}
	if got, want := outbox(t, pool, alarms.ID), []string{"device.event:dev-1:alarm", "device.event:dev-2:alarm"}; !slices.Equal(got, want) {
		t.Errorf("alarms endpoint: %v, want %v", got, want)
	}
	if got, want := outbox(t, pool, all.ID), []string{"device.event:dev-1:telemetry", "device.event:dev-1:alarm", "device.event:dev-2:alarm",
		"command.expired:dev-2:open", "job.finished:-:reboot"}; !slices.Equal(got, want) {
		t.Errorf("all endpoint: %v, want %v", got, want)
	}
	var payload string
	if err := pool.QueryRow(ctx, `SELECT payload::text FROM webhook_deliveries WHERE webhook_id = $1 AND event_type = 'command.expired'`, all.ID).Scan(&payload); err != nil {
		t.Fatal(err)
	}
	var p struct {
		Type string
		Data struct {
			ID, DeviceID, Status string
		}
	}
	if json.Unmarshal([]byte(payload), &p) != nil || p.Type != "command.expired" || p.Data.ID == "" || p.Data.Status != "expired" {
		t.Errorf("payload %s", payload)
	}
}

// TestWebhookStateReported: a report that changes a device's reported
// document records device.state_reported with the whole document and the
// delta; a report that changes nothing, and a desired patch, record none.
func TestWebhookStateReported(t *testing.T) {
	t.Parallel()
	store, pool := setup(t, "dev-1", "dev-2")
	ctx := context.Background()
	hook, err := store.CreateWebhook(ctx, "https://a.example.com/", []string{db.WebhookStateReported}, []string{}, "whsec_AAAA")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.PatchDesired(ctx, "dev-1", json.RawMessage(`{"target_celsius":21,"mode":"heat"}`), nil); err != nil {
		t.Fatal(err)
	}
	report := func(dev, patch string) {
		t.Helper()
		if _, _, err := store.StoreReports(ctx, []db.Report{{DeviceID: dev, Patch: json.RawMessage(patch)}}); err != nil {
			t.Fatal(err)
		}
	}
	report("dev-1", `{"celsius":19.5,"mode":"heat"}`) // the row exists (the patch made it): an update
	report("dev-1", `{"mode":"heat"}`)                // changes nothing
	report("dev-2", `{"celsius":30}`)                 // the device's first row: an insert
	if got, want := outbox(t, pool, hook.ID), []string{"device.state_reported:dev-1:", "device.state_reported:dev-2:"}; !slices.Equal(got, want) {
		t.Fatalf("outbox %v, want %v", got, want)
	}
	var payload string
	if err := pool.QueryRow(ctx, `SELECT payload::text FROM webhook_deliveries WHERE webhook_id = $1 AND device_id = 'dev-1'`, hook.ID).Scan(&payload); err != nil {
		t.Fatal(err)
	}
	var p struct {
		Type string
		Data struct {
			DeviceID        string          `json:"device_id"`
			Reported        json.RawMessage `json:"reported"`
			ReportedVersion int64           `json:"reported_version"`
			DesiredVersion  int64           `json:"desired_version"`
			Delta           json.RawMessage `json:"delta"`
		}
	}
	if err := json.Unmarshal([]byte(payload), &p); err != nil {
		t.Fatal(err)
	}
	if p.Type != db.WebhookStateReported || p.Data.DeviceID != "dev-1" || p.Data.ReportedVersion != 1 || p.Data.DesiredVersion != 1 ||
		string(p.Data.Reported) != `{"mode": "heat", "celsius": 19.5}` || string(p.Data.Delta) != `{"target_celsius": 21}` {
		t.Errorf("payload %s", payload)
	}
}

// TestWebhookClaim: a device's deliveries go one at a time, in order; an
// endpoint has at most perEndpoint in flight; a lapsed lease is retaken,
// and the old attempt's outcome is ignored; an endpoint failing past the
// give-up window is disabled, and resuming enables it.
func TestWebhookClaim(t *testing.T) {
	t.Parallel()
	store, pool := setup(t, "dev-1", "dev-2", "dev-3")
	ctx := context.Background()
	wh, err := store.CreateWebhook(ctx, "https://a.example.com/", []string{db.WebhookDeviceEvent}, []string{}, "whsec_AAAA")
	if err != nil {
		t.Fatal(err)
	}
	var evs []db.DeviceEvent
	for _, dev := range []string{"dev-1", "dev-2", "dev-1", "dev-2", "dev-1"} {
		evs = append(evs, db.DeviceEvent{DeviceID: dev, Name: "n"})
	}
	if _, err := store.InsertEvents(ctx, evs); err != nil {
		t.Fatal(err)
	}
	claim := func(lease time.Duration, per int) []db.ClaimedDelivery {
		t.Helper()
		c, err := store.ClaimWebhookDeliveries(ctx, "edge-a", lease, per, 100)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	device := func(c db.ClaimedDelivery) string {
		var p struct {
			Data struct {
				DeviceID string `json:"device_id"`
			}
		}
		_ = json.Unmarshal(c.Payload, &p)
		return p.Data.DeviceID
	}
	first := claim(time.Minute, 10)
	if len(first) != 2 || device(first[0]) != "dev-1" || device(first[1]) != "dev-2" || first[0].Secret != "whsec_AAAA" {
		t.Fatalf("first claim: %+v, want dev-1's and dev-2's first", first)
	}
	if c := claim(time.Minute, 10); len(c) != 0 {
		t.Fatalf("claimed %d while each device's earlier delivery is in flight", len(c))
	}
	ok := db.DeliveryOutcome{OK: true, Code: 204, GiveUp: time.Hour}
	if err := store.FinishWebhookDelivery(ctx, first[0].ID, first[0].Attempt, ok); err != nil {
		t.Fatal(err)
	}
	next := claim(time.Minute, 10)
	if len(next) != 1 || device(next[0]) != "dev-1" || next[0].ID <= first[0].ID {
		t.Fatalf("after dev-1's first was delivered: %+v", next)
	}
	// Two in flight (dev-2's first, dev-1's second): a third device waits
	// for a slot when the limit is 2.
	if _, err := store.InsertEvents(ctx, []db.DeviceEvent{{DeviceID: "dev-3", Name: "n"}}); err != nil {
		t.Fatal(err)
	}
	if c := claim(time.Minute, 2); len(c) != 0 {
		t.Fatalf("claimed %d past the endpoint's limit", len(c))
	}
	third := claim(-time.Second, 3) // a lease that has lapsed already: its edge "died"
	if len(third) != 1 || device(third[0]) != "dev-3" {
		t.Fatalf("dev-3: %+v", third)
	}
	retaken := claim(time.Minute, 3)
	if len(retaken) != 1 || retaken[0].ID != third[0].ID || retaken[0].Attempt != 2 {
		t.Fatalf("the lapsed lease was not retaken: %+v", retaken)
	}
	// The first claimer's late answer changes nothing; the second's counts.
	if err := store.FinishWebhookDelivery(ctx, third[0].ID, 1, ok); err != nil {
		t.Fatal(err)
	}
	var status string
	_ = pool.QueryRow(ctx, `SELECT status FROM webhook_deliveries WHERE id = $1`, third[0].ID).Scan(&status)
	if status != "pending" {
		t.Errorf("a stale attempt's outcome was recorded: %s", status)
	}
	// A failure: retried, the endpoint failing.
	fail := db.DeliveryOutcome{Code: 500, Error: "answered 500", RetryIn: 0, GiveUp: time.Hour}
	if err := store.FinishWebhookDelivery(ctx, retaken[0].ID, 2, fail); err != nil {
		t.Fatal(err)
	}
	w, _ := store.GetWebhook(ctx, wh.ID)
	if w.FailingSince == nil || w.DisabledAt != nil {
		t.Errorf("after a failure: %+v", w)
	}
	list, _, err := store.ListWebhookDeliveries(ctx, wh.ID, 0, 10)
	if err != nil || list[0].Status != "pending" || list[0].Attempts != 2 || list[0].LastStatusCode == nil || *list[0].LastStatusCode != 500 ||
		list[0].NextAttemptAt == nil {
		t.Fatalf("listing after a failure: %+v %v", list, err)
	}
	// Failing past the give-up window: the delivery is given up, the
	// endpoint disabled, and nothing more is claimed for it.
	again := claim(time.Minute, 3)
	if len(again) != 1 || again[0].ID != retaken[0].ID {
		t.Fatalf("the retry: %+v", again)
	}
	fail.GiveUp = time.Nanosecond
	if err := store.FinishWebhookDelivery(ctx, again[0].ID, again[0].Attempt, fail); err != nil {
		t.Fatal(err)
	}
	_ = pool.QueryRow(ctx, `SELECT status FROM webhook_deliveries WHERE id = $1`, again[0].ID).Scan(&status)
	w, _ = store.GetWebhook(ctx, wh.ID)
	if status != "failed" || w.DisabledAt == nil || w.DisabledReason == nil {
		t.Fatalf("after the give-up window: delivery %s, webhook %+v", status, w)
	}
	if err := store.FinishWebhookDelivery(ctx, first[1].ID, first[1].Attempt, ok); err != nil {
		t.Fatal(err)
	}
	if c := claim(time.Minute, 10); len(c) != 0 {
		t.Fatalf("claimed %d of a disabled endpoint", len(c))
	}
	w, err = store.UpdateWebhook(ctx, wh.ID, db.WebhookPatch{Paused: new(false)})
	if err != nil || w.DisabledAt != nil || w.FailingSince != nil {
		t.Fatalf("resumed: %+v %v", w, err)
	}
	if c := claim(time.Minute, 10); len(c) == 0 {
		t.Fatal("nothing claimed once resumed")
	}
	// Deleting takes the deliveries with it.
	if err := store.DeleteWebhook(ctx, wh.ID); err != nil {
		t.Fatal(err)
	}
	if got := outbox(t, pool, wh.ID); len(got) != 0 {
		t.Errorf("deliveries left: %v", got)
	}
	if err := store.DeleteWebhook(ctx, wh.ID); err == nil {
		t.Error("deleting twice: no error")
	}
}
