// Package console is Switchboard's web console, served by the edge at "/"
// (the API stays under /v1): server-rendered pages (html/template) and one
// small plain JavaScript file, all embedded in the binary, with no build
// step and no request to any other host.
//
// An operator signs in with an API key, which becomes a session
// (console_sessions) named by an HttpOnly, SameSite=Strict cookie. The
// pages read through db.Store; their live parts (app.js) call the real
// /v1 API with that cookie, which the edge accepts in place of the key, so
// a browser's EventSource (which cannot send headers) can stream. Every
// state-changing request carries the session's CSRF token too.
package console

import (
	"context"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/authguard"
	"github.com/switchboard-iot/switchboard/internal/pgtext"
	"github.com/switchboard-iot/switchboard/internal/problem"
)

//go:embed templates/*.html static/*
var files embed.FS

// Cookie names the session cookie (the edge's API reads it too).
const Cookie = "sb_session"

// Lifetimes of a session and of a one-time sign-in link.
const (
	SessionTTL = 12 * time.Hour
	LinkTTL    = 10 * time.Minute
)

// Config is what the console needs.
type Config struct {
	Store *db.Store
	Log   *slog.Logger
	// ForgetSession drops a signed-out session (its cookie's value) from
	// the edge's cache of checked keys and sessions; nil: nothing cached.
	ForgetSession func(token string)
	// Guard, when set, is asked before a credential is looked up (a
	// pasted key, a sign-in link, a session cookie; named by its digest in
	// hex): Throttle when the source address failed too often (it has
	// answered 429), Refuse when the credential failed moments ago (the
	// console answers as for an unknown one, without a look-up). Failed
	// records one the database did not know. The edge passes its auth
	// guard, so the API and the console share one budget per address.
	Guard  func(w http.ResponseWriter, r *http.Request, credential string) authguard.Verdict
	Failed func(r *http.Request, credential string)
	// LimitKey, when set, takes one of the key's request tokens for each
	// request of a session, as every /v1 request does; false: it has
	// answered 429. The edge passes its per-key limit.
	LimitKey func(w http.ResponseWriter, keyID int64) bool
}

// Console serves the pages.
type Console struct {
	cfg   Config
	store *db.Store
	log   *slog.Logger
	pages map[string]*template.Template
}

// New parses the embedded templates; a broken template is a bug caught by
// any test that starts an edge.
func New(cfg Config) *Console {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	c := &Console{cfg: cfg, store: cfg.Store, log: cfg.Log, pages: map[string]*template.Template{}}
	funcs := template.FuncMap{
		"ts":      func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
		"tsp":     func(t *time.Time) string { return t.UTC().Format(time.RFC3339) },
		"short":   func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05") },
		"json":    prettyJSON,
		"seconds": func(f float64) string { return fmt.Sprintf("%.0f", f) },
		"join":    strings.Join,
		"whActions": func(csrf string, w db.Webhook, from string) webhookActions {
			return webhookActions{CSRF: csrf, Webhook: w, From: from}
		},
	}
	for _, name := range []string{"sign-in", "link", "overview", "devices", "device", "delete", "rotated", "jobs", "job", "webhooks", "webhook", "error"} {
		parts := []string{"templates/layout.html", "templates/" + name + ".html"}
		if name == "webhooks" || name == "webhook" {
			parts = append(parts, "templates/webhook-parts.html")
		}
		c.pages[name] = template.Must(template.New("").Funcs(funcs).ParseFS(files, parts...))
	}
	return c
}

