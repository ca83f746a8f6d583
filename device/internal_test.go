package device

import (
	"testing"
	"time"
)

// backoffCeiling is min(maxDelay, base<<attempt) without overflowing.
func backoffCeiling(base, maxDelay time.Duration, attempt int) time.Duration {
	if attempt < 63 && base <= maxDelay>>attempt {
		return base << attempt
	}
	return maxDelay
}

func TestBackoffBounds(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ base, max time.Duration }{
		{10 * time.Millisecond, 100 * time.Millisecond},
		{500 * time.Millisecond, 30 * time.Second}, // the defaults
		{time.Millisecond, time.Hour},
	} {
		for attempt := 0; attempt <= 40; attempt++ {
			limit := backoffCeiling(tc.base, tc.max, attempt) + time.Millisecond
			for range 200 {
				d := backoff(tc.base, tc.max, attempt)
				if d <= 0 || d > limit {
					t.Fatalf("backoff(%v, %v, %d) = %v, want in (0, %v]", tc.base, tc.max, attempt, d, limit)
				}
			}
		}
	}
}

func TestBackoffFullJitter(t *testing.T) {
	t.Parallel()
	const base, maxDelay, attempt, samples = 10 * time.Millisecond, 100 * time.Millisecond, 20, 1000
	ceiling := backoffCeiling(base, maxDelay, attempt)
	seen := make(map[time.Duration]bool)
	lo, hi := time.Duration(1<<62), time.Duration(0)
	for range samples {
		d := backoff(base, maxDelay, attempt)
		seen[d] = true
		lo, hi = min(lo, d), max(hi, d)
	}
	if len(seen) < samples/2 {
		t.Errorf("%d distinct delays in %d samples, want them spread", len(seen), samples)
	}
	// Full jitter spreads over the whole [0, ceiling], not just its top.
	if lo > ceiling/4 || hi < ceiling*3/4 {
		t.Errorf("delays within [%v, %v], want them to cover most of [0, %v]", lo, hi, ceiling)
	}
}

func TestBackoffLargeMinBackoff(t *testing.T) {
	t.Parallel()
	base, maxDelay := 20*time.Second, 5*time.Minute
	for attempt := 0; attempt <= 40; attempt++ {
		func() {
			defer func() {
				if p := recover(); p != nil {
					t.Errorf("backoff(%v, %v, %d) panicked: %v", base, maxDelay, attempt, p)
				}
			}()
			limit := backoffCeiling(base, maxDelay, attempt) + time.Millisecond
			if d := backoff(base, maxDelay, attempt); d <= 0 || d > limit {
				t.Errorf("backoff(%v, %v, %d) = %v, want in (0, %v]", base, maxDelay, attempt, d, limit)
			}
		}()
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
