package db

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5"
)

// Scope is a kind of access an API key grants.
type Scope string

const (
	ScopeCommands Scope = "commands" // send commands and jobs, and follow those it sent
	ScopeRead     Scope = "read"     // see the fleet: devices, presence, events, every key's jobs and commands
	ScopeAdmin    Scope = "admin"    // provision devices, manage keys
)

// AllScopes are every scope, in the order they are shown. A key made
// without a choice of scopes has them all.
var AllScopes = []Scope{ScopeCommands, ScopeRead, ScopeAdmin}

// ParseScopes reads a comma-separated list of scopes, such as
// "commands,read", into AllScopes' order.
func ParseScopes(list string) ([]Scope, error) {
	var out []Scope
	for part := range strings.SplitSeq(list, ",") {
		if sc := Scope(strings.TrimSpace(part)); sc != "" {
			out = append(out, sc)
		}
	}
	return CheckScopes(out)
}

// CheckScopes refuses an empty list and unknown scopes, and returns the
// scopes in AllScopes' order, each once.
func CheckScopes(list []Scope) ([]Scope, error) {
	for _, sc := range list {
		if !slices.Contains(AllScopes, sc) {
			return nil, fmt.Errorf("unknown scope %q: want commands, read or admin", sc)
		}
	}
	if len(list) == 0 {
		return nil, errors.New("no scope given: want commands, read or admin")
	}
	return slices.DeleteFunc(slices.Clone(AllScopes), func(sc Scope) bool { return !slices.Contains(list, sc) }), nil
}

// FormatScopes writes scopes the way ParseScopes reads them.
func FormatScopes(scopes []Scope) string {
	parts := make([]string, len(scopes))
	for i, sc := range scopes {
		parts[i] = string(sc)
	}
	return strings.Join(parts, ",")
}

// APIKey is a stored API key, without its secret (which is not stored).
type APIKey struct {
	ID        int64      `json:"id"`
	Name      string     `json:"name"`
	Scopes    []Scope    `json:"scopes"`
	CreatedAt time.Time  `json:"created_at"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"` // nil: never
	RevokedAt *time.Time `json:"revoked_at,omitempty"` // nil: not revoked
}

// Has reports whether the key grants scope.
func (k APIKey) Has(scope Scope) bool { return slices.Contains(k.Scopes, scope) }

// Creator is the key whose jobs and commands this key may see: 0, every
// key's, with the read scope (which sees the fleet), else the key itself
// (docs/api.md, "What each scope may learn").
func (k APIKey) Creator() int64 {
	if k.Has(ScopeRead) {
		return 0
	}
	return k.ID
}

// Sees reports whether the key may see a job or command that key creator
// made.
func (k APIKey) Sees(creator int64) bool { return k.Has(ScopeRead) || k.ID == creator }

// Expired reports whether the key has expired at now.
func (k APIKey) Expired(now time.Time) bool { return k.ExpiresAt != nil && !now.Before(*k.ExpiresAt) }

// CheckAPIKeyName refuses names that would garble a list or read as an
// id ("apikeys revoke" takes either).
func CheckAPIKeyName(name string) error {
	switch {
	case name == "":
		return errors.New("an API key needs a name")
	case len(name) > 128:
		return fmt.Errorf("API key name of %d bytes: at most 128", len(name))
	case strings.IndexFunc(name, unicode.IsControl) >= 0:
		return fmt.Errorf("API key name %q: no control characters", name)
	case strings.IndexFunc(name, func(r rune) bool { return !unicode.IsDigit(r) }) < 0:
		return fmt.Errorf("API key name %q: digits alone would read as a key id", name)
	}
	return nil
}

// NewAPIKey is an API key to store.
type NewAPIKey struct {
	Name    string
	KeyHash []byte
	Scopes  []Scope       // none: all of them
	TTL     time.Duration // how long it works; 0: until revoked
	// NotAfter, when set, is when it expires at the latest, whatever
	// TTL says: the expiry of the key that made it.
	NotAfter *time.Time
}

const apiKeyColumns = `id, name, scopes, created_at, expires_at, revoked_at`

func scanAPIKey(row pgx.Row) (APIKey, error) {
	var k APIKey
	var scopes []string
	err := row.Scan(&k.ID, &k.Name, &scopes, &k.CreatedAt, &k.ExpiresAt, &k.RevokedAt)
	for _, sc := range scopes {
		k.Scopes = append(k.Scopes, Scope(sc))
	}
	return k, err
}

