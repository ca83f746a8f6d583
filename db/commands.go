package db

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/switchboard-iot/switchboard/internal/command"
)

// ErrKeyReused says an idempotency key already named a different request.
var ErrKeyReused = errors.New("idempotency key used for another request")

// NewCommand is a command as an edge accepts it.
type NewCommand struct {
	ID       uuid.UUID
	DeviceID string
	Name     string
	Args     json.RawMessage
	Timeout  time.Duration
	TTL      time.Duration
	ReplyTo  string // the accepting edge's id
	APIKeyID int64  // the key that sent it; 0 for none

	// IdempotencyKey, when set, makes the accept idempotent for APIKeyID:
	// a repeat with the same RequestHash within IdempotencyWindow returns
	// the first command; another hash is ErrKeyReused.
	IdempotencyKey string
	RequestHash    []byte
}

// IdempotencyWindow is how long an idempotency key names its command.
const IdempotencyWindow = 24 * time.Hour

// commandColumns reads a command aliased c.
const commandColumns = `c.id, c.device_id, c.name, c.args, c.status, c.ok, c.result, coalesce(c.error, ''), c.timeout,
	c.attempts, c.created_at, c.expires_at, c.delivered_at, c.completed_at`

func scanCommand(row pgx.Row) (command.Command, error) {
	var c command.Command
	var timeout time.Duration
	err := row.Scan(&c.ID, &c.DeviceID, &c.Name, &c.Args, &c.Status, &c.OK, &c.Result, &c.Error, &timeout,
		&c.Attempts, &c.CreatedAt, &c.ExpiresAt, &c.DeliveredAt, &c.CompletedAt)
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
// created is false when an idempotency key named an earlier command, which
// is returned instead.
func (s *Store) CreateCommand(ctx context.Context, nc NewCommand) (c command.Command, created bool, err error) {
	if nc.IdempotencyKey == "" {
		cs, err := s.CreateCommands(ctx, []NewCommand{nc})
		if err == nil && len(cs) == 0 {
			err = fmt.Errorf("device %s: %w", nc.DeviceID, ErrNotFound)
		}
		if err != nil {
			return c, false, err
		}
		return cs[0], true, nil
	}
	ctx, cancel := bound(ctx)
	defer cancel()
	var apiKey *int64
	if nc.APIKeyID != 0 {
		apiKey = &nc.APIKeyID
	}
	// The device must exist: read, not locked (a foreign key would lock
	// its row for every command).
	const insert = `
		INSERT INTO commands AS c (id, device_id, name, args, timeout, expires_at, reply_to, api_key_id)
		SELECT $1, $2, $3, $4, $5, now() + $6::interval, $7, $8
		WHERE EXISTS (SELECT FROM devices WHERE id = $2)`
	args := []any{nc.ID, nc.DeviceID, nc.Name, nc.Args, nc.Timeout, nc.TTL, nc.ReplyTo, apiKey}
	// The key row and the command commit together. A concurrent repeat
	// waits on the key row, then finds it taken; a key past its window is
	// taken over.
	c, err = scanCommand(s.db.QueryRow(ctx, `
		WITH key AS (
			INSERT INTO idempotency_keys (api_key_id, key, request_hash, command_id)
			SELECT $8, $9, $10, $1 WHERE EXISTS (SELECT FROM devices WHERE id = $2)
			ON CONFLICT (api_key_id, key) DO UPDATE
				SET request_hash = EXCLUDED.request_hash, command_id = EXCLUDED.command_id, created_at = now()
				WHERE idempotency_keys.created_at < now() - $11::interval
			RETURNING 1)
		`+insert+` AND EXISTS (SELECT FROM key)
		RETURNING `+commandColumns, append(args, nc.IdempotencyKey, nc.RequestHash, IdempotencyWindow)...))
	if err == nil || !errors.Is(err, pgx.ErrNoRows) {
		return c, err == nil, translate(err, "device "+nc.DeviceID)
	}
	var hash []byte
	var cmdID uuid.UUID
	err = s.db.QueryRow(ctx, `SELECT request_hash, command_id FROM idempotency_keys WHERE api_key_id = $1 AND key = $2`,
		apiKey, nc.IdempotencyKey).Scan(&hash, &cmdID)
	if errors.Is(err, pgx.ErrNoRows) {
		return c, false, translate(err, "device "+nc.DeviceID) // no key was taken: no such device
	}
	if err != nil {
		return c, false, translate(err, "idempotency key")
	}
	if string(hash) != string(nc.RequestHash) {
		return c, false, ErrKeyReused
	}
	c, err = s.Command(ctx, cmdID)
	return c, false, err
}

// CreateCommands stores many pending commands, without idempotency keys,
// in one statement and one commit: the edge's group commit. It returns the
// stored commands, in no particular order; a command whose device does not
// exist is left out. One refused row fails the whole statement (ErrInvalid):
// the caller then stores the rows one by one to find it.
func (s *Store) CreateCommands(ctx context.Context, ncs []NewCommand) ([]command.Command, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	n := len(ncs)
	ids, devices, names, args := make([]uuid.UUID, n), make([]string, n), make([]string, n), make([]string, n)
	timeouts, ttls, replyTo, keys := make([]time.Duration, n), make([]time.Duration, n), make([]string, n), make([]*int64, n)
	for i := range ncs {
		nc := &ncs[i]
		ids[i], devices[i], names[i], args[i] = nc.ID, nc.DeviceID, nc.Name, string(nc.Args)
		timeouts[i], ttls[i], replyTo[i] = nc.Timeout, nc.TTL, nc.ReplyTo
		if nc.APIKeyID != 0 {
			keys[i] = &nc.APIKeyID
		}
	}
	// Rows go in the order given, so seq keeps the order they were
	// accepted in. The device must exist: read, not locked (see
	// CreateCommand).
	cs, err := collectCommands(s.db.Query(ctx, `
		INSERT INTO commands AS c (id, device_id, name, args, timeout, expires_at, reply_to, api_key_id)
		SELECT t.id, t.device_id, t.name, t.args::jsonb, t.timeout, now() + t.ttl, t.reply_to, t.api_key_id
		FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::interval[], $6::interval[], $7::text[], $8::bigint[])
			WITH ORDINALITY AS t(id, device_id, name, args, timeout, ttl, reply_to, api_key_id, i)
		WHERE EXISTS (SELECT FROM devices d WHERE d.id = t.device_id)
		ORDER BY t.i
		RETURNING `+commandColumns, ids, devices, names, args, timeouts, ttls, replyTo, keys))
	return cs, translate(err, "commands")
}

// Command returns one command.
func (s *Store) Command(ctx context.Context, id uuid.UUID) (command.Command, error) {
	return s.CommandSentBy(ctx, id, 0)
}

// CommandSentBy returns one command if API key apiKeyID sent it, itself or
// by a job it created (commands.api_key_id); another key's is ErrNotFound.
// 0 returns any key's.
func (s *Store) CommandSentBy(ctx context.Context, id uuid.UUID, apiKeyID int64) (command.Command, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	c, err := scanCommand(s.db.QueryRow(ctx, `SELECT `+commandColumns+` FROM commands c
		WHERE id = $1 AND ($2::bigint = 0 OR api_key_id = $2)`, id, apiKeyID))
	return c, translate(err, "command "+id.String())
}

// Commands returns the commands with these ids that exist.
func (s *Store) Commands(ctx context.Context, ids []uuid.UUID) ([]command.Command, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	cmds, err := collectCommands(s.db.Query(ctx, `SELECT `+commandColumns+` FROM commands c WHERE id = ANY($1)`, ids))
	return cmds, translate(err, "commands")
}

// PendingCommands returns the undelivered, unexpired commands of these
// devices in the order they were accepted, at most limits[i] of
// deviceIDs[i]: a device with a deep backlog cannot crowd out the others.
func (s *Store) PendingCommands(ctx context.Context, deviceIDs []string, limits []int32) ([]command.Command, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	cmds, err := collectCommands(s.db.Query(ctx, `
		SELECT `+commandColumns+`
		FROM unnest($1::text[], $2::int[]) AS d(device_id, room)
		CROSS JOIN LATERAL (
			SELECT * FROM commands
			WHERE device_id = d.device_id AND status = 'pending' AND expires_at > now()
			ORDER BY seq LIMIT d.room) c
		ORDER BY c.seq`, deviceIDs, limits))
	return cmds, translate(err, "pending commands")
}

// Watch adds edgeID to the edges woken when command id changes, for a stream
// resumed on an edge other than the one that accepted it. The list keeps the
// 16 newest watchers.
func (s *Store) Watch(ctx context.Context, id uuid.UUID, edgeID string) error {
	ctx, cancel := bound(ctx)
	defer cancel()
	_, err := s.db.Exec(ctx, `
		UPDATE commands SET watchers = (watchers || $2::text)[greatest(1, cardinality(watchers) - 14):]
		WHERE id = $1 AND status = ANY($3)
		  AND reply_to IS DISTINCT FROM $2 AND NOT ($2 = ANY(watchers))`,
		id, edgeID, []command.Status{command.Pending, command.Delivered})
	return translate(err, "watch command "+id.String())
}

// Change says a command moved: the edges that wait on it must hear of it.
// Command is its state after the move, which the wake-up carries when it
// fits, so that the edges need not read the row again.
type Change struct {
	ID      uuid.UUID
	Edges   []string // reply_to and watchers
	Command *command.Command
}

// changeColumns reads a changed command aliased c: its edges, then the
// command itself.
const changeColumns = `array_remove(array_prepend(c.reply_to, c.watchers), NULL), ` + commandColumns

func collectChanges(rows pgx.Rows, err error) ([]Change, error) {
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Change, error) {
		var edges []string
		c, err := scanCommand(prefixed{row, &edges})
		return Change{ID: c.ID, Edges: edges, Command: &c}, err
	})
}

