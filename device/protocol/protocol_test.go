package protocol_test

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/switchboard-iot/switchboard/device/protocol"
)

const (
	uuid1 = "0b7c3a52-6f0e-4d1a-9c39-2f4b1e8a9d10"
	uuid2 = "ABCDEF01-2345-6789-ABCD-EF0123456789"
)

func boolp(b bool) *bool { return &b }

func TestDecodeAccepts(t *testing.T) {
	tests := []struct {
		name  string
		frame string
		want  protocol.Message
	}{
		{
			name:  "reply ok with result",
			frame: `{"type":"reply","id":"` + uuid1 + `","ok":true,"result":{"temp":21.5}}`,
			want:  protocol.Message{Type: "reply", ID: uuid1, OK: boolp(true), Result: json.RawMessage(`{"temp":21.5}`)},
		},
		{
			name:  "state",
			frame: `{"type":"state","desired":{"target_celsius":21},"version":3,"id":"x"}`,
			want:  protocol.Message{Type: "state", Desired: json.RawMessage(`{"target_celsius":21}`), Version: 3},
		},
		{
			name:  "report",
			frame: `{"type":"report","reported":{"celsius":20.5,"old":null},"name":"x"}`,
			want:  protocol.Message{Type: "report", Reported: json.RawMessage(`{"celsius":20.5,"old":null}`)},
		},
		{
			name:  "reply ok with upper-case uuid",
			frame: `{"type":"reply","id":"` + uuid2 + `","ok":true,"result":[1,2]}`,
			want:  protocol.Message{Type: "reply", ID: uuid2, OK: boolp(true), Result: json.RawMessage(`[1,2]`)},
		},
		{
			name:  "reply ok with null result",
			frame: `{"type":"reply","id":"` + uuid1 + `","ok":true,"result":null}`,
			want:  protocol.Message{Type: "reply", ID: uuid1, OK: boolp(true)},
		},
		{
			name:  "reply ok without result",
			frame: `{"type":"reply","id":"` + uuid1 + `","ok":true}`,
			want:  protocol.Message{Type: "reply", ID: uuid1, OK: boolp(true)},
		},
		{
			name:  "reply ok with scalar result",
			frame: `{"type":"reply","id":"` + uuid1 + `","ok":true,"result":0}`,
			want:  protocol.Message{Type: "reply", ID: uuid1, OK: boolp(true), Result: json.RawMessage(`0`)},
		},
		{
			name:  "reply not ok with error",
			frame: `{"type":"reply","id":"` + uuid1 + `","ok":false,"error":"relay stuck"}`,
			want:  protocol.Message{Type: "reply", ID: uuid1, OK: boolp(false), Error: "relay stuck"},
		},
		{
			name:  "reply not ok without error gets a default",
			frame: `{"type":"reply","id":"` + uuid1 + `","ok":false}`,
			want:  protocol.Message{Type: "reply", ID: uuid1, OK: boolp(false), Error: "device reported failure"},
		},
		{
			name:  "reply not ok with empty error gets a default",
			frame: `{"type":"reply","id":"` + uuid1 + `","ok":false,"error":"","result":null}`,
			want:  protocol.Message{Type: "reply", ID: uuid1, OK: boolp(false), Error: "device reported failure"},
		},
		{
			name:  "event with data",
			frame: `{"type":"event","name":"telemetry/temp","data":{"c":21}}`,
			want:  protocol.Message{Type: "event", Name: "telemetry/temp", Data: json.RawMessage(`{"c":21}`)},
		},
		{
			name:  "event without data",
			frame: `{"type":"event","name":"boot"}`,
			want:  protocol.Message{Type: "event", Name: "boot"},
		},
		{
			name:  "event with null data",
			frame: `{"type":"event","name":"alert.door:open","data":null}`,
			want:  protocol.Message{Type: "event", Name: "alert.door:open"},
		},
		{
			name:  "event with longest name",
			frame: `{"type":"event","name":"` + strings.Repeat("a", 128) + `"}`,
			want:  protocol.Message{Type: "event", Name: strings.Repeat("a", 128)},
		},
		{
			name:  "command with args",
			frame: `{"type":"command","id":"` + uuid1 + `","name":"reboot","args":{"delay":5}}`,
			want:  protocol.Message{Type: "command", ID: uuid1, Name: "reboot", Args: json.RawMessage(`{"delay":5}`)},
		},
		{
			name:  "command with a deadline",
			frame: `{"type":"command","id":"` + uuid1 + `","name":"reboot","args":{},"deadline":"2026-12-06T03:04:05.123Z"}`,
			want:  protocol.Message{Type: "command", ID: uuid1, Name: "reboot", Args: json.RawMessage(`{}`), Deadline: "2026-12-06T03:04:05.123Z"},
		},
		{
			name:  "command with a deadline in another zone, without fraction",
			frame: `{"type":"command","id":"` + uuid1 + `","name":"reboot","deadline":"2026-12-06T04:04:05+01:00"}`,
			want:  protocol.Message{Type: "command", ID: uuid1, Name: "reboot", Args: json.RawMessage(`{}`), Deadline: "2026-12-06T04:04:05+01:00"},
		},
		{
			name:  "error frame",
			frame: `{"type":"error","error":"invalid-event-name","message":"event: name must match","name":"door open","id":"x"}`,
			want:  protocol.Message{Type: "error", Error: "invalid-event-name", Message: "event: name must match", Name: "door open"},
		},
		{
			name:  "error frame of a code only",
			frame: `{"type":"error","error":"something-new"}`,
			want:  protocol.Message{Type: "error", Error: "something-new"},
		},
		{
			name:  "event with fields of other types and other JSON types",
			frame: `{"type":"event","name":"boot","ok":"yes","version":"x","data":1}`,
			want:  protocol.Message{Type: "event", Name: "boot", Data: json.RawMessage(`1`)},
		},
		{
			name:  "reply with a field of another type, of another JSON type",
			frame: `{"type":"reply","id":"` + uuid1 + `","ok":true,"name":5,"version":"x","deadline":[]}`,
			want:  protocol.Message{Type: "reply", ID: uuid1, OK: boolp(true)},
		},
		{
			name:  "state with a field of another type, of another JSON type",
			frame: `{"type":"state","desired":{},"version":2,"ok":"yes"}`,
			want:  protocol.Message{Type: "state", Desired: json.RawMessage(`{}`), Version: 2},
		},
		{
			name:  "ping with fields of other types, of other JSON types",
			frame: `{"type":"ping","id":1,"ok":"x"}`,
			want:  protocol.Message{Type: "ping"},
		},
		{
			name:  "command without args defaults to {}",
			frame: `{"type":"command","id":"` + uuid1 + `","name":"reboot"}`,
			want:  protocol.Message{Type: "command", ID: uuid1, Name: "reboot", Args: json.RawMessage(`{}`)},
		},
		{
			name:  "command with null args defaults to {}",
			frame: `{"type":"command","id":"` + uuid1 + `","name":"reboot","args":null}`,
			want:  protocol.Message{Type: "command", ID: uuid1, Name: "reboot", Args: json.RawMessage(`{}`)},
		},
		{
			name:  "ping",
			frame: `{"type":"ping"}`,
			want:  protocol.Message{Type: "ping"},
		},
		{
			name:  "pong",
			frame: `{"type":"pong"}`,
			want:  protocol.Message{Type: "pong"},
		},
		{
			name:  "unknown fields are ignored",
			frame: `{"type":"ping","since":12,"v":"2"}`,
			want:  protocol.Message{Type: "ping"},
		},
		{
			name:  "surrounding whitespace",
			frame: " \n{\"type\" : \"pong\"}\n ",
			want:  protocol.Message{Type: "pong"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := protocol.Decode([]byte(tt.frame))
			if err != nil {
				t.Fatalf("Decode(%s): unexpected error %v", tt.frame, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Decode(%s)\n got  %s\n want %s", tt.frame, show(got), show(tt.want))
			}
		})
	}
}

func TestDecodePongConstant(t *testing.T) {
	m, err := protocol.Decode(protocol.Pong)
	if err != nil || m.Type != protocol.TypePong {
		t.Fatalf("Decode(Pong) = %+v, %v; want a pong", m, err)
	}
}

func TestDecodeRejects(t *testing.T) {
	tests := []struct {
		name   string
		frame  string
		reason string // substring the reason must contain
	}{
		{"empty frame", ``, "malformed JSON"},
		{"truncated object", `{"type":"ping"`, "malformed JSON"},
		{"not JSON", `ping`, "malformed JSON"},
		{"array", `[{"type":"ping"}]`, "malformed JSON"},
		{"string", `"ping"`, "malformed JSON"},
		{"trailing garbage", `{"type":"ping"} x`, "malformed JSON"},
		{"two objects", `{"type":"ping"}{"type":"ping"}`, "malformed JSON"},
		{"type is a number", `{"type":1}`, "malformed JSON"},
		{"ok is a string", `{"type":"reply","id":"` + uuid1 + `","ok":"true"}`, "malformed JSON"},
		{"error is an object", `{"type":"reply","id":"` + uuid1 + `","ok":false,"error":{}}`, "malformed JSON"},
		{"error is an object, after a field of another type", `{"type":"reply","name":5,"id":"` + uuid1 + `","ok":false,"error":{}}`, "malformed JSON"},
		{"version is a string", `{"type":"state","desired":{},"version":"2"}`, "malformed JSON"},

		{"empty object", `{}`, "missing type"},
		{"null", `null`, "missing type"},
		{"empty type", `{"type":"","id":"` + uuid1 + `"}`, "missing type"},
		{"null type", `{"type":null,"name":"x"}`, "missing type"},

		{"unknown type", `{"type":"hello"}`, `unknown type "hello"`},
		{"type is case sensitive", `{"type":"Reply","id":"` + uuid1 + `","ok":true}`, `unknown type "Reply"`},
		{"type with spaces", `{"type":" ping"}`, "unknown type"},

		{"report without reported", `{"type":"report"}`, "report: reported must be"},
		{"report of null", `{"type":"report","reported":null}`, "report: reported must be"},
		{"report of an array", `{"type":"report","reported":[1]}`, "report: reported must be"},
		{"report over 32 KiB", `{"type":"report","reported":{"a":"` + strings.Repeat("x", protocol.MaxState) + `"}}`, "report: reported is over"},
		{"state without version", `{"type":"state","desired":{}}`, "state: needs"},
		{"state of a string", `{"type":"state","desired":"x","version":1}`, "state: needs"},
		{"reply without id", `{"type":"reply","ok":true}`, "reply: id must be"},
		{"reply with non-uuid id", `{"type":"reply","id":"42","ok":true}`, "reply: id must be"},
		{"reply with braced uuid", `{"type":"reply","id":"{` + uuid1 + `}","ok":true}`, "reply: id must be"},
		{"reply with uuid and newline", `{"type":"reply","id":"` + uuid1 + `\n","ok":true}`, "reply: id must be"},
		{"reply with uuid without dashes", `{"type":"reply","id":"` + strings.ReplaceAll(uuid1, "-", "") + `","ok":true}`, "reply: id must be"},
		{"reply with non-hex uuid", `{"type":"reply","id":"` + strings.Replace(uuid1, "0", "g", 1) + `","ok":true}`, "reply: id must be"},
		{"reply without ok", `{"type":"reply","id":"` + uuid1 + `","result":{}}`, "ok must be true or false"},
		{"reply with null ok", `{"type":"reply","id":"` + uuid1 + `","ok":null,"error":"x"}`, "ok must be true or false"},

		{"event without name", `{"type":"event","data":{}}`, "event: name must match"},
		{"event with empty name", `{"type":"event","name":""}`, "event: name must match"},
		{"event name starting with dash", `{"type":"event","name":"-x"}`, "event: name must match"},
		{"event name starting with slash", `{"type":"event","name":"/x"}`, "event: name must match"},
		{"event name with space", `{"type":"event","name":"door open"}`, "event: name must match"},
		{"event name with newline", `{"type":"event","name":"door\n"}`, "event: name must match"},
		{"event name non-ASCII", `{"type":"event","name":"tür"}`, "event: name must match"},
		{"event name too long", `{"type":"event","name":"` + strings.Repeat("a", 129) + `"}`, "event: name must match"},

		{"command without id", `{"type":"command","name":"reboot"}`, "command: needs a uuid id and a name"},
		{"command with bad id", `{"type":"command","id":"x","name":"reboot"}`, "command: needs a uuid id and a name"},
		{"command without name", `{"type":"command","id":"` + uuid1 + `"}`, "command: needs a uuid id and a name"},
		{"command with bad name", `{"type":"command","id":"` + uuid1 + `","name":"re boot"}`, "command: needs a uuid id and a name"},
		{"command with a bad deadline", `{"type":"command","id":"` + uuid1 + `","name":"reboot","deadline":"in 5s"}`, "command: deadline must be"},
		{"command with a deadline of another JSON type", `{"type":"command","id":"` + uuid1 + `","name":"reboot","deadline":5}`, "malformed JSON"},
		{"error frame without a code", `{"type":"error","message":"x"}`, "error: needs a code"},
		{"invalid UTF-8", "{\"type\":\"ping\",\"x\":\"\xff\"}", "not valid UTF-8"},
		{"event of invalid UTF-8", "{\"type\":\"event\",\"name\":\"t\",\"data\":\"\xff\"}", "not valid UTF-8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := protocol.Decode([]byte(tt.frame))
			if err == nil {
				t.Fatalf("Decode(%s) = %s, want an error", tt.frame, show(m))
			}
			var de *protocol.DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("Decode(%s): error %T %v is not a *DecodeError", tt.frame, err, err)
			}
			if !strings.Contains(de.Reason, tt.reason) {
				t.Errorf("Decode(%s): reason %q does not contain %q", tt.frame, de.Reason, tt.reason)
			}
			if de.Error() != de.Reason {
				t.Errorf("Error() = %q, want the reason %q", de.Error(), de.Reason)
			}
			if !reflect.DeepEqual(m, protocol.Message{}) {
				t.Errorf("Decode(%s) returned %s with its error, want the zero Message", tt.frame, show(m))
			}
		})
	}
}

