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

// devicesCommands provision and manage devices. Only secrets go to stdout
// (and the list); what was done is told on stderr.
var devicesCommands = group{usage: devicesUsage, subs: map[string]command{
	"add":     cmd[storeFlags]{define: defineStoreFlags, nargs: exactly(1), run: addDevice},
	"import":  cmd[storeFlags]{define: defineStoreFlags, nargs: exactly(0), run: importDevices},
	"rotate":  cmd[rotateFlags]{define: defineRotateFlags, nargs: exactly(1), run: rotateDevice},
	"disable": cmd[storeFlags]{define: defineStoreFlags, nargs: exactly(1), run: disableDevice},
	"enable":  cmd[storeFlags]{define: defineStoreFlags, nargs: exactly(1), run: enableDevice},
	"delete":  cmd[storeFlags]{define: defineStoreFlags, nargs: exactly(1), run: deleteDevice},
	"list":    cmd[listFlags]{define: defineListFlags, nargs: exactly(0), run: listDevices},
	"label":   cmd[storeFlags]{define: defineStoreFlags, nargs: atLeast(2), run: labelDevice}, // the id and at least one change
}}

// checkDeviceID refuses an id the devices table would. An id of the old
// format (with ':') can still be deleted.
func checkDeviceID(id string) error {
	if !db.ValidDeviceID(id) {
		return fmt.Errorf("device id %q: want %s", id, db.DeviceIDFormat)
	}
	return nil
}

// deviceError names the device that does not exist.
func deviceError(id string, err error) error {
	if errors.Is(err, db.ErrNotFound) {
		return fmt.Errorf("device %q does not exist", id)
	}
	return err
}

// addDevice provisions one device and prints its secret alone.
func addDevice(ctx context.Context, sf storeFlags, c call) error {
	id := c.args[0]
	if err := checkDeviceID(id); err != nil {
		return err
	}
	return sf.withStore(ctx, func(store *db.Store) error {
		devSecret := secret.New("")
		existing, err := store.AddDevices(ctx, []db.Credential{{ID: id, SecretHash: secret.Hash(devSecret)}})
		if errors.Is(err, db.ErrInvalid) {
			return checkDeviceID(id)
		}
		if err != nil {
			return err
		}
		if len(existing) > 0 {
			return fmt.Errorf("device %q already exists", id)
		}
		_, err = fmt.Fprintln(c.Stdout, devSecret)
		return err
	})
}

func importDevices(ctx context.Context, sf storeFlags, c call) error {
	return sf.withStore(ctx, func(store *db.Store) error { return importLines(ctx, store, c.IO, c.log) })
}

// rotateFlags are the flags of "devices rotate".
type rotateFlags struct {
	store storeFlags
	grace *time.Duration
}

func defineRotateFlags(f flags) rotateFlags {
	return rotateFlags{
		store: defineStoreFlags(f),
		grace: f.Duration("grace", defaultGrace, "how long the old secret keeps working, for the device to pick up the new one (0: not at all)"),
	}
}

// rotateDevice gives a device a new secret and prints it alone.
func rotateDevice(ctx context.Context, rf rotateFlags, c call) error {
	id := c.args[0]
	if err := checkDeviceID(id); err != nil {
		return err
	}
	if *rf.grace < 0 {
		return fmt.Errorf("-grace %s: want 0 or more", *rf.grace)
	}
	return rf.store.withStore(ctx, func(store *db.Store) error {
		devSecret := secret.New("")
		if err := store.RotateDeviceSecret(ctx, id, secret.Hash(devSecret), *rf.grace); err != nil {
			return deviceError(id, err)
		}
		if _, err := fmt.Fprintln(c.Stdout, devSecret); err != nil {
			return err
		}
		fmt.Fprintf(c.Stderr, "device %s has a new secret; the old one works for %s more\n", id, *rf.grace)
		return nil
	})
}

