package edge

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/problem"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

// authenticate lets through requests that carry a valid API key as
// "Authorization: Bearer <key>", with the key in their context. A checked
// key is cached (keyCache); its expiry is checked on every request.
func (e *Edge) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		scheme, token, _ := strings.Cut(r.Header.Get("Authorization"), " ")
		if !strings.EqualFold(scheme, "Bearer") || token == "" {
			unauthorized(w, "an API key is required: Authorization: Bearer <key>")
			return
		}
		hash := secret.Hash(token)
		cacheKey := hex.EncodeToString(hash)
		now := time.Now()
		key, cached, gen := e.keys.get(cacheKey, now)
		if !cached {
			if !e.guardAuth(w, r, cacheKey) {
				return
			}
			var err error
			key, err = e.store.APIKeyByHash(r.Context(), hash)
			switch {
			case errors.Is(err, db.ErrNotFound):
				e.authFailed(r, cacheKey)
				unauthorized(w, "unknown API key")
				return
			case err != nil:
				e.unavailable(w, "checking the API key", err)
				return
			case key.RevokedAt != nil:
				e.authFailed(r, cacheKey)
				unauthorized(w, "this API key was revoked")
				return
			}
			e.keys.put(cacheKey, key, gen, now)
		}
		if key.Expired(now) {
			unauthorized(w, "this API key expired at "+key.ExpiresAt.UTC().Format(time.RFC3339))
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), apiKeyCtx{}, key)))
	})
}

// requireScope lets through requests whose API key grants scope, and
// answers the others 403 (RFC 6750's insufficient_scope).
func requireScope(scope db.Scope) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			key := apiKey(r)
			if !key.Has(scope) {
				w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="switchboard", error="insufficient_scope", scope=%q`, scope))
				problem.Write(w, http.StatusForbidden, "insufficient-scope", "Insufficient scope",
					fmt.Sprintf("this request needs an API key with the scope %q; this key has %s", scope, db.FormatScopes(key.Scopes)))
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

type apiKeyCtx struct{}

// apiKey is the key that authenticated the request.
func apiKey(r *http.Request) db.APIKey {
	k, _ := r.Context().Value(apiKeyCtx{}).(db.APIKey)
	return k
}

func unauthorized(w http.ResponseWriter, detail string) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="switchboard"`)
	problem.Write(w, http.StatusUnauthorized, "unauthorized", "Unauthorized", detail)
}

// unavailable answers 503 for a failure of ours (the database, mostly) and
// logs the cause, which the client does not see.
func (e *Edge) unavailable(w http.ResponseWriter, doing string, err error) {
	e.log.Error(doing, "err", err)
	w.Header().Set("Retry-After", "1")
	problem.Write(w, http.StatusServiceUnavailable, "unavailable", "Service unavailable", "try again shortly")
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
