package edge

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/problem"
)

// Limits of a job request.
const (
	DefaultJobRate = 100.0  // devices a second, when rate is omitted
	MaxJobRate     = 10000  // devices a second
	MaxJobDevices  = 10000  // ids in a {"devices":[…]} target
	MaxJobTargets  = 100000 // devices any target may match
	// MaxJobBytes bounds what a job writes: its args times its targets,
	// one command row (and frame) each. 64 MiB is 1,000 devices of the
	// largest args, or 100,000 of 671 bytes.
	MaxJobBytes = 64 << 20
	maxJobBody  = 1 << 20
	maxRegion   = 64
)

// jobTarget is the "target" of a job request: exactly one kind.
type jobTarget struct {
	All     *bool     `json:"all,omitempty"`
	Label   *string   `json:"label,omitempty"`
	Region  *string   `json:"region,omitempty"`
	Devices *[]string `json:"devices,omitempty"`
}

// jobRequest is the body of POST /v1/jobs: a command request (the same
// fields, defaults and limits), a target and the rollout's pace.
type jobRequest struct {
	commandRequest
	Target             *jobTarget      `json:"target"`
	Rate               json.RawMessage `json:"rate"`
	AbortFailedPercent json.RawMessage `json:"abort_failed_percent"`
}

// number reads an optional JSON number; absent or null is def.
func number(raw json.RawMessage, def float64) (float64, bool) {
	s := strings.TrimSpace(string(raw))
	if s == "" || s == "null" {
		return def, true
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || !strings.ContainsAny(s[:1], "-0123456789") || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, false
	}
	return v, true
}

// validate checks the request and says which devices it targets: the
// filter, and the target as it is stored (a device list as its count, so
// that reading the job back stays small).
func (req *jobRequest) validate() (filter db.DeviceFilter, stored json.RawMessage, rate, abort float64, bad *badRequest) {
	if bad := req.commandRequest.validate(); bad != nil {
		return filter, nil, 0, 0, bad
	}
	rate, ok := number(req.Rate, DefaultJobRate)
	if !ok || rate <= 0 || rate > MaxJobRate {
		return filter, nil, 0, 0, &badRequest{problem.InvalidRate, fmt.Sprintf("rate: want a number of devices a second, above 0 and at most %d (default %g)", MaxJobRate, DefaultJobRate)}
	}
	abort, ok = number(req.AbortFailedPercent, 100)
	if !ok || abort < 0 || abort > 100 {
		return filter, nil, 0, 0, &badRequest{problem.InvalidAbortFailedPercent, "abort_failed_percent: want a number from 0 to 100 (default 100: never abort)"}
	}
	t := req.Target
	invalid := func(detail string) *badRequest { return &badRequest{problem.InvalidTarget, detail} }
	if t == nil {
		return filter, nil, 0, 0, invalid(`target: want one of {"all":true}, {"label":"k=v"}, {"region":"R"} or {"devices":[ids]}`)
	}
	kinds := 0
	for _, set := range []bool{t.All != nil, t.Label != nil, t.Region != nil, t.Devices != nil} {
		if set {
			kinds++
		}
	}
	if kinds != 1 {
		return filter, nil, 0, 0, invalid(`target: want exactly one of "all", "label", "region" or "devices"`)
	}
	var doc any
	switch {
	case t.All != nil:
		if !*t.All {
			return filter, nil, 0, 0, invalid(`target: "all" must be true`)
		}
		doc = map[string]bool{"all": true}
	case t.Label != nil:
		sel, err := db.ParseLabelSelector(*t.Label)
		if err != nil {
			return filter, nil, 0, 0, invalid(err.Error())
		}
		if len(sel) == 0 {
			return filter, nil, 0, 0, invalid(`target: an empty label selector; use {"all":true} for every device`)
		}
		filter.Labels = sel
		doc = map[string]string{"label": sel.String()}
	case t.Region != nil:
		r := *t.Region
		if r == "" || len(r) > maxRegion || strings.ContainsFunc(r, func(c rune) bool { return c <= ' ' || c > '~' }) {
			return filter, nil, 0, 0, invalid(fmt.Sprintf("target: a region is 1-%d printable ASCII characters", maxRegion))
		}
		filter.Region = r
		doc = map[string]string{"region": r}
	default:
		ids := slices.Clone(*t.Devices)
		if len(ids) == 0 {
			return filter, nil, 0, 0, invalid("target: an empty device list")
		}
		if len(ids) > MaxJobDevices {
			return filter, nil, 0, 0, invalid(fmt.Sprintf("target: at most %d device ids (a label selector reaches more)", MaxJobDevices))
		}
		for _, id := range ids {
			if !db.ValidDeviceID(id) {
				return filter, nil, 0, 0, &badRequest{problem.UnknownDevices, "no device has the id " + strconv.Quote(id)}
			}
		}
		slices.Sort(ids)
		filter.IDs = slices.Compact(ids)
		doc = map[string]int{"device_count": len(filter.IDs)}
	}
	stored, _ = json.Marshal(doc)
	return filter, stored, rate, abort, nil
}

