package db

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/switchboard-iot/switchboard/internal/command"
)

// ErrKeyReused says an idempotency key already named a different request.
var ErrKeyReused = errors.New("idempotency key used for another request")

// ErrQueueFull says a command was refused because its device already has
// its cap of pending commands (NewCommand.QueueCap).
var ErrQueueFull = errors.New("the device's queue of pending commands is full")

// DefaultQueueCap is the cap of a device's pending commands that the edge
// and the job runner take by default.
const DefaultQueueCap = 100

// QueueFullError is the error of a job's command refused because its
// device's queue was full: stored failed, never delivered.
const QueueFullError = "device-queue-full: the device already had its cap of pending commands"

// pendingCount is the SQL count of the pending, unexpired commands of
// device (an SQL expression), read by commands_pending and counted no
// further than limit (the cap: a backlog older than the cap costs no more
// to count than the cap). An expired command the sweeper has not reached
// yet no longer counts: it will never be delivered.
func pendingCount(device, limit string) string {
	return `(SELECT count(*) FROM (SELECT FROM commands q WHERE q.device_id = ` + device +
		` AND q.status = 'pending' AND q.expires_at > now() LIMIT ` + limit + `) q)`
}

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

	// QueueCap, when above 0, refuses the command (ErrQueueFull) if its
	// device already has this many pending commands. The count and the
	// insert are one statement: two statements that insert for the same
	// device at once each count without the other's rows, so the queue
	// holds at most QueueCap plus the rows of such concurrent statements.
	QueueCap int

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

