// Package protocol is the device wire protocol: one JSON object per WebSocket
// text frame, told apart by its "type" field. The connection tier and the
// device SDK both speak it through this package, so the README's protocol
// section and the code cannot drift apart.
package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf16"
	"unicode/utf8"
)

// Subprotocol is offered by devices and accepted by the connection tier. It
// is the protocol's version: changes a v1 device may ignore (new frame
// types, new optional fields) keep it; any other change needs a new one.
const Subprotocol = "switchboard.v1"

// Path is where a connection node accepts device WebSockets.
const Path = "/v1/connect"

// Frame types.
const (
	TypeCommand = "command" // server → device
	TypeReply   = "reply"   // device → server
	TypeEvent   = "event"   // device → server
	TypeState   = "state"   // server → device: the whole desired document
	TypeReport  = "report"  // device → server: a merge patch of the reported document
	TypePing    = "ping"    // either way, for clients without control frames
	TypePong    = "pong"
	TypeError   = "error" // server → device: a frame of the device's was refused, the session goes on
)

// Error codes of error frames ("error"): why the node refused a frame
// without closing the session.
const (
	ErrInvalidEventName = "invalid-event-name" // an event whose name is missing, not a string, or not a valid name
	ErrInvalidEventData = "invalid-event-data" // an event holding what PostgreSQL cannot store
	ErrUnknownType      = "unknown-type"       // a frame type this node does not know (a newer device's, say)
)

// MaxErrorName bounds the event name an error frame repeats: a longer one
// is cut (on a rune boundary), and is then still longer than any valid
// name, so a device cannot mistake it for one.
const MaxErrorName = 256

// Close codes the connection tier sends.
const (
	CloseGoingAway     = 1001 // node draining: reconnect (to any node)
	CloseBadMessage    = 1008 // policy: a frame that was not a valid protocol message, or the device was disabled or deleted (the reason says which)
	CloseTooBig        = 1009 // frame larger than the node's limit
	CloseInternalError = 1011 // node could not serve the session (e.g. database down): reconnect later
	CloseRebalance     = 1012 // reconnect after the delay given in the reason
	CloseTryAgainLater = 1013 // the device did not read its frames fast enough
	CloseReplaced      = 4008 // a newer session for the same device took over: do not reconnect
	CloseRateLimited   = 4029 // the device sent messages faster than its rate for too long: reconnect later, slower
)

// Message is one decoded frame. Only the fields of its Type are set.
type Message struct {
	Type string `json:"type"`

	// command and reply
	ID string `json:"id,omitempty"`

	// command and event
	Name string `json:"name,omitempty"`

	// command
	Args json.RawMessage `json:"args,omitempty"`
	// Deadline is when the node stops waiting for the command's reply (RFC
	// 3339, UTC, by the node's clock): its delivery plus its timeout. Last
	// of a command's fields, so that a node can append it to a frame
	// encoded earlier (AppendDeadline).
	Deadline string `json:"deadline,omitempty"`

	// reply; Error is also an error frame's code
	OK     *bool           `json:"ok,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  string          `json:"error,omitempty"`

	// event
	Data json.RawMessage `json:"data,omitempty"`

	// state: the whole desired document and its version
	Desired json.RawMessage `json:"desired,omitempty"`
	Version int64           `json:"version,omitempty"`

	// report: a JSON merge patch (RFC 7396) of the reported document
	Reported json.RawMessage `json:"reported,omitempty"`

	// error: Error is its code, Message says why for a person, and Name is
	// the refused event's name (for the event codes)
	Message string `json:"message,omitempty"`
}

// DeadlineFormat is how a command's deadline is written: RFC 3339 in UTC
// with milliseconds, which every language's date parser reads.
const DeadlineFormat = "2006-01-02T15:04:05.000Z07:00"

// FormatDeadline writes t as a command frame's deadline.
func FormatDeadline(t time.Time) string { return t.UTC().Format(DeadlineFormat) }

// DeadlineTime is a command's deadline, if its frame carried one.
func (m Message) DeadlineTime() (time.Time, bool) {
	if m.Deadline == "" {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339, m.Deadline)
	return t, err == nil
}

// AppendDeadline adds a deadline to an encoded command frame without
// encoding it again: frame is Encode's output for a command without one.
// The result is what Encode would give with Deadline set.
func AppendDeadline(frame []byte, deadline time.Time) []byte {
	out := make([]byte, 0, len(frame)+len(`,"deadline":""`)+len(DeadlineFormat))
	out = append(out, frame[:len(frame)-1]...) // all but the closing brace
	out = append(out, `,"deadline":"`...)
	out = deadline.UTC().AppendFormat(out, DeadlineFormat)
	return append(out, `"}`...)
}

