package db

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// MaxStateBytes bounds a device's desired and its reported document, each,
// as PostgreSQL writes it out (jsonb's text: `{"a": 1}`).
const MaxStateBytes = 32 << 10

// Errors of PatchDesired.
var (
	// ErrVersionMismatch: the desired document is no longer at the version
	// the client named (If-Match).
	ErrVersionMismatch = errors.New("desired state version mismatch")
	// ErrStateTooLarge: the patch would leave the document over MaxStateBytes.
	ErrStateTooLarge = errors.New("state document too large")
)

// DeviceState is a device's desired and reported documents, and the delta:
// the desired keys whose values differ from the reported ones. A device
// that never had state has empty documents at version 0.
type DeviceState struct {
	Desired           json.RawMessage `json:"desired"`
	Reported          json.RawMessage `json:"reported"`
	Delta             json.RawMessage `json:"delta"`
	DesiredVersion    int64           `json:"desired_version"`
	ReportedVersion   int64           `json:"reported_version"`
	DesiredUpdatedAt  *time.Time      `json:"desired_updated_at"`
	ReportedUpdatedAt *time.Time      `json:"reported_updated_at"`
}

// stateColumns reads a device's state from devices d LEFT JOIN device_state s.
const stateColumns = `coalesce(s.desired, '{}'), coalesce(s.reported, '{}'),
	sb_state_delta(coalesce(s.desired, '{}'), coalesce(s.reported, '{}')),
	coalesce(s.desired_version, 0), coalesce(s.reported_version, 0),
	s.desired_updated_at, s.reported_updated_at`

func scanState(row pgx.Row) (DeviceState, error) {
	var st DeviceState
	err := row.Scan(&st.Desired, &st.Reported, &st.Delta, &st.DesiredVersion, &st.ReportedVersion,
		&st.DesiredUpdatedAt, &st.ReportedUpdatedAt)
	return st, err
}

// State reads a device's state; ErrNotFound when there is no such device.
func (s *Store) State(ctx context.Context, deviceID string) (DeviceState, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	st, err := scanState(s.db.QueryRow(ctx, `SELECT `+stateColumns+`
		FROM devices d LEFT JOIN device_state s ON s.device_id = d.id WHERE d.id = $1`, deviceID))
	return st, translate(err, "device "+deviceID)
}

// PatchDesired applies a JSON merge patch (RFC 7396; patch is a JSON
// object) to a device's desired document, if its version is still ifMatch
// (nil: whatever it is), and returns the new state. The row is locked
// while it is checked and changed, so of two patches naming the same
// version one fails with ErrVersionMismatch. A patch that changes nothing
// keeps the version. The device's node is told after the commit (a "state"
// wake-up), and reads the document again; a lost wake-up is repaired by
// its periodic rescan.
func (s *Store) PatchDesired(ctx context.Context, deviceID string, patch json.RawMessage, ifMatch *int64) (DeviceState, error) {
	var st DeviceState
	var changed bool
	err := s.InTx(ctx, func(tx *Store) error {
		// The row exists before it is locked: a device's first patch
		// inserts it, and two first patches meet on its key.
		_, err := tx.db.Exec(ctx, `INSERT INTO device_state (device_id) SELECT id FROM devices WHERE id = $1
			ON CONFLICT (device_id) DO NOTHING`, deviceID)
		if err != nil {
			return err
		}
		var version int64
		var size int
		var doc json.RawMessage
		err = tx.db.QueryRow(ctx, `SELECT desired_version, m, octet_length(m::text), m IS DISTINCT FROM desired
			FROM (SELECT desired_version, desired, sb_merge_patch(desired, $2::jsonb) AS m
			      FROM device_state WHERE device_id = $1 FOR UPDATE) t`, deviceID, patch).Scan(&version, &doc, &size, &changed)
		if err != nil {
			return err
		}
		switch {
		case ifMatch != nil && *ifMatch != version:
			return fmt.Errorf("%w: the desired state is at version %d", ErrVersionMismatch, version)
		case size > MaxStateBytes:
			return fmt.Errorf("%w: the desired state would be %d bytes", ErrStateTooLarge, size)
		}
		if changed {
			if _, err := tx.db.Exec(ctx, `UPDATE device_state SET desired = $2, desired_version = desired_version + 1,
				desired_updated_at = now() WHERE device_id = $1`, deviceID, doc); err != nil {
				return err
			}
		}
		st, err = scanState(tx.db.QueryRow(ctx, `SELECT `+stateColumns+`
			FROM devices d JOIN device_state s ON s.device_id = d.id WHERE d.id = $1`, deviceID))
		return err
	})
	if errors.Is(err, ErrVersionMismatch) || errors.Is(err, ErrStateTooLarge) {
		return DeviceState{}, err
	}
	if err != nil {
		return DeviceState{}, translate(err, "device "+deviceID)
	}
	if changed {
		if err := s.Notify(ctx, []Notice{{State: deviceID}}); err != nil {
			// The change is stored: the node's rescan finds it.
			return st, nil
		}
	}
	return st, nil
}

