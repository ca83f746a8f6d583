package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

// defaultGrace is how long a rotated device secret keeps working, unless
// -grace says otherwise: a day for a fleet to pick up the new one.
const defaultGrace = 24 * time.Hour

const devicesUsage = `usage: switchboard devices add ID
       switchboard devices import < lines
       switchboard devices rotate ID [-grace 24h]
       switchboard devices disable|enable|delete ID
       switchboard devices list [-online|-online=false] [-node N] [-region R] [-label SEL] [-q PART]
       switchboard devices label ID key=value… [key-…]`

// runDevices provisions and manages devices. Only secrets go to stdout;
// what was done is told on stderr.
func runDevices(ctx context.Context, args []string, getenv Env, stdio IO, log *slog.Logger) error {
	if len(args) == 0 {
		fmt.Fprintln(stdio.Stderr, devicesUsage)
		return ErrUsage
	}
	sub := args[0]
	f := newFlags("devices "+sub, getenv, stdio)
	dbURL := f.databaseURL()
	var grace *time.Duration
	var filter listFlags
	switch sub {
	case "rotate":
		grace = f.Duration("grace", defaultGrace, "how long the old secret keeps working, for the device to pick up the new one (0: not at all)")
	case "list":
		f.Var(&filter.online, "online", "only online devices (-online=false: only offline ones)")
		filter.node = f.String("node", "", "only devices connected to this node")
		filter.region = f.String("region", "", "only devices in this region (their session's, or their last one's)")
		filter.label = f.String("label", "", `only devices whose labels match this selector: "room=kitchen,fw!=2.1,beta,!old"`)
		filter.q = f.String("q", "", "only devices whose id contains this, ignoring case")
	case "add", "import", "disable", "enable", "delete", "label":
	default:
		fmt.Fprintln(stdio.Stderr, devicesUsage)
		return ErrUsage
	}
	if err := f.parse(args[1:]); err != nil {
		return err
	}
	want := 1 // the id
	switch sub {
	case "import", "list":
		want = 0
	case "label":
		want = max(f.NArg(), 2) // the id and at least one change
	}
	if f.NArg() != want {
		fmt.Fprintln(stdio.Stderr, devicesUsage)
		return ErrUsage
	}
	id := f.Arg(0)
	// An id of the old format (with ':') can only be deleted.
	if sub != "import" && sub != "delete" && sub != "list" && !db.ValidDeviceID(id) {
		return fmt.Errorf("device id %q: want %s", id, db.DeviceIDFormat)
	}
	if grace != nil && *grace < 0 {
		return fmt.Errorf("-grace %s: want 0 or more", *grace)
	}
	var err error
	var df db.DeviceFilter
	var set map[string]string
	var remove []string
	switch sub {
	case "list":
		if df, err = filter.filter(); err != nil {
			return err
		}
	case "label":
		if set, remove, err = labelChanges(f.Args()[1:]); err != nil {
			return err
		}
	}
	pool, store, err := openStore(ctx, *dbURL, 2)
	if err != nil {
		return err
	}
	defer pool.Close()

	notFound := func(err error) error {
		if errors.Is(err, db.ErrNotFound) {
			return fmt.Errorf("device %q does not exist", id)
		}
		return err
	}
	switch sub {
	case "list":
		return listDevices(ctx, store, df, stdio)
	case "label":
		d, err := store.PatchLabels(ctx, id, false, set, remove)
		if err != nil {
			return notFound(err)
		}
		fmt.Fprintf(stdio.Stderr, "device %s has the labels %s\n", id, formatLabels(d.Labels))
	case "add":
		return addDevice(ctx, store, id, stdio)
	case "import":
		return importDevices(ctx, store, stdio, log)
	case "rotate":
		devSecret := secret.New("")
		if err := store.RotateDeviceSecret(ctx, id, secret.Hash(devSecret), *grace); err != nil {
			return notFound(err)
		}
		if _, err := fmt.Fprintln(stdio.Stdout, devSecret); err != nil {
			return err
		}
		fmt.Fprintf(stdio.Stderr, "device %s has a new secret; the old one works for %s more\n", id, *grace)
	case "disable":
		if err := store.DisableDevice(ctx, id); err != nil {
			return notFound(err)
		}
		fmt.Fprintf(stdio.Stderr, "device %s is disabled: its connections are refused, and its session, if any, is closed\n", id)
	case "enable":
		if err := store.EnableDevice(ctx, id); err != nil {
			return notFound(err)
		}
		fmt.Fprintf(stdio.Stderr, "device %s is enabled\n", id)
	case "delete":
		commands, err := store.DeleteDevice(ctx, id)
		if err != nil {
			return notFound(err)
		}
		fmt.Fprintf(stdio.Stderr, "device %s is deleted, with its %d commands; its session, if any, is closed\n", id, commands)
	}
	return nil
}

// addDevice provisions one device and prints its secret alone.
func addDevice(ctx context.Context, store *db.Store, id string, stdio IO) error {
	devSecret := secret.New("")
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
