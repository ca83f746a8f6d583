// Package dbtest gives tests a real PostgreSQL: the cluster at
// TEST_DATABASE_URL when it is set (scripts/test starts one for all
// packages), or a private cluster this test binary starts and stops.
//
// Each test gets a database of its own, copied from a migrated template.
// LISTEN/NOTIFY is scoped to a database, so parallel tests cannot hear each
// other's wake-ups.
package dbtest

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/pgcluster"
)

var (
	// The cluster starts on the first test that asks for a database, so a
	// test binary that needs none (a fuzz worker, a run of pure tests)
	// starts nothing.
	inMain      bool // Main runs the tests: it stops the cluster after them
	clusterOnce sync.Once
	adminURL    string // the cluster's postgres database
	clusterErr  error
	stopCluster = func() {}

	templateOnce sync.Once
	templateName string
	templateErr  error

	databases atomic.Int64
)

// Main runs a package's tests with a database cluster available, then fails
// them if a goroutine outlived them; call it from TestMain:
// os.Exit(dbtest.Main(m)).
func Main(m *testing.M) int {
	inMain = true
	code := m.Run()
	if templateName != "" {
		_ = adminExec(context.Background(), "DROP DATABASE IF EXISTS "+templateName+" WITH (FORCE)")
	}
	stopCluster()
	if code == 0 {
		// certmagic keeps a rate limiter per ACME CA and account for the
		// life of the process, by design.
		if err := goleak.Find(goleak.IgnoreTopFunction("github.com/caddyserver/certmagic.(*RingBufferRateLimiter).permit")); err != nil {
			fmt.Fprintln(os.Stderr, "dbtest: goroutines outlived the tests:", err)
			code = 1
		}
	}
	return code
}

// needCluster makes sure the cluster runs, starting it on first use.
func needCluster(t testing.TB) {
	t.Helper()
	if !inMain {
		t.Fatal("dbtest: call dbtest.Main from TestMain")
	}
	clusterOnce.Do(startCluster)
	if clusterErr != nil {
		t.Fatalf("dbtest: %v", clusterErr)
	}
}

// startCluster finds the cluster at TEST_DATABASE_URL, or starts a private
// one that Main stops.
func startCluster() {
	adminURL = os.Getenv("TEST_DATABASE_URL")
	if adminURL != "" {
		return
	}
	dir, err := os.MkdirTemp("", "switchboard-test-")
	if err == nil {
		err = os.Chmod(dir, 0o711) // the postgres user must be able to enter it
	}
	if err != nil {
		clusterErr = err
		return
	}
	cluster, err := pgcluster.Start(context.Background(), dir+"/pg", pgcluster.Options{Fast: true})
	if err != nil {
		os.RemoveAll(dir)
		clusterErr = fmt.Errorf("starting a private PostgreSQL: %w", err)
		return
	}
	adminURL = cluster.URL
	stopCluster = func() {
		cluster.Stop()
		os.RemoveAll(dir)
	}
}

func adminExec(ctx context.Context, sql string) error { return Exec(ctx, adminURL, sql) }

// Exec runs one statement on the database at url, on a connection of its
// own (CREATE DATABASE cannot run in a pool's transaction).
func Exec(ctx context.Context, url, sql string) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	return err
}

// withDatabase returns adminURL pointed at another database.
func withDatabase(name string) string {
	u, err := url.Parse(adminURL)
	if err != nil {
		panic(err)
	}
	u.Path = "/" + name
	return u.String()
}

// makeTemplate creates and migrates the template once per test binary. Its
// name carries the pid: test binaries of several packages share a cluster.
func makeTemplate() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	name := fmt.Sprintf("switchboard_tpl_%d", os.Getpid())
	if templateErr = adminExec(ctx, "CREATE DATABASE "+name); templateErr != nil {
		return
	}
	templateName = name
	pool, err := pgxpool.New(ctx, withDatabase(name))
	if err != nil {
		templateErr = err
		return
	}
	defer pool.Close()
	templateErr = db.Migrate(ctx, pool, Logger())
}

// NewDatabase creates a migrated database for t and drops it when t ends.
// It returns the database's URL.
func NewDatabase(t testing.TB) string {
	t.Helper()
	needCluster(t)
	templateOnce.Do(makeTemplate)
	if templateErr != nil {
		t.Fatalf("dbtest: template database: %v", templateErr)
	}
	return newDatabase(t, " TEMPLATE "+templateName)
}

// NewEmptyDatabase creates a database without Switchboard's schema, for
// tests of migrating it.
func NewEmptyDatabase(t testing.TB) string {
	t.Helper()
	return newDatabase(t, "")
}

func newDatabase(t testing.TB, options string) string {
	t.Helper()
	needCluster(t)
	name := fmt.Sprintf("switchboard_test_%d_%d", os.Getpid(), databases.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := adminExec(ctx, "CREATE DATABASE "+name+options); err != nil {
		t.Fatalf("dbtest: create database: %v", err)
	}
	t.Cleanup(func() {
		if err := adminExec(context.Background(), "DROP DATABASE "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("dbtest: drop database: %v", err)
		}
	})
	return withDatabase(name)
}

// Pool returns a pool on the database at url, closed when t ends.
func Pool(t testing.TB, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// NewPool returns a pool on a fresh migrated database.
func NewPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	return Pool(t, NewDatabase(t))
}

// Logger is a logger for code under test: quiet unless SWITCHBOARD_TEST_LOG
// is set, because a slog handler writing to t outlives t in goroutines
// that are still stopping.
func Logger() *slog.Logger {
	if os.Getenv("SWITCHBOARD_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// PrivateCluster starts a PostgreSQL cluster of the test's own, for a test
// that stops, crashes or restarts it, with a migrated database
// "switchboard" whose URL it returns. The cluster stops when the test ends.
func PrivateCluster(ctx context.Context, t testing.TB) (*pgcluster.Cluster, string) {
	t.Helper()
	// Not t.TempDir: its parent is 0700, and as root the cluster runs as
	// the postgres user, who must enter the directory.
	dir, err := os.MkdirTemp("", "switchboard-private-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	cluster, err := pgcluster.Start(ctx, dir+"/pg", pgcluster.Options{Fast: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cluster.Stop() })
	if err := Exec(ctx, cluster.URL, "CREATE DATABASE switchboard"); err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(cluster.URL)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/switchboard"
	url := u.String()
	if err := db.Migrate(ctx, Pool(t, url), Logger()); err != nil {
		t.Fatal(err)
	}
	return cluster, url
}
