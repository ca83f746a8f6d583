package conntier

// OnDrainBatch has the node report each batch of its drain: how many
// sessions it closed, and how many are left. Set it before the node stops.
func (n *Node) OnDrainBatch(fn func(closed, left int)) { n.onDrainBatch = fn }
