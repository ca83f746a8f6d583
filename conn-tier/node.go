// Package conntier is the connection tier: a node that holds devices'
// WebSockets, registers them in presence, delivers their commands and stores
// their replies and events.
//
// A node is a set of actors that it starts and stops in order: the lease
// first (presence rows must point at a live lease), the listener last; on
// shutdown it stops accepting, closes every session with 1001 so devices
// reconnect elsewhere, flushes the writes those sessions left, and only then
// gives up its lease and rows.
package conntier

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"
	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/device/protocol"
	"github.com/switchboard-iot/switchboard/internal/actors"
	"github.com/switchboard-iot/switchboard/internal/authguard"
	"github.com/switchboard-iot/switchboard/internal/backoff"
	"github.com/switchboard-iot/switchboard/internal/batch"
	"github.com/switchboard-iot/switchboard/internal/clientaddr"
	"github.com/switchboard-iot/switchboard/internal/expiring"
	"github.com/switchboard-iot/switchboard/internal/httpsec"
	"github.com/switchboard-iot/switchboard/internal/problem"
	"github.com/switchboard-iot/switchboard/internal/ratelimit"
)

// Config is what a node needs. Zero durations and sizes take the defaults
// noted beside them.
type Config struct {
	Node     db.Node
	Store    *db.Store
	Notifier *db.Notifier // the process's listener, shared with other components
	Log      *slog.Logger
	TLS      *tls.Config // nil serves plain HTTP (CONN_TLS=off, behind a TLS proxy)
	// CertReady reports whether the certificate is there to serve (ACME
	// obtains it in the background); nil: always.
	CertReady func() bool
	// CertExpiry is when the certificate served expires, zero while there
	// is none; nil: no certificate (plain HTTP). The node's metrics export
	// it (switchboard_conn_certificate_expiry_timestamp_seconds).
	CertExpiry func() time.Time

	// Metrics is the registry the node's metrics (labelled with its id)
	// join; the process serves it on its ops listener, never on the device
	// port.
	Metrics *prometheus.Registry

	PingInterval time.Duration // 20s: WebSocket ping to each device
	ReadTimeout  time.Duration // 2.5×PingInterval: a device silent this long is dropped
	WriteTimeout time.Duration // 10s: a frame not written in this time drops the device
	MaxFrame     int64         // 64 KiB: larger frames close the socket with 1009
	SendQueue    int           // 64 frames queued per device before it counts as stuck
	// WriteQueue bounds each kind of write (presence, commands, events)
	// queued while the database is slow or away: past it, a device's
	// replies wait (its reads pause) and events are shed. 4096.
	WriteQueue int
	LeaseTTL   time.Duration // 15s: renewed every third of it
	// DrainWindow is how long a stopping node takes to close its sessions
	// (1001): it closes them in batches every drainTick, at least
	// drainMinBatch a batch, so the devices reconnect to other nodes in
	// steps rather than all at once (DefaultDrainWindow).
	DrainWindow  time.Duration
	DrainTimeout time.Duration // 10s: how long shutdown then waits for sessions to close before cutting them
	// RescanInterval is how often the node re-reads its devices' pending
	// commands and checks its sessions were not taken over, whatever
	// wake-ups it got: the backstop for a lost NOTIFY. 30s.
	RescanInterval time.Duration
	// MarkDelay holds back the edges' wake-up for a written command's
	// delivery (20ms): a reply that comes sooner tells them of both, saving
	// a wake-up; a slower device's "delivered" shows this much later. 0
	// wakes them at once. (The delivery itself is recorded before the
	// frame is written.)
	MarkDelay time.Duration
	// Clock is the node's clock (time.Now), read for session ids only:
	// which session of a device is the newest is PostgreSQL's to say.
	Clock func() time.Time

	// HTTPTimeout bounds reading a request and writing a response that is
	// not a WebSocket (30s); a kept-alive connection may idle twice that.
	// An upgraded connection keeps none of these deadlines: gorilla clears
	// them as it takes the connection over, and the session sets its own on
	// every frame.
	HTTPTimeout time.Duration
	// DeviceRate is how many messages a second a device may send (10), in
	// bursts of up to DeviceBurst (100). Replies to commands its session
	// awaits are free. Past the rate, events are dropped (counted in
	// switchboard_conn_messages_over_rate_total); replies are stored all
	// the same. Once the messages over the rate make another DeviceBurst,
	// the session is closed with 4029. A negative DeviceRate turns this off.
	// The budget is the device's, not the session's: its sessions on this
	// node share it, and a reconnect finds what the last one left.
	DeviceRate  float64
	DeviceBurst int
	// DeviceConnectRate is how many times a second a device may connect to
	// this node (1), in bursts of up to DeviceConnectBurst (3). Past it, a
	// connect is answered 429 with Retry-After once its credentials are
	// checked, before anything is written for it. Negative: no limit.
	DeviceConnectRate  float64
	DeviceConnectBurst int
	// AuthGuard throttles failed credential look-ups per source address and
	// remembers failed credentials (see internal/authguard for defaults).
	AuthGuard authguard.Config
	// MaxSessions is how many devices the node holds at most; past it, a
	// connect request is answered 503 with a jittered Retry-After before
	// its credentials are looked at. Default: the open-files limit less
	// the pool's connections, MaxHandshakes and a few for listeners.
	MaxSessions int
	// RebalanceInterval is how often the node compares its sessions with
	// the mean of its region's nodes (DefaultRebalanceInterval); negative:
	// never. Above the mean, it sheds at most RebalanceShare of its
	// sessions (DefaultRebalanceShare) each time, with 1012 and a delay of
	// half RebalanceDelay up to all of it (30s, at most half the interval).
	RebalanceInterval time.Duration
	RebalanceShare    float64
	RebalanceDelay    time.Duration
	// LogInterval is how often the node logs its sessions summary
	// (DefaultLogInterval), and the window in which it logs at most
	// RefusalLogs refused connects (DefaultRefusalLogs) before counting
	// the rest (logs.go).
	LogInterval time.Duration
	RefusalLogs int
	// MaxHandshakes bounds the connections the node works on at once
	// before their upgrade: TLS handshakes and connect requests whose
	// client has sent what the node needs next (DefaultMaxHandshakes);
	// past it, new connections wait in the kernel's accept queue.
	MaxHandshakes int
	// A connection the node waits on (nothing sent yet, or half a
	// handshake or request) is silent and holds no handshake slot. It is
	// closed after FirstByteTimeout before its first byte
	// (DefaultFirstByteTimeout), and, once silent for 5s, silent longest
	// first when there are more than MaxSilent on the node
	// (DefaultMaxSilent) or MaxSilentPerAddress from its source address
	// (DefaultMaxSilentPerAddress).
	FirstByteTimeout    time.Duration
	MaxSilent           int
	MaxSilentPerAddress int
	idleAfter           time.Duration // defaultIdleAfter; tests shorten it
	// TrustedProxies are the peers that must open each connection with a
	// PROXY protocol header naming the client (Fly's proxy_proto_options);
	// none by default: the client is the TCP peer.
	TrustedProxies clientaddr.Trusted
}

