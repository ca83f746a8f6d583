package console

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/authguard"
	"github.com/switchboard-iot/switchboard/internal/origin"
	"github.com/switchboard-iot/switchboard/internal/problem"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

// NewSignInLink makes a one-time sign-in link for the API key with this
// id (switchboard dev prints one): the path to open on the edge, which
// works once, within LinkTTL.
func NewSignInLink(ctx context.Context, store *db.Store, apiKeyID int64) (path string, err error) {
	token := secret.RandomHex(32)
	if err := store.CreateConsoleLink(ctx, secret.Hash(token), apiKeyID, LinkTTL); err != nil {
		return "", err
	}
	return "/sign-in/" + token, nil
}

// What a sign-in with a credential the database does not know is told
// (also when the auth guard refuses it without a look-up).
const (
	unknownKey  = "Unknown API key: check that it was pasted whole."
	unknownLink = "This sign-in link was used already, has expired or is unknown."
)

func (c *Console) handleSignInPage(w http.ResponseWriter, r *http.Request) {
	c.render(w, http.StatusOK, "sign-in", view{Title: "Sign in"})
}

// handleSignIn checks a pasted API key as the API does, and turns it into
// a session. No session exists yet, so no CSRF token: the form's worst
// misuse is another site's page posting the attacker's own key, signing
// the victim's browser in as the attacker (login CSRF). A browser says
// where a form came from (Sec-Fetch-Site, Origin): one from another site
// is refused before anything is looked up.
func (c *Console) handleSignIn(w http.ResponseWriter, r *http.Request) {
	if why := origin.CrossSite(r); why != "" {
		problem.CrossSiteRequest.Write(w, "a sign-in must come from this site's own form: "+why)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 4096)
	key := strings.TrimSpace(r.PostFormValue("key"))
	if key == "" {
		c.signInError(w, http.StatusUnauthorized, "Paste an API key (switchboard apikeys add NAME prints one).")
		return
	}
	digest := secret.Hash(key)
	switch c.guard(w, r, digest) {
	case authguard.Throttle:
		return
	case authguard.Refuse:
		c.signInError(w, http.StatusUnauthorized, unknownKey)
		return
	}
	k, err := c.store.APIKeyByHash(r.Context(), digest)
	switch {
	case errors.Is(err, db.ErrNotFound):
		c.failed(r, digest)
		c.signInError(w, http.StatusUnauthorized, unknownKey)
		return
	case err != nil:
		c.unavailable(w, r, &view{Title: "Sign in"}, err)
		return
	}
	if !c.usable(w, k) {
		return
	}
	c.startSession(w, r, k)
}

// handleSignInLink consumes a one-time link and signs in as its key.
func (c *Console) handleSignInLink(w http.ResponseWriter, r *http.Request) {
	digest := secret.Hash(chi.URLParam(r, "token"))
	switch c.guard(w, r, digest) {
	case authguard.Throttle:
		return
	case authguard.Refuse:
		c.linkSpent(w)
		return
	}
	id, err := c.store.ConsumeConsoleLink(r.Context(), digest)
	switch {
	case errors.Is(err, db.ErrNotFound):
		c.failed(r, digest)
		c.linkSpent(w)
		return
	case err != nil:
		c.unavailable(w, r, &view{Title: "Sign in"}, err)
		return
	}
	k, err := c.store.APIKeyByID(r.Context(), id)
	if err != nil {
		c.unavailable(w, r, &view{Title: "Sign in"}, err)
		return
	}
	if !c.usable(w, k) {
		return
	}
	c.startSession(w, r, k)
}

// linkSpent answers a sign-in link opened again, expired or unknown: a
// page that says so and links to the sign-in form (401, as for a key the
// database does not know).
func (c *Console) linkSpent(w http.ResponseWriter) {
	c.render(w, http.StatusUnauthorized, "link", view{Title: "Sign-in link used", Error: unknownLink})
}