// A bad event and an unknown type are refused with a code (an error frame,
// the session kept); every other refusal has none (1008).
func TestDecodeRefusalCodes(t *testing.T) {
	long := strings.Repeat("a", 300)
	tests := []struct {
		frame, code, name string
	}{
		{`{"type":"event","data":{}}`, protocol.ErrInvalidEventName, ""},
		{`{"type":"event","name":"door open","data":{}}`, protocol.ErrInvalidEventName, "door open"},
		{`{"type":"event","name":5}`, protocol.ErrInvalidEventName, ""},
		{`{"type":"event","name":"` + strings.Repeat("a", 129) + `"}`, protocol.ErrInvalidEventName, strings.Repeat("a", 129)},
		{`{"type":"event","name":"` + long + `"}`, protocol.ErrInvalidEventName, long[:protocol.MaxErrorName]},
		{`{"type":"event","name":"` + strings.Repeat("é", 200) + `"}`, protocol.ErrInvalidEventName, strings.Repeat("é", protocol.MaxErrorName/2)},
		{`{"type":"event","name":"t","data":{"s":"\u0000"}}`, protocol.ErrInvalidEventData, "t"},
		{`{"type":"event","name":"t","data":[1e999999]}`, protocol.ErrInvalidEventData, "t"},
		{`{"type":"event","name":"t","data":"\ud800"}`, protocol.ErrInvalidEventData, "t"},
		{`{"type":"hello"}`, protocol.ErrUnknownType, ""},
		{`{"type":"hello","ok":"x","name":"n"}`, protocol.ErrUnknownType, ""},
		{`{"type":"hello","s":"\u0000"}`, protocol.ErrUnknownType, ""},

		{"{\"type\":\"event\",\"name\":\"t\",\"data\":\"\xff\"}", "", ""},
		{`{"type":"event","name":"t"`, "", ""},
		{`{"type":"reply","id":"x","ok":true}`, "", ""},
		{`{"type":"reply","id":"` + uuid1 + `","ok":false,"error":"a\u0000b"}`, "", ""},
		{`{"type":"report","reported":[]}`, "", ""},
		{`{"type":1}`, "", ""},
		{`{}`, "", ""},
	}
	for _, tt := range tests {
		_, err := protocol.Decode([]byte(tt.frame))
		var de *protocol.DecodeError
		if !errors.As(err, &de) {
			t.Errorf("Decode(%.80s): error %v, want a *DecodeError", tt.frame, err)
			continue
		}
		if de.Code != tt.code || de.Name != tt.name {
			t.Errorf("Decode(%.80s): code %q, name %.40q; want %q, %.40q", tt.frame, de.Code, de.Name, tt.code, tt.name)
		}
		if de.Code != "" {
			want := protocol.Message{Type: protocol.TypeError, Error: tt.code, Message: de.Reason, Name: tt.name}
			if got := de.ErrorFrame(); !reflect.DeepEqual(got, want) {
				t.Errorf("Decode(%.80s): error frame %+v, want %+v", tt.frame, got, want)
			}
		}
	}
}

