package backoff

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestNextStaysUnderTheCeiling(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ base, max time.Duration }{
		{10 * time.Millisecond, 100 * time.Millisecond},
		{500 * time.Millisecond, 30 * time.Second}, // the device SDK's defaults
		{time.Millisecond, time.Hour},
		{20 * time.Second, 5 * time.Minute}, // a large base must not overflow
	} {
		b := Backoff{Min: tc.base, Max: tc.max}
		for attempt := 0; attempt <= 70; attempt++ {
			limit := Ceiling(tc.base, tc.max, attempt) + time.Millisecond
			if limit > tc.max+time.Millisecond || limit <= 0 {
				t.Fatalf("Ceiling(%v, %v, %d) = %v", tc.base, tc.max, attempt, limit)
			}
			if d := b.Next(); d <= 0 || d > limit {
				t.Fatalf("attempt %d of %v..%v: waited %v, want in (0, %v]", attempt, tc.base, tc.max, d, limit)
			}
		}
	}
}

// Full jitter spreads the waits over the whole [0, ceiling], not just its
// top, so a fleet that failed at once comes back spread out.
func TestFullJitter(t *testing.T) {
	t.Parallel()
	const samples = 1000
	ceiling := 100 * time.Millisecond
	seen := make(map[time.Duration]bool)
	lo, hi := time.Duration(1<<62), time.Duration(0)
	for range samples {
		b := Backoff{Min: 10 * time.Millisecond, Max: ceiling, attempt: 20}
		d := b.Next()
		seen[d] = true
		lo, hi = min(lo, d), max(hi, d)
	}
	if len(seen) < samples/2 {
		t.Errorf("%d distinct waits in %d samples, want them spread", len(seen), samples)
	}
	if lo > ceiling/4 || hi < ceiling*3/4 {
		t.Errorf("waits within [%v, %v], want them to cover most of [0, %v]", lo, hi, ceiling)
	}
}

func TestResetStartsSmallAgain(t *testing.T) {
	t.Parallel()
	b := Backoff{Min: time.Millisecond, Max: time.Hour}
	for range 30 {
		b.Next()
	}
	b.Reset()
	if b.Attempts() != 0 {
		t.Fatalf("Attempts after Reset = %d", b.Attempts())
	}
	if d := b.Next(); d > 2*time.Millisecond {
		t.Fatalf("first wait after Reset = %v, want at most Min", d)
	}
}

func TestRetry(t *testing.T) {
	t.Parallel()
	calls, heard := 0, 0
	err := Retry(context.Background(), Backoff{Min: time.Microsecond, Max: time.Millisecond}, func(context.Context) error {
		calls++
		if calls < 5 {
			return errors.New("not yet")
		}
		return nil
	}, func(error, time.Duration) { heard++ })
	if err != nil || calls != 5 || heard != 4 {
		t.Fatalf("Retry = %v after %d calls, %d failures heard; want nil after 5, 4", err, calls, heard)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cause := errors.New("down")
	err = Retry(ctx, Backoff{Min: time.Microsecond, Max: time.Millisecond}, func(context.Context) error {
		cancel()
		return cause
	}, nil)
	if !errors.Is(err, cause) {
		t.Fatalf("Retry after its context ended = %v, want the last error", err)
	}
}
