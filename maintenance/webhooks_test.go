package maintenance

import (
	"testing"
	"time"
)

// TestWebhookWait: attempt k's retry waits within [0, base × 2^(k-1)],
// capped at maxWebhookWait, and spreads over that range (full jitter).
func TestWebhookWait(t *testing.T) {
	base := 5 * time.Second
	for k := 1; k <= 40; k++ {
		bound := min(base<<min(k-1, 20), maxWebhookWait)
		lo, hi := bound, time.Duration(0)
		for range 200 {
			w := webhookWait(base, k)
			if w < 0 || w > bound {
				t.Fatalf("attempt %d: waited %s, want 0 to %s", k, w, bound)
			}
			lo, hi = min(lo, w), max(hi, w)
		}
		if lo > bound/4 || hi < bound*3/4 {
			t.Errorf("attempt %d: 200 waits all in [%s, %s] of [0, %s]: not full jitter", k, lo, hi, bound)
		}
	}
}
