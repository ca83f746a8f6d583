package db

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/switchboard-iot/switchboard/internal/command"
)

// ConsoleSession is a signed-in console (console_sessions) with the API key
// it acts as, read afresh with the session so that a revoked key's
// sessions stop working.
type ConsoleSession struct {
	Key       APIKey
	CSRF      string
	ExpiresAt time.Time
}

// CreateConsoleSession stores a session by the digest of its cookie. It
// also deletes a few expired sessions: sign-ins are rare, so that keeps
// the table small without a sweeper of its own.
func (s *Store) CreateConsoleSession(ctx context.Context, idHash []byte, apiKeyID int64, csrf string, ttl time.Duration) error {
	ctx, cancel := bound(ctx)
	defer cancel()
	var b pgx.Batch
	b.Queue(`DELETE FROM console_sessions WHERE id_hash IN
		(SELECT id_hash FROM console_sessions WHERE expires_at < now() LIMIT 100)`)
	b.Queue(`INSERT INTO console_sessions (id_hash, api_key_id, csrf, expires_at) VALUES ($1, $2, $3, now() + $4::interval)`,
		idHash, apiKeyID, csrf, ttl)
	return translate(s.db.SendBatch(ctx, &b).Close(), "create console session")
}

// ConsoleSessionByHash returns the unexpired session with this cookie
// digest, with its key (revoked and expired keys included: the caller
// refuses them); ErrNotFound when there is none.
func (s *Store) ConsoleSessionByHash(ctx context.Context, idHash []byte) (ConsoleSession, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	var cs ConsoleSession
	var scopes []string
	err := s.db.QueryRow(ctx, `
		SELECT k.id, k.name, k.scopes, k.created_at, k.expires_at, k.revoked_at, s.csrf, s.expires_at
		FROM console_sessions s JOIN api_keys k ON k.id = s.api_key_id
		WHERE s.id_hash = $1 AND s.expires_at > now()`, idHash).
		Scan(&cs.Key.ID, &cs.Key.Name, &scopes, &cs.Key.CreatedAt, &cs.Key.ExpiresAt, &cs.Key.RevokedAt, &cs.CSRF, &cs.ExpiresAt)
	for _, sc := range scopes {
		cs.Key.Scopes = append(cs.Key.Scopes, Scope(sc))
	}
	return cs, translate(err, "console session")
}

// DeleteConsoleSession signs a session out, then tells every edge to drop
// its cached keys and sessions (the sb_keys channel, as for a revoked key),
// so that the cookie stops working on the API at once everywhere.
func (s *Store) DeleteConsoleSession(ctx context.Context, idHash []byte) error {
	ctx, cancel := bound(ctx)
	defer cancel()
	if _, err := s.db.Exec(ctx, `DELETE FROM console_sessions WHERE id_hash = $1`, idHash); err != nil {
		return translate(err, "delete console session")
	}
	_, err := s.db.Exec(ctx, `SELECT pg_notify($1, 'session')`, KeysChannel)
	return translate(err, "notify sign-out")
}

// CreateConsoleLink stores a one-time sign-in link by its token's digest.
func (s *Store) CreateConsoleLink(ctx context.Context, tokenHash []byte, apiKeyID int64, ttl time.Duration) error {
	ctx, cancel := bound(ctx)
	defer cancel()
	_, err := s.db.Exec(ctx, `INSERT INTO console_links (token_hash, api_key_id, expires_at) VALUES ($1, $2, now() + $3::interval)`,
		tokenHash, apiKeyID, ttl)
	return translate(err, "create console link")
}

// ConsumeConsoleLink uses up a sign-in link in one statement, so that two
// requests racing with the same link cannot both sign in, and returns its
// API key's id; ErrNotFound for a used, unknown or expired link.
func (s *Store) ConsumeConsoleLink(ctx context.Context, tokenHash []byte) (apiKeyID int64, err error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	var expires time.Time
	err = s.db.QueryRow(ctx, `DELETE FROM console_links WHERE token_hash = $1 RETURNING api_key_id, expires_at`, tokenHash).
		Scan(&apiKeyID, &expires)
	if err == nil && !time.Now().Before(expires) {
		return 0, fmt.Errorf("console link expired: %w", ErrNotFound)
	}
	return apiKeyID, translate(err, "console link")
}

