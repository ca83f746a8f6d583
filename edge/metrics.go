package edge

import (
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are an edge's Prometheus series, labelled with its id.
type metrics struct {
	requests *prometheus.HistogramVec // by route pattern, method and status class
	limited  *prometheus.CounterVec   // requests refused by a limit, by limit
	accepted prometheus.Counter
	swept    prometheus.Counter
	requeued prometheus.Counter
	// Fleet operations.
	eventsStreamed prometheus.Counter
	purged         *prometheus.CounterVec // rows retention deleted, by table

	jobsCreated prometheus.Counter
	jobBatches  prometheus.Counter
	jobCommands prometheus.Counter
	jobsRunning prometheus.Gauge
}

func newMetrics(reg *prometheus.Registry, edgeID string, waiting func() int) *metrics {
	m := &metrics{
		requests: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "switchboard_edge_http_request_duration_seconds",
			Help:    "HTTP requests by route pattern, method and status class; streams count until they end.",
			Buckets: []float64{.001, .005, .01, .05, .1, .5, 1, 5, 30, 120},
		}, []string{"route", "method", "code"}),
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_edge_requests_limited_total",
			Help: "Requests answered 429, by limit: key_rate, key_streams, auth_failures."}, []string{"limit"}),
		accepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_edge_commands_accepted_total", Help: "Commands stored for delivery."}),
		swept: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_edge_commands_swept_total", Help: "Commands this edge failed (no reply in time) or expired (never delivered)."}),
		requeued: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_edge_devices_requeued_total", Help: "Devices whose deliveries this edge gave back because their node's lease lapsed."}),
		eventsStreamed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_edge_events_streamed_total", Help: "Device events written to event streams."}),
		purged: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_edge_retention_deleted_total", Help: "Rows retention deleted, by table: jobs, commands, events (by age), events_capped (over a device's cap)."}, []string{"table"}),
		jobsCreated: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_edge_jobs_created_total", Help: "Fleet jobs this edge accepted."}),
		jobBatches: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_edge_job_batches_total", Help: "Batches of fleet job commands this edge's runner created (each wakes each of its nodes once)."}),
		jobCommands: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_edge_job_commands_created_total", Help: "Commands this edge's job runner created."}),
		jobsRunning: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "switchboard_edge_jobs_running", Help: "Fleet jobs running, in the whole database (read every 5s; the same on every edge)."}),
	}
	if reg != nil {
		waitingGauge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "switchboard_edge_waiting_requests", Help: "Requests and streams waiting on a command."},
			func() float64 { return float64(waiting()) })
		prometheus.WrapRegistererWith(prometheus.Labels{"edge": edgeID}, reg).MustRegister(
			m.requests, m.limited, m.accepted, m.swept, m.requeued, waitingGauge, m.eventsStreamed, m.purged,
			m.jobsCreated, m.jobBatches, m.jobCommands, m.jobsRunning)
	}
	return m
}

// instrument observes each request under labels from fixed sets, whatever
// the client sends: the chi route pattern (ids in paths are not label
// values) or "unmatched", the method if it is a standard one or else
// "OTHER", and the status class. A label taken from the request as it
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
		m.requests.WithLabelValues(route, methodLabel(r.Method), statusClass(ww.Status())).Observe(time.Since(start).Seconds())
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

// statusClass is "2xx" for 200-299 and so on; a handler that wrote
// nothing answered 200.
func statusClass(status int) string {
	switch {
	case status == 0:
		return "2xx"
	case status >= 100 && status < 600:
		return strconv.Itoa(status/100) + "xx"
	}
	return "other"
}
