package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

const devicesUsage = `usage: switchboard devices add ID
       switchboard devices import < lines
       switchboard devices rotate ID [-grace 24h]
       switchboard devices disable|enable|delete ID
       switchboard devices list [-online|-online=false] [-node N] [-region R] [-label SEL] [-q PART] [-limit N]
       switchboard devices label ID key=value… [key-…]
each on the database (DATABASE_URL), or on an edge: -edge URL (SWITCHBOARD_EDGE) with SWITCHBOARD_KEY; -json prints JSON`

// devicesCommands provision and manage devices, on the database or
// through an edge's API (manageFlags). Only secrets go to stdout (and the
// list, and -json's documents); what was done is told on stderr.
var devicesCommands = group{usage: devicesUsage, subs: map[string]command{
	"add":     cmd[manageFlags]{define: defineManageFlags, nargs: exactly(1), run: addDevice},
	"import":  cmd[manageFlags]{define: defineManageFlags, nargs: exactly(0), run: importDevices},
	"rotate":  cmd[rotateFlags]{define: defineRotateFlags, nargs: exactly(1), run: rotateDevice},
	"disable": cmd[manageFlags]{define: defineManageFlags, nargs: exactly(1), run: disableDevice},
	"enable":  cmd[manageFlags]{define: defineManageFlags, nargs: exactly(1), run: enableDevice},
	"delete":  cmd[manageFlags]{define: defineManageFlags, nargs: exactly(1), run: deleteDevice},
	"list":    cmd[listFlags]{define: defineListFlags, nargs: exactly(0), run: listDevices},
	"label":   cmd[manageFlags]{define: defineManageFlags, nargs: atLeast(2), run: labelDevice}, // the id and at least one change
}}

// manageFlags are the flags of "devices" and "apikeys": the database's,
// or an edge's and its key's.
type manageFlags struct {
	store      storeFlags
	api        apiFlags
	dbURLGiven func() bool
}

func defineManageFlags(f flags) manageFlags {
	return manageFlags{store: defineStoreFlags(f), api: defineAPIFlags(f), dbURLGiven: f.given("database-url")}
}

// onEdge runs the command through the edge when one is given (then it
// speaks HTTP only), else on the database. A -database-url on the
// command line wins over SWITCHBOARD_EDGE; both as flags are refused.
func (mf manageFlags) onEdge(ctx context.Context, c call, edge func(*client) error, store func(*db.Store) error) error {
	switch {
	case mf.api.urlGiven() && mf.dbURLGiven():
		fmt.Fprintln(c.Stderr, "give -edge or -database-url, not both")
		return ErrUsage
	case *mf.api.url != "" && !mf.dbURLGiven():
		cl, err := mf.api.client(c)
		if err != nil {
			return err
		}
		return edge(cl)
	case *mf.store.url == "":
		return errors.New("a database or an edge is required: set DATABASE_URL (-database-url), or SWITCHBOARD_EDGE (-edge) with the API key in SWITCHBOARD_KEY")
	}
	return mf.store.withStore(ctx, store)
}

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

// newDevice is the answer of POST /v1/devices: the secret, shown once.
type newDevice struct {
	ID     string `json:"id"`
	Secret string `json:"secret"`
}

// addDevice provisions one device and prints its secret alone.
func addDevice(ctx context.Context, mf manageFlags, c call) error {
	id := c.args[0]
	if err := checkDeviceID(id); err != nil {
		return err
	}
	var added got[newDevice]
	err := mf.onEdge(ctx, c, func(cl *client) (err error) {
		added, _, err = fetch[newDevice](ctx, cl, request{method: http.MethodPost, path: "/v1/devices", body: jsonBody(map[string]string{"id": id})})
		return err
	}, func(store *db.Store) error {
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
		added.v = newDevice{ID: id, Secret: devSecret}
		return nil
	})
	if err != nil {
		return err
	}
	if *mf.api.json {
		return added.writeJSON(c.Stdout)
	}
	_, err = fmt.Fprintln(c.Stdout, added.v.Secret)
	return err
}

func importDevices(ctx context.Context, mf manageFlags, c call) error {
	return mf.onEdge(ctx, c, func(cl *client) error {
		return importLines(ctx, edgeImport(ctx, cl), c.IO, c.log, *mf.api.json)
	}, func(store *db.Store) error {
		return importLines(ctx, storeImport(ctx, store), c.IO, c.log, *mf.api.json)
	})
}

// rotateFlags are the flags of "devices rotate".
type rotateFlags struct {
	manage manageFlags
	grace  *time.Duration
}

func defineRotateFlags(f flags) rotateFlags {
	return rotateFlags{
		manage: defineManageFlags(f),
		grace:  f.Duration("grace", db.DefaultRotationGrace, "how long the old secret keeps working, for the device to pick up the new one (0: not at all)"),
	}
}

