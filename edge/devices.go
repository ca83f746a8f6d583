package edge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/problem"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

// handleAddDevice provisions a device, with labels if given, and shows
// its secret, once.
func (e *Edge) handleAddDevice(w http.ResponseWriter, r *http.Request) {
	var req struct {
		ID     string             `json:"id"`
		Labels map[string]*string `json:"labels"` // a null is refused, not read as ""
	}
	if !decodeJSON(w, r, &req) {
		return
	}
	if !db.ValidDeviceID(req.ID) {
		problem.InvalidDeviceID.Write(w, "id: want "+db.DeviceIDFormat)
		return
	}
	labels, err := newLabels(req.Labels)
	if err != nil {
		problem.InvalidLabels.Write(w, err.Error())
		return
	}
	devSecret := secret.New("")
	existing, err := e.store.AddDevices(r.Context(), []db.Credential{{ID: req.ID, SecretHash: secret.Hash(devSecret), Labels: labels}})
	switch {
	case errors.Is(err, db.ErrInvalid):
		problem.InvalidDeviceID.Write(w, "id: want "+db.DeviceIDFormat)
		return
	case err != nil:
		e.unavailable(w, "adding a device", err)
		return
	case len(existing) > 0:
		problem.DeviceExists.Write(w, "a device has the id "+strconv.Quote(req.ID))
		return
	}
	w.Header().Set("Location", "/v1/devices/"+req.ID)
	writeJSON(w, http.StatusCreated, map[string]string{"id": req.ID, "secret": devSecret})
}

func (e *Edge) handleGetDevice(w http.ResponseWriter, r *http.Request) {
	e.answerDevice(w, r, nil)
}

// answerDevice answers the route's device, once change (if not nil) has
// been made to it: 404 for an id no device has (or none could have), 503
// when the database cannot say (or change failed: a retry makes it again).
func (e *Edge) answerDevice(w http.ResponseWriter, r *http.Request, change func(context.Context, string) error) {
	id := chi.URLParam(r, "id")
	var d db.Device
	err := db.ErrNotFound // unless the id could name a device
	if db.ValidDeviceID(id) {
		err = nil
		if change != nil {
			err = change(r.Context(), id)
		}
		if err == nil {
			d, err = e.store.Device(r.Context(), id)
		}
	}
	switch {
	case errors.Is(err, db.ErrNotFound):
		deviceNotFound(w, id)
	case err != nil:
		e.unavailable(w, "reading or changing a device", err)
	default:
		writeJSON(w, http.StatusOK, d)
	}
}

// deviceFound answers 404 for an id no device has (or none could have),
// 503 when the database cannot say, and reports whether the device exists.
func (e *Edge) deviceFound(w http.ResponseWriter, r *http.Request, id string) bool {
	exists := false
	if db.ValidDeviceID(id) {
		var err error
		if exists, err = e.store.DeviceExists(r.Context(), id); err != nil {
			e.unavailable(w, "reading a device", err)
			return false
		}
	}
	if !exists {
		deviceNotFound(w, id)
	}
	return exists
}

func deviceNotFound(w http.ResponseWriter, id string) {
	problem.DeviceNotFound.Write(w, "no device has the id "+strconv.Quote(id))
}

// patchTypes are the media types PATCH /v1/devices/{id} reads: a JSON
// merge patch (RFC 7396), which is also what plain JSON means there.
var patchTypes = []string{"application/merge-patch+json", "application/json"}

