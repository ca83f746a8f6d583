// Package maintenance is the edges' background work, what is not request
// handling:
//   - the sweeper (every SweepInterval, 1s): fails delivered commands whose
//     device did not reply in time, expires those never delivered in their
//     ttl, and gives back the deliveries of nodes whose lease lapsed; every
//     minute it also reaps nodes dead for 5 minutes and purges idempotency
//     keys past their window;
//   - retention (every minute): deletes final commands, finished jobs,
//     events and presence history older than their keep, and trims each
//     device to its newest EventsPerDevice events;
//   - the job runner (every JobInterval, 250ms, and at once when Poke says a
//     job was created): starts the scheduled jobs whose start_at came, and
//     steps each running job: creates its due batch (retries first), aborts
//     or finishes it;
//   - the webhook deliverer (webhooks.go): sends the outbox's due
//     deliveries, signed, retrying failures with backoff.
//
// Every edge process runs it, next to its edge (the composition root starts
// both). That is safe because each piece of work claims its rows with FOR
// UPDATE SKIP LOCKED, or with statements whose effect is the same whoever
// runs them: each row goes to one edge, and an edge that stops leaves its
// share to the others. The SQL is in package db; the decisions (the job
// abort rule, the rollout's pace, the retries' backoff) are here.
package maintenance

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/actors"
	"github.com/switchboard-iot/switchboard/internal/batch"
)

// Config is what maintenance needs. Zero values take the defaults noted.
type Config struct {
	Store *db.Store
	Log   *slog.Logger
	// Metrics registers the series, labelled with EdgeID (their names are
	// the edge's: switchboard_edge_…); nil keeps them private.
	Metrics *prometheus.Registry
	EdgeID  string // the edge this runs beside: its metrics' and logs' label

	SweepInterval time.Duration // 1s: how often overdue commands are failed or expired
	// JobInterval is how often the job runner steps the running jobs
	// (250ms): a job's batches are its rate times this.
	JobInterval time.Duration
	// DeviceQueue is the cap of a device's pending commands (100; negative:
	// none): a job's target whose device has that many gets its command
	// failed with db.QueueFullError, not queued. The composition root sets
	// it from the edge's (edge.Config.DeviceQueue).
	DeviceQueue int

	// Retention (retention.go): final commands are deleted RetainCommands
	// after they ended (30 days), events RetainEvents after they arrived
	// (7 days), and a device keeps at most EventsPerDevice events (10,000).
	// A negative value keeps them forever.
	RetainCommands  time.Duration
	RetainEvents    time.Duration
	EventsPerDevice int

	// Webhooks (webhooks.go): deliveries are claimed every WebhookInterval
	// (250ms) and when one ends; WebhookBackoff (5s) is the retries'
	// base, WebhookGiveUp (24h) how long a delivery is retried and an
	// endpoint may fail before it is disabled, WebhookConcurrency (4) the
	// deliveries in flight per endpoint. WebhooksAllowHTTP and
	// WebhooksAllowPrivate relax the client's safety (package webhook),
	// for development and tests.
	WebhookInterval      time.Duration
	WebhookBackoff       time.Duration
	WebhookGiveUp        time.Duration
	WebhookConcurrency   int
	WebhooksAllowHTTP    bool
	WebhooksAllowPrivate bool
}

func (c Config) withDefaults() Config {
	c.SweepInterval = cmp.Or(c.SweepInterval, time.Second)
	c.JobInterval = cmp.Or(c.JobInterval, 250*time.Millisecond)
	c.DeviceQueue = cmp.Or(c.DeviceQueue, db.DefaultQueueCap)
	c.RetainCommands = cmp.Or(c.RetainCommands, DefaultRetainCommands)
	c.RetainEvents = cmp.Or(c.RetainEvents, DefaultRetainEvents)
	c.EventsPerDevice = cmp.Or(c.EventsPerDevice, DefaultEventsPerDevice)
	c.WebhookInterval = cmp.Or(c.WebhookInterval, 250*time.Millisecond)
	c.WebhookBackoff = cmp.Or(c.WebhookBackoff, DefaultWebhookBackoff)
	c.WebhookGiveUp = cmp.Or(c.WebhookGiveUp, DefaultWebhookGiveUp)
	c.WebhookConcurrency = cmp.Or(c.WebhookConcurrency, DefaultWebhookConcurrency)
	c.Log = cmp.Or(c.Log, slog.Default())
	return c
}

// Maintainer does one edge process's share of the background work.
type Maintainer struct {
	cfg     Config
	log     *slog.Logger
	store   *db.Store
	notices *batch.Batcher[db.Notice] // wake-ups for nodes and edges, after the writes
	metrics *metrics

	poke chan struct{} // cap 1: a job was created; step the jobs now
}

// New makes a maintainer; Run starts it.
func New(cfg Config) *Maintainer {
	cfg = cfg.withDefaults()
	log := cfg.Log.With("edge", cfg.EdgeID)
	return &Maintainer{
		cfg:     cfg,
		log:     log,
		store:   cfg.Store,
		notices: batch.New("notices", 4096, 1000, log, cfg.Store.Notify, db.IsRefused),
		metrics: newMetrics(cfg.Metrics, cfg.EdgeID),
		poke:    make(chan struct{}, 1),
	}
}

// SweepInterval is how often the sweeper runs: an edge's streams read an
// overdue command themselves when a sweep should have woken them.
func (m *Maintainer) SweepInterval() time.Duration { return m.cfg.SweepInterval }

// Poke has the job runner look at once: a new job's first batch need not
// wait for the next tick. It never waits.
func (m *Maintainer) Poke() {
	select {
	case m.poke <- struct{}{}:
	default:
	}
}

// Run does the work until ctx is done or a part of it fails. It stops the
// work before the batcher of its wake-ups, which then sends what is
// queued: every write's wake-up goes out, after the write committed.
func (m *Maintainer) Run(ctx context.Context) error {
	notices, stopNotices := actors.Group(ctx, m.notices.Run)
	work, stopWork := actors.Group(ctx, m.sweep, m.retain, m.runJobs, m.deliverWebhooks)
	select {
	case <-ctx.Done():
	case <-work.Done():
	case <-notices.Done():
	}
	stopWork()
	err := work.Wait()
	stopNotices()
	return errors.Join(err, notices.Wait())
}

// outage logs a loop whose work fails once, not every beat, and its end.
type outage struct {
	log     *slog.Logger
	doing   string // what the loop does: "sweeping commands"
	failing bool
}

// failed notes a beat that failed; one cut short by shutdown is not logged.
func (o *outage) failed(ctx context.Context, err error) {
	if ctx.Err() == nil && !o.failing {
		o.log.Warn(o.doing+"; retrying every beat", "err", err)
	}
	o.failing = true
}

// worked notes a beat that worked.
func (o *outage) worked() {
	if o.failing {
		o.log.Info(o.doing + " again")
		o.failing = false
	}
}
