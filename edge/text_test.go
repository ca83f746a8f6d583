package edge_test

import (
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"testing"

	"github.com/switchboard-iot/switchboard/app/testsys"
)

// Text PostgreSQL cannot store (NUL, invalid UTF-8) is refused with 400
// before the database is asked: in a query value, a path, a cursor or a
// JSON body. It used to reach a query and fail it (SQLSTATE 22021: 503 and
// an ERROR in the log), issue 15.
func TestUnstorableText(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)
	c := newAPI(t, e.URL, sys.APIKey(t))
	sys.AddDevice(t, "dev-1")

	// A cursor is no secret: a client can make one that continues after
	// any id, NUL included (the format of edge/listing.go's encodeCursor;
	// the filter digest of no filter).
	digest := sha256.Sum256([]byte("devices\x00\x00\x00\x00\x00"))
	b := append([]byte{1}, digest[:8]...)
	b = append(b, "dev\x00"...)
	sum := sha256.Sum256(b)
	forged := base64.RawURLEncoding.EncodeToString(append(b, sum[:8]...))

	for _, tc := range []struct{ method, path, body, slug string }{
		{http.MethodGet, "/v1/devices?region=lab%00", "", "invalid-query"},
		{http.MethodGet, "/v1/devices?node=%C0%AF", "", "invalid-query"},
		{http.MethodGet, "/v1/devices?node=%FF", "", "invalid-query"},
		{http.MethodGet, "/v1/devices?%00=1", "", "invalid-query"},
		{http.MethodGet, "/v1/devices?cursor=" + forged, "", "invalid-cursor"},
		{http.MethodGet, "/v1/events?region=%00", "", "invalid-query"},
		{http.MethodGet, "/v1/jobs?status=%00", "", "invalid-query"},
		{http.MethodGet, "/v1/devices/dev%00", "", "invalid-path"},
		{http.MethodGet, "/v1/devices/dev%FF/events", "", "invalid-path"},
		{http.MethodPatch, "/v1/devices/%C0%AF", `{"labels":{}}`, "invalid-path"},
		{http.MethodPost, "/v1/devices/dev-1/commands", `{"name":"x","args":{"s":"a\u0000b"}}`, "invalid-json"},
		{http.MethodPost, "/v1/devices/dev-1/commands", "{\"name\":\"x\",\"args\":{\"s\":\"\xff\"}}", "invalid-json"},
		{http.MethodPost, "/v1/jobs", `{"name":"x","target":{"region":"lab\u0000"}}`, "invalid-json"},
	} {
		t.Run(tc.method+" "+tc.path+" "+tc.body, func(t *testing.T) {
			resp, body := c.call(tc.method, tc.path, tc.body)
			if p := wantProblem(t, resp, body, http.StatusBadRequest, tc.slug); p.Detail == "" {
				t.Error("no detail")
			}
		})
	}
}
