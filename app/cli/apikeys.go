package cli

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

const apikeysUsage = `usage: switchboard apikeys add NAME [-scopes commands,read,admin] [-expires 720h]
       switchboard apikeys list [-limit N]
       switchboard apikeys revoke NAME-or-ID
each on the database (DATABASE_URL), or on an edge: -edge URL (SWITCHBOARD_EDGE) with SWITCHBOARD_KEY; -json prints JSON`

// apikeysCommands create, list and revoke API keys, on the database or
// through an edge's API (manageFlags). Only a new key goes to stdout (and
// the list, and -json's documents); what was done is told on stderr.
var apikeysCommands = group{usage: apikeysUsage, subs: map[string]command{
	"add":    cmd[keyAddFlags]{define: defineKeyAddFlags, nargs: exactly(1), run: addKey},
	"list":   cmd[keyListFlags]{define: defineKeyListFlags, nargs: exactly(0), run: listKeys},
	"revoke": cmd[manageFlags]{define: defineManageFlags, nargs: exactly(1), run: revokeKey}, // by name or id
}}

// keyAddFlags are the flags of "apikeys add".
type keyAddFlags struct {
	manage      manageFlags
	scopes      *string
	scopesGiven func() bool // -scopes "" is an error, not the default
	expires     *time.Duration
}

func defineKeyAddFlags(f flags) keyAddFlags {
	return keyAddFlags{
		manage:      defineManageFlags(f),
		scopes:      f.String("scopes", "", "what the key may do, separated by commas: commands (send and read commands), read (devices and presence), admin (provision devices) (default all three; through an edge, no scope the edge's key lacks)"),
		scopesGiven: f.given("scopes"),
		expires:     f.Duration("expires", 0, "how long the key works, e.g. 720h for 30 days (default: until revoked; through an edge with a key that expires, when that key does)"),
	}
}

// newKey reads the flags and the name of a key to add.
func (kf keyAddFlags) newKey(name string) (db.NewAPIKey, error) {
	nk := db.NewAPIKey{Name: strings.TrimSpace(name)}
	if err := db.CheckAPIKeyName(nk.Name); err != nil {
		return nk, err
	}
	if kf.scopesGiven() {
		var err error
		if nk.Scopes, err = db.ParseScopes(*kf.scopes); err != nil {
			return nk, fmt.Errorf("-scopes: %w", err)
		}
	}
	if *kf.expires < 0 {
		return nk, fmt.Errorf("-expires %s: want a duration after now, such as 720h", *kf.expires)
	}
	nk.TTL = *kf.expires
	return nk, nil
}

// newAPIKey is the answer of POST /v1/apikeys: the key, shown this once.
type newAPIKey struct {
	db.APIKey
	Key string `json:"key"`
}

