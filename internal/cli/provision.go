package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

func runDevices(ctx context.Context, args []string, getenv Env, stdio IO, log *slog.Logger) error {
	if len(args) == 0 || (args[0] != "add" && args[0] != "import") {
		fmt.Fprintln(stdio.Stderr, "usage: switchboard devices add ID | switchboard devices import < ids")
		return ErrUsage
	}
	f := newFlags("devices "+args[0], getenv, stdio)
	dbURL := f.databaseURL()
	if err := f.parse(args[1:]); err != nil {
		return err
	}
	pool, store, err := openStore(ctx, *dbURL, 2)
	if err != nil {
		return err
	}
	defer pool.Close()

	if args[0] == "add" {
		if f.NArg() != 1 {
			fmt.Fprintln(stdio.Stderr, "usage: switchboard devices add ID")
			return ErrUsage
		}
		id, devSecret := f.Arg(0), secret.New("")
		existing, err := store.AddDevices(ctx, []db.Credential{{ID: id, SecretHash: secret.Hash(devSecret)}})
		if errors.Is(err, db.ErrInvalid) {
			return fmt.Errorf("device id %q: want %s", id, db.DeviceIDFormat)
		}
		if err != nil {
			return err
		}
		if len(existing) > 0 {
			return fmt.Errorf("device %q already exists", id)
		}
		_, err = fmt.Fprintln(stdio.Stdout, devSecret)
		return err
	}
	return importDevices(ctx, store, stdio, log)
}

// importDevices reads "id" or "id,secret" lines and provisions them in
// batches, writing "id,secret" for each device added. Ids that exist are
// skipped (and reported), so an interrupted import can be run again.
func importDevices(ctx context.Context, store *db.Store, stdio IO, log *slog.Logger) error {
	const batchSize = 1000
	var creds []db.Credential
	var lines []secret.Credential // creds with their secrets, printed once they are stored
	added, skipped := 0, 0
	seen := make(map[string]int) // id → line: an id given twice would get two secrets, one of them wrong
	flush := func() error {
		if len(creds) == 0 {
			return nil
		}
		existing, err := store.AddDevices(ctx, creds)
		if err != nil {
			return err
		}
		exists := make(map[string]bool, len(existing))
		for _, id := range existing {
			exists[id] = true
			fmt.Fprintf(stdio.Stderr, "skipped %s: it exists\n", id)
		}
		for i, c := range creds {
			if !exists[c.ID] {
				if err := secret.WriteCredential(stdio.Stdout, lines[i]); err != nil {
					return err
				}
			}
		}
		added, skipped = added+len(creds)-len(existing), skipped+len(existing)
		creds, lines = creds[:0], lines[:0]
		return nil
	}
	err := secret.ScanCredentials(stdio.Stdin, func(n int, c secret.Credential) error {
		if !db.ValidDeviceID(c.ID) {
			return fmt.Errorf("line %d: device id %q: want %s", n, c.ID, db.DeviceIDFormat)
		}
		if first, dup := seen[c.ID]; dup {
			return fmt.Errorf("line %d: device id %q is also on line %d", n, c.ID, first)
		}
		seen[c.ID] = n
		if c.Secret != "" {
			if err := secret.CheckImported(c.Secret); err != nil {
				return fmt.Errorf("line %d (%s): %w", n, c.ID, err)
			}
		} else {
			c.Secret = secret.New("")
		}
		creds = append(creds, db.Credential{ID: c.ID, SecretHash: secret.Hash(c.Secret)})
		lines = append(lines, c)
		if len(creds) == batchSize {
			if err := flush(); err != nil {
				return fmt.Errorf("near line %d: %w", n, err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := flush(); err != nil {
		return err
	}
	log.Info("imported devices", "added", added, "skipped", skipped)
	return nil
}