// A node appends a command's deadline to the frame it encoded when it
// claimed the command, as it writes it: the same bytes Encode gives.
func TestAppendDeadline(t *testing.T) {
	at := time.Date(2026, 12, 6, 4, 4, 5, 123456789, time.FixedZone("CET", 3600))
	m := protocol.Message{Type: protocol.TypeCommand, ID: uuid1, Name: "set", Args: json.RawMessage(`{"a":"}"}`)}
	frame, err := protocol.Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	got := protocol.AppendDeadline(frame, at)
	m.Deadline = protocol.FormatDeadline(at)
	want, err := protocol.Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Fatalf("AppendDeadline gave\n%s\nwant\n%s", got, want)
	}
	if m.Deadline != "2026-12-06T03:04:05.123Z" {
		t.Fatalf("deadline written as %q", m.Deadline)
	}
	back, err := protocol.Decode(got)
	if err != nil {
		t.Fatal(err)
	}
	if d, ok := back.DeadlineTime(); !ok || !d.Equal(at.Truncate(time.Millisecond)) {
		t.Fatalf("deadline read back as %v, %v; want %v", d, ok, at.Truncate(time.Millisecond))
	}
}

// hugeFrames are rejected frames whose naive reason would be far longer than
// a WebSocket close reason may be.
func hugeFrames() map[string]string {
	big := strings.Repeat("x", 1<<20)
	return map[string]string{
		"huge unknown type":            `{"type":"` + big + `"}`,
		"huge unknown type, 2-byte":    `{"type":"` + strings.Repeat("é", 1<<16) + `"}`,
		"huge unknown type, 3-byte":    `{"type":"` + strings.Repeat("€", 1<<16) + `"}`,
		"huge unknown type, 4-byte":    `{"type":"` + strings.Repeat("😀", 1<<16) + `"}`,
		"huge unknown type, escapes":   `{"type":"` + strings.Repeat(`\n`, 1<<16) + `"}`,
		"huge unknown type, bad utf-8": "{\"type\":\"" + strings.Repeat("\xff", 1<<16) + "\"}",
		"huge unterminated string":     `{"type":"` + big,
		"huge garbage":                 big,
		"huge event name":              `{"type":"event","name":"` + big + `"}`,
		"huge reply id":                `{"type":"reply","ok":true,"id":"` + big + `"}`,
		"huge command name":            `{"type":"command","id":"` + uuid1 + `","name":"` + big + `"}`,
		"huge number as type":          `{"type":` + strings.Repeat("9", 1<<16) + `}`,
		"huge key":                     `{"` + big + `":1}`,
		"long unknown type":            `{"type":"` + strings.Repeat("x", 200) + `"}`,
		"unknown type, reason 124":     `{"type":"` + strings.Repeat("x", 109) + `"}`,
	}
}