// APIKeyByID returns a key, revoked and expired ones included.
func (s *Store) APIKeyByID(ctx context.Context, id int64) (APIKey, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	k, err := scanAPIKey(s.db.QueryRow(ctx, `SELECT `+apiKeyColumns+` FROM api_keys WHERE id = $1`, id))
	return k, translate(err, "api key")
}

// Overview is the fleet at a glance, for the console's first page.
type Overview struct {
	Devices     int            `json:"devices"`
	Online      int            `json:"online"`
	Offline     int            `json:"offline"`
	Regions     []RegionOnline `json:"regions"`
	Nodes       []NodeLoad     `json:"nodes"`
	JobsRunning int            `json:"jobs_running"`
}

// RegionOnline counts the devices online in a region.
type RegionOnline struct {
	Region string `json:"region"`
	Online int    `json:"online"`
}

// NodeLoad is a connection node's lease and its sessions.
type NodeLoad struct {
	ID             string    `json:"id"`
	Region         string    `json:"region"`
	Sessions       int       `json:"sessions"`
	LeaseExpiresAt time.Time `json:"lease_expires_at"`
	LeaseExpiresIn float64   `json:"lease_expires_in"` // seconds, by the database's clock; negative: lapsed
}

// ConsoleOverview counts devices online and offline, by region and node,
// and the running jobs, in one round trip. Each count reads an index or
// presence (one row per connected device); the device total reads the
// primary key.
func (s *Store) ConsoleOverview(ctx context.Context) (Overview, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	var o Overview
	var b pgx.Batch
	b.Queue(`SELECT (SELECT count(*) FROM devices), (SELECT count(*) FROM presence_live),
		(SELECT count(*) FROM jobs WHERE status = 'running')`).
		QueryRow(func(row pgx.Row) error { return row.Scan(&o.Devices, &o.Online, &o.JobsRunning) })
	b.Queue(`SELECT region, count(*) FROM presence_live GROUP BY region ORDER BY region`).
		Query(func(rows pgx.Rows) error {
			var err error
			o.Regions, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (RegionOnline, error) {
				var r RegionOnline
				return r, row.Scan(&r.Region, &r.Online)
			})
			return err
		})
	b.Queue(`SELECT n.id, n.region, n.lease_expires_at, extract(epoch FROM n.lease_expires_at - now())::float8,
			(SELECT count(*) FROM presence p WHERE p.node_id = n.id)
		FROM nodes n ORDER BY n.region, n.id LIMIT 500`).
		Query(func(rows pgx.Rows) error {
			var err error
			o.Nodes, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (NodeLoad, error) {
				var n NodeLoad
				return n, row.Scan(&n.ID, &n.Region, &n.LeaseExpiresAt, &n.LeaseExpiresIn, &n.Sessions)
			})
			return err
		})
	if err := s.db.SendBatch(ctx, &b).Close(); err != nil {
		return Overview{}, translate(err, "console overview")
	}
	o.Offline = max(o.Devices-o.Online, 0)
	return o, nil
}

// StatBucket is the commands that completed in one interval: how many,
// and their round trip (created to completed), mean and 95th percentile.
type StatBucket struct {
	Start     time.Time `json:"start"`
	Count     int       `json:"count"`
	PerSecond float64   `json:"per_second"`
	AvgMillis float64   `json:"avg_ms"`
	P95Millis float64   `json:"p95_ms"`
}

// MaxStatCommands bounds the rows one CommandStats reads: at a high rate
// the window holds more, and the newest this many stand for it.
const MaxStatCommands = 200_000

