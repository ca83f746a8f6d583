package e2e

// The web console in a real browser: headless Chromium (scripts/test
// installs it and sets CHROMIUM_BIN) drives the edge's console as an
// operator would, against the whole system on one PostgreSQL: an edge, two
// connection nodes and SDK devices that answer commands and send events.
// Each step leaves a screenshot in the folder the test logs, kept after
// the test for a human to look at.

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/console"
	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/device"
	"github.com/switchboard-iot/switchboard/internal/secret"
	"github.com/switchboard-iot/switchboard/internal/testkit/browsertest"
)

var jobPath = regexp.MustCompile(`^/jobs/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// thermostat answers get_state with a fixed reading and remembers the args
// of each call, so the test sees what the console sent.
type thermostat struct {
	mu   sync.Mutex
	args []string
}

func (th *thermostat) handlers() map[string]device.HandlerFunc {
	return map[string]device.HandlerFunc{
		"get_state": func(_ context.Context, args json.RawMessage) (any, error) {
			th.mu.Lock()
			defer th.mu.Unlock()
			th.args = append(th.args, string(args))
			return map[string]any{"celsius": 21}, nil
		},
	}
}

func (th *thermostat) calls() []string {
	th.mu.Lock()
	defer th.mu.Unlock()
	return append([]string(nil), th.args...)
}

// TestConsoleInBrowser is not parallel: a browser beside the race detector
// and the other tests of this package on two cores would make its bounded
// waits a matter of luck.
func TestConsoleInBrowser(t *testing.T) {
	sys := testsys.New(t)
	ctx := context.Background()
	key := secret.New("sbk_")
	apiKey, err := sys.Store.AddAPIKey(ctx, db.NewAPIKey{Name: "operator", KeyHash: secret.Hash(key)})
	if err != nil {
		t.Fatal(err)
	}
	ed := sys.StartEdge(t, "edge-a", nil)
	nodes := []*testsys.Node{sys.StartNode(t, "node-a", nil), sys.StartNode(t, "node-b", nil)}

	// Four thermostats, alternating between the nodes.
	const fleet = 4
	var ids []string
	devices := map[string]*testsys.Device{}
	thermostats := map[string]*thermostat{}
	for i := range fleet {
		id := fmt.Sprintf("thermo-%d", i+1)
		thermostats[id] = &thermostat{}
		devices[id] = testsys.StartDevice(t, nodes[i%2], id, sys.AddDevice(t, id), thermostats[id].handlers())
		ids = append(ids, id)
	}
	testsys.Eventually(t, "presence of the fleet", func() bool { return len(livePresence(t, sys)) == fleet })

	b := browsertest.Start(t)
	at := func(what, want string) {
		t.Helper()
		if got := b.Path(); got != want {
			t.Fatalf("%s: at %s, want %s", what, got, want)
		}
	}
	signedOut := func(what string) {
		t.Helper()
		if got := b.Path(); !strings.HasPrefix(got, "/sign-in") {
			t.Fatalf("%s: at %s, want the sign-in page", what, got)
		}
		b.Need(what, "#key")
	}

	// a. Signed out, the console sends the browser to sign in; the API
	// key signs in.
	b.Navigate(ed.URL + "/")
	signedOut("opening the console")
	b.Need("the sign-in form", "#sign-in")
	b.Screenshot("sign-in")
	b.Type("#key", "sbk_not-a-key")
	b.ClickAndLoad("#sign-in")
	signedOut("after a wrong key")
	b.WaitFor("the wrong key's error", "#error", `el.textContent.trim() !== ""`)
	b.Screenshot("sign-in-wrong-key")
	b.Type("#key", key)
	b.ClickAndLoad("#sign-in")
	at("after signing in", "/")

	// b. The overview counts the fleet online and shows both nodes.
	b.WaitFor("the overview's online count", "#online-count", fmt.Sprintf(`el.textContent.trim() === "%d"`, fleet))
	b.WaitFor("the overview's offline count", "#offline-count", `el.textContent.trim() === "0"`)
	for _, n := range nodes {
		b.WaitFor("the overview's row of "+n.ID, fmt.Sprintf(`#nodes tr[data-node="%s"]`, n.ID), "")
	}
	b.WaitFor("the overview's region", `#regions tr[data-region="test"]`, "")
	for _, sel := range []string{"#jobs-running", "#chart-rate", "#chart-latency", "#sign-out", `a[href="/"]`, `a[href="/devices"]`, `a[href="/jobs"]`} {
		b.Need("the overview", sel)
	}
	noBanner(t, b, "the overview")
	b.Screenshot("overview")

	// c. The devices list shows each device online; the search narrows it.
	b.Navigate(ed.URL + "/devices")
	for _, id := range ids {
		b.WaitFor("the list's row of "+id, fmt.Sprintf(`#devices tr[data-device="%s"] td.status`, id), `el.textContent.trim() === "online"`)
	}
	b.WaitFor("the list's total", "#total", fmt.Sprintf(`el.textContent.trim() === "%d"`, fleet))
	for _, name := range []string{"q", "online", "region", "label"} {
		b.Need("the devices' filter", fmt.Sprintf(`form#filter [name="%s"]`, name))
	}
	b.Screenshot("devices")
	b.Type(`#filter [name="q"]`, "thermo-3")
	b.Do("submitting the filter", chromedp.Submit(chromedp.CSS(`#filter [name="q"]`)))
	b.WaitUntil("the search for thermo-3", "#devices", `document.querySelectorAll("#devices tr[data-device]").length === 1 && document.querySelector('#devices tr[data-device="thermo-3"]') !== null`)
	b.Screenshot("devices-search")

	// d. The command console on a device's page: a command and its reply,
	// live; bad JSON is caught before anything is sent.
	dev := ids[0]
	b.Navigate(ed.URL + "/devices/" + dev)
	for _, sel := range []string{"#presence", "#sessions", "#labels", "#events", "#commands", "form#command"} {
		b.Need("the device page", sel)
	}
	b.Type("#command-name", "get_state")
	b.Type("#command-args", `{"verbose":true}`)
	b.Click("#send")
	b.WaitFor("the command's accepted step", `#command-steps li[data-step="accepted"]`, "")
	b.WaitFor("the command's reply step", `#command-steps li[data-step="reply"]`, "")
	b.WaitFor("the command's result", "pre#command-result", `el.textContent.includes('"celsius": 21')`)
	b.WaitFor("the command's status", "#command-status", `el.textContent.includes("done")`)
	if got := thermostats[dev].calls(); len(got) != 1 || got[0] != `{"verbose":true}` {
		t.Errorf("%s got get_state with %q, want one call with {\"verbose\":true}", dev, got)
	}
	b.Screenshot("device-command-reply")

	b.Type("#command-args", `{"verbose":`)
	b.Click("#send")
	b.WaitFor("the args' error", "#args-error", `el.textContent.trim() !== "" && el.offsetParent !== null`)
	b.Screenshot("device-args-error")

	// e. An event the device sends appears on its page as it happens.
	// The page is opened afresh, and the event sent once its stream is
	// connected: sent earlier, it would be in the page as rendered.
	b.EventSourceOpened("opening "+dev+"'s page", chromedp.Navigate(ed.URL+"/devices/"+dev))
	var cmdID string
	if err := sys.Pool.QueryRow(ctx, `SELECT id::text FROM commands WHERE device_id = $1`, dev).Scan(&cmdID); err != nil {
		// More than one row: the bad JSON above was sent after all.
		t.Fatalf("the commands sent to %s: %v", dev, err)
	}
	b.Need("the device's recent commands", fmt.Sprintf(`#commands tr[data-command="%s"]`, cmdID))
	if err := devices[dev].Event(ctx, "telemetry", map[string]any{"celsius": 22.5}); err != nil {
		t.Fatal(err)
	}
	b.WaitUntil("the live event", "#events li[data-event-id]",
		`[...document.querySelectorAll("#events li[data-event-id]")].some(li => li.textContent.includes("22.5"))`)
	b.Screenshot("device-event-arrived")
	// An event of a name the device never sent before reaches the open
	// page too (an EventSource hands named events only to listeners of
	// their name, so the console must learn the new name).
	if err := devices[dev].Event(ctx, "door_opened", map[string]any{"door": "front-7"}); err != nil {
		t.Fatal(err)
	}
	b.WaitUntil("the live event of a new name", "#events li[data-event-id]",
		`[...document.querySelectorAll("#events li[data-event-id]")].some(li => li.textContent.includes("front-7"))`)
	b.Screenshot("device-new-event-name")
	if got := thermostats[dev].calls(); len(got) != 1 {
		t.Errorf("%s got %d commands, want 1: the bad JSON was sent", dev, len(got))
	}

	// The phone's views: the overview and the device page, whose latest
	// values now hold the event.
	b.Navigate(ed.URL + "/devices/" + dev)
	b.WaitFor("the device's latest telemetry", `#latest tr[data-event="telemetry"]`, `el.textContent.includes("22.5")`)
	b.PhoneScreenshot("device-phone")
	b.Navigate(ed.URL + "/")
	b.WaitFor("the overview's online count", "#online-count", fmt.Sprintf(`el.textContent.trim() === "%d"`, fleet))
	b.PhoneScreenshot("overview-phone")

	// f. A job to the whole fleet, watched to its end.
	b.Navigate(ed.URL + "/jobs")
	b.Need("the jobs page", "form#new-job")
	b.Select("#target-kind", "all")
	b.Type("#job-name", "get_state")
	b.Type("#job-rate", "50")
	b.Screenshot("job-form")
	b.ClickAndLoad("#start-job")
	jobURL := b.Path()
	if !jobPath.MatchString(jobURL) {
		b.Screenshot("job-not-started")
		t.Fatalf("after starting a job: at %s, want /jobs/<uuid> (#job-error: %s)", jobURL, jobErrorText(b))
	}
	b.Need("the job page", "progress#job-progress")
	b.WaitFor("the job's status", "#job-status", `el.textContent.trim() === "done"`)
	b.WaitFor("the job's done count", `td[data-count="done"]`, fmt.Sprintf(`el.textContent.trim() === "%d"`, fleet))
	b.WaitFor("the job's progress bar", "progress#job-progress", `el.value > 0 && el.value === el.max`)
	b.Screenshot("job-done")
	for _, id := range ids {
		if want := map[bool]int{true: 2, false: 1}[id == dev]; len(thermostats[id].calls()) != want {
			t.Errorf("%s got %d commands, want %d", id, len(thermostats[id].calls()), want)
		}
	}
	b.Navigate(ed.URL + "/jobs")
	b.WaitFor("the job in the list", fmt.Sprintf(`#jobs tr[data-job="%s"]`, strings.TrimPrefix(jobURL, "/jobs/")), "")

	// A job that cannot finish (its one device is offline) is cancelled
	// from its page.
	if _, err := sys.Store.AddDevices(ctx, []db.Credential{{ID: "attic-1", SecretHash: secret.Hash(secret.New("")), Labels: map[string]string{"room": "attic"}}}); err != nil {
		t.Fatal(err)
	}
	b.Navigate(ed.URL + "/jobs")
	b.Select("#target-kind", "label")
	b.Type("#target-value", "room=attic")
	b.Type("#job-name", "get_state")
	b.ClickAndLoad("#start-job")
	if got := b.Path(); !jobPath.MatchString(got) || got == jobURL {
		t.Fatalf("after starting a job by label: at %s, want a new /jobs/<uuid> (#job-error: %s)", got, jobErrorText(b))
	}
	b.WaitFor("the label job's status", "#job-status", `el.textContent.trim() === "running"`)
	b.WaitFor("the cancel button", "#cancel-job", `!el.hidden && !el.disabled`)
	b.Click("#cancel-job")
	b.WaitFor("the cancelled job's status", "#job-status", `el.textContent.trim() === "cancelled"`)
	b.WaitFor("the cancel button, gone", "#cancel-job", `el.hidden`)
	b.Screenshot("job-cancelled")

	// g. Signing out ends the session: the console refuses it after.
	b.ClickAndLoad("#sign-out")
	signedOut("after signing out")
	b.Screenshot("signed-out")
	b.Navigate(ed.URL + "/devices")
	signedOut("opening the devices after signing out")

	// A one-time sign-in link signs in once; its second use is refused.
	link, err := console.NewSignInLink(ctx, sys.Store, apiKey.ID)
	if err != nil {
		t.Fatal(err)
	}
	b.Navigate(ed.URL + link)
	if got := b.Path(); strings.HasPrefix(got, "/sign-in") {
		t.Fatalf("the one-time link left the browser at %s (#error: %s)", got, b.Text("#error"))
	}
	b.Navigate(ed.URL + "/devices")
	at("opening the devices after signing in by link", "/devices")

	// The overview once commands have run: its charts have data. This
	// viewport-size picture is the README's (docs/console.png).
	b.Navigate(ed.URL + "/")
	b.WaitFor("the commands-per-second chart", "#chart-rate", `!el.textContent.includes("Loading")`)
	b.WaitFor("the round-trip chart", "#chart-latency", `!el.textContent.includes("Loading")`)
	noBanner(t, b, "the overview after the job")
	b.Screenshot("overview-after-job")
	b.ViewportScreenshot(filepath.Join(b.Artifacts, "overview-1280x800.png"))
	b.ClickAndLoad("#sign-out")
	signedOut("after signing out again")
	b.Navigate(ed.URL + link)
	b.WaitFor("the used link's error", "#error", `el.textContent.trim() !== ""`)
	b.Screenshot("link-used-twice")
	b.Navigate(ed.URL + "/devices")
	signedOut("opening the devices with a used link")

	var errs []string
	for _, e := range b.PageErrors() {
		// The wrong key's and the used link's pages say why they are
		// refused, with a 401 that Chromium logs as a failed load: the
		// answers the test asked for.
		if !strings.Contains(e, " 401 ") || !(strings.HasSuffix(e, ed.URL+"/sign-in") || strings.HasSuffix(e, ed.URL+link)) {
			errs = append(errs, e)
		}
	}
	if len(errs) > 0 {
		t.Errorf("the console's pages logged errors:\n%s", strings.Join(errs, "\n"))
	}
	t.Logf("screenshots: %s", b.Artifacts)
}