func TestDecodeErrorReasonFitsCloseFrame(t *testing.T) {
	for name, frame := range hugeFrames() {
		t.Run(name, func(t *testing.T) {
			_, err := protocol.Decode([]byte(frame))
			var de *protocol.DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("error %T %v is not a *DecodeError", err, err)
			}
			if len(de.Reason) > 123 {
				t.Errorf("reason is %d bytes, want at most 123: %q", len(de.Reason), de.Reason)
			}
			if de.Reason == "" {
				t.Error("reason is empty")
			}
		})
	}
}

// A WebSocket close reason must be valid UTF-8 (RFC 6455 section 5.5.1), and
// the DecodeError doc promises its text can be used as one.
func TestDecodeErrorReasonIsUTF8(t *testing.T) {
	for name, frame := range hugeFrames() {
		t.Run(name, func(t *testing.T) {
			_, err := protocol.Decode([]byte(frame))
			var de *protocol.DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("error %T %v is not a *DecodeError", err, err)
			}
			if !utf8.ValidString(de.Reason) {
				t.Errorf("reason is not valid UTF-8: %q", de.Reason)
			}
		})
	}
}

func TestDecodeErrorReasonBoundary(t *testing.T) {
	// `unknown type "` + 108 bytes + `"` is exactly 123 bytes: kept whole.
	typ := strings.Repeat("y", 108)
	_, err := protocol.Decode([]byte(`{"type":"` + typ + `"}`))
	var de *protocol.DecodeError
	if !errors.As(err, &de) {
		t.Fatalf("error %T %v is not a *DecodeError", err, err)
	}
	if want := `unknown type "` + typ + `"`; de.Reason != want {
		t.Errorf("reason %q, want %q", de.Reason, want)
	}
	// One byte more is cut to 123, keeping its start.
	_, err = protocol.Decode([]byte(`{"type":"` + typ + `y"}`))
	if !errors.As(err, &de) {
		t.Fatalf("error %T %v is not a *DecodeError", err, err)
	}
	if want := `unknown type "` + typ + `y`; de.Reason != want {
		t.Errorf("reason %q, want %q", de.Reason, want)
	}
}

