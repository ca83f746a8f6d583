package conntier

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/backoff"
)

// deliverer sends devices their pending commands. Wake-ups only mark devices
// dirty; one goroutine claims the pending commands of all dirty devices in
// one statement per round (ClaimDeliveries: pending to delivered, before a
// frame is written), so a burst of wake-ups costs a few statements, not one
// each, a device's commands go out in order, and a command cancelled
// before its claim is never written. Each round claims at most the room
// left in a device's queue, so a device with a deep backlog shares the
// node fairly with the others; it is claimed for again as its queue
// drains, not in a busy loop.
type deliverer struct {
	node   *Node
	signal chan struct{} // cap 1: there is work

	// unsure are sessions whose claim failed: it may have committed, its
	// answer lost with the connection. Before they claim again, what it
	// left delivered and unwritten goes back (settle). Only run uses it.
	unsure map[*session]bool

	mu    sync.Mutex // guards the following
	dirty map[string]struct{}
	all   bool         // every local device: after the listener (re)connects
	jobs  []db.JobWake // batches of jobs whose devices here are to be found
	// stateDirty are devices whose desired document is to be read and
	// sent; stateAll: every local device's (state.go).
	stateDirty map[string]struct{}
	stateAll   bool
}

// roundDevices bounds the devices one query reads.
const roundDevices = 1000

func newDeliverer(n *Node) *deliverer {
	return &deliverer{node: n, signal: make(chan struct{}, 1), dirty: make(map[string]struct{}), stateDirty: make(map[string]struct{}), unsure: make(map[*session]bool)}
}

func (d *deliverer) wake(deviceID string) {
	d.mu.Lock()
	d.dirty[deviceID] = struct{}{}
	d.mu.Unlock()
	d.poke()
}

// wakeJob has the devices of this node that a job's batch holds delivered:
// one query finds them (by presence), then they go the way of a wake.
func (d *deliverer) wakeJob(w db.JobWake) {
	d.mu.Lock()
	d.jobs = append(d.jobs, w)
	d.mu.Unlock()
	d.poke()
}

// resolveJobs turns the jobs' batches woken into dirty devices. On an
// error the batches not resolved are kept, for the next round.
func (d *deliverer) resolveJobs(ctx context.Context) error {
	d.mu.Lock()
	jobs := d.jobs
	d.jobs = nil
	d.mu.Unlock()
	for i, w := range jobs {
		ids, err := d.node.store.JobDevicesOn(ctx, d.node.cfg.Node.ID, w)
		if err != nil {
			d.mu.Lock()
			d.jobs = append(jobs[i:], d.jobs...)
			d.mu.Unlock()
			return err
		}
		d.mu.Lock()
		for _, id := range ids {
			d.dirty[id] = struct{}{}
		}
		d.mu.Unlock()
	}
	return nil
}

// wakeAll rescans every local device: nothing is replayed to a listener that
// was away, so wake-ups sent meanwhile are found in the table instead.
func (d *deliverer) wakeAll() {
	d.mu.Lock()
	d.all, d.stateAll = true, true
	d.mu.Unlock()
	d.poke()
}

func (d *deliverer) poke() {
	select {
	case d.signal <- struct{}{}:
	default:
	}
}

// take returns the registered sessions to look at, and whether that is all
// of them. A session not registered yet is woken when it is.
func (d *deliverer) take() ([]*session, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.takeMarked(&d.all, d.dirty)
}

// takeMarked returns the registered sessions of the devices marked in
// dirty, or all of them when *all is set (and says so), and clears both
// marks. d.mu must be held. Commands and desired state keep marks of
// their own.
func (d *deliverer) takeMarked(all *bool, dirty map[string]struct{}) ([]*session, bool) {
	var out []*session
	if *all {
		*all = false
		clear(dirty)
		for _, s := range d.node.hub.all() {
			if s.registered.Load() {
				out = append(out, s)
			}
		}
		return out, true
	}
	for id := range dirty {
		if s := d.node.hub.get(id); s != nil && s.registered.Load() {
			out = append(out, s)
		}
	}
	clear(dirty)
	return out, false
}

