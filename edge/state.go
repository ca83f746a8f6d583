package edge

import (
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

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/device/protocol"
	"github.com/switchboard-iot/switchboard/internal/problem"
)

// stateETag is the entity tag of a device's state: its desired version,
// which If-Match names on PATCH .../state/desired.
func stateETag(st db.DeviceState) string {
	return strconv.Quote(strconv.FormatInt(st.DesiredVersion, 10))
}

// handleGetState answers a device's desired and reported state and their
// delta, with the desired version as its ETag.
func (e *Edge) handleGetState(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	if !db.ValidDeviceID(id) {
		deviceNotFound(w, id)
		return
	}
	var wake chan struct{}
	if acceptsEventStream(r) {
		// Subscribed before the first read: a change stored in between
		// wakes the stream, and is not missed.
		wake = e.state.subscribe(id)
		defer e.state.unsubscribe(id, wake)
	}
	st, err := e.store.State(r.Context(), id)
	switch {
	case errors.Is(err, db.ErrNotFound):
		deviceNotFound(w, id)
	case err != nil:
		e.unavailable(w, "reading a device's state", err)
	case wake != nil:
		e.streamState(w, r, id, st, wake)
	default:
		w.Header().Set("ETag", stateETag(st))
		writeJSON(w, http.StatusOK, st)
	}
}

// stateRecheck is how often a state stream reads the state without a
// wake-up (db.StateChannel): a backstop for one lost while the edge's
// listener was up but a notice failed to be sent.
const stateRecheck = 30 * time.Second

// streamState follows a device's state as Server-Sent Events named
// "state": the state now, then the state each time either version moved,
// until the client leaves, the edge drains or the device is deleted. An
// event's id is "DESIRED.REPORTED", its versions: a client that resumes
// with it as Last-Event-ID gets the state only once it differs.
func (e *Edge) streamState(w http.ResponseWriter, r *http.Request, id string, st db.DeviceState, wake <-chan struct{}) {
	lastDesired, lastReported := int64(-1), int64(-1)
	if v := r.Header.Get("Last-Event-ID"); v != "" {
		d, rep, ok := parseStateEventID(v)
		if !ok {
			problem.InvalidLastEventID.Write(w, `Last-Event-ID: want the id of an event this stream sent ("DESIRED.REPORTED", such as "3.7")`)
			return
		}
		lastDesired, lastReported = d, rep
	}
	rc := e.startStream(w)
	emit := func(st db.DeviceState) error {
		if st.DesiredVersion == lastDesired && st.ReportedVersion == lastReported {
			return nil
		}
		data, err := json.Marshal(st)
		if err != nil {
			return err
		}
		if err := e.writeEvent(w, rc, fmt.Sprintf("%d.%d", st.DesiredVersion, st.ReportedVersion), "state", data); err != nil {
			return err
		}
		lastDesired, lastReported = st.DesiredVersion, st.ReportedVersion
		return rc.Flush()
	}
	// The headers go now, even when a resumed stream has nothing to send yet.
	if emit(st) != nil || rc.Flush() != nil {
		return
	}
	recheck := time.NewTicker(stateRecheck)
	defer recheck.Stop()
	keepAlive := time.NewTicker(e.cfg.KeepAlive)
	defer keepAlive.Stop()
	for {
		select {
		case <-wake:
		case <-recheck.C:
		case <-keepAlive.C:
			if !e.keepAlive(w, rc) {
				return
			}
			continue
		case <-r.Context().Done():
			return
		case <-e.closing:
			return
		}
		st, err := e.store.State(r.Context(), id)
		switch {
		case errors.Is(err, db.ErrNotFound):
			return // deleted: nothing more will change
		case err != nil:
			continue // the database is away: the next wake-up or recheck tries again
		}
		if emit(st) != nil {
			return
		}
	}
}

// parseStateEventID reads a state stream's event id, "DESIRED.REPORTED".
func parseStateEventID(v string) (desired, reported int64, ok bool) {
	d, rep, found := strings.Cut(v, ".")
	desired, err1 := strconv.ParseInt(d, 10, 64)
	reported, err2 := strconv.ParseInt(rep, 10, 64)
	return desired, reported, found && err1 == nil && err2 == nil && desired >= 0 && reported >= 0
}

// desiredOnly is a patch's answer to a key without the scope read.
type desiredOnly struct {
	Desired          json.RawMessage `json:"desired"`
	DesiredVersion   int64           `json:"desired_version"`
	DesiredUpdatedAt *time.Time      `json:"desired_updated_at"`
}

// parseIfMatch reads If-Match: absent or "*" (nil: any version), or one
// quoted version number. ok is false for anything else.
func parseIfMatch(h string) (version *int64, ok bool) {
	h = strings.TrimSpace(h)
	if h == "" || h == "*" {
		return nil, true
	}
	unquoted, err := strconv.Unquote(h)
	if err != nil || !strings.HasPrefix(h, `"`) {
		return nil, false
	}
	v, err := strconv.ParseInt(unquoted, 10, 64)
	if err != nil || v < 0 {
		return nil, false
	}
	return &v, true
}

// handlePatchDesired applies a JSON merge patch (RFC 7396) to a device's
// desired state, in PostgreSQL under a row lock (db.PatchDesired), and
// answers the new state. If-Match, when given, must name the current
// desired version (412 otherwise). The device's node is told, and sends
// the device the whole new desired document.
func (e *Edge) handlePatchDesired(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); !slices.Contains(patchTypes, mt) {
		w.Header().Set("Accept-Patch", "application/merge-patch+json")
		problem.UnsupportedMediaType.Write(w,
			fmt.Sprintf("Content-Type %q: send a JSON merge patch as application/merge-patch+json", r.Header.Get("Content-Type")))
		return
	}
	ifMatch, ok := parseIfMatch(r.Header.Get("If-Match"))
	if !ok {
		problem.InvalidIfMatch.Write(w, `If-Match: want the desired version as the ETag gives it ("3"), or *`)
		return
	}
	body, ok := readBody(w, r, maxBody, problem.RequestTooLarge)
	if !ok {
		return
	}
	var patch map[string]json.RawMessage
	if err := unmarshalStrict(body, &patch); err != nil || patch == nil {
		problem.InvalidJSON.Write(w, `want a JSON merge patch: an object, such as {"target_celsius":21,"old_key":null}`)
		return
	}
	if err := protocol.CheckStorable(body); err != nil {
		problem.InvalidJSON.Write(w, err.Error())
		return
	}
	if !db.ValidDeviceID(id) {
		deviceNotFound(w, id)
		return
	}
	st, err := e.store.PatchDesired(r.Context(), id, body, ifMatch)
	switch {
	case errors.Is(err, db.ErrNotFound):
		deviceNotFound(w, id)
	case errors.Is(err, db.ErrVersionMismatch):
		problem.StateVersionMismatch.Write(w, err.Error()+": read the state again, and patch its ETag")
	case errors.Is(err, db.ErrStateTooLarge):
		problem.StateTooLarge.Write(w, fmt.Sprintf("%v; the limit is %d KiB", err, db.MaxStateBytes>>10))
	case err != nil:
		e.unavailable(w, "patching a device's desired state", err)
	case !apiKey(r).Has(db.ScopeRead):
		// What the device reported is the fleet's to see ("read"): a key
		// that only acts learns what it wrote.
		w.Header().Set("ETag", stateETag(st))
		writeJSON(w, http.StatusOK, desiredOnly{st.Desired, st.DesiredVersion, st.DesiredUpdatedAt})
	default:
		w.Header().Set("ETag", stateETag(st))
		writeJSON(w, http.StatusOK, st)
	}
}