// CreateCommand stores a pending command. An unknown device is ErrNotFound,
// a device whose queue is full ErrQueueFull. created is false when an
// idempotency key named an earlier command, which is returned instead (even
// when the queue is full now: the retry was accepted before).
func (s *Store) CreateCommand(ctx context.Context, nc NewCommand) (c command.Command, created bool, err error) {
	if nc.IdempotencyKey == "" {
		cs, full, err := s.CreateCommands(ctx, []NewCommand{nc})
		switch {
		case err != nil:
			return c, false, err
		case len(full) > 0:
			return c, false, fmt.Errorf("device %s: %w", nc.DeviceID, ErrQueueFull)
		case len(cs) == 0:
			return c, false, fmt.Errorf("device %s: %w", nc.DeviceID, ErrNotFound)
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
	// its row for every command). Its queue must have room ($12).
	const insert = `
		INSERT INTO commands AS c (id, device_id, name, args, timeout, expires_at, reply_to, api_key_id)
		SELECT $1, $2, $3, $4, $5, now() + $6::interval, $7, $8
		WHERE EXISTS (SELECT FROM devices WHERE id = $2)`
	args := []any{nc.ID, nc.DeviceID, nc.Name, nc.Args, nc.Timeout, nc.TTL, nc.ReplyTo, apiKey}
	// The key row and the command commit together. A concurrent repeat
	// waits on the key row, then finds it taken; a key past its window is
	// taken over. The key is taken only when the command can be stored (its
	// device exists, its queue has room): a key never names a command that
	// was refused.
	c, err = scanCommand(s.db.QueryRow(ctx, `
		WITH key AS (
			INSERT INTO idempotency_keys (api_key_id, key, request_hash, command_id)
			SELECT $8, $9, $10, $1 WHERE EXISTS (SELECT FROM devices WHERE id = $2)
				AND ($12::int <= 0 OR `+pendingCount("$2", "$12::int")+` < $12::int)
			ON CONFLICT (api_key_id, key) DO UPDATE
				SET request_hash = EXCLUDED.request_hash, command_id = EXCLUDED.command_id, created_at = now()
				WHERE idempotency_keys.created_at < now() - $11::interval
			RETURNING 1)
		`+insert+` AND EXISTS (SELECT FROM key)
		RETURNING `+commandColumns, append(args, nc.IdempotencyKey, nc.RequestHash, IdempotencyWindow, nc.QueueCap)...))
	if err == nil || !errors.Is(err, pgx.ErrNoRows) {
		return c, err == nil, translate(err, "device "+nc.DeviceID)
	}
	// Nothing was stored: a key within its window names an earlier
	// command, or the device is unknown, or its queue is full.
	var hash []byte
	var cmdID uuid.UUID
	err = s.db.QueryRow(ctx, `SELECT request_hash, command_id FROM idempotency_keys
		WHERE api_key_id = $1 AND key = $2 AND created_at >= now() - $3::interval`,
		apiKey, nc.IdempotencyKey, IdempotencyWindow).Scan(&hash, &cmdID)
	if errors.Is(err, pgx.ErrNoRows) {
		full, err := s.refused(ctx, []NewCommand{nc})
		if err != nil {
			return c, false, err
		}
		if len(full) > 0 {
			return c, false, fmt.Errorf("device %s: %w", nc.DeviceID, ErrQueueFull)
		}
		return c, false, fmt.Errorf("device %s: %w", nc.DeviceID, ErrNotFound)
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
// stored commands, in no particular order, and the ids of those refused
// because their device's queue was full (NewCommand.QueueCap); a command
// whose device does not exist is in neither. One refused row fails the
// whole statement (ErrInvalid): the caller then stores the rows one by one
// to find it.
//
// A batch may hold several commands to one device: each counts the
// device's pending commands plus those before it in the batch, so a batch
// alone never passes a cap.
func (s *Store) CreateCommands(ctx context.Context, ncs []NewCommand) (stored []command.Command, full []uuid.UUID, err error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	n := len(ncs)
	ids, devices, names, args := make([]uuid.UUID, n), make([]string, n), make([]string, n), make([]string, n)
	timeouts, ttls, replyTo, keys := make([]time.Duration, n), make([]time.Duration, n), make([]string, n), make([]*int64, n)
	caps := make([]int32, n)
	for i := range ncs {
		nc := &ncs[i]
		ids[i], devices[i], names[i], args[i] = nc.ID, nc.DeviceID, nc.Name, string(nc.Args)
		timeouts[i], ttls[i], replyTo[i] = nc.Timeout, nc.TTL, nc.ReplyTo
		caps[i] = int32(min(max(nc.QueueCap, 0), 1<<30))
		if nc.APIKeyID != 0 {
			keys[i] = &nc.APIKeyID
		}
	}
	// Rows go in the order given, so seq keeps the order they were
	// accepted in. The device must exist: read, not locked (see
	// CreateCommand). A row's rank among the batch's rows to its device
	// (t.n, 1 for the first) adds to the device's count.
	stored, err = collectCommands(s.db.Query(ctx, `
		WITH t AS (
			SELECT t.*, row_number() OVER (PARTITION BY t.device_id ORDER BY t.i) AS n
			FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::interval[], $6::interval[], $7::text[], $8::bigint[], $9::int[])
				WITH ORDINALITY AS t(id, device_id, name, args, timeout, ttl, reply_to, api_key_id, queue_cap, i))
		INSERT INTO commands AS c (id, device_id, name, args, timeout, expires_at, reply_to, api_key_id)
		SELECT t.id, t.device_id, t.name, t.args::jsonb, t.timeout, now() + t.ttl, t.reply_to, t.api_key_id
		FROM t
		WHERE EXISTS (SELECT FROM devices d WHERE d.id = t.device_id)
		  AND (t.queue_cap <= 0 OR t.n + `+pendingCount("t.device_id", "t.queue_cap")+` <= t.queue_cap)
		ORDER BY t.i
		RETURNING `+commandColumns, ids, devices, names, args, timeouts, ttls, replyTo, keys, caps))
	if err != nil || len(stored) == n {
		return stored, nil, translate(err, "commands")
	}
	in := make(map[uuid.UUID]bool, len(stored))
	for i := range stored {
		in[stored[i].ID] = true
	}
	var left []NewCommand
	for i := range ncs {
		if !in[ncs[i].ID] {
			left = append(left, ncs[i])
		}
	}
	full, err = s.refused(ctx, left)
	return stored, full, err
}

// refused tells apart, among commands that were not stored, those refused
// for a full queue (returned) from those to unknown devices: a device that
// exists had no room. (A device deleted or created between the insert and
// this read is judged by what it is now.)
func (s *Store) refused(ctx context.Context, ncs []NewCommand) ([]uuid.UUID, error) {
	devices := make([]string, len(ncs))
	for i := range ncs {
		devices[i] = ncs[i].DeviceID
	}
	rows, err := s.db.Query(ctx, `SELECT id FROM devices WHERE id = ANY($1)`, devices)
	if err != nil {
		return nil, translate(err, "commands")
	}
	exist, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, translate(err, "commands")
	}
	var full []uuid.UUID
	for i := range ncs {
		if slices.Contains(exist, ncs[i].DeviceID) {
			full = append(full, ncs[i].ID)
		}
	}
	return full, nil
}

// Unfinished counts the commands not yet final: pending (waiting for their
// device) and delivered (waiting for its reply). Each count reads its own
// partial index.
func (s *Store) Unfinished(ctx context.Context) (pending, delivered int64, err error) {
	err = s.db.QueryRow(ctx, `SELECT (SELECT count(*) FROM commands WHERE status = 'pending'),
		(SELECT count(*) FROM commands WHERE status = 'delivered')`).Scan(&pending, &delivered)
	return pending, delivered, translate(err, "count unfinished commands")
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

// Why a cancel refused a command: it is out with its device, or it ended.
var (
	ErrInFlight = errors.New("the command was delivered: its device has it")
	ErrFinal    = errors.New("the command is final")
)

// CancelledError is the error of a command a client cancelled.
const CancelledError = "cancelled before delivery"

// CancelCommand cancels a pending command that API key sentBy sent (0: any
// key's; another key's is ErrNotFound): it ends cancelled, and is never
// delivered, since a node claims a command (ClaimDeliveries) before it
// writes it, and the two UPDATEs take the row in turn. It returns the
// command and, when this call cancelled it, its change for the edges that
// wait on it. A command cancelled before is returned as it is (a retry);
// one delivered is ErrInFlight, one done, failed or expired ErrFinal, each
// with the command.
func (s *Store) CancelCommand(ctx context.Context, id uuid.UUID, sentBy int64) (command.Command, *Change, error) {
	var c command.Command
	var change *Change
	err := s.InTx(ctx, func(tx *Store) error {
		change = nil
		// The row lock makes the status read the one the UPDATE acts on:
		// a command given back to pending meanwhile is cancelled, not
		// answered as in flight.
		var err error
		c, err = scanCommand(tx.db.QueryRow(ctx, `SELECT `+commandColumns+` FROM commands c
			WHERE id = $1 AND ($2::bigint = 0 OR api_key_id = $2) FOR UPDATE`, id, sentBy))
		if err != nil || c.Status != command.Pending {
			return err
		}
		changes, err := collectChanges(tx.db.Query(ctx, `
			UPDATE commands c SET status = 'cancelled', completed_at = now(), error = $2
			WHERE id = $1 AND status = ANY($3)
			RETURNING `+changeColumns, id, CancelledError, command.From(command.Cancelled)))
		if err != nil {
			return err
		}
		if len(changes) == 1 {
			change, c = &changes[0], *changes[0].Command
		}
		return nil
	})
	switch {
	case err != nil:
		return c, nil, translate(err, "command "+id.String())
	case c.Status == command.Delivered:
		return c, nil, ErrInFlight
	case c.Status != command.Cancelled:
		return c, nil, ErrFinal
	}
	return c, change, nil
}

// CommandFilter chooses among commands; its zero value chooses every one.
type CommandFilter struct {
	DeviceID string           // "": every device
	Statuses []command.Status // none: every status
	Name     string           // "": every name
	JobID    uuid.UUID        // uuid.Nil: with or without a job
	// Since and Until bound created_at: since included, until not; nil
	// leaves that side open.
	Since, Until *time.Time
	// SentBy is the key whose commands, sent itself or by its jobs, are
	// listed (commands.api_key_id); 0 lists every key's.
	SentBy int64
}

// CommandCursor is where a page of commands ended: its last command's
// created_at and id. The next page starts after it.
type CommandCursor struct {
	CreatedAt time.Time
	ID        uuid.UUID
}

// CommandPage is one page of commands, newest first.
type CommandPage struct {
	Commands []command.Command
	More     bool // commands after the last one match too
	// DeviceExists says, when the filter names a device, whether it
	// exists (read in the same round trip): a device's listing answers 404
	// for an unknown one.
	DeviceExists bool
}

// ListCommands returns up to limit commands that f chooses, newest first
// (created_at, then id, both descending), after the cursor (nil: from the
// newest). Pages are keyed on the last command, so commands created
// meanwhile neither repeat nor hide another. The page reads
// commands_device_created for a device, commands_api_key_created for a
// key without the read scope, commands_created otherwise.
func (s *Store) ListCommands(ctx context.Context, f CommandFilter, after *CommandCursor, limit int) (CommandPage, error) {
	if limit < 1 || limit > MaxPage {
		return CommandPage{}, fmt.Errorf("list commands: limit %d: %w", limit, ErrInvalid)
	}
	ctx, cancel := bound(ctx)
	defer cancel()
	var where []string
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	if f.DeviceID != "" {
		where = append(where, "c.device_id = "+arg(f.DeviceID))
	}
	if len(f.Statuses) > 0 {
		where = append(where, "c.status = ANY("+arg(f.Statuses)+")")
	}
	if f.Name != "" {
		where = append(where, "c.name = "+arg(f.Name))
	}
	if f.JobID != uuid.Nil {
		where = append(where, "c.job_id = "+arg(f.JobID))
	}
	if f.Since != nil {
		where = append(where, "c.created_at >= "+arg(*f.Since))
	}
	if f.Until != nil {
		where = append(where, "c.created_at < "+arg(*f.Until))
	}
	if f.SentBy != 0 {
		where = append(where, "c.api_key_id = "+arg(f.SentBy))
	}
	if after != nil {
		// The plain bound is one an index on created_at alone (a
		// device's) can start its scan at; the row comparison then breaks
		// ties by id.
		at, id := arg(after.CreatedAt), arg(after.ID)
		where = append(where, "c.created_at <= "+at, "(c.created_at, c.id) < ("+at+", "+id+")")
	}
	cond := "true"
	if len(where) > 0 {
		cond = strings.Join(where, " AND ")
	}
	var page CommandPage
	var b pgx.Batch
	b.Queue(`SELECT `+commandColumns+` FROM commands c WHERE `+cond+`
		ORDER BY c.created_at DESC, c.id DESC LIMIT `+arg(limit+1), args...).
		Query(func(rows pgx.Rows) (err error) {
			page.Commands, err = collectCommands(rows, nil)
			return err
		})
	if f.DeviceID != "" {
		b.Queue(`SELECT EXISTS (SELECT FROM devices WHERE id = $1)`, f.DeviceID).
			QueryRow(func(row pgx.Row) error { return row.Scan(&page.DeviceExists) })
	}
	if err := s.db.SendBatch(ctx, &b).Close(); err != nil {
		return CommandPage{}, translate(err, "list commands")
	}
	if len(page.Commands) > limit {
		page.Commands, page.More = page.Commands[:limit], true
	}
	return page, nil
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

// Delivery is a command delivered to one session of its device.
type Delivery struct {
	ID        uuid.UUID
	DeviceID  string
	SessionID uuid.UUID
}

// Claim asks for up to Room pending commands of a device, for its session
// SessionID on the claiming node.
type Claim struct {
	DeviceID  string
	SessionID uuid.UUID
	Room      int
}

// ClaimDeliveries moves pending, unexpired commands to delivered for the
// sessions that claim them, in one statement, before the node writes a
// single frame: the node writes only what this returns, so a command that a
// cancel or an expiry took first is never written. Each claim takes the
// device's oldest commands (commands.seq), at most its Room, and only while
// the claiming session is the device's current one (its presence row): a
// session replaced meanwhile gets nothing. A claim counts one attempt,
// names the session and the node, and starts the reply deadline. The
// changes come back in seq order, each with the edges to wake.
//
// A row another statement holds (a cancel, a reply, an edge that watches
// it) is waited for, not skipped, so a device's order holds; PostgreSQL
// then checks the row again, and one that is no longer pending is left
// out.
//
// A session may end while its claim is on its way: a claim that commits
// just after the end's give-back read the table leaves the command
// delivered to an ended session. The node gives such commands back itself
// (GiveBackEnded) when it finds the session closed as the claim returns.
func (s *Store) ClaimDeliveries(ctx context.Context, nodeID string, claims []Claim) ([]Change, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	devices := make([]string, len(claims))
	sessions := make([]uuid.UUID, len(claims))
	rooms := make([]int32, len(claims))
	for i, c := range claims {
		devices[i], sessions[i], rooms[i] = c.DeviceID, c.SessionID, int32(c.Room)
	}
	// The pending read is the one commands_pending serves, a device at a
	// time (LATERAL), so a deep backlog costs its Room and no more. The
	// status test on the updated row is what PostgreSQL checks again on a
	// row that changed under it.
	changes, err := collectChanges(s.db.Query(ctx, `
		WITH claimed AS (
			UPDATE commands c SET status = 'delivered', attempts = c.attempts + 1, session_id = t.session_id,
				node_id = $4, delivered_at = now(), reply_deadline = now() + c.timeout
			FROM (
				SELECT d.session_id, q.id
				FROM unnest($1::text[], $2::uuid[], $3::int[]) AS d(device_id, session_id, room)
				JOIN presence p ON p.device_id = d.device_id AND p.session_id = d.session_id
				CROSS JOIN LATERAL (
					SELECT id FROM commands
					WHERE device_id = d.device_id AND status = 'pending' AND expires_at > now()
					ORDER BY seq LIMIT d.room) q) t
			WHERE c.id = t.id AND c.status = ANY($5)
			RETURNING c.*)
		SELECT `+changeColumns+` FROM claimed c ORDER BY c.seq`,
		devices, sessions, rooms, nodeID, command.From(command.Delivered)))
	return changes, translate(err, "claim deliveries")
}

// GiveBackUnwritten gives back the commands delivered to these sessions
// (of nodeID) but for those in written, the ones the node queued or wrote:
// what is left is a claim whose answer was lost (the statement committed,
// then its connection failed), which the node never wrote. They go back to
// pending, their attempt uncounted, to be claimed again in their order. It
// returns how many.
func (s *Store) GiveBackUnwritten(ctx context.Context, nodeID string, sessions []Session, written []uuid.UUID) (int64, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	devices, sids, _ := sessionColumns(sessions)
	if written == nil {
		written = []uuid.UUID{}
	}
	tag, err := s.db.Exec(ctx, `
		UPDATE commands c SET status = 'pending', reply_deadline = NULL, attempts = c.attempts - 1
		FROM unnest($1::text[], $2::uuid[]) AS t(device_id, session_id)
		WHERE c.device_id = t.device_id AND c.status = 'delivered' AND c.session_id = t.session_id
		  AND c.node_id = $3 AND NOT (c.id = ANY($4))`,
		devices, sids, nodeID, written)
	return tag.RowsAffected(), translate(err, "give back unwritten")
}

// GiveBackEnded gives back the delivered commands of these devices whose
// session is no longer current, as a session's end does: for a claim that
// landed after that end.
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
}

// StoreReplies completes the commands these replies answer, at most one
// reply per command (the caller keeps the first). Replies to commands
// already final, or of other devices, change nothing; a reply to a command
// given back for redelivery (pending) still completes it.
func (s *Store) StoreReplies(ctx context.Context, replies []Reply) ([]Change, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
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
			ok = r.ok, result = r.result, error = r.error, completed_at = now(),
			delivered_at = coalesce(c.delivered_at, now())
		FROM unnest($1::uuid[], $2::text[], $3::bool[], $4::jsonb[], $5::text[])
			AS r(id, device_id, ok, result, error)
		WHERE c.id = r.id AND c.device_id = r.device_id AND c.status = ANY($6)
		RETURNING `+changeColumns, ids, devices, oks, results, errs, command.From(command.Done)))
	return changes, translate(err, "store replies")
}

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
