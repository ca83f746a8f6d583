package edge

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/switchboard-iot/switchboard/db"
)

// A cursor reads back as the id it was made with, for its filter only,
// also when the id is of the old format (with ':'), which listings show.
func TestCursorRoundTrip(t *testing.T) {
	f := db.DeviceFilter{Region: "eu", Labels: db.LabelSelector{{Key: "room", Op: db.LabelEquals, Value: "kitchen"}, {Key: "beta", Op: db.LabelAbsent}}}
	same := db.DeviceFilter{Region: "eu", Labels: db.LabelSelector{{Key: "beta", Op: db.LabelAbsent}, {Key: "room", Op: db.LabelEquals, Value: "kitchen"}}}
	for _, id := range []string{"dev-1", "old:1", "a"} {
		c := encodeCursor(filterDigest(f), id)
		if got, err := decodeCursor(c, filterDigest(same)); err != nil || got != id {
			t.Errorf("cursor of %q read back as %q, %v", id, got, err)
		}
		if _, err := decodeCursor(c, filterDigest(db.DeviceFilter{Region: "eu"})); err == nil {
			t.Errorf("cursor of %q accepted with another filter", id)
		}
	}
}

// FuzzListQuery feeds the query of GET /v1/devices, cursors included:
// it is answered 400 or read into a bounded filter, never a panic.
func FuzzListQuery(f *testing.F) {
	digest := filterDigest(db.DeviceFilter{})
	for _, s := range []string{"", "online=true", "online=yes", "limit=1000", "limit=0", "label=room=kitchen,!beta",
		"label=a&label=b!=c", "q=kit", "q=%25", "region=eu&node=n1", "x=1", "online=true&online=false",
		"cursor=" + encodeCursor(digest, "dev-1"), "cursor=" + encodeCursor(digest, "old:1"), "cursor=AAAA", "cursor=!!"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		w := httptest.NewRecorder()
		filter, limit, after, ok := parseListQuery(w, q)
		if !ok {
			if w.Code != http.StatusBadRequest {
				t.Fatalf("?%s refused with %d, want 400", raw, w.Code)
			}
			return
		}
		if limit < 1 || limit > db.MaxPage || len(after) > 128 || len(filter.Labels) > db.MaxLabels {
			t.Fatalf("?%s read as limit %d, after %q, %d label terms", raw, limit, after, len(filter.Labels))
		}
		if filter.IDContains != "" && !db.ValidDeviceIDPart(filter.IDContains) {
			t.Fatalf("?%s: q %q accepted", raw, filter.IDContains)
		}
	})
}
