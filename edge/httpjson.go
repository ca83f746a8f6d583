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
		problem.Write(w, http.StatusRequestTimeout, "request-timeout", "Request timeout", "the request body did not arrive in time")
	case errors.As(err, &tooBig):
		problem.Write(w, http.StatusRequestEntityTooLarge, "request-too-large", "Request too large", fmt.Sprintf("this body is limited to %d KiB", limit>>10))
	case errors.Is(err, io.EOF):
		badRequest(w, "invalid-json", "the request body is empty")
	default:
		badRequest(w, "invalid-json", err.Error())
	}
	return false
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func badRequest(w http.ResponseWriter, slug, detail string) {
	problem.Write(w, http.StatusBadRequest, slug, "Bad request", detail)
}

// uuidParam reads the route's {id} as a UUID (a command's, a job's), or
// answers 400 with slug and detail.
func uuidParam(w http.ResponseWriter, r *http.Request, slug, detail string) (uuid.UUID, bool) {
	id, err := uuid.Parse(chi.URLParam(r, "id"))
	if err != nil {
		badRequest(w, slug, detail)
		return uuid.Nil, false
	}
	return id, true
}
