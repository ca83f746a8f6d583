package edge

import (
	"context"
	"net"
	"net/http"
	"runtime/debug"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/httpsec"
	"github.com/switchboard-iot/switchboard/internal/problem"
)

// Handler is the whole API surface of an edge, on its public port.
func (e *Edge) Handler() http.Handler {
	r := chi.NewRouter()
	r.Use(httpsec.Headers, e.recoverer, e.metrics.instrument, e.deadlines, e.redirectPlainHTTP)
	r.NotFound(func(w http.ResponseWriter, _ *http.Request) {
		problem.NotFound.Write(w, "no such endpoint")
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, req *http.Request) {
		// chi keeps the allowed methods to itself once this handler is
		// custom; ask the router which ones match (RFC 9110 requires Allow).
		var allowed []string
		for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
			if r.Match(chi.NewRouteContext(), m, req.URL.Path) {
				allowed = append(allowed, m)
			}
		}
		w.Header().Set("Allow", strings.Join(allowed, ", "))
		problem.MethodNotAllowed.Write(w, "this resource allows "+strings.Join(allowed, ", "))
	})

	// The connection nodes' ACME HTTP-01 challenges, on port 80 (Fly
	// routes it to the edges), answered from the shared storage.
	r.Get(acmeChallengePath+"*", func(w http.ResponseWriter, req *http.Request) {
		if e.cfg.HTTPChallenge == nil || !e.cfg.HTTPChallenge(w, req) {
			problem.NotFound.Write(w, "no ACME challenge is pending for this token")
		}
	})
	// For the platform's checks and load balancers (fly.toml, Caddyfile):
	// the status alone. The reasons and the metrics are on the ops listener.
	r.Get("/healthz", httpsec.Health)
	r.Get("/readyz", httpsec.Readiness(e.NotReady, false))

	// Pages mounted by the composition root (the web console, at "/");
	// the API stays under /v1 and takes the console's session cookie
	// (Config.SessionCookie) in place of a key.
	for _, register := range e.pages {
		register(r)
	}

	r.Route("/v1", func(r chi.Router) {
		r.Use(refuseUnstorableText)
		// The API's description holds no secret, and tools fetch it
		// before they have a key.
		r.Get("/openapi.json", serveOpenAPI)
		// Each route names the scope its API key needs (403 without it).
		r.Group(func(r chi.Router) {
			r.Use(e.authenticate, e.limitKeys, e.endWithGrant)
			r.With(e.requireScope(db.ScopeRead)).Get("/devices", e.handleListDevices)
			r.With(e.requireScope(db.ScopeAdmin)).Post("/devices", e.handleAddDevice)
			r.With(e.requireScope(db.ScopeRead)).Get("/devices/{id}", e.handleGetDevice)
			r.With(e.requireScope(db.ScopeRead)).Get("/devices/{id}/events", e.handleDeviceEvents)
			r.With(e.requireScope(db.ScopeRead)).Get("/devices/{id}/sessions", e.handleDeviceSessions)
			r.With(e.requireScope(db.ScopeRead)).Get("/devices/{id}/state", e.handleGetState)
			r.With(e.requireScope(db.ScopeCommands)).Patch("/devices/{id}/state/desired", e.handlePatchDesired)
			r.With(e.requireScope(db.ScopeRead)).Get("/events", e.handleFleetEvents)
			r.With(e.requireScope(db.ScopeAdmin)).Patch("/devices/{id}", e.handlePatchDevice)
			r.With(e.requireScope(db.ScopeCommands)).Post("/devices/{id}/commands", e.handleSendCommand)
			r.With(e.requireScope(db.ScopeCommands)).Get("/devices/{id}/commands", e.handleDeviceCommands)
			r.With(e.requireScope(db.ScopeCommands)).Get("/commands", e.handleListCommands)
			r.With(e.requireScope(db.ScopeCommands)).Get("/commands/{id}", e.handleGetCommand)
			r.With(e.requireScope(db.ScopeCommands)).Get("/commands/{id}/events", e.handleCommandEvents)
			r.With(e.requireScope(db.ScopeCommands)).Post("/commands/{id}/cancel", e.handleCancelCommand)
			r.With(e.requireScope(db.ScopeCommands)).Post("/jobs", e.handleCreateJob)
			r.With(e.requireScope(db.ScopeCommands)).Get("/jobs", e.handleListJobs)
			r.With(e.requireScope(db.ScopeCommands)).Get("/jobs/{id}", e.handleGetJob)
			r.With(e.requireScope(db.ScopeCommands)).Get("/jobs/{id}/commands", e.handleJobCommands)
			r.With(e.requireScope(db.ScopeCommands)).Get("/jobs/{id}/targets", e.handleJobTargets)
			r.With(e.requireScope(db.ScopeCommands)).Post("/jobs/{id}/cancel", e.handleCancelJob)

			// Managing devices and API keys (manage.go, apikeys.go).
			r.Group(func(r chi.Router) {
				r.Use(e.requireScope(db.ScopeAdmin))
				r.Delete("/devices/{id}", e.handleDeleteDevice)
				r.Post("/devices/{id}/disable", e.handleDisableDevice)
				r.Post("/devices/{id}/enable", e.handleEnableDevice)
				r.Post("/devices/{id}/rotate", e.handleRotateDevice)
				r.Post("/devices:import", e.handleImportDevices)
				r.Post("/apikeys", e.handleAddAPIKey)
				r.Get("/apikeys", e.handleListAPIKeys)
				r.Delete("/apikeys/{id}", e.handleRevokeAPIKey)
				// Webhooks (webhooks.go).
				r.Post("/webhooks", e.handleCreateWebhook)
				r.Get("/webhooks", e.handleListWebhooks)
				r.Get("/webhooks/{id}", e.handleGetWebhook)
				r.Patch("/webhooks/{id}", e.handlePatchWebhook)
				r.Delete("/webhooks/{id}", e.handleDeleteWebhook)
				r.Get("/webhooks/{id}/deliveries", e.handleWebhookDeliveries)
			})
		})
	})
	return r
}

