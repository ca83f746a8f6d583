package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/sse"
)

const jobsUsage = `usage: switchboard jobs start NAME (-all | -label SEL | -region R | -devices ID,…|@FILE) [-args JSON] [-rate 100] [-retry N] [-start-at T] [-follow] …
       switchboard jobs start -desired JSON (-all | -label SEL | -region R | -devices ID,…|@FILE) [-rate 100] [-start-at T] [-follow] …
       switchboard jobs list [-status S] [-limit N]
       switchboard jobs get ID [-follow]
       switchboard jobs cancel ID
       switchboard jobs results ID [-status S] [-device D] [-error E] [-attempts all] [-limit N]
       switchboard jobs targets ID [-outcome O] [-limit N]
on an edge: -edge URL (SWITCHBOARD_EDGE) with SWITCHBOARD_KEY; -json prints JSON`

// jobsCommands start and follow fleet jobs through an edge's API.
var jobsCommands = group{usage: jobsUsage, subs: map[string]command{
	"start":   cmd[jobStartFlags]{define: defineJobStartFlags, nargs: func(n int) bool { return n <= 1 }, run: startJob},
	"list":    cmd[jobListFlags]{define: defineJobListFlags, nargs: exactly(0), run: listJobs},
	"get":     cmd[jobGetFlags]{define: defineJobGetFlags, nargs: exactly(1), run: getJob},
	"cancel":  cmd[apiFlags]{define: defineAPIFlags, nargs: exactly(1), run: cancelJob},
	"results": cmd[jobResultsFlags]{define: defineJobResultsFlags, nargs: exactly(1), run: jobResults},
	"targets": cmd[jobTargetsFlags]{define: defineJobTargetsFlags, nargs: exactly(1), run: jobTargets},
}}

// jobStartFlags are the flags of "jobs start": the body of POST /v1/jobs.
type jobStartFlags struct {
	api                                 apiFlags
	all                                 *bool
	label, region, devices              *string
	args, title, description, startAt   *string
	desired                             *string
	timeout, ttl, backoff               *time.Duration
	rate, abort                         *float64
	retry                               *int
	follow                              *bool
	rateGiven, abortGiven, backoffGiven func() bool
}

func defineJobStartFlags(f flags) jobStartFlags {
	return jobStartFlags{
		api:          defineAPIFlags(f),
		all:          f.Bool("all", false, "target every device"),
		label:        f.String("label", "", `target the devices whose labels match this selector: "room=kitchen,fw!=2.1"`),
		region:       f.String("region", "", "target the devices in this region (their session's, or their last one's)"),
		devices:      f.String("devices", "", "target these devices: ids separated by commas, or @FILE of ids a line (@-: stdin)"),
		args:         f.String("args", "", `the command's arguments, a JSON object; @FILE reads them from a file, @- from stdin (default {})`),
		desired:      f.String("desired", "", `patch each device's desired state instead of sending a command (no NAME): a JSON merge patch such as '{"firmware":"2.4.1"}'; @FILE, @- (stdin)`),
		timeout:      f.Duration("timeout", 0, "how long each device has to reply once its command is delivered (default 10s)"),
		ttl:          f.Duration("ttl", 0, "how long each command may wait for an offline device (default 1h)"),
		rate:         f.Float64("rate", 0, "commands a second, above 0 and at most 10000 (default 100)"),
		rateGiven:    f.given("rate"),
		abort:        f.Float64("abort-failed-percent", 0, "abort the job once more than this share (0-100) of its final commands failed or expired (default 100: never)"),
		abortGiven:   f.given("abort-failed-percent"),
		retry:        f.Int("retry", 0, "commands a device may get in all, 1-10: a failed or expired one is retried until then (default 1: no retry)"),
		backoff:      f.Duration("backoff", 0, "the wait before a first retry, doubling after each (default 10s; with -retry)"),
		backoffGiven: f.given("backoff"),
		startAt:      f.String("start-at", "", "start later: an RFC 3339 time, or a duration from now (2h); at most 30 days ahead"),
		title:        f.String("title", "", "the job's title, one line"),
		description:  f.String("description", "", "the job's description"),
		follow:       f.Bool("follow", false, "then print the job's progress as it changes, until it ends"),
	}
}