// DefaultDrainWindow is how long a stopping node spreads its session
// closes over.
const DefaultDrainWindow = 10 * time.Second

// Default limits per device.
const (
	DefaultDeviceRate         = 10.0 // messages a second
	DefaultDeviceBurst        = 100  // messages at once
	DefaultDeviceConnectRate  = 1.0  // connects a second
	DefaultDeviceConnectBurst = 3    // connects at once
)

// readBufferSize is a session's read buffer: a pong or a small reply fits.
const readBufferSize = 256

// writeBuffers lends gorilla its write buffers, shared by every node of the
// process.
var writeBuffers sync.Pool

// maxHeaderBytes bounds a connect request's line and headers: a device
// sends a few short ones.
const maxHeaderBytes = 16 << 10

// withDefaults fills what the caller left zero.
func (c Config) withDefaults() Config {
	c.PingInterval = cmp.Or(c.PingInterval, 20*time.Second)
	c.ReadTimeout = cmp.Or(c.ReadTimeout, c.PingInterval*5/2)
	c.WriteTimeout = cmp.Or(c.WriteTimeout, 10*time.Second)
	c.LeaseTTL = cmp.Or(c.LeaseTTL, 15*time.Second)
	c.DrainWindow = cmp.Or(c.DrainWindow, DefaultDrainWindow)
	c.RebalanceInterval = cmp.Or(c.RebalanceInterval, DefaultRebalanceInterval)
	c.RebalanceDelay = cmp.Or(c.RebalanceDelay, 30*time.Second)
	if c.RebalanceShare <= 0 || c.RebalanceShare > 1 {
		c.RebalanceShare = DefaultRebalanceShare
	}
	c.DrainTimeout = cmp.Or(c.DrainTimeout, 10*time.Second)
	c.RescanInterval = cmp.Or(c.RescanInterval, 30*time.Second)
	c.MarkDelay = cmp.Or(c.MarkDelay, 20*time.Millisecond)
	c.HTTPTimeout = cmp.Or(c.HTTPTimeout, 30*time.Second)
	c.DeviceRate = cmp.Or(c.DeviceRate, DefaultDeviceRate)
	c.DeviceBurst = cmp.Or(c.DeviceBurst, DefaultDeviceBurst)
	c.DeviceConnectRate = cmp.Or(c.DeviceConnectRate, DefaultDeviceConnectRate)
	c.DeviceConnectBurst = cmp.Or(c.DeviceConnectBurst, DefaultDeviceConnectBurst)
	c.MaxFrame = cmp.Or(c.MaxFrame, 64<<10)
	c.SendQueue = cmp.Or(c.SendQueue, 64)
	c.WriteQueue = cmp.Or(c.WriteQueue, 4096)
	c.Log = cmp.Or(c.Log, slog.Default())
	c.LogInterval = cmp.Or(c.LogInterval, DefaultLogInterval)
	c.RefusalLogs = cmp.Or(c.RefusalLogs, DefaultRefusalLogs)
	if c.MaxHandshakes <= 0 {
		c.MaxHandshakes = DefaultMaxHandshakes
	}
	c.FirstByteTimeout = cmp.Or(c.FirstByteTimeout, DefaultFirstByteTimeout)
	c.idleAfter = cmp.Or(c.idleAfter, defaultIdleAfter)
	if c.MaxSilent <= 0 {
		c.MaxSilent = DefaultMaxSilent
	}
	if c.MaxSilentPerAddress <= 0 {
		c.MaxSilentPerAddress = DefaultMaxSilentPerAddress
	}
	if c.MaxSessions <= 0 {
		c.MaxSessions = defaultMaxSessions(c.Store.MaxConns(), c.MaxHandshakes, c.MaxSilent)
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	return c
}

// Node is one connection node.
type Node struct {
	cfg      Config
	log      *slog.Logger
	store    *db.Store
	upgrader websocket.Upgrader
	metrics  *metrics
	guard    *authguard.Guard // failed credential look-ups
	// budgets are the devices' message budgets, kept across their sessions;
	// connectRates their connects (limits.go). Nil: no limit.
	budgets      *expiring.Map[string, *deviceBudget]
	connectRates *ratelimit.Table

	hub       hub
	deliverer *deliverer
	presence  *batch.Batcher[presenceOp]
	commands  *batch.Batcher[commandOp]
	events    *batch.Batcher[db.DeviceEvent]
	notices   *batch.Batcher[db.Notice] // wake-ups for edges and kicks for nodes, after their writes
	// credentials reads the credentials of connecting devices: one query
	// for every request that queued while the previous read was in flight,
	// so a reconnect storm of 15,000 devices costs a few dozen queries, not
	// 15,000, and an idle node adds no delay (credentials.go).
	credentials *batch.Calls[string, db.DeviceCredentials]

	leased atomic.Bool // the lease row exists and was renewed in time

	revocations revocations // devices disabled or deleted lately

	sessionLog sessionLog // counts for the summary; limits of refusal lines (logs.go)

	drainMu  sync.Mutex     // orders admissions before the drain's wait
	sessions sync.WaitGroup // admitted requests to /v1/connect, until their session ends
	open     atomic.Int64   // the same, counted for MaxSessions
	draining atomic.Bool    // shutting down: refuse new sessions; set under drainMu

	gate atomic.Pointer[handshakeGate] // set by Run

	onDrainBatch func(closed, left int)                   // a test's signal: a drain batch was closed
	loseClaim    atomic.Bool                              // a test's fault: the next claim that takes commands commits, and its answer is lost
	onRebalance  atomic.Pointer[func(sessions, shed int)] // a test's signal: a rebalancing round decided
}

// New makes a node; Run starts it.
func New(cfg Config) (*Node, error) {
	cfg = cfg.withDefaults()
	if !db.ValidChannelID(cfg.Node.ID) {
		return nil, fmt.Errorf("node id %q: want 1-48 letters, digits, '.', '_' or '-'", cfg.Node.ID)
	}
	log := cfg.Log.With("node", cfg.Node.ID)
	n := &Node{
		cfg:   cfg,
		log:   log,
		store: cfg.Store,
		guard: authguard.New(cfg.AuthGuard),
		upgrader: websocket.Upgrader{
			Subprotocols:     []string{protocol.Subprotocol},
			HandshakeTimeout: 10 * time.Second,
			// An idle device sends a pong every PingInterval: a small read
			// buffer serves it (larger frames are read through), and write
			// buffers are lent from a pool only while a frame is written.
			// Left at zero, gorilla would keep the hijacked connection's
			// 4 KiB buffers for the session's life.
			ReadBufferSize:  readBufferSize,
			WriteBufferPool: &writeBuffers,
			// Devices are not browsers: there is no page origin to check.
			CheckOrigin: func(*http.Request) bool { return true },
		},
	}
	n.hub.sessions = make(map[string]*session)
	n.budgets, n.connectRates = newDeviceLimits(cfg)
	n.revocations = newRevocations()
	n.initSessionLog()
	n.deliverer = newDeliverer(n)
	// Queue limits bound memory while the database is slow or away: past
	// them, devices' replies wait (their reads stop) and events are shed.
	q := cfg.WriteQueue
	n.presence = batch.New("presence", q, 1000, log, n.writePresence, db.IsRefused)
	n.commands = batch.New("commands", q, 1000, log, n.writeCommands, db.IsRefused)
	n.events = batch.New("events", q, 1000, log, n.writeEvents, db.IsRefused)
	n.notices = batch.New("notices", q, 1000, log, n.store.Notify, db.IsRefused)
	// Its queue is bounded by MaxHandshakes: a look-up belongs to a
	// connection not yet upgraded.
	n.credentials = batch.NewCalls(1000, n.readCredentials, nil)
	n.metrics = newMetrics(cfg.Metrics, cfg.Node.ID, cfg.Node.Region, map[string]func() int{
		"presence": n.presence.Len, "commands": n.commands.Len, "events": n.events.Len, "notices": n.notices.Len,
	}, map[string]func() uint64{
		"presence": n.presence.Retries, "commands": n.commands.Retries, "events": n.events.Retries, "notices": n.notices.Retries,
	}, n.cfg.MaxSessions, func() (handshakes, silent int) {
		if g := n.gate.Load(); g != nil {
			return g.load()
		}
		return 0, 0
	}, n.leased.Load, cfg.CertExpiry)
	return n, nil
}

// Handler serves the device endpoint, and health and readiness (the
// status alone) for the platform's checks.
func (n *Node) Handler() http.Handler {
	r := chi.NewRouter()
	r.Use(httpsec.Headers)
	r.NotFound(func(w http.ResponseWriter, _ *http.Request) {
		problem.NotFound.Write(w, "devices connect to "+protocol.Path)
	})
	r.Get(protocol.Path, n.handleConnect)
	r.Get("/healthz", httpsec.Health)
	r.Get("/readyz", httpsec.Readiness(n.NotReady, false))
	return r
}

// NotReady says why the node cannot take devices now; "" when it can.
// The process's ops listener (app.ServeOps) tells it; the public /readyz
// does not.
func (n *Node) NotReady(ctx context.Context) string {
	switch {
	case n.draining.Load():
		return "draining"
	case !n.leased.Load():
		return "no lease"
	case n.cfg.CertReady != nil && !n.cfg.CertReady():
		return "no certificate yet"
	case n.store.Ping(ctx) != nil:
		return "database unreachable"
	}
	return ""
}

// Sessions reports how many devices are connected to this node.
func (n *Node) Sessions() int { return n.hub.len() }

// Run serves devices on ln until ctx is done, then drains and returns.
func (n *Node) Run(ctx context.Context, ln net.Listener) error {
	if err := n.register(ctx); err != nil {
		ln.Close()
		return err
	}
	// The background actors outlive ctx: they flush what the closing
	// sessions leave behind, and stop only after the sessions have.
	bg, stopBackground := actors.Group(ctx, n.presence.Run, n.commands.Run, n.events.Run, n.notices.Run, n.credentials.Run, n.deliverer.run, n.renewLease, n.pinger, n.rebalance, n.logSummaries)
	unlisten := n.cfg.Notifier.Listen(db.NodeChannel(n.cfg.Node.ID), n.onNotify, n.deliverer.wakeAll)
	gate := newHandshakeGate(clientaddr.Listener(ln, n.cfg.TrustedProxies), gateLimits{
		handshakes: n.cfg.MaxHandshakes, silent: n.cfg.MaxSilent, silentPerAddress: n.cfg.MaxSilentPerAddress,
		firstByte: n.cfg.FirstByteTimeout, idleAfter: n.cfg.idleAfter,
	}, func(reason string) { n.metrics.silentClosed.WithLabelValues(reason).Inc() })
	n.gate.Store(gate)
	srv := &http.Server{
		ConnState:         gate.connState,
		ConnContext:       gate.connContext,
		Handler:           gate.handling(n.Handler()),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       n.cfg.HTTPTimeout,
		WriteTimeout:      n.cfg.HTTPTimeout,
		IdleTimeout:       2 * n.cfg.HTTPTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(n.log.Handler(), slog.LevelDebug),
		// WebSockets upgrade over HTTP/1.1; net/http would otherwise set
		// up HTTP/2 on the config, which it writes to.
		Protocols: http1Only(),
	}
	if n.cfg.TLS != nil {
		srv.TLSConfig = n.cfg.TLS.Clone() // this server's own: nodes may share one certificate
	}
	served := actors.Serve(srv, gate)
	n.log.Info("connection node serving", "addr", ln.Addr().String(), "region", n.cfg.Node.Region, "tls", n.cfg.TLS != nil,
		"max_sessions", n.cfg.MaxSessions)

	select {
	case <-ctx.Done():
	case <-served.Done():
	case <-bg.Done():
	}

	// Stop accepting, then close every session with 1001, paced.
	n.drainMu.Lock()
	n.draining.Store(true)
	n.drainMu.Unlock()
	shutdownCtx, cancelShutdown := context.WithTimeout(context.WithoutCancel(ctx), n.cfg.DrainTimeout)
	_ = srv.Shutdown(shutdownCtx) // hijacked WebSockets are ours to close
	cancelShutdown()
	n.drain()
	drainCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), n.cfg.DrainTimeout)
	defer cancel()
	n.waitSessions(drainCtx)
	unlisten()

	// Flush the closed sessions' writes, then leave no rows behind.
	stopBackground()
	err := errors.Join(served.Wait(), bg.Wait())
	// Its own deadline: a drain that used all of its time must still leave
	// no rows behind.
	rmCtx, cancelRm := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancelRm()
	if rmErr := n.store.RemoveNode(rmCtx, n.cfg.Node.ID); rmErr != nil {
		n.log.Error("removing the node's lease and presence", "err", rmErr)
	}
	n.log.Info("connection node stopped")
	return err
}

