package edge

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"reflect"
	"strings"

	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/device/protocol"
	"github.com/switchboard-iot/switchboard/internal/command"
	"github.com/switchboard-iot/switchboard/internal/pgtext"
	"github.com/switchboard-iot/switchboard/internal/problem"
)

// maxBody bounds request bodies.
const maxBody = 64 << 10

// decodeJSON reads a request body into v, strictly: a misspelt field is an
// error, not a silently ignored one, and so is text PostgreSQL cannot store
// (invalid UTF-8, which encoding/json would quietly replace, or \u0000,
// which it would keep): no string of an accepted body can fail a query. On
// failure it has answered. The Content-Type is not checked: the body must
// be JSON whatever it says, and "curl -d" labels JSON as a form.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	return decodeJSONLimit(w, r, v, maxBody)
}

// decodeJSONLimit is decodeJSON for a body of at most limit bytes (a job's
// list of device ids outgrows maxBody).
func decodeJSONLimit(w http.ResponseWriter, r *http.Request, v any, limit int64) bool {
	body, ok := readBody(w, r, limit, problem.RequestTooLarge)
	return ok && parseJSON(w, body, v)
}

// readBody reads a body of at most limit bytes (the problem tooLarge
// beyond). On failure it has answered.
func readBody(w http.ResponseWriter, r *http.Request, limit int64, tooLarge problem.Type) ([]byte, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	var tooBig *http.MaxBytesError
	switch {
	case err == nil:
		bodyRead(w)
		return body, true
	case errors.Is(err, os.ErrDeadlineExceeded):
		w.Header().Set("Connection", "close")
		problem.RequestTimeout.Write(w, "the request body did not arrive in time")
	case errors.As(err, &tooBig):
		tooLarge.Write(w, fmt.Sprintf("this body is limited to %d KiB", limit>>10))
	default:
		problem.InvalidJSON.Write(w, err.Error())
	}
	return nil, false
}

// parseJSON reads a body into v as decodeJSON says. On failure it has
// answered.
func parseJSON(w http.ResponseWriter, body []byte, v any) bool {
	err := unmarshalStrict(body, v)
	if err == nil {
		err = protocol.CheckStorable(body)
	}
	field, value, badDuration := command.DurationError(err)
	field = jsonPath(reflect.TypeOf(v), field)
	switch {
	case err == nil:
		return true
	case errors.Is(err, io.EOF):
		problem.InvalidJSON.Write(w, "the request body is empty")
	case badDuration:
		problem.InvalidDuration.Write(w, durationDetail(field, value))
	default:
		problem.InvalidJSON.Write(w, err.Error())
	}
	return false
}

// durationDetail says what is wrong with a duration of a request.
func durationDetail(field, value string) string {
	return fmt.Sprintf(`%s: %s is not a duration: want a Go duration such as "10s", "1m30s" or "500ms", or a number of seconds`, field, value)
}

// jsonPath turns encoding/json's path to a field of a t, which names an
// embedded struct by its Go name ("commandRequest.timeout"), into the
// path the client wrote ("timeout").
func jsonPath(t reflect.Type, path string) string {
	var out []string
	for seg := range strings.SplitSeq(path, ".") {
		for t != nil && t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		switch {
		case t == nil:
		case t.Kind() == reflect.Map:
			t = t.Elem()
		case t.Kind() == reflect.Struct:
			if f, ok := t.FieldByName(seg); ok && f.Anonymous {
				t = f.Type
				continue // flattened into its parent: not in the JSON
			}
			next := t
			t = nil
			for _, f := range reflect.VisibleFields(next) {
				if name, _, _ := strings.Cut(f.Tag.Get("json"), ","); name == seg {
					t = f.Type
					break
				}
			}
		default:
			t = nil
		}
		out = append(out, seg)
	}
	return strings.Join(out, ".")
}

// unmarshalStrict reads one JSON value into v, refusing unknown fields and
// anything after the value but spaces.
func unmarshalStrict(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	// dec.More would let a stray "]" or "}" through.
	if _, next := dec.Token(); next != io.EOF {
		return cmp.Or(next, errors.New("more than one JSON value"))
	}
	return nil
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

// refuseUnstorableText answers 400 to a request whose path or query holds
// text PostgreSQL cannot store (NUL, invalid UTF-8), before any handler
// reads it: one check for every route's ids, filters and cursors.
func refuseUnstorableText(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch err := pgtext.CheckRequest(r); {
		case errors.Is(err, pgtext.ErrPath):
			problem.InvalidPath.Write(w, err.Error())
		case err != nil:
			problem.InvalidQuery.Write(w, err.Error())
		default:
			next.ServeHTTP(w, r)
		}
	})
}