func TestEncodeDecodeRoundTripCommand(t *testing.T) {
	in := protocol.Message{
		Type: protocol.TypeCommand,
		ID:   uuid1,
		Name: "set/led",
		Args: json.RawMessage(`{"color":"red","on":true}`),
	}
	frame, err := protocol.Encode(in)
	if err != nil {
		t.Fatalf("Encode: %v", err)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(frame, &fields); err != nil {
		t.Fatalf("Encode gave invalid JSON %s: %v", frame, err)
	}
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	if want := []string{"args", "id", "name", "type"}; !sameSet(keys, want) {
		t.Errorf("Encode wrote fields %v, want exactly %v (frame %s)", keys, want, frame)
	}
	out, err := protocol.Decode(frame)
	if err != nil {
		t.Fatalf("Decode(Encode(m)) of %s: %v", frame, err)
	}
	if !reflect.DeepEqual(out, in) {
		t.Errorf("round trip\n got  %s\n want %s", show(out), show(in))
	}
}

func TestEncodeDecodeRoundTripReplyNotOK(t *testing.T) {
	in := protocol.Message{Type: protocol.TypeReply, ID: uuid1, OK: boolp(false), Error: "no such relay"}
	frame, err := protocol.Encode(in)
	if err != nil {
		t.Fatalf("Encode: %v", err)
	}
	if !strings.Contains(string(frame), `"ok":false`) {
		t.Errorf("Encode dropped ok:false: %s", frame)
	}
	out, err := protocol.Decode(frame)
	if err != nil {
		t.Fatalf("Decode(Encode(m)) of %s: %v", frame, err)
	}
	if !reflect.DeepEqual(out, in) {
		t.Errorf("round trip\n got  %s\n want %s", show(out), show(in))
	}
}

// The Message doc says "Only the fields of its Type are set".
func TestDecodeSetsOnlyFieldsOfType(t *testing.T) {
	frames := map[string]protocol.Message{
		`{"type":"ping","id":"x","name":"y","ok":true,"args":{},"data":1}`: {Type: "ping"},
		`{"type":"event","name":"boot","id":"` + uuid1 + `","args":{}}`:    {Type: "event", Name: "boot"},
		`{"type":"reply","id":"` + uuid1 + `","ok":true,"name":"x"}`:       {Type: "reply", ID: uuid1, OK: boolp(true)},
		`{"type":"command","id":"` + uuid1 + `","name":"x","ok":true}`:     {Type: "command", ID: uuid1, Name: "x", Args: json.RawMessage(`{}`)},
	}
	for frame, want := range frames {
		got, err := protocol.Decode([]byte(frame))
		if err != nil {
			t.Errorf("Decode(%s): %v", frame, err)
			continue
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("Decode(%s)\n got  %s\n want %s", frame, show(got), show(want))
		}
	}
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	seen := map[string]int{}
	for _, s := range a {
		seen[s]++
	}
	for _, s := range b {
		seen[s]--
	}
	for _, n := range seen {
		if n != 0 {
			return false
		}
	}
	return true
}

func show(m protocol.Message) string {
	ok := "<nil>"
	if m.OK != nil {
		if *m.OK {
			ok = "true"
		} else {
			ok = "false"
		}
	}
	return "{Type:" + quote(m.Type) + " ID:" + quote(m.ID) + " Name:" + quote(m.Name) +
		" Args:" + raw(m.Args) + " OK:" + ok + " Result:" + raw(m.Result) +
		" Error:" + quote(m.Error) + " Data:" + raw(m.Data) + "}"
}

func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func raw(r json.RawMessage) string {
	if r == nil {
		return "<nil>"
	}
	return "`" + string(r) + "`"
}

// Frames PostgreSQL cannot store are refused by the decoder, not by the
// database, where they would fail a batch of other devices' writes.
func TestDecodeRejectsUnstorable(t *testing.T) {
	const id = "0b7e1a6c-3c0f-4f43-9c59-2b7a6b6b1f00"
	rejected := map[string]string{
		`{"type":"event","name":"t","data":{"s":"\u0000"}}`:                "cannot be stored",
		`{"type":"event","name":"t","data":{"s":"a\\\u0000"}}`:             "cannot be stored", // an escaped backslash, then the escape
		`{"type":"reply","id":"` + id + `","ok":false,"error":"a\u0000b"}`: "cannot be stored",
		"{\"type\":\"event\",\"name\":\"t\",\"data\":{\"s\":\"\xff\"}}":    "not valid UTF-8",
		`{"type":"event","name":"t","data":{"s":"\ud800"}}`:                "surrogate",
		`{"type":"reply","id":"` + id + `","ok":true,"result":[1e999999]}`: "number 1e999999 cannot be stored",
	}
	for frame, want := range rejected {
		_, err := protocol.Decode([]byte(frame))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Decode(%q) = %v, want an error saying %q", frame, err, want)
		}
	}
	// A literal backslash followed by "u0000" is text, not a NUL.
	if _, err := protocol.Decode([]byte(`{"type":"event","name":"t","data":{"s":"\\u0000"}}`)); err != nil {
		t.Errorf("escaped backslash before u0000: %v", err)
	}
}

