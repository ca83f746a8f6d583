// Package edge is Switchboard's stateless HTTP API: clients send devices
// commands and follow them to their outcome over Server-Sent Events or a
// plain wait. Any edge can serve any request; what one edge holds in memory
// (the waiting streams) is rebuilt from the tables when it restarts.
package edge

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/actors"
	"github.com/switchboard-iot/switchboard/internal/authguard"
	"github.com/switchboard-iot/switchboard/internal/batch"
	"github.com/switchboard-iot/switchboard/internal/clientaddr"
	"github.com/switchboard-iot/switchboard/internal/lograte"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

// Config is what an edge needs. Zero values take the defaults noted.
type Config struct {
	ID       string // names the edge's LISTEN channel and commands.reply_to
	Store    *db.Store
	Notifier *db.Notifier // the process's listener, shared with other components
	Log      *slog.Logger
	// LogInterval is the window in which the edge logs at most
	// RefusalLogs requests refused for their credentials (401, 403, 429
	// for an address that failed too often) before it only counts them:
	// a minute and 20 by default (failedauth.go).
	LogInterval time.Duration
	RefusalLogs int
	// Metrics is the registry the edge's metrics join; the process serves
	// it on its ops listener, never on the edge's public port.
	Metrics *prometheus.Registry
	// Hosts are the names clients reach the edge by ("api.example.com",
	// or "host:port" for HTTPS on another port). A request its proxy says
	// came over plain HTTP is redirected to HTTPS on its host only when
	// the host is one of these, and answered 421 otherwise.
	Hosts []string

	// HTTPChallenge answers an ACME HTTP-01 challenge for the connection
	// nodes, from the shared certificate storage, and reports whether it
	// did (certs.HTTPChallenges); nil answers none.
	HTTPChallenge func(http.ResponseWriter, *http.Request) bool
	// SessionCookie names the web console's session cookie, which the API
	// takes in place of a key ("": none; see Mount).
	SessionCookie string

	// SweepInterval is how often the sweeper (package maintenance, run
	// beside every edge) fails or expires overdue commands: a stream reads
	// an overdue command itself once two sweeps should have woken it. The
	// composition root sets it from the sweeper's (maintenance.Config).
	SweepInterval time.Duration
	// JobCreated is called after a job was stored, so that the job
	// runner (package maintenance) steps it at once, not at its next tick;
	// the composition root sets it. It must not block.
	JobCreated func()
	KeepAlive  time.Duration // 15s: SSE comment sent on quiet streams
	MaxWait    time.Duration // 60s: longest ?wait= honoured
	// JobStreamInterval is how often a job's event stream reads it (1s).
	JobStreamInterval time.Duration
	// APIKeyCache is how long a checked API key is trusted without a
	// lookup: 30s. A revocation drops it at once (db.KeysChannel); this
	// bounds what a revocation missed while the listener was away costs.
	APIKeyCache  time.Duration
	DrainTimeout time.Duration // 10s: how long shutdown waits for requests

	// HTTP deadlines (see deadlines.go). ReadTimeout bounds receiving a
	// request's body (30s; the headers have 10s); WriteTimeout writing a
	// response, and each event of a stream (30s); IdleTimeout how long a
	// kept-alive connection may wait for its next request (120s).
	ReadTimeout  time.Duration
	WriteTimeout time.Duration
	IdleTimeout  time.Duration

	// Limits per API key (limits.go): KeyRate requests a second (100) with
	// bursts of KeyBurst (200), and KeyStreams event streams open at once
	// (100). A negative value turns that limit off.
	KeyRate    float64
	KeyBurst   int
	KeyStreams int
	// DeviceQueue caps a device's pending commands (100): past it a
	// command to the device is refused, 429 device-queue-full, and nothing
	// is stored. A negative value turns the cap off. The job runner beside
	// the edge takes the same cap (maintenance.Config.DeviceQueue).
	DeviceQueue int
	// AuthGuard throttles failed API key look-ups per source address and
	// remembers failed keys (see internal/authguard for its defaults).
	AuthGuard authguard.Config
	// TrustedProxies are the peers whose Fly-Client-IP header names the
	// client (for the auth guard); none by default: the client is the peer.
	TrustedProxies clientaddr.Trusted
	// BootstrapKeySHA256 is the hex SHA-256 of a key to store with every
	// scope when the edge starts, unless a key has that hash already: the
	// deployment's first admin key (bootstrap.go). "": none.
	BootstrapKeySHA256 string
	// WebhooksAllowHTTP and WebhooksAllowPrivate let a webhook's url be
	// plain http, or name a loopback, link-local or private address
	// (development and tests; maintenance's delivery client takes the
	// same flags).
	WebhooksAllowHTTP, WebhooksAllowPrivate bool
}

