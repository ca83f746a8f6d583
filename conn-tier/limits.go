package conntier

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"time"

	"golang.org/x/time/rate"

	"github.com/switchboard-iot/switchboard/internal/authguard"
	"github.com/switchboard-iot/switchboard/internal/clientaddr"
	"github.com/switchboard-iot/switchboard/internal/expiring"
	"github.com/switchboard-iot/switchboard/internal/problem"
	"github.com/switchboard-iot/switchboard/internal/ratelimit"
)

// deviceBudget is a device's budget of messages on this node: one small
// token bucket, no goroutine, shared by the device's sessions here and kept
// after the last one ends until it has refilled (a new bucket would be the
// same), so that reconnecting does not refill it.
type deviceBudget struct {
	limit *rate.Limiter
	// sessions counts the device's sessions here that hold the budget;
	// changed only under the lock of Node.budgets.
	sessions int
}

// held is the expiry of a budget that a session holds: it ends with the
// last session, not with time.
var held = time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)

// keepUntil is when the budget may be forgotten.
func (b *deviceBudget) keepUntil(now time.Time) time.Time {
	if b.sessions > 0 {
		return held
	}
	missing := float64(b.limit.Burst()) - b.limit.TokensAt(now) // a debt makes it more than a burst
	return now.Add(time.Duration(missing / float64(b.limit.Limit()) * float64(time.Second)))
}

// newDeviceLimits makes the node's tables of device budgets and connect
// rates, nil where the config turns a limit off. Their keys are devices
// whose credentials were checked; each table holds twice the node's
// sessions at most: the devices connected, and as many that just left.
func newDeviceLimits(cfg Config) (*expiring.Map[string, *deviceBudget], *ratelimit.Table) {
	size := 2 * cfg.MaxSessions
	var budgets *expiring.Map[string, *deviceBudget]
	if cfg.DeviceRate > 0 && cfg.DeviceBurst > 0 {
		budgets = expiring.New[string, *deviceBudget](size)
	}
	var connects *ratelimit.Table
	if cfg.DeviceConnectRate > 0 {
		connects = ratelimit.NewTable(cfg.DeviceConnectRate, cfg.DeviceConnectBurst, size)
	}
	return budgets, connects
}

// holdBudget gives a new session of the device the budget its earlier
// sessions on this node left, or a full one; nil when there is no limit.
func (n *Node) holdBudget(deviceID string) *deviceBudget {
	if n.budgets == nil {
		return nil
	}
	var got *deviceBudget
	n.budgets.Do(deviceID, time.Now(), func(b *deviceBudget, found bool) (*deviceBudget, time.Time) {
		if !found {
			b = &deviceBudget{limit: rate.NewLimiter(rate.Limit(n.cfg.DeviceRate), n.cfg.DeviceBurst)}
		}
		b.sessions++
		got = b
		return b, held
	})
	return got
}

// releaseBudget lets go of a session's budget as the session ends. A budget
// the table dropped meanwhile (it was full) goes back, unless a later
// session of the device made another.
func (n *Node) releaseBudget(deviceID string, b *deviceBudget) {
	if b == nil {
		return
	}
	now := time.Now()
	n.budgets.Do(deviceID, now, func(cur *deviceBudget, found bool) (*deviceBudget, time.Time) {
		b.sessions--
		if found && cur != b {
			return cur, cur.keepUntil(now)
		}
		return b, b.keepUntil(now)
	})
}

// admitConnect takes one of the device's connects on this node. Past its
// connect rate it answers 429 with Retry-After, and a refusal costs no
// token. It runs after the credentials check, so that no one can spend
// another device's connects, and before anything is written.
func (n *Node) admitConnect(w http.ResponseWriter, deviceID string) bool {
	if n.connectRates == nil {
		return true
	}
	st := n.connectRates.Take(deviceID, time.Now())
	if st.OK {
		return true
	}
	n.metrics.connects.WithLabelValues("throttled").Inc()
	problem.TooManyConnects.WriteRetryAfter(w, "this device connects too often; try again later", st.RetryAfter)
	return false
}

// charge counts a message of this type against the device's rate. over
// says it came faster than the rate allows: the caller drops an event, but
// stores a reply and answers a ping all the same. Messages over the rate
// still count, as a debt the device pays back by slowing down; once the
// debt makes another burst the device has persisted, and the session is
// closed with 4029 (closed).
func (s *session) charge(msgType string) (over, closed bool) {
	if s.budget == nil {
		return false, false
	}
	limit := s.budget.limit
	now := time.Now()
	limit.ReserveN(now, 1) // never refused: an unpaid token is a debt
	tokens := limit.TokensAt(now)
	if tokens >= 0 {
		return false, false
	}
	s.node.metrics.overRate.WithLabelValues(msgType).Inc()
	if tokens >= float64(1-limit.Burst()) {
		return true, false
	}
	s.disconnect(disconnectRateLimited)
	return true, true
}

// guardAuth asks the auth guard about credentials about to be looked up.
// False means it has answered without a look-up: 429 for a source address
// that failed too often, 401 for credentials that failed moments ago.
func (n *Node) guardAuth(w http.ResponseWriter, r *http.Request, deviceID, devSecret string) bool {
	switch v, retryAfter := n.guard.Admit(clientaddr.Peer(r), unknownDevice(deviceID), wrongSecret(deviceID, devSecret)); v {
	case authguard.Throttle:
		n.metrics.connects.WithLabelValues("throttled").Inc()
		n.refusedConnect(r, deviceID, http.StatusTooManyRequests, "throttled")
		problem.TooManyAuthFailures.WriteRetryAfter(w,
			"this address presented too many wrong credentials; try again later", retryAfter)
		return false
	case authguard.Refuse:
		n.metrics.connects.WithLabelValues("unauthorized").Inc()
		n.refusedConnect(r, deviceID, http.StatusUnauthorized, "failed_recently")
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
