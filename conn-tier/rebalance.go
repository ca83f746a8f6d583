package conntier

import (
	"context"
	"math"
	"math/rand/v2"
	"time"
)

// Rebalancing defaults.
const (
	DefaultRebalanceInterval = time.Minute
	DefaultRebalanceShare    = 0.05 // of the node's sessions, at most, each interval
	// rebalanceSlack is how far above the region's mean a node may stay:
	// within it, moving devices would cost more handshakes than it saves.
	rebalanceSlack = 0.10
	// rebalanceMinExcess keeps small fleets still: a few devices more than
	// the mean is no imbalance.
	rebalanceMinExcess = 8
)

// rebalance, once per RebalanceInterval, compares the sessions of this
// node with the mean of its region's live nodes (from presence, in
// PostgreSQL) and, when above it, closes a bounded share of its sessions
// with 1012 and a jittered delay: after a scale-up the fleet moves to the
// new nodes in steps, each node shedding only its own excess, and no node
// ever sheds below the mean, so the moves converge rather than stampede.
func (n *Node) rebalance(ctx context.Context) error {
	if n.cfg.RebalanceInterval < 0 {
		// Never: but stay until the node stops, since an actor of the
		// node's group that returns stops the node.
		<-ctx.Done()
		return nil
	}
	tick := time.NewTicker(n.cfg.RebalanceInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		if n.draining.Load() || !n.leased.Load() {
			continue
		}
		loads, err := n.store.NodeLoads(ctx, n.cfg.Node.Region)
		if err != nil {
			n.log.Warn("reading the region's node loads", "err", err)
			continue
		}
		mine := n.hub.len()
		shed := rebalanceShed(mine, loads, n.cfg.RebalanceShare)
		if fn := n.onRebalance.Load(); fn != nil {
			(*fn)(mine, shed)
		}
		if shed == 0 {
			continue
		}
		n.log.Info("rebalancing", "region", n.cfg.Node.Region, "sessions", mine, "nodes", len(loads), "region_sessions", sum(loads), "shedding", shed)
		n.shed(ctx, shed)
	}
}

func sum(loads map[string]int) int {
	total := 0
	for _, l := range loads {
		total += l
	}
	return total
}

// rebalanceShed is how many of its mine sessions a node sheds, given the
// region's loads (this node's among them): its excess over the mean, at
// most share of its sessions (at least one), none within the slack.
func rebalanceShed(mine int, loads map[string]int, share float64) int {
	if len(loads) < 2 {
		return 0
	}
	total := 0
	for _, l := range loads {
		total += l
	}
	mean := float64(total) / float64(len(loads))
	excess := float64(mine) - mean
	if excess < rebalanceMinExcess || excess <= mean*rebalanceSlack {
		return 0
	}
	limit := max(int(math.Ceil(float64(mine)*share)), 1)
	return min(int(excess), limit)
}

// shed closes count sessions, picked at random, with 1012; each device is
// told to wait a random delay from half RebalanceDelay to all of it, so
// that those shed together do not come back together, and all are back
// before the next round counts the loads (the delay is kept under half the
// interval). Closes are paced like a drain's.
func (n *Node) shed(ctx context.Context, count int) {
	sessions := n.hub.all()
	rand.Shuffle(len(sessions), func(i, j int) { sessions[i], sessions[j] = sessions[j], sessions[i] })
	sessions = sessions[:min(count, len(sessions))]
	for len(sessions) > 0 {
		chunk := sessions[:min(drainMinBatch, len(sessions))]
		sessions = sessions[len(chunk):]
		for _, s := range chunk {
			go s.disconnect(disconnectRebalance(n.rebalanceDelay()))
		}
		if len(sessions) > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(drainTick):
			}
		}
	}
}

// rebalanceDelay draws the wait a shed device is given.
func (n *Node) rebalanceDelay() time.Duration {
	d := max(min(n.cfg.RebalanceDelay, n.cfg.RebalanceInterval/2), 2*time.Millisecond)
	return (d/2 + rand.N(d/2)).Round(time.Millisecond)
}

// MoveDevice closes the device's session on this node as a rebalance round
// would, with 1012 and delay in the reason, so that it reconnects, after
// delay, wherever its load balancer sends it. It reports whether the
// device had a session here. It is an operator's hook in the process (no
// listener serves it): the conformance suite moves a device with it to see
// that the device honours the delay.
func (n *Node) MoveDevice(deviceID string, delay time.Duration) bool {
	s := n.hub.get(deviceID)
	if s == nil {
		return false
	}
	s.disconnect(disconnectRebalance(delay))
	return true
}