// Default limits per API key.
const (
	DefaultKeyRate    = 100.0 // requests a second
	DefaultKeyBurst   = 200   // requests at once
	DefaultKeyStreams = 100   // event streams open at once
)

// DefaultDeviceQueue is a device's cap of pending commands: an offline
// device's backlog is bounded in count, as each command's ttl bounds it in
// time.
const DefaultDeviceQueue = db.DefaultQueueCap

// queueFullRetryAfter is the Retry-After of a command refused for a full
// queue: room comes back as the device takes its commands once it
// connects, or as they expire or are cancelled, none of which the edge can
// foresee; 30 s is a polite pace for a client to try again.
const queueFullRetryAfter = 30 * time.Second

// Edge is one edge instance.
type Edge struct {
	cfg     Config
	log     *slog.Logger
	store   *db.Store
	replies *replyRouter
	events  *eventHub                 // device events for this edge's event streams
	state   *stateHub                 // wakes this edge's state streams
	notices *batch.Batcher[db.Notice] // wake-ups for nodes and edges, after their writes
	inserts *inserter                 // group commit of accepted commands
	metrics *metrics

	keys   *keyCache // checked API keys
	grants *grants   // open streams by the credential that opened them

	limits *keyLimits       // per API key; nil when both are off
	guard  *authguard.Guard // failed API key look-ups
	// refusals logs requests refused for their credentials, a few a
	// LogInterval (failedauth.go).
	refusals *lograte.Limiter

	bootstrap *bootstrap // the first admin key, stored at start

	pages []func(chi.Router) // routes mounted beside the API (Mount)
	hosts map[string]string  // Config.Hosts by hostname: where plain HTTP is redirected

	// closing ends open streams when the edge shuts down: their clients
	// resume on another edge with Last-Event-ID.
	closing   chan struct{}
	closeOnce sync.Once
}

// withDefaults fills what the caller left zero.
func (c Config) withDefaults() Config {
	c.JobStreamInterval = cmp.Or(c.JobStreamInterval, time.Second)
	c.KeepAlive = cmp.Or(c.KeepAlive, 15*time.Second)
	c.MaxWait = cmp.Or(c.MaxWait, 60*time.Second)
	c.APIKeyCache = cmp.Or(c.APIKeyCache, 30*time.Second)
	c.DrainTimeout = cmp.Or(c.DrainTimeout, 10*time.Second)
	c.ReadTimeout = cmp.Or(c.ReadTimeout, 30*time.Second)
	c.WriteTimeout = cmp.Or(c.WriteTimeout, 30*time.Second)
	c.IdleTimeout = cmp.Or(c.IdleTimeout, 120*time.Second)
	c.KeyRate = cmp.Or(c.KeyRate, DefaultKeyRate)
	c.KeyBurst = cmp.Or(c.KeyBurst, DefaultKeyBurst)
	c.KeyStreams = cmp.Or(c.KeyStreams, DefaultKeyStreams)
	c.DeviceQueue = cmp.Or(c.DeviceQueue, DefaultDeviceQueue)
	c.Log = cmp.Or(c.Log, slog.Default())
	c.LogInterval = cmp.Or(c.LogInterval, time.Minute)
	c.RefusalLogs = cmp.Or(c.RefusalLogs, 20)
	if c.JobCreated == nil {
		c.JobCreated = func() {}
	}
	return c
}

