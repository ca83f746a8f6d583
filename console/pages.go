package console

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/command"
)

// Stats window: 15 minutes of 30-second buckets.
const (
	statBucket  = 30 * time.Second
	statBuckets = 30
)

// handleOverview shows the fleet to a key with the read scope; without it
// the page says what it may not see (the whole overview is the fleet's:
// devices, regions, nodes, everyone's jobs and commands).
func (c *Console) handleOverview(w http.ResponseWriter, r *http.Request) {
	v := newView(r, "Overview", "overview")
	if !v.CanRead {
		c.render(w, http.StatusOK, "overview", v)
		return
	}
	o, err := c.store.ConsoleOverview(r.Context())
	if err != nil {
		c.unavailable(w, r, &v, err)
		return
	}
	v.Data = o
	c.render(w, http.StatusOK, "overview", v)
}

func (c *Console) handleOverviewJSON(w http.ResponseWriter, r *http.Request) {
	o, err := c.store.ConsoleOverview(r.Context())
	if err != nil {
		c.unavailable(w, r, nil, err)
		return
	}
	writeJSON(w, http.StatusOK, o)
}

// handleStatsJSON answers the last 15 minutes of completed commands in
// 30-second buckets, oldest first; the window ends at the current bucket's
// end, so the newest bucket fills as time passes.
func (c *Console) handleStatsJSON(w http.ResponseWriter, r *http.Request) {
	end := time.Now().Truncate(statBucket).Add(statBucket)
	since := end.Add(-statBucket * statBuckets)
	buckets, err := c.store.CommandStats(r.Context(), since, statBucket, statBuckets)
	if err != nil {
		c.unavailable(w, r, nil, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"bucket_seconds": statBucket.Seconds(), "buckets": buckets})
}

// devicesPage is the devices listing's data.
type devicesPage struct {
	Q, Online, Region, Label string
	Page                     db.DevicePage
	Next                     string // the next page's URL; "" on the last
	Filtered                 bool
	Deleted                  string // the device a delete just removed, said above the list
}

const devicesPerPage = 50

// handleDevices lists devices with db's listing: its filters and keyset
// pagination in the API's words (?limit=, and ?cursor= the API's cursor,
// carried with the filters in the next link). A bad filter is said on the
// page, not a 500.
func (c *Console) handleDevices(w http.ResponseWriter, r *http.Request) {
	v := newView(r, "Devices", "devices")
	if !v.CanRead {
		c.lacksScope(w, v, "read devices", "read")
		return
	}
	q := r.URL.Query()
	d := devicesPage{Q: strings.TrimSpace(q.Get("q")), Online: q.Get("online"), Region: strings.TrimSpace(q.Get("region")), Label: strings.TrimSpace(q.Get("label"))}
	var f db.DeviceFilter
	var problems []string
	if d.Q != "" {
		if db.ValidDeviceIDPart(d.Q) {
			f.IDContains = d.Q
		} else {
			problems = append(problems, "Search: a device id holds only letters, digits and \"._-\".")
		}
	}
	switch d.Online {
	case "true", "false":
		b := d.Online == "true"
		f.Online = &b
	case "", "any":
		d.Online = "any"
	default:
		problems = append(problems, "Online: choose any, online or offline.")
	}
	f.Region = d.Region
	if d.Label != "" {
		sel, err := db.ParseLabelSelector(d.Label)
		if err != nil {
			problems = append(problems, "Label: "+err.Error()+".")
		}
		f.Labels = sel
	}
	limit := devicesPerPage
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > db.MaxPage {
			problems = append(problems, fmt.Sprintf("Limit: a page holds 1 to %d devices.", db.MaxPage))
		}
		limit = n
	}
	// The page to show: ?cursor= as the API's next (the console's next
	// link is one); ?after=, an id, is the form of older links.
	after := q.Get("after")
	if cur := q.Get("cursor"); cur != "" {
		var err error
		if after, err = db.DecodeCursor(cur, f.Digest()); err != nil {
			problems = append(problems, "The page link ("+err.Error()+"): start again from the first page.")
		}
	} else if after != "" && !db.ValidDeviceIDPart(after) {
		problems = append(problems, "The page link is damaged: start again from the first page.")
	}
	d.Filtered = d.Q != "" || f.Online != nil || d.Region != "" || d.Label != ""
	v.Data = &d
	if len(problems) > 0 {
		v.Error = strings.Join(problems, " ")
		c.render(w, http.StatusBadRequest, "devices", v)
		return
	}
	page, err := c.store.ListDevices(r.Context(), f, after, limit)
	if err != nil {
		c.unavailable(w, r, &v, err)
		return
	}
	d.Page = page
	if page.More && len(page.Devices) > 0 {
		next := url.Values{}
		for k, val := range map[string]string{"q": d.Q, "region": d.Region, "label": d.Label, "limit": q.Get("limit")} {
			if val != "" {
				next.Set(k, val)
			}
		}
		if f.Online != nil {
			next.Set("online", d.Online)
		}
		next.Set("cursor", db.EncodeCursor(f.Digest(), page.Devices[len(page.Devices)-1].ID))
		d.Next = "/devices?" + next.Encode()
	}
	// After a delete (handleDelete's redirect): say it is gone, unless a
	// made-up link names a device that is there.
	if id := q.Get("deleted"); id != "" {
		exists, err := c.store.DeviceExists(r.Context(), id)
		if err != nil {
			c.unavailable(w, r, &v, err)
			return
		}
		if !exists {
			d.Deleted = id
		}
	}
	c.render(w, http.StatusOK, "devices", v)
}

