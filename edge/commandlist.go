package edge

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/device/protocol"
	"github.com/switchboard-iot/switchboard/internal/command"
	"github.com/switchboard-iot/switchboard/internal/problem"
)

// commandList is the answer of GET /v1/commands and GET
// /v1/devices/{id}/commands: each command as GET /v1/commands/{id} answers
// it, newest first.
type commandList struct {
	Commands []command.Command `json:"commands"`
	Next     string            `json:"next,omitempty"` // the cursor of the next page; absent on the last
}

// commandListParams are the query parameters GET /v1/commands reads; a
// device's listing reads them but device, which its path names. Any other
// is refused, so that a misspelt filter (?staus=) does not list every
// command instead. status may repeat.
var commandListParams = []string{"device", "status", "name", "job", "since", "until", "limit", "cursor"}

// handleListCommands answers GET /v1/commands: the commands the key may
// see (every key's with the read scope, else its own), filtered, newest
// first, a page at a time.
func (e *Edge) handleListCommands(w http.ResponseWriter, r *http.Request) {
	e.listCommands(w, r, "")
}

// handleDeviceCommands answers GET /v1/devices/{id}/commands: GET
// /v1/commands with the device fixed, and 404 for a device that does not
// exist.
func (e *Edge) handleDeviceCommands(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	if !db.ValidDeviceID(id) {
		deviceNotFound(w, id) // no device can have it: spare the database
		return
	}
	e.listCommands(w, r, id)
}

// listCommands answers a listing of commands; deviceID, when not "", is
// the device its path names.
func (e *Edge) listCommands(w http.ResponseWriter, r *http.Request, deviceID string) {
	q := r.URL.Query()
	params := commandListParams
	if deviceID != "" {
		params = slices.DeleteFunc(slices.Clone(params), func(p string) bool { return p == "device" })
	}
	if !allowQuery(w, q, params, "status") {
		return
	}
	f, ok := parseCommandFilter(w, q)
	if !ok {
		return
	}
	if deviceID != "" {
		f.DeviceID = deviceID
	}
	digest := commandsDigest(f)
	limit, last, ok := readPage(w, q, digest)
	if !ok {
		return
	}
	var after *db.CommandCursor
	if last != "" {
		var err error
		if after, err = parseCommandCursor(last); err != nil {
			problem.InvalidCursor.Write(w, "cursor: "+err.Error()+"; start again without one")
			return
		}
	}
	// The key's visibility is the store's filter: without the read scope,
	// another key's commands are not there to list.
	f.SentBy = apiKey(r).Creator()
	page, err := e.store.ListCommands(r.Context(), f, after, limit)
	switch {
	case err != nil:
		e.unavailable(w, "listing commands", err)
		return
	case deviceID != "" && !page.DeviceExists:
		deviceNotFound(w, deviceID)
		return
	}
	out := commandList{Commands: orEmpty(page.Commands)}
	if page.More {
		last := page.Commands[len(page.Commands)-1]
		out.Next = encodeCursor(digest, formatCommandCursor(last.CreatedAt, last.ID))
	}
	writeJSON(w, http.StatusOK, out)
}

// parseCommandFilter reads a command listing's filters. An empty value is
// as if not given (a form's empty field). On failure it has answered 400.
func parseCommandFilter(w http.ResponseWriter, q url.Values) (f db.CommandFilter, ok bool) {
	if f.DeviceID = q.Get("device"); len(f.DeviceID) > maxFilterValue {
		problem.InvalidQuery.Write(w, fmt.Sprintf("device: want a device id of at most %d bytes", maxFilterValue))
		return f, false
	}
	// status=pending,delivered or status=pending&status=delivered: either
	// reads as a list of statuses, any of which matches.
	for _, v := range q["status"] {
		for part := range strings.SplitSeq(v, ",") {
			st := command.Status(strings.TrimSpace(part))
			if st == "" && v == "" {
				continue
			}
			if !slices.Contains(command.Statuses, st) {
				problem.InvalidQuery.Write(w, fmt.Sprintf("status=%q: want statuses among %s, separated by commas", v, joinStrings(command.Statuses)))
				return f, false
			}
			if !slices.Contains(f.Statuses, st) {
				f.Statuses = append(f.Statuses, st)
			}
		}
	}
	slices.Sort(f.Statuses) // the cursor's digest reads them in one order
	if f.Name = q.Get("name"); f.Name != "" && !protocol.ValidName(f.Name) {
		problem.InvalidQuery.Write(w, `name: want a command name: 1-128 characters of letters, digits and "_.:/-", starting with a letter or digit`)
		return f, false
	}
	if v := q.Get("job"); v != "" {
		id, err := uuid.Parse(v)
		if err != nil || id == uuid.Nil {
			problem.InvalidQuery.Write(w, fmt.Sprintf("job=%q: want a job id (a UUID)", v))
			return f, false
		}
		f.JobID = id
	}
	for _, b := range []struct {
		name string
		to   **time.Time
	}{{"since", &f.Since}, {"until", &f.Until}} {
		v := q.Get(b.name)
		if v == "" {
			continue
		}
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			problem.InvalidQuery.Write(w, fmt.Sprintf("%s=%q: want an RFC 3339 time with its zone, such as 2026-11-26T08:00:00Z", b.name, v))
			return f, false
		}
		*b.to = &t
	}
	if f.Since != nil && f.Until != nil && !f.Since.Before(*f.Until) {
		problem.InvalidQuery.Write(w, "since: want a time before until")
		return f, false
	}
	return f, true
}

