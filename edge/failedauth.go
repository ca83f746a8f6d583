package edge

import (
	"net/http"

	"github.com/switchboard-iot/switchboard/internal/authguard"
	"github.com/switchboard-iot/switchboard/internal/clientaddr"
	"github.com/switchboard-iot/switchboard/internal/problem"
)

// GuardAuth asks the auth guard about a credential about to be looked up
// (see AdmitAuth). False means it has answered without a look-up: 429 for
// a source address that failed too often, 401 for a credential that
// failed moments ago.
func (e *Edge) GuardAuth(w http.ResponseWriter, r *http.Request, credential string) bool {
	switch e.AdmitAuth(w, r, credential) {
	case authguard.Throttle:
		return false
	case authguard.Refuse:
		e.refusedAuth(r, http.StatusUnauthorized, "failed_recently", 0)
		unauthorized(w, "unknown or revoked API key")
		return false
	}
	return true
}

// AdmitAuth is GuardAuth for callers that answer a refused credential in
// their own way (the console's pages send the browser to sign in): it
// answers only a throttled address (429), and returns the guard's verdict.
// credential is the hex SHA-256 digest of the secret about to be looked
// up: an API key, a console session's cookie or a sign-in link (random
// tokens all, so one table of failures serves them).
func (e *Edge) AdmitAuth(w http.ResponseWriter, r *http.Request, credential string) authguard.Verdict {
	v, retryAfter := e.guard.Admit(clientaddr.FromRequest(r, e.cfg.TrustedProxies), "apikey:"+credential)
	if v == authguard.Throttle {
		e.refusedAuth(r, http.StatusTooManyRequests, "throttled", 0)
		e.metrics.limited.WithLabelValues("auth_failures").Inc()
		problem.TooManyAuthFailures.WriteRetryAfter(w,
			"this address presented too many unknown API keys or console sessions; try again later", retryAfter)
	}
	return v
}

// refusedAuth logs a request refused for its credentials, with the
// client's address (through trusted proxies) and the key when it is known
// (revoked, expired, lacking a scope): at most RefusalLogs lines a
// LogInterval, then one counting the rest (lograte), so that a flood of
// bad keys costs the log a few lines a minute. reason is a word for
// operators; the answer's problem type says it to the client.
func (e *Edge) refusedAuth(r *http.Request, status int, reason string, key int64) {
	args := []any{"remote", clientaddr.FromRequest(r, e.cfg.TrustedProxies).String(), "status", status, "reason", reason,
		"method", r.Method, "path", r.URL.Path}
	if key != 0 {
		args = append(args, "key", key)
	}
	e.refusals.Log(args...)
}

// AuthFailed records a credential (named as for AdmitAuth) the database
// did not know.
func (e *Edge) AuthFailed(r *http.Request, credential string) {
	e.guard.Failed(clientaddr.FromRequest(r, e.cfg.TrustedProxies), "apikey:"+credential)
}
