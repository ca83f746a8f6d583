package cli

// The HTTP client's own parts: how it reports answers that are not the
// API's (a proxy's error page, a redirect), exit codes, and the flags'
// readings. e2e/cli_http_test.go runs every command against real edges.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-iot/switchboard/internal/problem"
)

// testCall is a call with the given environment and the output kept.
func testCall(env map[string]string) (call, *strings.Builder, *strings.Builder) {
	var out, errOut strings.Builder
	return call{getenv: func(k string) string { return env[k] }, IO: IO{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errOut}}, &out, &errOut
}

// clientFor is a client of url whose flags are as given on a command line.
func clientFor(t *testing.T, url string, env map[string]string, args ...string) (*client, *strings.Builder, error) {
	t.Helper()
	c, _, errOut := testCall(env)
	f := newFlags("test", c.getenv, c.IO)
	af := defineAPIFlags(f)
	if err := f.parse(append([]string{"-edge", url}, args...)); err != nil {
		t.Fatal(err)
	}
	cl, err := af.client(c)
	return cl, errOut, err
}

func TestAnswersThatAreNotTheAPIs(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/problem", func(w http.ResponseWriter, _ *http.Request) {
		problem.DeviceNotFound.Write(w, `no device has the id "x"`)
	})
	mux.HandleFunc("/v1/busy", func(w http.ResponseWriter, _ *http.Request) {
		problem.Unavailable.WriteRetryAfter(w, "try again shortly", 2*time.Second)
	})
	mux.HandleFunc("/v1/proxy", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusBadGateway)
		fmt.Fprint(w, "upstream connect error\nmore")
	})
	mux.HandleFunc("/v1/moved", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "https://api.example.com/v1/moved", http.StatusPermanentRedirect)
	})
	mux.HandleFunc("/v1/key", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]string{"auth": r.Header.Get("Authorization"), "ua": r.Header.Get("User-Agent")})
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	cl, said, err := clientFor(t, srv.URL+"/", map[string]string{"SWITCHBOARD_KEY": " sbk_test \n"})
	if err != nil || said.String() != "" {
		t.Fatalf("client: %v, said %q", err, said)
	}
	ctx := context.Background()

	a, err := cl.do(ctx, request{method: http.MethodGet, path: "/v1/key"})
	if err != nil || !strings.Contains(string(a.body), `"auth":"Bearer sbk_test"`) || !strings.Contains(string(a.body), `"ua":"switchboard-cli/`) {
		t.Fatalf("the key and User-Agent sent: %s, %v", a.body, err)
	}
	for _, tc := range []struct {
		path, want string
		exit       int
	}{
		{"/v1/problem", `GET /v1/problem: 404 Device not found: no device has the id "x" (` + problem.DeviceNotFound.URI() + ")", ExitRefused},
		{"/v1/busy", "GET /v1/busy: 503 Service unavailable: try again shortly (" + problem.Unavailable.URI() + "); retry after 2 s", ExitUnavailable},
		{"/v1/proxy", "GET /v1/proxy: 502 Bad Gateway: upstream connect error", ExitUnavailable},
		{"/v1/moved", "GET /v1/moved: 308 Permanent Redirect; the edge redirects to https://api.example.com/v1/moved: give that URL as -edge", ExitRefused},
	} {
		_, err := cl.do(ctx, request{method: http.MethodGet, path: tc.path})
		if err == nil || err.Error() != tc.want || ExitCode(err) != tc.exit {
			t.Errorf("%s: %v (exit %d), want %q (exit %d)", tc.path, err, ExitCode(err), tc.want, tc.exit)
		}
	}

	// No edge there: unreachable.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gone := "http://" + ln.Addr().String()
	ln.Close()
	cl, _, _ = clientFor(t, gone, map[string]string{"SWITCHBOARD_KEY": "k"})
	_, err = cl.do(ctx, request{method: http.MethodGet, path: "/v1/jobs"})
	var ue *unreachableError
	if !errors.As(err, &ue) || ExitCode(err) != ExitUnavailable || !strings.Contains(err.Error(), "cannot be reached") {
		t.Fatalf("no edge: %v (exit %d)", err, ExitCode(err))
	}
}