// MaxState bounds a desired or reported document (and so a report's
// patch), as PostgreSQL writes it out.
const MaxState = 32 << 10

// DecodeError says why a frame was rejected. Its text is short enough to be
// a WebSocket close reason (at most 123 bytes).
//
// Code is set when the frame broke no rule of the protocol itself: an event
// the node cannot take (its name, its data), or a type the decoder does not
// know. The node answers such a frame with an error frame of that code and
// keeps the session; any other DecodeError closes it with 1008.
type DecodeError struct {
	Reason string
	Code   string // an error frame's code (ErrInvalidEventName...), or "" for a breach of the protocol
	Name   string // the refused event's name, cut to MaxErrorName bytes
}

// ErrorFrame is the error frame that answers a refusal with a Code.
func (e *DecodeError) ErrorFrame() Message {
	return Message{Type: TypeError, Error: e.Code, Message: e.Reason, Name: e.Name}
}

// refusef is badf for a frame the node refuses without closing the session.
func refusef(code, name, format string, args ...any) error {
	err := badf(format, args...).(*DecodeError)
	err.Code = code
	if len(name) > MaxErrorName {
		cut := MaxErrorName
		for !utf8.RuneStart(name[cut]) {
			cut--
		}
		name = name[:cut]
	}
	err.Name = strings.ToValidUTF8(name, "?")
	return err
}

func (e *DecodeError) Error() string { return e.Reason }

func badf(format string, args ...any) error {
	reason := strings.ToValidUTF8(fmt.Sprintf(format, args...), "?")
	if len(reason) > 123 {
		// Cut on a rune boundary: close reasons must be valid UTF-8.
		cut := 123
		for !utf8.RuneStart(reason[cut]) {
			cut--
		}
		reason = reason[:cut]
	}
	return &DecodeError{Reason: reason}
}