// Register adds the console's routes to the edge's router.
func (c *Console) Register(r chi.Router) {
	static, _ := fs.Sub(files, "static")
	fileServer := http.StripPrefix("/static/", http.FileServerFS(static))
	r.Get("/static/*", func(w http.ResponseWriter, r *http.Request) {
		// Short: a new binary's files reach browsers within a minute.
		w.Header().Set("Cache-Control", "public, max-age=60")
		fileServer.ServeHTTP(w, r)
	})
	r.Group(func(r chi.Router) {
		r.Use(securityHeaders, c.refuseNonText)
		r.Get("/sign-in", c.handleSignInPage)
		r.Post("/sign-in", c.handleSignIn)
		r.Get("/sign-in/{token}", c.handleSignInLink)
		r.Post("/sign-out", c.handleSignOut)
		r.Group(func(r chi.Router) {
			r.Use(c.requireSession)
			r.Get("/", c.handleOverview)
			r.Get("/devices", c.handleDevices)
			r.Get("/devices/{id}", c.handleDevice)
			// Managing a device (scope admin; manage.go).
			r.Post("/devices/{id}/disable", c.handleDisable)
			r.Post("/devices/{id}/enable", c.handleEnable)
			r.Post("/devices/{id}/rotate", c.handleRotate)
			r.Post("/devices/{id}/labels", c.handleLabels)
			r.Get("/devices/{id}/delete", c.handleDeleteConfirm)
			r.Post("/devices/{id}/delete", c.handleDelete)
			// Changing a device's desired state (scope commands; state.go).
			r.Post("/devices/{id}/state/desired", c.handlePatchDesired)
			r.Get("/jobs", c.handleJobs)
			r.Get("/jobs/{id}", c.handleJob)
			// Webhook endpoints and their deliveries (scope admin; webhooks.go).
			r.Get("/webhooks", c.handleWebhooks)
			r.Get("/webhooks/{id}", c.handleWebhook)
			r.Post("/webhooks/{id}/pause", c.handlePauseWebhook)
			r.Post("/webhooks/{id}/resume", c.handleResumeWebhook)
			r.With(needScope(db.ScopeRead)).Get("/console/api/overview", c.handleOverviewJSON)
			r.With(needScope(db.ScopeRead)).Get("/console/api/stats", c.handleStatsJSON)
		})
	})
}

// securityHeaders keep the pages to this host's own files: no inline
// script, no framing, no other host.
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "same-origin")
		h.Set("Cache-Control", "no-store")
		next.ServeHTTP(w, r)
	})
}

// view is what every page's template gets.
type view struct {
	Title   string
	Nav     string // the nav link to mark current
	Session *db.ConsoleSession
	// What the key's scopes allow.
	CanCommands, CanRead, CanAdmin bool
	DBError                        string // set: the banner says the database is unreachable
	Error                          string // the page's own error, said in #error
	Data                           any
}

type sessionCtx struct{}

func session(r *http.Request) *db.ConsoleSession {
	s, _ := r.Context().Value(sessionCtx{}).(*db.ConsoleSession)
	return s
}

// requireSession lets through requests with a live session whose key is
// neither revoked nor expired; pages send the others to /sign-in (303),
// the JSON endpoints answer 401, and both drop the dead cookie. A cookie
// is looked up behind the auth guard, as the API's keys are, and each
// request takes one of the key's request tokens.
func (c *Console) requireSession(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ck, err := r.Cookie(Cookie)
		refuse := func() {
			if ck != nil {
				clearCookie(w, r) // so that the browser stops sending it
			}
			if isAPI(r) {
				writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "sign in again"})
				return
			}
			http.Redirect(w, r, "/sign-in", http.StatusSeeOther)
		}
		if err != nil || ck.Value == "" {
			refuse()
			return
		}
		s, found, answered := c.sessionOf(w, r, ck.Value)
		switch {
		case answered:
			return
		case !found || s.Key.RevokedAt != nil || s.Key.Expired(time.Now()):
			refuse()
			return
		}
		if c.cfg.LimitKey != nil && !c.cfg.LimitKey(w, s.Key.ID) {
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), sessionCtx{}, &s)))
	})
}

// isAPI says whether r is for one of the console's JSON endpoints, which
// answer in JSON where a page answers in HTML.
func isAPI(r *http.Request) bool { return strings.HasPrefix(r.URL.Path, "/console/api/") }

