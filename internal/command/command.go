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
	"errors"
	"math"
	"reflect"
	"strconv"
	"strings"
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

// Duration is a time.Duration as the API reads and writes it: one format
// in every answer (String: "10s", "1h", "1m30s", "500ms"), and any Go
// duration, or a bare number of seconds, in a request.
type Duration time.Duration

// String writes d as a Go duration without its zero units: "1h" and
// "1m30s" where time.Duration writes "1h0m0s" and "1m30s". ParseDuration
// reads it back as it was.
func (d Duration) String() string {
	v := time.Duration(d)
	switch {
	case v == math.MinInt64: // its negation overflows
		return v.String()
	case v < 0:
		return "-" + Duration(-v).String()
	case v < time.Minute:
		return v.String() // "0s", "10s", "1.5s", "500ms"
	}
	var b []byte
	if h := v / time.Hour; h > 0 {
		b = append(strconv.AppendInt(b, int64(h), 10), 'h')
	}
	if m := v % time.Hour / time.Minute; m > 0 {
		b = append(strconv.AppendInt(b, int64(m), 10), 'm')
	}
	if rest := v % time.Minute; rest > 0 {
		b = append(b, rest.String()...)
	}
	return string(b)
}

func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(d.String())
}

// UnmarshalJSON reads a Go duration ("10s", "1h0m0s") or a number of
// seconds. What it refuses is a *json.UnmarshalTypeError of this type, to
// which encoding/json adds the field's path ("retry.backoff"): the edge
// answers it as invalid-duration naming the field (IsDurationError).
func (d *Duration) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil // as encoding/json does for absent values: keep the default
	}
	v, ok := parseDuration(b)
	if !ok {
		return &json.UnmarshalTypeError{Value: excerpt(b), Type: durationType}
	}
	*d = Duration(v)
	return nil
}

var durationType = reflect.TypeFor[Duration]()

// DurationError says whether err is a duration UnmarshalJSON refused, and
// if so the field's path in the document ("" at its root) and the value.
func DurationError(err error) (field, value string, ok bool) {
	var te *json.UnmarshalTypeError
	if !errors.As(err, &te) || te.Type != durationType {
		return "", "", false
	}
	return te.Field, te.Value, true
}

func parseDuration(b []byte) (time.Duration, bool) {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		v, err := time.ParseDuration(s)
		return v, err == nil
	}
	secs, err := strconv.ParseFloat(strings.TrimSpace(string(b)), 64)
	if err != nil {
		return 0, false
	}
	// Converting a float beyond int64 gives an arbitrary value (on amd64,
	// the most negative duration): refuse it instead.
	ns := secs * float64(time.Second)
	if !(ns >= math.MinInt64 && ns < math.MaxInt64) {
		return 0, false
	}
	return time.Duration(ns), true
}

// excerpt is a refused value for an error's detail: at most 40 bytes of it.
func excerpt(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 40 {
		s = strings.ToValidUTF8(s[:40], "") + "…"
	}
	return s
}
