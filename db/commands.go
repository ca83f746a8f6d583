package db

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/switchboard-iot/switchboard/internal/command"
)

// NewCommand is a command as an edge accepts it.
type NewCommand struct {
	ID       uuid.UUID
	DeviceID string
	Name     string
	Args     json.RawMessage
	Timeout  time.Duration
	TTL      time.Duration
	ReplyTo  string // the accepting edge's id
}

const commandColumns = `id, device_id, name, args, status, ok, result, coalesce(error, ''), timeout,
	created_at, expires_at, delivered_at, completed_at`

func scanCommand(row pgx.Row) (command.Command, error) {
	var c command.Command
	var timeout time.Duration
	err := row.Scan(&c.ID, &c.DeviceID, &c.Name, &c.Args, &c.Status, &c.OK, &c.Result, &c.Error, &timeout,
		&c.CreatedAt, &c.ExpiresAt, &c.DeliveredAt, &c.CompletedAt)
	c.Timeout = command.Duration(timeout)
	return c, err
}

func collectCommands(rows pgx.Rows, err error) ([]command.Command, error) {
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (command.Command, error) { return scanCommand(row) })
}

// CreateCommand stores a pending command. An unknown device is ErrNotFound.
func (s *Store) CreateCommand(ctx context.Context, nc NewCommand) (command.Command, error) {
	c, err := scanCommand(s.db.QueryRow(ctx, `
		INSERT INTO commands (id, device_id, name, args, timeout, expires_at, reply_to)
		VALUES ($1, $2, $3, $4, $5, now() + $6::interval, $7)
		RETURNING `+commandColumns,
		nc.ID, nc.DeviceID, nc.Name, nc.Args, nc.Timeout, nc.TTL, nc.ReplyTo))
	return c, translate(err, "device "+nc.DeviceID)
}

// Command returns one command.
func (s *Store) Command(ctx context.Context, id uuid.UUID) (command.Command, error) {
	c, err := scanCommand(s.db.QueryRow(ctx, `SELECT `+commandColumns+` FROM commands WHERE id = $1`, id))
	return c, translate(err, "command "+id.String())
}

// Commands returns the commands with these ids that exist.
func (s *Store) Commands(ctx context.Context, ids []uuid.UUID) ([]command.Command, error) {
	cmds, err := collectCommands(s.db.Query(ctx, `SELECT `+commandColumns+` FROM commands WHERE id = ANY($1)`, ids))
	return cmds, translate(err, "commands")
}

// PendingCommands returns the undelivered, unexpired commands of these
// devices, oldest first.
func (s *Store) PendingCommands(ctx context.Context, deviceIDs []string, limit int) ([]command.Command, error) {
	cmds, err := collectCommands(s.db.Query(ctx, `
		SELECT `+commandColumns+` FROM commands
		WHERE device_id = ANY($1) AND status = 'pending' AND expires_at > now()
		ORDER BY created_at, id LIMIT $2`, deviceIDs, limit))
	return cmds, translate(err, "pending commands")
}

// Watch adds edgeID to the edges woken when command id changes, for a stream
// resumed on an edge other than the one that accepted it. The list keeps the
// 16 newest watchers.
func (s *Store) Watch(ctx context.Context, id uuid.UUID, edgeID string) error {
	_, err := s.db.Exec(ctx, `
		UPDATE commands SET watchers = (watchers || $2::text)[greatest(1, cardinality(watchers) - 14):]
		WHERE id = $1 AND status = ANY($3)
		  AND reply_to IS DISTINCT FROM $2 AND NOT ($2 = ANY(watchers))`,
		id, edgeID, []command.Status{command.Pending, command.Delivered})
	return translate(err, "watch command "+id.String())
}

// Change says a command moved; the edges that wait on it must look again.
type Change struct {
	ID    uuid.UUID
	Edges []string // reply_to and watchers
}

const changeColumns = `c.id, array_remove(array_prepend(c.reply_to, c.watchers), NULL)`

func collectChanges(rows pgx.Rows, err error) ([]Change, error) {
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowToStructByPos[Change])
}

// MarkDelivered records that a node wrote these commands to their devices.
// The reply deadline starts now.
func (s *Store) MarkDelivered(ctx context.Context, nodeID string, ids []uuid.UUID) ([]Change, error) {
	changes, err := collectChanges(s.db.Query(ctx, `
		UPDATE commands c SET status = 'delivered', delivered_at = now(), reply_deadline = now() + c.timeout, node_id = $2
		WHERE c.id = ANY($1) AND c.status = ANY($3)
		RETURNING `+changeColumns, ids, nodeID, command.From(command.Delivered)))
	return changes, translate(err, "mark delivered")
}

// Reply is a device's answer to a command.
type Reply struct {
	ID       uuid.UUID
	DeviceID string // the answering device: a device can only answer its own commands
	OK       bool
	Result   json.RawMessage
	Error    string
}