// TestConsoleEmptyInBrowser: a fleet with no device says how to add one,
// and a fleet of more than a page pages. Not parallel, as
// TestConsoleInBrowser.
func TestConsoleEmptyInBrowser(t *testing.T) {
	sys := testsys.New(t)
	key := sys.APIKey(t)
	ed := sys.StartEdge(t, "edge-a", nil)
	b := browsertest.Start(t)

	b.Navigate(ed.URL + "/sign-in")
	b.Type("#key", key)
	b.ClickAndLoad("#sign-in")
	b.WaitFor("the overview's empty state", "#empty-devices", `el.offsetParent !== null && el.textContent.includes("switchboard devices add")`)
	b.WaitFor("the overview's online count", "#online-count", `el.textContent.trim() === "0"`)
	b.Screenshot("overview-empty")
	b.Navigate(ed.URL + "/devices")
	b.WaitFor("the devices' empty state", "#empty-devices", `el.offsetParent !== null && el.textContent.includes("switchboard devices add")`)
	b.Screenshot("devices-empty")

	// 60 devices, none connected: more than one page of the list.
	var creds []db.Credential
	for i := range 60 {
		creds = append(creds, db.Credential{ID: fmt.Sprintf("meter-%02d", i), SecretHash: secret.Hash(secret.New(""))})
	}
	if _, err := sys.Store.AddDevices(context.Background(), creds); err != nil {
		t.Fatal(err)
	}
	b.Navigate(ed.URL + "/devices")
	b.WaitFor("the list's total", "#total", `el.textContent.trim() === "60"`)
	first := b.Count(`#devices tr[data-device]`)
	if first == 0 || first >= 60 {
		t.Fatalf("the first page has %d devices, want a page of fewer than 60", first)
	}
	b.WaitFor("an offline device's status", `#devices tr[data-device="meter-00"] td.status`, `el.textContent.trim() === "offline"`)
	b.ClickAndLoad("a#next")
	b.Need("the second page", `#devices tr[data-device="meter-59"]`)
	if b.Count(`#devices tr[data-device="meter-00"]`) != 0 {
		t.Errorf("the second page repeats the first's meter-00")
	}
	b.Screenshot("devices-page-2")
	b.Navigate(ed.URL + "/")
	b.WaitUntil("the overview's empty state, gone", "#empty-devices",
		`(() => { const el = document.querySelector("#empty-devices"); return !el || el.offsetParent === null; })()`)
	b.WaitFor("the overview's offline count", "#offline-count", `el.textContent.trim() === "60"`)
}

// noBanner checks that the page does not say the database is unreachable:
// in this test it always is reachable.
func noBanner(t *testing.T, b *browsertest.Browser, where string) {
	t.Helper()
	var shown string
	b.Eval(`(() => {
		const el = document.querySelector("#banner-db");
		return el && !el.hidden && el.offsetParent !== null ? el.textContent.trim() : "";
	})()`, &shown)
	if shown != "" {
		t.Errorf("%s shows #banner-db with the database up: %q", where, shown)
	}
}

// jobErrorText is #job-error's text, or why there is none.
func jobErrorText(b *browsertest.Browser) string {
	var s string
	b.Eval(`(document.querySelector("#job-error") || {textContent: "(no #job-error)"}).textContent.trim()`, &s)
	return s
}
