// Package db is Switchboard's one meeting point: the schema and its
// migrations, the stores that read and write devices, presence, commands and
// events, and the notifier that carries wake-ups between processes.
//
// Tables hold the truth; a NOTIFY only says "look again". Every wake-up this
// package sends is sent after the write it announces has committed, in its
// own statement, so the commit never holds PostgreSQL's notify lock.
package db

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

// Domain errors the stores return; callers never see a pgx error type.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
	ErrInvalid  = errors.New("invalid")
)

// Store reads and writes Switchboard's tables.
type Store struct {
	pool *pgxpool.Pool
}

// NewStore wraps a pool.
func NewStore(pool *pgxpool.Pool) *Store { return &Store{pool: pool} }

// Pool is the store's pool, for health checks and the notifier.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Open makes a pool for url. It does not wait for the database: a process
// starts, reports not-ready and retries while PostgreSQL is away.
func Open(ctx context.Context, url string, maxConns int32) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("database url: %w", err)
	}
	if maxConns > 0 {
		cfg.MaxConns = maxConns
	}
	return pgxpool.NewWithConfig(ctx, cfg)
}

// translate maps storage errors to domain errors, in one place.
func translate(err error, what string) error {
	var pgErr *pgconn.PgError
	switch {
	case err == nil:
		return nil
	case errors.Is(err, pgx.ErrNoRows):
		return fmt.Errorf("%s: %w", what, ErrNotFound)
	case errors.As(err, &pgErr) && pgErr.Code == "23505": // unique_violation
		return fmt.Errorf("%s: %w", what, ErrExists)
	case errors.As(err, &pgErr) && pgErr.Code == "23503": // foreign_key_violation
		return fmt.Errorf("%s: %w", what, ErrNotFound)
	case errors.As(err, &pgErr) && pgErr.Code == "23514": // check_violation
		return fmt.Errorf("%s: %w: %s", what, ErrInvalid, pgErr.ConstraintName)
	}
	return fmt.Errorf("%s: %w", what, err)
}

//go:embed migrations/*.sql
var migrations embed.FS

// Migrate applies the embedded migrations that have not run yet. A session
// advisory lock lets several processes call it at once.
func Migrate(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger) error {
	sqlDB := stdlib.OpenDBFromPool(pool)
	defer sqlDB.Close()
	fsys, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return err
	}
	locker, err := lock.NewPostgresSessionLocker()
	if err != nil {
		return err
	}
	provider, err := goose.NewProvider(goose.DialectPostgres, sqlDB, fsys, goose.WithSessionLocker(locker))
	if err != nil {
		return fmt.Errorf("migrations: %w", err)
	}
	results, err := provider.Up(ctx)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	for _, r := range results {
		log.Info("applied migration", "version", r.Source.Version, "file", r.Source.Path, "took", r.Duration)
	}
	return nil
}
