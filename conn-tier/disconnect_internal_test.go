package conntier

import (
	"testing"
	"time"
)

// Devices read the close codes and reasons, dashboards the labels: they
// stay as they are, byte for byte.
func TestDisconnects(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		got  disconnect
		want disconnect
	}{
		{disconnectReplaced, disconnect{4008, "replaced by a newer session", "replaced"}},
		{disconnectDraining, disconnect{1001, "node draining", "draining"}},
		{disconnectRateLimited, disconnect{4029, "rate limited", "rate_limited"}},
		{disconnectSlow, disconnect{1013, "write queue full", "slow"}},
		{disconnectUnavailable, disconnect{1011, "presence unavailable; reconnect later", "unavailable"}},
		{disconnectTooBig, disconnect{1009, "", "too_big"}},
		{disconnectRevoked("disabled"), disconnect{1008, "device disabled", "revoked"}},
		{disconnectRevoked("deleted"), disconnect{1008, "device deleted", "revoked"}},
		{disconnectBadMessage("binary frames are not part of switchboard.v1"), disconnect{1008, "binary frames are not part of switchboard.v1", "bad_message"}},
		{disconnectRebalance(17250 * time.Millisecond), disconnect{1012, "rebalance: reconnect in 17.25s", "rebalance"}},
	} {
		if tc.got != tc.want {
			t.Errorf("disconnect %+v, want %+v", tc.got, tc.want)
		}
	}
}
