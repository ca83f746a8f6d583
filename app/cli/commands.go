package cli

import (
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

	"github.com/switchboard-iot/switchboard/internal/sse"
)

const commandsUsage = `usage: switchboard commands send DEVICE NAME [-args JSON] [-timeout 10s] [-ttl 1h] [-idempotency-key K] [-wait 10s | -follow]
       switchboard commands get ID
       switchboard commands list [-device D] [-status S] [-name N] [-job J] [-since T] [-until T] [-limit N]
       switchboard commands cancel ID
on an edge: -edge URL (SWITCHBOARD_EDGE) with SWITCHBOARD_KEY; -json prints JSON`

// commandsCommands send and read device commands through an edge's API
// (they need no database, and have no database mode).
var commandsCommands = group{usage: commandsUsage, subs: map[string]command{
	"send":   cmd[sendFlags]{define: defineSendFlags, nargs: exactly(2), run: sendCommand},
	"get":    cmd[apiFlags]{define: defineAPIFlags, nargs: exactly(1), run: getCommand},
	"list":   cmd[commandListFlags]{define: defineCommandListFlags, nargs: exactly(0), run: listCommands},
	"cancel": cmd[apiFlags]{define: defineAPIFlags, nargs: exactly(1), run: cancelCommand},
}}

// deviceCommand is a command as the API answers it (GET
// /v1/commands/{id}); -json prints the answer itself.
type deviceCommand struct {
	ID          string          `json:"id"`
	DeviceID    string          `json:"device_id"`
	Name        string          `json:"name"`
	Args        json.RawMessage `json:"args"`
	Status      string          `json:"status"`
	OK          *bool           `json:"ok"`
	Result      json.RawMessage `json:"result"`
	Error       string          `json:"error"`
	Timeout     string          `json:"timeout"`
	Attempts    int             `json:"attempts"`
	JobID       string          `json:"job_id"`
	CreatedAt   time.Time       `json:"created_at"`
	ExpiresAt   time.Time       `json:"expires_at"`
	DeliveredAt *time.Time      `json:"delivered_at"`
	CompletedAt *time.Time      `json:"completed_at"`
}

// final reports whether the command will not change again: any status
// but pending and delivered (done, failed, expired, cancelled).
func (d deviceCommand) final() bool { return d.Status != "pending" && d.Status != "delivered" }

// outcome says how a command ended, in a few words: its result or its
// error.
func (d deviceCommand) outcome() string {
	switch {
	case d.OK != nil && *d.OK:
		return strings.TrimSpace("ok " + compactJSON(d.Result))
	case d.Error != "":
		return d.Error
	}
	return ""
}

// commandOutcome is the end of a command that waited for a device
// command: nil when it is done.
func commandOutcome(d deviceCommand, wait time.Duration) error {
	switch {
	case d.Status == "done":
		return nil
	case d.final():
		return &outcomeError{fmt.Sprintf("command %s to %s ended %s: %s", d.ID, d.DeviceID, d.Status, cmpOrDash(d.Error)), ExitNotDone}
	}
	return &outcomeError{fmt.Sprintf("command %s to %s is still %s after -wait %s: see it with \"switchboard commands get %s\"", d.ID, d.DeviceID, d.Status, wait, d.ID), ExitNotFinal}
}

func cmpOrDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// writeCommand prints a command for people, a field a line.
func writeCommand(w io.Writer, d deviceCommand) error {
	ok := ""
	if d.OK != nil {
		ok = strconv.FormatBool(*d.OK)
	}
	return writeView(w, []field{
		{"ID", d.ID}, {"DEVICE", d.DeviceID}, {"NAME", d.Name}, {"ARGS", compactJSON(d.Args)},
		{"STATUS", d.Status}, {"OK", ok}, {"RESULT", compactJSON(d.Result)}, {"ERROR", d.Error},
		{"TIMEOUT", d.Timeout}, {"ATTEMPTS", strconv.Itoa(d.Attempts)}, {"JOB", d.JobID},
		{"CREATED", when(&d.CreatedAt, "")}, {"EXPIRES", when(&d.ExpiresAt, "")},
		{"DELIVERED", when(d.DeliveredAt, "")}, {"COMPLETED", when(d.CompletedAt, "")},
	})
}

// sendFlags are the flags of "commands send".
type sendFlags struct {
	api                apiFlags
	args, idemKey      *string
	timeout, ttl, wait *time.Duration
	follow             *bool
}

