package device

import (
	"net/http"
	"testing"
	"time"
)

// Retry-After is whole seconds or an HTTP date; anything else, or a date
// past, is no wait; a wait longer than maxRetryAfter is cut to it.
func TestRetryAfter(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		header   string
		min, max time.Duration
	}{
		{"", 0, 0},
		{"0", 0, 0},
		{"7", 7 * time.Second, 7 * time.Second},
		{"-1", 0, 0},
		{"1.5", 0, 0},
		{"soon", 0, 0},
		{"99999999999999999999", maxRetryAfter, maxRetryAfter},
		{"86400", maxRetryAfter, maxRetryAfter},
		{time.Now().Add(time.Minute).UTC().Format(http.TimeFormat), 58 * time.Second, time.Minute},
		{time.Now().Add(-time.Minute).UTC().Format(http.TimeFormat), 0, 0},
		{time.Now().Add(24 * time.Hour).UTC().Format(http.TimeFormat), maxRetryAfter, maxRetryAfter},
	} {
		h := http.Header{}
		if tc.header != "" {
			h.Set("Retry-After", tc.header)
		}
		if got := retryAfter(h); got < tc.min || got > tc.max {
			t.Errorf("retryAfter(%q) = %v, want %v to %v", tc.header, got, tc.min, tc.max)
		}
	}
}

func TestRebalanceDelay(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		reason string
		want   time.Duration
	}{
		{"reconnect in 30s", 30 * time.Second},
		{"30s", 30 * time.Second},
		{"1s", time.Second},
		{"250ms", 250 * time.Millisecond},
		{"1m30s please", 90 * time.Second},
		{"", time.Second},
		{"garbage", time.Second},
		{"in -5s", time.Second},
		{"0s", time.Second},
		{"10m", 10 * time.Minute},
		{"reconnect in 30h", 10 * time.Minute},
	} {
		if got := rebalanceDelay(tc.reason); got != tc.want {
			t.Errorf("rebalanceDelay(%q) = %v, want %v", tc.reason, got, tc.want)
		}
	}
}

func TestDedupRing(t *testing.T) {
	t.Parallel()
	d := newDedup(2)
	for _, id := range []string{"a", "b", "c"} {
		if reply, fresh := d.begin(id); !fresh || reply != nil {
			t.Fatalf("begin(%q) = %q, %v on first sight, want nil, true", id, reply, fresh)
		}
	}
	// c is remembered (still running: no reply yet).
	if reply, fresh := d.begin("c"); fresh || reply != nil {
		t.Errorf("begin(c) again = %q, %v, want nil, false", reply, fresh)
	}
	// a was the oldest of three ids in a ring of two: forgotten.
	if _, fresh := d.begin("a"); !fresh {
		t.Error("begin(a) after a, b, c in a ring of 2: want fresh (evicted)")
	}
	// Re-adding a evicted b, the oldest; c stays.
	if _, fresh := d.begin("b"); !fresh {
		t.Error("begin(b) after a was re-added: want fresh (evicted)")
	}
	if len(d.replies) > 2 {
		t.Errorf("%d ids remembered by a ring of 2", len(d.replies))
	}
}

func TestDedupFinish(t *testing.T) {
	t.Parallel()
	d := newDedup(4)
	if _, fresh := d.begin("x"); !fresh {
		t.Fatal("begin(x): want fresh")
	}
	if reply, fresh := d.begin("x"); fresh || reply != nil {
		t.Fatalf("begin(x) while running = %q, %v, want nil, false", reply, fresh)
	}
	want := []byte(`{"type":"reply","id":"x","ok":true}`)
	d.finish("x", want)
	if reply, fresh := d.begin("x"); fresh || string(reply) != string(want) {
		t.Errorf("begin(x) after finish = %q, %v, want %q, false", reply, fresh, want)
	}
	// finish of an id that is not remembered stores nothing.
	d.finish("y", []byte("stray"))
	if reply, fresh := d.begin("y"); !fresh || reply != nil {
		t.Errorf("begin(y) after a stray finish = %q, %v, want nil, true", reply, fresh)
	}
}

// FuzzRebalanceDelay feeds the reason of a 1012 close, which the node
// writes and the SDK obeys: the delay is positive and bounded.
func FuzzRebalanceDelay(f *testing.F) {
	for _, s := range []string{"reconnect in 30s", "30s", "", "0s", "-5s", "1e3s", "2562047h", "9223372036854775807ns", "10m0s", "10m1s", "\xff 5s", "5s\u00a01s"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, reason string) {
		if d := rebalanceDelay(reason); d <= 0 || d > maxRebalanceDelay {
			t.Fatalf("rebalanceDelay(%q) = %v, want a delay from 0 to %v", reason, d, maxRebalanceDelay)
		}
	})
}

func TestClockSkew(t *testing.T) {
	now := time.Date(2026, 12, 6, 3, 0, 0, 400_000_000, time.UTC)
	tests := []struct {
		date string
		want time.Duration
	}{
		{"", 0},
		{"not a date", 0},
		{"Sun, 06 Dec 2026 03:00:00 GMT", 0}, // the same second
		{"Sun, 06 Dec 2026 03:00:01 GMT", 0}, // within what a Date can tell
		{"Sun, 06 Dec 2026 02:59:59 GMT", 0},
		{"Sun, 06 Dec 2026 04:00:00 GMT", time.Hour - 400*time.Millisecond},
		{"Sun, 06 Dec 2026 02:00:00 GMT", -time.Hour - 400*time.Millisecond},
		{"Thu, 01 Jan 1970 00:00:00 GMT", time.Unix(0, 0).Sub(now)},
	}
	for _, tt := range tests {
		if got := clockSkew(tt.date, now); got != tt.want {
			t.Errorf("clockSkew(%q) = %v, want %v", tt.date, got, tt.want)
		}
	}
}
