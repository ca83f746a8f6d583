package edge_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/switchboard-iot/switchboard/app/testsys"
	conntier "github.com/switchboard-iot/switchboard/conn-tier"
	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

// listedDevice is a device as GET /v1/devices and GET /v1/devices/{id}
// show it.
type listedDevice struct {
	ID       string            `json:"id"`
	Labels   map[string]string `json:"labels"`
	Online   bool              `json:"online"`
	Region   string            `json:"region"`
	Presence *struct {
		NodeID string `json:"node_id"`
		Region string `json:"region"`
	} `json:"presence"`
}

type listPage struct {
	Devices []listedDevice `json:"devices"`
	Next    *string        `json:"next"`
	Total   int            `json:"total"`
	Online  int            `json:"online"`
}

// list calls GET /v1/devices with query and checks it answers 200.
func (a *api) list(query string) listPage {
	a.t.Helper()
	resp, body := a.call(http.MethodGet, "/v1/devices?"+query, "")
	if resp.StatusCode != http.StatusOK {
		a.t.Fatalf("GET /v1/devices?%s: status %d, want 200; body %s", query, resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		a.t.Errorf("Content-Type %q, want application/json", ct)
	}
	var p listPage
	if err := json.Unmarshal(body, &p); err != nil {
		a.t.Fatalf("decoding %s: %v", body, err)
	}
	if p.Devices == nil {
		a.t.Fatalf("GET /v1/devices?%s: devices is %s, want a list", query, body)
	}
	return p
}

// listAll follows the cursors of a listing, checking that ids ascend
// across pages and that the counts stay put; it returns every id.
func (a *api) listAll(query string, limit int) (ids []string, total, online int) {
	a.t.Helper()
	q := query + fmt.Sprintf("&limit=%d", limit)
	for pages := 0; ; pages++ {
		if pages > 100 {
			a.t.Fatal("more than 100 pages: the cursor does not advance")
		}
		p := a.list(q)
		if pages > 0 && (p.Total != total || p.Online != online) {
			a.t.Errorf("page %d: total %d online %d, want %d and %d as on page 0", pages, p.Total, p.Online, total, online)
		}
		total, online = p.Total, p.Online
		if len(p.Devices) > limit {
			a.t.Fatalf("page of %d devices, limit %d", len(p.Devices), limit)
		}
		for _, d := range p.Devices {
			if len(ids) > 0 && d.ID <= ids[len(ids)-1] {
				a.t.Fatalf("id %s after %s: not in ascending order (a duplicate?)", d.ID, ids[len(ids)-1])
			}
			ids = append(ids, d.ID)
		}
		if p.Next == nil {
			return ids, total, online
		}
		if *p.Next == "" || len(p.Devices) != limit {
			a.t.Fatalf("next %q after a page of %d (limit %d): want a cursor only after a full page", *p.Next, len(p.Devices), limit)
		}
		q = query + fmt.Sprintf("&limit=%d&cursor=%s", limit, url.QueryEscape(*p.Next))
	}
}

func ids(p listPage) []string {
	var out []string
	for _, d := range p.Devices {
		out = append(out, d.ID)
	}
	return out
}

func regionNode(region string) func(*conntier.Config) {
	return func(c *conntier.Config) { c.Node.Region = region }
}

// Listing with each filter, over devices really connected to nodes of two
// regions, one that left and one that never came.
func TestListDevices(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)
	c := newAPI(t, e.URL, sys.APIKey(t))
	eu := sys.StartNode(t, "node-eu", regionNode("eu"))
	us := sys.StartNode(t, "node-us", regionNode("us"))

	provision := func(id, labels string) string {
		t.Helper()
		resp, body := c.call(http.MethodPost, "/v1/devices", `{"id":"`+id+`","labels":`+labels+`}`)
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("provisioning %s: status %d; body %s", id, resp.StatusCode, body)
		}
		var created struct{ Secret string }
		if err := json.Unmarshal(body, &created); err != nil || created.Secret == "" {
			t.Fatalf("provisioning %s: %s", id, body)
		}
		return created.Secret
	}
	kitchenEU := provision("kitchen-eu", `{"room":"kitchen","fw":"2.1"}`)
	hallUS := provision("hall-us", `{"room":"hall","fw":"2.1","beta":""}`)
	kitchenGone := provision("kitchen-gone", `{"room":"kitchen"}`)
	provision("never", `{}`)

	testsys.StartDevice(t, eu, "kitchen-eu", kitchenEU, nil)
	testsys.StartDevice(t, us, "hall-us", hallUS, nil)
	gone := testsys.StartDevice(t, us, "kitchen-gone", kitchenGone, nil)
	testsys.Eventually(t, "three devices online", func() bool { return c.list("online=true").Total == 3 })
	if err := gone.Stop(); err != nil {
		t.Fatal(err)
	}
	testsys.Eventually(t, "kitchen-gone offline", func() bool { return c.list("online=true").Total == 2 })

	all := c.list("")
	if got := ids(all); !slices.Equal(got, []string{"hall-us", "kitchen-eu", "kitchen-gone", "never"}) {
		t.Fatalf("all devices %v", got)
	}
	if all.Total != 4 || all.Online != 2 || all.Next != nil {
		t.Errorf("all: total %d online %d next %v, want 4, 2 and no next", all.Total, all.Online, all.Next)
	}
	byID := map[string]listedDevice{}
	for _, d := range all.Devices {
		byID[d.ID] = d
	}
	if d := byID["kitchen-eu"]; !d.Online || d.Region != "eu" || d.Presence == nil || d.Presence.NodeID != "node-eu" || d.Labels["room"] != "kitchen" {
		t.Errorf("kitchen-eu: %+v, want online in eu on node-eu with its labels", d)
	}
	// An offline device keeps the region of its last session.
	if d := byID["kitchen-gone"]; d.Online || d.Region != "us" || d.Presence != nil {
		t.Errorf("kitchen-gone: %+v, want offline, region us", d)
	}
	if d := byID["never"]; d.Online || d.Region != "" || d.Labels == nil {
		t.Errorf("never: %+v, want offline, no region, labels {}", d)
	}
	// GET /v1/devices/{id} shows the same device.
	resp, body := c.call(http.MethodGet, "/v1/devices/kitchen-gone", "")
	var one listedDevice
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &one) != nil || one.Region != "us" {
		t.Errorf("GET /v1/devices/kitchen-gone: %d %s, want region us", resp.StatusCode, body)
	}

	for _, tc := range []struct {
		query         string
		want          []string
		total, online int
	}{
		{"online=true", []string{"hall-us", "kitchen-eu"}, 2, 2},
		{"online=false", []string{"kitchen-gone", "never"}, 2, 0},
		{"node=node-eu", []string{"kitchen-eu"}, 1, 1},
		{"node=node-us&online=false", nil, 0, 0},
		{"region=us", []string{"hall-us", "kitchen-gone"}, 2, 1},
		{"region=us&online=false", []string{"kitchen-gone"}, 1, 0},
		{"region=mars", nil, 0, 0},
		{"label=room=kitchen", []string{"kitchen-eu", "kitchen-gone"}, 2, 1},
		{"label=room==kitchen", []string{"kitchen-eu", "kitchen-gone"}, 2, 1},
		{"label=room!=kitchen", []string{"hall-us", "never"}, 2, 1},
		{"label=room", []string{"hall-us", "kitchen-eu", "kitchen-gone"}, 3, 2},
		{"label=!room", []string{"never"}, 1, 0},
		{"label=beta=", []string{"hall-us"}, 1, 1},
		{"label=room=kitchen,fw=2.1", []string{"kitchen-eu"}, 1, 1},
		{"label=room=kitchen&label=fw=2.1", []string{"kitchen-eu"}, 1, 1},
		{"label=fw%3D2.1&label=!beta&online=true", []string{"kitchen-eu"}, 1, 1},
		{"q=KITCHEN", []string{"kitchen-eu", "kitchen-gone"}, 2, 1},
		{"q=n-g", []string{"kitchen-gone"}, 1, 0},
		{"q=_", nil, 0, 0}, // a LIKE wildcard matches only itself
		{"q=-", []string{"hall-us", "kitchen-eu", "kitchen-gone"}, 3, 2},
	} {
		p := c.list(tc.query)
		if got := ids(p); !slices.Equal(got, tc.want) || p.Total != tc.total || p.Online != tc.online {
			t.Errorf("?%s: %v total %d online %d, want %v total %d online %d", tc.query, got, p.Total, p.Online, tc.want, tc.total, tc.online)
		}
	}
}

