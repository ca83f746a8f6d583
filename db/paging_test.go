package db_test

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/db"
)

// A history's last page says it is the last: a page that ends exactly at
// the oldest event has no next, and the fleet's pages skip a gap of ids
// wider than a span (events retention deleted) to the events below it.
func TestEventHistoryLastPage(t *testing.T) {
	t.Parallel()
	store, pool := setup(t, "dev-1")
	ctx := context.Background()
	event := func(i int) db.DeviceEvent {
		return db.DeviceEvent{DeviceID: "dev-1", Name: "telemetry", Data: json.RawMessage(fmt.Sprint(i))}
	}
	insertEvents(t, store, event(0), event(1), event(2))
	// The next event's id is two spans above the first three's.
	if _, err := pool.Exec(ctx, fmt.Sprintf(`SELECT setval(pg_get_serial_sequence('events', 'id'), %d)`, 2*db.Span+10)); err != nil {
		t.Fatal(err)
	}
	insertEvents(t, store, event(3), event(4), event(5))

	for _, tc := range []struct {
		name string
		page db.EventPage
		want string // the pages, "|" between them
	}{
		{"device, pages of 3", db.EventPage{Device: "dev-1", Limit: 3}, "5,4,3|2,1,0"},
		{"device, pages of 6", db.EventPage{Device: "dev-1", Limit: 6}, "5,4,3,2,1,0"},
		{"fleet, pages of 3", db.EventPage{Limit: 3}, "5,4,3|2,1,0"},
		{"fleet, pages of 4", db.EventPage{Limit: 4}, "5,4,3|2,1,0"}, // the span ends the first page
		{"fleet, pages of 2", db.EventPage{Limit: 2}, "5,4|3|2,1|0"},
	} {
		var pages []string
		p := tc.page
		for range 10 {
			events, next, err := store.EventHistory(ctx, p)
			if err != nil {
				t.Fatal(err)
			}
			var data []string
			for _, e := range events {
				data = append(data, string(e.Data))
			}
			pages = append(pages, strings.Join(data, ","))
			if next == 0 {
				break
			}
			p.Before = next
		}
		if got := strings.Join(pages, "|"); got != tc.want {
			t.Errorf("%s: pages %s, want %s", tc.name, got, tc.want)
		}
	}
	if _, _, err := store.EventHistory(ctx, db.EventPage{Limit: db.MaxPage + 1}); err == nil {
		t.Error("a page over MaxPage was read")
	}
}

// A device's sessions page newest first on (connected_at, session_id):
// sessions that started in the same microsecond are neither repeated nor
// skipped, and the last page says it is the last.
func TestDeviceSessionPages(t *testing.T) {
	t.Parallel()
	store, pool := setup(t, "dev-1", "dev-2")
	ctx := context.Background()
	start := time.Date(2030, 1, 2, 3, 4, 5, 123456000, time.UTC)
	var want []db.SessionKey
	for i := range 7 {
		at := start.Add(time.Duration(i/2) * time.Minute) // two sessions a start time
		id := uuid.Must(uuid.NewV7())
		if _, err := pool.Exec(ctx, `INSERT INTO device_sessions (session_id, device_id, node_id, region, connected_at)
			VALUES ($1, 'dev-1', 'node-a', 'r', $2), ($3, 'dev-2', 'node-a', 'r', $2)`, id, at, uuid.Must(uuid.NewV7())); err != nil {
			t.Fatal(err)
		}
		want = append(want, db.SessionKey{ConnectedAt: at, SessionID: id})
	}
	// Newest first: by start, then by id (as PostgreSQL orders uuids: bytewise).
	slices.SortFunc(want, func(a, b db.SessionKey) int {
		return cmp.Or(b.ConnectedAt.Compare(a.ConnectedAt), bytes.Compare(b.SessionID[:], a.SessionID[:]))
	})
	var got []db.SessionKey
	var after *db.SessionKey
	for pages := 1; ; pages++ {
		sessions, more, err := store.DeviceSessionPage(ctx, "dev-1", after, 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range sessions {
			got = append(got, db.SessionKey{ConnectedAt: s.ConnectedAt, SessionID: s.SessionID})
		}
		if !more {
			if pages != 4 || len(sessions) != 1 {
				t.Errorf("%d pages, the last of %d sessions; want 4, the last of 1", pages, len(sessions))
			}
			break
		}
		last := sessions[len(sessions)-1]
		after = &db.SessionKey{ConnectedAt: last.ConnectedAt, SessionID: last.SessionID}
	}
	if !slices.EqualFunc(got, want, func(a, b db.SessionKey) bool { return a.ConnectedAt.Equal(b.ConnectedAt) && a.SessionID == b.SessionID }) {
		t.Errorf("sessions %v\nwant %v", got, want)
	}
	if _, _, err := store.DeviceSessionPage(ctx, "dev-1", nil, 0); err == nil {
		t.Error("a page of 0 was read")
	}
}
