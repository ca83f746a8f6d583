package conntier

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/device/protocol"
)

// deliverer sends devices their pending commands. Wake-ups only mark devices
// dirty; one goroutine reads the pending commands of all dirty devices in a
// query per round, so a burst of wake-ups costs a few queries, not one each,
// and a device's commands go out in order.
type deliverer struct {
	node   *Node
	signal chan struct{} // cap 1: there is work

	mu    sync.Mutex // guards the following
	dirty map[string]struct{}
	all   bool // every local device: after the listener (re)connects
}

// pendingBatch bounds one round's query; a device with more left over is
// marked dirty again.
const pendingBatch = 1000

func newDeliverer(n *Node) *deliverer {
	return &deliverer{node: n, signal: make(chan struct{}, 1), dirty: make(map[string]struct{})}
}

func (d *deliverer) wake(deviceID string) {
	d.mu.Lock()
	d.dirty[deviceID] = struct{}{}
	d.mu.Unlock()
	d.poke()
}

// wakeAll rescans every local device: nothing is replayed to a listener that
// was away, so wake-ups sent meanwhile are found in the table instead.
func (d *deliverer) wakeAll() {
	d.mu.Lock()
	d.all = true
	d.mu.Unlock()
	d.poke()
}

func (d *deliverer) poke() {
	select {
	case d.signal <- struct{}{}:
	default:
	}
}

// take returns the devices to look at, and whether that is all of them.
func (d *deliverer) take() ([]string, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.all {
		d.all = false
		clear(d.dirty)
		var ids []string
		for _, c := range d.node.hub.all() {
			ids = append(ids, c.deviceID)
		}
		return ids, true
	}
	ids := make([]string, 0, len(d.dirty))
	for id := range d.dirty {
		if d.node.hub.get(id) != nil {
			ids = append(ids, id)
		}
	}
	clear(d.dirty)
	return ids, false
}

func (d *deliverer) run(ctx context.Context) error {
	// The periodic rescan is the backstop for every wake-up that can be
	// lost: a lease that lapsed, an edge that failed to notify.
	rescan := time.NewTicker(d.node.cfg.RescanInterval)
	defer rescan.Stop()
	backoff := 100 * time.Millisecond
	for {
		select {
		case <-d.signal:
		case <-rescan.C:
			d.wakeAll()
		case <-ctx.Done():
			return nil
		}
		ids, all := d.take()
		if all {
			d.node.closeDisplaced(ctx)
		}
		for ; len(ids) > 0; ids = ids[min(len(ids), pendingBatch):] {
			chunk := ids[:min(len(ids), pendingBatch)]
			if err := d.deliver(ctx, chunk); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				d.node.log.Warn("reading pending commands; retrying", "devices", len(ids), "err", err)
				for _, id := range ids {
					d.wake(id)
				}
				select {
				case <-time.After(rand.N(backoff)):
				case <-ctx.Done():
					return nil
				}
				backoff = min(backoff*2, 5*time.Second)
				break
			}
			backoff = 100 * time.Millisecond
		}
	}
}

func (d *deliverer) deliver(ctx context.Context, deviceIDs []string) error {
	cmds, err := d.node.store.PendingCommands(ctx, deviceIDs, pendingBatch)
	if err != nil {
		return err
	}
	held := make(map[string]bool) // devices out of queue room: keep their order
	for _, cmd := range cmds {
		if c := d.node.hub.get(cmd.DeviceID); c != nil && !held[cmd.DeviceID] {
			held[cmd.DeviceID] = !c.deliver(cmd)
		}
	}
	if len(cmds) == pendingBatch {
		// Possibly more, for any of them: look again. What was just sent is
		// skipped, as in flight or no longer pending.
		for _, id := range deviceIDs {
			d.wake(id)
		}
	}
	return nil
}

// closeDisplaced closes sessions that another node took over while this
// node's listener was away (their "kick" was lost with it). Only sessions
// whose own row was written count: a newer one's row may still be queued.
func (n *Node) closeDisplaced(ctx context.Context) {
	var devices []string
	for _, c := range n.hub.all() {
		if c.registered.Load() {
			devices = append(devices, c.deviceID)
		}
	}
	if len(devices) == 0 {
		return
	}
	moved, err := n.store.DevicesElsewhere(ctx, n.cfg.Node.ID, devices)
	if err != nil {
		n.log.Warn("checking for displaced sessions", "err", err)
		return
	}
	for _, id := range moved {
		if c := n.hub.get(id); c != nil && c.registered.Load() {
			go c.close(protocol.CloseReplaced, "replaced by a newer session")
		}
	}
}