// register takes the lease before any device can connect, retrying while
// the database is away, and clears presence rows an earlier process with
// this id left behind.
func (n *Node) register(ctx context.Context) error {
	err := backoff.Retry(ctx, backoff.Backoff{Min: 100 * time.Millisecond, Max: 5 * time.Second}, func(ctx context.Context) error {
		if _, err := n.store.RenewLease(ctx, n.cfg.Node, n.cfg.LeaseTTL); err != nil {
			return err
		}
		return n.store.ClearNode(ctx, n.cfg.Node.ID)
	}, func(err error, wait time.Duration) {
		n.log.Warn("registering the node; retrying", "err", err, "in", wait)
	})
	if err != nil {
		return fmt.Errorf("registering node %s: %w", n.cfg.Node.ID, err)
	}
	n.leased.Store(true)
	return nil
}

// renewLease keeps the lease alive. A renewal that had to recreate the row
// means the node was reaped while away: it writes its sessions back. After
// any lapse it rescans: while its lease was dead, presence_live hid its
// devices and wake-ups may have gone nowhere.
func (n *Node) renewLease(ctx context.Context) error {
	ticker := time.NewTicker(n.cfg.LeaseTTL / 3)
	defer ticker.Stop()
	lastRenewed := time.Now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
		created, err := n.store.RenewLease(ctx, n.cfg.Node, n.cfg.LeaseTTL)
		if err != nil {
			if time.Since(lastRenewed) > n.cfg.LeaseTTL {
				n.leased.Store(false)
			}
			n.log.Warn("renewing the lease", "err", err)
			continue
		}
		lapsed := time.Since(lastRenewed) > n.cfg.LeaseTTL
		lastRenewed = time.Now()
		n.leased.Store(true)
		if created {
			n.log.Warn("lease was reaped while away; asserting presence again", "sessions", n.hub.len())
			for _, s := range n.hub.all() {
				if err := n.presence.Push(presenceOp{session: s.dbSession(), reassert: true}); err != nil {
					return nil // stopping
				}
			}
		}
		if created || lapsed {
			n.deliverer.wakeAll()
		}
	}
}

