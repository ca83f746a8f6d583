package loadgen

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/time/rate"

	"github.com/switchboard-iot/switchboard/device"
	"github.com/switchboard-iot/switchboard/internal/certs"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

// EchoCommand is the command the load generator sends, and its devices
// answer (with -answer) with {"echo": args}.
const EchoCommand = "echo"

// FleetConfig says how a fleet's devices connect. It is also what a parent
// sends a worker process (as JSON), with the worker's share of the devices.
type FleetConfig struct {
	Nodes []string `json:"nodes"` // device i connects to Nodes[(Offset+i) % len(Nodes)]
	// Failover are the nodes a device dials once its node failed it (a
	// refused dial, or a session lost), in turn, as a load balancer in
	// front of the nodes would send it. They must serve the same
	// certificate and name as Nodes (the nodes share theirs).
	Failover []string `json:"failover,omitempty"`
	CAFile   string   `json:"ca_file,omitempty"`
	Insecure bool     `json:"insecure,omitempty"`
	// Answer registers the echo command; without it a device only keeps
	// its session (it answers WebSocket pings).
	Answer bool `json:"answer,omitempty"`
	// Ramp is how many devices start connecting a second (0: all at once).
	Ramp float64 `json:"ramp"`
	// SourceAddrs, when set, are the local addresses device i binds its
	// socket to, SourceAddrs[(Offset+i) % len], each having its own
	// ephemeral ports.
	SourceAddrs []netip.Addr `json:"source_addrs,omitempty"`
	// Offset is the index of the fleet's first device in the whole run.
	Offset int `json:"offset"`
}

// DeviceCounts are a fleet's connection counters. A worker reports its
// own; the parent adds them up.
type DeviceCounts struct {
	Devices int `json:"devices"` // devices held
	// Ramped counts devices whose first attempt to connect has ended, well
	// or not.
	Ramped        int64            `json:"ramped"`
	Connected     int64            `json:"connected"` // sessions opened, reconnections included
	Failed        int64            `json:"failed"`    // attempts to connect that failed
	FailedBy      map[string]int64 `json:"failed_by,omitempty"`
	Open          int64            `json:"open"`        // sessions open now (in a summary: when the run ended)
	Disconnects   int64            `json:"disconnects"` // sessions that ended before the run did
	DisconnectsBy map[string]int64 `json:"disconnects_by,omitempty"`
	GaveUp        int64            `json:"gave_up"`  // devices whose credentials were refused (401): they stop
	Answered      int64            `json:"answered"` // commands answered
	// Desired counts the desired-state documents the devices were given
	// (OnDesired: each newer than the last); DesiredVersions sums each
	// device's last version given, to compare with the versions stored
	// (every device got its latest, or not).
	Desired         int64 `json:"desired"`
	DesiredVersions int64 `json:"desired_versions"`
}

// Add adds o's counters to c.
func (c *DeviceCounts) Add(o DeviceCounts) {
	c.Devices += o.Devices
	c.Ramped += o.Ramped
	c.Connected += o.Connected
	c.Failed += o.Failed
	c.Open += o.Open
	c.Disconnects += o.Disconnects
	c.GaveUp += o.GaveUp
	c.Answered += o.Answered
	c.Desired += o.Desired
	c.DesiredVersions += o.DesiredVersions
	c.FailedBy = addKinds(c.FailedBy, o.FailedBy)
	c.DisconnectsBy = addKinds(c.DisconnectsBy, o.DisconnectsBy)
}

func addKinds(to, from map[string]int64) map[string]int64 {
	for k, n := range from {
		if to == nil {
			to = make(map[string]int64)
		}
		to[k] += n
	}
	return to
}

// Fleet holds devices connected, one device.Client each, from this process.
type Fleet struct {
	cfg   FleetConfig
	tls   *tls.Config
	creds []secret.Credential
	log   *slog.Logger

	ramped, connected, failed, open, disconnects, gaveUp, answered atomic.Int64
	desired, desiredVersions                                       atomic.Int64

	mu            sync.Mutex // guards the following
	failedBy      map[string]int64
	disconnectsBy map[string]int64
	down          map[string]time.Time // with -failover: node addresses that refused, until when they are skipped
}

// downFor is how long a node that refused a connection is skipped.
const downFor = 5 * time.Second

// pick returns hosts[start % len], or the next one not down.
func (f *Fleet) pick(hosts []string, start int) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	for i := range hosts {
		h := hosts[(start+i)%len(hosts)]
		if !now.Before(f.down[h]) {
			return h
		}
	}
	return hosts[start%len(hosts)] // all down: try anyway
}

func (f *Fleet) markDown(host string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down == nil {
		f.down = make(map[string]time.Time)
	}
	f.down[host] = time.Now().Add(downFor)
}

// NewFleet prepares a fleet of the devices creds.
func NewFleet(cfg FleetConfig, creds []secret.Credential, log *slog.Logger) (*Fleet, error) {
	if len(cfg.Nodes) == 0 {
		return nil, errors.New("no node to connect to")
	}
	tlsCfg, err := certs.Client(cfg.CAFile, cfg.Insecure)
	if err != nil {
		return nil, err
	}
	return &Fleet{cfg: cfg, tls: tlsCfg, creds: creds, log: log,
		failedBy: make(map[string]int64), disconnectsBy: make(map[string]int64)}, nil
}