// handlePatchDevice applies a JSON merge patch to a device: for now only
// its labels, {"labels":{"room":"kitchen","old":null}} (null deletes a
// label; "labels": null deletes them all).
func (e *Edge) handlePatchDevice(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	// The media type says what the body means (RFC 5789): a JSON Patch
	// (application/json-patch+json) read as a merge patch would do harm.
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); !slices.Contains(patchTypes, mt) {
		w.Header().Set("Accept-Patch", "application/merge-patch+json")
		problem.UnsupportedMediaType.Write(w,
			fmt.Sprintf("Content-Type %q: send a JSON merge patch as application/merge-patch+json", r.Header.Get("Content-Type")))
		return
	}
	var req struct {
		Labels json.RawMessage `json:"labels"`
	}
	if !decodeJSON(w, r, &req) {
		return
	}
	if !db.ValidDeviceID(id) {
		deviceNotFound(w, id)
		return
	}
	var clear bool
	set := map[string]string{}
	var remove []string
	switch string(req.Labels) {
	case "": // not in the patch: nothing to change
	case "null":
		clear = true
	default:
		var patch map[string]*string
		if err := json.Unmarshal(req.Labels, &patch); err != nil {
			problem.InvalidLabels.Write(w, `labels: want an object of strings, and null for a label to delete: {"room":"kitchen","old":null}`)
			return
		}
		for k, v := range patch {
			if v == nil {
				if !db.ValidLabelKey(k) {
					problem.InvalidLabels.Write(w, fmt.Sprintf("label %q: %s", k, labelKeyFormat))
					return
				}
				remove = append(remove, k)
			} else {
				set[k] = *v
			}
		}
		if err := checkLabels(set, len(set)); err != nil {
			problem.InvalidLabels.Write(w, err.Error())
			return
		}
	}
	d, err := e.store.PatchLabels(r.Context(), id, clear, set, remove)
	switch {
	case errors.Is(err, db.ErrTooManyLabels):
		problem.InvalidLabels.Write(w, fmt.Sprintf("the patch would leave more than %d labels", db.MaxLabels))
	case errors.Is(err, db.ErrNotFound):
		deviceNotFound(w, id)
	case err != nil:
		e.unavailable(w, "patching a device", err)
	default:
		writeJSON(w, http.StatusOK, d)
	}
}

const labelKeyFormat = db.LabelKeyFormat

// newLabels reads a new device's labels, refusing a null (which deletes a
// label in a PATCH) and labels that break the rules.
func newLabels(given map[string]*string) (map[string]string, error) {
	labels := make(map[string]string, len(given))
	for k, v := range given {
		if v == nil {
			return nil, fmt.Errorf("label %q: want a string (null deletes a label in a PATCH)", k)
		}
		labels[k] = *v
	}
	return labels, checkLabels(labels, len(labels))
}

// checkLabels is db.CheckLabels, which the console's label form uses too.
func checkLabels(labels map[string]string, n int) error { return db.CheckLabels(labels, n) }

// sessionListParams are the query parameters GET /v1/devices/{id}/sessions reads.
var sessionListParams = []string{"limit", "cursor"}

// handleDeviceSessions answers a device's presence history: its ended
// sessions, newest first, a page at a time (readPage); its current one is
// in GET /v1/devices/{id}.
func (e *Edge) handleDeviceSessions(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	q := r.URL.Query()
	if !allowQuery(w, q, sessionListParams) {
		return
	}
	digest := listDigest("sessions", id)
	limit, last, ok := readPage(w, q, digest)
	if !ok {
		return
	}
	var after *db.SessionKey
	if last != "" {
		if after = parseSessionKey(last); after == nil {
			// A cursor this edge made holds a key: this one was forged.
			problem.InvalidCursor.Write(w, "cursor: damaged: use the next value of a listing as it is; start again without one")
			return
		}
	}
	if !e.deviceFound(w, r, id) {
		return
	}
	sessions, more, err := e.store.DeviceSessionPage(r.Context(), id, after, limit)
	if err != nil {
		e.unavailable(w, "reading a device's sessions", err)
		return
	}
	out := struct {
		Sessions []db.SessionRecord `json:"sessions"`
		Next     string             `json:"next,omitempty"` // absent on the last page
	}{Sessions: sessions}
	out.Sessions = orEmpty(out.Sessions)
	if more {
		last := sessions[len(sessions)-1]
		out.Next = encodeCursor(digest, last.ConnectedAt.UTC().Format(time.RFC3339Nano)+" "+last.SessionID.String())
	}
	writeJSON(w, http.StatusOK, out)
}

// parseSessionKey reads the key a sessions cursor holds: "<connected_at>
// <session id>"; nil if it is not one.
func parseSessionKey(s string) *db.SessionKey {
	at, id, _ := strings.Cut(s, " ")
	t, err := time.Parse(time.RFC3339Nano, at)
	if err != nil {
		return nil
	}
	u, err := uuid.Parse(id)
	if err != nil {
		return nil
	}
	return &db.SessionKey{ConnectedAt: t, SessionID: u}
}