func defineSendFlags(f flags) sendFlags {
	return sendFlags{
		api:     defineAPIFlags(f),
		args:    f.String("args", "", `the command's arguments, a JSON object such as '{"celsius":21.5}'; @FILE reads them from a file, @- from stdin (default {})`),
		timeout: f.Duration("timeout", 0, "how long the device has to reply once the command is delivered (default 10s, up to 10m)"),
		ttl:     f.Duration("ttl", 0, "how long the command may wait for an offline device (default 1h, up to 168h)"),
		idemKey: f.String("idempotency-key", "", "make the send safe to repeat: a repeat with this key and the same command, within 24h, sends nothing and answers the first command"),
		wait:    f.Duration("wait", 0, "wait up to this long (at most 60s) for the command's end, and print it"),
		follow:  f.Bool("follow", false, "print each step of the command as it happens (its event stream), until its end"),
	}
}

// maxWait is the longest ?wait= the API honours.
const maxWait = 60 * time.Second

// readArgs reads -args: a JSON object, or @FILE, or @- (stdin).
func readArgs(v string, stdin io.Reader) (json.RawMessage, error) {
	return readObject("-args", `{"celsius":21.5}`, v, stdin)
}

// readObject reads the JSON object an argument gives (-args, -desired,
// state patch's PATCH), named what in errors: the text, or @FILE, or @-
// for stdin; "" is nil.
func readObject(what, example, v string, stdin io.Reader) (json.RawMessage, error) {
	if v == "" {
		return nil, nil
	}
	raw := []byte(v)
	if name, ok := strings.CutPrefix(v, "@"); ok {
		var err error
		if name == "-" {
			raw, err = io.ReadAll(stdin)
		} else {
			raw, err = os.ReadFile(name)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil || obj == nil {
		return nil, fmt.Errorf("%s: want a JSON object, such as '%s'", what, example)
	}
	return raw, nil
}

// commandBody is the body of POST /v1/devices/{id}/commands (and, with
// more, of POST /v1/jobs): the fields given.
func commandBody(name string, args json.RawMessage, timeout, ttl time.Duration) map[string]any {
	body := map[string]any{"name": name}
	if args != nil {
		body["args"] = args
	}
	if timeout != 0 {
		body["timeout"] = timeout.String()
	}
	if ttl != 0 {
		body["ttl"] = ttl.String()
	}
	return body
}

// sendCommand sends a command to a device. Alone it prints the command's
// id (-json: the command); with -wait, the command once it ended (or as
// it stands when the wait ran out); with -follow, each of its events.
func sendCommand(ctx context.Context, sf sendFlags, c call) error {
	deviceID, name := c.args[0], c.args[1]
	switch {
	case *sf.wait < 0 || *sf.wait > maxWait:
		return fmt.Errorf("-wait %s: want at most %s (the API's limit); -follow waits as long as it takes", *sf.wait, maxWait)
	case *sf.wait > 0 && *sf.follow:
		return errors.New("give -wait or -follow, not both")
	case *sf.timeout < 0 || *sf.ttl < 0:
		return errors.New("-timeout and -ttl: want a duration such as 10s")
	}
	args, err := readArgs(*sf.args, c.Stdin)
	if err != nil {
		return err
	}
	cl, err := sf.api.required(c)
	if err != nil {
		return err
	}
	req := request{method: http.MethodPost, path: pathOf("/v1/devices", deviceID, "commands"),
		body: jsonBody(commandBody(name, args, *sf.timeout, *sf.ttl)), header: http.Header{}}
	if *sf.idemKey != "" {
		req.header.Set("Idempotency-Key", *sf.idemKey)
	}
	if *sf.follow {
		return followCommand(ctx, cl, req, c, *sf.api.json)
	}
	if *sf.wait > 0 {
		req.query = url.Values{"wait": {sf.wait.String()}}
		waiting := *cl
		waiting.timeout = *sf.wait + requestTimeout // the answer comes when the wait ends
		cl = &waiting
	}
	sent, a, err := fetch[deviceCommand](ctx, cl, req)
	if err != nil {
		return err
	}
	if a.header.Get("Idempotent-Replayed") == "true" {
		fmt.Fprintf(c.Stderr, "command %s is the first one sent with this Idempotency-Key: nothing new was sent\n", sent.v.ID)
	}
	if *sf.wait == 0 {
		if *sf.api.json {
			err = sent.writeJSON(c.Stdout)
		} else {
			_, err = fmt.Fprintln(c.Stdout, sent.v.ID)
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(c.Stderr, "command %s (%s) to %s is %s\n", sent.v.ID, sent.v.Name, sent.v.DeviceID, sent.v.Status)
		return nil
	}
	if *sf.api.json {
		err = sent.writeJSON(c.Stdout)
	} else {
		err = writeCommand(c.Stdout, sent.v)
	}
	if err != nil {
		return err
	}
	return commandOutcome(sent.v, *sf.wait)
}

// commandEvent is a line of "commands send -follow -json": an event of
// the command's stream, with the command as it then stood.
type commandEvent struct {
	Event   string          `json:"event"`
	Seq     int             `json:"seq"`
	Command json.RawMessage `json:"command"`
}

// followCommand sends the command asking for its event stream, and prints
// each event until the command's end; a stream that breaks before is
// resumed (GET /v1/commands/{id}/events, Last-Event-ID), on this edge or
// whichever the URL reaches.
func followCommand(ctx context.Context, cl *client, req request, c call, asJSON bool) error {
	var last deviceCommand
	resume := func(lastID string) (request, bool) {
		if last.ID == "" {
			return request{}, false // no event yet: the POST may not have been stored, and is not sent again
		}
		r := request{method: http.MethodGet, path: pathOf("/v1/commands", last.ID, "events"), header: http.Header{}}
		if lastID != "" {
			r.header.Set("Last-Event-ID", lastID)
		}
		return r, true
	}
	// The stream's last event is the outcome (reply, failed, expired…):
	// an earlier one may show the command final already (a device that
	// answers at once has its delivered and reply events sent together).
	outcome := func(ev sse.Event) bool { return ev.Name != "accepted" && ev.Name != "delivered" }
	err := follow(ctx, cl, req, resume, func() bool { return last.final() }, func(ev sse.Event) (bool, error) {
		if err := json.Unmarshal([]byte(ev.Data), &last); err != nil {
			return false, fmt.Errorf("the edge's %q event: %w", ev.Name, err)
		}
		seq, _ := strconv.Atoi(ev.ID)
		if asJSON {
			return outcome(ev), writeJSONLine(c.Stdout, commandEvent{Event: ev.Name, Seq: seq, Command: json.RawMessage(ev.Data)})
		}
		detail := last.outcome()
		switch ev.Name {
		case "accepted":
			detail = fmt.Sprintf("%s (%s) to %s", last.ID, last.Name, last.DeviceID)
		case "delivered":
			detail = fmt.Sprintf("delivery %d", last.Attempts)
		}
		_, err := fmt.Fprintf(c.Stdout, "%-10s %-10s %s\n", ev.Name, last.Status, detail)
		return outcome(ev), err
	})
	if err != nil {
		return err
	}
	return commandOutcome(last, 0)
}

// follow reads an event stream until each says its event was the last
// (the thing is final), or the stream ends once ended says it is. A
// stream that ends or breaks before is opened again with resume's
// request (given the last event's id), a second apart, up to 5 times in
// a row without an event: an edge that drains ends its streams, and its
// clients reconnect to another. A refusal (a 4xx) is not retried.
func follow(ctx context.Context, cl *client, req request, resume func(lastID string) (request, bool), ended func() bool,
	each func(sse.Event) (last bool, err error)) error {
	const maxBreaks = 5
	lastID, breaks := "", 0
	for {
		events, body, err := cl.stream(ctx, req)
		if err == nil {
			var final, progressed bool
			var eachErr error
			final, progressed, eachErr, err = readStream(events, &lastID, each)
			body.Close()
			switch {
			case eachErr != nil:
				return eachErr
			case final, err == nil && ended():
				return nil
			case progressed:
				breaks = 0
			}
		}
		var ae *apiError
		if errors.As(err, &ae) && !ae.transient() || ctx.Err() != nil {
			return err
		}
		next, ok := resume(lastID)
		if !ok || breaks == maxBreaks {
			if err == nil {
				err = errors.New("the edge ended the event stream before the end")
			}
			return err
		}
		breaks++
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
		req = next
	}
}

// readStream reads events until one is final or the stream ends (err is
// nil when it ended cleanly); eachErr is each's own failure.
func readStream(events *sse.Reader, lastID *string, each func(sse.Event) (bool, error)) (final, progressed bool, eachErr, err error) {
	for {
		ev, err := events.Next()
		if errors.Is(err, io.EOF) {
			return false, progressed, nil, nil
		}
		if err != nil {
			return false, progressed, nil, err
		}
		progressed = true
		if ev.ID != "" {
			*lastID = ev.ID
		}
		final, err := each(ev)
		if err != nil || final {
			return final, progressed, err, nil
		}
	}
}

func getCommand(ctx context.Context, af apiFlags, c call) error {
	cl, err := af.required(c)
	if err != nil {
		return err
	}
	cmd, _, err := fetch[deviceCommand](ctx, cl, request{method: http.MethodGet, path: pathOf("/v1/commands", c.args[0])})
	if err != nil {
		return err
	}
	if *af.json {
		return cmd.writeJSON(c.Stdout)
	}
	return writeCommand(c.Stdout, cmd.v)
}

// cancelCommand cancels a command its device has not been given yet.
func cancelCommand(ctx context.Context, af apiFlags, c call) error {
	cl, err := af.required(c)
	if err != nil {
		return err
	}
	cmd, _, err := fetch[deviceCommand](ctx, cl, request{method: http.MethodPost, path: pathOf("/v1/commands", c.args[0], "cancel")})
	if err != nil {
		return err
	}
	fmt.Fprintf(c.Stderr, "command %s (%s) to %s is %s\n", cmd.v.ID, cmd.v.Name, cmd.v.DeviceID, cmd.v.Status)
	if *af.json {
		return cmd.writeJSON(c.Stdout)
	}
	return nil
}

// commandListFlags are the flags of "commands list": the filters of
// GET /v1/commands.
type commandListFlags struct {
	api                                     apiFlags
	device, status, name, job, since, until *string
	limit                                   *int
}

func defineCommandListFlags(f flags) commandListFlags {
	return commandListFlags{
		api:    defineAPIFlags(f),
		device: f.String("device", "", "only this device's commands"),
		status: f.String("status", "", "only commands of these statuses, separated by commas: pending, delivered, done, failed, expired, cancelled"),
		name:   f.String("name", "", "only commands of this name"),
		job:    f.String("job", "", "only this job's commands"),
		since:  f.String("since", "", "only commands created at or after this time: RFC 3339 (2026-01-02T15:04:05Z), or a duration ago (1h)"),
		until:  f.String("until", "", "only commands created before this time: RFC 3339, or a duration ago"),
		limit:  f.Int("limit", 0, "list at most this many commands, newest first (0: all of them)"),
	}
}

// commandPage is the page size "commands list" asks for.
const commandPage = 100

// listCommands prints commands, newest first, every page of them.
func listCommands(ctx context.Context, lf commandListFlags, c call) error {
	if *lf.limit < 0 {
		return fmt.Errorf("-limit %d: want 0 (all) or more", *lf.limit)
	}
	now := time.Now()
	since, err := timeFlag("since", *lf.since, now, -1)
	if err != nil {
		return err
	}
	until, err := timeFlag("until", *lf.until, now, -1)
	if err != nil {
		return err
	}
	cl, err := lf.api.required(c)
	if err != nil {
		return err
	}
	q := url.Values{"status": {*lf.status}, "name": {*lf.name}, "job": {*lf.job}, "since": {since}, "until": {until}}
	path := "/v1/commands"
	if *lf.device != "" {
		path = pathOf("/v1/devices", *lf.device, "commands") // a device that does not exist is a 404, not an empty list
	}
	t := newTable(c.Stdout, *lf.api.json, []string{"ID", "DEVICE", "NAME", "STATUS", "CREATED", "OUTCOME"}, func(d deviceCommand) []string {
		return []string{d.ID, d.DeviceID, d.Name, d.Status, when(&d.CreatedAt, ""), cmpOrDash(truncate(d.outcome(), 60))}
	})
	_, more, err := cl.list(ctx, path, q, "commands", commandPage, *lf.limit, t.addRaw)
	if err != nil {
		return err
	}
	return t.finish(c.Stderr, more, *lf.limit)
}

// timeFlag reads a time flag: RFC 3339, or a duration, which sign (-1:
// ago, 1: from now) places from now. It returns the time as RFC 3339, in
// UTC; "" when not given.
func timeFlag(name, v string, now time.Time, sign time.Duration) (string, error) {
	if v == "" {
		return "", nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t.UTC().Format(time.RFC3339Nano), nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return "", fmt.Errorf("-%s %q: want an RFC 3339 time such as 2026-01-02T15:04:05Z, or a duration such as 1h", name, v)
	}
	return now.Add(sign * d).UTC().Format(time.RFC3339Nano), nil
}
