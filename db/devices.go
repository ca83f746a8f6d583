package db

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/switchboard-iot/switchboard/internal/secret"
)

// Device is a provisioned device and, when it is connected, its session.
type Device struct {
	ID         string          `json:"id"`
	Labels     json.RawMessage `json:"labels"`
	CreatedAt  time.Time       `json:"created_at"`
	LastSeenAt *time.Time      `json:"last_seen_at,omitempty"`
	DisabledAt *time.Time      `json:"disabled_at,omitempty"` // set: its connections are refused
	Online     bool            `json:"online"`
	Region     string          `json:"region,omitempty"` // its session's, or its last session's when offline; none before its first
	Presence   *Presence       `json:"presence,omitempty"`
	// Latest is the newest event of each name the device sent, in a
	// device read alone (Store.Device), not in listings.
	Latest map[string]LatestEvent `json:"latest,omitempty"`
}

// Presence is one connected session, as operators see it in presence_live.
type Presence struct {
	NodeID      string    `json:"node_id"`
	Region      string    `json:"region"`
	SessionID   uuid.UUID `json:"session_id"`
	RemoteAddr  string    `json:"remote_addr"`
	ConnectedAt time.Time `json:"connected_at"`
}

// DeviceIDFormat says which device ids are valid.
const DeviceIDFormat = `1-128 letters, digits and "._-", starting with a letter or digit (no ":", which HTTP Basic auth cannot carry)`

// ValidDeviceID checks an id before it reaches the database, whose
// devices_id_format constraint holds the same pattern. Ids with ':' made
// before it forbade them are kept, but cannot connect or be changed: they
// can only be deleted.
var ValidDeviceID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`).MatchString

// ValidDeviceIDPart checks a search for part of a device id: what an id
// may hold, 1-128 of them.
var ValidDeviceIDPart = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`).MatchString

// Credential is a device id with its secret hash, for provisioning.
type Credential struct {
	ID         string
	SecretHash []byte
	Labels     map[string]string // nil: none
}

// AddDevices provisions devices in one statement. Ids that already exist
// are left as they are and returned, so a bulk import can be re-run.
func (s *Store) AddDevices(ctx context.Context, creds []Credential) (existing []string, err error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	ids := make([]string, len(creds))
	hashes := make([][]byte, len(creds))
	labels := make([]*string, len(creds)) // NULL: the column's default
	for i, c := range creds {
		ids[i], hashes[i] = c.ID, c.SecretHash
		if len(c.Labels) > 0 {
			doc, err := json.Marshal(c.Labels)
			if err != nil {
				return nil, err
			}
			labels[i] = new(string(doc))
		}
	}
	rows, err := s.db.Query(ctx, `
		WITH input AS (SELECT * FROM unnest($1::text[], $2::bytea[], $3::jsonb[]) AS t(id, secret_hash, labels)),
		added AS (
			INSERT INTO devices (id, secret_hash, labels) SELECT id, secret_hash, coalesce(labels, '{}') FROM input
			ON CONFLICT (id) DO NOTHING RETURNING id)
		SELECT id FROM input WHERE id NOT IN (SELECT id FROM added)`, ids, hashes, labels)
	if err != nil {
		return nil, translate(err, "add devices")
	}
	existing, err = pgx.CollectRows(rows, pgx.RowTo[string])
	return existing, translate(err, "add devices")
}

// DeviceCredentials is what a node checks when a device connects.
type DeviceCredentials struct {
	SecretHash   []byte
	PreviousHash []byte // the secret the last rotation replaced, while its grace lasts; else nil
	Disabled     bool
}

// Accepts reports whether s is the device's secret, or the one its last
// rotation replaced, within its grace.
func (c DeviceCredentials) Accepts(s string) bool {
	return secret.Matches(s, c.SecretHash) || secret.Matches(s, c.PreviousHash)
}

// ManyDeviceCredentials returns what the connections of these devices are
// checked against, in one statement: a node coalesces the look-ups of a
// reconnect storm. Unknown ids are absent from the map.
func (s *Store) ManyDeviceCredentials(ctx context.Context, ids []string) (map[string]DeviceCredentials, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	rows, err := s.db.Query(ctx, `
		SELECT id, secret_hash, CASE WHEN previous_secret_until > now() THEN previous_secret_hash END, disabled_at IS NOT NULL
		FROM devices WHERE id = ANY($1)`, ids)
	if err != nil {
		return nil, translate(err, "device credentials")
	}
	out := make(map[string]DeviceCredentials, len(ids))
	var id string
	var c DeviceCredentials
	_, err = pgx.ForEachRow(rows, []any{&id, &c.SecretHash, &c.PreviousHash, &c.Disabled}, func() error {
		out[id] = c
		return nil
	})
	return out, translate(err, "device credentials")
}

// DefaultRotationGrace is how long a rotated device secret keeps working,
// unless the rotation says otherwise: a day for a fleet to pick up the new
// one.
const DefaultRotationGrace = 24 * time.Hour