// CommandStats aggregates the commands completed in [since, since +
// n*bucket) by bucket, oldest first, with empty buckets filled in. It reads
// the commands_completed_at index, at most MaxStatCommands rows.
func (s *Store) CommandStats(ctx context.Context, since time.Time, bucket time.Duration, n int) ([]StatBucket, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	secs := bucket.Seconds()
	rows, err := s.db.Query(ctx, `
		WITH c AS (
			SELECT completed_at, extract(epoch FROM completed_at - created_at)::float8 * 1000 AS ms
			FROM commands
			WHERE completed_at >= $1::timestamptz AND completed_at < $1::timestamptz + make_interval(secs => $2::float8 * $3::int)
			ORDER BY completed_at DESC LIMIT $4)
		SELECT floor(extract(epoch FROM completed_at - $1::timestamptz)::float8 / $2::float8)::int AS i, count(*)::int,
			avg(ms)::float8, percentile_cont(0.95) WITHIN GROUP (ORDER BY ms)::float8
		FROM c GROUP BY i ORDER BY i`, since, secs, n, MaxStatCommands)
	if err != nil {
		return nil, translate(err, "command stats")
	}
	out := make([]StatBucket, n)
	for i := range out {
		out[i].Start = since.Add(time.Duration(i) * bucket)
	}
	var i, count int
	var avg, p95 float64
	_, err = pgx.ForEachRow(rows, []any{&i, &count, &avg, &p95}, func() error {
		if i >= 0 && i < n {
			out[i].Count, out[i].PerSecond, out[i].AvgMillis, out[i].P95Millis = count, float64(count)/secs, avg, p95
		}
		return nil
	})
	return out, translate(err, "command stats")
}

// DeviceCommands returns a device's newest commands, newest first, read
// through commands_device_created.
func (s *Store) DeviceCommands(ctx context.Context, deviceID string, limit int) ([]command.Command, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	cmds, err := collectCommands(s.db.Query(ctx, `SELECT `+commandColumns+` FROM commands c
		WHERE c.device_id = $1 ORDER BY c.created_at DESC LIMIT $2`, deviceID, limit))
	return cmds, translate(err, "device commands")
}

// secretFingerprint is SQL naming a device's current secret without
// showing it or its digest: 8 bytes of the SHA-256 of secret_hash, in hex.
const secretFingerprint = `encode(substring(sha256(secret_hash) from 1 for 8), 'hex')`

// DeviceSecretFingerprint names a device's current secret for the
// console's rotate form, which RotateDeviceSecretFrom checks.
func (s *Store) DeviceSecretFingerprint(ctx context.Context, id string) (string, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	var fp string
	err := s.db.QueryRow(ctx, `SELECT `+secretFingerprint+` FROM devices WHERE id = $1`, id).Scan(&fp)
	return fp, translate(err, "device "+id)
}

// ErrSecretChanged is a rotation from a secret the device no longer has.
var ErrSecretChanged = errors.New("the device's secret changed since the form was loaded")

// RotateDeviceSecretFrom is RotateDeviceSecret to a new secret, made only
// while the device's secret is still the one fingerprint names
// (DeviceSecretFingerprint); else ErrSecretChanged, and nothing changes.
// A rotate form sent twice (a double click, a reload) thus rotates once:
// a second rotation would stop at once the secret the fleet still uses.
func (s *Store) RotateDeviceSecretFrom(ctx context.Context, id, fingerprint string, secretHash []byte, grace time.Duration) (previousUntil time.Time, err error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	// The row lock makes a concurrent second rotation re-check the
	// fingerprint against the first one's new secret, and fail it.
	err = s.db.QueryRow(ctx, `
		UPDATE devices SET previous_secret_hash = secret_hash, previous_secret_until = now() + $4::interval, secret_hash = $3
		WHERE id = $1 AND `+secretFingerprint+` = $2 AND secret_hash <> $3
		RETURNING previous_secret_until`, id, fingerprint, secretHash, grace).Scan(&previousUntil)
	if errors.Is(err, pgx.ErrNoRows) {
		exists, err := s.DeviceExists(ctx, id)
		switch {
		case err != nil:
			return time.Time{}, err
		case exists:
			return time.Time{}, fmt.Errorf("device %s: %w", id, ErrSecretChanged)
		}
	}
	return previousUntil, translate(err, "device "+id)
}