// 250 devices in pages of 100: every device once, in order, the counts on
// every page, no cursor after the last page; and the same with a filter.
func TestListDevicesPages(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)
	c := newAPI(t, e.URL, sys.APIKey(t, db.ScopeRead))
	var creds []db.Credential
	var want, wantEven []string
	for i := range 250 {
		id := fmt.Sprintf("dev-%03d", i)
		cred := db.Credential{ID: id, SecretHash: secret.Hash(secret.New(""))}
		want = append(want, id)
		if i%2 == 0 {
			cred.Labels = map[string]string{"parity": "even"}
			wantEven = append(wantEven, id)
		}
		creds = append(creds, cred)
	}
	if _, err := sys.Store.AddDevices(t.Context(), creds); err != nil {
		t.Fatal(err)
	}

	got, total, online := c.listAll("", 100)
	if !slices.Equal(got, want) || total != 250 || online != 0 {
		t.Errorf("listed %d devices (total %d, online %d), want the 250 in order", len(got), total, online)
	}
	got, total, _ = c.listAll("label=parity=even", 100)
	if !slices.Equal(got, wantEven) || total != 125 {
		t.Errorf("listed %d even devices (total %d), want the 125 in order", len(got), total)
	}
	got, _, _ = c.listAll("label=!parity", 7)
	if len(got) != 125 {
		t.Errorf("listed %d odd devices in pages of 7, want 125", len(got))
	}
	// A page that ends exactly at the last device has no next.
	if p := c.list("limit=250"); len(p.Devices) != 250 || p.Next != nil {
		t.Errorf("limit=250: %d devices, next %v; want 250 and no next", len(p.Devices), p.Next)
	}
	if p := c.list(""); len(p.Devices) != 100 || p.Next == nil {
		t.Errorf("default page: %d devices, next %v; want 100 and a next", len(p.Devices), p.Next)
	}

	// A device added behind the cursor is not listed again; one ahead is.
	first := c.list("limit=100")
	if _, err := sys.Store.AddDevices(t.Context(), []db.Credential{
		{ID: "dev-000a", SecretHash: secret.Hash("x")}, {ID: "dev-999", SecretHash: secret.Hash("y")},
	}); err != nil {
		t.Fatal(err)
	}
	rest, _, _ := c.listAll("cursor="+url.QueryEscape(*first.Next), 1000)
	if rest[0] != "dev-100" || rest[len(rest)-1] != "dev-999" || slices.Contains(rest, "dev-000a") {
		t.Errorf("after the first page: %v … %v (%d)", rest[:2], rest[len(rest)-2:], len(rest))
	}
}