// target is the job's "target": the one the flags give.
func (jf jobStartFlags) target(stdin io.Reader) (map[string]any, error) {
	var targets []map[string]any
	if *jf.all {
		targets = append(targets, map[string]any{"all": true})
	}
	if *jf.label != "" {
		targets = append(targets, map[string]any{"label": *jf.label})
	}
	if *jf.region != "" {
		targets = append(targets, map[string]any{"region": *jf.region})
	}
	if *jf.devices != "" {
		ids, err := deviceIDs(*jf.devices, stdin)
		if err != nil {
			return nil, err
		}
		targets = append(targets, map[string]any{"devices": ids})
	}
	if len(targets) != 1 {
		return nil, errors.New("give one target: -all, -label SEL, -region R or -devices IDS")
	}
	return targets[0], nil
}

// deviceIDs reads -devices: ids separated by commas, or @FILE of ids a
// line (blank lines and lines starting with # skipped).
func deviceIDs(v string, stdin io.Reader) ([]string, error) {
	name, fromFile := strings.CutPrefix(v, "@")
	if !fromFile {
		var ids []string
		for id := range strings.SplitSeq(v, ",") {
			if id = strings.TrimSpace(id); id != "" {
				ids = append(ids, id)
			}
		}
		return ids, nil
	}
	r := stdin
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return nil, fmt.Errorf("-devices: %w", err)
		}
		defer f.Close()
		r = f
	}
	ids := []string{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" && !strings.HasPrefix(line, "#") {
			ids = append(ids, line)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("-devices: %w", err)
	}
	return ids, nil
}

// body is the request of POST /v1/jobs: the fields the flags give.
func (jf jobStartFlags) body(name string, stdin io.Reader, now time.Time) (map[string]any, error) {
	if strings.HasPrefix(*jf.args, "@-") && strings.HasPrefix(*jf.devices, "@-") ||
		strings.HasPrefix(*jf.desired, "@-") && strings.HasPrefix(*jf.devices, "@-") {
		return nil, errors.New("-args (or -desired) and -devices cannot both read stdin")
	}
	var body map[string]any
	switch {
	case *jf.desired != "" && name != "":
		return nil, fmt.Errorf("a job sends a command (NAME %q) or patches desired state (-desired), not both", name)
	case *jf.desired != "":
		// A state job: the command's flags mean nothing to it.
		for _, given := range []struct {
			flag string
			set  bool
		}{{"args", *jf.args != ""}, {"timeout", *jf.timeout != 0}, {"ttl", *jf.ttl != 0}, {"retry", *jf.retry != 0},
			{"backoff", jf.backoffGiven()}, {"abort-failed-percent", jf.abortGiven()}} {
			if given.set {
				return nil, fmt.Errorf("-%s is a command job's: a -desired job sends no command", given.flag)
			}
		}
		desired, err := readObject("-desired", `{"firmware":"2.4.1"}`, *jf.desired, stdin)
		if err != nil {
			return nil, err
		}
		body = map[string]any{"desired": desired}
	case name == "":
		return nil, errors.New("give the command's NAME, or -desired JSON to patch desired state")
	}
	target, err := jf.target(stdin)
	if err != nil {
		return nil, err
	}
	if body == nil {
		args, err := readArgs(*jf.args, stdin)
		if err != nil {
			return nil, err
		}
		body = commandBody(name, args, *jf.timeout, *jf.ttl)
	}
	body["target"] = target
	if *jf.title != "" {
		body["title"] = *jf.title
	}
	if *jf.description != "" {
		body["description"] = *jf.description
	}
	if jf.rateGiven() {
		body["rate"] = *jf.rate
	}
	if jf.abortGiven() {
		body["abort_failed_percent"] = *jf.abort
	}
	switch {
	case *jf.retry != 0:
		retry := map[string]any{"max_attempts": *jf.retry}
		if jf.backoffGiven() {
			retry["backoff"] = jf.backoff.String()
		}
		body["retry"] = retry
	case jf.backoffGiven():
		return nil, errors.New("-backoff needs -retry N: the attempts a device may get")
	}
	if *jf.startAt != "" {
		at, err := timeFlag("start-at", *jf.startAt, now, 1)
		if err != nil {
			return nil, err
		}
		body["start_at"] = at
	}
	return body, nil
}

// startJob creates a job: it prints the job's id (-json: the job), then
// with -follow its progress until it ends.
func startJob(ctx context.Context, jf jobStartFlags, c call) error {
	name := ""
	if len(c.args) > 0 {
		name = c.args[0]
	}
	body, err := jf.body(name, c.Stdin, time.Now())
	if err != nil {
		return err
	}
	cl, err := jf.api.required(c)
	if err != nil {
		return err
	}
	j, _, err := fetch[db.Job](ctx, cl, request{method: http.MethodPost, path: "/v1/jobs", body: jsonBody(body)})
	if err != nil {
		return err
	}
	says := fmt.Sprintf("job %s (%s) is %s: %d devices", j.v.ID, jobWhat(j.v), j.v.Status, j.v.Total)
	if j.v.StartAt != nil && j.v.Status == db.JobScheduled {
		says += ", from " + when(j.v.StartAt, "")
	}
	fmt.Fprintln(c.Stderr, says)
	if *jf.follow {
		return followJob(ctx, cl, j.v.ID.String(), c, *jf.api.json)
	}
	if *jf.api.json {
		return j.writeJSON(c.Stdout)
	}
	_, err = fmt.Fprintln(c.Stdout, j.v.ID)
	return err
}

