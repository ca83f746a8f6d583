package conntier

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchboard-iot/switchboard/device/protocol"
	"github.com/switchboard-iot/switchboard/internal/sbmetrics"
)

// metrics are a node's Prometheus series, labelled with its id so that
// several nodes can share a process (switchboard dev) and a registry.
type metrics struct {
	sessions prometheus.Gauge
	connects *prometheus.CounterVec // by result: ok, unauthorized, throttled, error
	closes   *prometheus.CounterVec // sessions the node closed, by reason (disconnect.go)
	frames   *prometheus.CounterVec // frames received, by type
	// sent counts data frames written to devices, by type (command, pong);
	// heartbeat pings are WebSocket control frames and not counted.
	sentCommand, sentPong, sentError prometheus.Counter
	// refusedFrames counts frames refused with an error frame, the session
	// kept, by the error's code.
	refusedFrames *prometheus.CounterVec
	// disconnects counts sessions that ended, by how: closed_by_node (for
	// a reason in closes), closed_by_device, timeout (heartbeats missed),
	// lost (the connection broke).
	disconnects *prometheus.CounterVec
	// final counts commands this node made final, by status: done or
	// failed on a reply, failed when no reply came in time. The edges
	// count the rest on the same series, per process (sbmetrics): their
	// sweeps expired, and failed as a backstop; cancelled, by a client or
	// a job.
	final     *prometheus.CounterVec
	delivered prometheus.Counter
	replies   prometheus.Counter
	timedOut  prometheus.Counter
	// replyTime times the commands answered on this node from their
	// frame's write to the reply's read: the round trip from delivery,
	// which a command queued for an offline device does not stretch (the
	// edge's round trip counts from the request).
	replyTime prometheus.Histogram
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
	// silentClosed counts silent connections the gate closed, by reason
	// (admission.go).
	silentClosed *prometheus.CounterVec
	// jobWakeups counts "job" notices handled: one per batch of a job
	// that holds devices of this node.
	jobWakeups prometheus.Counter
	// reportsTooLarge counts reports not stored because they would leave
	// the device's reported document over 32 KiB.
	reportsTooLarge prometheus.Counter
}

