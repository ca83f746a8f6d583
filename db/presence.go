package db

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Node is a connection node's identity, as its lease row shows it.
type Node struct {
	ID     string
	Region string
	Addr   string
}

// RenewLease creates or extends node's lease. It reports whether the row had
// to be created: then the node's presence rows may have been reaped while it
// was away, and the node must assert them again.
func (s *Store) RenewLease(ctx context.Context, node Node, ttl time.Duration) (created bool, err error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	err = s.db.QueryRow(ctx, `
		INSERT INTO nodes (id, region, addr, lease_expires_at)
		VALUES ($1, $2, $3, now() + $4::interval)
		ON CONFLICT (id) DO UPDATE
			SET heartbeat_at = now(), lease_expires_at = EXCLUDED.lease_expires_at,
			    region = EXCLUDED.region, addr = EXCLUDED.addr
		RETURNING xmax = 0`, node.ID, node.Region, node.Addr, ttl).Scan(&created)
	return created, translate(err, "renew lease of "+node.ID)
}

// ClearNode deletes a node's presence rows, keeping its lease, and gives
// back what their sessions left unanswered: a node that starts holds no
// connections, whatever an earlier process with its id left behind. The
// sessions go to the presence history, as Disconnect would have put them.
func (s *Store) ClearNode(ctx context.Context, nodeID string) error {
	err := s.InTx(ctx, func(tx *Store) error {
		// The sessions ended when the process that held them did, at the
		// latest now.
		rows, err := tx.db.Query(ctx, `
			WITH gone AS (
				DELETE FROM presence WHERE node_id = $1
				RETURNING device_id, session_id, node_id, region, remote_addr, now() AS ended_at)`+recordEnded+`
			SELECT device_id FROM gone`, nodeID)
		if err != nil {
			return err
		}
		devices, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil || len(devices) == 0 {
			return err
		}
		return tx.requeueEnded(ctx, devices)
	})
	return translate(err, "clear node "+nodeID)
}

// RemoveNode deletes a node's presence rows, giving back what their
// sessions left unanswered, then its lease: a clean shutdown leaves nothing
// behind. Should the second step fail, the lease lapses by itself.
func (s *Store) RemoveNode(ctx context.Context, nodeID string) error {
	if err := s.ClearNode(ctx, nodeID); err != nil {
		return err
	}
	ctx, cancel := bound(ctx)
	defer cancel()
	_, err := s.db.Exec(ctx, `DELETE FROM nodes WHERE id = $1`, nodeID)
	return translate(err, "remove node "+nodeID)
}

// ReapNodes deletes the leases, and presence rows, of nodes whose lease
// lapsed more than grace ago. presence_live already ignores them; this
// keeps the tables small, and puts the sessions of a node that died, which
// it never disconnected, in the presence history, ended at its last
// heartbeat.
func (s *Store) ReapNodes(ctx context.Context, grace time.Duration) (int64, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	var n int64
	err := s.db.QueryRow(ctx, `
		WITH reaped AS (
			DELETE FROM nodes WHERE lease_expires_at < now() - $1::interval RETURNING id, heartbeat_at),
		gone AS (
			DELETE FROM presence p USING reaped r WHERE p.node_id = r.id
			RETURNING p.device_id, p.session_id, p.node_id, p.region, p.remote_addr, r.heartbeat_at AS ended_at)`+recordEnded+`
		SELECT count(*) FROM reaped`, grace).Scan(&n)
	return n, translate(err, "reap nodes")
}

// sessionStart is when session_id's session started: a session id is a
// UUIDv7, whose first 48 bits are its node's clock in milliseconds.
const sessionStart = `to_timestamp(('x' || substr(replace(session_id::text, '-', ''), 1, 12))::bit(48)::bigint / 1000.0)`