// recoverer turns a handler's panic into a logged error and a problem+json
// 500, instead of a bare text body.
func (e *Edge) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				e.log.Error("handler panicked", "panic", v, "method", r.Method, "path", r.URL.Path, "stack", string(debug.Stack()))
				problem.Internal.Write(w, "")
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// NotReady says why the edge cannot serve now; "" when it can. The
// process's ops listener (app.ServeOps) tells it; the public /readyz does
// not.
func (e *Edge) NotReady(ctx context.Context) string {
	select {
	case <-e.closing:
		return "draining"
	default:
	}
	if err := e.store.Ping(ctx); err != nil {
		return "database unreachable"
	}
	if !e.bootstrap.stored.Load() {
		return "bootstrap API key not stored yet"
	}
	return ""
}

const acmeChallengePath = "/.well-known/acme-challenge/"

// redirectPlainHTTP sends a request that reached the proxy in front of the
// edge over plain HTTP (X-Forwarded-Proto: http, as Fly's and Caddy's
// proxies set it) to HTTPS, except the ACME challenges, which must be
// answered on port 80 whatever their host (the nodes' domain). Fly's own
// HTTPS redirect is off for that reason. It redirects only to the hosts
// the edge serves (Config.Hosts): the Host header is the client's to
// write, and a redirect built from it would send a browser anywhere.
func (e *Edge) redirectPlainHTTP(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !httpsec.PlainHTTPProxied(r) || strings.HasPrefix(r.URL.Path, acmeChallengePath) {
			next.ServeHTTP(w, r)
			return
		}
		host, ok := e.hosts[hostname(r.Host)]
		if !ok {
			problem.MisdirectedRequest.Write(w, "plain HTTP for a host this edge does not serve")
			return
		}
		http.Redirect(w, r, "https://"+host+r.URL.RequestURI(), http.StatusPermanentRedirect)
	})
}

// hostname is a Host header's or a configured host's name, without its
// port, in lower case.
func hostname(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	return strings.ToLower(strings.TrimSuffix(host, "."))
}
