package db

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"
)

// Event is one stored device event: telemetry or an alert.
type Event struct {
	ID         int64           `json:"id"`
	DeviceID   string          `json:"device_id"`
	Name       string          `json:"name"`
	Data       json.RawMessage `json:"data"`
	ReceivedAt time.Time       `json:"received_at"`
}

// FleetEvent is an event with what fleet filters test: its device's
// labels and region (its session's, or its last session's).
type FleetEvent struct {
	Event
	Labels map[string]string
	Region string
}

// LatestEvent is a device's newest event of one name (in Device.Latest).
type LatestEvent struct {
	ID         int64           `json:"id"`
	Data       json.RawMessage `json:"data"`
	ReceivedAt time.Time       `json:"received_at"`
}

// eventsLock is the transaction-scoped advisory lock every events insert
// takes before drawing ids, so that ids become visible in their order: a
// reader that has seen event N has seen every event below N. Without it,
// two nodes' inserts could commit out of id order, and a stream resuming
// after N would skip the one that committed later with a smaller id. It is
// held for one insert and its commit (about a millisecond for a batch).
const eventsLock = 0x5b_e7_e1_75 // "sb events"

// InsertEvents stores events, and each device's latest value of each name
// with how many of that name are stored, in one round trip and one
// transaction, and returns the highest id given. (Under eventsLock a later
// insert always has the higher ids: the newest row wins without a test.)
func (s *Store) InsertEvents(ctx context.Context, events []DeviceEvent) (maxID int64, err error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	ids := make([]string, len(events))
	names := make([]string, len(events))
	data := make([][]byte, len(events))
	for i, e := range events {
		ids[i], names[i], data[i] = e.DeviceID, e.Name, e.Data
	}
	// A batch without BEGIN runs as one implicit transaction: the lock is
	// held until the insert commits.
	var b pgx.Batch
	b.Queue(`SELECT pg_advisory_xact_lock($1)`, int64(eventsLock))
	b.Queue(`
		WITH added AS (
			INSERT INTO events (device_id, name, data)
			SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[])
			RETURNING id, device_id, name, data, received_at),
		latest AS (
			INSERT INTO event_latest AS l (device_id, name, event_id, data, received_at, stored)
			SELECT DISTINCT ON (device_id, name) device_id, name, id, data, received_at,
			       count(*) OVER (PARTITION BY device_id, name)
			FROM added ORDER BY device_id, name, id DESC
			ON CONFLICT (device_id, name) DO UPDATE
				SET event_id = EXCLUDED.event_id, data = EXCLUDED.data, received_at = EXCLUDED.received_at,
				    stored = l.stored + EXCLUDED.stored)
		SELECT coalesce(max(id), 0) FROM added`, ids, names, data).QueryRow(func(row pgx.Row) error {
		return row.Scan(&maxID)
	})
	err = s.db.SendBatch(ctx, &b).Close()
	return maxID, translate(err, "insert events")
}

const eventColumns = `e.id, e.device_id, e.name, e.data, e.received_at`

func collectEvents(rows pgx.Rows, err error) ([]Event, error) {
	if err != nil {
		return nil, err
	}
	var out []Event
	var e Event
	_, err = pgx.ForEachRow(rows, []any{&e.ID, &e.DeviceID, &e.Name, &e.Data, &e.ReceivedAt}, func() error {
		out = append(out, e)
		return nil
	})
	return out, err
}

// LastEventID is the highest event id stored: a stream that starts now
// sends the events after it.
func (s *Store) LastEventID(ctx context.Context) (int64, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	var id int64
	err := s.db.QueryRow(ctx, `SELECT coalesce(max(id), 0) FROM events`).Scan(&id)
	return id, translate(err, "last event id")
}

// EventDevice returns the device an event came from; ErrNotFound when no
// event has that id (never stored, or deleted by retention).
func (s *Store) EventDevice(ctx context.Context, id int64) (string, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	var device string
	err := s.db.QueryRow(ctx, `SELECT device_id FROM events WHERE id = $1`, id).Scan(&device)
	return device, translate(err, "event device")
}

// EventsAfter returns up to limit events after id, oldest first, with
// their devices' labels and regions: what an edge dispatches to its
// streams, and what a fleet stream replays.
func (s *Store) EventsAfter(ctx context.Context, after int64, limit int) ([]FleetEvent, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	rows, err := s.db.Query(ctx, `
		SELECT `+eventColumns+`, coalesce(d.labels, '{}'), coalesce(p.region, d.region, '')
		FROM events e
		LEFT JOIN devices d ON d.id = e.device_id
		LEFT JOIN presence_live p ON p.device_id = e.device_id
		WHERE e.id > $1 ORDER BY e.id LIMIT $2`, after, limit)
	if err != nil {
		return nil, translate(err, "events after")
	}
	var out []FleetEvent
	var e FleetEvent
	var labels []byte
	_, err = pgx.ForEachRow(rows, []any{&e.ID, &e.DeviceID, &e.Name, &e.Data, &e.ReceivedAt, &labels, &e.Region}, func() error {
		e.Labels = nil
		_ = json.Unmarshal(labels, &e.Labels) // labels are an object of strings (PATCH checks them)
		out = append(out, e)
		return nil
	})
	return out, translate(err, "events after")
}

