package edge

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/device/protocol"
	"github.com/switchboard-iot/switchboard/internal/problem"
)

// Device events (telemetry, alerts) read back: a live stream that resumes
// from the stored history, or pages of that history as JSON.
//
//	GET /v1/devices/{id}/events   one device's events
//	GET /v1/events                the fleet's, filtered by name, label, region
//
// With Accept: text/event-stream each event is sent as
//
//	id: <event id>
//	event: <event name>
//	data: {"id":…,"device_id":…,"name":…,"data":…,"received_at":…}
//
// and a client that reconnects with Last-Event-ID (or ?after=ID) gets what
// it missed from the stored history, then the live events, on any edge.
// Without it, the stream starts with the next event. Otherwise the answer
// is a page of history, newest first: {"events":[…],"next":"…"}, paged as
// every listing is (readPage).

// replayPage is how many stored events a resuming stream reads at a time.
const replayPage = 500

// validRegion bounds a region filter (Fly's are three letters; REGION is
// free-form but short).
var validRegion = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`).MatchString

// eventQuery is what an events request asks for.
type eventQuery struct {
	names  []string
	labels db.LabelSelector
	region string
	after  int64 // resume after this id (streams); -1: start now
	before int64 // history: events below this id (0: from the newest)
	limit  int
}

// parseEventQuery reads the query (and Last-Event-ID) of a device's events
// (device) or the fleet's (""), as a stream or as history; on a bad one it
// has answered 400. A filter may repeat; another parameter may not.
func parseEventQuery(w http.ResponseWriter, r *http.Request, device string, stream bool) (eventQuery, bool) {
	q := eventQuery{after: -1}
	allowed := []string{"name"}
	if device == "" {
		allowed = append(allowed, "label", "region")
	}
	if stream {
		allowed = append(allowed, "after")
	} else {
		allowed = append(allowed, "limit", "cursor")
	}
	values := r.URL.Query()
	if !allowQuery(w, values, allowed, "name", "label") {
		return q, false
	}
	for _, n := range values["name"] {
		for n := range strings.SplitSeq(n, ",") {
			if !protocol.ValidName(n) {
				problem.InvalidQuery.Write(w, fmt.Sprintf("name %q: event names are 1-128 letters, digits and \"_.:/-\"", n))
				return q, false
			}
			q.names = append(q.names, n)
		}
	}
	if sel := strings.Join(values["label"], ","); sel != "" {
		var err error
		if q.labels, err = db.ParseLabelSelector(sel); err != nil {
			problem.InvalidLabelSelector.Write(w, err.Error())
			return q, false
		}
	}
	if region := values.Get("region"); region != "" {
		if !validRegion(region) {
			problem.InvalidQuery.Write(w, "region: want 1-64 letters, digits and \"_.-\"")
			return q, false
		}
		q.region = region
	}
	if !stream {
		var ok bool
		q.limit, q.before, ok = readPageInt(w, values, eventsDigest(device, q))
		return q, ok
	}
	// A reconnecting EventSource sends Last-Event-ID with its original
	// URL: the header is the newer position.
	after := cmpOr(r.Header.Get("Last-Event-ID"), values.Get("after"))
	if after != "" {
		n, err := strconv.ParseInt(after, 10, 64)
		if err != nil || n < 0 {
			problem.InvalidLastEventID.Write(w, "Last-Event-ID (or ?after=): want the id of an event this stream sent")
			return q, false
		}
		q.after = n
	}
	return q, true
}

// eventsDigest names an event history and its filters in its cursors:
// names and label terms in a canonical order, so that theirs does not
// matter.
func eventsDigest(device string, q eventQuery) []byte {
	names := slices.Compact(slices.Sorted(slices.Values(q.names)))
	return listDigest("events", device, strings.Join(names, ","), q.labels.Canonical(), q.region)
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// handleDeviceEvents streams a device's events, or reads a page of them.
func (e *Edge) handleDeviceEvents(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	stream := acceptsEventStream(r)
	q, ok := parseEventQuery(w, r, id, stream)
	if !ok {
		return
	}
	if !e.deviceFound(w, r, id) {
		return
	}
	if !stream {
		e.eventHistory(w, r, eventsDigest(id, q), db.EventPage{Before: q.before, Limit: q.limit, Device: id, Names: q.names})
		return
	}
	if q.after > 0 {
		// A resume point must be this device's event: another stream's
		// id would skip or repeat events.
		owner, err := e.store.EventDevice(r.Context(), q.after)
		switch {
		case err == nil && owner != id:
			problem.InvalidLastEventID.Write(w, fmt.Sprintf("event %d is not one of device %q's", q.after, id))
			return
		case errors.Is(err, db.ErrNotFound):
			if !e.resumable(w, r, q.after) {
				return
			}
		case err != nil:
			e.unavailable(w, "reading an event", err)
			return
		}
	}
	match := func(ev *db.FleetEvent) bool {
		return ev.DeviceID == id && (len(q.names) == 0 || slices.Contains(q.names, ev.Name))
	}
	e.streamEvents(w, r, q.after, match, func(after int64) ([]db.Event, int64, bool, error) {
		events, err := e.store.DeviceEventsAfter(r.Context(), id, after, replayPage)
		if len(events) == 0 {
			return nil, after, true, err
		}
		return events, events[len(events)-1].ID, len(events) < replayPage, err
	})
}

// handleFleetEvents streams the fleet's events, or reads a page of them,
// filtered by event name, device label selector and region.
func (e *Edge) handleFleetEvents(w http.ResponseWriter, r *http.Request) {
	stream := acceptsEventStream(r)
	q, ok := parseEventQuery(w, r, "", stream)
	if !ok {
		return
	}
	if !stream {
		e.eventHistory(w, r, eventsDigest("", q), db.EventPage{Before: q.before, Limit: q.limit, Names: q.names, Labels: q.labels, Region: q.region})
		return
	}
	if q.after > 0 {
		if _, err := e.store.EventDevice(r.Context(), q.after); errors.Is(err, db.ErrNotFound) {
			if !e.resumable(w, r, q.after) {
				return
			}
		} else if err != nil {
			e.unavailable(w, "reading an event", err)
			return
		}
	}
	match := func(ev *db.FleetEvent) bool {
		return (len(q.names) == 0 || slices.Contains(q.names, ev.Name)) &&
			(q.region == "" || ev.Region == q.region) && q.labels.Matches(ev.Labels)
	}
	e.streamEvents(w, r, q.after, match, func(after int64) ([]db.Event, int64, bool, error) {
		page, err := e.store.EventsAfter(r.Context(), after, replayPage)
		var events []db.Event
		next := after
		for i := range page {
			if match(&page[i]) {
				events = append(events, page[i].Event)
			}
			next = page[i].ID
		}
		return events, next, len(page) < replayPage, err
	})
}

// resumable checks a resume point that names no stored event: one that
// retention deleted is fine (the stream goes on after it), one beyond the
// newest event is not (it was never sent). On refusal it has answered.
func (e *Edge) resumable(w http.ResponseWriter, r *http.Request, after int64) bool {
	newest, err := e.store.LastEventID(r.Context())
	switch {
	case err != nil:
		e.unavailable(w, "reading events", err)
		return false
	case after > newest:
		problem.InvalidLastEventID.Write(w, fmt.Sprintf("no event has the id %d", after))
		return false
	}
	return true
}

// eventHistory answers a page of stored events, newest first; digest
// names the history and its filters in the page's next.
func (e *Edge) eventHistory(w http.ResponseWriter, r *http.Request, digest []byte, p db.EventPage) {
	events, next, err := e.store.EventHistory(r.Context(), p)
	if err != nil {
		e.unavailable(w, "reading events", err)
		return
	}
	page := struct {
		Events []db.Event `json:"events"`
		Next   string     `json:"next,omitempty"` // absent on the last page
	}{Events: events}
	page.Events = orEmpty(page.Events)
	if next > 0 {
		page.Next = encodeCursor(digest, strconv.FormatInt(next, 10))
	}
	writeJSON(w, http.StatusOK, page)
}

// replayFunc reads stored events after an id, oldest first, and returns
// them with the id to read after next (a filtered read may return fewer
// events than it looked at) and whether this was the last page.
type replayFunc func(after int64) (events []db.Event, next int64, last bool, err error)

// streamEvents sends events as Server-Sent Events: when after ≥ 0, the
// stored ones after it first, then the live ones the hub hands over (those
// that match), until the client leaves, the edge stops, or the stream
// falls too far behind (its client resumes with Last-Event-ID).
func (e *Edge) streamEvents(w http.ResponseWriter, r *http.Request, after int64, match func(*db.FleetEvent) bool, replay replayFunc) {
	// Subscribe before reading history: an event stored meanwhile is in
	// one or the other (or both: ids already sent are skipped).
	sub, start, err := e.events.subscribe(r.Context(), match)
	if err != nil {
		e.unavailable(w, "reading events", err)
		return
	}
	defer e.events.unsubscribe(sub)
	rc := e.startStream(w)
	if rc.Flush() != nil {
		return
	}

	sent := start
	send := func(ev db.Event) error {
		if ev.ID <= sent {
			return nil
		}
		data, err := json.Marshal(ev)
		if err != nil {
			return err
		}
		if err := e.writeEvent(w, rc, strconv.FormatInt(ev.ID, 10), ev.Name, data); err != nil {
			return err
		}
		sent = ev.ID
		e.metrics.eventsStreamed.Inc()
		return nil
	}
	if after >= 0 {
		sent = after
		for cursor := after; ; {
			events, next, last, err := replay(cursor)
			if err != nil {
				e.log.Warn("replaying device events", "err", err)
				return // the client resumes from what it got
			}
			for _, ev := range events {
				if err := send(ev); err != nil {
					return
				}
			}
			if rc.Flush() != nil {
				return
			}
			if last {
				break
			}
			cursor = next
		}
	}

	keepAlive := time.NewTicker(e.cfg.KeepAlive)
	defer keepAlive.Stop()
	for {
		select {
		case ev := <-sub.events:
			if send(ev) != nil {
				return
			}
			// Write what else is waiting before flushing.
			for more := true; more; {
				select {
				case ev := <-sub.events:
					if send(ev) != nil {
						return
					}
				default:
					more = false
				}
			}
			if rc.Flush() != nil {
				return
			}
		case <-keepAlive.C:
			if !e.keepAlive(w, rc) {
				return
			}
		case <-sub.dropped:
			return // too far behind: the client resumes from the history
		case <-r.Context().Done():
			return
		case <-e.closing:
			return // the client resumes elsewhere with Last-Event-ID
		}
	}
}
