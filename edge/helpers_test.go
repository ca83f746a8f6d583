package edge_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/db/dbtest"
	"github.com/switchboard-iot/switchboard/internal/command"
	"github.com/switchboard-iot/switchboard/internal/problem"
)

func TestMain(m *testing.M) { os.Exit(dbtest.Main(m)) }

// requestTimeout bounds every request a test makes, streams included: a
// stuck stream fails the test instead of hanging it.
const requestTimeout = 15 * time.Second

// api is an HTTP client of one edge, with an API key.
type api struct {
	t    *testing.T
	base string
	key  string
	hc   *http.Client
}

// newAPI returns a client of base with its own transport, whose idle
// connections close when the test ends (the leak check must not see them).
func newAPI(t *testing.T, base, key string) *api {
	t.Helper()
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &api{t: t, base: base, key: key, hc: &http.Client{Transport: tr}}
}

// request builds a request; hdr holds header name/value pairs ("Host"
// among them). An empty key sends no Authorization header.
func (a *api) request(ctx context.Context, method, path, body string, hdr ...string) *http.Request {
	a.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, rd)
	if err != nil {
		a.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if a.key != "" {
		req.Header.Set("Authorization", "Bearer "+a.key)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Host" {
			req.Host = hdr[i+1]
			continue
		}
		req.Header.Set(hdr[i], hdr[i+1])
	}
	return req
}

// call makes a request and reads the whole response, closing its body.
func (a *api) call(method, path, body string, hdr ...string) (*http.Response, []byte) {
	a.t.Helper()
	ctx, cancel := context.WithTimeout(a.t.Context(), requestTimeout)
	defer cancel()
	resp, err := a.hc.Do(a.request(ctx, method, path, body, hdr...))
	if err != nil {
		a.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		a.t.Fatalf("%s %s: reading the body: %v", method, path, err)
	}
	return resp, b
}

// open makes a request whose response is read as it comes (a stream). The
// body is closed when the test ends, or earlier by the caller; the request
// is cancelled after requestTimeout.
func (a *api) open(method, path, body string, hdr ...string) *http.Response {
	a.t.Helper()
	ctx, cancel := context.WithTimeout(a.t.Context(), requestTimeout)
	a.t.Cleanup(cancel)
	resp, err := a.hc.Do(a.request(ctx, method, path, body, hdr...))
	if err != nil {
		a.t.Fatalf("%s %s: %v", method, path, err)
	}
	a.t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// stream opens an SSE request and checks that it is one.
func (a *api) stream(method, path, body string, hdr ...string) (*http.Response, *sseReader) {
	a.t.Helper()
	resp := a.open(method, path, body, append([]string{"Accept", "text/event-stream"}, hdr...)...)
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		a.t.Fatalf("%s %s: status %d, want 200 (a stream); body %s", method, path, resp.StatusCode, b)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		a.t.Fatalf("%s %s: Content-Type %q, want text/event-stream", method, path, ct)
	}
	return resp, newSSEReader(resp.Body)
}

// sendCommand posts a command to a device; target is a device id,
// optionally followed by a query ("dev-1?wait=5s").
func (a *api) sendCommand(target, body string, hdr ...string) (*http.Response, []byte) {
	a.t.Helper()
	deviceID, query, _ := strings.Cut(target, "?")
	if query != "" {
		query = "?" + query
	}
	return a.call(http.MethodPost, "/v1/devices/"+deviceID+"/commands"+query, body, hdr...)
}

type sseEvent = testsys.Event

// sseReader reads an event stream, failing the test on a broken one.
type sseReader struct{ *testsys.EventReader }

func newSSEReader(r io.Reader) *sseReader { return &sseReader{testsys.NewEventReader(r)} }

// all reads events until the stream ends, failing t on anything but a clean end.
func (s *sseReader) all(t *testing.T) []sseEvent {
	t.Helper()
	var events []sseEvent
	for {
		ev, err := s.Next()
		if errors.Is(err, io.EOF) {
			return events
		}
		if err != nil {
			t.Fatalf("reading the stream after %d events %v: %v", len(events), events, err)
		}
		events = append(events, ev)
	}
}

// must reads the next event, failing t if the stream ends or fails first.
func (s *sseReader) must(t *testing.T) sseEvent {
	t.Helper()
	ev, err := s.Next()
	if err != nil {
		t.Fatalf("reading the next event: %v", err)
	}
	return ev
}

