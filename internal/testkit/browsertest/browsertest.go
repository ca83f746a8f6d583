// Package browsertest drives a real headless Chromium from tests, through
// the DevTools protocol (chromedp), so the web console is tested as an
// operator's browser sees it: its HTML, its JavaScript and its live streams.
//
// scripts/test installs Chromium when it is missing and sets CHROMIUM_BIN;
// a plain "go test" finds chromium on PATH, and skips only when there is
// none. Each test gets its own browser (its own profile, so no cookie leaks
// between tests), killed when the test ends, and a folder of screenshots
// that outlives the test for a human to look at.
package browsertest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// Timeout bounds every wait for the page: generous, since the browser, the
// system under test and the race detector share two cores with the other
// packages' tests.
const Timeout = 20 * time.Second

// Desktop is the viewport of the browser: a laptop's.
const (
	DesktopWidth  = 1280
	DesktopHeight = 800
)

// Phone is the viewport of the phone-size screenshots (an iPhone 12-15's
// CSS pixels).
const (
	PhoneWidth  = 390
	PhoneHeight = 844
)

// Binary is the Chromium to run: $CHROMIUM_BIN, else the first of
// chromium, chromium-browser and google-chrome on PATH; "" when none.
func Binary() string {
	if bin := os.Getenv("CHROMIUM_BIN"); bin != "" {
		return bin
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if bin, err := exec.LookPath(name); err == nil {
			return bin
		}
	}
	return ""
}

// Browser is one test's headless Chromium, with one tab.
type Browser struct {
	t   testing.TB
	ctx context.Context // the tab's; ends when the test does
	// Artifacts is the folder the screenshots go to. It is not removed at
	// the end of the test.
	Artifacts string

	mu    sync.Mutex
	shots int
	errs  []string // uncaught exceptions and console errors of the pages
}

// Start runs a headless Chromium for t. It skips t when there is no
// Chromium at all (CHROMIUM_BIN unset and none on PATH); a CHROMIUM_BIN
// that does not run fails t.
func Start(t testing.TB) *Browser {
	t.Helper()
	bin := Binary()
	if bin == "" {
		t.Skip("no Chromium: set CHROMIUM_BIN or put chromium on PATH (scripts/test installs Debian's chromium package)")
	}
	b := &Browser{t: t, Artifacts: artifactsDir(t)}
	t.Logf("screenshots of %s: %s", t.Name(), b.Artifacts)

	out, err := os.Create(filepath.Join(b.Artifacts, "chromium.log"))
	if err != nil {
		t.Fatal(err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(bin),
		chromedp.DisableGPU,
		chromedp.WindowSize(DesktopWidth, DesktopHeight),
		// Chromium's output goes to a file beside the screenshots: a
		// crash is explained there, and the test's log stays readable.
		chromedp.CombinedOutput(out),
	)
	if os.Geteuid() == 0 {
		// Chromium refuses to start its sandbox as root (CI and the
		// sessions here run as root); the pages are our own.
		opts = append(opts, chromedp.NoSandbox)
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(allocCtx)
	var wg sync.WaitGroup // the goroutines reading the page's errors
	// Cancelling the allocator kills Chromium and waits for it, and
	// removes its profile folder; the readers end with the tab's context.
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc()
		wg.Wait()
		out.Close()
	})
	b.ctx = ctx

	// Subscribe before the first page, so no error of a page is missed.
	exceptions := chromedp.Events(ctx, runtime.ExceptionThrown)
	console := chromedp.Events(ctx, runtime.ConsoleAPICalled)
	// The browser's own messages: a file that failed to load, a script
	// or style the Content-Security-Policy refused.
	entries := chromedp.Events(ctx, cdplog.EntryAdded)
	// Start the browser (the first Run) with a context that has no
	// deadline: the first Run's context is the browser's life.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting Chromium %s: %v (see %s)", bin, err, out.Name())
	}
	b.Do("setting the desktop viewport", desktop())
	wg.Go(func() {
		for ev, err := range exceptions {
			if err != nil {
				return
			}
			b.noteError("uncaught exception: " + exceptionText(ev))
		}
	})
	wg.Go(func() {
		for ev, err := range console {
			if err != nil {
				return
			}
			if ev.Type == runtime.ConsoleAPICalledTypeError {
				var parts []string
				for _, a := range ev.Args {
					if a.Value != nil {
						parts = append(parts, string(a.Value))
					} else if a.Description != "" {
						parts = append(parts, a.Description)
					}
				}
				b.noteError("console.error: " + strings.Join(parts, " "))
			}
		}
	})
	wg.Go(func() {
		for ev, err := range entries {
			if err != nil {
				return
			}
			// Chromium asks for /favicon.ico by itself; a site
			// without one is not broken.
			if ev.Entry != nil && ev.Entry.Level == cdplog.EntryLevelError && !strings.HasSuffix(ev.Entry.URL, "/favicon.ico") {
				b.noteError(fmt.Sprintf("%s: %s %s", ev.Entry.Source, ev.Entry.Text, ev.Entry.URL))
			}
		}
	})
	// Cleanups run last-registered first: this one takes a picture of a
	// failed test's page and reports the pages' errors while the browser
	// still runs; the one above stops it.
	t.Cleanup(func() {
		if t.Failed() {
			b.screenshot("failed", 0, 0)
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, e := range b.errs {
			t.Logf("page error: %s", e)
		}
	})
	return b
}

