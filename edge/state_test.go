package edge_test

import (
	"context"
	"encoding/json"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/switchboard-iot/switchboard/app/sim/thermostat"
	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/db/dbtest"
	"github.com/switchboard-iot/switchboard/device"
)

// deviceState is GET /v1/devices/{id}/state's answer.
type deviceState struct {
	Desired           map[string]any `json:"desired"`
	Reported          map[string]any `json:"reported"`
	Delta             map[string]any `json:"delta"`
	DesiredVersion    int64          `json:"desired_version"`
	ReportedVersion   int64          `json:"reported_version"`
	DesiredUpdatedAt  *string        `json:"desired_updated_at"`
	ReportedUpdatedAt *string        `json:"reported_updated_at"`
}

func decodeState(t *testing.T, resp *http.Response, body []byte) deviceState {
	t.Helper()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, want 200; body %s", resp.StatusCode, body)
	}
	var st deviceState
	if err := json.Unmarshal(body, &st); err != nil {
		t.Fatalf("%s: %v", body, err)
	}
	if want := `"` + jsonInt(st.DesiredVersion) + `"`; resp.Header.Get("ETag") != want {
		t.Fatalf("ETag %q, want %s", resp.Header.Get("ETag"), want)
	}
	return st
}

func jsonInt(v int64) string { b, _ := json.Marshal(v); return string(b) }

func wantJSON(t *testing.T, what string, got map[string]any, want string) {
	t.Helper()
	var w map[string]any
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, w) {
		g, _ := json.Marshal(got)
		t.Fatalf("%s: %s, want %s", what, g, want)
	}
}

func (a *api) getState(id string) deviceState {
	a.t.Helper()
	resp, body := a.call(http.MethodGet, "/v1/devices/"+id+"/state", "")
	return decodeState(a.t, resp, body)
}

func (a *api) patchOK(id, body string, hdr ...string) deviceState {
	a.t.Helper()
	resp, b := a.patchDesired(id, body, hdr...)
	return decodeState(a.t, resp, b)
}

const mergePatch = "application/merge-patch+json"

func (a *api) patchDesired(id, body string, hdr ...string) (*http.Response, []byte) {
	a.t.Helper()
	return a.call(http.MethodPatch, "/v1/devices/"+id+"/state/desired", body, append([]string{"Content-Type", mergePatch}, hdr...)...)
}