// RotateDeviceSecret gives a device a new secret. The one it replaces is
// accepted for grace more (not at all when grace is 0), so that a fleet can
// roll over; a secret replaced by an earlier rotation stops working now.
// A session open with the old secret stays open. Rotating to the secret
// the device has already changes nothing, so a rotation to a secret the
// caller chose can be retried. It returns when the replaced secret stops
// working.
func (s *Store) RotateDeviceSecret(ctx context.Context, id string, secretHash []byte, grace time.Duration) (previousUntil time.Time, err error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	// SET reads the row as it was: the CASEs see the old secret_hash.
	err = s.db.QueryRow(ctx, `
		UPDATE devices SET
			previous_secret_hash = CASE WHEN secret_hash = $2 THEN previous_secret_hash ELSE secret_hash END,
			previous_secret_until = CASE WHEN secret_hash = $2 THEN previous_secret_until ELSE now() + $3::interval END,
			secret_hash = $2
		WHERE id = $1 RETURNING coalesce(previous_secret_until, now())`, id, secretHash, grace).Scan(&previousUntil)
	return previousUntil, translate(err, "device "+id)
}

// DisableDevice makes the device's connections be refused, then closes its
// session, on whichever node it is. Disabling a disabled device sends the
// close again, which repairs a close that failed before.
func (s *Store) DisableDevice(ctx context.Context, id string) error {
	if err := s.updateDevice(ctx, id, `UPDATE devices SET disabled_at = coalesce(disabled_at, now()) WHERE id = $1`); err != nil {
		return err
	}
	if err := s.Notify(ctx, []Notice{{Close: &Closing{DeviceID: id, Reason: DeviceDisabled}}}); err != nil {
		return fmt.Errorf("device %s is disabled, but its session could not be closed; run disable again: %w", id, err)
	}
	return nil
}

// EnableDevice lets a disabled device connect again.
func (s *Store) EnableDevice(ctx context.Context, id string) error {
	return s.updateDevice(ctx, id, `UPDATE devices SET disabled_at = NULL WHERE id = $1`)
}

func (s *Store) updateDevice(ctx context.Context, id, sql string) error {
	ctx, cancel := bound(ctx)
	defer cancel()
	tag, err := s.db.Exec(ctx, sql, id)
	if err == nil && tag.RowsAffected() == 0 {
		err = pgx.ErrNoRows
	}
	return translate(err, "device "+id)
}

// DeletedDevice counts what went with a device.
type DeletedDevice struct {
	Commands int64 `json:"commands"`
	Events   int64 `json:"events"`
	Sessions int64 `json:"sessions"` // its presence history
}

// DeleteDevice deletes a device with everything stored about it: its
// presence row, its commands (in the order a disconnect locks them), its
// events and latest values, and its presence history; then it closes its
// session, on whichever node it is. Commands are found by a scan: no
// index covers a device's finished commands. Events are at most the
// per-device cap that retention keeps (10,000 by default).
func (s *Store) DeleteDevice(ctx context.Context, id string) (gone DeletedDevice, err error) {
	err = s.InTx(ctx, func(tx *Store) error {
		if _, err := tx.db.Exec(ctx, `DELETE FROM presence WHERE device_id = $1`, id); err != nil {
			return err
		}
		tag, err := tx.db.Exec(ctx, `DELETE FROM devices WHERE id = $1`, id)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return pgx.ErrNoRows
		}
		if _, err := tx.db.Exec(ctx, `DELETE FROM event_latest WHERE device_id = $1`, id); err != nil {
			return err
		}
		if tag, err = tx.db.Exec(ctx, `DELETE FROM commands WHERE device_id = $1`, id); err != nil {
			return err
		}
		gone.Commands = tag.RowsAffected()
		if tag, err = tx.db.Exec(ctx, `DELETE FROM events WHERE device_id = $1`, id); err != nil {
			return err
		}
		gone.Events = tag.RowsAffected()
		tag, err = tx.db.Exec(ctx, `DELETE FROM device_sessions WHERE device_id = $1`, id)
		gone.Sessions = tag.RowsAffected()
		return err
	})
	closing := []Notice{{Close: &Closing{DeviceID: id, Reason: DeviceDeleted}}}
	if err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			// Deleted before: a retry after a close that failed closes
			// the session now (best effort: it also ends at its reconnect).
			_ = s.Notify(ctx, closing)
		}
		return DeletedDevice{}, translate(err, "device "+id)
	}
	if err := s.Notify(ctx, closing); err != nil {
		return gone, fmt.Errorf("device %s is deleted, but its session could not be closed (it ends at its next reconnect): %w", id, err)
	}
	return gone, nil
}

// DeviceExists says whether a device has the id: one index probe, for
// routes that only need to know (not its presence or latest events).
func (s *Store) DeviceExists(ctx context.Context, id string) (bool, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	var exists bool
	err := s.db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM devices WHERE id = $1)`, id).Scan(&exists)
	return exists, translate(err, "device "+id)
}

// Device returns a device with its live presence, if any, and its latest
// event of each name.
func (s *Store) Device(ctx context.Context, id string) (Device, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	rows, err := s.db.Query(ctx, `SELECT `+deviceColumns+` FROM `+filteredDevices+` WHERE d.id = $1`, id)
	if err != nil {
		return Device{}, translate(err, "device "+id)
	}
	d, err := pgx.CollectExactlyOneRow(rows, scanDevice)
	if err != nil {
		return Device{}, translate(err, "device "+id)
	}
	d.Latest, err = s.LatestEvents(ctx, id)
	return d, err
}

// DeviceEvent is one telemetry or alert frame from a device.
type DeviceEvent struct {
	DeviceID string
	Name     string
	Data     json.RawMessage
}