// prefixed scans a row whose first column precedes what scan reads.
type prefixed struct {
	pgx.Row
	first any
}

func (p prefixed) Scan(dest ...any) error { return p.Row.Scan(append([]any{p.first}, dest...)...) }

// Delivery is a command written to one session of its device.
type Delivery struct {
	ID        uuid.UUID
	DeviceID  string
	SessionID uuid.UUID
}

// MarkDelivered records that a node wrote these commands to their devices.
// Every written frame counts one attempt, exactly once. A delivery to the
// device's current session of a pending command also marks it delivered,
// names the session and starts the reply deadline. A delivery to a session
// that is no longer current (replaced, or ended) only counts: the command
// stays pending for the device's next session; those are returned as
// stale. A command already answered on the delivering session was counted
// by the reply (Reply.Unrecorded).
//
// A session may end while its marks are on their way: a mark that commits
// just after the end's give-back read the table leaves the command
// delivered to an ended session. The node gives such commands back itself
// (GiveBackEnded) when it sees the mark land for a session that ended.
func (s *Store) MarkDelivered(ctx context.Context, nodeID string, deliveries []Delivery) (changes []Change, stale []uuid.UUID, err error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	ids := make([]uuid.UUID, len(deliveries))
	devices := make([]string, len(deliveries))
	sessions := make([]uuid.UUID, len(deliveries))
	for i, d := range deliveries {
		ids[i], devices[i], sessions[i] = d.ID, d.DeviceID, d.SessionID
	}
	// The common case, kept to one plain statement: the hot path pays for
	// planning on every call.
	changes, err = collectChanges(s.db.Query(ctx, `
		UPDATE commands c SET status = 'delivered', attempts = c.attempts + 1, session_id = d.session_id, node_id = $3,
			delivered_at = now(), reply_deadline = now() + c.timeout
		FROM unnest($1::uuid[], $2::uuid[]) AS d(id, session_id), presence p
		WHERE c.id = d.id AND p.device_id = c.device_id AND p.session_id = d.session_id AND c.status = ANY($4)
		RETURNING `+changeColumns, ids, sessions, nodeID, command.From(command.Delivered)))
	if err != nil || len(changes) == len(deliveries) {
		return changes, nil, translate(err, "mark delivered")
	}
	// The rest count, unless this very delivery was already counted: by a
	// reply on its session, or by an earlier try of this batch.
	marked := make(map[uuid.UUID]bool, len(changes))
	for _, c := range changes {
		marked[c.ID] = true
	}
	ids, devices, sessions = ids[:0], devices[:0], sessions[:0]
	for _, d := range deliveries {
		if !marked[d.ID] {
			ids, devices, sessions = append(ids, d.ID), append(devices, d.DeviceID), append(sessions, d.SessionID)
		}
	}
	rows, err := s.db.Query(ctx, `
		WITH d AS (SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[]) AS t(id, device_id, session_id)),
		counted AS (
			UPDATE commands c SET attempts = c.attempts + 1 FROM d
			WHERE c.id = d.id AND c.device_id = d.device_id
			  AND (c.status = 'pending' OR c.session_id IS DISTINCT FROM d.session_id))
		SELECT d.id FROM d
		WHERE NOT EXISTS (SELECT FROM presence p WHERE p.device_id = d.device_id AND p.session_id = d.session_id)`,
		ids, devices, sessions)
	if err == nil {
		stale, err = pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	}
	return changes, stale, translate(err, "count deliveries")
}

