package ratelimit

import (
	"fmt"
	"testing"
	"time"
)

func TestTakeAndRefill(t *testing.T) {
	tb := NewTable(1, 3, 100) // a token a second, three at once
	now := time.Unix(1000, 0)
	if s := tb.Look("k", now); !s.OK || s.Remaining != 3 {
		t.Fatalf("a fresh look = %+v, want OK with 3 remaining", s)
	}
	for i := range 3 {
		s := tb.Take("k", now)
		if !s.OK || s.Remaining != 2-i {
			t.Fatalf("take %d = %+v, want OK with %d remaining", i+1, s, 2-i)
		}
	}
	s := tb.Take("k", now)
	if s.OK || s.Remaining != 0 || s.RetryAfter != time.Second || s.Full != 3*time.Second {
		t.Fatalf("take from an empty bucket = %+v, want refused, retry in 1s, full in 3s", s)
	}
	if s := tb.Look("k", now); s.OK {
		t.Fatalf("look at an empty bucket = %+v, want not OK", s)
	}
	// Other keys have their own buckets.
	if s := tb.Take("other", now); !s.OK {
		t.Fatalf("another key was refused: %+v", s)
	}
	later := now.Add(1500 * time.Millisecond)
	if s := tb.Take("k", later); !s.OK || s.Remaining != 0 {
		t.Fatalf("take after 1.5s = %+v, want OK with 0 remaining", s)
	}
}

// A refilled bucket is forgotten, and a table never holds more than its
// size.
func TestBounded(t *testing.T) {
	tb := NewTable(1, 2, 10)
	now := time.Unix(1000, 0)
	for i := range 1000 {
		tb.Take(fmt.Sprint(i), now)
	}
	if n := tb.buckets.Len(); n > 10 {
		t.Fatalf("%d buckets, want at most 10", n)
	}
	tb.Take("k", now)
	tb.Take("k", now)
	if s := tb.Look("k", now.Add(2*time.Second)); !s.OK || s.Remaining != 2 {
		t.Fatalf("look once refilled = %+v, want 2 remaining", s)
	}
	tb.Take("late", now.Add(time.Hour))
	if n := tb.buckets.Len(); n != 1 {
		t.Fatalf("%d buckets an hour later, want only the new one", n)
	}
}

// Concurrent callers read the clock before they take the lock: one that
// comes second with an earlier time must not find the nothing a look at a
// missing bucket left (the edge panicked on it under load).
func TestLookThenEarlierCall(t *testing.T) {
	tb := NewTable(1, 3, 100)
	now := time.Unix(1000, 0)
	tb.Look("k", now)
	if s := tb.Look("k", now.Add(-time.Millisecond)); !s.OK || s.Remaining != 3 {
		t.Fatalf("an earlier look = %+v, want OK with 3 remaining", s)
	}
	tb.Look("k", now)
	if s := tb.Take("k", now.Add(-time.Millisecond)); !s.OK || s.Remaining != 2 {
		t.Fatalf("an earlier take = %+v, want OK with 2 remaining", s)
	}
}
