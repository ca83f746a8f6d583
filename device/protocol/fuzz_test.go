package protocol_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/switchboard-iot/switchboard/device/protocol"
	"github.com/switchboard-iot/switchboard/internal/testkit/fuzzcheck"
)

// maxFrame is the README's frame limit: a node closes a larger frame with
// 1009 before it reaches Decode.
const maxFrame = 64 << 10

// FuzzDecode feeds Decode what a hostile device (or node) could send. A
// refusal must be a short, valid close reason; what Decode accepts must be
// storable, hold only its type's fields, and survive Encode and Decode
// unchanged.
func FuzzDecode(f *testing.F) {
	seeds := []string{
		`{"type":"command","id":"` + uuid1 + `","name":"reboot","args":{"delay":5}}`,
		`{"type":"command","id":"` + uuid1 + `","name":"reboot"}`,
		`{"type":"command","id":"` + uuid1 + `","name":"x","args":[1,"<&>",{"a":null}]}`,
		`{"type":"reply","id":"` + uuid1 + `","ok":true,"result":{"temp":21}}`,
		`{"type":"reply","id":"` + uuid2 + `","ok":false}`,
		`{"type":"reply","id":"` + uuid1 + `","ok":true,"result":null}`,
		`{"type":"reply","id":"` + uuid1 + `","ok":false,"error":"t\u00fcr \ud83d\ude00 \"q\" <\u2028>"}`,
		`{"type":"event","name":"telemetry","data":{"v":[1,2.5e3,-0,1E-2]}}`,
		`{"type":"event","name":"boot","data":null}`,
		`{"type":"event","name":"a.b:c/d-e_f","data":"x","id":"ignored","ok":true}`,
		`{"type":"ping"}`,
		`{"type":"pong","extra":"<&>"}`,
		` {"type" : "ping"} `,
		``,
		`{`,
		`null`,
		`{}`,
		`[]`,
		`{"type":"hello"}`,
		`{"type":"reply","id":"42","ok":true}`,
		`{"type":"reply","id":"` + uuid1 + `"}`,
		`{"type":"event","name":"-bad"}`,
		`{"type":"command","name":"x"}`,
		`{"type":"command","id":"` + uuid1 + `","name":"reboot","args":{},"deadline":"2026-12-06T03:04:05.123Z"}`,
		`{"type":"command","id":"` + uuid1 + `","name":"reboot","deadline":"tomorrow"}`,
		`{"type":"error","error":"invalid-event-name","message":"event: name must match","name":"bad name"}`,
		`{"type":"error","message":"no code"}`,
		`{"type":"event","name":5,"data":1}`,
		`{"type":"event","name":"t","ok":"yes"}`,
		`{"type":"ping","type":"pong"}`,
		`{"TYPE":"ping"}`,
		// What PostgreSQL cannot store.
		"{\"type\":\"\xff\xfe\"}",
		"{\"type\":\"event\",\"name\":\"t\",\"data\":\"\xed\xa0\x80\"}",
		`{"type":"event","name":"t","data":{"s":"\u0000"}}`,
		`{"type":"event","name":"t","data":{"s":"\\u0000"}}`,
		`{"type":"event","name":"t","data":{"s":"\\\u0000"}}`,
		`{"type":"reply","id":"` + uuid1 + `","ok":false,"error":"a\u0000b"}`,
		`{"type":"event","name":"t","data":"\ud800"}`,
		`{"type":"event","name":"t","data":"\udc00\ud800"}`,
		`{"type":"event","name":"t","data":"\uD83D\uDE00"}`,
		`{"type":"event","name":"t","data":[1e131071,1e131072,1e-16383,1e-16384,0e1073741823]}`,
		// Deep nesting, and the largest frames a node decodes.
		`{"type":"event","name":"t","data":` + strings.Repeat("[", 10001) + strings.Repeat("]", 10001) + `}`,
		`{"type":"event","name":"t","data":"` + strings.Repeat("x", maxFrame-40) + `"}`,
		`{"type":"event","name":"t","data":[` + strings.Repeat("0,", maxFrame/2-30) + `0]}`,
		`{"type":"reply","id":"` + uuid1 + `","ok":true,"result":"` + strings.Repeat(`\u00e9`, maxFrame/6-20) + `"}`,
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) > maxFrame {
			t.Skip("a node never decodes a frame this large")
		}
		var m protocol.Message
		var err error
		fuzzcheck.Allocs(t, len(frame), func() { m, err = protocol.Decode(frame) })
		if err != nil {
			checkRefusal(t, frame, m, err)
			return
		}
		checkAccepted(t, frame, m)

		again, err := protocol.Encode(m)
		if err != nil {
			t.Fatalf("Decode(%q) accepted %s, which Encode refuses: %v", frame, show(m), err)
		}
		m2, err := protocol.Decode(again)
		if err != nil {
			t.Fatalf("Decode(%q) accepted %s, re-encoded as %s, which Decode refuses: %v", frame, show(m), again, err)
		}
		if !sameMessage(m, m2) {
			t.Fatalf("Decode(%q) gave %s; re-encoded as %s it decodes to %s", frame, show(m), again, show(m2))
		}
		if again2, _ := protocol.Encode(m2); !bytes.Equal(again, again2) {
			t.Fatalf("Encode is not stable: %s, then %s", again, again2)
		}
	})
}

