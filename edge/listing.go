package edge

import (
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/problem"
)

// Every listing pages alike (readPage): ?limit= is the page size,
// 1-db.MaxPage, defaultPage when absent or empty; ?cursor= is the "next"
// of the page before, given with the same filters, and empty is the first
// page; the answer's "next" is absent on the last page.
const defaultPage = 100

// orEmpty is s, or an empty slice for nil: a listing answers [] rather
// than null, since clients iterate it.
func orEmpty[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// maxFilterValue bounds ?node= and ?region=: longer cannot name one.
const maxFilterValue = 128

// deviceList is the answer of GET /v1/devices.
type deviceList struct {
	Devices []db.Device `json:"devices"`
	Next    string      `json:"next,omitempty"` // absent on the last page
	Total   int         `json:"total"`
	Online  int         `json:"online"`
}

// handleListDevices answers GET /v1/devices: the devices a filter
// chooses, a page at a time in id order, with counts over every page.
func (e *Edge) handleListDevices(w http.ResponseWriter, r *http.Request) {
	f, limit, after, ok := parseListQuery(w, r.URL.Query())
	if !ok {
		return
	}
	page, err := e.store.ListDevices(r.Context(), f, after, limit)
	if err != nil {
		e.unavailable(w, "listing devices", err)
		return
	}
	out := deviceList{Devices: page.Devices, Total: page.Total, Online: page.Online}
	out.Devices = orEmpty(out.Devices)
	if page.More {
		out.Next = encodeCursor(filterDigest(f), page.Devices[len(page.Devices)-1].ID)
	}
	writeJSON(w, http.StatusOK, out)
}

// listParams are the query parameters GET /v1/devices reads; any other is
// refused, so that a misspelt filter (?regoin=) is not silently ignored
// and the whole fleet listed instead.
var listParams = []string{"online", "node", "region", "label", "q", "delta", "limit", "cursor"}

// parseListQuery reads GET /v1/devices's query. On failure it has
// answered 400.
func parseListQuery(w http.ResponseWriter, q url.Values) (f db.DeviceFilter, limit int, after string, ok bool) {
	if !allowQuery(w, q, listParams, "label") {
		return f, 0, "", false
	}
	// An empty node, region, q, label, limit or cursor is not given (a
	// form's empty field); online has a grammar, and "" is not in it.
	switch v := q.Get("online"); {
	case !q.Has("online"):
	case v == "true" || v == "false":
		f.Online = new(v == "true")
	default:
		problem.InvalidQuery.Write(w, fmt.Sprintf("online=%q: want true or false", v))
		return f, 0, "", false
	}
	switch v := q.Get("delta"); v {
	case "":
	case "nonempty":
		f.DeltaNonEmpty = true
	default:
		problem.InvalidQuery.Write(w, fmt.Sprintf("delta=%q: want nonempty (the devices whose desired state differs from their reported state)", v))
		return f, 0, "", false
	}
	f.Node, f.Region = q.Get("node"), q.Get("region")
	if len(f.Node) > maxFilterValue || len(f.Region) > maxFilterValue {
		problem.InvalidQuery.Write(w, fmt.Sprintf("node and region: want at most %d bytes", maxFilterValue))
		return f, 0, "", false
	}
	if f.IDContains = q.Get("q"); f.IDContains != "" && !db.ValidDeviceIDPart(f.IDContains) {
		problem.InvalidQuery.Write(w, "q: want part of a device id: at most 128 letters, digits and \"._-\"")
		return f, 0, "", false
	}
	if labels := q["label"]; len(labels) > 0 {
		sel, err := db.ParseLabelSelector(strings.Join(labels, ","))
		if err != nil {
			problem.InvalidLabelSelector.Write(w, err.Error())
			return f, 0, "", false
		}
		f.Labels = sel
	}
	limit, after, ok = readPage(w, q, filterDigest(f))
	return f, limit, after, ok
}

// filterDigest names a device filter in a cursor (db.DeviceFilter.Digest).
func filterDigest(f db.DeviceFilter) []byte { return f.Digest() }

// listDigest names a listing and its filters in its cursors.
func listDigest(parts ...string) []byte { return db.ListDigest(parts...) }

// readPage reads a listing's ?limit= and ?cursor=, the cursor checked
// against digest (listDigest of the listing and the filters given): the
// key of the last row of the page before ("" for the first page). On
// failure it has answered 400 (invalid-query, invalid-cursor).
func readPage(w http.ResponseWriter, q url.Values, digest []byte) (limit int, after string, ok bool) {
	limit = defaultPage
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > db.MaxPage {
			problem.InvalidQuery.Write(w, fmt.Sprintf("limit=%q: want a whole number from 1 to %d", v, db.MaxPage))
			return 0, "", false
		}
		limit = n
	}
	if c := q.Get("cursor"); c != "" {
		var err error
		if after, err = decodeCursor(c, digest); err != nil {
			problem.InvalidCursor.Write(w, "cursor: "+err.Error()+"; start again without one")
			return 0, "", false
		}
	}
	return limit, after, true
}

// readPageInt is readPage for a listing keyed on a positive whole number
// (an id, a sequence): 0 for the first page.
func readPageInt(w http.ResponseWriter, q url.Values, digest []byte) (limit int, after int64, ok bool) {
	limit, last, ok := readPage(w, q, digest)
	if !ok || last == "" {
		return limit, 0, ok
	}
	if after, err := strconv.ParseInt(last, 10, 64); err == nil && after > 0 {
		return limit, after, true
	}
	// A cursor this edge made holds a number: this one was forged.
	problem.InvalidCursor.Write(w, "cursor: damaged: use the next value of a listing as it is; start again without one")
	return 0, 0, false
}

// The cursor codec is db's (db/cursor.go), which the console's lists use
// too: a cursor of the API pages them as well.
func encodeCursor(digest []byte, lastID string) string { return db.EncodeCursor(digest, lastID) }

func decodeCursor(c string, digest []byte) (string, error) { return db.DecodeCursor(c, digest) }

// allowQuery refuses (400 invalid-query) a query parameter not in allowed,
// and one given twice unless it is in repeatable: a misspelt filter
// (?staus=) must not list everything instead. It reports whether the
// query passed.
func allowQuery(w http.ResponseWriter, q url.Values, allowed []string, repeatable ...string) bool {
	for name, vals := range q {
		if !slices.Contains(allowed, name) {
			problem.InvalidQuery.Write(w, fmt.Sprintf("unknown query parameter %q: want %s", name, strings.Join(allowed, ", ")))
			return false
		}
		if len(vals) > 1 && !slices.Contains(repeatable, name) {
			problem.InvalidQuery.Write(w, fmt.Sprintf("query parameter %q given %d times: give it once", name, len(vals)))
			return false
		}
	}
	return true
}
