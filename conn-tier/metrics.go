package conntier

import "github.com/prometheus/client_golang/prometheus"

// metrics are a node's Prometheus series, labelled with its id so that
// several nodes can share a process (switchboard dev) and a registry.
type metrics struct {
	sessions  prometheus.Gauge
	connects  *prometheus.CounterVec // by result: ok, unauthorized, error
	closes    *prometheus.CounterVec // sessions the node closed, by reason
	frames    *prometheus.CounterVec // frames received, by type
	delivered prometheus.Counter
	replies   prometheus.Counter
}

func newMetrics(reg *prometheus.Registry, nodeID string) *metrics {
	m := &metrics{
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "switchboard_conn_sessions", Help: "Devices connected to this node."}),
		connects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_conn_connects_total", Help: "Connection attempts, by result."}, []string{"result"}),
		closes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_conn_closes_total", Help: "Sessions the node closed, by reason."}, []string{"reason"}),
		frames: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_conn_frames_received_total", Help: "Frames received from devices, by type."}, []string{"type"}),
		delivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_conn_commands_delivered_total", Help: "Commands written to devices and recorded."}),
		replies: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_conn_replies_stored_total", Help: "Device replies that completed a command."}),
	}
	if reg != nil {
		prometheus.WrapRegistererWith(prometheus.Labels{"node": nodeID}, reg).MustRegister(
			m.sessions, m.connects, m.closes, m.frames, m.delivered, m.replies)
	}
	return m
}
