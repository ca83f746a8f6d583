package db_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/db/dbtest"
)

// recorder collects what a subscription hears, and signals each arrival.
type recorder struct {
	mu       sync.Mutex
	payloads []string
	readies  int
	signal   chan struct{}
}

func newRecorder() *recorder { return &recorder{signal: make(chan struct{}, 100)} }

func (r *recorder) notify(p string) {
	r.mu.Lock()
	r.payloads = append(r.payloads, p)
	r.mu.Unlock()
	r.signal <- struct{}{}
}

func (r *recorder) ready() {
	r.mu.Lock()
	r.readies++
	r.mu.Unlock()
	r.signal <- struct{}{}
}

// waitFor waits on signals until cond holds, or fails after a deadline.
func (r *recorder) waitFor(t *testing.T, what string, cond func(payloads []string, readies int) bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		r.mu.Lock()
		ok := cond(r.payloads, r.readies)
		r.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-r.signal:
		case <-deadline:
			t.Fatalf("timed out waiting for %s; have payloads %q", what, r.payloads)
		}
	}
}

func TestNotifier(t *testing.T) {
	t.Parallel()
	store, pool := setup(t, "dev-1")
	ctx, cancel := context.WithCancel(context.Background())
	n := db.NewNotifier(pool.Config().ConnConfig, dbtest.Logger())
	done := make(chan error)
	go func() { done <- n.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	edge := newRecorder()
	n.Listen(db.EdgeChannel("e1"), edge.notify, edge.ready)
	edge.waitFor(t, "first ready", func(_ []string, r int) bool { return r == 1 })

	id1, id2 := uuid.New(), uuid.New()
	if err := notifyChanges(ctx, store, db.Change{ID: id1, Edges: []string{"e1", "e2"}}, db.Change{ID: id2, Edges: []string{"e1"}}); err != nil {
		t.Fatal(err)
	}
	edge.waitFor(t, "both ids in one payload", func(p []string, _ int) bool {
		return len(p) == 1 && p[0] == id1.String()+"\n"+id2.String()
	})

	// A second channel subscribed while the first is waiting.
	node := newRecorder()
	unlisten := n.Listen(db.NodeChannel("n1"), node.notify, node.ready)
	node.waitFor(t, "node ready", func(_ []string, r int) bool { return r == 1 })
	if _, err := store.Connect(ctx, db.Node{ID: "n1", Region: "ams"}, []db.Session{{DeviceID: "dev-1", SessionID: uuid.New()}}); err != nil {
		t.Fatal(err)
	}
	if _, err := store.RenewLease(ctx, db.Node{ID: "n1", Region: "ams"}, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := store.Notify(ctx, []db.Notice{{Wake: "dev-1"}, {Wake: "dev-offline"}, {Wake: "dev-1"}}); err != nil {
		t.Fatal(err)
	}
	node.waitFor(t, "wake", func(p []string, _ int) bool { return len(p) == 1 && p[0] == "wake dev-1" })

	// Kill the listening backend: the notifier reconnects, re-listens and
	// calls ready again so owners rescan.
	var killed int
	if err := pool.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND application_name = $1`, db.ListenerApplicationName).Scan(&killed); err != nil || killed != 1 {
		t.Fatalf("terminated %d listeners (err %v), want 1", killed, err)
	}
	edge.waitFor(t, "ready after reconnect", func(_ []string, r int) bool { return r >= 2 })
	if got := n.Connections(); got < 2 {
		t.Fatalf("connections = %d after the backend was killed", got)
	}
	if err := notifyChanges(ctx, store, db.Change{ID: id2, Edges: []string{"e1"}}); err != nil {
		t.Fatal(err)
	}
	edge.waitFor(t, "a payload after reconnect", func(p []string, _ int) bool { return len(p) >= 2 && p[len(p)-1] == id2.String() })

	// After unlisten, the node channel hears nothing; the edge still does.
	unlisten()
	if err := store.Notify(ctx, []db.Notice{{Wake: "dev-1"}}); err != nil {
		t.Fatal(err)
	}
	if err := notifyChanges(ctx, store, db.Change{ID: id1, Edges: []string{"e1"}}); err != nil {
		t.Fatal(err)
	}
	edge.waitFor(t, "edge payload after unlisten", func(p []string, _ int) bool { return p[len(p)-1] == id1.String() })
	node.mu.Lock()
	defer node.mu.Unlock()
	if len(node.payloads) != 1 {
		t.Fatalf("unlistened channel heard %q", node.payloads)
	}
}

func TestNotifyPayloadsSplit(t *testing.T) {
	t.Parallel()
	store, pool := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	n := db.NewNotifier(pool.Config().ConnConfig, dbtest.Logger())
	done := make(chan error)
	go func() { done <- n.Run(ctx) }()
	defer func() { cancel(); <-done }()
	edge := newRecorder()
	n.Listen(db.EdgeChannel("e1"), edge.notify, edge.ready)
	edge.waitFor(t, "ready", func(_ []string, r int) bool { return r == 1 })

	// 500 ids of 36 bytes are ~18.5 kB: more than one 8000-byte payload.
	var changes []db.Change
	want := map[string]bool{}
	for range 500 {
		id := uuid.New()
		changes = append(changes, db.Change{ID: id, Edges: []string{"e1"}})
		want[id.String()] = true
	}
	if err := notifyChanges(ctx, store, changes...); err != nil {
		t.Fatal(err)
	}
	edge.waitFor(t, "all ids", func(p []string, _ int) bool {
		n := 0
		for _, payload := range p {
			if len(payload) >= 8000 {
				t.Fatalf("payload of %d bytes", len(payload))
			}
			n += len(strings.Split(payload, "\n"))
		}
		return n == len(want)
	})
}

func notifyChanges(ctx context.Context, store *db.Store, changes ...db.Change) error {
	var notices []db.Notice
	for i := range changes {
		notices = append(notices, db.Notice{Change: &changes[i]})
	}
	return store.Notify(ctx, notices)
}