// commandOp is a delivery record or a reply, written by the commands batcher.
type commandOp struct {
	delivered uuid.UUID // with conn: the frame was written
	conn      *conn
	reply     *db.Reply
}

// writeCommands records deliveries and replies atomically, then wakes the
// edges that wait on them. Deliveries go first: a reply in the same batch
// wins. A batch that failed is rolled back and redone whole, wake-ups
// included; only a commit that succeeded but reported failure loses its
// wake-ups, which the edges' periodic rechecks then cover.
func (n *Node) writeCommands(ctx context.Context, ops []commandOp) error {
	var delivered []uuid.UUID
	var replies []db.Reply
	for _, op := range ops {
		if op.reply != nil {
			replies = append(replies, *op.reply)
		} else {
			delivered = append(delivered, op.delivered)
		}
	}
	// One statement is atomic by itself: BEGIN and COMMIT would only add two
	// round trips to the hot path.
	inTx := n.store.InTx
	if len(delivered) == 0 || len(replies) == 0 {
		inTx = func(_ context.Context, fn func(*db.Store) error) error { return fn(n.store) }
	}
	var changes []db.Change
	var nDelivered, nReplies int
	err := inTx(ctx, func(tx *db.Store) error {
		changes, nDelivered, nReplies = changes[:0], 0, 0
		if len(delivered) > 0 {
			ch, err := tx.MarkDelivered(ctx, n.cfg.Node.ID, delivered)
			if err != nil {
				return err
			}
			changes, nDelivered = append(changes, ch...), len(ch)
		}
		if len(replies) > 0 {
			ch, err := tx.StoreReplies(ctx, replies)
			if err != nil {
				return err
			}
			changes, nReplies = append(changes, ch...), len(ch)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, op := range ops {
		if op.conn != nil {
			op.conn.forget(op.delivered)
		}
	}
	n.metrics.delivered.Add(float64(nDelivered))
	n.metrics.replies.Add(float64(nReplies))
	// The rows are committed; a lost wake-up only delays the edge until it
	// looks again, so it is logged, not retried.
	if err := n.store.NotifyEdges(ctx, changes); err != nil {
		n.log.Warn("waking edges", "changes", len(changes), "err", err)
	}
	return nil
}

// presenceOp is a session that opened (connect), that the node asserts again
// after its lease was reaped (reassert), or that closed (neither).
type presenceOp struct {
	session  db.Session
	connect  bool
	reassert bool
	done     chan error // connect only: the row is written, or errStale
}

// errStale says a newer session of the device holds its presence row.
var errStale = errors.New("a newer session of the device holds its row")

// writePresence writes a batch of connects, reassertions and disconnects.
// Writes go first: a session that opened and closed within one batch leaves
// no row. Only the device's current session here is written: two sessions
// racing on this node may queue in either order, and one that closed since
// it was queued must not come back.
func (n *Node) writePresence(ctx context.Context, ops []presenceOp) error {
	var connects, reasserts, gone []db.Session
	written := make(map[string]bool)
	for _, op := range ops {
		switch {
		case !op.connect && !op.reassert:
			gone = append(gone, op.session)
		case written[op.session.DeviceID] || !n.hub.current(op.session.DeviceID, op.session.SessionID):
		case op.connect:
			written[op.session.DeviceID] = true
			connects = append(connects, op.session)
		default:
			reasserts = append(reasserts, op.session)
		}
	}
	stale := make(map[uuid.UUID]bool)
	if len(connects) > 0 {
		displaced, staleIDs, err := n.store.Connect(ctx, n.cfg.Node, connects)
		if err != nil {
			return err
		}
		for _, id := range staleIDs {
			stale[id] = true
		}
		if err := n.store.KickDisplaced(ctx, displaced); err != nil {
			n.log.Warn("telling nodes of displaced sessions", "sessions", len(displaced), "err", err)
		}
	}
	if len(reasserts) > 0 {
		if err := n.store.Reassert(ctx, n.cfg.Node, reasserts); err != nil {
			return err
		}
	}
	if len(gone) > 0 {
		if err := n.store.Disconnect(ctx, gone); err != nil {
			return err
		}
	}
	for _, op := range ops {
		if op.done == nil {
			continue
		}
		if stale[op.session.SessionID] {
			op.done <- errStale
		} else {
			op.done <- nil
		}
	}
	return nil
}