// DeviceEventsAfter returns up to limit of a device's events after id,
// oldest first: a device stream's replay.
func (s *Store) DeviceEventsAfter(ctx context.Context, device string, after int64, limit int) ([]Event, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	events, err := collectEvents(s.db.Query(ctx, `
		SELECT `+eventColumns+` FROM events e
		WHERE e.device_id = $1 AND e.id > $2 ORDER BY e.id LIMIT $3`, device, after, limit))
	return events, translate(err, "device events")
}

// EventPage asks for a page of history, newest first.
type EventPage struct {
	Before int64    // events below this id (0: from the newest)
	Limit  int      // at most this many
	Device string   // one device's events ("" for the fleet's)
	Names  []string // of these names (none: all)
	Labels LabelSelector
	Region string
}

// Span bounds how many event ids one fleet history read looks through, so
// that a filter matching few events costs a bounded scan, never the whole
// table; the page's Next says where to go on.
const Span = 50_000

// EventHistory returns a page of stored events, newest first, and where
// the next page starts (0: there is none, so a page that ends the history
// says so). A device's history walks its index; the fleet's looks through
// at most Span ids per page.
func (s *Store) EventHistory(ctx context.Context, p EventPage) (events []Event, next int64, err error) {
	if p.Limit < 1 || p.Limit > MaxPage {
		return nil, 0, fmt.Errorf("event history: limit %d: %w", p.Limit, ErrInvalid)
	}
	ctx, cancel := bound(ctx)
	defer cancel()
	if p.Names == nil {
		p.Names = []string{} // an empty array, not NULL, for cardinality()
	}
	// One more than the page tells whether another page follows.
	more := func() bool {
		if len(events) > p.Limit {
			events, next = events[:p.Limit], events[p.Limit-1].ID
			return true
		}
		return false
	}
	before := p.Before
	if p.Device != "" {
		if before <= 0 {
			before = math.MaxInt64 // from the newest: the device's index finds it
		}
		events, err = collectEvents(s.db.Query(ctx, `
			SELECT `+eventColumns+` FROM events e
			WHERE e.device_id = $1 AND e.id < $2 AND (cardinality($3::text[]) = 0 OR e.name = ANY($3))
			ORDER BY e.id DESC LIMIT $4`, p.Device, before, p.Names, p.Limit+1))
		if err != nil {
			return nil, 0, translate(err, "event history")
		}
		more()
		return events, next, nil
	}
	if before <= 0 {
		// The fleet's pages look through a span of ids below this one.
		if err := s.db.QueryRow(ctx, `SELECT coalesce(max(id), 0) + 1 FROM events`).Scan(&before); err != nil {
			return nil, 0, translate(err, "event history")
		}
	}
	low := max(before-Span, 0)
	filter := DeviceFilter{Labels: p.Labels, Region: p.Region}
	where, args := filter.where([]any{before, low, p.Names, p.Limit + 1})
	events, err = collectEvents(s.db.Query(ctx, `
		SELECT `+eventColumns+`
		FROM events e LEFT JOIN (`+filteredDevices+`) ON d.id = e.device_id
		WHERE e.id < $1 AND e.id >= $2 AND (cardinality($3::text[]) = 0 OR e.name = ANY($3)) AND `+where+`
		ORDER BY e.id DESC LIMIT $4`, args...))
	if err != nil {
		return nil, 0, translate(err, "event history")
	}
	if more() || low == 0 {
		return events, next, nil
	}
	// Nothing more in this span: the next page looks through the span
	// below, from the newest event there (none: this was the last page).
	var below *int64
	if err := s.db.QueryRow(ctx, `SELECT max(id) FROM events WHERE id < $1`, low).Scan(&below); err != nil {
		return nil, 0, translate(err, "event history")
	}
	if below != nil {
		next = *below + 1
	}
	return events, next, nil
}

// LatestEvents returns a device's newest event of each name.
func (s *Store) LatestEvents(ctx context.Context, device string) (map[string]LatestEvent, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	rows, err := s.db.Query(ctx, `SELECT name, event_id, data, received_at FROM event_latest WHERE device_id = $1`, device)
	if err != nil {
		return nil, translate(err, "latest events")
	}
	out := make(map[string]LatestEvent)
	var name string
	var l LatestEvent
	_, err = pgx.ForEachRow(rows, []any{&name, &l.ID, &l.Data, &l.ReceivedAt}, func() error {
		out[name] = l
		return nil
	})
	return out, translate(err, "latest events")
}
