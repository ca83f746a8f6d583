package edge

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/device/protocol"
	"github.com/switchboard-iot/switchboard/internal/command"
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

	// A retry: at most MaxJobAttempts commands a target, the first retry
	// DefaultJobBackoff (at most MaxJobBackoff) after the failure.
	MaxJobAttempts    = 10
	DefaultJobBackoff = 10 * time.Second
	MaxJobBackoff     = time.Hour
	// MaxJobStartDelay is how far ahead a job may be scheduled.
	MaxJobStartDelay = 30 * 24 * time.Hour
	// A title is one line; a description may hold several (characters).
	MaxJobTitle       = 128
	MaxJobDescription = 2000
)

// jobTarget is the "target" of a job request: exactly one kind.
type jobTarget struct {
	All     *bool     `json:"all,omitempty"`
	Label   *string   `json:"label,omitempty"`
	Region  *string   `json:"region,omitempty"`
	Devices *[]string `json:"devices,omitempty"`
}

// jobRetry is the "retry" of a job request.
type jobRetry struct {
	MaxAttempts json.RawMessage   `json:"max_attempts"`
	Backoff     *command.Duration `json:"backoff"`
}

// jobRequest is the body of POST /v1/jobs: a command request (the same
// fields, defaults and limits), a target, the rollout's pace, and the
// job's own: its title and description, when it starts, how it retries.
type jobRequest struct {
	commandRequest
	Title              string          `json:"title"`
	Description        string          `json:"description"`
	Target             *jobTarget      `json:"target"`
	Rate               json.RawMessage `json:"rate"`
	AbortFailedPercent json.RawMessage `json:"abort_failed_percent"`
	Retry              *jobRetry       `json:"retry"`
	StartAt            json.RawMessage `json:"start_at"`
	// Desired makes a state job: a JSON merge patch of each target's
	// desired state, instead of a command (name, args, timeout, ttl,
	// retry and abort_failed_percent are then refused).
	Desired json.RawMessage `json:"desired"`
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

// validate checks the request and makes it the job to store, but for its
// id, key and size limit: the filter that chooses its devices, and the
// target as it is stored (a device list as its count, so that reading the
// job back stays small). now is the edge's clock, for start_at's bound.
func (req *jobRequest) validate(now time.Time) (nj db.NewJob, bad *badRequest) {
	state := len(req.Desired) > 0
	switch {
	case state:
		if nj, bad = req.validateState(); bad != nil {
			return nj, bad
		}
	case req.Name == "":
		return nj, &badRequest{problem.InvalidCommand, `name: a job sends a command (name, args…) or patches desired state (desired): give one of the two`}
	default:
		if bad := req.commandRequest.validate(); bad != nil {
			return nj, bad
		}
		nj = db.NewJob{Name: req.Name, Args: req.Args, Timeout: time.Duration(req.Timeout), TTL: time.Duration(req.TTL)}
	}
	if bad := validJobText("title", req.Title, MaxJobTitle, ""); bad != nil {
		return nj, bad
	}
	if bad := validJobText("description", req.Description, MaxJobDescription, "\n\t"); bad != nil {
		return nj, bad
	}
	nj.Title, nj.Description = req.Title, req.Description
	var ok bool
	nj.Rate, ok = number(req.Rate, DefaultJobRate)
	if !ok || nj.Rate <= 0 || nj.Rate > MaxJobRate {
		return nj, &badRequest{problem.InvalidRate, fmt.Sprintf("rate: want a number of devices a second, above 0 and at most %d (default %g)", MaxJobRate, DefaultJobRate)}
	}
	nj.Abort, ok = number(req.AbortFailedPercent, 100)
	if !ok || nj.Abort < 0 || nj.Abort > 100 {
		return nj, &badRequest{problem.InvalidAbortFailedPercent, "abort_failed_percent: want a number from 0 to 100 (default 100: never abort)"}
	}
	if state {
		nj.MaxAttempts = 1 // a patch is applied once: nothing to retry
	} else if nj.MaxAttempts, nj.Backoff, bad = req.Retry.validate(); bad != nil {
		return nj, bad
	}
	if nj.StartAt, bad = validStartAt(req.StartAt, now); bad != nil {
		return nj, bad
	}
	nj.Filter, nj.Target, bad = req.Target.validate()
	return nj, bad
}

// validateState checks a state job's kind and patch: desired is a JSON
// merge patch (an object, as PATCH /v1/devices/{id}/state/desired takes)
// whose own size is within a document's, and no field of a command is
// given beside it (each would be silently meaningless). The patch is
// stored compacted; its size bounds the job as args do (MaxJobBytes).
func (req *jobRequest) validateState() (nj db.NewJob, bad *badRequest) {
	kind := func(field string) *badRequest {
		return &badRequest{problem.InvalidJobKind, fmt.Sprintf(
			"%s: a job with desired patches desired state and sends no command: leave out name, args, timeout, ttl, retry and abort_failed_percent", field)}
	}
	switch {
	case req.Name != "":
		return nj, &badRequest{problem.InvalidJobKind, "a job sends a command (name) or patches desired state (desired), not both: make two jobs"}
	case len(req.Args) > 0:
		return nj, kind("args")
	case req.Timeout != 0:
		return nj, kind("timeout")
	case req.TTL != 0:
		return nj, kind("ttl")
	case req.Retry != nil:
		return nj, kind("retry")
	case len(req.AbortFailedPercent) > 0:
		return nj, kind("abort_failed_percent")
	}
	var patch map[string]json.RawMessage
	if err := json.Unmarshal(req.Desired, &patch); err != nil || patch == nil {
		return nj, &badRequest{problem.InvalidJSON, `desired: want a JSON merge patch: an object, such as {"firmware":"2.4.1","old_key":null}`}
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, req.Desired); err != nil {
		return nj, &badRequest{problem.InvalidJSON, "desired: " + err.Error()}
	}
	size, err := protocol.StoredSize(compact.Bytes())
	if err != nil {
		return nj, &badRequest{problem.InvalidJSON, "desired: " + err.Error()}
	}
	if size > db.MaxStateBytes {
		return nj, &badRequest{problem.StateTooLarge, fmt.Sprintf(
			"desired: the patch is %d bytes, compacted and with numbers written out; a desired document holds at most %d KiB", size, db.MaxStateBytes>>10)}
	}
	req.argsSize = size
	return db.NewJob{Desired: compact.Bytes()}, nil
}

// validJobText checks a title or description: at most limit characters,
// none a control character but those in allowed.
func validJobText(field, s string, limit int, allowed string) *badRequest {
	if utf8.RuneCountInString(s) > limit || strings.ContainsFunc(s, func(r rune) bool {
		return unicode.IsControl(r) && !strings.ContainsRune(allowed, r)
	}) {
		what := "one line"
		if allowed != "" {
			what = "lines of text"
		}
		return &badRequest{problem.InvalidJobText, fmt.Sprintf("%s: want %s of at most %d characters, without control characters", field, what, limit)}
	}
	return nil
}

// validate checks a job's retry; none (nil) never retries.
func (r *jobRetry) validate() (maxAttempts int, backoff time.Duration, bad *badRequest) {
	if r == nil {
		return 1, 0, nil
	}
	n, ok := number(r.MaxAttempts, 0)
	if !ok || n != math.Trunc(n) || n < 1 || n > MaxJobAttempts {
		return 0, 0, &badRequest{problem.InvalidRetry, fmt.Sprintf("retry.max_attempts: want the commands a target may get, a whole number from 1 to %d (1: no retry)", MaxJobAttempts)}
	}
	backoff = DefaultJobBackoff
	if r.Backoff != nil {
		backoff = time.Duration(*r.Backoff)
	}
	if backoff < 0 || backoff > MaxJobBackoff {
		return 0, 0, &badRequest{problem.InvalidRetry, fmt.Sprintf("retry.backoff: want the wait before a first retry, from 0s to %s (default %s)", command.Duration(MaxJobBackoff), command.Duration(DefaultJobBackoff))}
	}
	if n == 1 {
		backoff = 0
	}
	return int(n), backoff, nil
}

// validStartAt reads an optional start_at: an RFC 3339 time at most
// MaxJobStartDelay after now; nil (absent, null) starts the job at once,
// as does a time already past.
func validStartAt(raw json.RawMessage, now time.Time) (*time.Time, *badRequest) {
	s := strings.TrimSpace(string(raw))
	if s == "" || s == "null" {
		return nil, nil
	}
	bad := &badRequest{problem.InvalidStartAt, fmt.Sprintf(`start_at: want an RFC 3339 time, such as "2030-01-02T03:04:05Z", at most %s ahead`, command.Duration(MaxJobStartDelay))}
	var text string
	if json.Unmarshal(raw, &text) != nil {
		return nil, bad
	}
	t, err := time.Parse(time.RFC3339Nano, text)
	if err != nil || t.After(now.Add(MaxJobStartDelay)) {
		return nil, bad
	}
	return &t, nil
}

// validate checks the target and says which devices it chooses: the
// filter, and the target as it is stored.
func (t *jobTarget) validate() (filter db.DeviceFilter, stored json.RawMessage, bad *badRequest) {
	invalid := func(detail string) *badRequest { return &badRequest{problem.InvalidTarget, detail} }
	if t == nil {
		return filter, nil, invalid(`target: want one of {"all":true}, {"label":"k=v"}, {"region":"R"} or {"devices":[ids]}`)
	}
	kinds := 0
	for _, set := range []bool{t.All != nil, t.Label != nil, t.Region != nil, t.Devices != nil} {
		if set {
			kinds++
		}
	}
	if kinds != 1 {
		return filter, nil, invalid(`target: want exactly one of "all", "label", "region" or "devices"`)
	}
	var doc any
	switch {
	case t.All != nil:
		if !*t.All {
			return filter, nil, invalid(`target: "all" must be true`)
		}
		doc = map[string]bool{"all": true}
	case t.Label != nil:
		sel, err := db.ParseLabelSelector(*t.Label)
		if err != nil {
			return filter, nil, invalid(err.Error())
		}
		if len(sel) == 0 {
			return filter, nil, invalid(`target: an empty label selector; use {"all":true} for every device`)
		}
		filter.Labels = sel
		doc = map[string]string{"label": sel.String()}
	case t.Region != nil:
		r := *t.Region
		if r == "" || len(r) > maxRegion || strings.ContainsFunc(r, func(c rune) bool { return c <= ' ' || c > '~' }) {
			return filter, nil, invalid(fmt.Sprintf("target: a region is 1-%d printable ASCII characters", maxRegion))
		}
		filter.Region = r
		doc = map[string]string{"region": r}
	default:
		ids := slices.Clone(*t.Devices)
		if len(ids) == 0 {
			return filter, nil, invalid("target: an empty device list")
		}
		if len(ids) > MaxJobDevices {
			return filter, nil, invalid(fmt.Sprintf("target: at most %d device ids (a label selector reaches more)", MaxJobDevices))
		}
		for _, id := range ids {
			if !db.ValidDeviceID(id) {
				return filter, nil, &badRequest{problem.UnknownDevices, "no device has the id " + strconv.Quote(id)}
			}
		}
		slices.Sort(ids)
		filter.IDs = slices.Compact(ids)
		doc = map[string]int{"device_count": len(filter.IDs)}
	}
	stored, _ = json.Marshal(doc)
	return filter, stored, nil
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
	nj, bad := req.validate(time.Now())
	if bad != nil {
		bad.write(w)
		return
	}
	// A selector answers with the devices it matches (how many, or that
	// none do): seeing the fleet is the read scope's. A device list names
	// its devices already; which of them do not exist a single command's
	// 404 would tell as well.
	key := apiKey(r)
	if nj.Filter.IDs == nil && !key.Has(db.ScopeRead) {
		e.insufficientScope(w, r, key, db.ScopeCommands, db.ScopeRead)
		return
	}
	maxTargets := min(MaxJobTargets, MaxJobBytes/req.argsSize)
	nj.ID, nj.APIKeyID, nj.MaxTargets = uuid.Must(uuid.NewV7()), key.ID, maxTargets
	j, err := e.store.CreateJob(r.Context(), nj)
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
		what := "args"
		if nj.Desired != nil {
			what = "desired patch"
		}
		problem.JobTooLarge.Write(w, fmt.Sprintf(
			"the target matches more than %d devices, and %d bytes of %s to each would pass %d MiB, a job's limit (%s × targets): send a smaller %s, or split the job",
			maxTargets, req.argsSize, what, MaxJobBytes>>20, what, what))
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
	// A running job starts here; a scheduled one when maintenance starts
	// it, which logs that; maintenance logs every job's end.
	e.log.Info("job created", "job", j.ID, "kind", j.Kind, "name", j.Name, "total", j.Total, "status", j.Status, "key", key.ID)
	if j.Status == db.JobRunning {
		e.cfg.JobCreated()
	}
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

// handleCancelJob cancels a running job: its undelivered commands are cancelled
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
		e.metrics.final.WithLabelValues(string(changes[i].Command.Status)).Inc() // cancelled
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
// refused, as every listing does, so that a misspelt filter (?staus=)
// does not list every job instead.
var jobListParams = []string{"status", "limit", "cursor"}

// handleListJobs lists jobs newest first, without their counts:
// ?status= one of db.JobStatuses, and the page (readPage).
func (e *Edge) handleListJobs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if !allowQuery(w, q, jobListParams) {
		return
	}
	status := db.JobStatus(q.Get("status"))
	if status != "" && !slices.Contains(db.JobStatuses, status) {
		problem.InvalidQuery.Write(w, fmt.Sprintf("status=%q: want one of %s", string(status), joinStrings(db.JobStatuses)))
		return
	}
	digest := db.JobsDigest(status)
	limit, last, ok := readPage(w, q, digest)
	if !ok {
		return
	}
	var before uuid.UUID
	if last != "" {
		var err error
		if before, err = uuid.Parse(last); err != nil {
			// A cursor this edge made holds a job id: this one was forged.
			problem.InvalidCursor.Write(w, "cursor: damaged: use the next value of a listing as it is; start again without one")
			return
		}
	}
	jobs, err := e.store.JobsCreatedBy(r.Context(), apiKey(r).Creator(), status, before, limit+1) // one more tells whether a page follows
	if err != nil {
		e.unavailable(w, "listing jobs", err)
		return
	}
	out := jobList{Jobs: jobs}
	if len(jobs) > limit {
		out.Jobs = jobs[:limit]
		out.Next = encodeCursor(digest, jobs[limit-1].ID.String())
	}
	out.Jobs = orEmpty(out.Jobs)
	writeJSON(w, http.StatusOK, out)
}

// joinStrings lists values for a problem's detail: "a, b or c".
func joinStrings[S ~string](values []S) string {
	parts := make([]string, len(values))
	for i, v := range values {
		parts[i] = string(v)
	}
	if len(parts) < 2 {
		return strings.Join(parts, "")
	}
	return strings.Join(parts[:len(parts)-1], ", ") + " or " + parts[len(parts)-1]
}

// jobCommandList is the answer to GET /v1/jobs/{id}/commands.
type jobCommandList struct {
	Commands []db.JobCommand `json:"commands"`
	Next     string          `json:"next,omitempty"` // the cursor of the next page; absent on the last
}

// jobCommandParams are the query parameters GET /v1/jobs/{id}/commands reads.
var jobCommandParams = []string{"status", "device", "error", "attempts", "limit", "cursor"}

// handleJobCommands answers a job's per-device results: its commands, in
// the order the job created them, a page at a time: ?status= (statuses,
// comma-separated), ?device=, ?error= (an error text as the job's errors
// show it), ?attempts=latest (each target's latest command, the default)
// or all (the attempts a retry replaced too), ?limit= (1-1000, 100),
// ?cursor=. Whose job it may see is as for GET /v1/jobs/{id}.
func (e *Edge) handleJobCommands(w http.ResponseWriter, r *http.Request) {
	id, ok := uuidParam(w, r, problem.InvalidJobID, "job ids are UUIDs")
	if !ok {
		return
	}
	q := r.URL.Query()
	if !allowQuery(w, q, jobCommandParams) {
		return
	}
	var f db.JobCommandFilter
	if v := q.Get("status"); v != "" {
		for part := range strings.SplitSeq(v, ",") {
			st := command.Status(strings.TrimSpace(part))
			if !slices.Contains(db.JobCommandStatuses, st) {
				problem.InvalidQuery.Write(w, fmt.Sprintf("status=%q: want statuses among %s, separated by commas", v, joinStrings(db.JobCommandStatuses)))
				return
			}
			if !slices.Contains(f.Statuses, st) {
				f.Statuses = append(f.Statuses, st)
			}
		}
		slices.Sort(f.Statuses)
	}
	if f.Device = q.Get("device"); len(f.Device) > maxFilterValue {
		problem.InvalidQuery.Write(w, fmt.Sprintf("device: want a device id of at most %d bytes", maxFilterValue))
		return
	}
	if f.Error = q.Get("error"); utf8.RuneCountInString(f.Error) > db.JobErrorText {
		problem.InvalidQuery.Write(w, fmt.Sprintf("error: want an error text as the job's errors show it, at most %d characters", db.JobErrorText))
		return
	}
	switch v := q.Get("attempts"); v {
	case "", "latest":
	case "all":
		f.AllAttempts = true
	default:
		problem.InvalidQuery.Write(w, fmt.Sprintf("attempts=%q: want latest (each target's latest command) or all", v))
		return
	}
	digest := jobCommandsDigest(id, f)
	limit, after, ok := readPageInt(w, q, digest)
	if !ok {
		return
	}
	cmds, more, err := e.store.JobCommands(r.Context(), id, apiKey(r).Creator(), f, after, limit)
	switch {
	case errors.Is(err, db.ErrNotFound):
		jobNotFound(w, id)
		return
	case errors.Is(err, db.ErrWrongJobKind):
		problem.JobKindMismatch.Write(w, "job "+id.String()+" patches desired state and has no commands: its targets' outcomes are at /v1/jobs/"+id.String()+"/targets")
		return
	case err != nil:
		e.unavailable(w, "listing a job's commands", err)
		return
	}
	out := jobCommandList{Commands: cmds}
	out.Commands = orEmpty(out.Commands)
	if more {
		out.Next = encodeCursor(digest, strconv.FormatInt(cmds[len(cmds)-1].Seq, 10))
	}
	writeJSON(w, http.StatusOK, out)
}

// jobCommandsDigest names a job and a filter in a cursor, as filterDigest
// does a device listing's.
func jobCommandsDigest(id uuid.UUID, f db.JobCommandFilter) []byte {
	return listDigest("job-commands", id.String(), joinStrings(f.Statuses), f.Device, f.Error, strconv.FormatBool(f.AllAttempts))
}

// jobTargetList is the answer to GET /v1/jobs/{id}/targets.
type jobTargetList struct {
	Targets []db.JobTarget `json:"targets"`
	Next    string         `json:"next,omitempty"` // the cursor of the next page; absent on the last
}

// jobTargetParams are the query parameters GET /v1/jobs/{id}/targets reads.
var jobTargetParams = []string{"outcome", "limit", "cursor"}

// handleJobTargets answers a state job's per-target outcomes, a page at a
// time in rollout order: ?outcome= (outcomes, comma-separated, among
// db.TargetOutcomes), ?limit=, ?cursor=. Whose job it may see is as for
// GET /v1/jobs/{id}. A command job's results are its commands.
func (e *Edge) handleJobTargets(w http.ResponseWriter, r *http.Request) {
	id, ok := uuidParam(w, r, problem.InvalidJobID, "job ids are UUIDs")
	if !ok {
		return
	}
	q := r.URL.Query()
	if !allowQuery(w, q, jobTargetParams) {
		return
	}
	var outcomes []string
	if v := q.Get("outcome"); v != "" {
		for part := range strings.SplitSeq(v, ",") {
			o := strings.TrimSpace(part)
			if !slices.Contains(db.TargetOutcomes, o) {
				problem.InvalidQuery.Write(w, fmt.Sprintf("outcome=%q: want outcomes among %s, separated by commas", v, joinStrings(db.TargetOutcomes)))
				return
			}
			if !slices.Contains(outcomes, o) {
				outcomes = append(outcomes, o)
			}
		}
		slices.Sort(outcomes)
	}
	digest := listDigest("job-targets", id.String(), strings.Join(outcomes, ","))
	// The cursor holds the next position to read (positions start at 0,
	// and a cursor's number is above 0).
	limit, from, ok := readPageInt(w, q, digest)
	if !ok {
		return
	}
	targets, more, err := e.store.JobTargets(r.Context(), id, apiKey(r).Creator(), outcomes, from, limit)
	switch {
	case errors.Is(err, db.ErrNotFound):
		jobNotFound(w, id)
		return
	case errors.Is(err, db.ErrWrongJobKind):
		problem.JobKindMismatch.Write(w, "job "+id.String()+" sends a command: its results are its commands, at /v1/jobs/"+id.String()+"/commands")
		return
	case err != nil:
		e.unavailable(w, "listing a job's targets", err)
		return
	}
	out := jobTargetList{Targets: targets}
	out.Targets = orEmpty(out.Targets)
	if more {
		out.Next = encodeCursor(digest, strconv.FormatInt(targets[len(targets)-1].Position+1, 10))
	}
	writeJSON(w, http.StatusOK, out)
}