// addKey creates an API key and prints it alone.
func addKey(ctx context.Context, kf keyAddFlags, c call) error {
	nk, err := kf.newKey(c.args[0])
	if err != nil {
		return err
	}
	var k got[newAPIKey]
	err = kf.manage.onEdge(ctx, c, func(cl *client) (err error) {
		req := map[string]any{"name": nk.Name}
		if nk.Scopes != nil {
			req["scopes"] = nk.Scopes
		}
		if nk.TTL > 0 {
			req["expires_in"] = nk.TTL.String()
		}
		k, _, err = fetch[newAPIKey](ctx, cl, request{method: http.MethodPost, path: "/v1/apikeys", body: jsonBody(req)})
		return err
	}, func(store *db.Store) (err error) {
		key := secret.New("sbk_")
		nk.KeyHash = secret.Hash(key)
		k.v.Key = key
		k.v.APIKey, err = store.AddAPIKey(ctx, nk)
		return err
	})
	if err != nil {
		return err
	}
	if *kf.manage.api.json {
		err = k.writeJSON(c.Stdout)
	} else {
		_, err = fmt.Fprintln(c.Stdout, k.v.Key)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(c.Stderr, "API key %d (%s): scopes %s, expires %s\n", k.v.ID, k.v.Name, db.FormatScopes(k.v.Scopes), when(k.v.ExpiresAt, "never"))
	return nil
}

// keyListFlags are the flags of "apikeys list".
type keyListFlags struct {
	manage manageFlags
	limit  *int
}

func defineKeyListFlags(f flags) keyListFlags {
	return keyListFlags{manage: defineManageFlags(f), limit: f.Int("limit", 0, "list at most this many keys, oldest first (0: all of them)")}
}

func listKeys(ctx context.Context, kf keyListFlags, c call) error {
	if *kf.limit < 0 {
		return fmt.Errorf("-limit %d: want 0 (all) or more", *kf.limit)
	}
	t := newKeyTable(c.Stdout, *kf.manage.api.json, time.Now())
	var more bool
	err := kf.manage.onEdge(ctx, c, func(cl *client) (err error) {
		_, more, err = cl.list(ctx, "/v1/apikeys", nil, "apikeys", db.MaxPage, *kf.limit, t.addRaw)
		return err
	}, func(store *db.Store) error {
		limit := *kf.limit
		if limit > 0 {
			limit++ // one more tells whether some are left out
		}
		keys, err := store.APIKeys(ctx, 0, limit)
		if err != nil {
			return err
		}
		if more = *kf.limit > 0 && len(keys) > *kf.limit; more {
			keys = keys[:*kf.limit]
		}
		for _, k := range keys {
			if err := t.add(k, nil); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return t.finish(c.Stderr, more, *kf.limit)
}

func revokeKey(ctx context.Context, mf manageFlags, c call) error {
	var k got[db.APIKey]
	var revoked bool
	err := mf.onEdge(ctx, c, func(cl *client) (err error) {
		k, revoked, err = revokeOnEdge(ctx, cl, c.args[0])
		return err
	}, func(store *db.Store) (err error) {
		k.v, revoked, err = store.RevokeAPIKey(ctx, c.args[0])
		return err
	})
	if err != nil {
		return err
	}
	if !revoked {
		fmt.Fprintf(c.Stderr, "API key %d (%s) was already revoked, at %s\n", k.v.ID, k.v.Name, when(k.v.RevokedAt, ""))
	} else {
		fmt.Fprintf(c.Stderr, "API key %d (%s) is revoked\n", k.v.ID, k.v.Name)
	}
	if *mf.api.json {
		return k.writeJSON(c.Stdout)
	}
	return nil
}

// revokeOnEdge revokes the key of this id, or the one unrevoked key of
// this name, as the store's RevokeAPIKey chooses it: DELETE
// /v1/apikeys/{id} takes an id, so the list tells which key a name is,
// and whether it was revoked already. A revoked key is revoked again,
// which tells the edges again.
func revokeOnEdge(ctx context.Context, cl *client, nameOrID string) (k got[db.APIKey], revoked bool, err error) {
	var named []db.APIKey // unrevoked first, then by id, as RevokeAPIKey orders them
	_, _, err = cl.list(ctx, "/v1/apikeys", nil, "apikeys", db.MaxPage, 0, func(raw json.RawMessage) error {
		var key db.APIKey
		if err := json.Unmarshal(raw, &key); err != nil {
			return err
		}
		if strconv.FormatInt(key.ID, 10) == nameOrID || key.Name == nameOrID {
			named = append(named, key)
		}
		return nil
	})
	if err != nil {
		return k, false, err
	}
	slices.SortStableFunc(named, func(a, b db.APIKey) int {
		return cmp.Or(cmp.Compare(btoi(a.RevokedAt != nil), btoi(b.RevokedAt != nil)), cmp.Compare(a.ID, b.ID))
	})
	var unrevoked []string
	for _, key := range named {
		if key.RevokedAt == nil {
			unrevoked = append(unrevoked, strconv.FormatInt(key.ID, 10))
		}
	}
	switch {
	case len(named) == 0:
		return k, false, refusedf("no API key has the name or id %q", nameOrID)
	case len(unrevoked) > 1:
		return k, false, refusedf("%q names several API keys (ids %s): revoke one by its id", nameOrID, strings.Join(unrevoked, ", "))
	}
	k, _, err = fetch[db.APIKey](ctx, cl, request{method: http.MethodDelete, path: pathOf("/v1/apikeys", strconv.FormatInt(named[0].ID, 10))})
	return k, len(unrevoked) == 1, err
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// newKeyTable prints keys as a table, never with their secrets (which
// are not stored).
func newKeyTable(w io.Writer, asJSON bool, now time.Time) *table[db.APIKey] {
	return newTable(w, asJSON, []string{"ID", "NAME", "SCOPES", "CREATED", "EXPIRES", "REVOKED"}, func(k db.APIKey) []string {
		expires := when(k.ExpiresAt, "never")
		if k.Expired(now) {
			expires += " (expired)"
		}
		return []string{strconv.FormatInt(k.ID, 10), k.Name, db.FormatScopes(k.Scopes), when(&k.CreatedAt, ""), expires, when(k.RevokedAt, "-")}
	})
}

// when formats a time for people, in UTC to the second; none stands for nil.
func when(t *time.Time, none string) string {
	if t == nil {
		return none
	}
	return t.UTC().Format(time.RFC3339)
}