// jobEvent is a line of "jobs get -follow -json": an event of the job's
// stream, with the job as it then stood.
type jobEvent struct {
	Event string          `json:"event"`
	Seq   int             `json:"seq"`
	Job   json.RawMessage `json:"job"`
}

// followJob prints the job's stream (GET /v1/jobs/{id}, text/event-stream)
// until the job ends: a line per change.
func followJob(ctx context.Context, cl *client, id string, c call, asJSON bool) error {
	req := func(lastID string) (request, bool) {
		r := request{method: http.MethodGet, path: pathOf("/v1/jobs", id), header: http.Header{}}
		if lastID != "" {
			r.header.Set("Last-Event-ID", lastID)
		}
		return r, true
	}
	first, _ := req("")
	var last db.Job
	var shown string // the last line printed
	err := follow(ctx, cl, first, req, func() bool { return last.Status.Final() }, func(ev sse.Event) (bool, error) {
		if err := json.Unmarshal([]byte(ev.Data), &last); err != nil {
			return false, fmt.Errorf("the edge's %q event: %w", ev.Name, err)
		}
		seq, _ := strconv.Atoi(ev.ID)
		if asJSON {
			return last.Status.Final(), writeJSONLine(c.Stdout, jobEvent{Event: ev.Name, Seq: seq, Job: json.RawMessage(ev.Data)})
		}
		// A line per change people can see: the stream also tells changes
		// of what the line leaves out.
		line := fmt.Sprintf("%-18s %s\n", last.Status, jobProgress(last))
		if line == shown {
			return last.Status.Final(), nil
		}
		shown = line
		_, err := io.WriteString(c.Stdout, line)
		return last.Status.Final(), err
	})
	if err != nil {
		return err
	}
	if last.Status != db.JobDone {
		msg := fmt.Sprintf("job %s is %s", last.ID, last.Status)
		if len(last.Errors) > 0 {
			msg += fmt.Sprintf(": %d× %s", last.Errors[0].Count, last.Errors[0].Error)
		}
		return &outcomeError{msg, ExitNotDone}
	}
	return nil
}

// jobWhat names what a job does: its command's name, or "desired state".
func jobWhat(j db.Job) string {
	if j.Kind == db.KindState {
		return "desired state"
	}
	return j.Name
}

// jobProgress says how far a job is: its commands created, the share
// final, and its devices by their latest command's status (a state job:
// its targets patched, and by outcome, and those converged).
func jobProgress(j db.Job) string {
	if j.Kind == db.KindState {
		s := fmt.Sprintf("reached %d/%d", j.Created, j.Total)
		if c := j.StateCounts; c != nil {
			var parts []string
			for _, n := range []struct {
				name  string
				count int
			}{
				{"unsent", c.Unsent}, {"patched", c.Patched}, {"unchanged", c.Unchanged}, {"gone", c.Gone},
				{"too large", c.TooLarge}, {"converged", c.Converged},
			} {
				if n.count > 0 {
					parts = append(parts, fmt.Sprintf("%s %d", n.name, n.count))
				}
			}
			if len(parts) > 0 {
				s += ": " + strings.Join(parts, ", ")
			}
		}
		return s
	}
	s := fmt.Sprintf("created %d/%d", j.Created, j.Total)
	if j.Progress != nil {
		s += fmt.Sprintf(", %.0f%% final", *j.Progress*100)
	}
	if c := j.Counts; c != nil {
		var parts []string
		for _, n := range []struct {
			name  string
			count int
		}{
			{"unsent", c.Unsent}, {"pending", c.Pending}, {"delivered", c.Delivered}, {"done", c.Done}, {"failed", c.Failed},
			{"expired", c.Expired}, {"cancelled", c.Cancelled}, {"retrying", c.Retrying}, {"retried", c.Retried},
		} {
			if n.count > 0 {
				parts = append(parts, fmt.Sprintf("%s %d", n.name, n.count))
			}
		}
		if len(parts) > 0 {
			s += ": " + strings.Join(parts, ", ")
		}
	}
	return s
}

