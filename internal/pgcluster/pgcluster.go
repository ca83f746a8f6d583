// Package pgcluster runs a private PostgreSQL cluster in a folder of its own,
// from the installed initdb and pg_ctl. `switchboard dev`, scripts/test and
// the test helpers all start their database through it.
//
// initdb and postgres refuse to run as root; as root, the cluster runs as the
// "postgres" system user, which then owns the folder.
package pgcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5"
)

// Cluster is a running private cluster.
type Cluster struct {
	Dir  string // holds data/ and postgres.log
	Port int
	// URL reaches the "postgres" database as the superuser "postgres" (trust auth on loopback).
	URL string

	bin   string // folder of initdb, pg_ctl
	runAs *user.User
}

// Options tune a cluster.
type Options struct {
	Port int // 0 picks a free port
	// Fast trades durability against an operating-system crash for speed
	// (no fsync): for tests only. A commit still reaches the kernel before
	// it is acknowledged, so a crash of PostgreSQL itself loses nothing.
	Fast bool
	// MaxConnections defaults to 300.
	MaxConnections int
	// Settings are more postgresql.conf lines, such as
	// "shared_preload_libraries='pg_stat_statements'".
	Settings []string
}

// ErrNoPostgres says the server binaries are missing.
var ErrNoPostgres = errors.New("PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's postgresql package (apt-get install postgresql) or set PG_BIN to their folder")

// Start initialises dir (wiping what was there) and starts a cluster in it.
// A cluster left running in dir by an earlier crash is stopped first.
func Start(ctx context.Context, dir string, opts Options) (*Cluster, error) {
	c, err := open(dir)
	if err != nil {
		return nil, err
	}
	dir = c.Dir
	if c.runAs != nil {
		if err := checkTraversable(filepath.Dir(dir)); err != nil {
			return nil, err
		}
	}
	_ = c.Stop() // a leftover from a crashed run; fails harmlessly when there is none
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := c.chown(dir); err != nil {
		return nil, err
	}
	if err := c.run(ctx, "initdb", "-D", c.data(), "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"); err != nil {
		return nil, err
	}
	maxConns := opts.MaxConnections
	if maxConns == 0 {
		maxConns = 300
	}
	// A port picked free can be taken before postgres binds it: try a few.
	for attempt := 0; ; attempt++ {
		c.Port = opts.Port
		if c.Port == 0 {
			if c.Port, err = freePort(); err != nil {
				return nil, err
			}
		}
		settings := []string{
			"listen_addresses='127.0.0.1'",
			"port=" + strconv.Itoa(c.Port),
			"unix_socket_directories=''",
			"max_connections=" + strconv.Itoa(maxConns),
			"shared_buffers='128MB'",
		}
		if opts.Fast {
			settings = append(settings, "fsync=off", "full_page_writes=off")
		}
		settings = append(settings, opts.Settings...)
		if err := c.writeConf(settings); err != nil {
			return nil, err
		}
		err = c.run(ctx, "pg_ctl", "-D", c.data(), "-l", filepath.Join(dir, "postgres.log"), "-w", "-t", "60", "start")
		if err == nil {
			break
		}
		if opts.Port != 0 || attempt == 2 {
			return nil, fmt.Errorf("%w\n%s", err, c.logTail())
		}
	}
	c.URL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", c.Port)
	return c, nil
}

// Stop shuts the cluster down (fast mode: sessions are disconnected).
func (c *Cluster) Stop() error {
	if _, err := os.Stat(filepath.Join(c.data(), "postmaster.pid")); err != nil {
		return nil // not running
	}
	return c.run(context.Background(), "pg_ctl", "-D", c.data(), "-m", "fast", "-w", "-t", "60", "stop")
}

// Crash stops the cluster the way a crash would (immediate mode: no
// checkpoint, sessions cut); Restart brings it back.
func (c *Cluster) Crash() error {
	return c.run(context.Background(), "pg_ctl", "-D", c.data(), "-m", "immediate", "-w", "-t", "60", "stop")
}

