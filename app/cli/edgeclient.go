package cli

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/switchboard-iot/switchboard/internal/problem"
	"github.com/switchboard-iot/switchboard/internal/sse"
)

// The management commands speak to an edge's HTTP API when one is given
// (-edge, SWITCHBOARD_EDGE), with an API key: they then need no database.
// This file is their HTTP client; what each route answers is in
// docs/api.md, and the client reads answers as the API writes them, so
// that -json prints them as they came.

// apiFlags are the flags of a command that can speak to an edge.
type apiFlags struct {
	url, keyFile *string
	urlGiven     func() bool // -edge on the command line, not from SWITCHBOARD_EDGE
	json         *bool
}

func defineAPIFlags(f flags) apiFlags {
	return apiFlags{
		url: f.string("edge", "", "the edge's URL, such as https://api.example.com: the command then speaks its HTTP API, with the API key of SWITCHBOARD_KEY or -key-file, and needs no database",
			"SWITCHBOARD_EDGE"),
		urlGiven: f.given("edge"),
		keyFile:  f.string("key-file", "", "a file holding the API key (its first line), instead of SWITCHBOARD_KEY", "SWITCHBOARD_KEY_FILE"),
		json:     f.Bool("json", false, "print JSON: one document (a list: one array), or JSON lines for a stream"),
	}
}

// requestTimeout bounds a request and the reading of its answer; an event
// stream is bounded by nothing but the command's context, and a ?wait=
// by the wait and this.
const requestTimeout = 30 * time.Second

// client calls one edge with one API key.
type client struct {
	base    string // scheme and host, and any path prefix, without a trailing "/"
	key     string
	http    *http.Client
	timeout time.Duration // of each request but streams
}

// client makes the client of -edge, with the key of -key-file or
// SWITCHBOARD_KEY.
func (af apiFlags) client(c call) (*client, error) {
	base := strings.TrimRight(*af.url, "/")
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("-edge %q: want the edge's URL, such as https://api.example.com or http://localhost:8080", *af.url)
	}
	key, err := af.key(c.getenv)
	if err != nil {
		return nil, err
	}
	if u.Scheme == "http" && !loopbackHost(u.Hostname()) {
		fmt.Fprintf(c.Stderr, "warning: the API key goes to %s over plain HTTP, unencrypted\n", u.Host)
	}
	return &client{
		base: base,
		key:  key,
		http: &http.Client{
			Transport: http.DefaultTransport.(*http.Transport).Clone(),
			// A redirect would carry the key on (or have already sent it in
			// clear, for http→https): say where the edge is instead.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		timeout: requestTimeout,
	}, nil
}

// key reads the API key: -key-file's first line, else SWITCHBOARD_KEY.
// There is no flag for the key itself, so that it stays out of shell
// histories and process lists.
func (af apiFlags) key(getenv Env) (string, error) {
	if *af.keyFile != "" {
		b, err := os.ReadFile(*af.keyFile)
		if err != nil {
			return "", fmt.Errorf("-key-file: %w", err)
		}
		line, _, _ := strings.Cut(string(b), "\n")
		if key := strings.TrimSpace(line); key != "" {
			return key, nil
		}
		return "", fmt.Errorf("-key-file %s: its first line is empty: want the API key", *af.keyFile)
	}
	if key := strings.TrimSpace(getenv("SWITCHBOARD_KEY")); key != "" {
		return key, nil
	}
	return "", errors.New("an API key is required to speak to the edge: set SWITCHBOARD_KEY, or give -key-file FILE (SWITCHBOARD_KEY_FILE)")
}

func loopbackHost(host string) bool {
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// required makes the client of a command that only speaks HTTP.
func (af apiFlags) required(c call) (*client, error) {
	if *af.url == "" {
		return nil, errors.New("an edge is required: set SWITCHBOARD_EDGE or give -edge URL (and the API key in SWITCHBOARD_KEY)")
	}
	return af.client(c)
}

// pathOf joins a route's segments, each escaped: "/v1/devices/" + id.
func pathOf(prefix string, segments ...string) string {
	var b strings.Builder
	b.WriteString(prefix)
	for _, s := range segments {
		b.WriteString("/")
		b.WriteString(url.PathEscape(s))
	}
	return b.String()
}

// request is one call of the API.
type request struct {
	method, path string
	query        url.Values
	body         []byte
	contentType  string      // of body; application/json by default
	header       http.Header // more headers (Idempotency-Key, Last-Event-ID)
}

// answer is a 2xx answer, its body read.
type answer struct {
	status int
	header http.Header
	body   json.RawMessage
}

// do sends req and reads the 2xx answer; another status is an *apiError,
// and a failure to reach the edge an *unreachableError.
func (c *client) do(ctx context.Context, req request) (answer, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	resp, err := c.send(ctx, req, "application/json")
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return answer{}, &unreachableError{what: req.method + " " + req.path, err: err, timeout: c.timeout}
	}
	if len(bytes.TrimSpace(body)) > 0 && !json.Valid(body) {
		return answer{}, fmt.Errorf("%s %s: the edge answered %d with a body that is not JSON", req.method, req.path, resp.StatusCode)
	}
	return answer{status: resp.StatusCode, header: resp.Header, body: body}, nil
}

