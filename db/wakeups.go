package db

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/internal/command"
)

// Wake-ups: the channels processes listen on and the payloads sent on them,
// in one place. A payload is lines of text, never the only copy of anything:
// a listener that misses one finds the same facts in the tables.
//
//	sb_node_<node id>   "wake DEVICE"          deliver the device's pending commands
//	                    "kick DEVICE SESSION"  close that session: a newer one replaced it
//	                    "close DEVICE REASON"  close the device's session, if it has one here:
//	                                           it was "disabled" or "deleted" (sent to every node)
//	                    "state DEVICE"         the device's desired state changed: send it
//	                    "job JOB FIRST LAST"   a batch of the job's commands was created: deliver
//	                                           its pending ones (seq FIRST to LAST) to this node's
//	                                           devices; one line per node per batch, not per device
//	sb_edge_<edge id>   "COMMAND-ID"           the command changed: read it again
//	                    {"id":…,…}             the command changed: this is it now
//	sb_keys             "API-KEY-ID"           the key was revoked: trust no copy of it
//	sb_events           "EVENT-ID"             events up to this id were stored: stream them
//	sb_state            "DEVICE"               the device's desired or reported state changed:
//	                                           its state streams read it again

// ValidChannelID says whether id can name an edge or a node, and so its
// channel (EdgeChannel, NodeChannel): PostgreSQL limits a channel name to 63 bytes.
var ValidChannelID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$`).MatchString

// NodeChannel is the channel a connection node listens on.
func NodeChannel(nodeID string) string { return "sb_node_" + nodeID }

// EdgeChannel is the channel an edge listens on for its commands' changes.
func EdgeChannel(edgeID string) string { return "sb_edge_" + edgeID }

// KeysChannel is the channel every edge listens on for revoked API keys.
const KeysChannel = "sb_keys"

// EventsChannel is the channel every edge listens on for stored device
// events: one wake-up per batch a node stored, naming its highest id.
const EventsChannel = "sb_events"

// StateChannel is the channel every edge listens on for devices whose
// state changed (a desired patch on any edge, a report on any node): its
// state streams read the state again. A line per device.
const StateChannel = "sb_state"

const (
	wakeVerb  = "wake"
	kickVerb  = "kick"
	closeVerb = "close"
	jobVerb   = "job"
	stateVerb = "state"
)

// Why a device's session is closed by a "close" notice.
const (
	DeviceDisabled = "disabled"
	DeviceDeleted  = "deleted"
)

// NodeMessage is one line of a node channel payload.
type NodeMessage struct {
	Kick      bool
	DeviceID  string
	SessionID uuid.UUID // for a kick
	Close     string    // for a close: why (DeviceDisabled, DeviceDeleted)
	Job       JobWake   // a job's batch (Job.Job set): DeviceID is empty
	State     bool      // the device's desired state changed
}

// ParseNodeMessages reads a node channel payload, skipping lines it does not know.
func ParseNodeMessages(payload string) []NodeMessage {
	var out []NodeMessage
	for line := range strings.Lines(payload) {
		fields := strings.Fields(line)
		switch {
		case len(fields) == 2 && fields[0] == wakeVerb:
			out = append(out, NodeMessage{DeviceID: fields[1]})
		case len(fields) == 2 && fields[0] == stateVerb:
			out = append(out, NodeMessage{DeviceID: fields[1], State: true})
		case len(fields) == 3 && fields[0] == kickVerb:
			if sid, err := uuid.Parse(fields[2]); err == nil {
				out = append(out, NodeMessage{Kick: true, DeviceID: fields[1], SessionID: sid})
			}
		case len(fields) == 3 && fields[0] == closeVerb:
			out = append(out, NodeMessage{DeviceID: fields[1], Close: fields[2]})
		case len(fields) == 4 && fields[0] == jobVerb:
			id, err := uuid.Parse(fields[1])
			first, err1 := strconv.ParseInt(fields[2], 10, 64)
			last, err2 := strconv.ParseInt(fields[3], 10, 64)
			if err == nil && err1 == nil && err2 == nil && id != uuid.Nil && first <= last {
				out = append(out, NodeMessage{Job: JobWake{Job: id, First: first, Last: last}})
			}
		}
	}
	return out
}

// EdgeMessage is one line of an edge channel payload: a command that
// changed, with its new state when it fitted.
type EdgeMessage struct {
	ID      uuid.UUID
	Command *command.Command // nil: read the row
}

// ParseEdgeMessage reads an edge channel payload: lines of a command's id,
// or of the command itself as JSON, skipping lines it cannot read.
func ParseEdgeMessage(payload string) []EdgeMessage {
	var out []EdgeMessage
	for line := range strings.Lines(payload) {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "{") {
			var c command.Command
			if json.Unmarshal([]byte(line), &c) == nil && c.ID != uuid.Nil {
				out = append(out, EdgeMessage{ID: c.ID, Command: &c})
			}
			continue
		}
		if id, err := uuid.Parse(line); err == nil && id != uuid.Nil {
			out = append(out, EdgeMessage{ID: id})
		}
	}
	return out
}

// maxCarried bounds a command carried in a wake-up: a larger one (big
// args or result) goes as its id, and the edge reads it.
const maxCarried = 2000

// edgeLine is how a change travels to an edge: the command, or its id.
func edgeLine(c *Change) string {
	if c.Command != nil {
		if b, err := json.Marshal(c.Command); err == nil && len(b) <= maxCarried {
			return string(b)
		}
	}
	return c.ID.String()
}

// Notice is one wake-up to send; exactly one field is set.
type Notice struct {
	Wake       string     // a device whose node must deliver its pending commands
	Change     *Change    // a command whose edges must read it again
	Kick       *Displaced // a session its node must close
	Close      *Closing   // a device every node must close its session of
	RevokedKey int64      // an API key no edge may trust any longer
	Events     int64      // device events were stored, up to this id
	Job        *JobWake   // a job's batch, whose devices' nodes must deliver it
	State      string     // a device whose desired state changed: its node sends it, state streams read it
	Reported   string     // a device whose reported state changed: state streams read it
}

// Closing is a device whose session must end wherever it is, and why
// (DeviceDisabled, DeviceDeleted).
type Closing struct {
	DeviceID string
	Reason   string
}

// Notify sends notices, coalesced. Call it after the
// writes the notices announce have committed, outside any transaction.
// A wake goes to the node that presence names for the device, read here,
// in chunks of 50 devices (50 lines of at most 134 bytes fit a payload):
// presence, not presence_live, since a node whose lease lapsed is most
// often still alive, and a wake-up sent to a dead one costs nothing.
func (s *Store) Notify(ctx context.Context, notices []Notice) error {
	var wake, state, closing []string
	var events int64
	var jobs []*JobWake
	byChannel := make(map[string][]string)
	for _, n := range notices {
		switch {
		case n.Wake != "":
			wake = append(wake, n.Wake)
		case n.Change != nil:
			line := edgeLine(n.Change)
			for _, edge := range n.Change.Edges {
				byChannel[EdgeChannel(edge)] = append(byChannel[EdgeChannel(edge)], line)
			}
		case n.Kick != nil:
			ch := NodeChannel(n.Kick.NodeID)
			byChannel[ch] = append(byChannel[ch], fmt.Sprintf("%s %s %s", kickVerb, n.Kick.DeviceID, n.Kick.SessionID))
		case n.Close != nil:
			closing = append(closing, fmt.Sprintf("%s %s %s", closeVerb, n.Close.DeviceID, n.Close.Reason))
		case n.RevokedKey != 0:
			byChannel[KeysChannel] = append(byChannel[KeysChannel], strconv.FormatInt(n.RevokedKey, 10))
		case n.Events != 0:
			events = max(events, n.Events) // the highest id says it all
		case n.Job != nil:
			jobs = append(jobs, n.Job)
		case n.State != "":
			state = append(state, n.State)
			byChannel[StateChannel] = append(byChannel[StateChannel], n.State)
		case n.Reported != "":
			byChannel[StateChannel] = append(byChannel[StateChannel], n.Reported)
		}
	}
	if events != 0 {
		byChannel[EventsChannel] = []string{strconv.FormatInt(events, 10)}
	}
	if lines := byChannel[StateChannel]; len(lines) > 1 {
		byChannel[StateChannel] = slices.Compact(slices.Sorted(slices.Values(lines)))
	}
	var channels, payloads []string
	for ch, lines := range byChannel {
		for _, p := range pack(lines) {
			channels, payloads = append(channels, ch), append(payloads, p)
		}
	}
	if len(wake) == 0 && len(state) == 0 && len(channels) == 0 && len(closing) == 0 && len(jobs) == 0 {
		return nil
	}
	ctx, cancel := bound(ctx)
	defer cancel()
	// A transaction that only notifies writes no WAL: its commit is cheap.
	// A batch holds one kind most often: each kind has its own plain
	// statement, cheap to plan.
	if len(channels) > 0 {
		_, err := s.db.Exec(ctx, `SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS t(c, p)`, channels, payloads)
		if err != nil {
			return translate(err, "notify")
		}
	}
	// A close goes to every node, not only the one presence names: a
	// session whose credentials were checked just before the change may
	// be opening on any of them (see conn-tier's revocations).
	if len(closing) > 0 {
		_, err := s.db.Exec(ctx, `SELECT pg_notify($1 || n.id, p) FROM nodes n, unnest($2::text[]) AS p`,
			NodeChannel(""), pack(closing))
		if err != nil {
			return translate(err, "close devices")
		}
	}
	// A job's batch wakes each node that holds one of its devices once:
	// the node finds its own devices among the batch.
	for _, j := range jobs {
		_, err := s.db.Exec(ctx, `
			SELECT pg_notify($1 || node_id, $2)
			FROM (SELECT DISTINCT p.node_id FROM commands c JOIN presence p ON p.device_id = c.device_id
			      WHERE c.job_id = $3 AND c.status = 'pending' AND c.seq BETWEEN $4 AND $5) t`,
			NodeChannel(""), fmt.Sprintf("%s %s %d %d", jobVerb, j.Job, j.First, j.Last), j.Job, j.First, j.Last)
		if err != nil {
			return translate(err, "wake a job's nodes")
		}
	}
	if err := s.wakeNodes(ctx, wakeVerb, wake); err != nil {
		return translate(err, "wake devices")
	}
	return translate(s.wakeNodes(ctx, stateVerb, state), "wake devices for their state")
}

// wakeNodes sends "VERB DEVICE" lines to the nodes presence names for the devices.
func (s *Store) wakeNodes(ctx context.Context, verb string, devices []string) error {
	if len(devices) == 0 {
		return nil
	}
	devices = slices.Compact(slices.Sorted(slices.Values(devices)))
	_, err := s.db.Exec(ctx, `
		SELECT pg_notify($2 || node_id, string_agg($3 || device_id, E'\n'))
		FROM (SELECT node_id, device_id, row_number() OVER (PARTITION BY node_id) / 50 AS chunk
		      FROM presence WHERE device_id = ANY($1)) t
		GROUP BY node_id, chunk`, devices, NodeChannel(""), verb+" ")
	return err
}

// maxPayload keeps payloads under PostgreSQL's 8000-byte limit.
const maxPayload = 7900

// pack joins lines into as few payloads as the size limit allows.
func pack(lines []string) []string {
	var out []string
	var payload []byte
	for _, line := range lines {
		if len(payload) > 0 && len(payload)+1+len(line) > maxPayload {
			out = append(out, string(payload))
			payload = payload[:0]
		}
		if len(payload) > 0 {
			payload = append(payload, '\n')
		}
		payload = append(payload, line...)
	}
	if len(payload) > 0 {
		out = append(out, string(payload))
	}
	return out
}
