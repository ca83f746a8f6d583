package edge

import (
	"context"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/origin"
	"github.com/switchboard-iot/switchboard/internal/problem"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

// authenticate lets through requests that carry a valid API key as
// "Authorization: Bearer <key>", with the key in their context. A checked
// key is cached (keyCache); its expiry is checked on every request.
func (e *Edge) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "" {
			if c, err := r.Cookie(e.cfg.SessionCookie); e.cfg.SessionCookie != "" && err == nil && c.Value != "" {
				e.authenticateSession(w, r, c.Value, next)
				return
			}
		}
		scheme, token, _ := strings.Cut(r.Header.Get("Authorization"), " ")
		if !strings.EqualFold(scheme, "Bearer") || token == "" {
			e.refusedAuth(r, http.StatusUnauthorized, "no_key", 0)
			unauthorized(w, "an API key is required: Authorization: Bearer <key>")
			return
		}
		hash := secret.Hash(token)
		cacheKey := hex.EncodeToString(hash)
		now := time.Now()
		entry, hit, gen := e.keys.get(cacheKey, now)
		key := entry.key
		if !hit {
			if !e.GuardAuth(w, r, cacheKey) {
				return
			}
			var err error
			key, err = e.store.APIKeyByHash(r.Context(), hash)
			switch {
			case errors.Is(err, db.ErrNotFound):
				e.AuthFailed(r, cacheKey)
				e.refusedAuth(r, http.StatusUnauthorized, "unknown_key", 0)
				unauthorized(w, "unknown API key")
				return
			case err != nil:
				e.unavailable(w, "checking the API key", err)
				return
			case key.RevokedAt != nil:
				e.AuthFailed(r, cacheKey)
				e.refusedAuth(r, http.StatusUnauthorized, "revoked", key.ID)
				unauthorized(w, "this API key was revoked")
				return
			}
			e.keys.put(cacheKey, cached{key: key}, gen, now)
		}
		if key.Expired(now) {
			e.refusedAuth(r, http.StatusUnauthorized, "expired", key.ID)
			unauthorized(w, "this API key expired at "+key.ExpiresAt.UTC().Format(time.RFC3339))
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), credentialCtx{}, credential{key: key, gen: gen})))
	})
}

// authenticateSession lets through a request that carries a console
// session cookie instead of an Authorization header, acting as the
// session's API key: so a browser's EventSource, which cannot send
// headers, can stream. The session is read with its key, and cached like a
// key: a revocation or a sign-out drops the cache on every edge. A request
// that may change something must also carry the session's CSRF token in
// X-CSRF-Token: SameSite=Strict keeps other sites' requests from carrying
// the cookie, and the token covers browsers or proxies that do not. Behind
// both, such a request that a browser says another site's page sent is
// refused before the session is looked up (package origin).
func (e *Edge) authenticateSession(w http.ResponseWriter, r *http.Request, token string, next http.Handler) {
	write := r.Method != http.MethodGet && r.Method != http.MethodHead
	if why := origin.CrossSite(r); write && why != "" {
		problem.CrossSiteRequest.Write(w, why)
		return
	}
	hash := secret.Hash(token)
	cacheKey := sessionCacheKey(hash)
	now := time.Now()
	entry, hit, gen := e.keys.get(cacheKey, now)
	key, csrf, ends := entry.key, entry.csrf, entry.until
	if !hit {
		// The guard knows a credential by its digest alone, as the
		// console's pages name the same cookie.
		if !e.GuardAuth(w, r, hex.EncodeToString(hash)) {
			return
		}
		s, err := e.store.ConsoleSessionByHash(r.Context(), hash)
		switch {
		case errors.Is(err, db.ErrNotFound):
			e.AuthFailed(r, hex.EncodeToString(hash))
			e.refusedAuth(r, http.StatusUnauthorized, "unknown_session", 0)
			unauthorized(w, "the console session is unknown, expired or signed out: sign in again")
			return
		case err != nil:
			e.unavailable(w, "checking the console session", err)
			return
		case s.Key.RevokedAt != nil:
			e.refusedAuth(r, http.StatusUnauthorized, "revoked", s.Key.ID)
			unauthorized(w, "this console session's API key was revoked")
			return
		}
		key, csrf, ends = s.Key, s.CSRF, s.ExpiresAt
		e.keys.put(cacheKey, cached{key: key, csrf: csrf, until: s.ExpiresAt}, gen, now)
	}
	if key.Expired(now) {
		e.refusedAuth(r, http.StatusUnauthorized, "expired", key.ID)
		unauthorized(w, "this console session's API key expired at "+key.ExpiresAt.UTC().Format(time.RFC3339))
		return
	}
	if write {
		got := r.Header.Get("X-CSRF-Token")
		if got == "" || subtle.ConstantTimeCompare([]byte(got), []byte(csrf)) != 1 {
			problem.CSRFTokenInvalid.Write(w,
				"a request authenticated by the console's session cookie must carry the session's token in X-CSRF-Token")
			return
		}
	}
	cred := credential{key: key, session: string(hash), sessionEnds: ends, gen: gen}
	next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), credentialCtx{}, cred)))
}