func (d *deliverer) run(ctx context.Context) error {
	// The periodic rescan is the backstop for every wake-up that can be
	// lost: a lease that lapsed, an edge that failed to notify.
	rescan := time.NewTicker(d.node.cfg.RescanInterval)
	defer rescan.Stop()
	retry := backoff.Backoff{Min: 100 * time.Millisecond, Max: 5 * time.Second}
	for {
		select {
		case <-d.signal:
		case <-rescan.C:
			d.wakeAll()
			continue
		case <-ctx.Done():
			return nil
		}
		// Without a lease, PostgreSQL may think this node dead and give its
		// deliveries back: wait. Renewing the lease wakes every device.
		if !d.node.leased.Load() {
			continue
		}
		if err := d.resolveJobs(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			d.node.log.Warn("finding a job's devices; retrying", "err", err)
			d.poke()
			if !retry.Wait(ctx) {
				return nil
			}
			continue
		}
		if err := d.sendStates(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			d.node.log.Warn("reading desired state; retrying", "err", err)
			d.poke()
			if !retry.Wait(ctx) {
				return nil
			}
			continue
		}
		sessions, all := d.take()
		if all {
			d.node.closeReplaced(ctx)
		}
		for len(sessions) > 0 {
			chunk := sessions[:min(len(sessions), roundDevices)]
			if err := d.deliver(ctx, chunk); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				d.node.log.Warn("claiming pending commands; retrying", "devices", len(sessions), "err", err)
				for _, s := range chunk {
					d.unsure[s] = true
				}
				for _, s := range sessions {
					d.wake(s.deviceID)
				}
				if !retry.Wait(ctx) {
					return nil
				}
				break
			}
			retry.Reset()
			sessions = sessions[len(chunk):]
		}
	}
}

// deliver claims and sends the pending commands of these sessions' devices.
// A claim that returns after its session closed is given back (the
// session's end may have read the table before the claim committed); one
// whose session is still open is given back by that session's end, which
// comes after.
func (d *deliverer) deliver(ctx context.Context, sessions []*session) error {
	if err := d.settle(ctx, sessions); err != nil {
		return err
	}
	bySession := make(map[string]*session, len(sessions))
	rooms := make(map[string]int, len(sessions))
	claims := make([]db.Claim, 0, len(sessions))
	for _, s := range sessions {
		room := s.room()
		if room <= 0 {
			d.waitForRoom(s) // its queue is full: claim again once it drains
			continue
		}
		bySession[s.deviceID], rooms[s.deviceID] = s, room
		claims = append(claims, db.Claim{DeviceID: s.deviceID, SessionID: s.id, Room: room})
	}
	if len(claims) == 0 {
		return nil
	}
	changes, err := d.node.store.ClaimDeliveries(ctx, d.node.cfg.Node.ID, claims)
	if err == nil && len(changes) > 0 && d.node.loseClaim.CompareAndSwap(true, false) {
		err = errLostClaim
	}
	if err != nil {
		return err
	}
	d.node.metrics.delivered.Add(float64(len(changes)))
	claimed := make(map[string]int, len(claims))
	ended := make(map[*session]bool)
	for i := range changes {
		ch := &changes[i]
		s := bySession[ch.Command.DeviceID]
		claimed[s.deviceID]++
		// Once one is not queued, none after it is: the device's order.
		if ended[s] || s.closing.Err() != nil || !s.deliver(ch) {
			ended[s] = true
		}
	}
	for s := range ended {
		if s.closing.Err() != nil {
			_ = d.node.commands.Push(commandOp{kind: opEnded, session: s})
		}
	}
	for id, s := range bySession {
		if claimed[id] == rooms[id] && !ended[s] {
			d.waitForRoom(s) // possibly more
		}
	}
	return nil
}

// errLostClaim is a test's fault (Node.loseClaim): a claim that committed
// as its connection failed.
var errLostClaim = errors.New("the claim's answer was lost")

