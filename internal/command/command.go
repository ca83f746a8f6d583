// Package command is the life of a device command: its statuses, the moves
// between them, and the events a client sees while it waits.
//
//	pending ──claimed by a session──▶ delivered ──reply ok──▶ done
//	 ▲  │ │                            │  │──reply !ok / no reply in timeout──▶ failed
//	 │  │ │                            │
//	 │  │ └──not delivered within ttl──┼──▶ expired
//	 │  └──cancelled (a client, or its job ended)──▶ cancelled
//	 └──session ended without a reply (given back, delivered again)
//
// A node claims a command (pending → delivered) before it writes the frame,
// and writes only what it claimed: a cancel that wins the claim's race is
// never delivered. A reply may come after the command was given back, so
// pending may also move straight to done or failed.
package command

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/google/uuid"
)

// Status is where a command is in its life; the values are what operators
// see in commands.status.
type Status string

const (
	Pending   Status = "pending"   // stored, not yet written to the device
	Delivered Status = "delivered" // written to the device's socket, awaiting its reply
	Done      Status = "done"      // the device replied ok
	Failed    Status = "failed"    // the device replied !ok, or did not reply within timeout
	Expired   Status = "expired"   // not delivered within ttl
	Cancelled Status = "cancelled" // withdrawn before delivery: by a client, or as its job ended
)

// Statuses are every status, in the order of a command's life.
var Statuses = []Status{Pending, Delivered, Done, Failed, Expired, Cancelled}

// Final reports whether the command will not change status again.
func (s Status) Final() bool { return s == Done || s == Failed || s == Expired || s == Cancelled }

// From lists the statuses a command may leave to reach to. The stores use it
// in their WHERE clauses, so this table is the state machine.
func From(to Status) []Status {
	switch to {
	case Delivered:
		return []Status{Pending}
	case Done, Failed:
		return []Status{Pending, Delivered}
	case Expired, Cancelled:
		return []Status{Pending}
	}
	return nil
}

// Limits and defaults of a command request.
const (
	DefaultTimeout = 10 * time.Second
	MaxTimeout     = 10 * time.Minute
	DefaultTTL     = time.Hour
	MaxTTL         = 7 * 24 * time.Hour
)

// Command is one stored command.
type Command struct {
	ID       uuid.UUID       `json:"id"`
	DeviceID string          `json:"device_id"`
	Name     string          `json:"name"`
	Args     json.RawMessage `json:"args"`
	Status   Status          `json:"status"`
	// OK is set once the device replied; Result or Error carry its answer.
	OK      *bool           `json:"ok,omitempty"`
	Result  json.RawMessage `json:"result,omitempty"`
	Error   string          `json:"error,omitempty"`
	Timeout Duration        `json:"timeout"`
	// Attempts counts deliveries: a session that ends without a reply gives
	// the command back, and the next session gets it again.
	Attempts    int        `json:"attempts"`
	CreatedAt   time.Time  `json:"created_at"`
	ExpiresAt   time.Time  `json:"expires_at"`
	DeliveredAt *time.Time `json:"delivered_at,omitempty"`
	CompletedAt *time.Time `json:"completed_at,omitempty"`
}

// Event names a client sees on a command's stream, in order.
const (
	EventAccepted  = "accepted"
	EventDelivered = "delivered"
	EventReply     = "reply"     // the device answered (ok or not)
	EventFailed    = "failed"    // no answer within timeout
	EventExpired   = "expired"   // never delivered within ttl
	EventCancelled = "cancelled" // withdrawn before delivery
)

// Event is one step of a command's stream. Seq is its SSE id: a client that
// resumes with Last-Event-ID n is sent the events after n.
type Event struct {
	Seq  int
	Name string
}

// Events derives the stream a client should have seen for c's current state.
// Steps the store skipped (a reply stored before its delivery mark) are
// filled in, so every stream reads accepted, delivered, then an outcome.
func Events(c Command) []Event {
	events := []Event{{1, EventAccepted}}
	switch c.Status {
	case Pending:
	case Expired:
		events = append(events, Event{3, EventExpired})
	case Cancelled:
		events = append(events, Event{3, EventCancelled})
	case Delivered:
		events = append(events, Event{2, EventDelivered})
	case Done, Failed:
		outcome := EventReply
		if c.OK == nil {
			outcome = EventFailed
		}
		events = append(events, Event{2, EventDelivered}, Event{3, outcome})
	}
	return events
}

// Duration is a time.Duration that reads and writes JSON as "10s"; it also
// reads a bare number as seconds.
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

func (d *Duration) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil // as encoding/json does for absent values: keep the default
	}
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("duration %q: want a Go duration such as \"10s\"", s)
		}
		*d = Duration(v)
		return nil
	}
	secs, err := strconv.ParseFloat(string(b), 64)
	if err != nil {
		return fmt.Errorf("duration %s: want a string such as \"10s\" or a number of seconds", b)
	}
	// Converting a float beyond int64 gives an arbitrary value (on amd64,
	// the most negative duration): refuse it instead.
	ns := secs * float64(time.Second)
	if !(ns >= math.MinInt64 && ns < math.MaxInt64) {
		return fmt.Errorf("duration %s: out of range", b)
	}
	*d = Duration(ns)
	return nil
}