func newMetrics(reg *prometheus.Registry, nodeID, region string, queues map[string]func() int, retries map[string]func() uint64,
	maxSessions int, admission func() (handshakes, silent int), leased func() bool, certExpiry func() time.Time) *metrics {
	m := &metrics{
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "switchboard_conn_sessions", Help: "Devices connected to this node."}),
		connects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_conn_connects_total", Help: "Connection attempts, by result: ok, unauthorized, throttled (429: too many failed logins from the address, or the device connects too often), error."}, []string{"result"}),
		closes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_conn_closes_total",
			Help: "Sessions the node closed, by reason: draining, replaced (a newer session of the device), revoked (disabled or deleted), rebalance, rate_limited, bad_message, too_big, slow, unavailable."},
			[]string{"reason"}),
		frames: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_conn_frames_received_total", Help: "Frames received from devices, by type."}, []string{"type"}),
		disconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_conn_disconnects_total",
			Help: "Sessions that ended, by reason: closed_by_node (why: switchboard_conn_closes_total), closed_by_device, timeout (heartbeats missed), lost (the connection broke)."},
			[]string{"reason"}),
		delivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_conn_commands_delivered_total", Help: "Commands this node claimed for delivery (pending to delivered, recorded before their frames are written)."}),
		replies: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_conn_replies_stored_total", Help: "Device replies that completed a command."}),
		replyTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "switchboard_conn_command_reply_seconds",
			Help:    "Commands answered on this node: from the command's frame written to the device to its reply read (the round trip from delivery; time queued before it is not counted).",
			Buckets: sbmetrics.LatencyBuckets}),
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
		silentClosed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_conn_silent_closed_total",
			Help: "Silent connections (waited on before their upgrade) the node closed, by reason: timeout (no first byte within the first-byte timeout), address (idle past MaxSilentPerAddress from its address), node (idle past MaxSilent)."},
			[]string{"reason"}),
		jobWakeups: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_conn_job_wakeups_total", Help: "Wake-ups for a batch of a fleet job's commands (one per batch and node)."}),
		reportsTooLarge: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_conn_reports_too_large_total", Help: "State reports not stored: they would leave the device's reported document over 32 KiB."}),
	}
	sent := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "switchboard_conn_frames_sent_total", Help: "Data frames written to devices, by type: command, pong, error."}, []string{"type"})
	m.sentCommand, m.sentPong, m.sentError = sent.WithLabelValues("command"), sent.WithLabelValues("pong"), sent.WithLabelValues("error")
	m.refusedFrames = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "switchboard_conn_frames_refused_total",
		Help: "Frames from devices refused with an error frame, the session kept, by error: invalid-event-name, invalid-event-data, unknown-type."}, []string{"error"})
	for _, code := range []string{protocol.ErrInvalidEventName, protocol.ErrInvalidEventData, protocol.ErrUnknownType} {
		m.refusedFrames.WithLabelValues(code)
	}
	for _, reason := range []string{"closed_by_node", "closed_by_device", "timeout", "lost"} {
		m.disconnects.WithLabelValues(reason)
	}
	for _, reason := range []string{"timeout", "address", "node"} {
		m.silentClosed.WithLabelValues(reason)
	}
	var shared prometheus.Registerer // nil: private
	if reg != nil {
		shared = reg
	}
	m.final = sbmetrics.CommandsFinal(shared)
	if reg != nil {
		r := prometheus.WrapRegistererWith(prometheus.Labels{"node": nodeID}, reg)
		r.MustRegister(sent, m.disconnects, m.refusedFrames,
			// The node's region as a label to join on: sessions by region is
			// sum by (region) (switchboard_conn_sessions * on (node) group_left (region) switchboard_conn_node_info).
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "switchboard_conn_node_info", Help: "Always 1; its region label names the node's region.",
				ConstLabels: prometheus.Labels{"region": region}}, func() float64 { return 1 }))
		r.MustRegister(m.sessions, m.connects, m.closes, m.frames, m.delivered, m.replies, m.replyTime, m.timedOut, m.eventsShed, m.replyWaits, m.overRate, m.refused, m.silentClosed, m.jobWakeups, m.reportsTooLarge,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "switchboard_conn_max_sessions", Help: "The most devices this node holds (MaxSessions)."},
				func() float64 { return float64(maxSessions) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "switchboard_conn_handshakes", Help: "Connections the node works on before their upgrade (at most MaxHandshakes); silent ones hold none."},
				func() float64 { h, _ := admission(); return float64(h) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "switchboard_conn_silent", Help: "Connections the node waits on before their upgrade: nothing sent yet, or half a handshake or request."},
				func() float64 { _, s := admission(); return float64(s) }))
		for name, depth := range queues {
			r.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "switchboard_conn_queue_depth", Help: "Writes waiting for the database, by queue.",
				ConstLabels: prometheus.Labels{"queue": name}}, func() float64 { return float64(depth()) }))
		}
		for name, n := range retries {
			r.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "switchboard_conn_batch_retries_total", Help: "Failed database writes retried, by queue: climbs while the database is away (nothing is dropped; the queue waits).",
				ConstLabels: prometheus.Labels{"queue": name}}, func() float64 { return float64(n()) }))
		}
		// The lease as a series: a node whose renewals fail stops taking
		// devices (readyz says "no lease") and its deliveries wait.
		r.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "switchboard_conn_lease_held", Help: "1 while the node's lease row exists and was renewed in time, 0 while renewals fail past the lease's ttl."},
			func() float64 {
				if leased() {
					return 1
				}
				return 0
			}))
		if certExpiry != nil {
			r.MustRegister(certExpiryCollector{prometheus.NewDesc("switchboard_conn_certificate_expiry_timestamp_seconds",
				"When the certificate the device port serves expires (Unix seconds); absent while there is none yet.",
				nil, nil), certExpiry})
		}
	}
	return m
}

// certExpiryCollector exports the certificate's expiry, or nothing while
// there is none (ACME before its first certificate): a 0 would read as a
// certificate long expired.
type certExpiryCollector struct {
	desc     *prometheus.Desc
	notAfter func() time.Time
}

func (c certExpiryCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c certExpiryCollector) Collect(ch chan<- prometheus.Metric) {
	if t := c.notAfter(); !t.IsZero() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(t.Unix()))
	}
}