// StoreReplies completes the commands these replies answer. Replies to
// commands already final, or of other devices, change nothing.
func (s *Store) StoreReplies(ctx context.Context, replies []Reply) ([]Change, error) {
	ids := make([]uuid.UUID, len(replies))
	devices := make([]string, len(replies))
	oks := make([]bool, len(replies))
	results := make([][]byte, len(replies))
	errs := make([]*string, len(replies))
	for i, r := range replies {
		ids[i], devices[i], oks[i], results[i] = r.ID, r.DeviceID, r.OK, r.Result
		if !r.OK {
			errs[i] = &r.Error
		}
	}
	changes, err := collectChanges(s.db.Query(ctx, `
		UPDATE commands c SET status = CASE WHEN r.ok THEN 'done' ELSE 'failed' END,
			ok = r.ok, result = r.result, error = r.error, completed_at = now()
		FROM unnest($1::uuid[], $2::text[], $3::bool[], $4::jsonb[], $5::text[]) AS r(id, device_id, ok, result, error)
		WHERE c.id = r.id AND c.device_id = r.device_id AND c.status = ANY($6)
		RETURNING `+changeColumns, ids, devices, oks, results, errs, command.From(command.Done)))
	return changes, translate(err, "store replies")
}

// SweepCommands fails delivered commands whose device did not reply in time
// and expires pending ones whose ttl passed, at most limit of each. Several
// processes may sweep at once: each row goes to one of them.
func (s *Store) SweepCommands(ctx context.Context, limit int) ([]Change, error) {
	failed, err := collectChanges(s.db.Query(ctx, `
		WITH due AS (
			SELECT id FROM commands WHERE status = 'delivered' AND reply_deadline <= now()
			ORDER BY reply_deadline LIMIT $1 FOR UPDATE SKIP LOCKED)
		UPDATE commands c SET status = 'failed', error = 'no reply within ' || c.timeout, completed_at = now()
		FROM due WHERE c.id = due.id
		RETURNING `+changeColumns, limit))
	if err != nil {
		return nil, translate(err, "sweep replies")
	}
	expired, err := collectChanges(s.db.Query(ctx, `
		WITH due AS (
			SELECT id FROM commands WHERE status = 'pending' AND expires_at <= now()
			ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)
		UPDATE commands c SET status = 'expired', error = 'not delivered within ttl', completed_at = now()
		FROM due WHERE c.id = due.id
		RETURNING `+changeColumns, limit))
	return append(failed, expired...), translate(err, "sweep expiries")
}

// NotifyEdges wakes the edges waiting on changed commands: each gets the ids
// of its commands that moved.
func (s *Store) NotifyEdges(ctx context.Context, changes []Change) error {
	byChannel := make(map[string][]string)
	for _, c := range changes {
		for _, edge := range c.Edges {
			byChannel[EdgeChannel(edge)] = append(byChannel[EdgeChannel(edge)], c.ID.String())
		}
	}
	return s.notifyLines(ctx, byChannel)
}

// WakeDevices tells the nodes holding these devices to deliver their pending
// commands: one statement, one NOTIFY per node and chunk of 50 devices
// (50 lines of at most 134 bytes fit a payload). It reads presence, not
// presence_live: a node whose lease lapsed is most often still alive, and
// a wake-up sent to a dead one costs nothing.
func (s *Store) WakeDevices(ctx context.Context, deviceIDs []string) error {
	_, err := s.db.Exec(ctx, `
		SELECT pg_notify($2 || node_id, string_agg($3 || device_id, E'\n'))
		FROM (SELECT node_id, device_id, row_number() OVER (PARTITION BY node_id) / 50 AS chunk
		      FROM presence WHERE device_id = ANY($1)) t
		GROUP BY node_id, chunk`, deviceIDs, NodeChannel(""), wakeVerb+" ")
	return translate(err, "wake devices")
}

// A node channel's payload is lines of "wake DEVICE" (deliver its pending
// commands) or "kick DEVICE SESSION" (close that session: it was replaced).
const (
	wakeVerb = "wake"
	kickVerb = "kick"
)

// NodeMessage is one line of a node channel payload.
type NodeMessage struct {
	Kick      bool
	DeviceID  string
	SessionID uuid.UUID // for a kick
}

// ParseNodeMessages reads a node channel payload, skipping lines it does not know.
func ParseNodeMessages(payload string) []NodeMessage {
	var out []NodeMessage
	for line := range strings.Lines(payload) {
		fields := strings.Fields(line)
		switch {
		case len(fields) == 2 && fields[0] == wakeVerb:
			out = append(out, NodeMessage{DeviceID: fields[1]})
		case len(fields) == 3 && fields[0] == kickVerb:
			if sid, err := uuid.Parse(fields[2]); err == nil {
				out = append(out, NodeMessage{Kick: true, DeviceID: fields[1], SessionID: sid})
			}
		}
	}
	return out
}

// KickDisplaced tells the nodes of displaced sessions to close them.
func (s *Store) KickDisplaced(ctx context.Context, displaced []Displaced) error {
	byChannel := make(map[string][]string)
	for _, d := range displaced {
		ch := NodeChannel(d.NodeID)
		byChannel[ch] = append(byChannel[ch], fmt.Sprintf("%s %s %s", kickVerb, d.DeviceID, d.SessionID))
	}
	return s.notifyLines(ctx, byChannel)
}
