package maintenance

import (
	"context"
	"encoding/json"
	"log/slog"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/db/dbtest"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

// A retention round deletes, batch after batch, what is older than its
// keep, then trims each device to its cap; final commands stay at least
// MinRetainCommands; a negative keep or cap keeps everything.
func TestRetainOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := dbtest.NewPool(t)
	store := db.NewStore(pool)
	if _, err := store.AddDevices(ctx, []db.Credential{{ID: "dev-1", SecretHash: secret.Hash("s")}}); err != nil {
		t.Fatal(err)
	}
	// 2,500 events eight days old (three batches), then 10 new ones.
	var events []db.DeviceEvent
	for range 2510 {
		events = append(events, db.DeviceEvent{DeviceID: "dev-1", Name: "telemetry", Data: json.RawMessage(`1`)})
	}
	if _, err := store.InsertEvents(ctx, events); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE events SET received_at = now() - interval '8 days'
		WHERE id IN (SELECT id FROM events ORDER BY id LIMIT 2500)`); err != nil {
		t.Fatal(err)
	}
	// Two final commands: one ended 30 h ago, one 2 h ago.
	for _, ended := range []string{"30 hours", "2 hours"} {
		c, _, err := store.CreateCommand(ctx, db.NewCommand{ID: uuid.Must(uuid.NewV7()), DeviceID: "dev-1", Name: "old",
			Args: json.RawMessage(`{}`), Timeout: time.Second, TTL: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pool.Exec(ctx, `UPDATE commands SET status = 'expired', completed_at = now() - $2::interval WHERE id = $1`,
			c.ID, ended); err != nil {
			t.Fatal(err)
		}
	}
	count := func(table string) (n int) {
		t.Helper()
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	maintainer := func(cfg Config) *Maintainer {
		cfg.EdgeID, cfg.Store, cfg.Metrics, cfg.Log = "edge-r", store, prometheus.NewRegistry(), slog.New(slog.DiscardHandler)
		return New(cfg)
	}

	keepAll := maintainer(Config{RetainCommands: -1, RetainEvents: -1, EventsPerDevice: -1})
	keepAll.retainOnce(ctx)
	if events, commands := count("events"), count("commands"); events != 2510 || commands != 2 {
		t.Fatalf("with negative keeps: %d events and %d commands left, want all 2510 and 2", events, commands)
	}

	// Commands kept an hour are kept 25 h all the same; events 7 days, 4 a device.
	m := maintainer(Config{RetainCommands: time.Hour, EventsPerDevice: 4})
	m.retainOnce(ctx)
	if events, commands := count("events"), count("commands"); events != 4 || commands != 1 {
		t.Fatalf("after a round: %d events and %d commands left, want the 4 newest events and the command of 2 h ago", events, commands)
	}
	for label, want := range map[string]float64{"events": 2500, "events_capped": 6, "commands": 1, "jobs": 0, "sessions": 0} {
		var sample dto.Metric
		if err := m.metrics.purged.WithLabelValues(label).Write(&sample); err != nil {
			t.Fatal(err)
		}
		if got := sample.GetCounter().GetValue(); got != want {
			t.Errorf("%s deleted, by the metric: %v, want %v", label, got, want)
		}
	}
}
