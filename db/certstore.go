package db

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/switchboard-iot/switchboard/internal/backoff"
)

// CertStorage is certmagic's storage in PostgreSQL: every process that
// shares the database shares certificates, keys, the ACME account and the
// challenge tokens. Its locks are session advisory locks, each held on a
// connection of its own for as long as the lock: PostgreSQL releases a
// lock when that connection ends, so a holder that dies cannot wedge the
// others.
type CertStorage struct {
	pool *pgxpool.Pool

	mu    sync.Mutex               // guards locks
	locks map[string]*pgxpool.Conn // held locks, by name
}

var _ certmagic.Storage = (*CertStorage)(nil)

// NewCertStorage keeps certmagic's data in the certmagic_data table.
func NewCertStorage(pool *pgxpool.Pool) *CertStorage {
	return &CertStorage{pool: pool, locks: make(map[string]*pgxpool.Conn)}
}

// lockSpace is the first key of Switchboard's certificate advisory locks,
// so they cannot collide with anybody else's (migrations use goose's own).
const lockSpace = 0x53426364 // "SBcd"

// Lock blocks until it holds the named lock or ctx ends.
func (s *CertStorage) Lock(ctx context.Context, name string) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("lock %s: %w", name, err)
	}
	// Poll rather than block in PostgreSQL: a waiting pg_advisory_lock
	// would run into statement_timeout, and polling honours ctx simply.
	wait := backoff.Backoff{Min: 50 * time.Millisecond, Max: time.Second}
	for {
		var got bool
		err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1, hashtext($2))`, lockSpace, name).Scan(&got)
		if err == nil && got {
			s.mu.Lock()
			s.locks[name] = conn
			s.mu.Unlock()
			return nil
		}
		if err != nil {
			conn.Release()
			return fmt.Errorf("lock %s: %w", name, err)
		}
		if !wait.Wait(ctx) {
			conn.Release()
			return fmt.Errorf("lock %s: %w", name, ctx.Err())
		}
	}
}

// Unlock releases a lock this process holds.
func (s *CertStorage) Unlock(ctx context.Context, name string) error {
	s.mu.Lock()
	conn := s.locks[name]
	delete(s.locks, name)
	s.mu.Unlock()
	if conn == nil {
		return fmt.Errorf("unlock %s: not locked here", name)
	}
	defer conn.Release()
	ctx, cancel := bound(ctx)
	defer cancel()
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_unlock($1, hashtext($2))`, lockSpace, name); err != nil {
		// The lock goes with its connection: close it rather than return
		// it to the pool still holding the lock.
		_ = conn.Conn().Close(ctx)
		return fmt.Errorf("unlock %s: %w", name, err)
	}
	return nil
}

// Store puts value at key.
func (s *CertStorage) Store(ctx context.Context, key string, value []byte) error {
	ctx, cancel := bound(ctx)
	defer cancel()
	_, err := s.pool.Exec(ctx, `
		INSERT INTO certmagic_data (key, value) VALUES ($1, $2)
		ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, modified = now()`, key, value)
	return translate(err, "store "+key)
}

// Load returns the value at key, or fs.ErrNotExist.
func (s *CertStorage) Load(ctx context.Context, key string) ([]byte, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	var value []byte
	err := s.pool.QueryRow(ctx, `SELECT value FROM certmagic_data WHERE key = $1`, key).Scan(&value)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("load %s: %w", key, fs.ErrNotExist)
	}
	return value, translate(err, "load "+key)
}

// Delete deletes key, and every key under it when it is a directory.
func (s *CertStorage) Delete(ctx context.Context, key string) error {
	ctx, cancel := bound(ctx)
	defer cancel()
	_, err := s.pool.Exec(ctx, `DELETE FROM certmagic_data WHERE key = $1 OR starts_with(key, $2)`, key, dir(key))
	return translate(err, "delete "+key)
}

// Exists reports whether key is a file or a directory.
func (s *CertStorage) Exists(ctx context.Context, key string) bool {
	ctx, cancel := bound(ctx)
	defer cancel()
	var exists bool
	err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT FROM certmagic_data WHERE key = $1 OR starts_with(key, $2))`,
		key, dir(key)).Scan(&exists)
	return err == nil && exists
}

// List returns the keys under prefix: its direct children (files and
// directories), or with recursive every key and directory below it.
func (s *CertStorage) List(ctx context.Context, prefix string, recursive bool) ([]string, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	rows, err := s.pool.Query(ctx, `SELECT key FROM certmagic_data WHERE starts_with(key, $1)`, dir(prefix))
	if err != nil {
		return nil, translate(err, "list "+prefix)
	}
	keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, translate(err, "list "+prefix)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("list %s: %w", prefix, fs.ErrNotExist)
	}
	seen := make(map[string]bool)
	for _, key := range keys {
		rest := strings.Split(strings.TrimPrefix(key, dir(prefix)), "/")
		if !recursive {
			rest = rest[:1]
		}
		for i := range rest {
			seen[path.Join(prefix, path.Join(rest[:i+1]...))] = true
		}
	}
	out := make([]string, 0, len(seen))
	for key := range seen {
		out = append(out, key)
	}
	slices.Sort(out)
	return out, nil
}

// Stat describes key: a file, a directory (a prefix of keys), or
// fs.ErrNotExist.
func (s *CertStorage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	info := certmagic.KeyInfo{Key: key}
	var modified *time.Time
	var size *int64
	var children int64
	err := s.pool.QueryRow(ctx, `
		SELECT (SELECT modified FROM certmagic_data WHERE key = $1),
		       (SELECT length(value) FROM certmagic_data WHERE key = $1),
		       (SELECT count(*) FROM certmagic_data WHERE starts_with(key, $2))`, key, dir(key)).
		Scan(&modified, &size, &children)
	switch {
	case err != nil:
		return info, translate(err, "stat "+key)
	case modified != nil:
		info.Modified, info.Size, info.IsTerminal = *modified, *size, true
	case children > 0:
		info.IsTerminal = false
	default:
		return info, fmt.Errorf("stat %s: %w", key, fs.ErrNotExist)
	}
	return info, nil
}

// dir is key as a directory prefix: "" for the root, else "key/".
func dir(key string) string {
	key = strings.Trim(key, "/")
	if key == "" {
		return ""
	}
	return key + "/"
}
