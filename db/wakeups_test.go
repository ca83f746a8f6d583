package db_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"unicode"

	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/fuzzcheck"
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
		"",
		"\n\n\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, payload string) {
		var nodeMsgs []db.NodeMessage
		var ids []uuid.UUID
		fuzzcheck.Allocs(t, len(payload), func() {
			nodeMsgs = db.ParseNodeMessages(payload)
			ids = db.ParseEdgeMessage(payload)
		})
		lines := strings.Count(payload, "\n") + 1
		if len(nodeMsgs) > lines || len(ids) > lines {
			t.Fatalf("%q: %d lines gave %d node messages and %d command ids", payload, lines, len(nodeMsgs), len(ids))
		}

		var written []string
		for _, m := range nodeMsgs {
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
		for _, id := range ids {
			written = append(written, id.String())
		}
		if again := db.ParseEdgeMessage(strings.Join(written, "\n")); !slices.Equal(again, ids) {
			t.Fatalf("%q gave %v; written back, %v", payload, ids, again)
		}
	})
}