func TestListDevicesBadInput(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)
	c := newAPI(t, e.URL, sys.APIKey(t, db.ScopeRead))
	for i := range 3 {
		sys.AddDevice(t, fmt.Sprintf("dev-%d", i))
	}
	next := *c.list("limit=1&label=!x").Next

	// One bit of the last id changes: well-formed, but the checksum fails.
	raw, err := base64.RawURLEncoding.DecodeString(next)
	if err != nil {
		t.Fatalf("next %q is not base64url: %v", next, err)
	}
	raw[len(raw)-9] ^= 1
	tampered := base64.RawURLEncoding.EncodeToString(raw)
	for _, tc := range []struct{ query, slug, detail string }{
		{"online=yes", "invalid-query", "online"},
		{"online=", "invalid-query", "online"},
		{"online=true&online=false", "invalid-query", "online"},
		{"limit=0", "invalid-query", "limit"},
		{"limit=1001", "invalid-query", "limit"},
		{"limit=ten", "invalid-query", "limit"},
		{"regoin=eu", "invalid-query", "regoin"},
		{"node=" + strings.Repeat("n", 129), "invalid-query", "node"},
		{"q=has%20space", "invalid-query", "q"},
		{"q=" + strings.Repeat("q", 129), "invalid-query", "q"},
		{"label==kitchen", "invalid-label-selector", "key"},
		{"label=room=kit%20chen", "invalid-label-selector", "value"},
		{"label=a,,b", "invalid-label-selector", "key"},
		{"label=" + strings.Repeat("k,", 65) + "k", "invalid-label-selector", "64"},
		{"cursor=" + tampered + "&label=!x", "invalid-cursor", "damaged"},
		{"cursor=" + next[:len(next)-3] + "&label=!x", "invalid-cursor", ""},
		{"cursor=!!!", "invalid-cursor", "malformed"},
		{"cursor=AAAA", "invalid-cursor", "malformed"},
		{"cursor=" + next, "invalid-cursor", "other filters"},                    // the filter it came with is gone
		{"cursor=" + next + "&label=!x&online=false", "invalid-cursor", "other"}, // another filter added
	} {
		resp, body := c.call(http.MethodGet, "/v1/devices?"+tc.query, "")
		t.Logf("?%s", tc.query)
		p := wantProblem(t, resp, body, http.StatusBadRequest, tc.slug)
		if !strings.Contains(p.Detail, tc.detail) {
			t.Errorf("?%s: detail %q does not mention %q", tc.query, p.Detail, tc.detail)
		}
	}
	// The same cursor with the same filter, terms in another order, works.
	if p := c.list("cursor=" + next + "&label=!x"); len(p.Devices) != 2 {
		t.Errorf("the cursor with its filter: %v, want the 2 devices after the first", ids(p))
	}
}