func (b *Browser) noteError(s string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.errs) < 50 {
		b.errs = append(b.errs, s)
	}
}

// PageErrors returns the uncaught exceptions and console errors seen so far.
func (b *Browser) PageErrors() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.errs...)
}

func exceptionText(ev runtime.EventExceptionThrown) string {
	d := ev.ExceptionDetails
	if d == nil {
		return "(no details)"
	}
	if d.Exception != nil && d.Exception.Description != "" {
		return d.Exception.Description
	}
	return fmt.Sprintf("%s (%s:%d)", d.Text, d.URL, d.LineNumber)
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// artifactsDir is a folder under the system's temporary folder named for
// the test, emptied first: the screenshots of the last run only. It stays
// after the test, unlike t.TempDir(), so a human can look at them.
func artifactsDir(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(os.TempDir(), "switchboard-browser", unsafeName.ReplaceAllString(t.Name(), "_"))
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Context is the tab's context, for chromedp actions of the test's own.
// Bound each one: see Do.
func (b *Browser) Context() context.Context { return b.ctx }

// Do runs actions on the tab, failing the test after Timeout.
func (b *Browser) Do(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, Timeout)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.t.Fatalf("%s (at %s): %v", what, b.URL(), err)
	}
}

// Eval evaluates a JavaScript expression on the page and decodes its value
// into v (nil: ignore it).
func (b *Browser) Eval(expr string, v any) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, Timeout)
	defer cancel()
	raw, err := chromedp.Run(ctx, chromedp.Evaluate[[]byte](expr))
	if err != nil {
		b.t.Fatalf("evaluating %s (at %s): %v", expr, b.URL(), err)
	}
	if v != nil {
		if err := json.Unmarshal(raw, v); err != nil {
			b.t.Fatalf("evaluating %s: %s: %v", expr, raw, err)
		}
	}
}

// URL is the page's address ("" if the tab does not answer).
func (b *Browser) URL() string {
	ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
	defer cancel()
	u, err := chromedp.Run(ctx, chromedp.Location())
	if err != nil {
		return ""
	}
	return u
}

// Path is the page's path (and query).
func (b *Browser) Path() string {
	b.t.Helper()
	var p string
	b.Eval(`location.pathname + location.search`, &p)
	return p
}

// Navigate opens url and waits for its load event.
func (b *Browser) Navigate(url string) {
	b.t.Helper()
	b.Do("opening "+url, chromedp.Navigate(url))
}

// Navigating runs action, which should make the page go elsewhere (submit
// a form, follow a link), and waits until the new page has loaded.
func (b *Browser) Navigating(what string, action chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, Timeout)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.WaitEvent(page.LoadEventFired, nil, action)); err != nil {
		b.t.Fatalf("%s: no new page loaded (still at %s): %v", what, b.URL(), err)
	}
}