var (
	uuidPattern = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$`)
)

// ValidName reports whether s can name a command or an event.
func ValidName(s string) bool { return namePattern.MatchString(s) }

// Decode parses and validates one frame. Unknown fields, and fields of other
// types, are dropped so that newer peers can add them. A frame of an
// unknown type, and an event the node cannot take, are refused with a
// DecodeError that has a Code (the session stays up); any other refusal is
// a breach of the protocol.
func Decode(frame []byte) (Message, error) {
	// A text frame must be UTF-8 (RFC 6455): its bytes are not the device's
	// data but the protocol's.
	if !utf8.Valid(frame) {
		return Message{}, badf("not valid UTF-8")
	}
	var in Message
	err := json.Unmarshal(frame, &in)
	// A field of the wrong JSON type leaves the others decoded; other
	// errors (not JSON, not an object) leave nothing.
	var typeErr *json.UnmarshalTypeError
	if err != nil && !errors.As(err, &typeErr) {
		return Message{}, badf("malformed JSON: %v", err)
	}
	switch in.Type {
	case TypeEvent:
		// A bad event is the device's data gone wrong, not its grasp of the
		// protocol: refused, the session goes on. A name of another JSON
		// type than string decodes as "" and is refused as a name.
		if !ValidName(in.Name) {
			return Message{}, refusef(ErrInvalidEventName, in.Name, "event: name must match %s", namePattern)
		}
		// What the node cannot store it must refuse here, with a reason,
		// rather than have the database reject a whole batch of other
		// devices' writes.
		if err := CheckStorable(frame); err != nil {
			return Message{}, refusef(ErrInvalidEventData, in.Name, "event %s: %s", in.Name, err)
		}
		m := Message{Type: TypeEvent, Name: in.Name, Data: in.Data}
		if isNull(m.Data) {
			m.Data = nil
		}
		return m, nil
	case "", TypeReply, TypeCommand, TypeState, TypeReport, TypePing, TypePong, TypeError:
	default:
		// A newer peer's frame: the receiver says so and goes on.
		return Message{}, refusef(ErrUnknownType, "", "unknown type %q", in.Type)
	}
	if err := CheckStorable(frame); err != nil {
		return Message{}, err
	}
	if err != nil && in.Type != "" {
		// The field of the wrong JSON type may be another type's, which is
		// dropped like any field not of this type: decode this type's
		// fields alone. A wrong one of its own is a breach.
		in, err = decodeFields(frame, in.Type)
	}
	if err != nil {
		return Message{}, badf("malformed JSON: %v", err)
	}
	m := Message{Type: in.Type}
	switch in.Type {
	case TypeReply:
		m.ID, m.OK, m.Result, m.Error = in.ID, in.OK, in.Result, in.Error
		if !uuidPattern.MatchString(m.ID) {
			return Message{}, badf("reply: id must be the command's uuid")
		}
		if m.OK == nil {
			return Message{}, badf("reply %s: ok must be true or false", m.ID)
		}
		if !*m.OK && m.Error == "" {
			m.Error = "device reported failure"
		}
		if isNull(m.Result) {
			m.Result = nil
		}
	case TypeCommand:
		m.ID, m.Name, m.Args, m.Deadline = in.ID, in.Name, in.Args, in.Deadline
		if !uuidPattern.MatchString(m.ID) || !ValidName(m.Name) {
			return Message{}, badf("command: needs a uuid id and a name")
		}
		if len(m.Args) == 0 || isNull(m.Args) {
			m.Args = json.RawMessage(`{}`)
		}
		if _, ok := m.DeadlineTime(); m.Deadline != "" && !ok {
			return Message{}, badf("command: deadline must be an RFC 3339 time")
		}
	case TypeState:
		m.Desired, m.Version = in.Desired, in.Version
		if !isObject(m.Desired) || m.Version < 1 {
			return Message{}, badf("state: needs a desired object and a version of at least 1")
		}
	case TypeReport:
		m.Reported = in.Reported
		if !isObject(m.Reported) {
			return Message{}, badf("report: reported must be a JSON object (a merge patch)")
		}
		if size, _ := StoredSize(m.Reported); size > MaxState {
			return Message{}, badf("report: reported is over %d KiB", MaxState>>10)
		}
	case TypeError:
		m.Error, m.Message, m.Name = in.Error, in.Message, in.Name
		if m.Error == "" {
			return Message{}, badf("error: needs a code")
		}
	case TypePing, TypePong:
	case "":
		return Message{}, badf("missing type")
	}
	return m, nil
}

// decodeFields decodes the fields of one known type (not event), and only
// them.
func decodeFields(frame []byte, typ string) (Message, error) {
	m := Message{Type: typ}
	var err error
	switch typ {
	case TypeReply:
		var f struct {
			ID     string          `json:"id"`
			OK     *bool           `json:"ok"`
			Result json.RawMessage `json:"result"`
			Error  string          `json:"error"`
		}
		err = json.Unmarshal(frame, &f)
		m.ID, m.OK, m.Result, m.Error = f.ID, f.OK, f.Result, f.Error
	case TypeCommand:
		var f struct {
			ID       string          `json:"id"`
			Name     string          `json:"name"`
			Args     json.RawMessage `json:"args"`
			Deadline string          `json:"deadline"`
		}
		err = json.Unmarshal(frame, &f)
		m.ID, m.Name, m.Args, m.Deadline = f.ID, f.Name, f.Args, f.Deadline
	case TypeState:
		var f struct {
			Desired json.RawMessage `json:"desired"`
			Version int64           `json:"version"`
		}
		err = json.Unmarshal(frame, &f)
		m.Desired, m.Version = f.Desired, f.Version
	case TypeReport:
		var f struct {
			Reported json.RawMessage `json:"reported"`
		}
		err = json.Unmarshal(frame, &f)
		m.Reported = f.Reported
	case TypeError:
		var f struct {
			Error   string `json:"error"`
			Message string `json:"message"`
			Name    string `json:"name"`
		}
		err = json.Unmarshal(frame, &f)
		m.Error, m.Message, m.Name = f.Error, f.Message, f.Name
	}
	return m, err
}

// CheckStorable refuses JSON text that PostgreSQL cannot store in jsonb:
// invalid UTF-8, the escape \u0000, a surrogate escape that is not one of a
// pair, or a number beyond numeric's range. It leaves the syntax to
// json.Unmarshal: on text that is not JSON its verdict means nothing.
func CheckStorable(data []byte) error {
	_, err := StoredSize(data)
	return err
}

// StoredSize is CheckStorable that also says how long the JSON can be once
// stored and sent on in a frame: jsonb writes numbers out (1e5 is 100000, and
// 1e130000 has 130,001 digits), and a frame is compact. It is an upper bound:
// escapes are counted as written though jsonb may shorten them.
func StoredSize(data []byte) (int, error) {
	if !utf8.Valid(data) {
		return 0, badf("not valid UTF-8")
	}
	size := 0
	for i := 0; i < len(data); {
		n, stored := 1, 1
		var err error
		switch c := data[i]; {
		case c == '"':
			n, err = storableString(data[i:])
			stored = n
		case c == '-' || '0' <= c && c <= '9':
			n, stored, err = storableNumber(data[i:])
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			stored = 0
		}
		if err != nil {
			return 0, err
		}
		i += n
		size += stored
	}
	return size, nil
}

// storableString checks the JSON string at the start of s (s[0] is its
// quote) and returns its length.
func storableString(s []byte) (int, error) {
	for i := 1; i < len(s); {
		switch s[i] {
		case '"':
			return i + 1, nil
		case '\\':
			r, ok := unicodeEscape(s[i:])
			switch {
			case !ok: // \n, \", ...
				i += 2
			case r == 0:
				return 0, badf(`\u0000 cannot be stored: remove NUL characters`)
			case utf16.IsSurrogate(r):
				low, ok := unicodeEscape(s[i+6:])
				if r >= 0xDC00 || !ok || utf16.DecodeRune(r, low) == utf8.RuneError {
					return 0, badf(`%s cannot be stored: a surrogate escape must be the first of a pair`, s[i:i+6])
				}
				i += 12
			default:
				i += 6
			}
		default:
			i++
		}
	}
	return len(s), nil // unterminated: not JSON
}

// unicodeEscape reads the escape \uXXXX at the start of s.
func unicodeEscape(s []byte) (rune, bool) {
	if len(s) < 6 || s[0] != '\\' || s[1] != 'u' {
		return 0, false
	}
	r, err := strconv.ParseUint(string(s[2:6]), 16, 16)
	return rune(r), err == nil
}

// Limits of PostgreSQL's numeric, which stores jsonb numbers: digits before
// the point, digits after it (its dscale), and the written exponent.
const (
	maxIntDigits  = 131072
	maxFracDigits = 16383
	maxExponent   = 1<<30 - 2 // INT_MAX/2 - 1
)

// storableNumber checks the JSON number at the start of s and returns its
// length, and its length as jsonb writes it out (no exponent).
func storableNumber(s []byte) (n, stored int, err error) {
	i := 0
	if s[i] == '-' {
		i++
	}
	digits := func() (start, end int) {
		start = i
		for i < len(s) && '0' <= s[i] && s[i] <= '9' {
			i++
		}
		return start, i
	}
	intStart, intEnd := digits()
	fracStart, fracEnd := i, i
	if i < len(s) && s[i] == '.' {
		i++
		fracStart, fracEnd = digits()
	}
	exp := 0
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		neg := i < len(s) && s[i] == '-'
		if i < len(s) && (s[i] == '-' || s[i] == '+') {
			i++
		}
		start, end := digits()
		for _, d := range s[start:end] {
			exp = min(exp*10+int(d-'0'), maxExponent+1)
		}
		if neg {
			exp = -exp
		}
	}
	// The place of the first significant digit: 1 for 1.5, 0 for 0.5,
	// -1 for 0.05; none for a zero, which fits whatever its exponent.
	place, significant := 0, false
	for j, d := range s[intStart:intEnd] {
		if d != '0' {
			place, significant = intEnd-intStart-j, true
			break
		}
	}
	if !significant {
		for j, d := range s[fracStart:fracEnd] {
			if d != '0' {
				place, significant = -j, true
				break
			}
		}
	}
	if exp > maxExponent || exp < -maxExponent ||
		fracEnd-fracStart-exp > maxFracDigits ||
		significant && place+exp > maxIntDigits {
		return 0, 0, badf("number %.24s cannot be stored: beyond the range of PostgreSQL's numeric", s[:i])
	}
	// Written out: a sign, the integer digits (at least "0"), and the
	// fraction's digits (its dscale, trailing zeros kept) after a point.
	stored = intStart + max(1, place+exp)
	if !significant {
		stored = intStart + 1
	}
	if scale := fracEnd - fracStart - exp; scale > 0 {
		stored += 1 + scale
	}
	return max(i, 1), max(stored, i), nil
}

func isObject(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) > 0 && raw[0] == '{'
}

func isNull(raw json.RawMessage) bool { return bytes.Equal(bytes.TrimSpace(raw), []byte("null")) }

// Encode renders a message as one frame. HTML escaping is off: it would
// write each '<', '>' and '&' of args as six bytes, and a frame within the
// limit at the edge could then outgrow a device's 64 KiB.
func Encode(m Message) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(m); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// Pong is the answer to an application-level ping.
var Pong = []byte(`{"type":"pong"}`)