// patchLabels sends a merge patch; it is safe to call from goroutines.
func patchLabels(ctx context.Context, a *api, id, patch string) (int, []byte, error) {
	req := a.request(ctx, http.MethodPatch, "/v1/devices/"+id, patch, "Content-Type", "application/merge-patch+json")
	resp, err := a.hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

func TestPatchDeviceLabels(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)
	c := newAPI(t, e.URL, sys.APIKey(t, db.ScopeAdmin, db.ScopeRead))
	sys.AddDevice(t, "dev-1")

	patch := func(body string) map[string]string {
		t.Helper()
		code, b, err := patchLabels(t.Context(), c, "dev-1", body)
		if err != nil || code != http.StatusOK {
			t.Fatalf("PATCH %s: %d %s %v, want 200", body, code, b, err)
		}
		var d listedDevice
		if err := json.Unmarshal(b, &d); err != nil || d.ID != "dev-1" {
			t.Fatalf("PATCH %s: answered %s, want the device", body, b)
		}
		return d.Labels
	}
	if got := patch(`{"labels":{"room":"kitchen","fw":"2.1","beta":""}}`); !jsonEqual(got, map[string]string{"room": "kitchen", "fw": "2.1", "beta": ""}) {
		t.Errorf("after setting: %v", got)
	}
	if got := patch(`{"labels":{"room":"hall","beta":null,"absent":null}}`); !jsonEqual(got, map[string]string{"room": "hall", "fw": "2.1"}) {
		t.Errorf("after merging: %v", got)
	}
	if got := patch(`{}`); !jsonEqual(got, map[string]string{"room": "hall", "fw": "2.1"}) {
		t.Errorf("after an empty patch: %v", got)
	}
	// The answer is what is stored.
	resp, body := c.call(http.MethodGet, "/v1/devices/dev-1", "")
	var stored listedDevice
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &stored) != nil || !jsonEqual(stored.Labels, map[string]string{"room": "hall", "fw": "2.1"}) {
		t.Errorf("GET after patches: %s", body)
	}
	if got := patch(`{"labels":null}`); len(got) != 0 || got == nil {
		t.Errorf(`after "labels": null: %v, want {}`, got)
	}
	// Plain JSON is a merge patch too.
	resp, body = c.call(http.MethodPatch, "/v1/devices/dev-1", `{"labels":{"a":"b"}}`)
	if resp.StatusCode != http.StatusOK {
		t.Errorf("PATCH as application/json: %d %s", resp.StatusCode, body)
	}

	many := map[string]string{}
	for i := range db.MaxLabels {
		many[fmt.Sprintf("k%d", i)] = "v"
	}
	manyJSON, _ := json.Marshal(map[string]any{"labels": many})
	for _, tc := range []struct {
		body, contentType string
		status            int
		slug              string
	}{
		{`{"labels":{"room":"kit chen"}}`, "", 400, "invalid-labels"},
		{`{"labels":{"-room":"x"}}`, "", 400, "invalid-labels"},
		{`{"labels":{"-room":null}}`, "", 400, "invalid-labels"},
		{`{"labels":{"n":1}}`, "", 400, "invalid-labels"},
		{`{"labels":["room"]}`, "", 400, "invalid-labels"},
		{`{"labels":"room=x"}`, "", 400, "invalid-labels"},
		{`{"labels":{"room":"` + strings.Repeat("x", 64) + `"}}`, "", 400, "invalid-labels"},
		{string(manyJSON), "", 400, "invalid-labels"}, // 64 new ones and "a": 65
		{`{"label":{}}`, "", 400, "invalid-json"},
		{`{"labels":{}`, "", 400, "invalid-json"},
		{`{"labels":{}}`, "text/plain", 415, "unsupported-media-type"},
		{`[{"op":"add","path":"/labels/a","value":"b"}]`, "application/json-patch+json", 415, "unsupported-media-type"},
	} {
		hdr := []string{"Content-Type", "application/merge-patch+json"}
		if tc.contentType != "" {
			hdr[1] = tc.contentType
		}
		resp, body := c.call(http.MethodPatch, "/v1/devices/dev-1", tc.body, hdr...)
		wantProblem(t, resp, body, tc.status, tc.slug)
		if tc.status == 415 && resp.Header.Get("Accept-Patch") != "application/merge-patch+json" {
			t.Errorf("415 with Accept-Patch %q", resp.Header.Get("Accept-Patch"))
		}
	}
	// 63 more (64 in all) fit.
	delete(many, "k0")
	manyJSON, _ = json.Marshal(map[string]any{"labels": many})
	if got := patch(string(manyJSON)); len(got) != db.MaxLabels {
		t.Errorf("%d labels, want %d", len(got), db.MaxLabels)
	}
	for _, id := range []string{"ghost", "bad%20id"} {
		resp, body := c.call(http.MethodPatch, "/v1/devices/"+id, `{"labels":{"a":"b"}}`)
		wantProblem(t, resp, body, http.StatusNotFound, "device-not-found")
	}
}

