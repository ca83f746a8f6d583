package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

const apikeysUsage = `usage: switchboard apikeys add NAME [-scopes commands,read,admin] [-expires 720h]
       switchboard apikeys list
       switchboard apikeys revoke NAME-or-ID`

// runAPIKeys creates, lists and revokes API keys. Only a new key goes to
// stdout (and the list); what was done is told on stderr.
func runAPIKeys(ctx context.Context, args []string, getenv Env, stdio IO, _ *slog.Logger) error {
	if len(args) == 0 {
		fmt.Fprintln(stdio.Stderr, apikeysUsage)
		return ErrUsage
	}
	sub := args[0]
	f := newFlags("apikeys "+sub, getenv, stdio)
	dbURL := f.databaseURL()
	var scopes *string
	var expires *time.Duration
	want := 1 // the name or id
	switch sub {
	case "add":
		scopes = f.String("scopes", "", "what the key may do, separated by commas: commands (send and read commands), read (devices and presence), admin (provision devices) (default all three)")
		expires = f.Duration("expires", 0, "how long the key works, e.g. 720h for 30 days (default: until revoked)")
	case "list":
		want = 0
	case "revoke":
	default:
		fmt.Fprintln(stdio.Stderr, apikeysUsage)
		return ErrUsage
	}
	if err := f.parse(args[1:]); err != nil {
		return err
	}
	if f.NArg() != want {
		fmt.Fprintln(stdio.Stderr, apikeysUsage)
		return ErrUsage
	}
	nk := db.NewAPIKey{Name: strings.TrimSpace(f.Arg(0))}
	if sub == "add" {
		if err := checkKeyName(nk.Name); err != nil {
			return err
		}
		scopesGiven := false
		f.Visit(func(fl *flag.Flag) { scopesGiven = scopesGiven || fl.Name == "scopes" })
		if scopesGiven {
			var err error
			if nk.Scopes, err = db.ParseScopes(*scopes); err != nil {
				return fmt.Errorf("-scopes: %w", err)
			}
		}
		if *expires < 0 {
			return fmt.Errorf("-expires %s: want a duration after now, such as 720h", *expires)
		}
		nk.TTL = *expires
	}
	pool, store, err := openStore(ctx, *dbURL, 2)
	if err != nil {
		return err
	}
	defer pool.Close()

	switch sub {
	case "add":
		key := secret.New("sbk_")
		nk.KeyHash = secret.Hash(key)
		k, err := store.AddAPIKey(ctx, nk)
		if err != nil {
			return err
		}
		if _, err := fmt.Fprintln(stdio.Stdout, key); err != nil {
			return err
		}
		fmt.Fprintf(stdio.Stderr, "API key %d (%s): scopes %s, expires %s\n", k.ID, k.Name, db.FormatScopes(k.Scopes), when(k.ExpiresAt, "never"))
	case "list":
		keys, err := store.APIKeys(ctx)
		if err != nil {
			return err
		}
		return writeKeys(stdio, keys, time.Now())
	case "revoke":
		k, revoked, err := store.RevokeAPIKey(ctx, f.Arg(0))
		if err != nil {
			return err
		}
		if !revoked {
			fmt.Fprintf(stdio.Stderr, "API key %d (%s) was already revoked, at %s\n", k.ID, k.Name, when(k.RevokedAt, ""))
			return nil
		}
		fmt.Fprintf(stdio.Stderr, "API key %d (%s) is revoked\n", k.ID, k.Name)
	}
	return nil
}

// checkKeyName refuses names that would garble the list or read as an id.
func checkKeyName(name string) error {
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