// devicePage is a device page's data.
type devicePage struct {
	Device       db.Device
	Labels       []kv
	Latest       []latest
	State        db.DeviceState // desired, reported and their delta; desired's version goes in the desired form
	Events       []db.Event
	Commands     []command.Command
	CommandNames []string
	EventNames   string // comma-separated, for app.js's EventSource listeners
	Sessions     []sessionRow
	// For a key with the admin scope: the labels form's lines (as the
	// device has them, or as typed when refused), the labels the page
	// showed, why the form was refused, and the rotate form's
	// fingerprint of the current secret.
	LabelsText, LabelsBefore, LabelsError string
	Fingerprint                           string
	// For a key with the commands scope: the desired form's patch as
	// typed when refused, and why it was refused.
	DesiredPatch, DesiredError string
}

type kv struct{ Key, Value string }

type latest struct {
	Name string
	db.LatestEvent
}

func (c *Console) handleDevice(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	v := newView(r, id, "devices")
	if _, ok := c.loadDevice(w, r, &v, id); ok {
		c.render(w, http.StatusOK, "device", v)
	}
}

// loadDevice reads device id's page into v.Data; otherwise it has answered
// (403 without the read scope, 404, 503).
func (c *Console) loadDevice(w http.ResponseWriter, r *http.Request, v *view, id string) (*devicePage, bool) {
	if !v.CanRead {
		c.lacksScope(w, *v, "read devices", "read")
		return nil, false
	}
	dev, err := c.store.Device(r.Context(), id)
	switch {
	case errors.Is(err, db.ErrNotFound):
		c.notFound(w, *v, "No device has the id "+id+". See the list of devices.")
		return nil, false
	case err != nil:
		c.unavailable(w, r, v, err)
		return nil, false
	}
	d := devicePage{Device: dev}
	var labels map[string]string
	_ = jsonUnmarshal(dev.Labels, &labels)
	for k, val := range labels {
		d.Labels = append(d.Labels, kv{k, val})
	}
	sort.Slice(d.Labels, func(i, j int) bool { return d.Labels[i].Key < d.Labels[j].Key })
	names := map[string]bool{}
	for name, l := range dev.Latest {
		d.Latest = append(d.Latest, latest{name, l})
		names[name] = true
	}
	sort.Slice(d.Latest, func(i, j int) bool { return d.Latest[i].Name < d.Latest[j].Name })
	if d.State, err = c.store.State(r.Context(), id); err != nil && !errors.Is(err, db.ErrNotFound) {
		c.unavailable(w, r, v, err)
		return nil, false
	}
	d.Events, _, err = c.store.EventHistory(r.Context(), db.EventPage{Device: id, Limit: 20})
	if err != nil {
		c.unavailable(w, r, v, err)
		return nil, false
	}
	for _, e := range d.Events {
		names[e.Name] = true
	}
	d.EventNames = strings.Join(sortedKeys(names), ",")
	if v.CanCommands {
		d.Commands, err = c.store.DeviceCommands(r.Context(), id, 20)
		if err != nil {
			c.unavailable(w, r, v, err)
			return nil, false
		}
		seen := map[string]bool{}
		for _, cmd := range d.Commands {
			seen[cmd.Name] = true
		}
		d.CommandNames = sortedKeys(seen)
	}
	if v.CanAdmin {
		// The labels form shows the labels as lines, and sends them back
		// as they were (comma-separated: a hidden field is one line), so
		// that only what the operator changed is changed.
		d.LabelsText = labelLines(labels, "\n")
		d.LabelsBefore = labelLines(labels, ",")
		// The rotate form names the secret it replaces: sent twice, it
		// rotates once.
		if d.Fingerprint, err = c.store.DeviceSecretFingerprint(r.Context(), id); err != nil {
			c.unavailable(w, r, v, err)
			return nil, false
		}
	}
	d.Sessions, err = c.deviceSessions(r, dev)
	if err != nil {
		c.unavailable(w, r, v, err)
		return nil, false
	}
	v.Data = &d
	return &d, true
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// jobsPage is the jobs page's data.
type jobsPage struct {
	Jobs []db.Job
	Next string // the next page's URL; "" on the last
}

// Jobs a page: as GET /v1/jobs, 20 unless ?limit= says (at most 100).
const (
	jobsPerPage    = 20
	maxJobsPerPage = 100
)

// handleJobs lists the jobs the key may see, newest first, paged in the
// API's words: ?limit=, and ?cursor= the API's cursor.
func (c *Console) handleJobs(w http.ResponseWriter, r *http.Request) {
	v := newView(r, "Jobs", "jobs")
	if !v.CanCommands {
		c.lacksScope(w, v, "run jobs", "commands")
		return
	}
	q := r.URL.Query()
	d := &jobsPage{}
	v.Data = d
	limit := jobsPerPage
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxJobsPerPage {
			v.Error = fmt.Sprintf("Limit: a page holds 1 to %d jobs.", maxJobsPerPage)
			c.render(w, http.StatusBadRequest, "jobs", v)
			return
		}
		limit = n
	}
	var before uuid.UUID
	if s := q.Get("cursor"); s != "" {
		last, err := db.DecodeCursor(s, db.JobsDigest(""))
		id, perr := uuid.Parse(last)
		if err != nil || perr != nil || id == uuid.Nil {
			v.Error = "The page link is damaged: start again from the first page."
			c.render(w, http.StatusBadRequest, "jobs", v)
			return
		}
		before = id
	}
	jobs, err := c.store.JobsCreatedBy(r.Context(), session(r).Key.Creator(), "", before, limit+1)
	if err != nil {
		c.unavailable(w, r, &v, err)
		return
	}
	if len(jobs) > limit {
		jobs = jobs[:limit]
		next := url.Values{"cursor": {db.EncodeCursor(db.JobsDigest(""), jobs[limit-1].ID.String())}}
		if q.Get("limit") != "" {
			next.Set("limit", strconv.Itoa(limit))
		}
		d.Next = "/jobs?" + next.Encode()
	}
	d.Jobs = jobs
	c.render(w, http.StatusOK, "jobs", v)
}

