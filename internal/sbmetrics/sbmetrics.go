// Package sbmetrics holds the Prometheus series that both tiers write
// under one name. A process may run an edge and nodes on one registry
// (switchboard dev), so such a series carries neither an edge nor a node
// label (a family's label names must agree), and every part of the process
// shares one collector.
package sbmetrics

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// LatencyBuckets suit a command's life, from a few milliseconds (an online
// device on loopback) to a minute (a ?wait= or a slow device).
var LatencyBuckets = []float64{.002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

// CommandsFinal is switchboard_commands_final_total{status} on reg (nil:
// a private one): the commands this process made final, counted where the
// final status was written.
func CommandsFinal(reg prometheus.Registerer) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "switchboard_commands_final_total",
		Help: "Commands made final, by status, where the final status was written: nodes write done and failed (a reply, or no reply in time), edges' sweeps expired and failed, edges cancelled (a client's cancel, or its job's cancel or abort)."},
		[]string{"status"})
	for _, status := range []string{"done", "failed", "expired", "cancelled"} {
		c.WithLabelValues(status) // present at 0 from the start: rate() sees the first one
	}
	if reg == nil {
		return c
	}
	if err := reg.Register(c); err != nil {
		var already prometheus.AlreadyRegisteredError
		if errors.As(err, &already) {
			return already.ExistingCollector.(*prometheus.CounterVec)
		}
		panic(err)
	}
	return c
}
