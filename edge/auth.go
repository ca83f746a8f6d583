package edge

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/problem"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

// authenticate lets through requests that carry a valid API key as
// "Authorization: Bearer <key>", with the key in their context. A checked
// key is trusted for APIKeyCache, which spares the database a lookup per
// request.
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
		e.keysMu.Lock()
		cached, trusted := e.keys[cacheKey]
		trusted = trusted && now.Before(cached.until)
		e.keysMu.Unlock()
		key := cached.key
		if !trusted {
			if !e.guardAuth(w, r, cacheKey) {
				return
			}
			var err error
			key, err = e.store.APIKeyByHash(r.Context(), hash)
			switch {
			case errors.Is(err, db.ErrNotFound):
				e.authFailed(r, cacheKey)
				unauthorized(w, "unknown or revoked API key")
				return
			case err != nil:
				e.unavailable(w, "checking the API key", err)
				return
			}
			e.keysMu.Lock()
			e.keys[cacheKey] = cachedKey{key: key, until: now.Add(e.cfg.APIKeyCache)}
			e.keysMu.Unlock()
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), apiKeyCtx{}, key)))
	})
}

// cachedKey is a checked API key and until when it is trusted.
type cachedKey struct {
	key   db.APIKey
	until time.Time
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