// commandsDigest names a command filter in a cursor, as filterDigest does
// a device listing's: a cursor with other filters is refused. The key is
// not in it: a key that lists with another's cursor sees only what it
// may, from there on.
func commandsDigest(f db.CommandFilter) []byte {
	var job, since, until string
	if f.JobID != uuid.Nil {
		job = f.JobID.String()
	}
	if f.Since != nil {
		since = f.Since.UTC().Format(time.RFC3339Nano)
	}
	if f.Until != nil {
		until = f.Until.UTC().Format(time.RFC3339Nano)
	}
	return listDigest("commands", f.DeviceID, joinStrings(f.Statuses), f.Name, job, since, until)
}

// A command cursor continues after its page's last command: its created_at
// in microseconds since the epoch (PostgreSQL's precision), a dot, its id.
func formatCommandCursor(createdAt time.Time, id uuid.UUID) string {
	return strconv.FormatInt(createdAt.UnixMicro(), 10) + "." + id.String()
}

func parseCommandCursor(s string) (*db.CommandCursor, error) {
	micros, id, ok := strings.Cut(s, ".")
	n, err := strconv.ParseInt(micros, 10, 64)
	if !ok || err != nil {
		return nil, errors.New("damaged: use the next value of a listing as it is")
	}
	uid, err := uuid.Parse(id)
	if err != nil {
		return nil, errors.New("damaged: use the next value of a listing as it is")
	}
	return &db.CommandCursor{CreatedAt: time.UnixMicro(n), ID: uid}, nil
}

// handleCancelCommand cancels a pending command: it ends cancelled and is
// never delivered (a node claims a command before it writes it). 200 with
// the command, also for one cancelled before (a retry); 409
// command-in-flight for one delivered (its device has it), command-final
// for one done, failed or expired. Whose command a key may cancel is as
// for GET /v1/commands/{id}.
func (e *Edge) handleCancelCommand(w http.ResponseWriter, r *http.Request) {
	id, ok := uuidParam(w, r, problem.InvalidCommandID, "command ids are UUIDs")
	if !ok {
		return
	}
	c, change, err := e.store.CancelCommand(r.Context(), id, apiKey(r).Creator())
	switch {
	case errors.Is(err, db.ErrNotFound):
		commandNotFound(w, id)
		return
	case errors.Is(err, db.ErrInFlight):
		problem.CommandInFlight.Write(w, fmt.Sprintf(
			"command %s was delivered: its device has it, and it ends as the device answers (or does not within its timeout)", id))
		return
	case errors.Is(err, db.ErrFinal):
		problem.CommandFinal.Write(w, fmt.Sprintf("command %s is %s already: it cannot be cancelled", id, c.Status))
		return
	case err != nil:
		e.unavailable(w, "cancelling a command", err)
		return
	}
	if change != nil {
		e.metrics.final.WithLabelValues(string(command.Cancelled)).Inc()
		_ = e.notices.Push(db.Notice{Change: change})
		// A node claiming the device's commands as this cancel committed
		// may have taken fewer than it had room for (the cancelled one
		// dropped out of its claim): it claims again.
		_ = e.notices.Push(db.Notice{Wake: c.DeviceID})
	}
	writeJSON(w, http.StatusOK, c)
}