// pingSlots is how many parts of PingInterval the node's pings are spread
// over.
const pingSlots = 16

// pinger sends every session a WebSocket ping each PingInterval: one
// goroutine and one ticker for the node, not one per session, and each
// tick pings the sessions of one slot, so 15,000 devices are not pinged in
// one burst. It runs until the sessions are gone (a draining node still
// pings).
func (n *Node) pinger(ctx context.Context) error {
	tick := time.NewTicker(max(n.cfg.PingInterval/pingSlots, time.Millisecond))
	defer tick.Stop()
	for slot := 0; ; slot = (slot + 1) % pingSlots {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		for _, s := range n.hub.slot(slot) {
			s.ping()
		}
	}
}

// onNotify runs on the notifier's goroutine: it only hands work off.
func (n *Node) onNotify(payload string) {
	for _, m := range db.ParseNodeMessages(payload) {
		if m.Job.Job != uuid.Nil {
			n.metrics.jobWakeups.Inc()
			n.deliverer.wakeJob(m.Job)
			continue
		}
		if m.State {
			n.deliverer.wakeState(m.DeviceID)
			continue
		}
		if m.Close != "" {
			n.closeDevice(m.DeviceID, m.Close)
			continue
		}
		if !m.Kick {
			n.deliverer.wake(m.DeviceID)
			continue
		}
		// The node of the newer session logged the replacement.
		if s := n.hub.get(m.DeviceID); s != nil && s.id == m.SessionID {
			go s.disconnect(disconnectReplaced)
		}
	}
}