// writeJob prints a job for people, a field a line.
func writeJob(w io.Writer, j db.Job) error {
	retry := ""
	if j.Retry.MaxAttempts > 1 {
		retry = fmt.Sprintf("up to %d attempts, the first retry after %s", j.Retry.MaxAttempts, time.Duration(j.Retry.Backoff))
	}
	abort := ""
	if j.AbortFailedPercent < 100 {
		abort = fmt.Sprintf("when more than %g%% of its final commands failed", j.AbortFailedPercent)
	}
	var errs []string
	for _, e := range j.Errors {
		errs = append(errs, fmt.Sprintf("%d× %s", e.Count, e.Error))
	}
	return writeView(w, []field{
		{"ID", j.ID.String()}, {"KIND", string(j.Kind)}, {"NAME", j.Name}, {"TITLE", j.Title},
		{"DESCRIPTION", strings.Join(strings.Fields(j.Description), " ")},
		{"ARGS", compactJSON(j.Args)}, {"DESIRED", compactJSON(j.Desired)}, {"TARGET", compactJSON(j.Target)},
		{"RATE", strconv.FormatFloat(j.Rate, 'g', -1, 64) + "/s"}, {"ABORT", abort}, {"RETRY", retry},
		{"START AT", when(j.StartAt, "")}, {"STATUS", string(j.Status)}, {"PROGRESS", jobProgress(j)},
		{"ERRORS", strings.Join(errs, "; ")},
		{"CREATED", when(&j.CreatedAt, "")}, {"FINISHED", when(j.FinishedAt, "")},
	})
}

// jobListFlags are the flags of "jobs list".
type jobListFlags struct {
	api    apiFlags
	status *string
	limit  *int
}

func defineJobListFlags(f flags) jobListFlags {
	return jobListFlags{
		api:    defineAPIFlags(f),
		status: f.String("status", "", "only jobs of this status: scheduled, running, done, done_with_failures, cancelled or aborted"),
		limit:  f.Int("limit", 0, "list at most this many jobs, newest first (0: all of them)"),
	}
}

// jobPage is the page size "jobs list" asks for: GET /v1/jobs's largest.
const jobPage = 100

func listJobs(ctx context.Context, lf jobListFlags, c call) error {
	if *lf.limit < 0 {
		return fmt.Errorf("-limit %d: want 0 (all) or more", *lf.limit)
	}
	cl, err := lf.api.required(c)
	if err != nil {
		return err
	}
	t := newTable(c.Stdout, *lf.api.json, []string{"ID", "NAME", "TITLE", "STATUS", "DEVICES", "CREATED"}, func(j db.Job) []string {
		name := j.Name
		if j.Kind == db.KindState {
			name = truncate("desired "+compactJSON(j.Desired), 40)
		}
		return []string{j.ID.String(), name, cmpOrDash(truncate(j.Title, 40)), string(j.Status), strconv.Itoa(j.Total), when(&j.CreatedAt, "")}
	})
	_, more, err := cl.list(ctx, "/v1/jobs", url.Values{"status": {*lf.status}}, "jobs", jobPage, *lf.limit, t.addRaw)
	if err != nil {
		return err
	}
	return t.finish(c.Stderr, more, *lf.limit)
}

// jobGetFlags are the flags of "jobs get".
type jobGetFlags struct {
	api    apiFlags
	follow *bool
}

func defineJobGetFlags(f flags) jobGetFlags {
	return jobGetFlags{api: defineAPIFlags(f), follow: f.Bool("follow", false, "print the job's progress as it changes, until it ends")}
}

func getJob(ctx context.Context, gf jobGetFlags, c call) error {
	cl, err := gf.api.required(c)
	if err != nil {
		return err
	}
	if *gf.follow {
		return followJob(ctx, cl, c.args[0], c, *gf.api.json)
	}
	j, _, err := fetch[db.Job](ctx, cl, request{method: http.MethodGet, path: pathOf("/v1/jobs", c.args[0])})
	if err != nil {
		return err
	}
	if *gf.api.json {
		return j.writeJSON(c.Stdout)
	}
	return writeJob(c.Stdout, j.v)
}