// sessionCacheKey keeps sessions apart from keys in the key cache.
func sessionCacheKey(hash []byte) string { return "session:" + hex.EncodeToString(hash) }

// ForgetSession drops a signed-out session from this edge's cache and ends
// its streams here at once (other edges hear of it over sb_keys a moment
// later).
func (e *Edge) ForgetSession(token string) {
	hash := secret.Hash(token)
	e.keys.forget(sessionCacheKey(hash))
	e.grants.signedOut(string(hash))
}

// requireScope lets through requests whose API key grants scope, and
// answers the others 403 (RFC 6750's insufficient_scope).
func (e *Edge) requireScope(scope db.Scope) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if key := apiKey(r); !key.Has(scope) {
				e.insufficientScope(w, r, key, scope)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// credential is what authenticated a request: an API key, or a console
// session acting as its key.
type credential struct {
	key         db.APIKey
	session     string    // the session's cookie digest; "" for a key
	sessionEnds time.Time // when the session expires
	gen         uint64    // the key cache's generation it was checked in
}

type credentialCtx struct{}

func credentialOf(r *http.Request) credential {
	c, _ := r.Context().Value(credentialCtx{}).(credential)
	return c
}

// insufficientScope answers 403 to a key that lacks some of the scopes a
// request needs, naming them all (RFC 6750: space-separated).
func (e *Edge) insufficientScope(w http.ResponseWriter, r *http.Request, key db.APIKey, needs ...db.Scope) {
	e.refusedAuth(r, http.StatusForbidden, "insufficient_scope", key.ID)
	names, quoted := make([]string, len(needs)), make([]string, len(needs))
	for i, s := range needs {
		names[i], quoted[i] = string(s), strconv.Quote(string(s))
	}
	what := "the scope " + quoted[0]
	if len(needs) > 1 {
		what = "the scopes " + strings.Join(quoted[:len(quoted)-1], ", ") + " and " + quoted[len(quoted)-1]
	}
	w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="switchboard", error="insufficient_scope", scope=%q`, strings.Join(names, " ")))
	problem.InsufficientScope.Write(w,
		fmt.Sprintf("this request needs an API key with %s; this key has %s", what, db.FormatScopes(key.Scopes)))
}

// apiKey is the key that authenticated the request.
func apiKey(r *http.Request) db.APIKey { return credentialOf(r).key }

func unauthorized(w http.ResponseWriter, detail string) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="switchboard"`)
	problem.Unauthorized.Write(w, detail)
}

// unavailable answers 503 for a failure of ours (the database, mostly) and
// logs the cause, which the client does not see.
func (e *Edge) unavailable(w http.ResponseWriter, doing string, err error) {
	e.log.Error(doing, "err", err)
	problem.Unavailable.WriteRetryAfter(w, "try again shortly", time.Second)
}
