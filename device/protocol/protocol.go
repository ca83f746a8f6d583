// Package protocol is the device wire protocol: one JSON object per WebSocket
// text frame, told apart by its "type" field. The connection tier and the
// device SDK both speak it through this package, so the README's protocol
// section and the code cannot drift apart.
package protocol

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"
)

// Subprotocol is offered by devices and accepted by the connection tier.
const Subprotocol = "switchboard.v1"

// Path is where a connection node accepts device WebSockets.
const Path = "/v1/connect"

// Frame types.
const (
	TypeCommand = "command" // server → device
	TypeReply   = "reply"   // device → server
	TypeEvent   = "event"   // device → server
	TypePing    = "ping"    // either way, for clients without control frames
	TypePong    = "pong"
)

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

	// reply
	OK     *bool           `json:"ok,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  string          `json:"error,omitempty"`

	// event
	Data json.RawMessage `json:"data,omitempty"`
}

// DecodeError says why a frame was rejected. Its text is short enough to be
// a WebSocket close reason (at most 123 bytes).
type DecodeError struct{ Reason string }

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
// types, are dropped so that newer peers can add them; unknown types are
// rejected.
func Decode(frame []byte) (Message, error) {
	// What the node cannot store it must refuse here, with a reason, rather
	// than have the database reject a whole batch of other devices' writes.
	if err := CheckStorable(frame); err != nil {
		return Message{}, err
	}
	var in Message
	if err := json.Unmarshal(frame, &in); err != nil {
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
	case TypeEvent:
		m.Name, m.Data = in.Name, in.Data
		if !ValidName(m.Name) {
			return Message{}, badf("event: name must match %s", namePattern)
		}
		if isNull(m.Data) {
			m.Data = nil
		}
	case TypeCommand:
		m.ID, m.Name, m.Args = in.ID, in.Name, in.Args
		if !uuidPattern.MatchString(m.ID) || !ValidName(m.Name) {
			return Message{}, badf("command: needs a uuid id and a name")
		}
		if len(m.Args) == 0 || isNull(m.Args) {
			m.Args = json.RawMessage(`{}`)
		}
	case TypePing, TypePong:
	case "":
		return Message{}, badf("missing type")
	default:
		return Message{}, badf("unknown type %q", m.Type)
	}
	return m, nil
}

// CheckStorable refuses JSON text that PostgreSQL cannot store: invalid
// UTF-8, or the escape \u0000 (in text or in jsonb).
func CheckStorable(data []byte) error {
	if !utf8.Valid(data) {
		return badf("not valid UTF-8")
	}
	if hasNULEscape(data) {
		return badf(`\u0000 cannot be stored: remove NUL characters`)
	}
	return nil
}

// hasNULEscape reports whether a JSON text holds the escape \u0000 (a JSON
// string cannot hold a raw NUL byte): PostgreSQL stores neither in text nor
// in jsonb. An escape is a backslash preceded by an even number of them.
func hasNULEscape(frame []byte) bool {
	for i := 0; ; {
		j := bytes.Index(frame[i:], []byte(`u0000`))
		if j < 0 {
			return false
		}
		at := i + j
		slashes := 0
		for k := at - 1; k >= 0 && frame[k] == '\\'; k-- {
			slashes++
		}
		if slashes%2 == 1 {
			return true
		}
		i = at + 1
	}
}

func isNull(raw json.RawMessage) bool { return bytes.Equal(bytes.TrimSpace(raw), []byte("null")) }

// Encode renders a message as one frame.
func Encode(m Message) ([]byte, error) { return json.Marshal(m) }

// Pong is the answer to an application-level ping.
var Pong = []byte(`{"type":"pong"}`)