// cancelJob cancels a scheduled or running job; a job that had ended is
// left as it was.
func cancelJob(ctx context.Context, af apiFlags, c call) error {
	cl, err := af.required(c)
	if err != nil {
		return err
	}
	j, _, err := fetch[db.Job](ctx, cl, request{method: http.MethodPost, path: pathOf("/v1/jobs", c.args[0], "cancel")})
	if err != nil {
		return err
	}
	if j.v.Status == db.JobCancelled {
		if j.v.Kind == db.KindState {
			fmt.Fprintf(c.Stderr, "job %s (%s) is cancelled: no more patches\n", j.v.ID, jobWhat(j.v))
		} else {
			fmt.Fprintf(c.Stderr, "job %s (%s) is cancelled: no more commands, and the undelivered ones ended\n", j.v.ID, j.v.Name)
		}
	} else {
		fmt.Fprintf(c.Stderr, "job %s (%s) had ended already: %s\n", j.v.ID, jobWhat(j.v), j.v.Status)
	}
	if *af.json {
		return j.writeJSON(c.Stdout)
	}
	return nil
}

// jobResultsFlags are the flags of "jobs results": the filters of
// GET /v1/jobs/{id}/commands.
type jobResultsFlags struct {
	api                             apiFlags
	status, device, error, attempts *string
	limit                           *int
}

func defineJobResultsFlags(f flags) jobResultsFlags {
	return jobResultsFlags{
		api:      defineAPIFlags(f),
		status:   f.String("status", "", "only commands of these statuses, separated by commas: pending, delivered, done, failed, expired, cancelled"),
		device:   f.String("device", "", "only this device's"),
		error:    f.String("error", "", "only commands whose error begins so (an error of the job's ERRORS)"),
		attempts: f.String("attempts", "", "latest (each device's latest command, the default) or all (the ones a retry replaced too)"),
		limit:    f.Int("limit", 0, "list at most this many commands (0: all of them)"),
	}
}

// jobResults prints a job's commands: a device each (its latest), in the
// order the job created them.
func jobResults(ctx context.Context, rf jobResultsFlags, c call) error {
	if *rf.limit < 0 {
		return fmt.Errorf("-limit %d: want 0 (all) or more", *rf.limit)
	}
	cl, err := rf.api.required(c)
	if err != nil {
		return err
	}
	t := newTable(c.Stdout, *rf.api.json, []string{"DEVICE", "STATUS", "ATTEMPT", "OUTCOME", "COMMAND"}, func(jc db.JobCommand) []string {
		attempt := strconv.Itoa(jc.JobAttempt)
		if jc.Retried {
			attempt += " (retried)"
		}
		d := deviceCommand{OK: jc.OK, Result: jc.Result, Error: jc.Error}
		return []string{jc.DeviceID, string(jc.Status), attempt, cmpOrDash(truncate(d.outcome(), 60)), jc.ID.String()}
	})
	q := url.Values{"status": {*rf.status}, "device": {*rf.device}, "error": {*rf.error}, "attempts": {*rf.attempts}}
	_, more, err := cl.list(ctx, pathOf("/v1/jobs", c.args[0], "commands"), q, "commands", db.MaxPage, *rf.limit, t.addRaw)
	if err != nil {
		return err
	}
	return t.finish(c.Stderr, more, *rf.limit)
}

// jobTargetsFlags are the flags of "jobs targets": the filters of
// GET /v1/jobs/{id}/targets.
type jobTargetsFlags struct {
	api     apiFlags
	outcome *string
	limit   *int
}

func defineJobTargetsFlags(f flags) jobTargetsFlags {
	return jobTargetsFlags{
		api:     defineAPIFlags(f),
		outcome: f.String("outcome", "", "only targets of these outcomes, separated by commas: unsent, patched, unchanged, gone, too_large"),
		limit:   f.Int("limit", 0, "list at most this many targets (0: all of them)"),
	}
}

// jobTargets prints a state job's targets, in rollout order: what its
// patch did to each, and whether each has reported the patched values.
func jobTargets(ctx context.Context, tf jobTargetsFlags, c call) error {
	if *tf.limit < 0 {
		return fmt.Errorf("-limit %d: want 0 (all) or more", *tf.limit)
	}
	cl, err := tf.api.required(c)
	if err != nil {
		return err
	}
	t := newTable(c.Stdout, *tf.api.json, []string{"DEVICE", "OUTCOME", "VERSION", "CONVERGED", "PATCHED"}, func(jt db.JobTarget) []string {
		version := "-"
		if jt.DesiredVersion != nil {
			version = strconv.FormatInt(*jt.DesiredVersion, 10)
		}
		return []string{jt.DeviceID, jt.Outcome, version, strconv.FormatBool(jt.Converged), when(jt.PatchedAt, "")}
	})
	_, more, err := cl.list(ctx, pathOf("/v1/jobs", c.args[0], "targets"), url.Values{"outcome": {*tf.outcome}}, "targets", db.MaxPage, *tf.limit, t.addRaw)
	if err != nil {
		return err
	}
	return t.finish(c.Stderr, more, *tf.limit)
}
