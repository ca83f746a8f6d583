// Package httpsec is what every HTTP listener of Switchboard (an edge's
// public port and ops listener, a node's device port and ops listener)
// shows an outsider alike: the security headers on every answer, and a
// readiness probe that says why only to those who may know.
package httpsec

import (
	"context"
	"net/http"
	"strings"

	"github.com/switchboard-iot/switchboard/internal/origin"
	"github.com/switchboard-iot/switchboard/internal/problem"
)

// HSTS is the Strict-Transport-Security of every answer given over HTTPS:
// browsers keep to HTTPS for this host for a year (the usual minimum). No
// includeSubDomains: the names beside and below the API's belong to the
// operator's other sites, which are not ours to pin to HTTPS.
const HSTS = "max-age=31536000"

// Headers sets the security headers before next answers: nosniff on every
// answer, so no browser reads a problem+json or an event stream as HTML,
// and HSTS on those given over HTTPS.
func Headers(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		if origin.HTTPS(r) {
			h.Set("Strict-Transport-Security", HSTS)
		}
		next.ServeHTTP(w, r)
	})
}

// PlainHTTPProxied reports whether the proxy in front says the client came
// over plain HTTP (X-Forwarded-Proto: http): such a request is to go to
// HTTPS. One without the header came straight to us.
func PlainHTTPProxied(r *http.Request) bool {
	return r.TLS == nil && strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "http")
}

// Readiness answers a readiness probe from notReady, which says why the
// process cannot serve now ("" when it can): 200 "ok", or 503 not-ready.
// The reason (draining, database unreachable, no certificate yet) is given
// with reasons only, on the ops listeners: the public ports' probes, for
// the platform's checks and load balancers, need the status alone.
func Readiness(notReady func(context.Context) string, reasons bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		switch why := notReady(r.Context()); {
		case why == "":
			_, _ = w.Write([]byte("ok\n"))
		case reasons:
			problem.NotReady.Write(w, why)
		default:
			problem.NotReady.Write(w, "")
		}
	}
}

// Health answers a liveness probe: the process is up.
func Health(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) }