// GiveBackEnded gives back the delivered commands of these devices whose
// session is no longer current, as a session's end does: for a delivery
// mark that landed after that end.
func (s *Store) GiveBackEnded(ctx context.Context, deviceIDs []string) error {
	ctx, cancel := bound(ctx)
	defer cancel()
	return translate(s.requeueEnded(ctx, deviceIDs), "give back")
}

// Reply is a device's answer to a command.
type Reply struct {
	ID       uuid.UUID
	DeviceID string // the answering device: a device can only answer its own commands
	OK       bool
	Result   json.RawMessage
	Error    string
	// Unrecorded says the answering session wrote the command and its
	// delivery mark has not been stored yet: the reply records the delivery
	// itself, since the mark will find the command final.
	Unrecorded bool
	SessionID  uuid.UUID
}

// StoreReplies completes the commands these replies answer, at most one
// reply per command (the caller keeps the first). Replies to commands
// already final, or of other devices, change nothing; a reply to a command
// given back for redelivery (pending) still completes it.
func (s *Store) StoreReplies(ctx context.Context, nodeID string, replies []Reply) ([]Change, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	ids := make([]uuid.UUID, len(replies))
	devices := make([]string, len(replies))
	oks := make([]bool, len(replies))
	results := make([][]byte, len(replies))
	errs := make([]*string, len(replies))
	unrecorded := make([]bool, len(replies))
	sessions := make([]uuid.UUID, len(replies))
	for i, r := range replies {
		ids[i], devices[i], oks[i], results[i], unrecorded[i], sessions[i] = r.ID, r.DeviceID, r.OK, r.Result, r.Unrecorded, r.SessionID
		if !r.OK {
			errs[i] = &r.Error
		}
	}
	changes, err := collectChanges(s.db.Query(ctx, `
		UPDATE commands c SET status = CASE WHEN r.ok THEN 'done' ELSE 'failed' END,
			ok = r.ok, result = r.result, error = r.error, completed_at = now(),
			-- "Folding" the delivery mark into the reply: see Reply.Unrecorded.
			attempts = CASE WHEN `+foldMark+` THEN c.attempts + 1 ELSE c.attempts END,
			delivered_at = CASE WHEN `+foldMark+` THEN now() ELSE coalesce(c.delivered_at, now()) END,
			session_id = CASE WHEN `+foldMark+` THEN r.session_id ELSE c.session_id END,
			node_id = CASE WHEN `+foldMark+` THEN $8 ELSE c.node_id END
		FROM unnest($1::uuid[], $2::text[], $3::bool[], $4::jsonb[], $5::text[], $6::bool[], $7::uuid[])
			AS r(id, device_id, ok, result, error, unrecorded, session_id)
		WHERE c.id = r.id AND c.device_id = r.device_id AND c.status = ANY($9)
		RETURNING `+changeColumns, ids, devices, oks, results, errs, unrecorded, sessions, nodeID, command.From(command.Done)))
	return changes, translate(err, "store replies")
}