// wantEnd checks that the stream ends with no further event.
func (s *sseReader) wantEnd(t *testing.T) {
	t.Helper()
	ev, err := s.Next()
	switch {
	case err == nil:
		t.Fatalf("got event %+v, want the stream to end", ev)
	case !errors.Is(err, io.EOF):
		t.Fatalf("want the stream to end cleanly, got %v", err)
	}
}

// wantEvent checks an event's id and name, and that its data is the command
// id in status; it returns the decoded command and its raw fields.
func wantEvent(t *testing.T, ev sseEvent, seq, name string, id uuid.UUID, status command.Status) (command.Command, map[string]json.RawMessage) {
	t.Helper()
	if ev.ID != seq || ev.Name != name {
		t.Fatalf("event id %q name %q, want id %q name %q (%+v)", ev.ID, ev.Name, seq, name, ev)
	}
	c, fields := decodeCommand(t, []byte(ev.Data))
	if id != uuid.Nil && c.ID != id {
		t.Errorf("event %s: data id %s, want %s", name, c.ID, id)
	}
	if c.Status != status {
		t.Errorf("event %s: data status %q, want %q", name, c.Status, status)
	}
	return c, fields
}

func decodeCommand(t *testing.T, b []byte) (command.Command, map[string]json.RawMessage) {
	t.Helper()
	var c command.Command
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatalf("decoding a command %s: %v", b, err)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(b, &fields); err != nil {
		t.Fatalf("decoding a command %s: %v", b, err)
	}
	return c, fields
}

// wantCommand checks a JSON command response and returns the command.
func wantCommand(t *testing.T, resp *http.Response, body []byte, status int) (command.Command, map[string]json.RawMessage) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("status %d, want %d; body %s", resp.StatusCode, status, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("Content-Type %q, want application/json", ct)
	}
	return decodeCommand(t, body)
}

// wantProblem checks an RFC 9457 problem response and returns it.
func wantProblem(t *testing.T, resp *http.Response, body []byte, status int, slug string) problem.Problem {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("status %d, want %d; body %s", resp.StatusCode, status, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/problem+json") {
		t.Fatalf("Content-Type %q, want application/problem+json; body %s", ct, body)
	}
	var p problem.Problem
	if err := json.Unmarshal(body, &p); err != nil {
		t.Fatalf("decoding a problem %s: %v", body, err)
	}
	if !strings.HasSuffix(p.Type, "/"+slug) {
		t.Errorf("problem type %q, want one ending in /%s", p.Type, slug)
	}
	if p.Status != status {
		t.Errorf("problem status %d, want %d", p.Status, status)
	}
	if p.Title == "" {
		t.Error("problem has no title")
	}
	if strings.Contains(string(body), "goroutine ") || strings.Contains(string(body), ".go:") {
		t.Errorf("problem looks like it carries a stack trace: %s", body)
	}
	return p
}

// commandIDFrom checks a Location header of /v1/commands/{id} and returns the id.
func commandIDFrom(t *testing.T, resp *http.Response) uuid.UUID {
	t.Helper()
	loc := resp.Header.Get("Location")
	rest, ok := strings.CutPrefix(loc, "/v1/commands/")
	if !ok {
		t.Fatalf("Location %q, want /v1/commands/{id}", loc)
	}
	id, err := uuid.Parse(rest)
	if err != nil {
		t.Fatalf("Location %q: %v", loc, err)
	}
	return id
}

// row reads a command's status and reply_to straight from the table.
func row(t *testing.T, sys *testsys.System, id uuid.UUID) (status, replyTo string) {
	t.Helper()
	var rt *string
	err := sys.Pool.QueryRow(t.Context(), `SELECT status, reply_to FROM commands WHERE id = $1`, id).Scan(&status, &rt)
	if err != nil {
		t.Fatalf("reading command %s: %v", id, err)
	}
	if rt != nil {
		replyTo = *rt
	}
	return status, replyTo
}

func countCommands(t *testing.T, sys *testsys.System) int {
	t.Helper()
	var n int
	if err := sys.Pool.QueryRow(t.Context(), `SELECT count(*) FROM commands`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// eventsSummary renders events as "id:name" for messages.
func eventsSummary(events []sseEvent) string {
	var parts []string
	for _, ev := range events {
		parts = append(parts, ev.ID+":"+ev.Name)
	}
	return strings.Join(parts, " ")
}