// handleCreateJob stores a job and the snapshot of its targets; the job
// runners beside the edges (package maintenance) create its commands.
// Both limits on its size are checked here, where the snapshot counts its
// targets, so that a refused job stores nothing: its command's (validate)
// and its bytes, args × targets (MaxJobBytes).
func (e *Edge) handleCreateJob(w http.ResponseWriter, r *http.Request) {
	var req jobRequest
	if !decodeJSONLimit(w, r, &req, maxJobBody) {
		return
	}
	filter, target, rate, abort, bad := req.validate()
	if bad != nil {
		bad.write(w)
		return
	}
	// A selector answers with the devices it matches (how many, or that
	// none do): seeing the fleet is the read scope's. A device list names
	// its devices already; which of them do not exist a single command's
	// 404 would tell as well.
	key := apiKey(r)
	if filter.IDs == nil && !key.Has(db.ScopeRead) {
		insufficientScope(w, key, db.ScopeCommands, db.ScopeRead)
		return
	}
	maxTargets := min(MaxJobTargets, MaxJobBytes/req.argsSize)
	j, err := e.store.CreateJob(r.Context(), db.NewJob{
		ID: uuid.Must(uuid.NewV7()), Name: req.Name, Args: req.Args,
		Timeout: time.Duration(req.Timeout), TTL: time.Duration(req.TTL),
		Target: target, Filter: filter, Rate: rate, Abort: abort,
		APIKeyID: key.ID, MaxTargets: maxTargets,
	})
	var unknown *db.UnknownDevicesError
	switch {
	case errors.As(err, &unknown):
		quoted := make([]string, len(unknown.IDs))
		for i, id := range unknown.IDs {
			quoted[i] = strconv.Quote(id)
		}
		problem.UnknownDevices.Write(w, "no devices have the ids "+strings.Join(quoted, ", ")+" (at most 10 are named)")
		return
	case errors.Is(err, db.ErrNoTargets):
		problem.NoTargets.Write(w, "the target matches no device")
		return
	case errors.Is(err, db.ErrTooManyTargets) && maxTargets < MaxJobTargets:
		problem.JobTooLarge.Write(w, fmt.Sprintf(
			"the target matches more than %d devices, and %d bytes of args to each would pass %d MiB, a job's limit (args × targets): send smaller args, or split the job",
			maxTargets, req.argsSize, MaxJobBytes>>20))
		return
	case errors.Is(err, db.ErrTooManyTargets):
		problem.TooManyTargets.Write(w, fmt.Sprintf("the target matches more than %d devices; split the job", MaxJobTargets))
		return
	case errors.Is(err, db.ErrInvalid):
		problem.InvalidCommand.Write(w, "the database cannot store this job")
		return
	case err != nil:
		e.unavailable(w, "storing a job", err)
		return
	}
	e.metrics.jobsCreated.Inc()
	e.cfg.JobCreated()
	w.Header().Set("Location", "/v1/jobs/"+j.ID.String())
	writeJSON(w, http.StatusCreated, j)
}

func jobNotFound(w http.ResponseWriter, id uuid.UUID) {
	problem.JobNotFound.Write(w, "no job has the id "+id.String())
}

// handleGetJob answers with the job and its counts, or streams it
// (Accept: text/event-stream).
func (e *Edge) handleGetJob(w http.ResponseWriter, r *http.Request) {
	id, ok := uuidParam(w, r, problem.InvalidJobID, "job ids are UUIDs")
	if !ok {
		return
	}
	lastSeq := 0
	stream := acceptsEventStream(r)
	if stream {
		if lastSeq, ok = parseLastEventID(r.Header.Get("Last-Event-ID")); !ok {
			problem.InvalidLastEventID.Write(w, "Last-Event-ID: want the id of an event this stream sent")
			return
		}
	}
	j, err := e.store.Job(r.Context(), id)
	switch {
	case errors.Is(err, db.ErrNotFound) || err == nil && !apiKey(r).Sees(j.APIKeyID):
		jobNotFound(w, id)
	case err != nil:
		e.unavailable(w, "reading a job", err)
	case stream:
		e.streamJob(w, r, j, lastSeq)
	default:
		writeJSON(w, http.StatusOK, j)
	}
}

