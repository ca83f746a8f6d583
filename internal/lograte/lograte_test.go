package lograte_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/switchboard-iot/switchboard/internal/lograte"
)

// lockedBuffer is written by the limiter's timer and read by the test.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) snapshot() *bytes.Buffer {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.NewBuffer(bytes.Clone(b.buf.Bytes()))
}

func lines(t *testing.T, b *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b.Bytes()))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("a line is not JSON: %q", sc.Text())
		}
		out = append(out, m)
	}
	return out
}

// A flood logs the limit, then one line with the count of the rest: on
// Stop, and on its own as the window ends.
func TestLimiter(t *testing.T) {
	buf := &lockedBuffer{}
	l := lograte.New(slog.New(slog.NewJSONHandler(buf, nil)), slog.LevelWarn, "refused", 3, time.Hour)
	for i := range 100 {
		l.Log("i", i)
	}
	l.Stop()
	got := lines(t, buf.snapshot())
	if len(got) != 4 {
		t.Fatalf("%d lines, want 3 and a count: %v", len(got), got)
	}
	for i, m := range got[:3] {
		if m["msg"] != "refused" || m["i"] != float64(i) || m["level"] != "WARN" {
			t.Errorf("line %d: %v", i, m)
		}
	}
	if m := got[3]; m["msg"] != "refused: more not logged" || m["more"] != float64(97) {
		t.Errorf("count line: %v", m)
	}

	// A short window: the count comes by itself once it ends.
	buf = &lockedBuffer{}
	l = lograte.New(slog.New(slog.NewJSONHandler(buf, nil)), slog.LevelWarn, "refused", 1, 50*time.Millisecond)
	defer l.Stop()
	l.Log()
	l.Log()
	l.Log()
	// Polled with a deadline: the timer logs the count when the window ends.
	for deadline := time.Now().Add(5 * time.Second); !bytes.Contains(buf.snapshot().Bytes(), []byte(`"more":2`)); {
		if time.Now().After(deadline) {
			t.Fatalf("no count line within 5s: %s", buf.snapshot())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := lines(t, buf.snapshot()); len(got) != 2 {
		t.Errorf("%d lines, want the first and the count: %v", len(got), got)
	}
}
