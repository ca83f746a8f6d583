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
	"net"
	"strings"
	"time"

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

// Store reads and writes Switchboard's tables, through the pool or, inside
// InTx, through one transaction. Every call it makes has a deadline
// (CallTimeout, or the caller's if sooner): a connection that went silent
// surfaces as an error to retry, never as a stuck goroutine.
type Store struct {
	pool *pgxpool.Pool
	db   querier
}

// CallTimeout bounds each store call, waiting for a connection included.
const CallTimeout = 10 * time.Second

// bound gives ctx the store's deadline.
func bound(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, CallTimeout)
}

// querier is what the pool and a transaction have in common.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Begin(ctx context.Context) (pgx.Tx, error)
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// NewStore wraps a pool.
func NewStore(pool *pgxpool.Pool) *Store { return &Store{pool: pool, db: pool} }

// InTx runs fn with a store whose statements share one transaction, which
// commits if fn returns nil. Send no NOTIFY inside: PostgreSQL takes a
// database-wide lock when a notifying transaction commits.
func (s *Store) InTx(ctx context.Context, fn func(tx *Store) error) error {
	ctx, cancel := bound(ctx)
	defer cancel()
	return pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		return fn(&Store{pool: s.pool, db: tx})
	})
}

// ErrorCode is the SQLSTATE code of the error PostgreSQL answered with
// (the statement failed there), or "" when err is not such an answer: the
// database was unreachable, the call timed out, or there was no error.
func ErrorCode(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// IsRefused reports whether the database refused the data itself (a value
// it cannot store, a violated constraint): sending it again cannot succeed.
func IsRefused(err error) bool {
	code := ErrorCode(err)
	return strings.HasPrefix(code, "22") || strings.HasPrefix(code, "23")
}

// Ping checks that the database answers, for readiness checks.
func (s *Store) Ping(ctx context.Context) error {
	ctx, cancel := bound(ctx)
	defer cancel()
	return s.pool.Ping(ctx)
}

// MaxConns is the most connections the store's pool opens.
func (s *Store) MaxConns() int { return int(s.pool.Config().MaxConns) }

// ServerPoolSize is the pool size of an edge or a connection node: enough
// for concurrent requests and the batchers, small next to max_connections.
const ServerPoolSize = 16

// Open makes a pool for url. It does not wait for the database: a process
// starts, reports not-ready and retries while PostgreSQL is away. Options
// adjust the pool's config last (a test counts queries with a tracer).
func Open(ctx context.Context, url string, maxConns int32, options ...func(*pgxpool.Config)) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("database url: %w", err)
	}
	if maxConns > 0 {
		cfg.MaxConns = maxConns
	}
	harden(cfg.ConnConfig)
	for _, o := range options {
		o(cfg)
	}
	return pgxpool.NewWithConfig(ctx, cfg)
}

// Settings of every connection, unless the URL says otherwise. They bound
// what the server does for us; the dialer below bounds the network.
var sessionDefaults = map[string]string{
	"statement_timeout": "10s",
	// A process that died inside a transaction must not hold its locks
	// (presence rows, say) for longer than this.
	"idle_in_transaction_session_timeout": "30s",
}

// Connection deadlines: a dead peer (a failover, a cut network) is noticed
// within seconds, by TCP itself, rather than after the kernel's 15 minutes.
const (
	connectTimeout = 5 * time.Second
	tcpUserTimeout = 10 * time.Second // unacknowledged data for this long kills the connection
	keepAliveIdle  = 5 * time.Second  // then probes every keepAliveIdle, three times
)

// harden gives a connection config its deadlines.
func harden(cfg *pgx.ConnConfig) {
	for k, v := range sessionDefaults {
		if _, set := cfg.RuntimeParams[k]; !set {
			cfg.RuntimeParams[k] = v
		}
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = connectTimeout
	}
	dialer := &net.Dialer{
		Timeout:         cfg.ConnectTimeout,
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: keepAliveIdle, Interval: keepAliveIdle, Count: 3},
		Control:         setUserTimeout(tcpUserTimeout),
	}
	cfg.DialFunc = dialer.DialContext
}

// translate maps storage errors to domain errors, in one place. The cause
// stays wrapped too, for IsRefused.
func translate(err error, what string) error {
	code := ErrorCode(err)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, pgx.ErrNoRows):
		return fmt.Errorf("%s: %w", what, ErrNotFound)
	case code == "23505": // unique_violation
		return fmt.Errorf("%s: %w: %w", what, ErrExists, err)
	case code == "23503": // foreign_key_violation
		return fmt.Errorf("%s: %w: %w", what, ErrNotFound, err)
	case code == "23514" || strings.HasPrefix(code, "22"): // check_violation, data exceptions
		return fmt.Errorf("%s: %w: %w", what, ErrInvalid, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

//go:embed migrations/*.sql
var migrations embed.FS

// Migrate applies the embedded migrations that have not run yet. A session
// advisory lock lets several processes call it at once.
func Migrate(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger) error {
	// A migration may rewrite a large table: no statement timeout.
	cfg := pool.Config()
	cfg.ConnConfig.RuntimeParams["statement_timeout"] = "0"
	cfg.MaxConns = 2
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
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