// foldMark says a reply records its session's delivery: the session's
// mark is not stored (r.unrecorded), and the command is not recorded as
// delivered to that session. It may be recorded as delivered to an older
// one: a mark of a replaced session, which read the presence table before
// the replacement committed, can land after the new session read the
// command as pending. The new session's delivery then still counts, and
// the command names it, as in MarkDelivered's count.
const foldMark = `r.unrecorded AND (c.status = 'pending' OR c.session_id IS DISTINCT FROM r.session_id)`

// FailUnanswered fails commands whose device did not reply within timeout
// of these deliveries, as the delivering node judged by its own clock:
// unless the command was delivered again since, or answered.
func (s *Store) FailUnanswered(ctx context.Context, deliveries []Delivery) ([]Change, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	ids := make([]uuid.UUID, len(deliveries))
	sessions := make([]uuid.UUID, len(deliveries))
	for i, d := range deliveries {
		ids[i], sessions[i] = d.ID, d.SessionID
	}
	changes, err := collectChanges(s.db.Query(ctx, `
		UPDATE commands c SET status = 'failed', completed_at = now(), error = `+noReplyError+`
		FROM unnest($1::uuid[], $2::uuid[]) AS t(id, session_id)
		WHERE c.id = t.id AND c.session_id = t.session_id AND c.status = 'delivered'
		RETURNING `+changeColumns, ids, sessions))
	return changes, translate(err, "fail unanswered")
}

