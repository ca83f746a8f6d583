package maintenance

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/db/dbtest"
	"github.com/switchboard-iot/switchboard/internal/actors"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

func TestMain(m *testing.M) { os.Exit(dbtest.Main(m)) }

// start runs a maintainer beside the edge edgeID on store until the test
// ends; Run must then return nil.
func start(t *testing.T, store *db.Store, cfg Config) *Maintainer {
	t.Helper()
	cfg.EdgeID, cfg.Store, cfg.Metrics, cfg.Log = "edge-m", store, prometheus.NewRegistry(), slog.New(slog.DiscardHandler)
	m := New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	task := actors.Go(func() error { return m.Run(ctx) })
	t.Cleanup(func() {
		cancel()
		if err := task.Wait(); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return m
}

// value reads a counter or gauge.
func value(t *testing.T, c prometheus.Metric) float64 {
	t.Helper()
	var sample dto.Metric
	if err := c.Write(&sample); err != nil {
		t.Fatal(err)
	}
	if g := sample.GetGauge(); g != nil {
		return g.GetValue()
	}
	return sample.GetCounter().GetValue()
}

// eventually polls cond until it holds, for at most 10s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func addDevice(t *testing.T, store *db.Store, id string) {
	t.Helper()
	if _, err := store.AddDevices(context.Background(), []db.Credential{{ID: id, SecretHash: secret.Hash("s")}}); err != nil {
		t.Fatal(err)
	}
}

// The sweeper expires a command never delivered in its ttl, counts it,
// and then wakes the edge that waits on it (its reply_to): the write
// committed before the wake-up.
func TestSweepWakesTheEdge(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := dbtest.NewPool(t)
	store := db.NewStore(pool)
	addDevice(t, store, "dev-1")
	c, _, err := store.CreateCommand(ctx, db.NewCommand{ID: uuid.Must(uuid.NewV7()), DeviceID: "dev-1", Name: "x",
		Args: json.RawMessage(`{}`), Timeout: time.Second, TTL: time.Hour, ReplyTo: "edge-w"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE commands SET expires_at = now() - interval '1 second' WHERE id = $1`, c.ID); err != nil {
		t.Fatal(err)
	}

	notifier := db.NewNotifier(pool.Config().ConnConfig, slog.New(slog.DiscardHandler))
	woken, ready := make(chan string, 10), make(chan struct{}, 1)
	unlisten := notifier.Listen(db.EdgeChannel("edge-w"), func(payload string) { woken <- payload }, func() {
		select {
		case ready <- struct{}{}:
		default:
		}
	})
	defer unlisten()
	listenCtx, stopListening := context.WithCancel(ctx)
	listening := actors.Go(func() error { return notifier.Run(listenCtx) })
	defer func() { stopListening(); _ = listening.Wait() }()
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		t.Fatal("the listener did not start")
	}

	m := start(t, store, Config{SweepInterval: 20 * time.Millisecond})
	select {
	case <-woken:
	case <-time.After(10 * time.Second):
		t.Fatal("the edge was not woken for its swept command")
	}
	var status string
	if err := pool.QueryRow(ctx, `SELECT status FROM commands WHERE id = $1`, c.ID).Scan(&status); err != nil || status != "expired" {
		t.Fatalf("the command is %q (%v) when its edge is woken, want expired", status, err)
	}
	if swept, expired := value(t, m.metrics.swept), value(t, m.metrics.final.WithLabelValues("expired")); swept != 1 || expired != 1 {
		t.Errorf("swept %v, expired %v by the metrics; want 1 and 1", swept, expired)
	}
}