// Restart starts a stopped cluster again, on its port, with its data.
func (c *Cluster) Restart(ctx context.Context) error {
	if err := c.run(ctx, "pg_ctl", "-D", c.data(), "-l", filepath.Join(c.Dir, "postgres.log"), "-w", "-t", "60", "start"); err != nil {
		return fmt.Errorf("%w\n%s", err, c.logTail())
	}
	return nil
}

// StopDir stops a cluster started in dir by another process (scripts/test).
func StopDir(dir string) error {
	c, err := open(dir)
	if err != nil {
		return err
	}
	return c.Stop()
}

// open finds the server binaries for a cluster in dir, and the user to run
// them as.
func open(dir string) (*Cluster, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: dir}
	if c.bin, err = findBin(); err != nil {
		return nil, err
	}
	if os.Geteuid() == 0 {
		if c.runAs, err = user.Lookup("postgres"); err != nil {
			return nil, fmt.Errorf("running as root, so PostgreSQL must run as the postgres user: %w", err)
		}
	}
	return c, nil
}

// checkTraversable makes sure the postgres user can reach a folder we own:
// a folder made by os.MkdirTemp (mode 0700) cannot hold its cluster.
func checkTraversable(dir string) error {
	for ; ; dir = filepath.Dir(dir) {
		info, err := os.Stat(dir)
		if err != nil {
			return err
		}
		if info.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("the postgres user cannot enter %s (mode %v): put the cluster in a folder others may traverse, such as one under /tmp with mode 0711", dir, info.Mode().Perm())
		}
		if dir == filepath.Dir(dir) {
			return nil
		}
	}
}

func (c *Cluster) data() string { return filepath.Join(c.Dir, "data") }

func (c *Cluster) writeConf(settings []string) error {
	path := filepath.Join(c.data(), "postgresql.auto.conf")
	if err := os.WriteFile(path, []byte(strings.Join(settings, "\n")+"\n"), 0o600); err != nil {
		return err
	}
	return c.chown(path)
}

// run runs one of the server binaries, as the postgres user when we are root.
// Its own process group keeps a terminal's Ctrl-C away from the postmaster,
// which the caller stops in order, after the processes that use it.
func (c *Cluster) run(ctx context.Context, name string, args ...string) error {
	path := filepath.Join(c.bin, name)
	if c.runAs != nil {
		args = append([]string{"-u", c.runAs.Username, "--", path}, args...)
		path = "runuser"
	}
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Dir = c.Dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

func (c *Cluster) chown(path string) error {
	if c.runAs == nil {
		return nil
	}
	uid, _ := strconv.Atoi(c.runAs.Uid)
	gid, _ := strconv.Atoi(c.runAs.Gid)
	return os.Chown(path, uid, gid)
}

func (c *Cluster) logTail() string {
	b, _ := os.ReadFile(filepath.Join(c.Dir, "postgres.log"))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// findBin locates initdb: $PG_BIN, then $PATH, then Debian's versioned folders (newest first).
func findBin() (string, error) {
	if dir := os.Getenv("PG_BIN"); dir != "" {
		return dir, nil
	}
	if path, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(path), nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	for _, dir := range dirs {
		if _, err := os.Stat(filepath.Join(dir, "initdb")); err == nil {
			return dir, nil
		}
	}
	return "", ErrNoPostgres
}

func version(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Tool returns the path of one of PostgreSQL's programs (psql, pg_dump):
// beside initdb, or beside what a link named initdb points to, or on $PATH.
func Tool(name string) (string, error) {
	dir, err := findBin()
	if err != nil {
		return "", err
	}
	candidates := []string{filepath.Join(dir, name)}
	if real, err := filepath.EvalSymlinks(filepath.Join(dir, "initdb")); err == nil {
		candidates = append(candidates, filepath.Join(filepath.Dir(real), name))
	}
	for _, path := range candidates {
		if _, err := os.Stat(path); err == nil {
			return path, nil
		}
	}
	return exec.LookPath(name)
}

// CreateDatabase creates a database on the cluster and returns its URL.
func (c *Cluster) CreateDatabase(ctx context.Context, name string) (string, error) {
	conn, err := pgx.Connect(ctx, c.URL)
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", err
	}
	u, err := url.Parse(c.URL)
	if err != nil {
		return "", err
	}
	u.Path = "/" + name
	return u.String(), nil
}
