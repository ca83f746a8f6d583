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
		grace: f.Duration("grace", db.DefaultRotationGrace, "how long the old secret keeps working, for the device to pick up the new one (0: not at all)"),
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
		if _, err := store.RotateDeviceSecret(ctx, id, secret.Hash(devSecret), *rf.grace); err != nil {
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
		gone, err := store.DeleteDevice(ctx, id)
		if err != nil {
			return deviceError(id, err)
		}
		fmt.Fprintf(c.Stderr, "device %s is deleted, with its %d commands, %d events and %d past sessions; its session, if any, is closed\n",
			id, gone.Commands, gone.Events, gone.Sessions)
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
// skipped (and reported), so an interrupted import can be run again. The
// lines are checked by db.Import, as POST /v1/devices:import checks them.
func importLines(ctx context.Context, store *db.Store, stdio IO, log *slog.Logger) error {
	const batchSize = 1000
	im := &importer{store: store, stdio: stdio}
	check := db.NewImport()
	err := secret.ScanCredentials(stdio.Stdin, func(n int, c secret.Credential) error {
		l, err := check.Add(n, c, nil)
		if err != nil {
			return err
		}
		im.lines = append(im.lines, l)
		if len(im.lines) == batchSize {
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
	lines          []db.ImportLine // with their secrets, printed once they are stored
	added, skipped int
}

// flush adds the batch and prints the lines of the devices it added.
func (im *importer) flush(ctx context.Context) error {
	if len(im.lines) == 0 {
		return nil
	}
	existing, err := im.store.ImportDevices(ctx, im.lines)
	if err != nil {
		return err
	}
	for _, l := range im.lines {
		if _, exists := existing[l.ID]; exists {
			fmt.Fprintf(im.stdio.Stderr, "skipped %s: it exists\n", l.ID)
			continue
		}
		if err := secret.WriteCredential(im.stdio.Stdout, secret.Credential{ID: l.ID, Secret: l.Secret}); err != nil {
			return err
		}
	}
	im.added, im.skipped = im.added+len(im.lines)-len(existing), im.skipped+len(existing)
	im.lines = im.lines[:0]
	return nil
}