var (
	disableDevice = switchDevice((*db.Store).DisableDevice, "device %s is disabled: its connections are refused, and its session, if any, is closed")
	enableDevice  = switchDevice((*db.Store).EnableDevice, "device %s is enabled")
)

// switchDevice is "devices disable" or "devices enable": change, then
// done said on stderr.
func switchDevice(change func(*db.Store, context.Context, string) error, done string) func(context.Context, storeFlags, call) error {
	return func(ctx context.Context, sf storeFlags, c call) error {
		id := c.args[0]
		if err := checkDeviceID(id); err != nil {
			return err
		}
		return sf.withStore(ctx, func(store *db.Store) error {
			if err := change(store, ctx, id); err != nil {
				return deviceError(id, err)
			}
			fmt.Fprintf(c.Stderr, done+"\n", id)
			return nil
		})
	}
}

// deleteDevice takes any id, the old format's too.
func deleteDevice(ctx context.Context, sf storeFlags, c call) error {
	id := c.args[0]
	return sf.withStore(ctx, func(store *db.Store) error {
		commands, err := store.DeleteDevice(ctx, id)
		if err != nil {
			return deviceError(id, err)
		}
		fmt.Fprintf(c.Stderr, "device %s is deleted, with its %d commands; its session, if any, is closed\n", id, commands)
		return nil
	})
}

// labelDevice sets (key=value) and deletes (key-) a device's labels.
func labelDevice(ctx context.Context, sf storeFlags, c call) error {
	id := c.args[0]
	if err := checkDeviceID(id); err != nil {
		return err
	}
	set, remove, err := labelChanges(c.args[1:])
	if err != nil {
		return err
	}
	return sf.withStore(ctx, func(store *db.Store) error {
		d, err := store.PatchLabels(ctx, id, false, set, remove)
		if err != nil {
			return deviceError(id, err)
		}
		fmt.Fprintf(c.Stderr, "device %s has the labels %s\n", id, formatLabels(d.Labels))
		return nil
	})
}

// importLines reads "id" or "id,secret" lines and provisions them in
// batches, writing "id,secret" for each device added. Ids that exist are
// skipped (and reported), so an interrupted import can be run again.
func importLines(ctx context.Context, store *db.Store, stdio IO, log *slog.Logger) error {
	const batchSize = 1000
	im := &importer{store: store, stdio: stdio}
	seen := make(map[string]int) // id → line: an id given twice would get two secrets, one of them wrong
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
		im.creds = append(im.creds, db.Credential{ID: c.ID, SecretHash: secret.Hash(c.Secret)})
		im.lines = append(im.lines, c)
		if len(im.creds) == batchSize {
			if err := im.flush(ctx); err != nil {
				return fmt.Errorf("near line %d: %w", n, err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := im.flush(ctx); err != nil {
		return err
	}
	log.Info("imported devices", "added", im.added, "skipped", im.skipped)
	return nil
}

// importer adds a batch of devices at a time.
type importer struct {
	store          *db.Store
	stdio          IO
	creds          []db.Credential
	lines          []secret.Credential // creds with their secrets, printed once they are stored
	added, skipped int
}

// flush adds the batch and prints the lines of the devices it added.
func (im *importer) flush(ctx context.Context) error {
	if len(im.creds) == 0 {
		return nil
	}
	existing, err := im.store.AddDevices(ctx, im.creds)
	if err != nil {
		return err
	}
	exists := make(map[string]bool, len(existing))
	for _, id := range existing {
		exists[id] = true
		fmt.Fprintf(im.stdio.Stderr, "skipped %s: it exists\n", id)
	}
	for i, c := range im.creds {
		if !exists[c.ID] {
			if err := secret.WriteCredential(im.stdio.Stdout, im.lines[i]); err != nil {
				return err
			}
		}
	}
	im.added, im.skipped = im.added+len(im.creds)-len(existing), im.skipped+len(existing)
	im.creds, im.lines = im.creds[:0], im.lines[:0]
	return nil
}
