package console_test

import (
	"encoding/json"
	"html"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/db"
)

var nextLink = regexp.MustCompile(`<a id="next" href="([^"]+)"`)

// next is a list page's next link, "" on the last page.
func next(page string) string {
	if m := nextLink.FindStringSubmatch(page); m != nil {
		return html.UnescapeString(m[1])
	}
	return ""
}

// The console's lists page in the API's words (limit, cursor, and the
// next page's link), and take the API's cursors: a next of
// GET /v1/devices or GET /v1/jobs pages the console's list too.
func TestListPaging(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)
	for _, id := range []string{"dev-1", "dev-2", "dev-3"} {
		sys.AddDevice(t, id)
	}
	b := newBrowser(t, e.URL)
	b.signIn(sys.APIKey(t, db.ScopeRead, db.ScopeCommands))

	// Devices, two a page.
	_, page := b.get("/devices?limit=2")
	link := next(page)
	u, err := url.Parse(link)
	if err != nil || u.Path != "/devices" || u.Query().Get("limit") != "2" || u.Query().Get("cursor") == "" || u.Query().Has("after") {
		t.Fatalf("/devices?limit=2: next link %q, want /devices with limit=2 and a cursor", link)
	}
	if !strings.Contains(page, `data-device="dev-2"`) || strings.Contains(page, `data-device="dev-3"`) {
		t.Errorf("/devices?limit=2: want dev-1 and dev-2")
	}
	_, api := b.get("/v1/devices?limit=2")
	var list struct{ Next string }
	if err := json.Unmarshal([]byte(api), &list); err != nil || list.Next != u.Query().Get("cursor") {
		t.Errorf("the console's cursor %q, the API's next %q (%v): want the same", u.Query().Get("cursor"), list.Next, err)
	}
	resp, page := b.get(link)
	if resp.StatusCode != http.StatusOK || !strings.Contains(page, `data-device="dev-3"`) || strings.Contains(page, `data-device="dev-2"`) || next(page) != "" {
		t.Errorf("the second page: %d, want dev-3 alone and no next link", resp.StatusCode)
	}
	// A filter's cursor carries the filter; another filter refuses it.
	_, page = b.get("/devices?limit=1&q=dev")
	if link := next(page); !strings.Contains(link, "q=dev") {
		t.Errorf("a filtered list's next link %q does not keep its filter", link)
	}
	for _, q := range []string{"region=ams&cursor=" + list.Next, "cursor=AAAA", "cursor=" + list.Next[:len(list.Next)-2],
		"limit=0", "limit=x", "limit=1001"} {
		if resp, body := b.get("/devices?" + q); resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, `id="error"`) {
			t.Errorf("/devices?%s: %d, want 400 with #error", q, resp.StatusCode)
		}
	}

	// Jobs, newest first, two a page.
	var ids []string
	for range 3 {
		// Scheduled: none starts while the test lists them.
		job := `{"name":"x","target":{"devices":["dev-1"]},"start_at":"` + time.Now().Add(time.Hour).UTC().Format(time.RFC3339) + `"}`
		resp, body := b.do(http.MethodPost, "/v1/jobs", strings.NewReader(job),
			"Content-Type", "application/json", "X-CSRF-Token", b.csrf)
		var j struct{ ID string }
		if resp.StatusCode != http.StatusCreated || json.Unmarshal([]byte(body), &j) != nil {
			t.Fatalf("POST /v1/jobs: %d %s", resp.StatusCode, body)
		}
		ids = append(ids, j.ID)
	}
	_, page = b.get("/jobs?limit=2")
	if !strings.Contains(page, ids[2]) || !strings.Contains(page, ids[1]) || strings.Contains(page, `data-job="`+ids[0]) {
		t.Errorf("/jobs?limit=2: want the two newest jobs")
	}
	_, api = b.get("/v1/jobs?limit=2")
	if err := json.Unmarshal([]byte(api), &list); err != nil {
		t.Fatal(err)
	}
	if link := next(page); link != "/jobs?cursor="+list.Next+"&limit=2" {
		t.Errorf("/jobs?limit=2: next link %q, want the API's cursor %q with limit=2", link, list.Next)
	}
	_, page = b.get(next(page))
	if !strings.Contains(page, `data-job="`+ids[0]) || strings.Contains(page, `data-job="`+ids[1]) || next(page) != "" {
		t.Errorf("the jobs' second page: want the oldest job alone, and no next link")
	}
	for _, q := range []string{"cursor=x", "cursor=00000000-0000-0000-0000-000000000000", "limit=0", "limit=101"} {
		if resp, body := b.get("/jobs?" + q); resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, `id="error"`) {
			t.Errorf("/jobs?%s: %d, want 400 with #error", q, resp.StatusCode)
		}
	}
}