// noReplyError says why a delivered command failed.
const noReplyError = `format('no reply within %ss of delivery %s', trim_scale(extract(epoch FROM c.timeout)), c.attempts)`

// requeueEnded gives back for redelivery the delivered commands of these
// devices whose session is no longer current: the device never answered
// them on that session, so its next one gets them again, in their first
// order. It runs inside the transaction that ended or replaced the session.
func (s *Store) requeueEnded(ctx context.Context, deviceIDs []string) error {
	_, err := s.db.Exec(ctx, `
		UPDATE commands c SET status = 'pending', reply_deadline = NULL
		WHERE c.device_id = ANY($1) AND c.status = 'delivered'
		  AND NOT EXISTS (SELECT FROM presence p WHERE p.device_id = c.device_id AND p.session_id = c.session_id)`,
		deviceIDs)
	return err
}

// Swept is what a sweep changed: commands the edges must hear of, and
// devices whose commands went back to pending, whose nodes must deliver.
type Swept struct {
	Changes []Change
	Devices []string
}

// SweepGrace is how long after its reply deadline a delivered command is
// failed by a sweep: the node that delivered it fails it on time (after
// storing any reply it got in time, however late the database came back),
// so the sweep is only the backstop for a node that could not.
const SweepGrace = time.Minute

// SweepCommands expires pending commands whose ttl passed, gives back for
// redelivery those delivered to a session whose node's lease lapsed (the
// node died, or lost the database), and fails those delivered more than
// SweepGrace past their reply deadline, at most limit of each. Several
// processes may sweep at once: each row goes to one of them.
func (s *Store) SweepCommands(ctx context.Context, limit int) (Swept, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	var swept Swept
	failed, err := collectChanges(s.db.Query(ctx, `
		WITH due AS (
			SELECT id FROM commands WHERE status = 'delivered' AND reply_deadline <= now() - $2::interval
			ORDER BY reply_deadline LIMIT $1 FOR UPDATE SKIP LOCKED)
		UPDATE commands c SET status = 'failed', completed_at = now(), error = `+noReplyError+`
		FROM due WHERE c.id = due.id
		RETURNING `+changeColumns, limit, SweepGrace))
	if err != nil {
		return swept, translate(err, "sweep replies")
	}
	expired, err := collectChanges(s.db.Query(ctx, `
		WITH due AS (
			SELECT id FROM commands WHERE status = 'pending' AND expires_at <= now()
			ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)
		UPDATE commands c SET status = 'expired', completed_at = now(),
			error = CASE WHEN c.attempts = 0 THEN 'not delivered within ttl'
				ELSE format('delivered %s times without a reply, then not again within ttl', c.attempts) END
		FROM due WHERE c.id = due.id
		RETURNING `+changeColumns, limit))
	swept.Changes = append(failed, expired...)
	if err != nil {
		return swept, translate(err, "sweep expiries")
	}
	// A live node gives back what its ended sessions left; this is for the
	// nodes that cannot: their lease lapsed, or was reaped.
	rows, err := s.db.Query(ctx, `
		WITH due AS (
			SELECT id FROM commands c WHERE status = 'delivered'
			  AND NOT EXISTS (SELECT FROM nodes n WHERE n.id = c.node_id AND n.lease_expires_at > now())
			LIMIT $1 FOR UPDATE SKIP LOCKED),
		requeued AS (
			UPDATE commands c SET status = 'pending', reply_deadline = NULL
			FROM due WHERE c.id = due.id
			RETURNING c.device_id)
		SELECT DISTINCT device_id FROM requeued`, limit)
	if err == nil {
		swept.Devices, err = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	return swept, translate(err, "sweep orphaned deliveries")
}

// PurgeIdempotencyKeys deletes keys past their window, a batch at a time.
func (s *Store) PurgeIdempotencyKeys(ctx context.Context, limit int) (int64, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	tag, err := s.db.Exec(ctx, `
		DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY(
			SELECT ctid FROM idempotency_keys WHERE created_at < now() - $1::interval LIMIT $2))`,
		IdempotencyWindow, limit)
	return tag.RowsAffected(), translate(err, "purge idempotency keys")
}
