package edge

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/device/protocol"
	"github.com/switchboard-iot/switchboard/internal/command"
	"github.com/switchboard-iot/switchboard/internal/problem"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

// Managing devices over HTTP (scope admin): delete, disable, enable,
// rotate and bulk import. Each calls the store function that
// "switchboard devices" calls, so the two cannot disagree.

// handleDeleteDevice deletes a device with everything stored about it and
// closes its session (1008, "device deleted") on whichever node holds it.
// It takes any id, the old format's (with ':') too: deleting is all that
// is left to those. A device that does not exist is 404: a retry after a
// lost answer says the device is gone, and closes again a session whose
// close failed.
func (e *Edge) handleDeleteDevice(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	gone, err := e.store.DeleteDevice(r.Context(), id)
	switch {
	case errors.Is(err, db.ErrNotFound):
		deviceNotFound(w, id)
	case err != nil:
		e.unavailable(w, "deleting a device", err)
	default:
		writeJSON(w, http.StatusOK, map[string]any{"id": id, "deleted": gone})
	}
}

// handleDisableDevice refuses a device's connections and closes its
// session; handleEnableDevice lets it connect again. Both answer the
// device as it then is, and a repeat answers the same (disabled_at is the
// first disable's).
func (e *Edge) handleDisableDevice(w http.ResponseWriter, r *http.Request) {
	e.switchDevice(w, r, e.store.DisableDevice)
}

func (e *Edge) handleEnableDevice(w http.ResponseWriter, r *http.Request) {
	e.switchDevice(w, r, e.store.EnableDevice)
}

func (e *Edge) switchDevice(w http.ResponseWriter, r *http.Request, change func(context.Context, string) error) {
	if readNoBody(w, r) {
		e.answerDevice(w, r, change) // a disable whose close failed closes again when retried
	}
}

// rotation is the answer of POST /v1/devices/{id}/rotate.
type rotation struct {
	ID                  string    `json:"id"`
	Secret              string    `json:"secret"`
	PreviousSecretUntil time.Time `json:"previous_secret_until"` // when the replaced secret stops working
}

// handleRotateDevice gives a device a new secret: a random one, shown this
// once, or the one the body gives ({"secret"}, as strong as an imported
// one must be). The replaced secret keeps working for the grace
// ({"grace":"24h"} by default, "0s": not at all). A retry with the same
// given secret changes nothing and answers the same; a retry without one
// rotates again, and the secret the lost answer replaced stops at once.
func (e *Edge) handleRotateDevice(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	var req struct {
		Grace  json.RawMessage `json:"grace"`
		Secret string          `json:"secret"`
	}
	if !decodeOptionalJSON(w, r, &req) {
		return
	}
	grace, ok := durationField(w, "grace", req.Grace, db.DefaultRotationGrace)
	if !ok {
		return
	}
	if grace < 0 {
		problem.InvalidDuration.Write(w, fmt.Sprintf("grace %s: want 0s or more", command.Duration(grace)))
		return
	}
	devSecret := req.Secret
	if devSecret == "" {
		devSecret = secret.New("")
	} else if err := secret.CheckImported(devSecret); err != nil {
		problem.InvalidSecret.Write(w, err.Error())
		return
	}
	if !db.ValidDeviceID(id) {
		deviceNotFound(w, id)
		return
	}
	until, err := e.store.RotateDeviceSecret(r.Context(), id, secret.Hash(devSecret), grace)
	switch {
	case errors.Is(err, db.ErrNotFound):
		deviceNotFound(w, id)
	case err != nil:
		e.unavailable(w, "rotating a device's secret", err)
	default:
		writeJSON(w, http.StatusOK, rotation{ID: id, Secret: devSecret, PreviousSecretUntil: until})
	}
}

// Bounds of one POST /v1/devices:import: larger fleets import in several
// requests (each is one statement).
const (
	maxImportLines = 10_000
	maxImportBody  = 2 << 20
)

// The media types of an import, by what they hold.
var (
	importCSV        = []string{"text/csv"}
	importJSONLines  = []string{"application/jsonl", "application/x-ndjson", "application/json-lines"}
	importMediaTypes = strings.Join(slices.Concat(importCSV, importJSONLines), ", ")
)

// importedDevice is what became of one line of an import.
type importedDevice struct {
	Line   int    `json:"line"`
	ID     string `json:"id"`
	Status string `json:"status"`           // "added", or "exists" (left as it was)
	Secret string `json:"secret,omitempty"` // an added device's: shown this once
	// SameSecret, for an existing device whose line gave a secret, says
	// whether it is the device's: true for a retry of a lost answer.
	SameSecret *bool `json:"same_secret,omitempty"`
}

