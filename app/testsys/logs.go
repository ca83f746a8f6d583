package testsys

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
)

// Logs collects the JSON logs of the pieces a test starts (set System.Log
// to its Logger), as a log shipper would read a process's stderr: line by
// line, each line one JSON object.
type Logs struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Logger logs to l in JSON, at debug, as `switchboard -log-format json`
// does with LOG_LEVEL=debug.
func (l *Logs) Logger() *slog.Logger {
	return slog.New(slog.NewJSONHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func (l *Logs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if os.Getenv("SWITCHBOARD_TEST_LOG") != "" {
		os.Stderr.Write(p)
	}
	return l.buf.Write(p)
}

// Lines parses every line logged so far; a line that is not one JSON
// object fails the test.
func (l *Logs) Lines(t testing.TB) []map[string]any {
	t.Helper()
	l.mu.Lock()
	data := bytes.Clone(l.buf.Bytes())
	l.mu.Unlock()
	var lines []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("a log line is not a JSON object (%v): %s", err, sc.Text())
		}
		lines = append(lines, m)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return lines
}

// Find returns the lines with message msg whose fields include fields
// (compared as their JSON renderings: numbers as float64).
func (l *Logs) Find(t testing.TB, msg string, fields map[string]any) []map[string]any {
	t.Helper()
	var found []map[string]any
	for _, m := range l.Lines(t) {
		if m["msg"] == msg && matches(m, fields) {
			found = append(found, m)
		}
	}
	return found
}

// Await waits for a line with message msg and fields (see Find), and
// returns the first.
func (l *Logs) Await(t testing.TB, msg string, fields map[string]any) map[string]any {
	t.Helper()
	var found []map[string]any
	Eventually(t, fmt.Sprintf("a log line %q with %v", msg, fields), func() bool {
		found = l.Find(t, msg, fields)
		return len(found) > 0
	})
	return found[0]
}

func matches(m, fields map[string]any) bool {
	for k, want := range fields {
		got, ok := m[k]
		if !ok {
			return false
		}
		if sub, ok := want.(map[string]any); ok {
			g, ok := got.(map[string]any)
			if !ok || !matches(g, sub) {
				return false
			}
			continue
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			return false
		}
	}
	return true
}