// settle gives back what a failed claim of these sessions may have left
// delivered and unwritten (GiveBackUnwritten), before they claim again: a
// claim that committed as its connection failed would leave its commands
// delivered to a session that never writes them, to fail at their reply
// deadline, and claiming newer ones first would break the device's order.
func (d *deliverer) settle(ctx context.Context, sessions []*session) error {
	if len(d.unsure) == 0 {
		return nil
	}
	for s := range d.unsure {
		if s.closing.Err() != nil {
			delete(d.unsure, s) // its end gives back whatever it held
		}
	}
	var settled []db.Session
	var holding []uuid.UUID
	for _, s := range sessions {
		if d.unsure[s] {
			settled, holding = append(settled, s.dbSession()), append(holding, s.holding()...)
		}
	}
	if len(settled) == 0 {
		return nil
	}
	n, err := d.node.store.GiveBackUnwritten(ctx, d.node.cfg.Node.ID, settled, holding)
	if err != nil {
		return err
	}
	if n > 0 {
		d.node.log.Warn("gave back commands a failed claim left unwritten", "commands", n)
	}
	for _, s := range sessions {
		delete(d.unsure, s)
	}
	return nil
}

// waitForRoom has the device claimed for again once its queue has drained
// to half (lowWater). The writer drains, then checks the flag; this raises
// the flag, then checks the queue: one of the two sees the other.
func (d *deliverer) waitForRoom(s *session) {
	s.backlogged.Store(true)
	if s.room() >= s.node.commandRoom()-lowWater(s.node) && s.backlogged.CompareAndSwap(true, false) {
		d.wake(s.deviceID)
	}
}

// closeReplaced closes sessions that a newer session took over while this
// node's listener was away (their "kick" was lost with it). Only sessions
// whose own row was written count: a newer one's row may still be queued.
func (n *Node) closeReplaced(ctx context.Context) {
	var sessions []db.Session
	for _, s := range n.hub.all() {
		if s.registered.Load() {
			sessions = append(sessions, s.dbSession())
		}
	}
	if len(sessions) == 0 {
		return
	}
	replaced, err := n.store.Replaced(ctx, sessions)
	if err != nil {
		n.log.Warn("checking for replaced sessions", "err", err)
		return
	}
	for _, id := range replaced {
		for _, s := range n.hub.all() {
			if s.id == id {
				n.logReplaced(s.deviceID, s.id, uuid.Nil, "")
				go s.disconnect(disconnectReplaced)
			}
		}
	}
}

// commandOp is what the commands batcher writes about one command.
type commandOp struct {
	kind    opKind
	id      uuid.UUID
	session *session  // the session it concerns
	reply   *db.Reply // for a reply
	report  *db.Report
}

type opKind uint8

const (
	opReply    opKind = iota // the device answered
	opTimedOut               // the session's reply clock ran out
	opEnded                  // a claim landed after its session ended: give back
	opReport                 // the device reported state (state.go)
)

