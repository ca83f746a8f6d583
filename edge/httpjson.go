package edge

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"

	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"
	"github.com/switchboard-iot/switchboard/internal/problem"
)

// maxBody bounds request bodies.
const maxBody = 64 << 10

// decodeJSON reads a request body into v, strictly: a misspelt field is an
// error, not a silently ignored one. On failure it has answered. The
// Content-Type is not checked: the body must be JSON whatever it says, and
// "curl -d" labels JSON as a form.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	return decodeJSONLimit(w, r, v, maxBody)
}

// decodeJSONLimit is decodeJSON for a body of at most limit bytes (a job's
// list of device ids outgrows maxBody).
func decodeJSONLimit(w http.ResponseWriter, r *http.Request, v any, limit int64) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, limit))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		// Only spaces may follow the value (dec.More would let a stray
		// "]" or "}" through).
		if _, next := dec.Token(); next != io.EOF {
			err = cmp.Or(next, errors.New("more than one JSON value"))
		}
	}
	var tooBig *http.MaxBytesError
	switch {
	case err == nil:
		bodyRead(w)
		return true
	case errors.Is(err, os.ErrDeadlineExceeded):
		w.Header().Set("Connection", "close")
		problem.RequestTimeout.Write(w, "the request body did not arrive in time")
	case errors.As(err, &tooBig):
		problem.RequestTooLarge.Write(w, fmt.Sprintf("this body is limited to %d KiB", limit>>10))
	case errors.Is(err, io.EOF):
		problem.InvalidJSON.Write(w, "the request body is empty")
	default:
		problem.InvalidJSON.Write(w, err.Error())
	}
	return false
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// uuidParam reads the route's {id} as a UUID (a command's, a job's), or
// answers the problem invalid with detail.
func uuidParam(w http.ResponseWriter, r *http.Request, invalid problem.Type, detail string) (uuid.UUID, bool) {
	id, err := uuid.Parse(chi.URLParam(r, "id"))
	if err != nil {
		invalid.Write(w, detail)
		return uuid.Nil, false
	}
	return id, true
}