func (c *Console) handleJob(w http.ResponseWriter, r *http.Request) {
	v := newView(r, "Job", "jobs")
	if !v.CanCommands {
		c.lacksScope(w, v, "see jobs", "commands")
		return
	}
	id, err := uuid.Parse(chi.URLParam(r, "id"))
	if err != nil {
		c.notFound(w, v, "A job id is a UUID; see the list of jobs.")
		return
	}
	job, err := c.store.Job(r.Context(), id)
	switch {
	case errors.Is(err, db.ErrNotFound) || err == nil && !session(r).Key.Sees(job.APIKeyID):
		c.notFound(w, v, "No job has the id "+id.String()+". See the list of jobs.")
		return
	case err != nil:
		c.unavailable(w, r, &v, err)
		return
	}
	d := jobPage{Job: job}
	for _, e := range job.Errors {
		g := failureGroup{JobError: e, Link: "/v1/jobs/" + id.String() + "/commands?" + url.Values{
			"status": {"failed,expired,cancelled"}, "error": {e.Error}}.Encode()}
		// An empty error text filters nothing: such a group is counted,
		// not listed.
		if e.Error != "" {
			g.Commands, _, err = c.store.JobCommands(r.Context(), id, 0,
				db.JobCommandFilter{Statuses: db.UnsuccessfulStatuses, Error: e.Error}, 0, failuresPerError)
			if err != nil {
				c.unavailable(w, r, &v, err)
				return
			}
		}
		g.More = e.Count - len(g.Commands)
		d.Failures = append(d.Failures, g)
	}
	errs := job.Errors
	if errs == nil {
		errs = []db.JobError{}
	}
	d.ErrorsJSON, _ = json.Marshal(errs)
	d.Backoff = time.Duration(job.Retry.Backoff).String()
	v.Title = "Job " + cmp.Or(job.Title, job.Name)
	v.Data = &d
	c.render(w, http.StatusOK, "job", v)
}

