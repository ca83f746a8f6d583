package browsertest

import (
	"bytes"
	"fmt"
	"image/png"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"
)

// fixturePage is a small site with what the console's tests rely on: a form that
// posts and redirects, a select that changes the page on "change", text
// filled in later by JavaScript, and an EventSource.
const fixturePage = `<!doctype html>
<meta name="viewport" content="width=device-width">
<title>fixture</title>
<form method="post" action="/submit"><input id="name" name="name"><button id="go">Go</button></form>
<select id="kind"><option value="all">all</option><option value="label">label</option></select>
<p id="kind-said"></p>
<p id="later">…</p>
<ul id="stream"></ul>
<script>
document.getElementById("kind").addEventListener("change", e => {
	document.getElementById("kind-said").textContent = e.target.value;
});
setTimeout(() => { document.getElementById("later").textContent = "ready"; }, 300);
const es = new EventSource("/stream");
es.onmessage = e => {
	const li = document.createElement("li");
	li.textContent = e.data;
	document.getElementById("stream").append(li);
};
</script>`

func fixture(t *testing.T) *httptest.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, fixturePage) })
	mux.HandleFunc("POST /submit", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/done?name="+r.FormValue("name"), http.StatusSeeOther)
	})
	mux.HandleFunc("GET /done", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `<!doctype html><p id="said">%s</p>`, r.FormValue("name"))
	})
	mux.HandleFunc("GET /stream", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: hello\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	ts := httptest.NewServer(mux)
	// Chromium keeps the stream open until its tab goes, which the
	// browser's cleanup (registered later, so run earlier) does.
	t.Cleanup(ts.Close)
	return ts
}

func TestBrowser(t *testing.T) {
	t.Parallel()
	ts := fixture(t)
	b := Start(t)

	b.EventSourceOpened("opening the fixture", chromedp.Navigate(ts.URL+"/"))
	b.WaitFor("the stream's first message", "#stream li", `el.textContent === "hello"`)
	b.WaitFor("text filled in by a timer", "#later", `el.textContent === "ready"`)
	b.Select("#kind", "label")
	b.WaitFor("the page saw the choice", "#kind-said", `el.textContent === "label"`)
	if got := b.Count("#kind option"); got != 2 {
		t.Errorf("%d options, want 2", got)
	}
	view := filepath.Join(b.Artifacts, "viewport.png")
	b.ViewportScreenshot(view)
	desktop := b.Screenshot("fixture")
	phone := b.PhoneScreenshot("fixture-phone")
	again := b.Screenshot("fixture-desktop-again") // the phone's viewport is gone

	b.Type("#name", `{"a": 1}`)
	b.ClickAndLoad("#go")
	if got := b.Path(); !strings.HasPrefix(got, "/done") {
		t.Fatalf("after submitting: at %s", got)
	}
	if got := b.Text("#said"); got != `{"a": 1}` {
		t.Errorf("the form sent %q", got)
	}

	for p, width := range map[string]int{desktop: DesktopWidth, phone: PhoneWidth, again: DesktopWidth, view: DesktopWidth} {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := png.DecodeConfig(bytes.NewReader(data))
		if err != nil {
			t.Errorf("%s: %v", p, err)
		} else if cfg.Width != width {
			t.Errorf("%s is %d pixels wide, want %d", p, cfg.Width, width)
		} else if p == view && cfg.Height != DesktopHeight {
			t.Errorf("%s is %d pixels high, want %d", p, cfg.Height, DesktopHeight)
		}
	}
	if !strings.HasSuffix(desktop, "/01-fixture.png") || !strings.HasSuffix(phone, "/02-fixture-phone.png") {
		t.Errorf("screenshots named %s, %s", desktop, phone)
	}
	if errs := b.PageErrors(); len(errs) > 0 {
		t.Errorf("page errors: %v", errs)
	}
}
