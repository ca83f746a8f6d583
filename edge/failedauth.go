package edge

import (
	"net/http"

	"github.com/switchboard-iot/switchboard/internal/authguard"
	"github.com/switchboard-iot/switchboard/internal/clientaddr"
	"github.com/switchboard-iot/switchboard/internal/problem"
)

// GuardAuth asks the auth guard about an API key about to be looked up
// (keyHash, hex). False means it has answered without a look-up: 429 for a
// source address that failed too often, 401 for a key that failed moments
// ago.
func (e *Edge) GuardAuth(w http.ResponseWriter, r *http.Request, keyHash string) bool {
	switch v, retryAfter := e.guard.Admit(clientaddr.FromRequest(r, e.cfg.TrustedProxies), "apikey:"+keyHash); v {
	case authguard.Throttle:
		e.metrics.limited.WithLabelValues("auth_failures").Inc()
		problem.TooManyAuthFailures.WriteRetryAfter(w,
			"this address presented too many unknown API keys; try again later", retryAfter)
		return false
	case authguard.Refuse:
		unauthorized(w, "unknown or revoked API key")
		return false
	}
	return true
}

// AuthFailed records an API key the database did not know.
func (e *Edge) AuthFailed(r *http.Request, keyHash string) {
	e.guard.Failed(clientaddr.FromRequest(r, e.cfg.TrustedProxies), "apikey:"+keyHash)
}
