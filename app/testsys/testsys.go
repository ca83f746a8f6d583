// Package testsys starts real pieces of Switchboard for tests: a database of
// the test's own, connection nodes behind real TLS on loopback, edges, and
// SDK devices. Each piece gets its own pool and listener connection, as a
// separate process would, and stops when the test ends.
package testsys

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/switchboard-iot/switchboard/app"
	conntier "github.com/switchboard-iot/switchboard/conn-tier"
	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/db/dbtest"
	"github.com/switchboard-iot/switchboard/device"
	"github.com/switchboard-iot/switchboard/device/protocol"
	"github.com/switchboard-iot/switchboard/edge"
	"github.com/switchboard-iot/switchboard/internal/actors"
	"github.com/switchboard-iot/switchboard/internal/certs"
	"github.com/switchboard-iot/switchboard/internal/secret"
	"github.com/switchboard-iot/switchboard/maintenance"
)

// System is one test's database and the pieces started on it.
type System struct {
	DBURL string
	Pool  *pgxpool.Pool // for the test's own queries
	Store *db.Store
	// PoolOption, when set, adjusts the pools of the pieces started after:
	// a test counts their queries with a pgx tracer.
	PoolOption func(*pgxpool.Config)
	// Log, when set, is the logger of the pieces started after (else
	// dbtest.Logger()): a test reads their logs (see Logs).
	Log *slog.Logger
}

// New gives t a fresh, migrated database.
func New(t testing.TB) *System {
	t.Helper()
	return Attach(t, dbtest.NewDatabase(t))
}

// Attach builds a system on the migrated database at url: one on a cluster
// the test started itself, to stop it.
func Attach(t testing.TB, url string) *System {
	t.Helper()
	pool := dbtest.Pool(t, url)
	return &System{DBURL: url, Pool: pool, Store: db.NewStore(pool)}
}

// AddDevice provisions a device and returns its secret.
func (s *System) AddDevice(t testing.TB, id string) string {
	t.Helper()
	devSecret := secret.New("")
	if _, err := s.Store.AddDevices(context.Background(), []db.Credential{{ID: id, SecretHash: secret.Hash(devSecret)}}); err != nil {
		t.Fatal(err)
	}
	return devSecret
}

// APIKey creates an API key with the given scopes: all of them when none
// are given.
func (s *System) APIKey(t testing.TB, scopes ...db.Scope) string {
	t.Helper()
	key := secret.New("sbk_")
	if _, err := s.Store.AddAPIKey(context.Background(), db.NewAPIKey{Name: "test", KeyHash: secret.Hash(key), Scopes: scopes}); err != nil {
		t.Fatal(err)
	}
	return key
}

// open gives a component a process of its own (its own pool and listener
// connection), built by the same constructor as production.
func (s *System) open(t testing.TB) *app.Process {
	t.Helper()
	var options []func(*pgxpool.Config)
	if s.PoolOption != nil {
		options = append(options, s.PoolOption)
	}
	log := s.Log
	if log == nil {
		log = dbtest.Logger()
	}
	p, err := app.Open(context.Background(), s.DBURL, log, options...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// process is a component running in its process until stop is called or
// the test ends.
type process struct {
	cancel context.CancelFunc
	task   *actors.Task
}

func run(t testing.TB, p *app.Process, serve app.Server) *process {
	ctx, cancel := context.WithCancel(context.Background())
	proc := &process{cancel: cancel, task: actors.Go(func() error { return p.Run(ctx, serve) })}
	t.Cleanup(func() {
		if err := proc.stop(); err != nil {
			t.Errorf("stopping: %v", err)
		}
	})
	return proc
}

// stop ends the process and returns the component's error; it may be
// called again.
func (p *process) stop() error {
	p.cancel()
	return p.task.Wait()
}

func listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// Node is a running connection node.
type Node struct {
	ID    string
	URL   string         // wss://127.0.0.1:port/v1/connect
	Base  string         // https://127.0.0.1:port
	Ops   string         // http://127.0.0.1:port: the ops listener (health, metrics, profiles)
	Roots *x509.CertPool // trusts the node's certificate
	PEM   []byte         // that certificate, for clients that read a file
	*conntier.Node
	proc *process
}

// TLS is a client config that trusts the node.
func (n *Node) TLS() *tls.Config { return &tls.Config{RootCAs: n.Roots} }

// HTTPClient is an HTTP client that trusts the node.
func (n *Node) HTTPClient() *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: n.TLS()}, Timeout: 10 * time.Second}
}

// Metric reads one sample, such as `name{node="a"}`, from the node's
// /metrics (on its ops listener); 0 when the series is absent.
func (n *Node) Metric(t testing.TB, series string) float64 {
	t.Helper()
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(n.Ops + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(body)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), series+" "); ok {
			var f float64
			if _, err := fmt.Sscan(v, &f); err != nil {
				t.Fatalf("metric %s: %v", line, err)
			}
			return f
		}
	}
	return 0
}

// Stop drains the node (devices see 1001) and returns Run's error.
func (n *Node) Stop() error { return n.proc.stop() }

