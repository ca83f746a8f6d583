// Package app assembles Switchboard's processes: the one way an edge or a
// connection node is wired to its database, its listener connection and its
// metrics, used alike by "switchboard edge|conn", by "switchboard dev" (an
// edge and two nodes in one process) and by the test harness, so that tests
// exercise the production wiring.
package app

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/oklog/run"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	conntier "github.com/switchboard-iot/switchboard/conn-tier"
	"github.com/switchboard-iot/switchboard/console"
	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/edge"
	"github.com/switchboard-iot/switchboard/internal/actors"
	"github.com/switchboard-iot/switchboard/internal/certs"
	"github.com/switchboard-iot/switchboard/maintenance"
)

// Process is what the parts of one process share: a pool, the one LISTEN
// connection (every NOTIFY wakes every listening backend, so a process
// listens once), a metrics registry and a logger.
type Process struct {
	Pool     *pgxpool.Pool
	Store    *db.Store
	Notifier *db.Notifier
	Certs    *db.CertStorage // certmagic's storage, shared by every process
	// Metrics is the process's registry, served at /metrics on its ops
	// listener (ServeOps) and nowhere else. Every part
	// registers on it: edge and node series labelled with their id, and an
	// edge's maintenance with its edge's.
	Metrics *prometheus.Registry
	Log     *slog.Logger

	ops []Server // ServeOps: run by Run, outside its group
}

// Open prepares a process on the database at url. It does not wait for the
// database: a process starts, reports not-ready and retries while
// PostgreSQL is away. The pool has db.ServerPoolSize connections unless the
// URL sets pool_max_conns. Options adjust the pool's config (db.Open).
func Open(ctx context.Context, url string, log *slog.Logger, options ...func(*pgxpool.Config)) (*Process, error) {
	if url == "" {
		return nil, errors.New("a database URL is required: set DATABASE_URL or -database-url")
	}
	var size int32 = db.ServerPoolSize
	if strings.Contains(url, "pool_max_conns=") {
		size = 0 // the operator's
	}
	pool, err := db.Open(ctx, url, size, options...)
	if err != nil {
		return nil, err
	}
	notifier := db.NewNotifier(pool.Config().ConnConfig, log)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		newPoolCollector(pool))
	reg.MustRegister(listenerMetrics(notifier)...)
	return &Process{
		Pool:     pool,
		Store:    db.NewStore(pool),
		Notifier: notifier,
		Certs:    db.NewCertStorage(pool),
		Metrics:  reg,
		Log:      log,
	}, nil
}

// Close releases the pool.
func (p *Process) Close() { p.Pool.Close() }

// Server is a part that serves on a listener until its context ends.
type Server func(ctx context.Context) error

// Edge assembles an edge serving on ln, and its background work (package
// maintenance: every edge process runs it); cfg needs its ID and any
// tuning, maint any tuning. acme says which ACME CA the nodes use, so that
// the edge can answer their HTTP-01 challenges from the shared storage.
func (p *Process) Edge(cfg edge.Config, maint maintenance.Config, acme certs.Config, ln net.Listener) (Server, *edge.Edge, error) {
	cfg.Store, cfg.Notifier, cfg.Log, cfg.Metrics = p.Store, p.Notifier, p.Log, p.Metrics
	maint.Store, maint.Log, maint.Metrics, maint.EdgeID = p.Store, p.Log, p.Metrics, cfg.ID
	maint.DeviceQueue = cfg.DeviceQueue // a job's commands meet the cap a client's meet
	m := maintenance.New(maint)
	cfg.SweepInterval, cfg.JobCreated = m.SweepInterval(), m.Poke
	acme.Storage, acme.Log = p.Certs, p.Log
	answer, stopAnswering, err := certs.HTTPChallenges(acme)
	if err != nil {
		return nil, nil, err
	}
	cfg.HTTPChallenge = answer
	cfg.SessionCookie = console.Cookie
	e, err := edge.New(cfg)
	if err != nil {
		stopAnswering()
		return nil, nil, err
	}
	// The web console, at "/": its credentials go through the edge's auth
	// guard, its requests take the key's tokens, and its sign-out is
	// forgotten by the edge that serves it.
	e.Mount(console.New(console.Config{Store: p.Store, Log: p.Log.With("edge", cfg.ID), ForgetSession: e.ForgetSession,
		Guard: e.AdmitAuth, Failed: e.AuthFailed, LimitKey: e.LimitKey}).Register)
	return func(ctx context.Context) error {
		defer stopAnswering()
		// Maintenance works through the edge's drain and stops after it,
		// as the edge's own background did; either one ending stops both.
		edgeCtx, stopEdge := context.WithCancel(ctx)
		defer stopEdge()
		maintCtx, stopMaint := context.WithCancel(context.WithoutCancel(ctx))
		defer stopMaint()
		work := actors.Go(func() error {
			defer stopEdge()
			return m.Run(maintCtx)
		})
		err := e.Run(edgeCtx, ln)
		stopMaint()
		return errors.Join(err, work.Wait())
	}, e, nil
}

// TLS makes a node's TLS from the shared storage (see certs.ForNode).
func (p *Process) TLS(ctx context.Context, cfg certs.Config) (*certs.TLS, error) {
	cfg.Storage, cfg.Log = p.Certs, p.Log
	return certs.ForNode(ctx, cfg)
}

// Node assembles a connection node serving on ln with tls (from TLS); cfg
// needs its identity and any tuning.
func (p *Process) Node(cfg conntier.Config, tls *certs.TLS, ln net.Listener) (Server, *conntier.Node, error) {
	cfg.Store, cfg.Notifier, cfg.Log, cfg.Metrics = p.Store, p.Notifier, p.Log, p.Metrics
	cfg.TLS, cfg.CertReady, cfg.CertExpiry = tls.Config, tls.Ready, tls.NotAfter
	if cfg.Node.Addr == "" {
		cfg.Node.Addr = ln.Addr().String()
	}
	n, err := conntier.New(cfg)
	if err != nil {
		return nil, nil, err
	}
	return func(ctx context.Context) error { return n.Run(ctx, ln) }, n, nil
}

// Run runs the process's listener and parts as one oklog/run group until
// ctx ends or one part returns; then every part drains and returns. The
// ops listener (ServeOps) stops after them, so that /readyz answers
// "draining" and /metrics is scraped while they drain; the listener, which
// they may use while draining, stops last.
func (p *Process) Run(ctx context.Context, parts ...Server) error {
	listenCtx, stopListening := context.WithCancel(context.WithoutCancel(ctx))
	defer stopListening()
	listener := actors.Go(func() error { return p.Notifier.Run(listenCtx) })
	opsCtx, stopOps := context.WithCancel(context.WithoutCancel(ctx))
	defer stopOps()
	var ops []*actors.Task
	for _, serve := range p.ops {
		ops = append(ops, actors.Go(func() error { return serve(opsCtx) }))
	}
	var g run.Group
	for _, part := range parts {
		actors.Add(&g, ctx, part)
	}
	err := g.Run()
	stopOps()
	for _, task := range ops {
		err = errors.Join(err, task.Wait())
	}
	stopListening()
	return errors.Join(err, listener.Wait())
}

// UntilSignal is a part that returns, stopping the process cleanly, on
// SIGINT or SIGTERM.
func UntilSignal(ctx context.Context) error {
	execute, _ := run.SignalHandler(ctx, os.Interrupt, syscall.SIGTERM)
	var sig run.SignalError
	if err := execute(); err != nil && !errors.As(err, &sig) && ctx.Err() == nil {
		return err
	}
	return nil
}