// usable refuses revoked and expired keys, saying which.
func (c *Console) usable(w http.ResponseWriter, k db.APIKey) bool {
	switch {
	case k.RevokedAt != nil:
		c.signInError(w, http.StatusUnauthorized, "This API key was revoked: ask for a new one (switchboard apikeys add NAME).")
		return false
	case k.Expired(time.Now()):
		c.signInError(w, http.StatusUnauthorized, "This API key expired at "+k.ExpiresAt.UTC().Format(time.RFC3339)+".")
		return false
	}
	return true
}

func (c *Console) signInError(w http.ResponseWriter, status int, msg string) {
	c.render(w, status, "sign-in", view{Title: "Sign in", Error: msg})
}

func (c *Console) startSession(w http.ResponseWriter, r *http.Request, k db.APIKey) {
	token := secret.RandomHex(32)
	if err := c.store.CreateConsoleSession(r.Context(), secret.Hash(token), k.ID, secret.RandomHex(32), SessionTTL); err != nil {
		c.unavailable(w, r, &view{Title: "Sign in"}, err)
		return
	}
	http.SetCookie(w, &http.Cookie{
		Name: Cookie, Value: token, Path: "/",
		MaxAge:   int(SessionTTL.Seconds()),
		HttpOnly: true, SameSite: http.SameSiteStrictMode,
		// A forged X-Forwarded-Proto only makes the cookie stricter.
		Secure: origin.HTTPS(r),
	})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// handleSignOut ends the session: its row, the edge's cached copy and the
// cookie. The form carries the CSRF token, and a browser says it came from
// this site, so another site cannot sign an operator out.
func (c *Console) handleSignOut(w http.ResponseWriter, r *http.Request) {
	if why := origin.CrossSite(r); why != "" {
		problem.CrossSiteRequest.Write(w, why)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 4096)
	ck, err := r.Cookie(Cookie)
	if err != nil || ck.Value == "" {
		http.Redirect(w, r, "/sign-in", http.StatusSeeOther)
		return
	}
	s, found, answered := c.sessionOf(w, r, ck.Value)
	switch {
	case answered:
		return
	case !found:
		clearCookie(w, r)
		http.Redirect(w, r, "/sign-in", http.StatusSeeOther)
		return
	}
	if !checkCSRF(r, s.CSRF) {
		forbidden(w)
		return
	}
	if err := c.store.DeleteConsoleSession(r.Context(), secret.Hash(ck.Value)); err != nil {
		c.unavailable(w, r, nil, err)
		return
	}
	if c.cfg.ForgetSession != nil {
		c.cfg.ForgetSession(ck.Value)
	}
	clearCookie(w, r)
	http.Redirect(w, r, "/sign-in", http.StatusSeeOther)
}

// sessionOf reads the session a cookie names, behind the auth guard, as
// the API reads a key. answered: it has answered the request (429 from the
// guard, or the database failing); otherwise found says whether the
// session exists (not when the cookie failed moments ago).
func (c *Console) sessionOf(w http.ResponseWriter, r *http.Request, token string) (s db.ConsoleSession, found, answered bool) {
	digest := secret.Hash(token)
	switch c.guard(w, r, digest) {
	case authguard.Throttle:
		return s, false, true
	case authguard.Refuse:
		return s, false, false
	}
	s, err := c.store.ConsoleSessionByHash(r.Context(), digest)
	switch {
	case errors.Is(err, db.ErrNotFound):
		c.failed(r, digest)
		return s, false, false
	case err != nil:
		c.unavailable(w, r, nil, err)
		return s, false, true
	}
	return s, true, false
}

func clearCookie(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: Cookie, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: origin.HTTPS(r)})
}

// forbidden is a form's CSRF refusal: a plain page.
func forbidden(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusForbidden)
	_, _ = w.Write([]byte("403 Forbidden: this form's CSRF token is missing or stale. Go back, reload the page and try again.\n"))
}