// Desired is a device's desired document at a version.
type Desired struct {
	DeviceID string
	Desired  json.RawMessage
	Version  int64
}

// StateCursor names a device and the desired version its session has.
type StateCursor struct {
	DeviceID string
	Version  int64
}

// NewerDesired reads the desired documents of these devices that are newer
// than the version each names.
func (s *Store) NewerDesired(ctx context.Context, cursors []StateCursor) ([]Desired, error) {
	ids := make([]string, len(cursors))
	versions := make([]int64, len(cursors))
	for i, c := range cursors {
		ids[i], versions[i] = c.DeviceID, c.Version
	}
	ctx, cancel := bound(ctx)
	defer cancel()
	rows, err := s.db.Query(ctx, `SELECT s.device_id, s.desired, s.desired_version
		FROM unnest($1::text[], $2::bigint[]) AS c(device_id, version)
		JOIN device_state s ON s.device_id = c.device_id AND s.desired_version > c.version`, ids, versions)
	if err != nil {
		return nil, translate(err, "read desired state")
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Desired, error) {
		var d Desired
		err := row.Scan(&d.DeviceID, &d.Desired, &d.Version)
		return d, err
	})
	return out, translate(err, "read desired state")
}

// Report is a merge patch a device sent to its reported document.
type Report struct {
	DeviceID string
	Patch    json.RawMessage // a JSON object
}

// StoreReports applies reports to their devices' reported documents, in
// order, each bumping the version when it changes the document; changed
// names the devices whose document changed (once per report that did). A report that
// would leave the document over MaxStateBytes is not applied: its device
// is named in tooLarge. A deleted device's reports go with it.
func (s *Store) StoreReports(ctx context.Context, reports []Report) (changed, tooLarge []string, err error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	// One batch: its statements run in order, in one implicit transaction.
	var b pgx.Batch
	for _, r := range reports {
		b.Queue(`WITH up AS (
				INSERT INTO device_state AS s (device_id, reported, reported_version, reported_updated_at)
				SELECT id, sb_merge_patch('{}', $2::jsonb), 1, now() FROM devices
				WHERE id = $1 AND octet_length(sb_merge_patch('{}', $2::jsonb)::text) <= $3
				ON CONFLICT (device_id) DO UPDATE SET reported = sb_merge_patch(s.reported, $2::jsonb),
					reported_version = s.reported_version + 1, reported_updated_at = now()
				WHERE sb_merge_patch(s.reported, $2::jsonb) IS DISTINCT FROM s.reported
				  AND octet_length(sb_merge_patch(s.reported, $2::jsonb)::text) <= $3
				RETURNING 1)
			SELECT EXISTS (SELECT FROM up), NOT EXISTS (SELECT FROM up) AND octet_length(sb_merge_patch(coalesce(
				(SELECT reported FROM device_state WHERE device_id = $1), '{}'), $2::jsonb)::text) > $3`,
			r.DeviceID, r.Patch, MaxStateBytes)
	}
	res := s.db.SendBatch(ctx, &b)
	for _, r := range reports {
		var up, big bool
		if err := res.QueryRow().Scan(&up, &big); err != nil {
			res.Close()
			return nil, nil, translate(err, "store reports")
		}
		if up {
			changed = append(changed, r.DeviceID)
		}
		if big {
			tooLarge = append(tooLarge, r.DeviceID)
		}
	}
	return changed, tooLarge, translate(res.Close(), "store reports")
}