// Run starts the devices at the ramp's rate and keeps them connected until
// ctx ends; it returns nil once every device has closed its session.
func (f *Fleet) Run(ctx context.Context) error {
	limit := rate.Inf
	burst := 1
	if f.cfg.Ramp > 0 {
		// Start devices in small batches: a timer per device would not keep up.
		limit, burst = rate.Limit(f.cfg.Ramp), max(1, int(f.cfg.Ramp/100))
	}
	ramp := rate.NewLimiter(limit, burst)
	var devices sync.WaitGroup
	for i, c := range f.creds {
		if ramp.Wait(ctx) != nil {
			break
		}
		devices.Go(func() { f.runDevice(ctx, f.cfg.Offset+i, c) })
	}
	devices.Wait()
	return nil
}

// runDevice keeps device n (of the whole run) connected until ctx ends or
// its credentials are refused.
func (f *Fleet) runDevice(ctx context.Context, n int, c secret.Credential) {
	first := true
	ramped := func() {
		if first {
			first = false
			f.ramped.Add(1)
		}
	}
	cfg := device.Config{
		URL: f.cfg.Nodes[n%len(f.cfg.Nodes)], ID: c.ID, Secret: c.Secret, TLS: f.tls, Log: f.log,
		Dedup: 16, // commands are never repeated here; the SDK's 1024 would cost ~70 kB a device
		OnConnect: func() {
			ramped()
			f.connected.Add(1)
			f.open.Add(1)
		},
		OnDisconnect: func(err error) {
			f.open.Add(-1)
			if ctx.Err() == nil {
				f.disconnects.Add(1)
				f.count(f.disconnectsBy, disconnectKind(err))
			}
		},
		OnDialError: func(err error) {
			ramped()
			f.failed.Add(1)
			f.count(f.failedBy, dialKind(err))
		},
	}
	dialer := &net.Dialer{Timeout: 10 * time.Second}
	if len(f.cfg.SourceAddrs) > 0 {
		dialer.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(f.cfg.SourceAddrs[n%len(f.cfg.SourceAddrs)], 0))
	}
	cfg.NetDialContext = dialer.DialContext
	if len(f.cfg.Failover) > 0 {
		// Once its node failed it, a device dials its node and the
		// failover nodes in turn, starting from a place of its own so
		// that the fleet spreads, and skipping those that refused a
		// connection lately, as a load balancer's health check would.
		var failed atomic.Int64
		hosts := []string{hostPort(cfg.URL)}
		for _, u := range f.cfg.Failover {
			hosts = append(hosts, hostPort(u))
		}
		onDisconnect, onDialError := cfg.OnDisconnect, cfg.OnDialError
		cfg.OnDisconnect = func(err error) { failed.Add(1); onDisconnect(err) }
		cfg.OnDialError = func(err error) { failed.Add(1); onDialError(err) }
		cfg.NetDialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			if k := failed.Load(); k > 0 {
				addr = f.pick(hosts, n+int(k))
			}
			conn, err := dialer.DialContext(ctx, network, addr)
			if errors.Is(err, syscall.ECONNREFUSED) {
				f.markDown(addr)
			}
			return conn, err
		}
	}
	d := device.New(cfg)
	if f.cfg.Answer {
		d.Handle(EchoCommand, func(_ context.Context, args json.RawMessage) (any, error) {
			f.answered.Add(1)
			return map[string]json.RawMessage{"echo": args}, nil
		})
	}
	// Counted for the state benchmark: the SDK passes only newer
	// versions, so adding each step sums the devices' last versions.
	var last int64
	d.OnDesired(func(_ json.RawMessage, version int64) {
		f.desired.Add(1)
		f.desiredVersions.Add(version - last)
		last = version
	})
	if err := d.Run(ctx); errors.Is(err, device.ErrUnauthorized) {
		f.gaveUp.Add(1)
	}
}

func (f *Fleet) count(kinds map[string]int64, kind string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	kinds[kind]++
}

// Counts is a snapshot of the fleet's counters.
func (f *Fleet) Counts() DeviceCounts {
	c := DeviceCounts{
		Devices:     len(f.creds),
		Ramped:      f.ramped.Load(),
		Connected:   f.connected.Load(),
		Failed:      f.failed.Load(),
		Open:        f.open.Load(),
		Disconnects: f.disconnects.Load(),
		GaveUp:      f.gaveUp.Load(),
		Answered:    f.answered.Load(),

		Desired:         f.desired.Load(),
		DesiredVersions: f.desiredVersions.Load(),
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	c.FailedBy = addKinds(nil, f.failedBy)
	c.DisconnectsBy = addKinds(nil, f.disconnectsBy)
	return c
}

// hostPort is the host:port a ws:// or wss:// URL dials.
func hostPort(rawURL string) string {
	u, err := url.Parse(rawURL)
	switch {
	case err != nil:
		return rawURL
	case u.Port() != "":
		return u.Host
	case u.Scheme == "ws":
		return net.JoinHostPort(u.Hostname(), "80")
	}
	return net.JoinHostPort(u.Hostname(), "443")
}
