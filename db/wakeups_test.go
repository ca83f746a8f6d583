package db_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"unicode"

	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/testkit/fuzzcheck"
)

// FuzzParseWakeups feeds a NOTIFY payload, which any database role may
// send, to both channel parsers: what they read is well formed and reads
// the same once written back in the channel format.
func FuzzParseWakeups(f *testing.F) {
	sid := "0b7c3a52-6f0e-4d1a-9c39-2f4b1e8a9d10"
	for _, s := range []string{
		"wake dev-1\nkick dev-2 " + sid + "\nbogus line\nkick dev-3 not-a-uuid\nwake dev-4",
		"wake  dev-1 \r\n\twake dev-2\n\nwake\nwake a b\nkick dev-2 " + sid + " extra",
		sid + "\n" + strings.ToUpper(sid) + "\r\n {" + sid + "}\nurn:uuid:" + sid + "\n" + strings.ReplaceAll(sid, "-", "") + "\nnot-a-uuid",
		"wake \u00a0dev\u2028\x85x\xff",
		"job " + sid + " 1 20\njob " + sid + " 5 4\njob nope 1 2\njob " + sid + " -1 +7\njob " + sid + " 1",
		`{"id":"` + sid + `","device_id":"d","name":"n","args":{},"status":"done","ok":true,"timeout":"10s","attempts":1,"created_at":"2026-11-26T10:00:00Z","expires_at":"2026-11-26T11:00:00Z"}` + "\n" + sid + "\n{\"id\":\"nope\"}\n{",
		"",
		"\n\n\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, payload string) {
		var nodeMsgs []db.NodeMessage
		var edgeMsgs []db.EdgeMessage
		fuzzcheck.Allocs(t, len(payload), func() {
			nodeMsgs = db.ParseNodeMessages(payload)
			edgeMsgs = db.ParseEdgeMessage(payload)
		})
		lines := strings.Count(payload, "\n") + 1
		if len(nodeMsgs) > lines || len(edgeMsgs) > lines {
			t.Fatalf("%q: %d lines gave %d node messages and %d edge messages", payload, lines, len(nodeMsgs), len(edgeMsgs))
		}

		var written []string
		for _, m := range nodeMsgs {
			if m.Job.Job != uuid.Nil {
				if m.DeviceID != "" || m.Kick || m.Close != "" || m.Job.First > m.Job.Last {
					t.Fatalf("%q gave %+v", payload, m)
				}
				written = append(written, fmt.Sprintf("job %s %d %d", m.Job.Job, m.Job.First, m.Job.Last))
				continue
			}
			if m.Close != "" {
				written = append(written, fmt.Sprintf("close %s %s", m.DeviceID, m.Close))
				continue
			}
			if m.DeviceID == "" || strings.ContainsFunc(m.DeviceID, unicode.IsSpace) || !m.Kick && m.SessionID != uuid.Nil {
				t.Fatalf("%q gave %+v", payload, m)
			}
			if m.Kick {
				written = append(written, fmt.Sprintf("kick %s %s", m.DeviceID, m.SessionID))
			} else {
				written = append(written, "wake "+m.DeviceID)
			}
		}
		if again := db.ParseNodeMessages(strings.Join(written, "\n")); !slices.Equal(again, nodeMsgs) {
			t.Fatalf("%q gave %+v; written back, %+v", payload, nodeMsgs, again)
		}

		written = written[:0]
		for _, m := range edgeMsgs {
			if m.ID == uuid.Nil || (m.Command != nil && m.Command.ID != m.ID) {
				t.Fatalf("%q gave %+v", payload, m)
			}
			if m.Command == nil {
				written = append(written, m.ID.String())
				continue
			}
			b, err := json.Marshal(m.Command)
			if err != nil {
				t.Fatalf("%q gave a command that does not marshal: %v", payload, err)
			}
			written = append(written, string(b))
		}
		again := db.ParseEdgeMessage(strings.Join(written, "\n"))
		if len(again) != len(edgeMsgs) {
			t.Fatalf("%q gave %d messages; written back, %d", payload, len(edgeMsgs), len(again))
		}
		for i := range again {
			a, _ := json.Marshal(again[i])
			b, _ := json.Marshal(edgeMsgs[i])
			if string(a) != string(b) {
				t.Fatalf("%q gave %s; written back, %s", payload, b, a)
			}
		}
	})
}

// An edge's or node's id names its channel: every valid one fits
// PostgreSQL's 63 bytes, and ids that could not name a process are refused.
func TestValidChannelID(t *testing.T) {
	longest := strings.Repeat("x", 48)
	if !db.ValidChannelID(longest) || len(db.NodeChannel(longest)) > 63 || len(db.EdgeChannel(longest)) > 63 {
		t.Errorf("a 48-byte id: valid %v, channels %q %q", db.ValidChannelID(longest), db.NodeChannel(longest), db.EdgeChannel(longest))
	}
	for _, id := range []string{"", "has space", strings.Repeat("x", 49), "-leading", "a;b"} {
		if db.ValidChannelID(id) {
			t.Errorf("ValidChannelID(%q) = true", id)
		}
	}
}