// handleImportDevices provisions devices in bulk: the body is CSV
// (text/csv: "id" or "id,secret" lines, as "switchboard devices import"
// reads) or JSON lines ({"id","secret","labels"} a line). Every line is
// checked before any is stored (db.Import: the CLI's rules), so a bad one
// stores nothing; then all go in one statement. An id that exists is left
// as it is and answered "exists", so an import can be run again; with the
// secrets given, a retry is safe (same_secret tells).
func (e *Edge) handleImportDevices(w http.ResponseWriter, r *http.Request) {
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	jsonLines := slices.Contains(importJSONLines, mt)
	if !jsonLines && !slices.Contains(importCSV, mt) {
		problem.UnsupportedMediaType.Write(w, fmt.Sprintf("Content-Type %q: an import is %s", r.Header.Get("Content-Type"), importMediaTypes))
		return
	}
	body, ok := readBody(w, r, maxImportBody, problem.ImportTooLarge)
	if !ok {
		return
	}
	lines, err := readImport(body, jsonLines)
	if errors.Is(err, errTooManyLines) {
		problem.ImportTooLarge.Write(w, err.Error())
		return
	}
	if err != nil {
		problem.InvalidImport.Write(w, err.Error())
		return
	}
	existing, err := e.store.ImportDevices(r.Context(), lines)
	if err != nil {
		e.unavailable(w, "importing devices", err)
		return
	}
	out := struct {
		Added    int              `json:"added"`
		Existing int              `json:"existing"`
		Devices  []importedDevice `json:"devices"`
	}{Devices: make([]importedDevice, 0, len(lines))}
	for _, l := range lines {
		d := importedDevice{Line: l.Line, ID: l.ID, Status: "added", Secret: l.Secret}
		if same, exists := existing[l.ID]; exists {
			d.Status, d.Secret = "exists", ""
			if l.Given {
				d.SameSecret = &same
			}
			out.Existing++
		} else {
			out.Added++
		}
		out.Devices = append(out.Devices, d)
	}
	writeJSON(w, http.StatusOK, out)
}

var errTooManyLines = fmt.Errorf("an import holds at most %d devices: send the rest in another request", maxImportLines)

// readImport checks every line of an import body.
func readImport(body []byte, jsonLines bool) ([]db.ImportLine, error) {
	im := db.NewImport()
	var lines []db.ImportLine
	add := func(n int, c secret.Credential, labels map[string]string) error {
		if len(lines) == maxImportLines {
			return errTooManyLines
		}
		l, err := im.Add(n, c, labels)
		lines = append(lines, l)
		return err
	}
	if !jsonLines {
		if err := secret.ScanCredentials(bytes.NewReader(body), func(n int, c secret.Credential) error { return add(n, c, nil) }); err != nil {
			return nil, err
		}
	} else {
		sc := bufio.NewScanner(bytes.NewReader(body))
		sc.Buffer(nil, maxImportBody)
		for n := 1; sc.Scan(); n++ {
			line := bytes.TrimSpace(sc.Bytes())
			if len(line) == 0 {
				continue
			}
			var l struct {
				ID     string             `json:"id"`
				Secret string             `json:"secret"`
				Labels map[string]*string `json:"labels"`
			}
			var labels map[string]string
			err := unmarshalStrict(line, &l)
			if err == nil {
				err = protocol.CheckStorable(line)
			}
			if err == nil {
				labels, err = newLabels(l.Labels)
			}
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", n, err)
			}
			if err := add(n, secret.Credential{ID: l.ID, Secret: l.Secret}, labels); err != nil {
				return nil, err
			}
		}
		if err := sc.Err(); err != nil {
			return nil, err
		}
	}
	if len(lines) == 0 {
		return nil, errors.New("the import holds no device")
	}
	return lines, nil
}

// decodeOptionalJSON is decodeJSON for a body that may be left out (or
// empty): v keeps its zero value then.
func decodeOptionalJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	body, ok := readBody(w, r, maxBody, problem.RequestTooLarge)
	if !ok {
		return false
	}
	return len(bytes.TrimSpace(body)) == 0 || parseJSON(w, body, v)
}

// readNoBody refuses a body on a route that reads none, rather than
// ignore what a client meant to say.
func readNoBody(w http.ResponseWriter, r *http.Request) bool {
	body, ok := readBody(w, r, maxBody, problem.RequestTooLarge)
	if ok && len(bytes.TrimSpace(body)) > 0 {
		problem.InvalidJSON.Write(w, "this route reads no body")
		return false
	}
	return ok
}

// durationField reads an optional duration of a body ("24h", or a number
// of seconds): def when absent or null. On failure it has answered
// invalid-duration.
func durationField(w http.ResponseWriter, field string, raw json.RawMessage, def time.Duration) (time.Duration, bool) {
	if len(raw) == 0 || string(raw) == "null" {
		return def, true
	}
	var d command.Duration
	if err := json.Unmarshal(raw, &d); err != nil {
		_, value, _ := command.DurationError(err)
		problem.InvalidDuration.Write(w, durationDetail(field, value))
		return 0, false
	}
	return time.Duration(d), true
}