// AddAPIKey stores a new API key.
func (s *Store) AddAPIKey(ctx context.Context, nk NewAPIKey) (APIKey, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	scopes := nk.Scopes
	if len(scopes) == 0 {
		scopes = AllScopes
	}
	var ttl *time.Duration
	if nk.TTL != 0 {
		ttl = &nk.TTL
	}
	k, err := scanAPIKey(s.db.QueryRow(ctx, `
		INSERT INTO api_keys (name, key_hash, scopes, expires_at) VALUES ($1, $2, $3, least(now() + $4::interval, $5))
		RETURNING `+apiKeyColumns, nk.Name, nk.KeyHash, scopes, ttl, nk.NotAfter))
	return k, translate(err, "add api key")
}

// APIKeyByHash returns the key with this hash, revoked and expired ones
// included: the caller tells its client which it is.
func (s *Store) APIKeyByHash(ctx context.Context, keyHash []byte) (APIKey, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	k, err := scanAPIKey(s.db.QueryRow(ctx, `SELECT `+apiKeyColumns+` FROM api_keys WHERE key_hash = $1`, keyHash))
	return k, translate(err, "api key")
}

// APIKeys returns up to limit keys (0: all) whose id is above after,
// oldest first: a listing, or a page of one.
func (s *Store) APIKeys(ctx context.Context, after int64, limit int) ([]APIKey, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	var max *int // NULL: LIMIT ALL
	if limit > 0 {
		max = &limit
	}
	rows, err := s.db.Query(ctx, `SELECT `+apiKeyColumns+` FROM api_keys WHERE id > $1 ORDER BY id LIMIT $2`, after, max)
	if err != nil {
		return nil, translate(err, "api keys")
	}
	keys, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (APIKey, error) { return scanAPIKey(row) })
	return keys, translate(err, "api keys")
}

// AddBootstrapKey stores the key whose hash the deployment was given
// (SWITCHBOARD_BOOTSTRAP_KEY_SHA256), with every scope, unless a key has
// that hash already: revoked, it stays revoked. created says whether this
// call stored it; every edge makes it at start, and one of them wins.
func (s *Store) AddBootstrapKey(ctx context.Context, keyHash []byte) (k APIKey, created bool, err error) {
	k, err = s.AddAPIKey(ctx, NewAPIKey{Name: BootstrapKeyName, KeyHash: keyHash})
	if errors.Is(err, ErrExists) {
		k, err = s.APIKeyByHash(ctx, keyHash)
		return k, false, err
	}
	return k, err == nil, err
}

// BootstrapKeyName names the key AddBootstrapKey stores.
const BootstrapKeyName = "bootstrap"

// ErrAmbiguous says a name is shared by several keys.
var ErrAmbiguous = errors.New("names several API keys")

// RevokeAPIKey revokes the key with this id, or the one unrevoked key with
// this name, then tells every edge to stop trusting it. revoked is false
// when the key was revoked already; it is returned as it is. A name that
// several unrevoked keys share is ErrAmbiguous: revoke those by id.
func (s *Store) RevokeAPIKey(ctx context.Context, nameOrID string) (k APIKey, revoked bool, err error) {
	err = s.InTx(ctx, func(tx *Store) error {
		rows, err := tx.db.Query(ctx, `
			SELECT `+apiKeyColumns+` FROM api_keys WHERE id::text = $1 OR name = $1
			ORDER BY revoked_at IS NOT NULL, id FOR UPDATE`, nameOrID)
		if err != nil {
			return err
		}
		keys, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (APIKey, error) { return scanAPIKey(row) })
		if err != nil {
			return err
		}
		var ids []string
		for _, c := range keys {
			if c.RevokedAt == nil {
				ids = append(ids, fmt.Sprint(c.ID))
			}
		}
		switch {
		case len(keys) == 0:
			return fmt.Errorf("no API key has the name or id %q: %w", nameOrID, ErrNotFound)
		case len(ids) > 1:
			return fmt.Errorf("%q %w (ids %s): revoke one by its id", nameOrID, ErrAmbiguous, strings.Join(ids, ", "))
		case len(ids) == 0:
			k = keys[0]
			return nil
		}
		k, revoked = keys[0], true
		return tx.db.QueryRow(ctx, `UPDATE api_keys SET revoked_at = now() WHERE id = $1 RETURNING revoked_at`, k.ID).Scan(&k.RevokedAt)
	})
	if err != nil {
		if errors.Is(err, ErrNotFound) || errors.Is(err, ErrAmbiguous) {
			return APIKey{}, false, err
		}
		return APIKey{}, false, translate(err, "revoke api key")
	}
	// Told again for a key revoked before: that repairs a notice lost then.
	if err := s.Notify(ctx, []Notice{{RevokedKey: k.ID}}); err != nil {
		return k, revoked, fmt.Errorf("API key %d is revoked, but the edges could not be told: they may trust it until their key cache lapses; run revoke again: %w", k.ID, err)
	}
	return k, revoked, nil
}
