package conntier

import (
	"time"

	"github.com/switchboard-iot/switchboard/device/protocol"
)

// A disconnect is why the node closes a session: the close code and reason
// the device reads, and the reason label of switchboard_conn_closes_total
// that dashboards read. Devices and dashboards depend on all three, so they
// are written here only; session.disconnect sends and counts them together.
type disconnect struct {
	code   int    // the close frame's code (device/protocol)
	reason string // the close frame's reason
	label  string // switchboard_conn_closes_total{reason}
}

var (
	// A newer session of the device took over, here or on another node.
	disconnectReplaced = disconnect{protocol.CloseReplaced, "replaced by a newer session", "replaced"}
	// The node is stopping: the device reconnects to another.
	disconnectDraining = disconnect{protocol.CloseGoingAway, "node draining", "draining"}
	// The device kept sending faster than its rate (limits.go).
	disconnectRateLimited = disconnect{protocol.CloseRateLimited, "rate limited", "rate_limited"}
	// The device did not read its frames: its send queue is full.
	disconnectSlow = disconnect{protocol.CloseTryAgainLater, "write queue full", "slow"}
	// The session's presence row could not be written.
	disconnectUnavailable = disconnect{protocol.CloseInternalError, "presence unavailable; reconnect later", "unavailable"}
	// A frame over MaxFrame. gorilla sends this close itself as it refuses
	// the frame, before the node hears of it.
	disconnectTooBig = disconnect{protocol.CloseTooBig, "", "too_big"}
)

// disconnectRevoked closes the session of a device that was disabled or
// deleted (how): the SDK reconnects, is refused with 401 and stops.
func disconnectRevoked(how string) disconnect {
	return disconnect{protocol.CloseBadMessage, "device " + how, "revoked"}
}

// disconnectBadMessage closes a session that sent a frame outside the
// protocol; reason says what was wrong with it.
func disconnectBadMessage(reason string) disconnect {
	return disconnect{protocol.CloseBadMessage, reason, "bad_message"}
}

// disconnectRebalance sheds a session of a node above its region's mean:
// the device reconnects after delay (rebalance.go).
func disconnectRebalance(delay time.Duration) disconnect {
	return disconnect{protocol.CloseRebalance, "rebalance: reconnect in " + delay.String(), "rebalance"}
}