// New makes an edge; Run starts it.
func New(cfg Config) (*Edge, error) {
	if !db.ValidChannelID(cfg.ID) {
		return nil, fmt.Errorf("edge id %q: want 1-48 letters, digits, '.', '_' or '-'", cfg.ID)
	}
	cfg = cfg.withDefaults()
	log := cfg.Log.With("edge", cfg.ID)
	keys := newKeyCache(cfg.APIKeyCache)
	e := &Edge{
		cfg:      cfg,
		log:      log,
		store:    cfg.Store,
		replies:  newReplyRouter(cfg.Store, log),
		events:   newEventHub(cfg.Store, log),
		state:    newStateHub(),
		keys:     keys,
		grants:   newGrants(cfg.Store, keys, log),
		limits:   newKeyLimits(cfg.KeyRate, cfg.KeyBurst, cfg.KeyStreams),
		guard:    authguard.New(cfg.AuthGuard),
		refusals: lograte.New(log, slog.LevelInfo, "request refused", cfg.RefusalLogs, cfg.LogInterval),
		hosts:    make(map[string]string),
		closing:  make(chan struct{}),
	}
	var err error
	if e.bootstrap, err = newBootstrap(cfg.BootstrapKeySHA256); err != nil {
		return nil, err
	}
	for _, h := range cfg.Hosts {
		if u, err := url.Parse("https://" + h); err != nil || u.Host != h || h == "" {
			return nil, fmt.Errorf("edge host %q: want a host name, or host:port", h)
		}
		e.hosts[hostname(h)] = h
	}
	e.notices = batch.New("notices", 4096, 1000, log, e.store.Notify, db.IsRefused)
	e.inserts = newInserter(cfg.Store)
	e.metrics = newMetrics(cfg.Metrics, cfg.ID, e.replies.waiting, map[string]func() int{
		"notices": e.notices.Len, "inserts": e.inserts.waiting,
	}, map[string]func() uint64{"notices": e.notices.Retries}, e.store.Unfinished)
	e.replies.lag = e.metrics.notifyLag
	return e, nil
}

// Mount adds routes beside the API, such as the web console's pages; the
// composition root calls it before Run. They get the API's middleware
// (panics, metrics, deadlines, the HTTPS redirect) but not its keys.
func (e *Edge) Mount(register func(chi.Router)) { e.pages = append(e.pages, register) }

// Run serves the API on ln until ctx is done, then ends open streams,
// waits for requests to finish and stops its background actors.
func (e *Edge) Run(ctx context.Context, ln net.Listener) error {
	bg, stopBackground := actors.Group(ctx, e.replies.run, e.notices.Run, e.inserts.run, e.events.run, e.grants.run, e.storeBootstrapKey)
	unlisten := e.cfg.Notifier.Listen(db.EdgeChannel(e.cfg.ID), e.replies.onNotify, e.replies.onReady)
	defer unlisten()
	// A revocation or sign-out ends the streams it authorized too; one
	// missed while the listener was away is found by looking them up.
	unlistenKeys := e.cfg.Notifier.Listen(db.KeysChannel, e.onKeysNotice, func() {
		e.keys.drop()
		e.grants.recheck(lookUpAll)
	})
	defer unlistenKeys()
	// A listener that reconnected may have missed a wake-up: read anyway.
	unlistenEvents := e.cfg.Notifier.Listen(db.EventsChannel, func(string) { e.events.wake() }, e.events.wake)
	defer unlistenEvents()
	unlistenState := e.cfg.Notifier.Listen(db.StateChannel, e.state.onNotify, e.state.wakeAll)
	defer unlistenState()
	// No server-wide ReadTimeout or WriteTimeout: they would cut streams
	// and long waits. Each request gets its own deadlines (deadlines.go).
	srv := &http.Server{
		Handler:           e.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       e.cfg.IdleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(e.log.Handler(), slog.LevelDebug),
	}
	served := actors.Serve(srv, ln)
	e.log.Info("edge serving", "addr", ln.Addr().String())

	select {
	case <-ctx.Done():
	case <-served.Done():
	case <-bg.Done():
	}
	e.closeOnce.Do(func() { close(e.closing) })
	drainCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.cfg.DrainTimeout)
	defer cancel()
	if err := srv.Shutdown(drainCtx); err != nil {
		e.log.Warn("requests still open after the drain timeout", "err", err)
		_ = srv.Close()
	}
	// Commands accepted by the last requests are still woken: the notices
	// batcher drains its queue before it stops.
	stopBackground()
	err := errors.Join(served.Wait(), bg.Wait())
	e.refusals.Stop() // logs the count of refusals it did not log
	e.log.Info("edge stopped")
	return err
}

// onKeysNotice handles an sb_keys notice (a revoked key's id, or a
// sign-out), and a revocation this edge made, at once.
func (e *Edge) onKeysNotice(keyID string) {
	e.log.Info("an API key was revoked or a console session signed out; dropping the cached keys", "notice", keyID)
	e.keys.drop()
	e.grants.onKeysNotice(keyID)
}

// NewID returns an edge id: the machine's id when it has one, and a random
// suffix, since every process is a new edge with its own waiting streams.
func NewID(machineID string) string {
	if machineID == "" {
		machineID = "edge"
	}
	return fmt.Sprintf("%.32s-%s", machineID, secret.RandomHex(4))
}