// Concurrent patches of different labels all apply: none is lost to a
// read-modify-write race.
func TestPatchDeviceLabelsConcurrently(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)
	c := newAPI(t, e.URL, sys.APIKey(t, db.ScopeAdmin, db.ScopeRead))
	sys.AddDevice(t, "dev-1")
	const n = 30 // with their temporary labels, at most 60: under MaxLabels
	// Each starts with a label that another, later one deletes.
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			patch := fmt.Sprintf(`{"labels":{"k%d":"v%d","tmp%d":"x"}}`, i, i, i)
			if code, b, err := patchLabels(t.Context(), c, "dev-1", patch); err != nil || code != http.StatusOK {
				errs <- fmt.Errorf("patch %d: %d %s %v", i, code, b, err)
				return
			}
			if code, b, err := patchLabels(t.Context(), c, "dev-1", fmt.Sprintf(`{"labels":{"tmp%d":null}}`, i)); err != nil || code != http.StatusOK {
				errs <- fmt.Errorf("delete %d: %d %s %v", i, code, b, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	resp, body := c.call(http.MethodGet, "/v1/devices/dev-1", "")
	var d listedDevice
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &d) != nil {
		t.Fatalf("GET: %d %s", resp.StatusCode, body)
	}
	want := map[string]string{}
	for i := range n {
		want[fmt.Sprintf("k%d", i)] = fmt.Sprintf("v%d", i)
	}
	if !jsonEqual(d.Labels, want) {
		t.Errorf("after %d concurrent patches: %d labels %v, want %d", n, len(d.Labels), d.Labels, n)
	}
}

// POST /v1/devices takes labels; the secret is in its answer only.
func TestProvisionWithLabels(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)
	c := newAPI(t, e.URL, sys.APIKey(t))
	resp, body := c.call(http.MethodPost, "/v1/devices", `{"id":"lab-1","labels":{"room":"kitchen"}}`)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("status %d; body %s", resp.StatusCode, body)
	}
	var created map[string]string
	if err := json.Unmarshal(body, &created); err != nil || len(created) != 2 || created["id"] != "lab-1" || created["secret"] == "" {
		t.Fatalf("answered %s, want exactly id and secret", body)
	}
	for _, path := range []string{"/v1/devices/lab-1", "/v1/devices", "/v1/devices?q=lab"} {
		resp, body := c.call(http.MethodGet, path, "")
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"labels":{"room":"kitchen"}`) {
			t.Errorf("GET %s: %d %s, want the labels", path, resp.StatusCode, body)
		}
		if strings.Contains(string(body), created["secret"]) || strings.Contains(string(body), "secret") {
			t.Errorf("GET %s shows the secret: %s", path, body)
		}
	}
	for _, bad := range []string{`{"labels":{"-x":"y"}}`, `{"labels":{"x":"a b"}}`, `{"labels":{"x":null}}`} {
		resp, body := c.call(http.MethodPost, "/v1/devices", `{"id":"lab-2",`+bad[1:])
		wantProblem(t, resp, body, http.StatusBadRequest, "invalid-labels")
	}
	if n := count(t, sys, `SELECT count(*) FROM devices WHERE id = 'lab-2'`); n != 0 {
		t.Errorf("a refused device was stored")
	}
}
