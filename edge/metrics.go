package edge

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchboard-iot/switchboard/internal/command"
	"github.com/switchboard-iot/switchboard/internal/sbmetrics"
)

// metrics are an edge's Prometheus series, labelled with its id.
type metrics struct {
	requests *prometheus.HistogramVec // by route pattern, method and status code
	limited  *prometheus.CounterVec   // requests refused by a limit, by limit
	accepted prometheus.Counter
	// Fleet operations (the edge's background work counts its own: see
	// package maintenance).
	eventsStreamed prometheus.Counter
	jobsCreated    prometheus.Counter
	// roundTrip times, for the commands this edge accepted and then
	// streamed or waited on (SSE or ?wait=) to their final status, the
	// request from its arrival to the final status written to the client:
	// what a client waits, by final status. Commands answered with 202 are
	// not timed: no one here sees them end.
	roundTrip *prometheus.HistogramVec
	// notifyLag times wake-ups that carry their command: from the change's
	// write (the command's newest timestamp, PostgreSQL's clock) to this
	// edge handling the NOTIFY. It covers the writer's commit, its notices
	// batch and the delivery; clock skew between the database and this
	// host shifts it (a negative lag counts as 0).
	notifyLag prometheus.Histogram
	// final counts the commands this edge made final: cancelled, by a
	// client's cancel or its job's (switchboard_commands_final_total,
	// shared with the process's nodes and sweeps).
	final *prometheus.CounterVec

	// reg registers the edge's series under its label.
	reg prometheus.Registerer
}

func newMetrics(reg *prometheus.Registry, edgeID string, waiting func() int, queues map[string]func() int, retries map[string]func() uint64,
	unfinished func(context.Context) (pending, delivered int64, err error)) *metrics {
	m := &metrics{
		requests: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "switchboard_edge_http_request_duration_seconds",
			Help:    "HTTP requests by route pattern, method and status code (a fixed set, else other); streams count until they end.",
			Buckets: []float64{.001, .005, .01, .05, .1, .5, 1, 5, 30, 120},
		}, []string{"route", "method", "code"}),
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_edge_requests_limited_total",
			Help: "Requests answered 429, by limit: key_rate, key_streams, auth_failures, device_queue (a command to a device whose queue of pending commands is full)."}, []string{"limit"}),
		accepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_edge_commands_accepted_total", Help: "Commands stored for delivery."}),
		eventsStreamed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_edge_events_streamed_total", Help: "Device events written to event streams."}),
		jobsCreated: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_edge_jobs_created_total", Help: "Fleet jobs this edge accepted."}),
		roundTrip: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "switchboard_edge_command_round_trip_seconds",
			Help:    "Commands this edge accepted and streamed or waited on to the end: from the request's arrival to its final status written to the client, by final status.",
			Buckets: sbmetrics.LatencyBuckets,
		}, []string{"status"}),
		notifyLag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "switchboard_edge_notify_lag_seconds",
			Help:    "Wake-ups carrying a command: from the command's change written (PostgreSQL's clock) to this edge handling the NOTIFY.",
			Buckets: sbmetrics.LatencyBuckets,
		}),
		reg: prometheus.NewRegistry(), // registered nowhere: a nil reg keeps the series private
	}
	for _, status := range []command.Status{command.Done, command.Failed, command.Expired} {
		m.roundTrip.WithLabelValues(string(status))
	}
	var shared prometheus.Registerer // nil: private
	if reg != nil {
		shared = reg
	}
	m.final = sbmetrics.CommandsFinal(shared)
	if reg != nil {
		m.reg = prometheus.WrapRegistererWith(prometheus.Labels{"edge": edgeID}, reg)
		for name, depth := range queues {
			m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "switchboard_edge_queue_depth", Help: "Writes waiting for the database, by queue: notices (wake-ups to send), inserts (accepted commands not yet stored).",
				ConstLabels: prometheus.Labels{"queue": name}}, func() float64 { return float64(depth()) }))
		}
		for name, n := range retries {
			m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "switchboard_edge_batch_retries_total", Help: "Failed database writes retried, by queue: climbs while the database is away (nothing is dropped; the queue waits).",
				ConstLabels: prometheus.Labels{"queue": name}}, func() float64 { return float64(n()) }))
		}
		waitingGauge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "switchboard_edge_waiting_requests", Help: "Requests and streams waiting on a command."},
			func() float64 { return float64(waiting()) })
		m.reg.MustRegister(m.requests, m.limited, m.accepted, waitingGauge,
			m.roundTrip, m.notifyLag, m.eventsStreamed, m.jobsCreated,
			unfinishedCollector{prometheus.NewDesc("switchboard_edge_commands_unfinished",
				"Commands not yet final, in the database, by status: pending (waiting for their device), delivered (waiting for its reply). Read at each scrape; every edge reports the fleet's figure, so take max().",
				[]string{"status"}, nil), unfinished})
	}
	return m
}

// unfinishedCollector reads the backlog from the database at each scrape:
// it is the fleet's, which no process counts. A read that fails or takes
// over unfinishedTimeout leaves the series out of that scrape (absent,
// rather than a 0 that would read as an empty backlog).
type unfinishedCollector struct {
	desc  *prometheus.Desc
	count func(context.Context) (pending, delivered int64, err error)
}

const unfinishedTimeout = 2 * time.Second

func (c unfinishedCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c unfinishedCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), unfinishedTimeout)
	defer cancel()
	pending, delivered, err := c.count(ctx)
	if err != nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(pending), "pending")
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(delivered), "delivered")
}

// instrument observes each request under labels from fixed sets, whatever
// the client sends: the chi route pattern (ids in paths are not label
// values) or "unmatched", the method if it is a standard one or else
// "OTHER", and the status code if it is one of a fixed set (statusCodes)
// or else "other". A label taken from the request as it
// came would let a client create series at will.
func (m *metrics) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		next.ServeHTTP(ww, r)
		route := chi.RouteContext(r.Context()).RoutePattern()
		if route == "" {
			route = "unmatched"
		}
		m.requests.WithLabelValues(route, methodLabel(r.Method), statusCode(ww.Status())).Observe(time.Since(start).Seconds())
	})
}

func methodLabel(method string) string {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodConnect, http.MethodOptions, http.MethodTrace:
		return method
	}
	return "OTHER"
}

// statusCodes are the statuses the API and the console answer, each kept
// as its own label value so that, say, 401 and 403 rates by route can be
// watched; any other status is "other". The set is fixed: a label value
// taken from an arbitrary status would let a handler's bug create series.
var statusCodes = func() map[int]string {
	m := map[int]string{}
	for _, code := range []int{
		101, 200, 201, 202, 204, 206,
		301, 302, 303, 304, 307, 308,
		400, 401, 403, 404, 405, 406, 408, 409, 410, 411, 412, 413, 414, 415, 416, 421, 422, 428, 429, 431,
		500, 501, 502, 503, 504,
	} {
		m[code] = strconv.Itoa(code)
	}
	return m
}()

// statusCode is the code label for status: the code itself when it is in
// statusCodes, else "other"; a handler that wrote nothing answered 200.
func statusCode(status int) string {
	if status == 0 {
		return "200"
	}
	if code, ok := statusCodes[status]; ok {
		return code
	}
	return "other"
}
