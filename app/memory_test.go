package app

import "testing"

// A small heap collects as Go does by default; a large one keeps the
// fixed headroom, down to MinGCPercent.
func TestGCPercent(t *testing.T) {
	for _, c := range []struct {
		live uint64
		want int
	}{
		{1 << 20, 100},
		{NodeHeadroom, 100},
		{2 * NodeHeadroom, 50},
		{140 << 20, MinGCPercent}, // 15,000 idle sessions
		{1 << 40, MinGCPercent},
	} {
		if got := gcPercent(c.live, NodeHeadroom); got != c.want {
			t.Errorf("gcPercent(%d MiB live) = %d, want %d", c.live>>20, got, c.want)
		}
	}
}
