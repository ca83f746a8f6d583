package db

import (
	"context"
	"encoding/json"
	"regexp"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Device is a provisioned device and, when it is connected, its session.
type Device struct {
	ID         string          `json:"id"`
	Labels     json.RawMessage `json:"labels"`
	CreatedAt  time.Time       `json:"created_at"`
	LastSeenAt *time.Time      `json:"last_seen_at,omitempty"`
	Online     bool            `json:"online"`
	Presence   *Presence       `json:"presence,omitempty"`
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
const DeviceIDFormat = `1-128 letters, digits and "._:-", starting with a letter or digit`

// ValidDeviceID checks an id before it reaches the database, whose
// devices_id_format constraint holds the same pattern.
var ValidDeviceID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`).MatchString

// Credential is a device id with its secret hash, for provisioning.
type Credential struct {
	ID         string
	SecretHash []byte
}

// AddDevices provisions devices in one statement. Ids that already exist
// are left as they are and returned, so a bulk import can be re-run.
func (s *Store) AddDevices(ctx context.Context, creds []Credential) (existing []string, err error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	ids := make([]string, len(creds))
	hashes := make([][]byte, len(creds))
	for i, c := range creds {
		ids[i], hashes[i] = c.ID, c.SecretHash
	}
	rows, err := s.db.Query(ctx, `
		WITH input AS (SELECT * FROM unnest($1::text[], $2::bytea[]) AS t(id, secret_hash)),
		added AS (
			INSERT INTO devices (id, secret_hash) SELECT id, secret_hash FROM input
			ON CONFLICT (id) DO NOTHING RETURNING id)
		SELECT id FROM input WHERE id NOT IN (SELECT id FROM added)`, ids, hashes)
	if err != nil {
		return nil, translate(err, "add devices")
	}
	existing, err = pgx.CollectRows(rows, pgx.RowTo[string])
	return existing, translate(err, "add devices")
}

// DeviceSecretHash returns the stored hash of a device's secret.
func (s *Store) DeviceSecretHash(ctx context.Context, id string) ([]byte, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	var hash []byte
	err := s.db.QueryRow(ctx, `SELECT secret_hash FROM devices WHERE id = $1`, id).Scan(&hash)
	return hash, translate(err, "device "+id)
}

// Device returns a device with its live presence, if any.
func (s *Store) Device(ctx context.Context, id string) (Device, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	var d Device
	var p struct {
		NodeID, Region, RemoteAddr *string
		SessionID                  *uuid.UUID
		ConnectedAt                *time.Time
	}
	err := s.db.QueryRow(ctx, `
		SELECT d.id, d.labels, d.created_at, d.last_seen_at,
		       p.node_id, p.region, p.session_id, p.remote_addr, p.connected_at
		FROM devices d LEFT JOIN presence_live p ON p.device_id = d.id
		WHERE d.id = $1`, id).
		Scan(&d.ID, &d.Labels, &d.CreatedAt, &d.LastSeenAt,
			&p.NodeID, &p.Region, &p.SessionID, &p.RemoteAddr, &p.ConnectedAt)
	if err != nil {
		return Device{}, translate(err, "device "+id)
	}
	if p.NodeID != nil {
		d.Online = true
		d.Presence = &Presence{NodeID: *p.NodeID, Region: *p.Region, SessionID: *p.SessionID,
			RemoteAddr: *p.RemoteAddr, ConnectedAt: *p.ConnectedAt}
	}
	return d, nil
}

// DeviceEvent is one telemetry or alert frame from a device.
type DeviceEvent struct {
	DeviceID string
	Name     string
	Data     json.RawMessage
}

// InsertEvents stores events in one statement.
func (s *Store) InsertEvents(ctx context.Context, events []DeviceEvent) error {
	ctx, cancel := bound(ctx)
	defer cancel()
	ids := make([]string, len(events))
	names := make([]string, len(events))
	data := make([][]byte, len(events))
	for i, e := range events {
		ids[i], names[i], data[i] = e.DeviceID, e.Name, e.Data
	}
	_, err := s.db.Exec(ctx, `
		INSERT INTO events (device_id, name, data)
		SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[])`, ids, names, data)
	return translate(err, "insert events")
}