// rotation is the answer of POST /v1/devices/{id}/rotate.
type rotation struct {
	ID                  string    `json:"id"`
	Secret              string    `json:"secret"`
	PreviousSecretUntil time.Time `json:"previous_secret_until"`
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
	var rot got[rotation]
	err := rf.manage.onEdge(ctx, c, func(cl *client) (err error) {
		rot, _, err = fetch[rotation](ctx, cl, request{method: http.MethodPost, path: pathOf("/v1/devices", id, "rotate"),
			body: jsonBody(map[string]string{"grace": rf.grace.String()})})
		return err
	}, func(store *db.Store) error {
		devSecret := secret.New("")
		until, err := store.RotateDeviceSecret(ctx, id, secret.Hash(devSecret), *rf.grace)
		if err != nil {
			return deviceError(id, err)
		}
		rot.v = rotation{ID: id, Secret: devSecret, PreviousSecretUntil: until}
		return nil
	})
	if err != nil {
		return err
	}
	if *rf.manage.api.json {
		err = rot.writeJSON(c.Stdout)
	} else {
		_, err = fmt.Fprintln(c.Stdout, rot.v.Secret)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(c.Stderr, "device %s has a new secret; the old one works for %s more\n", id, *rf.grace)
	return nil
}

var (
	disableDevice = switchDevice("disable", (*db.Store).DisableDevice, "device %s is disabled: its connections are refused, and its session, if any, is closed")
	enableDevice  = switchDevice("enable", (*db.Store).EnableDevice, "device %s is enabled")
)

// switchDevice is "devices disable" or "devices enable": change (route is
// the API's), then done said on stderr; -json prints the device.
func switchDevice(route string, change func(*db.Store, context.Context, string) error, done string) func(context.Context, manageFlags, call) error {
	return func(ctx context.Context, mf manageFlags, c call) error {
		id := c.args[0]
		if err := checkDeviceID(id); err != nil {
			return err
		}
		var d got[db.Device]
		err := mf.onEdge(ctx, c, func(cl *client) (err error) {
			d, _, err = fetch[db.Device](ctx, cl, request{method: http.MethodPost, path: pathOf("/v1/devices", id, route)})
			return err
		}, func(store *db.Store) error {
			if err := change(store, ctx, id); err != nil {
				return deviceError(id, err)
			}
			if *mf.api.json {
				var err error
				d.v, err = store.Device(ctx, id)
				return deviceError(id, err)
			}
			return nil
		})
		if err != nil {
			return err
		}
		fmt.Fprintf(c.Stderr, done+"\n", id)
		if *mf.api.json {
			return d.writeJSON(c.Stdout)
		}
		return nil
	}
}

// deletedDevice is the answer of DELETE /v1/devices/{id}.
type deletedDevice struct {
	ID      string           `json:"id"`
	Deleted db.DeletedDevice `json:"deleted"`
}

// deleteDevice takes any id, the old format's too.
func deleteDevice(ctx context.Context, mf manageFlags, c call) error {
	id := c.args[0]
	var gone got[deletedDevice]
	err := mf.onEdge(ctx, c, func(cl *client) (err error) {
		gone, _, err = fetch[deletedDevice](ctx, cl, request{method: http.MethodDelete, path: pathOf("/v1/devices", id)})
		return err
	}, func(store *db.Store) error {
		deleted, err := store.DeleteDevice(ctx, id)
		gone.v = deletedDevice{ID: id, Deleted: deleted}
		return deviceError(id, err)
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(c.Stderr, "device %s is deleted, with its %d commands, %d events and %d past sessions; its session, if any, is closed\n",
		id, gone.v.Deleted.Commands, gone.v.Deleted.Events, gone.v.Deleted.Sessions)
	if *mf.api.json {
		return gone.writeJSON(c.Stdout)
	}
	return nil
}

// labelDevice sets (key=value) and deletes (key-) a device's labels.
func labelDevice(ctx context.Context, mf manageFlags, c call) error {
	id := c.args[0]
	if err := checkDeviceID(id); err != nil {
		return err
	}
	set, remove, err := labelChanges(c.args[1:])
	if err != nil {
		return err
	}
	var d got[db.Device]
	err = mf.onEdge(ctx, c, func(cl *client) (err error) {
		// A JSON merge patch: a label set to null is deleted.
		labels := map[string]*string{}
		for k, v := range set {
			labels[k] = &v
		}
		for _, k := range remove {
			labels[k] = nil
		}
		d, _, err = fetch[db.Device](ctx, cl, request{method: http.MethodPatch, path: pathOf("/v1/devices", id),
			body: jsonBody(map[string]any{"labels": labels}), contentType: "application/merge-patch+json"})
		return err
	}, func(store *db.Store) (err error) {
		d.v, err = store.PatchLabels(ctx, id, false, set, remove)
		return deviceError(id, err)
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(c.Stderr, "device %s has the labels %s\n", id, formatLabels(d.v.Labels))
	if *mf.api.json {
		return d.writeJSON(c.Stdout)
	}
	return nil
}

// importedDevice is what became of one line of an import: an entry of
// the answer of POST /v1/devices:import, with the line's number in the
// whole input.
type importedDevice struct {
	Line       int    `json:"line"`
	ID         string `json:"id"`
	Status     string `json:"status"`           // "added", or "exists" (left as it was)
	Secret     string `json:"secret,omitempty"` // an added device's
	SameSecret *bool  `json:"same_secret,omitempty"`
}

// importBatch stores a batch of checked lines and says what became of
// each, in order.
type importBatch func([]db.ImportLine) ([]importedDevice, error)

// storeImport adds a batch to the database.
func storeImport(ctx context.Context, store *db.Store) importBatch {
	return func(lines []db.ImportLine) ([]importedDevice, error) {
		existing, err := store.ImportDevices(ctx, lines)
		if err != nil {
			return nil, err
		}
		out := make([]importedDevice, len(lines))
		for i, l := range lines {
			out[i] = importedDevice{Line: l.Line, ID: l.ID, Status: "added", Secret: l.Secret}
			if same, exists := existing[l.ID]; exists {
				out[i].Status, out[i].Secret = "exists", ""
				if l.Given {
					out[i].SameSecret = &same
				}
			}
		}
		return out, nil
	}
}

// edgeImport sends a batch to POST /v1/devices:import as JSON lines, with
// every line's secret (the generated ones too): a batch whose answer was
// lost can be sent again, and its lines answer "exists".
func edgeImport(ctx context.Context, cl *client) importBatch {
	return func(lines []db.ImportLine) ([]importedDevice, error) {
		var body bytes.Buffer
		for _, l := range lines {
			body.Write(jsonBody(map[string]string{"id": l.ID, "secret": l.Secret}))
			body.WriteByte('\n')
		}
		var answer struct {
			Devices []importedDevice `json:"devices"`
		}
		a, err := cl.do(ctx, request{method: http.MethodPost, path: "/v1/devices:import", body: body.Bytes(), contentType: "application/jsonl"})
		if err != nil {
			return nil, err
		}
		if err := json.Unmarshal(a.body, &answer); err != nil || len(answer.Devices) != len(lines) {
			return nil, fmt.Errorf("POST /v1/devices:import: the edge answered %d lines for %d (%v)", len(answer.Devices), len(lines), err)
		}
		for i, l := range lines {
			d := &answer.Devices[i]
			d.Line = l.Line // the edge numbers the batch's lines
			if d.Status == "added" && d.Secret == "" {
				d.Secret = l.Secret
			}
		}
		return answer.Devices, nil
	}
}

// importLines reads "id" or "id,secret" lines and provisions them in
// batches of 1000, writing "id,secret" for each device added (-json: a
// JSON array of what became of every line). Ids that exist are skipped
// (and reported), so an interrupted import can be run again. The lines
// are checked by db.Import, as POST /v1/devices:import checks them, so a
// bad line is named by its number in the whole input.
func importLines(ctx context.Context, batch importBatch, stdio IO, log *slog.Logger, asJSON bool) error {
	const batchSize = 1000
	im := &importer{batch: batch, stdio: stdio}
	if asJSON {
		im.json = &jsonArray{w: stdio.Stdout}
	}
	check := db.NewImport()
	err := secret.ScanCredentials(stdio.Stdin, func(n int, c secret.Credential) error {
		l, err := check.Add(n, c, nil)
		if err != nil {
			return err
		}
		im.lines = append(im.lines, l)
		if len(im.lines) == batchSize {
			if err := im.flush(); err != nil {
				return fmt.Errorf("near line %d: %w", n, err)
			}
		}
		return nil
	})
	if err == nil {
		err = im.flush()
	}
	if im.json != nil {
		// What was stored is printed, error or not: its secrets are
		// shown nowhere else.
		if cerr := im.json.close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		return err
	}
	log.Info("imported devices", "added", im.added, "skipped", im.skipped)
	return nil
}

// importer adds a batch of devices at a time.
type importer struct {
	batch          importBatch
	stdio          IO
	json           *jsonArray      // -json's output, or nil
	lines          []db.ImportLine // with their secrets, printed once they are stored
	added, skipped int
}

// flush adds the batch and prints the lines of the devices it added.
func (im *importer) flush() error {
	if len(im.lines) == 0 {
		return nil
	}
	done, err := im.batch(im.lines)
	if err != nil {
		return err
	}
	for _, d := range done {
		if d.Status != "added" {
			fmt.Fprintf(im.stdio.Stderr, "skipped %s: it exists\n", d.ID)
			im.skipped++
		} else {
			im.added++
		}
		switch {
		case im.json != nil:
			err = im.json.add(d)
		case d.Status == "added":
			err = secret.WriteCredential(im.stdio.Stdout, secret.Credential{ID: d.ID, Secret: d.Secret})
		}
		if err != nil {
			return err
		}
	}
	im.lines = im.lines[:0]
	return nil
}