// streamJob writes the job as Server-Sent Events: a "progress" event at
// once and each time its counts or status change (read at most every
// JobStreamInterval), then an event named after its final status, and the
// stream ends. Ids count on from the Last-Event-ID the client resumed
// with; each event carries the whole job, so none needs replaying.
func (e *Edge) streamJob(w http.ResponseWriter, r *http.Request, j db.Job, seq int) {
	rc := e.startStream(w)
	var last []byte
	emit := func(j db.Job) error {
		data, err := json.Marshal(j)
		if err != nil {
			return err
		}
		name := "progress"
		if j.Status.Final() {
			name = string(j.Status)
		} else if string(data) == string(last) {
			return nil
		}
		last = data
		seq++
		if err := e.writeEvent(w, rc, strconv.Itoa(seq), name, data); err != nil {
			return err
		}
		return rc.Flush()
	}
	if err := emit(j); err != nil || j.Status.Final() {
		return
	}
	tick := time.NewTicker(e.cfg.JobStreamInterval)
	defer tick.Stop()
	keepAlive := time.NewTicker(e.cfg.KeepAlive)
	defer keepAlive.Stop()
	for {
		select {
		case <-tick.C:
			fresh, err := e.store.Job(r.Context(), j.ID)
			if err != nil {
				continue // the database is away: try on the next tick
			}
			// created_at and the like do not change: compare what does.
			if err := emit(fresh); err != nil || fresh.Status.Final() {
				return
			}
		case <-keepAlive.C:
			if !e.keepAlive(w, rc) {
				return
			}
		case <-r.Context().Done():
			return
		case <-e.closing:
			return // the client reconnects, to this edge or another
		}
	}
}

// handleCancelJob cancels a running job: its undelivered commands expire
// and no more are created. A finished job is answered as it is.
func (e *Edge) handleCancelJob(w http.ResponseWriter, r *http.Request) {
	id, ok := uuidParam(w, r, problem.InvalidJobID, "job ids are UUIDs")
	if !ok {
		return
	}
	if apiKey(r).Creator() != 0 {
		// Another key's job is not this key's to see, nor to cancel.
		switch j, err := e.store.Job(r.Context(), id); {
		case errors.Is(err, db.ErrNotFound) || err == nil && !apiKey(r).Sees(j.APIKeyID):
			jobNotFound(w, id)
			return
		case err != nil:
			e.unavailable(w, "reading a job", err)
			return
		}
	}
	j, changes, err := e.store.CancelJob(r.Context(), id)
	switch {
	case errors.Is(err, db.ErrNotFound):
		jobNotFound(w, id)
		return
	case err != nil:
		e.unavailable(w, "cancelling a job", err)
		return
	}
	for i := range changes {
		_ = e.notices.Push(db.Notice{Change: &changes[i]})
	}
	writeJSON(w, http.StatusOK, j)
}

// jobList is the answer to GET /v1/jobs.
type jobList struct {
	Jobs []db.Job `json:"jobs"`
	Next string   `json:"next,omitempty"` // the cursor of the next page; absent on the last
}

// jobListParams are the query parameters GET /v1/jobs reads; any other is
// refused, as GET /v1/devices and the events routes do, so that a
// misspelt filter (?staus=) does not list every job instead.
var jobListParams = []string{"status", "limit", "cursor"}

// handleListJobs lists jobs newest first, without their counts:
// ?status=running|done|cancelled|aborted, ?limit=N (1-100, 20), ?cursor=C.
// An unknown, repeated or malformed parameter is invalid-query.
func (e *Edge) handleListJobs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	for name, vals := range q {
		if !slices.Contains(jobListParams, name) {
			problem.InvalidQuery.Write(w, fmt.Sprintf("unknown query parameter %q: want %s", name, strings.Join(jobListParams, ", ")))
			return
		}
		if len(vals) > 1 {
			problem.InvalidQuery.Write(w, fmt.Sprintf("query parameter %q given %d times: give it once", name, len(vals)))
			return
		}
	}
	status := db.JobStatus(q.Get("status"))
	if status != "" && status != db.JobRunning && !status.Final() {
		problem.InvalidQuery.Write(w, fmt.Sprintf("status=%q: want running, done, cancelled or aborted", string(status)))
		return
	}
	limit := 20
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 100 {
			problem.InvalidQuery.Write(w, fmt.Sprintf("limit=%q: want a whole number from 1 to 100", v))
			return
		}
		limit = n
	}
	var before uuid.UUID
	if v := q.Get("cursor"); v != "" {
		id, err := uuid.Parse(v)
		if err != nil || id == uuid.Nil {
			problem.InvalidCursor.Write(w, "cursor: want the next of an earlier page")
			return
		}
		before = id
	}
	jobs, err := e.store.JobsCreatedBy(r.Context(), apiKey(r).Creator(), status, before, limit+1)
	if err != nil {
		e.unavailable(w, "listing jobs", err)
		return
	}
	out := jobList{Jobs: jobs}
	if len(jobs) > limit {
		out.Jobs = jobs[:limit]
		out.Next = jobs[limit-1].ID.String()
	}
	if out.Jobs == nil {
		out.Jobs = []db.Job{}
	}
	writeJSON(w, http.StatusOK, out)
}
