package conntier

import (
	"time"

	"github.com/switchboard-iot/switchboard/internal/expiring"
)

// revocationMemory is how long a node remembers that a device was disabled
// or deleted: longer than a connect request can take from its credentials
// check to its session (the check's and the upgrade's deadlines).
const revocationMemory = time.Minute

// maxRevocations bounds the memory: more devices than a fleet-wide disable
// or delete reaches a node with in revocationMemory.
const maxRevocations = 1 << 20

// revocations remembers when this node heard that devices were disabled or
// deleted. A connect whose credentials were read just before the change
// passes its check; if the notice then reaches the node before the session
// is in the hub, no session is there to close. The session finds the
// notice here as it opens, and closes itself.
type revocations struct {
	heard *expiring.Map[string, revocation] // by device id
}

type revocation struct {
	at     time.Time
	reason string
}

func newRevocations() revocations {
	return revocations{heard: expiring.New[string, revocation](maxRevocations)}
}

// add records a revocation heard at now, for revocationMemory.
func (r revocations) add(deviceID, reason string, now time.Time) {
	r.heard.Put(deviceID, revocation{at: now, reason: reason}, now, revocationMemory)
}

// since returns why the device was revoked, if this node heard so after
// checkedAt.
func (r revocations) since(deviceID string, checkedAt time.Time) (reason string, ok bool) {
	rev, ok := r.heard.Get(deviceID, time.Now())
	if !ok || !rev.at.After(checkedAt) {
		return "", false
	}
	return rev.reason, true
}

// closeDevice closes the device's session here, if any, with 1008: it was
// disabled or deleted (reason). The SDK reconnects, is refused with 401 and
// stops. The revocation is recorded first: a session that enters the hub
// after the look below finds it (serve).
func (n *Node) closeDevice(deviceID, reason string) {
	n.revocations.add(deviceID, reason, time.Now())
	if s := n.hub.get(deviceID); s != nil {
		n.log.Info("closing the session of a device that was "+reason, "device", deviceID, "session", s.id)
		go s.disconnect(disconnectRevoked(reason))
	}
}