// send sends req, accepting the media type accept, and returns the
// response if it is a 2xx.
func (c *client) send(ctx context.Context, req request, accept string) (*http.Response, error) {
	target := c.base + req.path
	if len(req.query) > 0 {
		target += "?" + req.query.Encode()
	}
	var body io.Reader
	if req.body != nil {
		body = bytes.NewReader(req.body)
	}
	hr, err := http.NewRequestWithContext(ctx, req.method, target, body)
	if err != nil {
		return nil, err
	}
	for k, v := range req.header {
		hr.Header[k] = v
	}
	hr.Header.Set("Authorization", "Bearer "+c.key)
	hr.Header.Set("Accept", accept)
	hr.Header.Set("User-Agent", "switchboard-cli/"+buildVersion())
	if req.body != nil {
		hr.Header.Set("Content-Type", cmp.Or(req.contentType, "application/json"))
	}
	resp, err := c.http.Do(hr)
	if err != nil {
		return nil, &unreachableError{what: req.method + " " + req.path, err: err, timeout: c.timeout}
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return resp, nil
	}
	defer resp.Body.Close()
	return nil, readAPIError(req, resp)
}

// fetch calls the API and decodes its JSON answer into a T, keeping the
// answer as it came for -json.
func fetch[T any](ctx context.Context, c *client, req request) (got[T], answer, error) {
	a, err := c.do(ctx, req)
	if err != nil {
		return got[T]{}, a, err
	}
	var g got[T]
	if err := json.Unmarshal(a.body, &g.v); err != nil {
		return g, a, fmt.Errorf("%s %s: reading the edge's answer: %w", req.method, req.path, err)
	}
	g.raw = a.body
	return g, a, nil
}

// jsonBody encodes a request body.
func jsonBody(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // the CLI's own maps and structs
	}
	return b
}

// list fetches a list route (a page of {"<field>":[…],"next":"…"}) a
// page at a time, following next (an opaque cursor, sent back as
// ?cursor=), and calls each with every item as the API wrote it: all of
// them, or limit at most (limit > 0). page is the page size asked for:
// the route's largest, or limit. It returns the last page's answer (a
// device list's totals) and whether items were left.
func (c *client) list(ctx context.Context, path string, q url.Values, field string, page, limit int,
	each func(json.RawMessage) error) (last map[string]json.RawMessage, more bool, err error) {
	q = cloneQuery(q)
	seen := 0
	for {
		n := page
		if limit > 0 {
			n = min(page, limit-seen)
		}
		q.Set("limit", strconv.Itoa(n))
		a, err := c.do(ctx, request{method: http.MethodGet, path: path, query: q})
		if err != nil {
			return nil, false, err
		}
		last = nil
		var items []json.RawMessage
		if err := json.Unmarshal(a.body, &last); err == nil {
			err = json.Unmarshal(last[field], &items)
		}
		if err != nil || last[field] == nil {
			return nil, false, fmt.Errorf("GET %s: the edge's answer holds no %q list", path, field)
		}
		for _, it := range items {
			if err := each(it); err != nil {
				return nil, false, err
			}
			seen++
		}
		var next string
		_ = json.Unmarshal(last["next"], &next) // absent on the last page
		switch {
		case next == "":
			return last, false, nil
		case limit > 0 && seen >= limit:
			return last, true, nil
		case next == q.Get("cursor"):
			return nil, false, fmt.Errorf("GET %s: the edge answered the same next cursor twice", path)
		}
		q.Set("cursor", next)
	}
}

func cloneQuery(q url.Values) url.Values {
	out := url.Values{}
	for k, v := range q {
		if len(v) > 0 && v[0] != "" {
			out[k] = append([]string(nil), v...)
		}
	}
	return out
}

