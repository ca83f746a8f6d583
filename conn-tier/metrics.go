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
	timedOut  prometheus.Counter
	// eventsShed counts telemetry dropped because the events queue was full
	// (the database slow or away); replies are never shed.
	eventsShed prometheus.Counter
	// replyWaits counts replies that waited for room in the commands queue,
	// holding up their device's reads.
	replyWaits prometheus.Counter
	// overRate counts messages devices sent past their rate, by type:
	// events among them were dropped, replies stored, pings answered.
	overRate *prometheus.CounterVec
	// refused counts connect requests turned away before their
	// credentials were looked at, by reason: full, draining.
	refused *prometheus.CounterVec
	// jobWakeups counts "job" notices handled: one per batch of a job
	// that holds devices of this node.
	jobWakeups prometheus.Counter
}

func newMetrics(reg *prometheus.Registry, nodeID string, queues map[string]func() int, maxSessions int, handshakes func() int) *metrics {
	m := &metrics{
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "switchboard_conn_sessions", Help: "Devices connected to this node."}),
		connects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_conn_connects_total", Help: "Connection attempts, by result: ok, unauthorized, throttled, error."}, []string{"result"}),
		closes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_conn_closes_total", Help: "Sessions the node closed, by reason."}, []string{"reason"}),
		frames: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_conn_frames_received_total", Help: "Frames received from devices, by type."}, []string{"type"}),
		delivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_conn_commands_delivered_total", Help: "Commands written to devices and recorded."}),
		replies: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_conn_replies_stored_total", Help: "Device replies that completed a command."}),
		timedOut: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_conn_commands_timed_out_total", Help: "Delivered commands failed because no reply came within their timeout."}),
		eventsShed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_conn_events_shed_total", Help: "Device events dropped because the events queue was full."}),
		replyWaits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_conn_reply_waits_total", Help: "Replies that waited for room in the commands queue, pausing their device's reads."}),
		overRate: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_conn_messages_over_rate_total",
			Help: "Messages devices sent faster than their rate, by type; such events are dropped, replies stored, pings answered."}, []string{"type"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_conn_refused_total",
			Help: "Connect requests answered 503 before their credentials were looked at, by reason: full (MaxSessions), draining."}, []string{"reason"}),
		jobWakeups: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_conn_job_wakeups_total", Help: "Wake-ups for a batch of a fleet job's commands (one per batch and node)."}),
	}
	if reg != nil {
		r := prometheus.WrapRegistererWith(prometheus.Labels{"node": nodeID}, reg)
		r.MustRegister(m.sessions, m.connects, m.closes, m.frames, m.delivered, m.replies, m.timedOut, m.eventsShed, m.replyWaits, m.overRate, m.refused, m.jobWakeups,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "switchboard_conn_max_sessions", Help: "The most devices this node holds (MaxSessions)."},
				func() float64 { return float64(maxSessions) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "switchboard_conn_handshakes", Help: "Connections accepted and not yet upgraded or closed (at most MaxHandshakes)."},
				func() float64 { return float64(handshakes()) }))
		for name, depth := range queues {
			r.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "switchboard_conn_queue_depth", Help: "Writes waiting for the database, by queue.",
				ConstLabels: prometheus.Labels{"queue": name}}, func() float64 { return float64(depth()) }))
		}
	}
	return m
}