// needScope refuses a JSON endpoint to a session whose key lacks scope, as
// the API refuses a route (403 insufficient-scope).
func needScope(scope db.Scope) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if s := session(r); s == nil || !s.Key.Has(scope) {
				problem.InsufficientScope.Write(w, fmt.Sprintf("this needs an API key with the scope %q; the session's key lacks it", scope))
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// refuseNonText answers 400 to an address whose path or query holds bytes
// that are not text (invalid UTF-8, NUL), before any handler or the
// database sees them: PostgreSQL refuses them in a text parameter.
func (c *Console) refuseNonText(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if pgtext.CheckRequest(r) == nil {
			next.ServeHTTP(w, r)
			return
		}
		const msg = "This address holds bytes that are not text (invalid UTF-8 or NUL): check the link."
		if isAPI(r) {
			problem.InvalidQuery.Write(w, msg)
			return
		}
		c.render(w, http.StatusBadRequest, "error", view{Title: "Bad request", Error: msg})
	})
}

// newView starts a page's view for the signed-in session.
func newView(r *http.Request, title, nav string) view {
	s := session(r)
	v := view{Title: title, Nav: nav, Session: s}
	if s != nil {
		v.CanCommands, v.CanRead, v.CanAdmin = s.Key.Has(db.ScopeCommands), s.Key.Has(db.ScopeRead), s.Key.Has(db.ScopeAdmin)
	}
	return v
}

func (c *Console) render(w http.ResponseWriter, status int, page string, v view) {
	var b strings.Builder
	if err := c.pages[page].ExecuteTemplate(&b, "layout", v); err != nil {
		c.log.Error("rendering a console page", "page", page, "err", err)
		http.Error(w, "the page could not be rendered", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(b.String()))
}

// lacksScope answers a page the key's scopes do not allow: 403, saying
// what the key may not do and which scope it lacks.
func (c *Console) lacksScope(w http.ResponseWriter, v view, what, scope string) {
	v.Error = "This API key may not " + what + " (it lacks the " + scope + " scope): sign in with a key that has it."
	c.render(w, http.StatusForbidden, "error", v)
}

// unavailable answers a page whose store calls failed. When PostgreSQL
// answered with an error (the query is at fault, not the database's
// reachability), 500 says so; otherwise 503 with the database banner. The
// JSON endpoints answer the same as JSON, which the script shows in the
// live banner.
func (c *Console) unavailable(w http.ResponseWriter, r *http.Request, v *view, err error) {
	status, msg := http.StatusServiceUnavailable, "The database is unreachable: "+shortErr(err)+", retrying"
	if code := db.ErrorCode(err); code != "" {
		status, msg = http.StatusInternalServerError, "A query of this page failed (PostgreSQL error "+code+"); the edge's log has the details"
		c.log.Error("console: a query failed", "path", r.URL.Path, "err", err)
	} else {
		c.log.Warn("console: the database is unreachable", "path", r.URL.Path, "err", err)
		w.Header().Set("Retry-After", "5")
	}
	if strings.HasPrefix(r.URL.Path, "/console/api/") {
		writeJSON(w, status, map[string]string{"error": msg})
		return
	}
	if v == nil {
		v = &view{Title: "Unavailable"}
	}
	v.DBError = msg
	v.Data = nil
	c.render(w, status, "error", *v)
}

// shortErr says why the database could not be reached, without the
// server's address.
func shortErr(err error) string {
	if errors.Is(err, context.DeadlineExceeded) {
		return "it did not answer in time"
	}
	return "the connection failed"
}

func (c *Console) notFound(w http.ResponseWriter, v view, what string) {
	v.Title, v.Error = "Not found", what
	c.render(w, http.StatusNotFound, "error", v)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func prettyJSON(raw json.RawMessage) string {
	var v any
	if len(raw) == 0 || json.Unmarshal(raw, &v) != nil {
		return string(raw)
	}
	out, _ := json.MarshalIndent(v, "", "  ")
	return string(out)
}

// checkCSRF compares a form's csrf field with the session's.
func checkCSRF(r *http.Request, want string) bool {
	got := r.PostFormValue("csrf")
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// guard runs Config.Guard on a credential's digest.
func (c *Console) guard(w http.ResponseWriter, r *http.Request, digest []byte) authguard.Verdict {
	if c.cfg.Guard == nil {
		return authguard.Check
	}
	return c.cfg.Guard(w, r, hex.EncodeToString(digest))
}

// failed runs Config.Failed on a credential's digest.
func (c *Console) failed(r *http.Request, digest []byte) {
	if c.cfg.Failed != nil {
		c.cfg.Failed(r, hex.EncodeToString(digest))
	}
}
