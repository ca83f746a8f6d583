package conntier

// OnDrainBatch has the node report each batch of its drain: how many
// sessions it closed, and how many are left. Set it before the node stops.
func (n *Node) OnDrainBatch(fn func(closed, left int)) { n.onDrainBatch = fn }

// OnRebalance has the node report each rebalancing round: its sessions and
// how many it decided to shed.
func (n *Node) OnRebalance(fn func(sessions, shed int)) { n.onRebalance.Store(&fn) }