// Drain pacing: a batch of closes every drainTick, sized to end within
// DrainWindow, and at least drainMinBatch so that a node with few devices
// does not make its shutdown wait the whole window for nothing.
const (
	drainTick     = 100 * time.Millisecond
	drainMinBatch = 50
)

// drain closes every session with 1001 in batches over DrainWindow: the
// other nodes take the devices in steps (each needs a TLS handshake, a
// credentials check and a presence write) rather than in one storm.
func (n *Node) drain() {
	sessions := n.hub.all()
	if len(sessions) == 0 {
		return
	}
	ticks := max(int(n.cfg.DrainWindow/drainTick), 1)
	batch := max((len(sessions)+ticks-1)/ticks, drainMinBatch)
	n.log.Info("draining", "sessions", len(sessions), "window", n.cfg.DrainWindow.String(), "batch", batch, "every", drainTick.String())
	started, total, batches := time.Now(), len(sessions), 0
	defer func() {
		// One line a round, not a batch: a batch goes every drainTick.
		n.log.Info("drained", "closed", total, "batches", batches, "took", time.Since(started).Round(time.Millisecond).String())
	}()
	tick := time.NewTicker(drainTick)
	defer tick.Stop()
	for {
		chunk := sessions[:min(batch, len(sessions))]
		sessions = sessions[len(chunk):]
		n.closeSessions(chunk, disconnectDraining)
		batches++
		if n.onDrainBatch != nil {
			n.onDrainBatch(len(chunk), len(sessions))
		}
		if len(sessions) == 0 {
			return
		}
		<-tick.C
	}
}

// closeSessions closes these sessions, a few at a time so that a node with
// many thousands of them does not stall on one slow peer.
func (n *Node) closeSessions(sessions []*session, d disconnect) {
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	for _, s := range sessions {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			s.disconnect(d)
		})
	}
	wg.Wait()
}

func (n *Node) waitSessions(ctx context.Context) {
	done := make(chan struct{})
	go func() { n.sessions.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		n.log.Warn("sessions still open after the drain timeout; cutting them", "sessions", n.hub.len())
		for _, s := range n.hub.all() {
			s.cut()
		}
		<-done
	}
}

// http1Only is the protocol set of a server that speaks HTTP/1.1 alone.
func http1Only() *http.Protocols {
	var p http.Protocols
	p.SetHTTP1(true)
	return &p
}