// storableCases are JSON texts on either side of what PostgreSQL's jsonb
// takes (checked against PostgreSQL 15; db's tests check them again).
var storableCases = []struct {
	json     string
	storable bool
}{
	{`"\u0000"`, false},
	{`"\\u0000"`, true},
	{`"\\\u0000"`, false},
	{`{"\u0000":1}`, false},
	{`"\ud83d\ude00"`, true},
	{`"\uD83D\uDE00"`, true},
	{`"\ud800"`, false},
	{`"\ud800x"`, false},
	{`"\ud800\n"`, false},
	{`"\ud800\ud800"`, false},
	{`"\udc00"`, false},
	{`"\udc00\ud800"`, false},
	{`"\\ud800"`, true},
	{`"\uFFFF\uE000"`, true},
	{`[1e131071, 9.9e131071, 0.1e131072, 1e+0131071]`, true},
	{`1e131072`, false},
	{`10e131071`, false},
	{`1e-16383`, true},
	{`-1e-16384`, false},
	{`1.0e-16383`, false},
	{`0.00001e-16378`, true},
	{`0.00001e-16379`, false},
	{`0e1073741822`, true},
	{`0e1073741823`, false},
	{`0E-16383`, true},
	{`0e-16384`, false},
	{`1e99999999999999999999`, false},
	{`0.` + strings.Repeat("0", 16383), true},
	{`0.` + strings.Repeat("0", 16384), false},
	{`{"n":"1e999999","s":"-1e-99999"}`, true},
	{`[-0, 0.5, 1E2, 123456789012345678901234567890]`, true},
}

func TestCheckStorable(t *testing.T) {
	for _, tc := range storableCases {
		err := protocol.CheckStorable([]byte(tc.json))
		if (err == nil) != tc.storable {
			t.Errorf("CheckStorable(%.60s) = %v, want storable %v", tc.json, err, tc.storable)
		}
		var de *protocol.DecodeError
		if err != nil && (!errors.As(err, &de) || len(de.Reason) > 123 || !strings.Contains(de.Reason, "cannot be stored")) {
			t.Errorf("CheckStorable(%.60s): reason %q", tc.json, err)
		}
	}
}

// A frame carries args as they are: HTML escaping would write each '<'
// as six bytes, and args within the edge's limit could outgrow 64 KiB.
func TestEncodeKeepsArgs(t *testing.T) {
	args := `{"s":"` + strings.Repeat("<&>", 20<<10) + `"}`
	frame, err := protocol.Encode(protocol.Message{Type: protocol.TypeCommand, ID: "0193b7a0-0000-7000-8000-000000000000", Name: "x", Args: json.RawMessage(args)})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(frame), args) || len(frame) > len(args)+100 {
		t.Fatalf("args grew from %d to a %d-byte frame", len(args), len(frame))
	}
}