// recordHistory follows a CTE, gone, of presence rows that their node will
// never Disconnect (it died, or restarted): their sessions join the
// presence history, ended at gone.ended_at (or at their start, for a
// session that began after its node's last heartbeat).
const recordHistory = `,
		history AS (
			INSERT INTO device_sessions (session_id, device_id, node_id, region, remote_addr, connected_at, disconnected_at)
			SELECT session_id, device_id, node_id, region, remote_addr, ` + sessionStart + `, greatest(ended_at, ` + sessionStart + `) FROM gone
			ON CONFLICT (session_id) DO NOTHING)`

// recordEnded ends a statement whose first CTE, gone, deleted such rows:
// recordHistory, and their devices were last seen then, where their
// session was.
const recordEnded = recordHistory + `,
		seen AS (
			UPDATE devices d SET last_seen_at = greatest(d.last_seen_at, g.ended_at, ` + sessionStart + `), region = g.region
			FROM gone g WHERE d.id = g.device_id)`

// Session is one device connection on a node.
type Session struct {
	DeviceID   string
	SessionID  uuid.UUID
	RemoteAddr string
}

// sessionColumns turns sessions into the arrays the statements unnest.
func sessionColumns(sessions []Session) (devices []string, sids []uuid.UUID, addrs []string) {
	for _, ss := range sessions {
		devices, sids, addrs = append(devices, ss.DeviceID), append(sids, ss.SessionID), append(addrs, ss.RemoteAddr)
	}
	return devices, sids, addrs
}

// Displaced is a session on another node that a new connection replaced.
type Displaced struct {
	DeviceID  string
	NodeID    string
	SessionID uuid.UUID
}

// Connect writes presence rows for sessions that opened on node and returns
// the sessions on other nodes that these replaced, which their nodes must
// close. The newest session of a device is the one PostgreSQL registers
// last, whatever the nodes' clocks say: the row is always replaced, and
// stamped from a sequence. Commands delivered to the replaced sessions and
// not answered go back to pending, in the same transaction, so the new
// session finds them when it reads its pending commands. A device must
// appear only once.
func (s *Store) Connect(ctx context.Context, node Node, sessions []Session) (displaced []Displaced, err error) {
	devices, sids, addrs := sessionColumns(sessions)
	err = s.InTx(ctx, func(tx *Store) error {
		displaced = displaced[:0]
		// All parts of the statement see the same snapshot, so old holds the
		// rows as they were before the upsert replaced them. Rows are
		// written in device order, so two nodes' batches cannot deadlock.
		rows, err := tx.db.Query(ctx, `
			WITH input AS (
				SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[]) AS t(device_id, session_id, remote_addr)),
			old AS (
				SELECT p.device_id, p.node_id, p.session_id, p.region, p.remote_addr FROM presence p
				JOIN input USING (device_id) FOR UPDATE OF p),
			-- A replaced session whose node's lease lapsed will never be
			-- disconnected by it: it joins the presence history here,
			-- ended at its node's last heartbeat.
			gone AS (
				SELECT o.device_id, o.session_id, o.node_id, o.region, o.remote_addr, coalesce(n.heartbeat_at, now()) AS ended_at
				FROM old o LEFT JOIN nodes n ON n.id = o.node_id
				WHERE n.id IS NULL OR n.lease_expires_at < now())`+recordHistory+`,
			upsert AS (
				INSERT INTO presence (device_id, node_id, region, session_id, remote_addr, registered_seq)
				SELECT device_id, $4, $5, session_id, remote_addr, nextval('presence_registered_seq')
				FROM input ORDER BY device_id
				ON CONFLICT (device_id) DO UPDATE
					SET node_id = EXCLUDED.node_id, region = EXCLUDED.region, session_id = EXCLUDED.session_id,
					    remote_addr = EXCLUDED.remote_addr, connected_at = now(), registered_seq = EXCLUDED.registered_seq)
			SELECT device_id, node_id, session_id FROM old WHERE node_id <> $4`,
			devices, sids, addrs, node.ID, node.Region)
		if err != nil {
			return err
		}
		if displaced, err = pgx.CollectRows(rows, pgx.RowToStructByPos[Displaced]); err != nil {
			return err
		}
		return tx.requeueEnded(ctx, devices)
	})
	return displaced, translate(err, "connect")
}

