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
	requests *prometheus.HistogramVec // by route pattern, method and status
	accepted prometheus.Counter
	swept    prometheus.Counter
	requeued prometheus.Counter
}

func newMetrics(reg *prometheus.Registry, edgeID string, waiting func() int) *metrics {
	m := &metrics{
		requests: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "switchboard_edge_http_request_duration_seconds",
			Help:    "HTTP requests by route, method and status; streams count until they end.",
			Buckets: []float64{.001, .005, .01, .05, .1, .5, 1, 5, 30, 120},
		}, []string{"route", "method", "code"}),
		accepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_edge_commands_accepted_total", Help: "Commands stored for delivery."}),
		swept: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_edge_commands_swept_total", Help: "Commands this edge failed (no reply in time) or expired (never delivered)."}),
		requeued: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_edge_devices_requeued_total", Help: "Devices whose deliveries this edge gave back because their node's lease lapsed."}),
	}
	if reg != nil {
		waitingGauge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "switchboard_edge_waiting_requests", Help: "Requests and streams waiting on a command."},
			func() float64 { return float64(waiting()) })
		prometheus.WrapRegistererWith(prometheus.Labels{"edge": edgeID}, reg).MustRegister(
			m.requests, m.accepted, m.swept, m.requeued, waitingGauge)
	}
	return m
}

// instrument observes each request under its chi route pattern, so ids in
// paths do not become label values.
func (m *metrics) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		next.ServeHTTP(ww, r)
		route := chi.RouteContext(r.Context()).RoutePattern()
		if route == "" {
			route = "unmatched"
		}
		m.requests.WithLabelValues(route, r.Method, strconv.Itoa(ww.Status())).Observe(time.Since(start).Seconds())
	})
}