func TestDeviceStateHTTP(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	sys.AddDevice(t, "dev-1")
	e := sys.StartEdge(t, "edge-1", nil)
	c := newAPI(t, e.URL, sys.APIKey(t))

	// No state yet: empty documents at version 0.
	st := c.getState("dev-1")
	wantJSON(t, "desired", st.Desired, `{}`)
	wantJSON(t, "delta", st.Delta, `{}`)
	if st.DesiredVersion != 0 || st.ReportedVersion != 0 || st.DesiredUpdatedAt != nil || st.ReportedUpdatedAt != nil {
		t.Fatalf("no state yet: %+v", st)
	}

	st = c.patchOK("dev-1", `{"target_celsius":21,"schedule":{"night":17,"day":21},"old":1}`)
	if st.DesiredVersion != 1 || st.DesiredUpdatedAt == nil {
		t.Fatalf("after a patch: %+v", st)
	}
	wantJSON(t, "delta", st.Delta, `{"target_celsius":21,"schedule":{"night":17,"day":21},"old":1}`)
	// Merge-patch semantics: null deletes a key, nested objects merge.
	st = c.patchOK("dev-1", `{"schedule":{"night":null,"eco":true},"old":null}`, "If-Match", `"1"`)
	wantJSON(t, "desired", st.Desired, `{"target_celsius":21,"schedule":{"day":21,"eco":true}}`)
	if st.DesiredVersion != 2 {
		t.Fatalf("version %d, want 2", st.DesiredVersion)
	}
	// A stale If-Match.
	resp, body := c.patchDesired("dev-1", `{"target_celsius":22}`, "If-Match", `"1"`)
	wantProblem(t, resp, body, http.StatusPreconditionFailed, "state-version-mismatch")
	// If-Match: * is any version.
	if st = c.patchOK("dev-1", `{"target_celsius":22}`, "If-Match", `*`); st.DesiredVersion != 3 {
		t.Fatalf("version %d, want 3", st.DesiredVersion)
	}
	got := c.getState("dev-1")
	wantJSON(t, "desired read back", got.Desired, `{"target_celsius":22,"schedule":{"day":21,"eco":true}}`)

	// Bad input.
	for _, tc := range []struct {
		body, ct, ifMatch string
		status            int
		slug              string
	}{
		{`[1]`, mergePatch, "", http.StatusBadRequest, "invalid-json"},
		{`null`, mergePatch, "", http.StatusBadRequest, "invalid-json"},
		{`"x"`, mergePatch, "", http.StatusBadRequest, "invalid-json"},
		{`{"a":`, mergePatch, "", http.StatusBadRequest, "invalid-json"},
		{`{"a":"\u0000"}`, mergePatch, "", http.StatusBadRequest, "invalid-json"},
		{`[{"op":"add"}]`, "application/json-patch+json", "", http.StatusUnsupportedMediaType, "unsupported-media-type"},
		{`{"a":1}`, mergePatch, `W/"3"`, http.StatusBadRequest, "invalid-if-match"},
		{`{"a":1}`, mergePatch, `3`, http.StatusBadRequest, "invalid-if-match"},
		{`{"big":"` + strings.Repeat("x", db.MaxStateBytes) + `"}`, mergePatch, "", http.StatusRequestEntityTooLarge, "state-too-large"},
		{`{"big":"` + strings.Repeat("x", 64<<10) + `"}`, mergePatch, "", http.StatusRequestEntityTooLarge, "request-too-large"},
	} {
		hdr := []string{"Content-Type", tc.ct}
		if tc.ifMatch != "" {
			hdr = append(hdr, "If-Match", tc.ifMatch)
		}
		resp, body := c.call(http.MethodPatch, "/v1/devices/dev-1/state/desired", tc.body, hdr...)
		wantProblem(t, resp, body, tc.status, tc.slug)
	}
	// Nothing of the refused patches was stored.
	if st = c.getState("dev-1"); st.DesiredVersion != 3 {
		t.Fatalf("after refused patches: version %d, want 3", st.DesiredVersion)
	}

	// Unknown devices.
	resp, body = c.call(http.MethodGet, "/v1/devices/nope/state", "")
	wantProblem(t, resp, body, http.StatusNotFound, "device-not-found")
	resp, body = c.patchDesired("nope", `{"a":1}`)
	wantProblem(t, resp, body, http.StatusNotFound, "device-not-found")

	// Scopes: read for GET, commands for PATCH.
	reader := newAPI(t, e.URL, sys.APIKey(t, db.ScopeRead))
	reader.getState("dev-1")
	resp, body = reader.patchDesired("dev-1", `{"a":1}`)
	wantProblem(t, resp, body, http.StatusForbidden, "insufficient-scope")
	commander := newAPI(t, e.URL, sys.APIKey(t, db.ScopeCommands))
	resp, body = commander.call(http.MethodGet, "/v1/devices/dev-1/state", "")
	wantProblem(t, resp, body, http.StatusForbidden, "insufficient-scope")
	// A key without read learns only the desired state it wrote.
	resp, body = commander.patchDesired("dev-1", `{"a":1}`)
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("PATCH with commands alone: %d %s", resp.StatusCode, body)
	}
	if _, ok := fields["reported"]; ok || fields["desired"] == nil || fields["delta"] != nil || resp.Header.Get("ETag") == "" {
		t.Fatalf("PATCH with commands alone answered %s; want desired, its version and time alone", body)
	}
}