// Reassert writes presence rows for sessions a node still holds after its
// lease was reaped. It does not displace anyone: a device that has since
// connected elsewhere keeps its newer row.
func (s *Store) Reassert(ctx context.Context, node Node, sessions []Session) error {
	ctx, cancel := bound(ctx)
	defer cancel()
	devices, sids, addrs := sessionColumns(sessions)
	_, err := s.db.Exec(ctx, `
		INSERT INTO presence (device_id, node_id, region, session_id, remote_addr, registered_seq)
		SELECT device_id, $4, $5, session_id, remote_addr, nextval('presence_registered_seq')
		FROM unnest($1::text[], $2::uuid[], $3::text[]) AS t(device_id, session_id, remote_addr)
		ON CONFLICT (device_id) DO NOTHING`, devices, sids, addrs, node.ID, node.Region)
	return translate(err, "reassert presence")
}

// Replaced returns which of these sessions a newer session of their device
// has replaced (its presence row names another session). A session whose
// row is gone (reaped) is not among them: its node asserts it again.
func (s *Store) Replaced(ctx context.Context, sessions []Session) ([]uuid.UUID, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	devices, sids, _ := sessionColumns(sessions)
	rows, err := s.db.Query(ctx, `
		SELECT t.session_id FROM unnest($1::text[], $2::uuid[]) AS t(device_id, session_id)
		JOIN presence p USING (device_id) WHERE p.session_id <> t.session_id`, devices, sids)
	if err != nil {
		return nil, translate(err, "replaced sessions")
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	return ids, translate(err, "replaced sessions")
}

// Disconnect deletes the presence rows of sessions that closed, unless a
// newer session already replaced them, records when each device was last
// seen, and gives back for redelivery the commands those sessions left
// unanswered, and adds each session to the presence history
// (device_sessions). The row goes first, in its own statement: a claim
// racing with it either committed before (and is given back here), or
// misses the row, or read it before it went and lands after the give-back,
// when its node gives the command back itself (see ClaimDeliveries).
func (s *Store) Disconnect(ctx context.Context, node Node, sessions []Session) error {
	devices, sids, addrs := sessionColumns(sessions)
	err := s.InTx(ctx, func(tx *Store) error {
		rows, err := tx.db.Query(ctx, `
			DELETE FROM presence p USING unnest($1::text[], $2::uuid[]) AS t(device_id, session_id)
			WHERE p.device_id = t.device_id AND p.session_id = t.session_id
			RETURNING p.device_id, p.region`, devices, sids)
		if err != nil {
			return err
		}
		var gone, regions []string
		var id, region string
		if _, err = pgx.ForEachRow(rows, []any{&id, &region}, func() error {
			gone, regions = append(gone, id), append(regions, region)
			return nil
		}); err != nil {
			return err
		}
		// Every device is seen now; a device whose row a newer session
		// replaced keeps the region that session wrote.
		_, err = tx.db.Exec(ctx, `
			UPDATE devices d SET last_seen_at = now(), region = coalesce(t.region, d.region)
			FROM unnest($1::text[]) AS a(id) LEFT JOIN unnest($2::text[], $3::text[]) AS t(id, region) USING (id)
			WHERE d.id = a.id`, devices, gone, regions)
		if err != nil {
			return err
		}
		// The history takes every session that ended, its row replaced by
		// a newer session's or not, but a deleted device's (whose close
		// comes after its history went). One recorded already was taken
		// for lost while its node was cut off (ReapNodes): it ended now.
		_, err = tx.db.Exec(ctx, `
			INSERT INTO device_sessions (session_id, device_id, node_id, region, remote_addr, connected_at)
			SELECT session_id, device_id, $4, $5, remote_addr, `+sessionStart+`
			FROM unnest($1::text[], $2::uuid[], $3::text[]) AS t(device_id, session_id, remote_addr)
			WHERE EXISTS (SELECT FROM devices d WHERE d.id = t.device_id)
			ON CONFLICT (session_id) DO UPDATE SET disconnected_at = greatest(device_sessions.disconnected_at, EXCLUDED.disconnected_at)`,
			devices, sids, addrs, node.ID, node.Region)
		if err != nil {
			return err
		}
		return tx.requeueEnded(ctx, devices)
	})
	return translate(err, "disconnect")
}

// NodeLoads returns how many devices each live node of the region holds
// (from presence rows; a node with none counts as 0): what a node compares
// itself with to rebalance after a scale-up.
func (s *Store) NodeLoads(ctx context.Context, region string) (map[string]int, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	rows, err := s.db.Query(ctx, `
		SELECT n.id, (SELECT count(*) FROM presence p WHERE p.node_id = n.id)
		FROM nodes n WHERE n.region = $1 AND n.lease_expires_at > now()`, region)
	if err != nil {
		return nil, translate(err, "node loads")
	}
	out := make(map[string]int)
	var id string
	var n int
	_, err = pgx.ForEachRow(rows, []any{&id, &n}, func() error {
		out[id] = n
		return nil
	})
	return out, translate(err, "node loads")
}

// SessionRecord is one ended session of a device, from the presence
// history.
type SessionRecord struct {
	SessionID      uuid.UUID `json:"session_id"`
	NodeID         string    `json:"node_id"`
	Region         string    `json:"region"`
	RemoteAddr     string    `json:"remote_addr"`
	ConnectedAt    time.Time `json:"connected_at"`
	DisconnectedAt time.Time `json:"disconnected_at"`
}

// DeviceSessions returns a device's last ended sessions, newest first.
func (s *Store) DeviceSessions(ctx context.Context, deviceID string, limit int) ([]SessionRecord, error) {
	sessions, _, err := s.DeviceSessionPage(ctx, deviceID, nil, limit)
	return sessions, err
}

// SessionKey is where a page of a device's sessions ends: its last
// session's start and id, the order of the listing.
type SessionKey struct {
	ConnectedAt time.Time
	SessionID   uuid.UUID
}

// DeviceSessionPage returns up to limit of a device's ended sessions,
// newest first, after the session after (nil: from the newest), and
// whether more follow: keyset pagination on (connected_at, session_id),
// which the device's index serves.
func (s *Store) DeviceSessionPage(ctx context.Context, deviceID string, after *SessionKey, limit int) (sessions []SessionRecord, more bool, err error) {
	if limit < 1 || limit > MaxPage {
		return nil, false, fmt.Errorf("device sessions: limit %d: %w", limit, ErrInvalid)
	}
	ctx, cancel := bound(ctx)
	defer cancel()
	var at *time.Time
	var id *uuid.UUID
	if after != nil {
		at, id = &after.ConnectedAt, &after.SessionID
	}
	rows, err := s.db.Query(ctx, `
		SELECT session_id, node_id, region, remote_addr, connected_at, disconnected_at
		FROM device_sessions
		WHERE device_id = $1 AND ($2::timestamptz IS NULL OR (connected_at, session_id) < ($2, $3::uuid))
		ORDER BY connected_at DESC, session_id DESC LIMIT $4`, deviceID, at, id, limit+1)
	if err != nil {
		return nil, false, translate(err, "device sessions")
	}
	sessions, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (SessionRecord, error) {
		var r SessionRecord
		err := row.Scan(&r.SessionID, &r.NodeID, &r.Region, &r.RemoteAddr, &r.ConnectedAt, &r.DisconnectedAt)
		return r, err
	})
	if len(sessions) > limit {
		sessions, more = sessions[:limit], true
	}
	return sessions, more, translate(err, "device sessions")
}
