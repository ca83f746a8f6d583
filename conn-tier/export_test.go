package conntier

import "time"

// OnDrainBatch has the node report each batch of its drain: how many
// sessions it closed, and how many are left. Set it before the node stops.
func (n *Node) OnDrainBatch(fn func(closed, left int)) { n.onDrainBatch = fn }

// OnRebalance has the node report each rebalancing round: its sessions and
// how many it decided to shed.
func (n *Node) OnRebalance(fn func(sessions, shed int)) { n.onRebalance.Store(&fn) }

// LoseNextClaim has the node's next claim that takes commands commit, and
// its answer be lost, as when the database's connection fails at the
// commit: the node must give back what it claimed and did not write.
func (n *Node) LoseNextClaim() { n.loseClaim.Store(true) }

// ClaimLossPending reports whether LoseNextClaim's fault has yet to fire.
func (n *Node) ClaimLossPending() bool { return n.loseClaim.Load() }

// SetIdleAfter shortens how long a node spares a silent connection before
// it may close it to make room (5s).
func SetIdleAfter(c *Config, d time.Duration) { c.idleAfter = d }
