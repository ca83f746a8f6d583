package app

import (
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchboard-iot/switchboard/db"
)

// A process's own series, the same on both tiers: its database pool and
// its listener connection. They carry no edge or node label: one process
// has one pool and one listener (switchboard dev runs several parts on
// them), and the scraper's instance label names the process.

// poolCollector reads pgxpool's statistics at each scrape: the pool keeps
// them itself, so nothing is counted on the hot path.
type poolCollector struct {
	pool *pgxpool.Pool

	acquired, idle, total, max, constructing *prometheus.Desc
	acquires, emptyAcquires, canceled        *prometheus.Desc
	acquireSeconds, emptyWaitSeconds         *prometheus.Desc
}

func newPoolCollector(pool *pgxpool.Pool) *poolCollector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("switchboard_db_pool_"+name, help, nil, nil)
	}
	return &poolCollector{
		pool:         pool,
		acquired:     d("acquired_conns", "Connections in use by the process now."),
		idle:         d("idle_conns", "Connections open and idle now."),
		total:        d("total_conns", "Connections open now (acquired, idle and being opened)."),
		max:          d("max_conns", "The most connections the pool opens (pool_max_conns)."),
		constructing: d("constructing_conns", "Connections being opened now."),
		acquires:     d("acquires_total", "Connections acquired from the pool."),
		emptyAcquires: d("empty_acquires_total",
			"Acquires that found no idle connection and waited for one to be opened or released: the pool is too small when this grows with load."),
		canceled:       d("canceled_acquires_total", "Acquires given up because their context ended first."),
		acquireSeconds: d("acquire_seconds_total", "Time spent acquiring connections, all acquires together."),
		emptyWaitSeconds: d("empty_acquire_wait_seconds_total",
			"Time acquires spent waiting because no connection was idle: the pool's saturation."),
	}
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.acquired, c.idle, c.total, c.max, c.constructing,
		c.acquires, c.emptyAcquires, c.canceled, c.acquireSeconds, c.emptyWaitSeconds} {
		ch <- d
	}
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.pool.Stat()
	gauge := func(d *prometheus.Desc, v float64) { ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v) }
	counter := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v)
	}
	gauge(c.acquired, float64(s.AcquiredConns()))
	gauge(c.idle, float64(s.IdleConns()))
	gauge(c.total, float64(s.TotalConns()))
	gauge(c.max, float64(s.MaxConns()))
	gauge(c.constructing, float64(s.ConstructingConns()))
	counter(c.acquires, float64(s.AcquireCount()))
	counter(c.emptyAcquires, float64(s.EmptyAcquireCount()))
	counter(c.canceled, float64(s.CanceledAcquireCount()))
	counter(c.acquireSeconds, s.AcquireDuration().Seconds())
	counter(c.emptyWaitSeconds, s.EmptyAcquireWaitTime().Seconds())
}

// listenerMetrics are the series of the process's LISTEN connection.
// Connects past the first are reconnects: after each, every listener
// rescans its tables, so a climbing rate means wake-ups lost and load added.
func listenerMetrics(n *db.Notifier) []prometheus.Collector {
	return []prometheus.Collector{
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "switchboard_db_listener_connects_total",
			Help: "Times the LISTEN connection was opened: 1 for a process that never lost it, more after reconnects."},
			func() float64 { return float64(n.Connections()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "switchboard_db_listener_up",
			Help: "1 while the LISTEN connection is open and listening, 0 while it reconnects."},
			func() float64 {
				if n.Up() {
					return 1
				}
				return 0
			}),
	}
}
