package db

import (
	"context"
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
	err = s.db.QueryRow(ctx, `
		INSERT INTO nodes (id, region, addr, lease_expires_at)
		VALUES ($1, $2, $3, now() + $4::interval)
		ON CONFLICT (id) DO UPDATE
			SET heartbeat_at = now(), lease_expires_at = EXCLUDED.lease_expires_at,
			    region = EXCLUDED.region, addr = EXCLUDED.addr
		RETURNING xmax = 0`, node.ID, node.Region, node.Addr, ttl).Scan(&created)
	return created, translate(err, "renew lease of "+node.ID)
}

// ClearNode deletes a node's presence rows, keeping its lease: a node that
// starts holds no connections, whatever an earlier process left behind.
func (s *Store) ClearNode(ctx context.Context, nodeID string) error {
	_, err := s.db.Exec(ctx, `DELETE FROM presence WHERE node_id = $1`, nodeID)
	return translate(err, "clear node "+nodeID)
}

// RemoveNode deletes a node's presence rows and its lease, in one
// transaction: a clean shutdown leaves nothing behind.
func (s *Store) RemoveNode(ctx context.Context, nodeID string) error {
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM presence WHERE node_id = $1`, nodeID); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `DELETE FROM nodes WHERE id = $1`, nodeID)
		return err
	})
	return translate(err, "remove node "+nodeID)
}

// ReapNodes deletes the leases, and presence rows, of nodes whose lease
// lapsed more than grace ago. presence_live already ignores them; this only
// keeps the tables small.
func (s *Store) ReapNodes(ctx context.Context, grace time.Duration) (int64, error) {
	var n int64
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `DELETE FROM nodes WHERE lease_expires_at < now() - $1::interval RETURNING id`, grace)
		if err != nil {
			return err
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil || len(ids) == 0 {
			return err
		}
		n = int64(len(ids))
		_, err = tx.Exec(ctx, `DELETE FROM presence WHERE node_id = ANY($1)`, ids)
		return err
	})
	return n, translate(err, "reap nodes")
}

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

// Connect writes presence rows for sessions that opened on node. Session
// ids are time-ordered (UUIDv7) and the newer session of a device wins,
// whichever write lands last. It returns the sessions on other nodes that
// these replaced, which their nodes must close, and those of the input that
// a newer session had already replaced, which this node must close. A
// device must appear only once.
func (s *Store) Connect(ctx context.Context, node Node, sessions []Session) (displaced []Displaced, stale []uuid.UUID, err error) {
	devices, sids, addrs := sessionColumns(sessions)
	// All parts of the statement see the same snapshot, so old holds the rows
	// as they were before the upsert replaced them. Rows are written in
	// device order, so two nodes' batches cannot deadlock on each other.
	rows, err := s.db.Query(ctx, `
		WITH input AS (
			SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[]) AS t(device_id, session_id, remote_addr)),
		old AS (
			SELECT p.device_id, p.node_id, p.session_id FROM presence p
			JOIN input USING (device_id) FOR UPDATE OF p),
		upsert AS (
			INSERT INTO presence (device_id, node_id, region, session_id, remote_addr)
			SELECT device_id, $4, $5, session_id, remote_addr FROM input ORDER BY device_id
			ON CONFLICT (device_id) DO UPDATE
				SET node_id = EXCLUDED.node_id, region = EXCLUDED.region, session_id = EXCLUDED.session_id,
				    remote_addr = EXCLUDED.remote_addr, connected_at = now()
				WHERE presence.session_id <= EXCLUDED.session_id
			RETURNING device_id)
		SELECT old.device_id, old.node_id, old.session_id, false
		FROM old JOIN upsert USING (device_id) WHERE old.node_id <> $4
		UNION ALL
		SELECT device_id, $4, session_id, true FROM input WHERE device_id NOT IN (SELECT device_id FROM upsert)`,
		devices, sids, addrs, node.ID, node.Region)
	if err != nil {
		return nil, nil, translate(err, "connect")
	}
	var d Displaced
	var isStale bool
	_, err = pgx.ForEachRow(rows, []any{&d.DeviceID, &d.NodeID, &d.SessionID, &isStale}, func() error {
		if isStale {
			stale = append(stale, d.SessionID)
		} else {
			displaced = append(displaced, d)
		}
		return nil
	})
	return displaced, stale, translate(err, "connect")
}

// Reassert writes presence rows for sessions a node still holds after its
// lease was reaped. It does not displace anyone: a device that has since
// connected elsewhere keeps its newer row.
func (s *Store) Reassert(ctx context.Context, node Node, sessions []Session) error {
	devices, sids, addrs := sessionColumns(sessions)
	_, err := s.db.Exec(ctx, `
		INSERT INTO presence (device_id, node_id, region, session_id, remote_addr)
		SELECT device_id, $4, $5, session_id, remote_addr
		FROM unnest($1::text[], $2::uuid[], $3::text[]) AS t(device_id, session_id, remote_addr)
		ON CONFLICT (device_id) DO NOTHING`, devices, sids, addrs, node.ID, node.Region)
	return translate(err, "reassert presence")
}

// DevicesElsewhere returns which of these devices' presence rows name a
// node other than nodeID.
func (s *Store) DevicesElsewhere(ctx context.Context, nodeID string, devices []string) ([]string, error) {
	rows, err := s.db.Query(ctx, `SELECT device_id FROM presence WHERE device_id = ANY($1) AND node_id <> $2`, devices, nodeID)
	if err != nil {
		return nil, translate(err, "devices elsewhere")
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	return ids, translate(err, "devices elsewhere")
}

// Disconnect deletes the presence rows of sessions that closed, unless a
// newer session already replaced them, and records when each device was
// last seen.
func (s *Store) Disconnect(ctx context.Context, sessions []Session) error {
	devices, sids, _ := sessionColumns(sessions)
	_, err := s.db.Exec(ctx, `
		WITH gone AS (
			DELETE FROM presence p USING unnest($1::text[], $2::uuid[]) AS t(device_id, session_id)
			WHERE p.device_id = t.device_id AND p.session_id = t.session_id)
		UPDATE devices SET last_seen_at = now() WHERE id = ANY($1)`, devices, sids)
	return translate(err, "disconnect")
}