func checkRefusal(t *testing.T, frame []byte, m protocol.Message, err error) {
	t.Helper()
	var de *protocol.DecodeError
	if !errors.As(err, &de) {
		t.Fatalf("Decode(%q): error %T %v is not a *DecodeError", frame, err, err)
	}
	// The reason goes into a WebSocket close frame, or an error frame's
	// message.
	if de.Reason == "" || len(de.Reason) > 123 || !utf8.ValidString(de.Reason) {
		t.Fatalf("Decode(%q): reason %q is not a close reason (1-123 bytes of UTF-8)", frame, de.Reason)
	}
	if de.Code == "" && de.Name != "" || len(de.Name) > protocol.MaxErrorName || !utf8.ValidString(de.Name) {
		t.Fatalf("Decode(%q): refusal %+v names the event badly", frame, de)
	}
	// A refusal the session survives answers with an error frame, which
	// must itself decode.
	if de.Code != "" {
		ef, err := protocol.Encode(de.ErrorFrame())
		if err != nil {
			t.Fatalf("Decode(%q): error frame of %+v: %v", frame, de, err)
		}
		if got, err := protocol.Decode(ef); err != nil || got.Error != de.Code || got.Name != de.Name {
			t.Fatalf("Decode(%q): error frame %s decodes to %s, %v", frame, ef, show(got), err)
		}
	}
	if !reflect.DeepEqual(m, protocol.Message{}) {
		t.Fatalf("Decode(%q) returned %s with its error, want the zero Message", frame, show(m))
	}
}

// checkAccepted asserts what the node and the SDK rely on in a message
// Decode accepted.
func checkAccepted(t *testing.T, frame []byte, m protocol.Message) {
	t.Helper()
	fail := func(why string) { t.Fatalf("Decode(%q) accepted %s: %s", frame, show(m), why) }
	if err := protocol.CheckStorable(frame); err != nil {
		fail("the frame is not storable: " + err.Error())
	}
	for _, s := range []string{m.Type, m.ID, m.Name, m.Error, m.Message, m.Deadline} {
		if !utf8.ValidString(s) || strings.ContainsRune(s, 0) {
			fail("a text field is not storable")
		}
	}
	for _, raw := range []json.RawMessage{m.Args, m.Result, m.Data} {
		if raw == nil {
			continue
		}
		if !json.Valid(raw) {
			fail("a JSON field is not valid JSON")
		}
		if err := protocol.CheckStorable(raw); err != nil {
			fail("a JSON field is not storable: " + err.Error())
		}
		if bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
			fail("a JSON field is a null, not absent")
		}
	}
	// Only the fields of its type are set.
	want := protocol.Message{Type: m.Type}
	switch m.Type {
	case protocol.TypeCommand:
		want.ID, want.Name, want.Args, want.Deadline = m.ID, m.Name, m.Args, m.Deadline
		if !protocol.ValidName(m.Name) || !isUUID(m.ID) || len(m.Args) == 0 {
			fail("a command needs a name, a uuid and args")
		}
		if _, ok := m.DeadlineTime(); m.Deadline != "" && !ok {
			fail("a command's deadline is not an RFC 3339 time")
		}
	case protocol.TypeError:
		want.Error, want.Message, want.Name = m.Error, m.Message, m.Name
		if m.Error == "" {
			fail("an error frame needs a code")
		}
	case protocol.TypeReply:
		want.ID, want.OK, want.Result, want.Error = m.ID, m.OK, m.Result, m.Error
		if !isUUID(m.ID) || m.OK == nil || (!*m.OK && m.Error == "") {
			fail("a reply needs a uuid, ok, and an error when not ok")
		}
	case protocol.TypeEvent:
		want.Name, want.Data = m.Name, m.Data
		if !protocol.ValidName(m.Name) {
			fail("an event needs a name")
		}
	case protocol.TypeState:
		want.Desired, want.Version = m.Desired, m.Version
	case protocol.TypeReport:
		want.Reported = m.Reported
	case protocol.TypePing, protocol.TypePong:
	default:
		fail("unknown type")
	}
	if !reflect.DeepEqual(m, want) {
		fail("fields of another type are set")
	}
}

var uuidForm = regexp.MustCompile(`^[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$`)

func isUUID(s string) bool { return uuidForm.MatchString(s) }

// sameMessage compares messages as JSON: Encode compacts JSON fields and
// escapes <, > and & in them, which changes their bytes, not their value.
func sameMessage(a, b protocol.Message) bool {
	if a.Type != b.Type || a.ID != b.ID || a.Name != b.Name || a.Error != b.Error ||
		a.Deadline != b.Deadline || a.Message != b.Message || a.Version != b.Version ||
		(a.OK == nil) != (b.OK == nil) || (a.OK != nil && *a.OK != *b.OK) {
		return false
	}
	return sameJSON(a.Args, b.Args) && sameJSON(a.Result, b.Result) && sameJSON(a.Data, b.Data) &&
		sameJSON(a.Desired, b.Desired) && sameJSON(a.Reported, b.Reported)
}

func sameJSON(a, b json.RawMessage) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return bytes.Equal(canonical(a), canonical(b))
}

func canonical(raw json.RawMessage) []byte {
	var compact, escaped bytes.Buffer
	if err := json.Compact(&compact, raw); err != nil {
		return raw
	}
	json.HTMLEscape(&escaped, compact.Bytes())
	return escaped.Bytes()
}