// EventSourceOpened runs action (such as opening a page) and waits until
// the page has an EventSource whose response headers have arrived, i.e.
// its stream is connected: what the page learns from then on reaches it.
func (b *Browser) EventSourceOpened(what string, action chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, Timeout)
	defer cancel()
	isStream := func(ev network.EventResponseReceived) bool {
		return ev.Type == network.ResourceTypeEventSource
	}
	if _, err := chromedp.Run(ctx, chromedp.WaitEvent(network.ResponseReceived, isStream, action)); err != nil {
		b.t.Fatalf("%s: the page opened no EventSource within %v, so it cannot update live (at %s): %v", what, Timeout, b.URL(), err)
	}
}

// jsString quotes s for JavaScript.
func jsString(s string) string {
	q, _ := json.Marshal(s)
	return string(q)
}

// WaitFor waits until the page has an element matching sel for which the
// JavaScript expression cond, over that element as el, is true (cond ""
// only asks for the element). It fails the test after Timeout, naming the
// element when the page has none: a missing element and a wrong value are
// different bugs.
func (b *Browser) WaitFor(what, sel, cond string) {
	b.t.Helper()
	if cond == "" {
		cond = "true"
	}
	b.WaitUntil(what, sel, fmt.Sprintf(`(() => { const el = document.querySelector(%s); return !!el && !!(%s); })()`, jsString(sel), cond))
}

// WaitUntil waits until the JavaScript expression expr is true on the
// page, through any navigations meanwhile (a form that reloads the page
// and one that updates it in place are both waited for). sel names the
// element it is about, for the message when it fails after Timeout.
func (b *Browser) WaitUntil(what, sel, expr string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, Timeout)
	defer cancel()
	var err error
	// Retries are paced, so an expression that cannot run (a bug in
	// the test) does not spin until the deadline.
	retry := time.NewTicker(100 * time.Millisecond)
	defer retry.Stop()
	for ctx.Err() == nil {
		_, err = chromedp.Run(ctx, chromedp.Poll[chromedp.Void](expr,
			// An interval, not animation frames: background or
			// headless pages may throttle those.
			chromedp.WithPollingInterval(50*time.Millisecond),
			chromedp.WithPollingTimeout(0))) // the context bounds it
		if err == nil {
			return
		}
		// A navigation ends a poll (its page is gone): poll the next
		// page, once it is there.
		_, _ = chromedp.Run(ctx, chromedp.WaitReady(chromedp.CSS("body")))
		select {
		case <-retry.C:
		case <-ctx.Done():
		}
	}
	var state struct {
		Found bool   `json:"found"`
		Text  string `json:"text"`
	}
	b.Eval(fmt.Sprintf(`(() => {
		const el = document.querySelector(%s);
		if (!el) return {found: false, text: ""};
		const v = ["INPUT", "SELECT", "TEXTAREA", "PROGRESS"].includes(el.tagName) ? String(el.value) : el.textContent;
		return {found: true, text: v.trim().slice(0, 300)};
	})()`, jsString(sel)), &state)
	if !state.Found {
		b.t.Fatalf("%s: the page %s has no element %s (the console's contract names it)", what, b.URL(), sel)
	}
	b.t.Fatalf("%s: %s on %s is %q, still not as expected after %v (%s): %v", what, sel, b.URL(), state.Text, Timeout, expr, err)
}

// Need fails the test at once, naming sel, when the page has no element
// matching it: for pages that are fully rendered by the server.
func (b *Browser) Need(what, sel string) {
	b.t.Helper()
	var found bool
	b.Eval(fmt.Sprintf(`document.querySelector(%s) !== null`, jsString(sel)), &found)
	if !found {
		b.t.Fatalf("%s: the page %s has no element %s (the console's contract names it)", what, b.URL(), sel)
	}
}

// Text is the trimmed text of the first element matching sel; the test
// fails, naming sel, when there is none.
func (b *Browser) Text(sel string) string {
	b.t.Helper()
	b.Need("reading "+sel, sel)
	var s string
	b.Eval(fmt.Sprintf(`document.querySelector(%s).textContent.trim()`, jsString(sel)), &s)
	return s
}

// Count is the number of elements matching sel.
func (b *Browser) Count(sel string) int {
	b.t.Helper()
	var n int
	b.Eval(fmt.Sprintf(`document.querySelectorAll(%s).length`, jsString(sel)), &n)
	return n
}