// jobPage is a job page's data: the job, and its failed commands grouped
// by error text, the commonest first (the job's Errors).
type jobPage struct {
	db.Job
	Failures []failureGroup
	// ErrorsJSON is the Errors the page was rendered with: app.js says
	// when the live ones differ, so that a reload lists them.
	ErrorsJSON []byte
	Backoff    string // the retry's, as a person reads it
}

// failureGroup is the targets whose latest command did not succeed with
// one error: the first failuresPerError of them, how many more, and where
// the API lists them all.
type failureGroup struct {
	db.JobError
	Commands []db.JobCommand
	More     int
	Link     string
}

const failuresPerError = 20

// sessionRow is one session of a device's presence history.
type sessionRow struct {
	SessionID, NodeID, Region, RemoteAddr string
	ConnectedAt                           time.Time
	DisconnectedAt                        *time.Time // nil: still connected
}

// deviceSessions is the device's presence history, newest first: its
// current session, if any, then the last ended ones (device_sessions).
func (c *Console) deviceSessions(r *http.Request, dev db.Device) ([]sessionRow, error) {
	var out []sessionRow
	if p := dev.Presence; p != nil {
		out = append(out, sessionRow{SessionID: p.SessionID.String(), NodeID: p.NodeID, Region: p.Region, RemoteAddr: p.RemoteAddr, ConnectedAt: p.ConnectedAt})
	}
	ended, err := c.store.DeviceSessions(r.Context(), dev.ID, 20)
	if err != nil {
		return nil, err
	}
	for _, s := range ended {
		out = append(out, sessionRow{SessionID: s.SessionID.String(), NodeID: s.NodeID, Region: s.Region, RemoteAddr: s.RemoteAddr,
			ConnectedAt: s.ConnectedAt, DisconnectedAt: &s.DisconnectedAt})
	}
	return out, nil
}

func jsonUnmarshal(raw []byte, v any) error {
	if len(raw) == 0 {
		return nil
	}
	return json.Unmarshal(raw, v)
}
