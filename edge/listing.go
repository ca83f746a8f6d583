package edge

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/pgtext"
	"github.com/switchboard-iot/switchboard/internal/problem"
)

// Every listing pages alike (readPage): ?limit= is the page size,
// 1-db.MaxPage, defaultPage when absent or empty; ?cursor= is the "next"
// of the page before, given with the same filters, and empty is the first
// page; the answer's "next" is absent on the last page.
const defaultPage = 100

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
	if out.Devices == nil {
		out.Devices = []db.Device{} // [] rather than null: clients iterate it
	}
	if page.More {
		out.Next = encodeCursor(filterDigest(f), page.Devices[len(page.Devices)-1].ID)
	}
	writeJSON(w, http.StatusOK, out)
}

// listParams are the query parameters GET /v1/devices reads; any other is
// refused, so that a misspelt filter (?regoin=) is not silently ignored
// and the whole fleet listed instead.
var listParams = []string{"online", "node", "region", "label", "q", "limit", "cursor"}

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

// filterDigest names a filter in a cursor, so that a cursor is refused
// with another filter (its last id would skip devices of that one); label
// terms are sorted, so that their order does not matter.
func filterDigest(f db.DeviceFilter) []byte {
	online := ""
	if f.Online != nil {
		online = strconv.FormatBool(*f.Online)
	}
	return listDigest("devices", online, f.Node, f.Region, labelTerms(f.Labels), strings.ToLower(f.IDContains))
}

// labelTerms writes a selector for a digest: its terms sorted.
func labelTerms(sel db.LabelSelector) string {
	terms := make([]string, len(sel))
	for i, r := range sel {
		terms[i] = db.LabelSelector{r}.String()
	}
	slices.Sort(terms)
	return strings.Join(terms, ",")
}

// listDigest names a listing and its filters in its cursors: the first
// cursorDigest bytes of the SHA-256 of its parts, the listing's name
// first, in a canonical form (the page size is not one of them and may
// change between pages). NUL separates the parts: none can hold one.
func listDigest(parts ...string) []byte {
	sum := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return sum[:cursorDigest]
}

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

// A cursor is base64url (unpadded) of: version byte 1, the 8-byte filter
// digest, the last id of the page, then an 8-byte checksum (SHA-256) of
// all that. The checksum is not a secret MAC: an HMAC would need a key
// every edge shares (state to provision and rotate) and buys nothing here,
// since the cursor grants nothing: whoever can list can start anywhere
// with a forged one. The checksum only catches a cursor that was cut,
// edited or mixed up, so that it is refused with a 400 instead of quietly
// listing from somewhere else.
const (
	cursorVersion  = 1
	cursorDigest   = 8
	cursorChecksum = 8
)

func encodeCursor(digest []byte, lastID string) string {
	b := append([]byte{cursorVersion}, digest...)
	b = append(b, lastID...)
	sum := sha256.Sum256(b)
	return base64.RawURLEncoding.EncodeToString(append(b, sum[:cursorChecksum]...))
}

// decodeCursor checks a cursor against the filter's digest and returns
// the id it continues after.
func decodeCursor(c string, digest []byte) (string, error) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || len(b) < 1+cursorDigest+1+cursorChecksum {
		return "", errors.New("malformed: use the next value of a listing as it is")
	}
	body, sum := b[:len(b)-cursorChecksum], b[len(b)-cursorChecksum:]
	want := sha256.Sum256(body)
	if subtle.ConstantTimeCompare(sum, want[:cursorChecksum]) != 1 || body[0] != cursorVersion {
		return "", errors.New("damaged: use the next value of a listing as it is")
	}
	if !bytes.Equal(body[1:1+cursorDigest], digest) {
		return "", errors.New("it belongs to a listing with other filters: give the same filters as the page it came from")
	}
	// Not ValidDeviceID: a page may end at an id of the old format
	// (with ':'), which listings show so that it can be found and deleted.
	id := string(body[1+cursorDigest:])
	if len(id) > 128 || !pgtext.Valid(id) {
		return "", errors.New("damaged: use the next value of a listing as it is")
	}
	return id, nil
}

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