// Type replaces the value of the field sel with s, typed key by key as a
// person would (so the page's input handlers run).
func (b *Browser) Type(sel, s string) {
	b.t.Helper()
	b.Need("typing into "+sel, sel)
	// Emptied by script: chromedp's SetValue cannot set "" (it reads
	// an empty result as a failure).
	b.Eval(fmt.Sprintf(`document.querySelector(%s).value = ""`, jsString(sel)), nil)
	b.Do("typing into "+sel, chromedp.SendKeys(chromedp.CSS(sel), s))
}

// Select chooses value in the select element sel, and tells the page, as
// a person's choice would (SetValue alone fires no change event).
func (b *Browser) Select(sel, value string) {
	b.t.Helper()
	b.Need("choosing in "+sel, sel)
	var ok bool
	b.Eval(fmt.Sprintf(`(() => {
		const el = document.querySelector(%s);
		if (![...el.options].some(o => o.value === %s)) return false;
		el.value = %s;
		el.dispatchEvent(new Event("input", {bubbles: true}));
		el.dispatchEvent(new Event("change", {bubbles: true}));
		return true;
	})()`, jsString(sel), jsString(value), jsString(value)), &ok)
	if !ok {
		b.t.Fatalf("choosing in %s: it has no option %q", sel, value)
	}
}

// Click clicks the element sel (which must be there) with the mouse.
func (b *Browser) Click(sel string) {
	b.t.Helper()
	b.Need("clicking "+sel, sel)
	b.Do("clicking "+sel, chromedp.Click(chromedp.CSS(sel)))
}

// ClickAndLoad clicks sel and waits for the page it leads to.
func (b *Browser) ClickAndLoad(sel string) {
	b.t.Helper()
	b.Need("clicking "+sel, sel)
	b.Navigating("clicking "+sel, chromedp.Click(chromedp.CSS(sel)))
}

// Screenshot saves a full-page PNG of the page, at the desktop size, as
// <Artifacts>/<NN-name>.png, NN counting the test's screenshots in order.
func (b *Browser) Screenshot(name string) string {
	b.t.Helper()
	path, err := b.screenshot(name, 0, 0)
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	return path
}

// PhoneScreenshot saves a full-page PNG of the page as a phone shows it
// (PhoneWidth×PhoneHeight, a mobile viewport), then puts the desktop
// viewport back.
func (b *Browser) PhoneScreenshot(name string) string {
	b.t.Helper()
	path, err := b.screenshot(name, PhoneWidth, PhoneHeight)
	if err != nil {
		b.t.Fatalf("phone screenshot %s: %v", name, err)
	}
	return path
}

// ViewportScreenshot saves a PNG of what the desktop window shows (not the
// whole page) at path: a picture of a fixed size, for the docs.
func (b *Browser) ViewportScreenshot(path string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, Timeout)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		b.t.Fatalf("screenshot for %s: %v", path, err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

// desktop sets the viewport, the page's own area, to the desktop size:
// the window size would leave room for a browser's toolbars, even
// headless, and chromedp's EmulateReset after a phone's viewport leaves
// the page phone-wide.
func desktop() chromedp.Action[chromedp.Void] {
	return chromedp.EmulateViewport(DesktopWidth, DesktopHeight, chromedp.EmulateScale(1))
}

// screenshot takes a full-page PNG, in a width×height mobile viewport when
// width > 0.
func (b *Browser) screenshot(name string, width, height int64) (string, error) {
	b.mu.Lock()
	b.shots++
	n := b.shots
	b.mu.Unlock()
	ctx, cancel := context.WithTimeout(b.ctx, Timeout)
	defer cancel()
	if width > 0 {
		if err := chromedp.Do(ctx, chromedp.EmulateViewport(width, height, chromedp.EmulateMobile, chromedp.EmulateScale(1))); err != nil {
			return "", err
		}
		defer func() {
			ctx, cancel := context.WithTimeout(b.ctx, Timeout)
			defer cancel()
			_ = chromedp.Do(ctx, desktop())
		}()
	}
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // 100: PNG, not JPEG
	if err != nil {
		return "", err
	}
	path := filepath.Join(b.Artifacts, fmt.Sprintf("%02d-%s.png", n, unsafeName.ReplaceAllString(name, "-")))
	if err := os.WriteFile(path, png, 0o644); err != nil {
		return "", err
	}
	return path, nil
}
