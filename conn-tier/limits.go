package conntier

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"time"

	"github.com/google/uuid"
	"golang.org/x/time/rate"

	"github.com/switchboard-iot/switchboard/internal/authguard"
	"github.com/switchboard-iot/switchboard/internal/clientaddr"
	"github.com/switchboard-iot/switchboard/internal/problem"
)

// newDeviceRate is a session's budget of messages: one small token bucket,
// no goroutine, whatever the number of sessions.
func (n *Node) newDeviceRate() *rate.Limiter {
	if n.cfg.DeviceRate < 0 || n.cfg.DeviceBurst <= 0 {
		return nil
	}
	return rate.NewLimiter(rate.Limit(n.cfg.DeviceRate), n.cfg.DeviceBurst)
}

// charge counts a message of this type against the device's rate. over
// says it came faster than the rate allows: the caller drops an event, but
// stores a reply and answers a ping all the same. Messages over the rate
// still count, as a debt the device pays back by slowing down; once the
// debt makes another burst the device has persisted, and the session is
// closed with 4029 (closed).
func (s *session) charge(msgType string) (over, closed bool) {
	if s.rate == nil {
		return false, false
	}
	now := time.Now()
	s.rate.ReserveN(now, 1) // never refused: an unpaid token is a debt
	tokens := s.rate.TokensAt(now)
	if tokens >= 0 {
		return false, false
	}
	s.node.metrics.overRate.WithLabelValues(msgType).Inc()
	if tokens >= float64(1-s.rate.Burst()) {
		return true, false
	}
	s.disconnect(disconnectRateLimited)
	return true, true
}

// awaits reports whether the session wrote this command and waits for its
// reply: such a reply is free, since the node paces the commands it sends.
func (s *session) awaits(id uuid.UUID) bool {
	s.inflightMu.Lock()
	defer s.inflightMu.Unlock()
	_, ok := s.awaiting[id]
	return ok
}

// guardAuth asks the auth guard about credentials about to be looked up.
// False means it has answered without a look-up: 429 for a source address
// that failed too often, 401 for credentials that failed moments ago.
func (n *Node) guardAuth(w http.ResponseWriter, r *http.Request, deviceID, devSecret string) bool {
	switch v, retryAfter := n.guard.Admit(clientaddr.Peer(r), unknownDevice(deviceID), wrongSecret(deviceID, devSecret)); v {
	case authguard.Throttle:
		n.metrics.connects.WithLabelValues("throttled").Inc()
		problem.TooManyAuthFailures.WriteRetryAfter(w,
			"this address presented too many wrong credentials; try again later", retryAfter)
		return false
	case authguard.Refuse:
		n.metrics.connects.WithLabelValues("unauthorized").Inc()
		unauthorized(w, "unknown device or wrong secret")
		return false
	}
	return true
}

// authFailed records credentials the database refused: an unknown device
// is remembered by its id (any secret fails), a wrong secret with the id.
func (n *Node) authFailed(r *http.Request, deviceID, devSecret string, known bool) {
	credential := unknownDevice(deviceID)
	if known {
		credential = wrongSecret(deviceID, devSecret)
	}
	n.guard.Failed(clientaddr.Peer(r), credential)
}

func unknownDevice(id string) string { return "device:" + id }

func wrongSecret(id, devSecret string) string {
	h := sha256.Sum256([]byte(devSecret))
	return "device:" + id + ":" + hex.EncodeToString(h[:])
}
