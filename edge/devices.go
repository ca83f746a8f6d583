package edge

import (
	"errors"
	"net/http"
	"strconv"

	"github.com/go-chi/chi/v5"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/problem"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

// handleAddDevice provisions a device and shows its secret, once.
func (e *Edge) handleAddDevice(w http.ResponseWriter, r *http.Request) {
	var req struct {
		ID string `json:"id"`
	}
	if !decodeJSON(w, r, &req) {
		return
	}
	if !db.ValidDeviceID(req.ID) {
		badRequest(w, "invalid-device-id", "id: want "+db.DeviceIDFormat)
		return
	}
	devSecret := secret.New("")
	existing, err := e.store.AddDevices(r.Context(), []db.Credential{{ID: req.ID, SecretHash: secret.Hash(devSecret)}})
	switch {
	case errors.Is(err, db.ErrInvalid):
		badRequest(w, "invalid-device-id", "id: want "+db.DeviceIDFormat)
		return
	case err != nil:
		e.unavailable(w, "adding a device", err)
		return
	case len(existing) > 0:
		problem.Write(w, http.StatusConflict, "device-exists", "Device exists", "a device has the id "+strconv.Quote(req.ID))
		return
	}
	w.Header().Set("Location", "/v1/devices/"+req.ID)
	writeJSON(w, http.StatusCreated, map[string]string{"id": req.ID, "secret": devSecret})
}

func (e *Edge) handleGetDevice(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	var d db.Device
	err := db.ErrNotFound // unless the id could name a device
	if db.ValidDeviceID(id) {
		d, err = e.store.Device(r.Context(), id)
	}
	switch {
	case errors.Is(err, db.ErrNotFound):
		problem.Write(w, http.StatusNotFound, "device-not-found", "Device not found", "no device has the id "+strconv.Quote(id))
	case err != nil:
		e.unavailable(w, "reading a device", err)
	default:
		writeJSON(w, http.StatusOK, d)
	}
}
