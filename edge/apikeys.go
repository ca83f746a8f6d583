package edge

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/command"
	"github.com/switchboard-iot/switchboard/internal/problem"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

// API keys over HTTP (scope admin): create, list, revoke, with the store
// calls of "switchboard apikeys". A key cannot make a key more powerful
// than itself: not with a scope it lacks, nor one that outlives it.

// newAPIKey is the answer of POST /v1/apikeys: the key, shown this once.
type newAPIKey struct {
	db.APIKey
	Key string `json:"key"`
}

// handleAddAPIKey creates a key: {"name","scopes","expires_in"}. Scopes
// default to all three and expires_in to never, as the CLI's; the
// creating key must hold each scope (privilege-escalation otherwise). A
// key that expires makes keys that expire no later: by default at its own
// expiry.
func (e *Edge) handleAddAPIKey(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Name      string          `json:"name"`
		Scopes    *[]db.Scope     `json:"scopes"` // absent: all three
		ExpiresIn json.RawMessage `json:"expires_in"`
	}
	if !decodeJSON(w, r, &req) {
		return
	}
	nk := db.NewAPIKey{Name: strings.TrimSpace(req.Name), Scopes: db.AllScopes}
	if err := db.CheckAPIKeyName(nk.Name); err != nil {
		problem.InvalidAPIKey.Write(w, err.Error())
		return
	}
	if req.Scopes != nil {
		var err error
		if nk.Scopes, err = db.CheckScopes(*req.Scopes); err != nil {
			problem.InvalidAPIKey.Write(w, "scopes: "+err.Error())
			return
		}
	}
	ttl, ok := durationField(w, "expires_in", req.ExpiresIn, 0)
	if !ok {
		return
	}
	if ttl < 0 {
		problem.InvalidDuration.Write(w, fmt.Sprintf("expires_in %s: want a duration after now, such as \"720h\" (0, or none: until revoked)", command.Duration(ttl)))
		return
	}
	nk.TTL = ttl
	creator := apiKey(r)
	var lacks []string
	for _, sc := range nk.Scopes {
		if !creator.Has(sc) {
			lacks = append(lacks, strconv.Quote(string(sc)))
		}
	}
	if len(lacks) > 0 {
		problem.PrivilegeEscalation.Write(w, fmt.Sprintf("this key lacks %s: a key may give a new key only scopes it has (%s)",
			strings.Join(lacks, ", "), db.FormatScopes(creator.Scopes)))
		return
	}
	if ends := creator.ExpiresAt; ends != nil {
		if ttl > 0 && time.Now().Add(ttl).After(*ends) {
			problem.PrivilegeEscalation.Write(w, fmt.Sprintf("this key expires at %s: a key it makes may not outlive it",
				ends.UTC().Format(time.RFC3339)))
			return
		}
		nk.NotAfter = ends
	}
	key := secret.New("sbk_")
	nk.KeyHash = secret.Hash(key)
	k, err := e.store.AddAPIKey(r.Context(), nk)
	if err != nil {
		e.unavailable(w, "adding an API key", err)
		return
	}
	e.log.Info("API key created", "key", k.ID, "name", k.Name, "scopes", db.FormatScopes(k.Scopes), "by", creator.ID)
	w.Header().Set("Location", "/v1/apikeys/"+strconv.FormatInt(k.ID, 10))
	writeJSON(w, http.StatusCreated, newAPIKey{APIKey: k, Key: key})
}

// apiKeyListParams are the query parameters GET /v1/apikeys reads.
var apiKeyListParams = []string{"limit", "cursor"}

// apiKeyCursorDigest names the key listing in its cursors, which have no
// filters: another listing's cursor is refused here.
var apiKeyCursorDigest = listDigest("apikeys")

// handleListAPIKeys lists every key, revoked and expired ones too, oldest
// first, a page at a time (readPage): never a secret, which is not stored.
func (e *Edge) handleListAPIKeys(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if !allowQuery(w, q, apiKeyListParams) {
		return
	}
	limit, after, ok := readPageInt(w, q, apiKeyCursorDigest)
	if !ok {
		return
	}
	keys, err := e.store.APIKeys(r.Context(), after, limit+1) // one more tells whether a page follows
	if err != nil {
		e.unavailable(w, "listing API keys", err)
		return
	}
	out := struct {
		APIKeys []db.APIKey `json:"apikeys"`
		Next    string      `json:"next,omitempty"` // absent on the last page
	}{APIKeys: keys}
	if len(keys) > limit {
		out.APIKeys = keys[:limit]
		out.Next = encodeCursor(apiKeyCursorDigest, strconv.FormatInt(keys[limit-1].ID, 10))
	}
	out.APIKeys = orEmpty(out.APIKeys)
	writeJSON(w, http.StatusOK, out)
}

// handleRevokeAPIKey revokes a key by its id, as "switchboard apikeys
// revoke" does: refused on every edge within a second, its open streams
// ended. Revoking a revoked key answers it as it is (and tells the edges
// again). A key may revoke itself: this request, already let in, is
// answered.
func (e *Edge) handleRevokeAPIKey(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseInt(chi.URLParam(r, "id"), 10, 64)
	if err != nil || id < 1 {
		problem.APIKeyNotFound.Write(w, "no API key has the id "+strconv.Quote(chi.URLParam(r, "id")))
		return
	}
	k, revoked, err := e.store.RevokeAPIKey(r.Context(), strconv.FormatInt(id, 10))
	switch {
	case errors.Is(err, db.ErrNotFound):
		problem.APIKeyNotFound.Write(w, fmt.Sprintf("no API key has the id %d", id))
	case err != nil:
		// Revoked but not told to the edges: a retry tells them.
		e.unavailable(w, "revoking an API key", err)
	default:
		if revoked {
			e.log.Info("API key revoked", "key", k.ID, "name", k.Name, "by", apiKey(r).ID)
		}
		// Refused here from the answer on; other edges within a second.
		e.onKeysNotice(strconv.FormatInt(k.ID, 10))
		writeJSON(w, http.StatusOK, k)
	}
}
