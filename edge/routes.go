package edge

import (
	"net/http"
	"runtime/debug"
	"strings"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/switchboard-iot/switchboard/internal/problem"
)

// Handler is the whole API surface of an edge.
func (e *Edge) Handler() http.Handler {
	r := chi.NewRouter()
	r.Use(e.recoverer, e.metrics.instrument, e.deadlines)
	r.NotFound(func(w http.ResponseWriter, _ *http.Request) {
		problem.Write(w, http.StatusNotFound, "not-found", "Not found", "no such endpoint")
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
		problem.Write(w, http.StatusMethodNotAllowed, "method-not-allowed", "Method not allowed", "this resource allows "+strings.Join(allowed, ", "))
	})

	r.Get("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	r.Get("/readyz", e.handleReady)
	if e.cfg.Metrics != nil {
		r.Handle("/metrics", promhttp.HandlerFor(e.cfg.Metrics, promhttp.HandlerOpts{}))
	}

	r.Route("/v1", func(r chi.Router) {
		r.Use(e.authenticate, e.limitKeys)
		r.Post("/devices", e.handleAddDevice)
		r.Get("/devices/{id}", e.handleGetDevice)
		r.Post("/devices/{id}/commands", e.handleSendCommand)
		r.Get("/commands/{id}", e.handleGetCommand)
		r.Get("/commands/{id}/events", e.handleCommandEvents)
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
				problem.Write(w, http.StatusInternalServerError, "internal", "Internal error", "")
			}
		}()
		next.ServeHTTP(w, r)
	})
}

func (e *Edge) handleReady(w http.ResponseWriter, r *http.Request) {
	select {
	case <-e.closing:
		problem.NotReady(w, "draining")
		return
	default:
	}
	if err := e.store.Pool().Ping(r.Context()); err != nil {
		problem.NotReady(w, "database unreachable")
		return
	}
	_, _ = w.Write([]byte("ok\n"))
}