// stream opens an event stream: a route answering Server-Sent Events to
// Accept: text/event-stream. Close the body when done.
func (c *client) stream(ctx context.Context, req request) (*sse.Reader, io.Closer, error) {
	resp, err := c.send(ctx, req, "text/event-stream")
	if err != nil {
		return nil, nil, err
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "text/event-stream" {
		resp.Body.Close()
		return nil, nil, fmt.Errorf("%s %s: the edge answered %s, not an event stream", req.method, req.path, resp.Header.Get("Content-Type"))
	}
	return sse.NewReader(resp.Body), resp.Body, nil
}

// apiError is an answer of the API other than a 2xx: its problem
// (RFC 9457), or what stood for one (a proxy's error page).
type apiError struct {
	problem.Problem
	retryAfter string // Retry-After, when given
	location   string // a redirect's
	what       string // the request: "GET /v1/devices"
}

func readAPIError(req request, resp *http.Response) error {
	e := &apiError{retryAfter: resp.Header.Get("Retry-After"), location: resp.Header.Get("Location"), what: req.method + " " + req.path}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if mt != "application/problem+json" || json.Unmarshal(body, &e.Problem) != nil || e.Title == "" {
		// Not the API's answer: a proxy's, or an edge too old for this
		// route. Its first line says what it can.
		e.Problem = problem.Problem{Title: http.StatusText(resp.StatusCode)}
		if mt == "text/plain" {
			line, _, _ := strings.Cut(strings.TrimSpace(string(body)), "\n")
			e.Detail = truncate(line, 200)
		}
	}
	e.Status = resp.StatusCode
	return e
}

func (e *apiError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d %s", e.what, e.Status, e.Title)
	if e.Detail != "" {
		fmt.Fprintf(&b, ": %s", e.Detail)
	}
	if e.Type != "" {
		fmt.Fprintf(&b, " (%s)", e.Type)
	}
	switch {
	case e.Status >= 300 && e.Status < 400 && e.location != "":
		fmt.Fprintf(&b, "; the edge redirects to %s: give that URL as -edge", e.location)
	case e.Status == http.StatusUnauthorized:
		b.WriteString("; the API key is SWITCHBOARD_KEY's, or -key-file's")
	case e.retryAfter != "":
		fmt.Fprintf(&b, "; retry after %s s", e.retryAfter)
	}
	return b.String()
}

// transient reports whether trying again later may succeed: the edge or
// its database is unavailable (5xx), or a limit was reached (429, 408).
func (e *apiError) transient() bool {
	return e.Status >= 500 || e.Status == http.StatusTooManyRequests || e.Status == http.StatusRequestTimeout
}

// unreachableError is a request that got no answer.
type unreachableError struct {
	what    string
	err     error
	timeout time.Duration
}

func (e *unreachableError) Error() string {
	if errors.Is(e.err, context.DeadlineExceeded) {
		return fmt.Sprintf("%s: the edge did not answer within %s", e.what, e.timeout)
	}
	return fmt.Sprintf("%s: the edge cannot be reached: %v", e.what, e.err)
}

func (e *unreachableError) Unwrap() error { return e.err }

// refusedError is a request the command line refused itself, as the API
// would have (a key name that no key has, say): it exits as an API
// refusal does.
type refusedError struct{ msg string }

func (e *refusedError) Error() string { return e.msg }

func refusedf(format string, a ...any) error { return &refusedError{fmt.Sprintf(format, a...)} }

// outcomeError ends a command that waited for a device command or a job:
// it ended but did not succeed (ExitNotDone), or had not ended when the
// wait ran out (ExitNotFinal).
type outcomeError struct {
	msg  string
	code int
}

func (e *outcomeError) Error() string { return e.msg }

// Exit codes: main exits with ExitCode(err). docs/cli.md lists them.
const (
	ExitOK          = 0
	ExitError       = 1 // any other failure: a bad flag value, a file, the database
	ExitUsage       = 2 // the command line was wrong
	ExitRefused     = 3 // the edge refused the request: a 4xx problem (bad input, 401, 403, 404, 409…)
	ExitUnavailable = 4 // try again later: the edge unreachable or not answering, a 5xx, 429 or 408
	ExitNotDone     = 5 // a waited-for command or job ended other than done
	ExitNotFinal    = 6 // a waited-for command had not ended when -wait ran out
)

// ExitCode is the process's exit status for Run's error.
func ExitCode(err error) int {
	var (
		ae *apiError
		ue *unreachableError
		re *refusedError
		oe *outcomeError
	)
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, ErrUsage):
		return ExitUsage
	case errors.As(err, &oe):
		return oe.code
	case errors.As(err, &ae) && ae.transient(), errors.As(err, &ue):
		return ExitUnavailable
	case errors.As(err, &ae), errors.As(err, &re):
		return ExitRefused
	}
	return ExitError
}

// truncate shortens s to n characters for a table, marking the cut.
func truncate(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}