// GET /v1/devices?delta=nonempty lists the devices whose desired state
// differs from their reported state, and pages with its own cursors.
func TestListDevicesDeltaNonEmpty(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	for _, id := range []string{"dev-1", "dev-2", "dev-3", "dev-4"} {
		sys.AddDevice(t, id)
	}
	e := sys.StartEdge(t, "edge-1", nil)
	c := newAPI(t, e.URL, sys.APIKey(t))
	c.patchOK("dev-1", `{"t":1}`) // not reported
	c.patchOK("dev-2", `{"t":2}`) // reported as desired below
	c.patchOK("dev-3", `{"t":3}`) // reported otherwise below
	if _, _, err := sys.Store.StoreReports(t.Context(), []db.Report{
		{DeviceID: "dev-2", Patch: json.RawMessage(`{"t":2.0,"extra":true}`)},
		{DeviceID: "dev-3", Patch: json.RawMessage(`{"t":4}`)},
		{DeviceID: "dev-4", Patch: json.RawMessage(`{"t":4}`)}, // nothing desired
	}); err != nil {
		t.Fatal(err)
	}
	var ids []string
	cursor := ""
	for range 3 {
		resp, body := c.call(http.MethodGet, "/v1/devices?delta=nonempty&limit=1&cursor="+cursor, "")
		var page struct {
			Devices []struct{ ID string } `json:"devices"`
			Next    string                `json:"next"`
			Total   int                   `json:"total"`
		}
		if err := json.Unmarshal(body, &page); err != nil || resp.StatusCode != http.StatusOK || page.Total != 2 {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
		for _, d := range page.Devices {
			ids = append(ids, d.ID)
		}
		if cursor = page.Next; cursor == "" {
			break
		}
	}
	if !reflect.DeepEqual(ids, []string{"dev-1", "dev-3"}) {
		t.Fatalf("delta=nonempty listed %v, want dev-1 and dev-3", ids)
	}
	resp, body := c.call(http.MethodGet, "/v1/devices?delta=empty", "")
	wantProblem(t, resp, body, http.StatusBadRequest, "invalid-query")
	// A cursor of the unfiltered listing is not this one's.
	_, body = c.call(http.MethodGet, "/v1/devices?limit=1", "")
	var first struct{ Next string }
	_ = json.Unmarshal(body, &first)
	resp, body = c.call(http.MethodGet, "/v1/devices?delta=nonempty&cursor="+first.Next, "")
	wantProblem(t, resp, body, http.StatusBadRequest, "invalid-cursor")
}

// GET /v1/devices/{id}/state as an event stream: the state now, then each
// change, woken by db.StateChannel (well before the backstop recheck);
// resumable with Last-Event-ID.
func TestStateStream(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	sys.AddDevice(t, "dev-1")
	e := sys.StartEdge(t, "edge-1", nil)
	c := newAPI(t, e.URL, sys.APIKey(t))
	_, events := c.stream(http.MethodGet, "/v1/devices/dev-1/state", "")
	want := func(events *sseReader, id string) deviceState {
		t.Helper()
		start := time.Now()
		ev := events.must(t)
		var st deviceState
		if err := json.Unmarshal([]byte(ev.Data), &st); err != nil || ev.Name != "state" || ev.ID != id {
			t.Fatalf("event %+v, want state %s", ev, id)
		}
		// Half the edge's 30 s backstop recheck (stateRecheck).
		if waited := time.Since(start); waited > 15*time.Second {
			t.Fatalf("state %s came after %v: the recheck found it, not a wake-up", id, waited)
		}
		return st
	}
	want(events, "0.0")
	c.patchOK("dev-1", `{"target_celsius":21}`)
	if st := want(events, "1.0"); st.Desired["target_celsius"] != float64(21) || st.Delta["target_celsius"] != float64(21) {
		t.Fatalf("state %+v", st)
	}
	// A report as a node stores it: stored, then announced.
	changed, _, err := sys.Store.StoreReports(t.Context(), []db.Report{{DeviceID: "dev-1", Patch: json.RawMessage(`{"target_celsius":21}`)}})
	if err != nil || len(changed) != 1 {
		t.Fatalf("StoreReports: changed %v, %v", changed, err)
	}
	if err := sys.Store.Notify(t.Context(), []db.Notice{{Reported: "dev-1"}}); err != nil {
		t.Fatal(err)
	}
	if st := want(events, "1.1"); len(st.Delta) != 0 {
		t.Fatalf("delta %v after the report, want none", st.Delta)
	}
	// Resumed at the state it has: nothing until the next change.
	_, resumed := c.stream(http.MethodGet, "/v1/devices/dev-1/state", "", "Last-Event-ID", "1.1")
	c.patchOK("dev-1", `{"mode":"heat"}`)
	want(resumed, "2.1")
	want(events, "2.1")
	resp, body := c.call(http.MethodGet, "/v1/devices/dev-1/state", "", "Accept", "text/event-stream", "Last-Event-ID", "1")
	wantProblem(t, resp, body, http.StatusBadRequest, "invalid-last-event-id")
	resp, body = c.call(http.MethodGet, "/v1/devices/nope/state", "", "Accept", "text/event-stream")
	wantProblem(t, resp, body, http.StatusNotFound, "device-not-found")
}

// Two PATCHes naming the same version at once: one 200, one 412.
func TestPatchDesiredConcurrentHTTP(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	sys.AddDevice(t, "dev-1")
	e := sys.StartEdge(t, "edge-1", nil)
	c := newAPI(t, e.URL, sys.APIKey(t))
	c.patchOK("dev-1", `{"n":0}`)
	var wg sync.WaitGroup
	statuses := make([]int, 2)
	for i := range 2 {
		wg.Go(func() {
			resp, _ := c.patchDesired("dev-1", `{"n":`+jsonInt(int64(i+1))+`}`, "If-Match", `"1"`)
			statuses[i] = resp.StatusCode
		})
	}
	wg.Wait()
	if !(statuses[0] == 200 && statuses[1] == 412 || statuses[0] == 412 && statuses[1] == 200) {
		t.Fatalf("statuses %v, want one 200 and one 412", statuses)
	}
	if st := c.getState("dev-1"); st.DesiredVersion != 2 {
		t.Fatalf("version %d, want 2", st.DesiredVersion)
	}
}

// The whole path with real processes: a client PATCHes desired at the
// edge; the node sends it to a simulated thermostat (the Go SDK), which
// applies the target and reports; the edge then shows an empty delta.
func TestDesiredStateReachesThermostat(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", nil)
	e := sys.StartEdge(t, "edge-1", nil)
	c := newAPI(t, e.URL, sys.APIKey(t))
	devSecret := sys.AddDevice(t, "thermo-1")
	// Set while the device is offline: it gets the latest on connect.
	c.patchOK("thermo-1", `{"target_celsius":18}`)
	c.patchOK("thermo-1", `{"target_celsius":23,"mode":"cool"}`)

	_, events := c.stream(http.MethodGet, "/v1/devices/thermo-1/state", "")
	th := thermostat.New(device.Config{URL: node.URL, ID: "thermo-1", Secret: devSecret, TLS: node.TLS(), Log: dbtest.Logger(),
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = th.Run(ctx, 0) }()
	t.Cleanup(func() { cancel(); <-done })

	applied := func(target float64, mode string) func() bool {
		return func() bool {
			st := c.getState("thermo-1")
			return st.Reported["target_celsius"] == target && st.Reported["mode"] == mode && len(st.Delta) == 0
		}
	}
	// The stream follows the report the node stored (its wake-up on
	// db.StateChannel): read until the delta is empty.
	for i := 0; ; i++ {
		ev := events.must(t)
		var st deviceState
		if err := json.Unmarshal([]byte(ev.Data), &st); err != nil {
			t.Fatal(err)
		}
		if st.ReportedVersion > 0 && len(st.Delta) == 0 {
			break
		}
		if i == 20 {
			t.Fatalf("the stream's state %+v after %d events, want the report applied", st, i)
		}
	}
	testsys.Eventually(t, "the thermostat to report the desired target", applied(23, "cool"))
	if st := c.getState("thermo-1"); st.ReportedVersion < 1 || st.Reported["celsius"] == nil {
		t.Fatalf("reported %v at version %d", st.Reported, st.ReportedVersion)
	}
	// A change while it is connected.
	c.patchOK("thermo-1", `{"target_celsius":25}`)
	testsys.Eventually(t, "the thermostat to report the new target", applied(25, "cool"))
	// A value it cannot apply stays in the delta.
	c.patchOK("thermo-1", `{"target_celsius":99}`)
	testsys.Eventually(t, "the delta to show the target not applied", func() bool {
		st := c.getState("thermo-1")
		return st.Delta["target_celsius"] == float64(99) && st.Reported["target_celsius"] == float64(25)
	})
}
