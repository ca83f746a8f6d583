package cli

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

const apikeysUsage = `usage: switchboard apikeys add NAME [-scopes commands,read,admin] [-expires 720h]
       switchboard apikeys list
       switchboard apikeys revoke NAME-or-ID`

// apikeysCommands create, list and revoke API keys. Only a new key goes to
// stdout (and the list); what was done is told on stderr.
var apikeysCommands = group{usage: apikeysUsage, subs: map[string]command{
	"add":    cmd[keyAddFlags]{define: defineKeyAddFlags, nargs: exactly(1), run: addKey},
	"list":   cmd[storeFlags]{define: defineStoreFlags, nargs: exactly(0), run: listKeys},
	"revoke": cmd[storeFlags]{define: defineStoreFlags, nargs: exactly(1), run: revokeKey}, // by name or id
}}

// keyAddFlags are the flags of "apikeys add".
type keyAddFlags struct {
	store       storeFlags
	scopes      *string
	scopesGiven func() bool // -scopes "" is an error, not the default
	expires     *time.Duration
}

func defineKeyAddFlags(f flags) keyAddFlags {
	return keyAddFlags{
		store:       defineStoreFlags(f),
		scopes:      f.String("scopes", "", "what the key may do, separated by commas: commands (send and read commands), read (devices and presence), admin (provision devices) (default all three)"),
		scopesGiven: f.given("scopes"),
		expires:     f.Duration("expires", 0, "how long the key works, e.g. 720h for 30 days (default: until revoked)"),
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

// addKey creates an API key and prints it alone.
func addKey(ctx context.Context, kf keyAddFlags, c call) error {
	nk, err := kf.newKey(c.args[0])
	if err != nil {
		return err
	}
	return kf.store.withStore(ctx, func(store *db.Store) error {
		key := secret.New("sbk_")
		nk.KeyHash = secret.Hash(key)
		k, err := store.AddAPIKey(ctx, nk)
		if err != nil {
			return err
		}
		if _, err := fmt.Fprintln(c.Stdout, key); err != nil {
			return err
		}
		fmt.Fprintf(c.Stderr, "API key %d (%s): scopes %s, expires %s\n", k.ID, k.Name, db.FormatScopes(k.Scopes), when(k.ExpiresAt, "never"))
		return nil
	})
}

func listKeys(ctx context.Context, sf storeFlags, c call) error {
	return sf.withStore(ctx, func(store *db.Store) error {
		keys, err := store.APIKeys(ctx, 0, 0)
		if err != nil {
			return err
		}
		return writeKeys(c.IO, keys, time.Now())
	})
}

func revokeKey(ctx context.Context, sf storeFlags, c call) error {
	return sf.withStore(ctx, func(store *db.Store) error {
		k, revoked, err := store.RevokeAPIKey(ctx, c.args[0])
		if err != nil {
			return err
		}
		if !revoked {
			fmt.Fprintf(c.Stderr, "API key %d (%s) was already revoked, at %s\n", k.ID, k.Name, when(k.RevokedAt, ""))
			return nil
		}
		fmt.Fprintf(c.Stderr, "API key %d (%s) is revoked\n", k.ID, k.Name)
		return nil
	})
}

// writeKeys prints the keys as a table, never with their secrets (which
// are not stored).
func writeKeys(stdio IO, keys []db.APIKey, now time.Time) error {
	tw := tabwriter.NewWriter(stdio.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tSCOPES\tCREATED\tEXPIRES\tREVOKED")
	for _, k := range keys {
		expires := when(k.ExpiresAt, "never")
		if k.Expired(now) {
			expires += " (expired)"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", k.ID, k.Name, db.FormatScopes(k.Scopes),
			when(&k.CreatedAt, ""), expires, when(k.RevokedAt, "-"))
	}
	return tw.Flush()
}

// when formats a time for people, in UTC to the second; none stands for nil.
func when(t *time.Time, none string) string {
	if t == nil {
		return none
	}
	return t.UTC().Format(time.RFC3339)
}