// StartNode runs a connection node with self-signed TLS (the one stored
// for the test's database: its nodes share it, as a deployment's do).
// tweak, if given, adjusts its config (short heartbeats, small frames).
func (s *System) StartNode(t testing.TB, id string, tweak func(*conntier.Config)) *Node {
	t.Helper()
	return s.StartNodeTLS(t, id, certs.Config{Mode: certs.ModeSelfSigned}, nil, tweak)
}

// StartNodeTLS runs a connection node with the TLS tlsCfg says (ACME, say),
// on ln (nil: a port of its own). Roots trusts the certificate only when
// it is self-signed.
func (s *System) StartNodeTLS(t testing.TB, id string, tlsCfg certs.Config, ln net.Listener, tweak func(*conntier.Config)) *Node {
	t.Helper()
	p := s.open(t)
	tls, err := p.TLS(context.Background(), tlsCfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tls.Stop)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(tls.PEM)
	if ln == nil {
		ln = listen(t)
	}
	cfg := conntier.Config{Node: db.Node{ID: id, Region: "test"}}
	if tweak != nil {
		tweak(&cfg)
	}
	serve, node, err := p.Node(cfg, tls, ln)
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	// The ops listener, as CONN_OPS_LISTEN gives a production node.
	opsLn := listen(t)
	p.ServeOps(opsLn, node.NotReady)
	n := &Node{ID: id, URL: "wss://" + ln.Addr().String() + protocol.Path, Base: "https://" + ln.Addr().String(),
		Ops: "http://" + opsLn.Addr().String(), Roots: roots, PEM: tls.PEM, Node: node}
	n.proc = run(t, p, serve)
	return n
}

// Edge is a running edge.
type Edge struct {
	ID  string
	URL string // http://127.0.0.1:port
	Ops string // http://127.0.0.1:port: the ops listener (health, metrics, profiles)
	*edge.Edge
	proc *process
}

// Stop ends the edge's streams and returns Run's error.
func (e *Edge) Stop() error { return e.proc.stop() }

// StartEdge runs an edge and its maintenance (package maintenance), as
// every edge process does. tweak, if given, adjusts the edge's config,
// and tuneMaintenance its maintenance's.
func (s *System) StartEdge(t testing.TB, id string, tweak func(*edge.Config), tuneMaintenance ...func(*maintenance.Config)) *Edge {
	t.Helper()
	return s.StartEdgeACME(t, id, certs.Config{}, nil, tweak, tuneMaintenance...)
}

// StartEdgeACME runs an edge that answers the HTTP-01 challenges of nodes
// using acme's CA, on ln (nil: a port of its own).
func (s *System) StartEdgeACME(t testing.TB, id string, acme certs.Config, ln net.Listener, tweak func(*edge.Config),
	tuneMaintenance ...func(*maintenance.Config)) *Edge {
	t.Helper()
	cfg := edge.Config{ID: id}
	if tweak != nil {
		tweak(&cfg)
	}
	maint := maintenance.Config{SweepInterval: 100 * time.Millisecond}
	for _, tune := range tuneMaintenance {
		tune(&maint)
	}
	if ln == nil {
		ln = listen(t)
	}
	p := s.open(t)
	serve, ed, err := p.Edge(cfg, maint, acme, ln)
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	// The ops listener, as EDGE_OPS_LISTEN gives a production edge.
	opsLn := listen(t)
	p.ServeOps(opsLn, ed.NotReady)
	e := &Edge{ID: id, URL: "http://" + ln.Addr().String(), Ops: "http://" + opsLn.Addr().String(), Edge: ed}
	e.proc = run(t, p, serve)
	return e
}

// Device is a running SDK device.
type Device struct {
	*device.Client
	connected chan struct{} // receives on each new session
	cancel    context.CancelFunc
	done      chan struct{} // closed when Run returns
	err       error         // Run's error, once done is closed
}

// Connected waits for the device's next session to open.
func (d *Device) Connected(t testing.TB) {
	t.Helper()
	select {
	case <-d.connected:
	case <-time.After(10 * time.Second):
		t.Fatal("device did not connect within 10s")
	}
}

// Stop disconnects the device and returns Run's error.
func (d *Device) Stop() error {
	d.cancel()
	<-d.done
	return d.err
}

// Done is closed when the device stops by itself (401); Stop then returns
// why.
func (d *Device) Done() <-chan struct{} { return d.done }

// StartDevice connects an SDK device to node with the given handlers and
// waits for its first session.
func StartDevice(t testing.TB, node *Node, id, devSecret string, handlers map[string]device.HandlerFunc) *Device {
	t.Helper()
	d := &Device{connected: make(chan struct{}, 1), done: make(chan struct{})}
	d.Client = device.New(device.Config{
		URL: node.URL, ID: id, Secret: devSecret, TLS: node.TLS(), Log: dbtest.Logger(),
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		OnConnect: func() {
			select {
			case d.connected <- struct{}{}:
			default:
			}
		},
	})
	for name, h := range handlers {
		d.Handle(name, h)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	go func() { d.err = d.Run(ctx); close(d.done) }()
	t.Cleanup(func() { _ = d.Stop() })
	d.Connected(t)
	return d
}

// Eventually polls cond until it holds, failing t after a deadline. For
// state with no signal to wait on, such as rows another process writes.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	EventuallyWithin(t, 20*time.Second, what, cond)
}

// EventuallyWithin is Eventually with a deadline of its own.
func EventuallyWithin(t testing.TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