func TestEdgeFlags(t *testing.T) {
	for _, bad := range []string{"localhost:8080", "ftp://edge", "https://", "http://edge?x=1"} {
		if _, _, err := clientFor(t, bad, map[string]string{"SWITCHBOARD_KEY": "k"}); err == nil || !strings.Contains(err.Error(), "want the edge's URL") {
			t.Errorf("-edge %q: %v", bad, err)
		}
	}
	if _, said, err := clientFor(t, "http://edge.example.com", map[string]string{"SWITCHBOARD_KEY": "k"}); err != nil || !strings.Contains(said.String(), "plain HTTP") {
		t.Errorf("plain HTTP to another host: %v, said %q, want a warning", err, said)
	}
	if _, said, err := clientFor(t, "http://localhost:8080", map[string]string{"SWITCHBOARD_KEY": "k"}); err != nil || said.String() != "" {
		t.Errorf("plain HTTP to localhost: %v, said %q, want no warning", err, said)
	}

	// The key: -key-file's first line, over SWITCHBOARD_KEY; never empty.
	dir := t.TempDir()
	file, empty := filepath.Join(dir, "key"), filepath.Join(dir, "empty")
	if err := os.WriteFile(file, []byte("sbk_file\nsecond line\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		env     map[string]string
		args    []string
		key     string
		problem string
	}{
		{map[string]string{"SWITCHBOARD_KEY": "sbk_env"}, nil, "sbk_env", ""},
		{map[string]string{"SWITCHBOARD_KEY": "sbk_env"}, []string{"-key-file", file}, "sbk_file", ""},
		{map[string]string{"SWITCHBOARD_KEY_FILE": file}, nil, "sbk_file", ""},
		{nil, []string{"-key-file", empty}, "", "first line is empty"},
		{nil, []string{"-key-file", filepath.Join(dir, "none")}, "", "no such file"},
		{nil, nil, "", "set SWITCHBOARD_KEY"},
	} {
		cl, _, err := clientFor(t, "http://localhost:1", tc.env, tc.args...)
		switch {
		case tc.problem == "" && (err != nil || cl.key != tc.key):
			t.Errorf("env %v, %v: %v, want the key %q", tc.env, tc.args, err, tc.key)
		case tc.problem != "" && (err == nil || !strings.Contains(err.Error(), tc.problem)):
			t.Errorf("env %v, %v: %v, want %q", tc.env, tc.args, err, tc.problem)
		}
	}
}

func TestExitCode(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{nil, ExitOK},
		{errors.New("a file"), ExitError},
		{ErrUsage, ExitUsage},
		{fmt.Errorf("wrapped: %w", &apiError{Problem: problem.Problem{Status: 409}}), ExitRefused},
		{&apiError{Problem: problem.Problem{Status: 401}}, ExitRefused},
		{&apiError{Problem: problem.Problem{Status: 429}}, ExitUnavailable},
		{&apiError{Problem: problem.Problem{Status: 408}}, ExitUnavailable},
		{&apiError{Problem: problem.Problem{Status: 503}}, ExitUnavailable},
		{&unreachableError{err: context.DeadlineExceeded}, ExitUnavailable},
		{refusedf("no such key"), ExitRefused},
		{&outcomeError{"failed", ExitNotDone}, ExitNotDone},
		{&outcomeError{"pending", ExitNotFinal}, ExitNotFinal},
	} {
		if got := ExitCode(tc.err); got != tc.want {
			t.Errorf("ExitCode(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}

func TestTimeFlag(t *testing.T) {
	now := time.Date(2026, 1, 2, 15, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		v    string
		sign time.Duration
		want string
	}{
		{"", -1, ""},
		{"1h", -1, "2026-01-02T14:00:00Z"},
		{"90m", 1, "2026-01-02T16:30:00Z"},
		{"2026-01-02T16:04:05+01:00", -1, "2026-01-02T15:04:05Z"},
		{"2026-01-02T15:04:05.5Z", -1, "2026-01-02T15:04:05.5Z"},
	} {
		if got, err := timeFlag("since", tc.v, now, tc.sign); err != nil || got != tc.want {
			t.Errorf("timeFlag(%q) = %q, %v; want %q", tc.v, got, err, tc.want)
		}
	}
	for _, bad := range []string{"yesterday", "-1h", "2026-01-02"} {
		if _, err := timeFlag("since", bad, now, -1); err == nil || !strings.Contains(err.Error(), "-since") {
			t.Errorf("timeFlag(%q): %v, want an error naming -since", bad, err)
		}
	}
}

func TestReadArgs(t *testing.T) {
	file := filepath.Join(t.TempDir(), "args.json")
	if err := os.WriteFile(file, []byte(`{"celsius": 21.5}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ v, stdin, want string }{
		{"", "", ""},
		{`{"a":1}`, "", `{"a":1}`},
		{"@" + file, "", `{"celsius": 21.5}`},
		{"@-", `{"b":2}`, `{"b":2}`},
	} {
		if got, err := readArgs(tc.v, strings.NewReader(tc.stdin)); err != nil || string(got) != tc.want {
			t.Errorf("readArgs(%q) = %s, %v; want %s", tc.v, got, err, tc.want)
		}
	}
	for _, bad := range []string{"[1]", "null", "{", "@" + file + ".none"} {
		if _, err := readArgs(bad, strings.NewReader("")); err == nil || !strings.HasPrefix(err.Error(), "-args") {
			t.Errorf("readArgs(%q): %v, want an error", bad, err)
		}
	}
}

func TestJSONArray(t *testing.T) {
	var b strings.Builder
	a := &jsonArray{w: &b}
	if err := a.close(); err != nil || b.String() != "[]\n" {
		t.Fatalf("no items: %q", b.String())
	}
	b.Reset()
	a = &jsonArray{w: &b}
	for _, v := range []any{json.RawMessage(`{"id":"a<b","labels":{"k":"v"}}`), map[string]int{"n": 2}} {
		if err := a.add(v); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.close(); err != nil {
		t.Fatal(err)
	}
	want := "[\n  {\n    \"id\": \"a<b\",\n    \"labels\": {\n      \"k\": \"v\"\n    }\n  },\n  {\n    \"n\": 2\n  }\n]\n"
	if b.String() != want {
		t.Fatalf("array:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestVersion(t *testing.T) {
	var out strings.Builder
	if err := Run(context.Background(), []string{"version", "-json"}, func(string) string { return "" },
		IO{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &out}); err != nil {
		t.Fatal(err)
	}
	var b build
	if err := json.Unmarshal([]byte(out.String()), &b); err != nil {
		t.Fatalf("version -json printed %q: %v", out.String(), err)
	}
	if b.Go != runtime.Version() || b.Platform != runtime.GOOS+"/"+runtime.GOARCH || b.Version == "" {
		t.Fatalf("version -json: %+v", b)
	}
}
