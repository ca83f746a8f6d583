package cli

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/sse"
)

const stateUsage = `usage: switchboard state get DEVICE [-follow]
       switchboard state patch DEVICE PATCH [-if-match VERSION]
on an edge: -edge URL (SWITCHBOARD_EDGE) with SWITCHBOARD_KEY; -json prints JSON
PATCH is a JSON merge patch of the desired document ('{"target_celsius":21,"old_key":null}'), @FILE, or @- for stdin`

// stateCommands read a device's desired and reported state and change
// its desired state, through an edge's API (GET /v1/devices/{id}/state,
// PATCH …/state/desired). Like commands, they have no database mode: the
// edge's stream and the node's wake-ups are the edge's.
var stateCommands = group{usage: stateUsage, subs: map[string]command{
	"get":   cmd[stateGetFlags]{define: defineStateGetFlags, nargs: exactly(1), run: getState},
	"patch": cmd[statePatchFlags]{define: defineStatePatchFlags, nargs: exactly(2), run: patchState},
}}

// writeState prints a state for people, a field a line. Reported and
// delta are absent from the answer to a patch by a key without the scope
// read.
func writeState(w io.Writer, st db.DeviceState) error {
	fields := []field{{"DESIRED", cmp.Or(compactJSON(st.Desired), "{}")}, {"DESIRED VERSION", strconv.FormatInt(st.DesiredVersion, 10)},
		{"DESIRED AT", when(st.DesiredUpdatedAt, "")}}
	if st.Reported != nil {
		fields = append(fields, field{"REPORTED", cmp.Or(compactJSON(st.Reported), "{}")},
			field{"REPORTED VERSION", strconv.FormatInt(st.ReportedVersion, 10)}, field{"REPORTED AT", when(st.ReportedUpdatedAt, "")},
			field{"DELTA", cmp.Or(compactJSON(st.Delta), "{}")})
	}
	return writeView(w, fields)
}

type stateGetFlags struct {
	api    apiFlags
	follow *bool
}

func defineStateGetFlags(f flags) stateGetFlags {
	return stateGetFlags{api: defineAPIFlags(f),
		follow: f.Bool("follow", false, "print the state, then again each time it changes, until interrupted (JSON lines with -json)")}
}

// getState prints a device's state, or follows it: the stream is resumed
// (Last-Event-ID) when it breaks or the edge drains.
func getState(ctx context.Context, sf stateGetFlags, c call) error {
	cl, err := sf.api.required(c)
	if err != nil {
		return err
	}
	req := request{method: http.MethodGet, path: pathOf("/v1/devices", c.args[0], "state")}
	if !*sf.follow {
		st, _, err := fetch[db.DeviceState](ctx, cl, req)
		switch {
		case err != nil:
			return err
		case *sf.api.json:
			return st.writeJSON(c.Stdout)
		}
		return writeState(c.Stdout, st.v)
	}
	resume := func(lastID string) (request, bool) {
		r := req
		r.header = http.Header{}
		if lastID != "" {
			r.header.Set("Last-Event-ID", lastID)
		}
		return r, true
	}
	// A state stream has no end: it follows until interrupted, or the
	// device is deleted (the stream ends, and a resume answers 404).
	return follow(ctx, cl, req, resume, func() bool { return false }, func(ev sse.Event) (bool, error) {
		if *sf.api.json {
			return false, writeJSONLine(c.Stdout, json.RawMessage(ev.Data))
		}
		var st db.DeviceState
		if err := json.Unmarshal([]byte(ev.Data), &st); err != nil {
			return false, fmt.Errorf("the edge's %q event: %w", ev.Name, err)
		}
		_, err := fmt.Fprintf(c.Stdout, "%s  desired v%d %s  reported v%d %s  delta %s\n", time.Now().Format(time.TimeOnly),
			st.DesiredVersion, compactJSON(st.Desired), st.ReportedVersion, compactJSON(st.Reported), cmp.Or(compactJSON(st.Delta), "{}"))
		return false, err
	})
}

type statePatchFlags struct {
	api     apiFlags
	ifMatch *string
}

func defineStatePatchFlags(f flags) statePatchFlags {
	return statePatchFlags{api: defineAPIFlags(f),
		ifMatch: f.String("if-match", "", "apply only if the desired state is still at this version (from state get); refused (exit 3) if it moved")}
}

// patchState applies a JSON merge patch to a device's desired state and
// prints the state it left.
func patchState(ctx context.Context, pf statePatchFlags, c call) error {
	cl, err := pf.api.required(c)
	if err != nil {
		return err
	}
	patch, err := readObject("PATCH", `{"target_celsius":21,"old_key":null}`, c.args[1], c.Stdin)
	if err != nil {
		return err
	}
	req := request{method: http.MethodPatch, path: pathOf("/v1/devices", c.args[0], "state", "desired"),
		body: patch, contentType: "application/merge-patch+json", header: http.Header{}}
	if *pf.ifMatch != "" {
		v, err := strconv.ParseInt(*pf.ifMatch, 10, 64)
		if err != nil || v < 0 {
			fmt.Fprintf(c.Stderr, "-if-match %q: want a desired version, such as 3\n", *pf.ifMatch)
			return ErrUsage
		}
		req.header.Set("If-Match", strconv.Quote(strconv.FormatInt(v, 10)))
	}
	st, _, err := fetch[db.DeviceState](ctx, cl, req)
	switch {
	case err != nil:
		return err
	case *pf.api.json:
		return st.writeJSON(c.Stdout)
	}
	return writeState(c.Stdout, st.v)
}
