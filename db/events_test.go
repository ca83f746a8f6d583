package db_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/db"
)

func insertEvents(t *testing.T, store *db.Store, events ...db.DeviceEvent) int64 {
	t.Helper()
	last, err := store.InsertEvents(context.Background(), events)
	if err != nil {
		t.Fatal(err)
	}
	return last
}

func TestInsertEventsKeepsTheLatestOfEachName(t *testing.T) {
	t.Parallel()
	store, pool := setup(t, "dev-1", "dev-2")
	ctx := context.Background()
	first := insertEvents(t, store,
		db.DeviceEvent{DeviceID: "dev-1", Name: "telemetry", Data: json.RawMessage(`{"c":20.5}`)},
		db.DeviceEvent{DeviceID: "dev-1", Name: "alert"},
		db.DeviceEvent{DeviceID: "dev-1", Name: "telemetry", Data: json.RawMessage(`{"c":21}`)})
	last := insertEvents(t, store, db.DeviceEvent{DeviceID: "dev-2", Name: "telemetry", Data: json.RawMessage(`{"c":3}`)})
	if last <= first {
		t.Fatalf("a later batch's highest id %d is not above the first's %d", last, first)
	}
	var names []string
	rows, _ := pool.Query(ctx, `SELECT name || ':' || coalesce(data::text, 'null') FROM events WHERE device_id = 'dev-1' ORDER BY id`)
	for rows.Next() {
		var s string
		_ = rows.Scan(&s)
		names = append(names, s)
	}
	if strings.Join(names, ",") != `telemetry:{"c": 20.5},alert:null,telemetry:{"c": 21}` {
		t.Fatalf("events = %v", names)
	}
	latest, err := store.LatestEvents(ctx, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	if len(latest) != 2 || string(latest["telemetry"].Data) != `{"c": 21}` || latest["telemetry"].ID != first {
		t.Fatalf("latest = %+v, want telemetry {\"c\": 21} (event %d) and alert", latest, first)
	}
	d, err := store.Device(ctx, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	if d.Latest["telemetry"].ID != first || d.Latest["alert"].ID != first-1 {
		t.Fatalf("Device().Latest = %+v", d.Latest)
	}
	var stored int
	if err := pool.QueryRow(ctx, `SELECT stored FROM event_latest WHERE device_id = 'dev-1' AND name = 'telemetry'`).Scan(&stored); err != nil || stored != 2 {
		t.Fatalf("stored telemetry count = %d (%v), want 2", stored, err)
	}
}

// Inserts from many writers at once become visible in id order: a reader
// that saw an id has seen every id below it. This is what lets a stream
// resume "after id N" without missing an event that committed late.
func TestEventIDsBecomeVisibleInOrder(t *testing.T) {
	t.Parallel()
	store, _ := setup(t, "dev-1")
	ctx := context.Background()
	const writers, batches = 4, 25
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for b := range batches {
				evs := make([]db.DeviceEvent, 5)
				for i := range evs {
					evs[i] = db.DeviceEvent{DeviceID: "dev-1", Name: fmt.Sprintf("w%d", w), Data: json.RawMessage(fmt.Sprint(b))}
				}
				if _, err := store.InsertEvents(ctx, evs); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	// Follow the writers as a stream does: every id above the last seen.
	var seen []int64
	after := int64(0)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for finished := false; !finished; {
		select {
		case <-done:
			finished = true // one more read after the last commit
		default:
		}
		events, err := store.DeviceEventsAfter(ctx, "dev-1", after, 1000)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range events {
			seen = append(seen, e.ID)
			after = e.ID
		}
	}
	all, err := store.DeviceEventsAfter(ctx, "dev-1", 0, 10000)
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != len(all) || len(all) != writers*batches*5 {
		t.Fatalf("a follower saw %d events, %d are stored, want %d: ids became visible out of order", len(seen), len(all), writers*batches*5)
	}
}

func TestEventHistoryPages(t *testing.T) {
	t.Parallel()
	store, pool := setup(t, "dev-1", "dev-2")
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `UPDATE devices SET labels = '{"room":"kitchen"}' WHERE id = 'dev-1'`); err != nil {
		t.Fatal(err)
	}
	for i := range 7 {
		insertEvents(t, store,
			db.DeviceEvent{DeviceID: "dev-1", Name: "telemetry", Data: json.RawMessage(fmt.Sprint(i))},
			db.DeviceEvent{DeviceID: "dev-2", Name: "telemetry", Data: json.RawMessage(fmt.Sprint(i))})
	}
	// A device's history, newest first, three at a time.
	var got []string
	for before := int64(0); ; {
		page, next, err := store.EventHistory(ctx, db.EventPage{Device: "dev-1", Before: before, Limit: 3})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range page {
			got = append(got, string(e.Data))
		}
		if next == 0 {
			break
		}
		before = next
	}
	if strings.Join(got, ",") != "6,5,4,3,2,1,0" {
		t.Fatalf("dev-1's history = %v", got)
	}
	// The fleet's, filtered by label: only dev-1's.
	page, _, err := store.EventHistory(ctx, db.EventPage{Limit: 100, Labels: db.LabelSelector{{Key: "room", Op: db.LabelEquals, Value: "kitchen"}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(page) != 7 || page[0].DeviceID != "dev-1" || page[6].DeviceID != "dev-1" {
		t.Fatalf("kitchen events = %+v, want dev-1's 7", page)
	}
}

func TestRetention(t *testing.T) {
	t.Parallel()
	store, pool := setup(t, "dev-1", "dev-2")
	ctx := context.Background()
	for i := range 30 {
		insertEvents(t, store,
			db.DeviceEvent{DeviceID: "dev-1", Name: "telemetry", Data: json.RawMessage(fmt.Sprint(i))},
			db.DeviceEvent{DeviceID: "dev-2", Name: fmt.Sprint("n", i%2), Data: json.RawMessage(fmt.Sprint(i))})
	}
	// Ten of each device's events are a month old.
	if _, err := pool.Exec(ctx, `
		UPDATE events SET received_at = now() - interval '30 days'
		WHERE id IN (SELECT id FROM events ORDER BY id LIMIT 20)`); err != nil {
		t.Fatal(err)
	}
	n, err := store.PurgeEvents(ctx, 7*24*time.Hour, 15)
	if err != nil || n != 15 {
		t.Fatalf("PurgeEvents = %d, %v; want a batch of 15", n, err)
	}
	if n, err = store.PurgeEvents(ctx, 7*24*time.Hour, 15); err != nil || n != 5 {
		t.Fatalf("PurgeEvents = %d, %v; want the last 5 old ones", n, err)
	}
	count := func(device string) (rows, stored int) {
		t.Helper()
		err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM events WHERE device_id = $1),
			(SELECT sum(stored) FROM event_latest WHERE device_id = $1)`, device).Scan(&rows, &stored)
		if err != nil {
			t.Fatal(err)
		}
		return rows, stored
	}
	if rows, stored := count("dev-1"); rows != 20 || stored != 20 {
		t.Fatalf("dev-1 has %d events, counted %d; want 20", rows, stored)
	}
	// A cap of 12 per device trims the oldest, in steps of at most 5 per device.
	var capped int64
	for {
		n, err := store.CapDeviceEvents(ctx, 12, 10, 5)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		capped += n
	}
	if capped != 16 {
		t.Fatalf("capping deleted %d events, want 8 of each device", capped)
	}
	for _, dev := range []string{"dev-1", "dev-2"} {
		if rows, stored := count(dev); rows != 12 || stored != 12 {
			t.Fatalf("%s has %d events, counted %d; want 12", dev, rows, stored)
		}
	}
	// The newest stayed, and so did the latest values.
	events, err := store.DeviceEventsAfter(ctx, "dev-1", 0, 100)
	if err != nil || string(events[0].Data) != "18" {
		t.Fatalf("dev-1's oldest kept event = %s (%v), want 18", events[0].Data, err)
	}
	if latest, _ := store.LatestEvents(ctx, "dev-2"); len(latest) != 2 {
		t.Fatalf("dev-2's latest = %v, want n0 and n1", latest)
	}

	// Final commands go after their keep; pending ones never do.
	done := create(t, store, newCommand("dev-1", time.Hour))
	pending := create(t, store, newCommand("dev-1", time.Hour))
	if _, err := pool.Exec(ctx, `UPDATE commands SET status = 'done', completed_at = now() - interval '40 days' WHERE id = $1`, done.ID); err != nil {
		t.Fatal(err)
	}
	if n, err := store.PurgeCommands(ctx, 30*24*time.Hour, 100); err != nil || n != 1 {
		t.Fatalf("PurgeCommands = %d, %v; want 1", n, err)
	}
	if _, err := store.Command(ctx, pending.ID); err != nil {
		t.Fatalf("the pending command went too: %v", err)
	}

	// A job's commands stay while the job does; an old finished job goes,
	// then its commands.
	job, err := store.CreateJob(ctx, db.NewJob{ID: uuid.New(), Name: "x", Args: json.RawMessage(`{}`), Timeout: time.Second, TTL: time.Hour,
		Target: json.RawMessage(`{"devices":["dev-1"]}`), Filter: db.DeviceFilter{IDs: []string{"dev-1"}}, Rate: 100, Abort: 100, MaxTargets: 10})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `
		INSERT INTO commands (id, device_id, name, timeout, expires_at, status, completed_at, job_id)
		VALUES (gen_random_uuid(), 'dev-1', 'x', '1s', now(), 'done', now() - interval '40 days', $1)`, job.ID); err != nil {
		t.Fatal(err)
	}
	if n, err := store.PurgeCommands(ctx, 30*24*time.Hour, 100); err != nil || n != 0 {
		t.Fatalf("PurgeCommands = %d, %v; want the job's command kept", n, err)
	}
	if n, err := store.PurgeJobs(ctx, 30*24*time.Hour, 100); err != nil || n != 0 {
		t.Fatalf("PurgeJobs = %d, %v; want the running job kept", n, err)
	}
	if _, err := pool.Exec(ctx, `UPDATE jobs SET status = 'done', finished_at = now() - interval '31 days'`); err != nil {
		t.Fatal(err)
	}
	if n, err := store.PurgeJobs(ctx, 30*24*time.Hour, 100); err != nil || n != 1 {
		t.Fatalf("PurgeJobs = %d, %v; want the old job gone", n, err)
	}
	if n, err := store.PurgeCommands(ctx, 30*24*time.Hour, 100); err != nil || n != 1 {
		t.Fatalf("PurgeCommands = %d, %v; want the old job's command gone", n, err)
	}
}