// writeCommands records replies, time-outs and give-backs atomically, then
// queues the wake-ups of the edges that wait on them. Of a command's reply
// and time-out, the one queued first wins: the queue is in the order the
// node saw them, so a reply received in time beats the time-out, however
// long the database took to come back.
func (n *Node) writeCommands(ctx context.Context, ops []commandOp) error {
	var timeouts []db.Delivery
	var replies []db.Reply
	var ended []string
	var reports []db.Report
	settled := make(map[uuid.UUID]bool) // a reply or time-out of the batch came first
	for _, op := range ops {
		switch {
		case op.kind == opEnded:
			ended = append(ended, op.session.deviceID)
		case op.kind == opReport:
			reports = append(reports, *op.report)
		case settled[op.id]:
		case op.kind == opReply:
			settled[op.id] = true
			replies = append(replies, *op.reply)
		case op.kind == opTimedOut:
			settled[op.id] = true
			timeouts = append(timeouts, db.Delivery{ID: op.id, DeviceID: op.session.deviceID, SessionID: op.session.id})
		}
	}
	// One statement is atomic by itself: BEGIN and COMMIT would only add two
	// round trips to the hot path.
	inTx := n.store.InTx
	kinds := 0
	for _, n := range []int{len(replies), len(timeouts), len(ended), len(reports)} {
		if n > 0 {
			kinds++
		}
	}
	if kinds < 2 {
		inTx = func(_ context.Context, fn func(*db.Store) error) error { return fn(n.store) }
	}
	var changes []db.Change
	var reported, tooLarge []string
	var nReplies, nTimedOut int
	err := inTx(ctx, func(tx *db.Store) error {
		changes, nReplies, nTimedOut = changes[:0], 0, 0
		if len(ended) > 0 {
			if err := tx.GiveBackEnded(ctx, ended); err != nil {
				return err
			}
		}
		if len(replies) > 0 {
			ch, err := tx.StoreReplies(ctx, replies)
			if err != nil {
				return err
			}
			changes, nReplies = append(changes, ch...), len(ch)
		}
		if len(reports) > 0 {
			var err error
			if reported, tooLarge, err = tx.StoreReports(ctx, reports); err != nil {
				return err
			}
		}
		if len(timeouts) > 0 {
			ch, err := tx.FailUnanswered(ctx, timeouts)
			if err != nil {
				return err
			}
			changes, nTimedOut = append(changes, ch...), len(ch)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, id := range tooLarge {
		n.log.Warn("a report would leave the device's reported state over 32 KiB: not stored", "device", id)
	}
	n.metrics.reportsTooLarge.Add(float64(len(tooLarge)))
	for _, id := range reported {
		_ = n.notices.Push(db.Notice{Reported: id})
	}
	n.metrics.replies.Add(float64(nReplies))
	n.metrics.timedOut.Add(float64(nTimedOut))
	for i := range changes {
		// Counted once, here: only the statement that moved a command to
		// a final status returns it.
		if c := changes[i].Command; c != nil && c.Status.Final() {
			n.metrics.final.WithLabelValues(string(c.Status)).Inc()
		}
		_ = n.notices.Push(db.Notice{Change: &changes[i]})
	}
	return nil
}

// presenceOp is a session that opened (connect), that the node asserts again
// after its lease was reaped (reassert), or that closed (neither).
type presenceOp struct {
	session  db.Session
	connect  bool
	reassert bool
}

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
	// One transaction: a batch that failed is redone whole, and a connect
	// is never written twice (a newer session elsewhere may have come
	// between the tries).
	var displaced []db.Displaced
	err := n.store.InTx(ctx, func(tx *db.Store) error {
		displaced = nil
		if len(connects) > 0 {
			var err error
			if displaced, err = tx.Connect(ctx, n.cfg.Node, connects); err != nil {
				return err
			}
		}
		if len(reasserts) > 0 {
			if err := tx.Reassert(ctx, n.cfg.Node, reasserts); err != nil {
				return err
			}
		}
		if len(gone) > 0 {
			return tx.Disconnect(ctx, n.cfg.Node, gone)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for i := range displaced {
		_ = n.notices.Push(db.Notice{Kick: &displaced[i]})
	}
	if len(displaced) > 0 {
		newer := make(map[string]uuid.UUID, len(connects))
		for _, s := range connects {
			newer[s.DeviceID] = s.SessionID
		}
		for _, d := range displaced {
			n.logReplaced(d.DeviceID, d.SessionID, newer[d.DeviceID], d.NodeID)
		}
	}
	return nil
}

// writeEvents stores a batch of device events, then wakes the edges that
// stream events (one wake-up naming the batch's highest id). Should the
// wake-up be lost, edges still find the events on their next poll.
func (n *Node) writeEvents(ctx context.Context, events []db.DeviceEvent) error {
	last, err := n.store.InsertEvents(ctx, events)
	if err == nil && last != 0 {
		_ = n.notices.Push(db.Notice{Events: last})
	}
	return err
}
