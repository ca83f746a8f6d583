package maintenance

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchboard-iot/switchboard/internal/sbmetrics"
)

// metrics are the Prometheus series of an edge's background work: they
// bear the edge's names (switchboard_edge_…) and its label, as they did
// when the edge ran this work itself.
type metrics struct {
	swept    prometheus.Counter
	requeued prometheus.Counter
	// final counts the commands this edge's sweeps made final, by status:
	// expired (never delivered in their ttl) and failed (the backstop for
	// a node that could not fail them). Nodes count done and failed on
	// the same series, per process (sbmetrics).
	final  *prometheus.CounterVec
	purged *prometheus.CounterVec // rows retention deleted, by table

	jobBatches  prometheus.Counter
	jobCommands prometheus.Counter
	jobRetries  prometheus.Counter
	jobFull     prometheus.Counter // job commands failed at once: their device's queue was full
	jobsRunning prometheus.Gauge
	jobPatches  prometheus.Counter // state jobs' targets whose desired document a batch changed

	webhooks *prometheus.CounterVec // webhook delivery attempts, by outcome
}

func newMetrics(reg *prometheus.Registry, edgeID string) *metrics {
	m := &metrics{
		swept: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_edge_commands_swept_total", Help: "Commands this edge failed (no reply in time) or expired (never delivered)."}),
		requeued: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_edge_devices_requeued_total", Help: "Devices whose deliveries this edge gave back because their node's lease lapsed."}),
		purged: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_edge_retention_deleted_total", Help: "Rows retention deleted, by table: jobs, commands, events (by age), events_capped (over a device's cap), sessions (presence history)."}, []string{"table"}),
		jobBatches: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_edge_job_batches_total", Help: "Batches of fleet job commands this edge's runner created (each wakes each of its nodes once)."}),
		jobCommands: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_edge_job_commands_created_total", Help: "Commands this edge's job runner created, retries included."}),
		jobRetries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_edge_job_retries_total", Help: "Commands this edge's job runner created to retry a target's failed or expired command."}),
		jobFull: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_edge_job_commands_queue_full_total", Help: "Commands this edge's job runner stored failed, not queued, because their device already had its cap of pending commands."}),
		jobPatches: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_edge_job_state_patches_total", Help: "Devices whose desired state this edge's job runner changed, for state jobs."}),
		jobsRunning: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "switchboard_edge_jobs_running", Help: "Fleet jobs running, in the whole database (read every 5s; the same on every edge)."}),
		webhooks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_edge_webhook_attempts_total", Help: "Webhook delivery attempts this edge made, by outcome: delivered, failed (to be retried or given up)."}, []string{"outcome"}),
	}
	var shared prometheus.Registerer // nil: private
	if reg != nil {
		shared = reg
	}
	m.final = sbmetrics.CommandsFinal(shared)
	if reg != nil {
		prometheus.WrapRegistererWith(prometheus.Labels{"edge": edgeID}, reg).MustRegister(
			m.swept, m.requeued, m.purged, m.jobBatches, m.jobCommands, m.jobRetries, m.jobFull, m.jobsRunning, m.jobPatches, m.webhooks)
	}
	return m
}
