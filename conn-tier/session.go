package conntier

import (
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/websocket"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/device/protocol"
	"github.com/switchboard-iot/switchboard/internal/problem"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

// closeGrace is how long a closing session waits for the device to answer
// the close frame before the socket is cut.
const closeGrace = time.Second

// outFrame is a frame queued for the device; command frames carry their id
// and timeout so the writer can start the reply clock as the frame goes out
// (and append the deadline it sets to the frame), and their delivery's
// change, for the edges once it is written.
type outFrame struct {
	data    []byte
	command uuid.UUID
	timeout time.Duration
	change  *db.Change
}

// session is one device connection on this node.
type session struct {
	node       *Node
	ws         *websocket.Conn
	deviceID   string
	id         uuid.UUID // time-ordered by the node's clock, but only an identity: PostgreSQL orders sessions
	remoteAddr string
	checkedAt  time.Time // when its credentials were read

	// writeMu guards the write queue. No goroutine waits on an idle
	// session's writes: the first frame queued starts a writer, which ends
	// once the queue is empty (see enqueue). At 15,000 idle devices a node
	// keeps one goroutine per session, its reader.
	writeMu sync.Mutex
	queue   []outFrame // commands waiting for the writer; nil when empty
	pingDue bool       // the node's pinger asked for a ping; it goes first
	// pongsDue counts the device's pings not yet answered. Pongs are
	// counted, not queued: a ping flood is paced by the device's rate
	// (4029), never closed for a full queue.
	pongsDue int
	// errorsDue are error frames answering refused frames (an event the
	// node cannot take, a type it does not know), at most maxErrorsDue:
	// a device that sends bad frames without reading is paced by its rate,
	// and is not sent more refusals than it reads.
	errorsDue [][]byte
	// stateDue is the device's desired document waiting to be written
	// (state.go), the latest only; stateSent its version, or the version
	// last written: a version not above it is not sent again.
	stateDue  []byte
	stateSent int64
	writing   bool           // a writer goroutine runs
	ended     bool           // nothing more is written: the session ended or a write failed
	writer    sync.WaitGroup // the running writer, waited for as the session ends

	// closing is cancelled when the node closes or cuts the session: a read
	// pump waiting for room to store a reply lets go.
	closing       context.Context
	cancelClosing context.CancelFunc

	// registered is set once the session's presence row is written.
	registered atomic.Bool

	// budget is the device's budget of messages on this node, shared with
	// its other sessions here (limits.go); nil: no limit.
	budget *deviceBudget

	// deadlineMu orders read-deadline changes: once the session is closing,
	// nothing may push the deadline past the close grace.
	deadlineMu sync.Mutex
	closedFor  string // the label of the node's first close, under deadlineMu (logs)

	inflightMu sync.Mutex // guards held and awaiting
	// held holds the "delivered" wake-ups of commands written on this
	// session, each sent to the edges MarkDelay after its write unless the
	// device's reply comes first: the reply's wake-up then tells both
	// steps, and a fast device costs its edge one wake-up, not two. Made
	// on the first command.
	held map[uuid.UUID]*db.Change
	// awaiting holds the reply clocks of commands written on this session:
	// one that runs out queues the command's failure behind every reply
	// this node received before, so a reply that came in time wins however
	// late the database takes it. Made on the first command.
	awaiting map[uuid.UUID]replyClock

	// backlogged is set when the device may have more pending commands than
	// its queue took: the writer wakes the deliverer again once the queue
	// has drained to half (see waitForRoom).
	backlogged atomic.Bool
}

// newSessionID is a UUIDv7 from the node's clock: sessions sort by when
// their node saw them, which helps a reader of the logs; which session of a
// device is the newest is PostgreSQL's to say, never a node clock's.
func newSessionID(now time.Time) uuid.UUID {
	var id uuid.UUID
	secret.Fill(id[:])
	var ms [8]byte
	binary.BigEndian.PutUint64(ms[:], uint64(now.UnixMilli()))
	copy(id[:6], ms[2:])
	id[6] = 0x70 | id[6]&0x0f // version 7
	id[8] = 0x80 | id[8]&0x3f // RFC 9562 variant
	return id
}

// commandRoom is how many claimed commands a session may hold unwritten:
// its whole send queue, which holds nothing else. A device with a backlog
// is paced, never closed for a full queue.
func (n *Node) commandRoom() int { return n.cfg.SendQueue }

func (s *session) dbSession() db.Session {
	return db.Session{DeviceID: s.deviceID, SessionID: s.id, RemoteAddr: s.remoteAddr}
}

// handleConnect authenticates a device, upgrades, and runs its session.
func (n *Node) handleConnect(w http.ResponseWriter, r *http.Request) {
	if refusal := n.admit(); refusal != "" {
		n.refuse(w, refusal)
		return
	}
	started := false
	defer func() {
		if !started {
			n.leave()
		}
	}()
	deviceID, devSecret, ok := r.BasicAuth()
	if !ok || !db.ValidDeviceID(deviceID) {
		n.metrics.connects.WithLabelValues("unauthorized").Inc()
		n.refusedConnect(r, "", http.StatusUnauthorized, "no_credentials")
		unauthorized(w, "HTTP Basic credentials device_id:secret are required")
		return
	}
	if !n.guardAuth(w, r, deviceID, devSecret) {
		return
	}
	checkedAt := time.Now() // before the read: see revocations
	creds, err := n.credentials.Do(r.Context(), deviceID)
	switch {
	case errors.Is(err, db.ErrNotFound) || (err == nil && !creds.Accepts(devSecret)):
		n.authFailed(r, deviceID, devSecret, err == nil)
		// The same answer for an unknown device and a wrong secret; the
		// log, read by operators only, tells them apart.
		n.metrics.connects.WithLabelValues("unauthorized").Inc()
		why := "unknown_device"
		if err == nil {
			why = "wrong_secret"
		}
		n.refusedConnect(r, deviceID, http.StatusUnauthorized, why)
		unauthorized(w, "unknown device or wrong secret")
		return
	case err == nil && creds.Disabled: // told only to who knows the secret
		n.metrics.connects.WithLabelValues("unauthorized").Inc()
		n.refusedConnect(r, deviceID, http.StatusUnauthorized, "disabled")
		unauthorized(w, "device disabled")
		return
	case err != nil:
		n.log.Error("checking device credentials", "device", deviceID, "err", err)
		n.metrics.connects.WithLabelValues("error").Inc()
		problem.Unavailable.WriteRetryAfter(w, "cannot check credentials now", 5*time.Second)
		return
	}
	if !websocket.IsWebSocketUpgrade(r) {
		problem.WebSocketRequired.Write(w,
			"connect with a WebSocket client, offering the subprotocol "+protocol.Subprotocol)
		return
	}
	if offered := websocket.Subprotocols(r); len(offered) > 0 && !slices.Contains(offered, protocol.Subprotocol) {
		problem.UnsupportedSubprotocol.Write(w,
			"this node speaks "+protocol.Subprotocol)
		return
	}
	if !n.admitConnect(w, deviceID) {
		return
	}
	// Date tells a device the node's clock, by which command deadlines are
	// written: a device whose own clock is off can allow for it.
	ws, err := n.upgrader.Upgrade(w, r, http.Header{"Date": {time.Now().UTC().Format(http.TimeFormat)}})
	if err != nil {
		return // the upgrader has answered
	}
	n.metrics.connects.WithLabelValues("ok").Inc()
	s := &session{
		node:       n,
		ws:         ws,
		deviceID:   deviceID,
		id:         newSessionID(n.cfg.Clock()),
		remoteAddr: r.RemoteAddr,
		checkedAt:  checkedAt,
		budget:     n.holdBudget(deviceID),
	}
	s.closing, s.cancelClosing = context.WithCancel(context.Background())
	// The session runs on a goroutine of its own, and this handler returns:
	// net/http's connection goroutine then ends, and with it the 8 KiB of
	// request buffers it holds for the life of a hijacked connection. The
	// node's session group owns the goroutine; closeAll and cut stop it.
	started = true
	go func() {
		defer n.leave()
		s.serve()
	}()
}

func unauthorized(w http.ResponseWriter, detail string) {
	w.Header().Set("WWW-Authenticate", `Basic realm="switchboard devices"`)
	problem.Unauthorized.Write(w, detail)
}

// serve runs the session until the device goes away or is closed.
func (s *session) serve() {
	n := s.node
	n.metrics.sessions.Inc()
	defer n.metrics.sessions.Dec()
	if old := n.hub.add(s); old != nil {
		n.logReplaced(s.deviceID, old.id, s.id, "")
		go old.disconnect(disconnectReplaced)
	}
	if n.draining.Load() {
		// Admitted just before the drain began, registered just after its
		// snapshot of the hub: close it like the others.
		s.disconnect(disconnectDraining)
	}
	if reason, ok := n.revocations.since(s.deviceID, s.checkedAt); ok {
		// Its credentials were read before the device was disabled or
		// deleted, and the notice came before it was in the hub.
		s.disconnect(disconnectRevoked(reason))
	}
	// The presence row commits before pending commands are read: a command
	// stored earlier is found by that read, a later one finds the row.
	if err := s.connectPresence(); err != nil {
		if s.closing.Err() == nil { // else it was closed meanwhile, for its own reason
			s.log(slog.LevelError, "writing presence", "err", err)
			s.disconnect(disconnectUnavailable)
		}
	} else {
		s.registered.Store(true)
		n.countConnect()
		s.log(slog.LevelDebug, "device connected", "remote", s.remoteAddr)
		n.deliverer.wake(s.deviceID)
		n.deliverer.wakeState(s.deviceID)
	}

	ended := s.readPump()
	n.metrics.disconnects.WithLabelValues(ended).Inc()
	// The log says why the node closed it (replaced, draining, ...), where
	// the metric's label says only that it did.
	reason := ended
	s.deadlineMu.Lock()
	if ended == "closed_by_node" && s.closedFor != "" {
		reason = s.closedFor
	}
	s.deadlineMu.Unlock()
	if s.registered.Load() {
		n.countDisconnect(reason)
	}

	n.hub.remove(s)
	s.cancelClosing()
	s.endWrites()
	s.ws.Close()
	s.stopClocks() // what it left unanswered is given back, not failed
	n.releaseBudget(s.deviceID, s.budget)
	// The removal gives back what the session left unanswered. Push: one
	// item per session, and the session's goroutine must not wait here.
	if err := n.presence.Push(presenceOp{session: s.dbSession()}); err != nil {
		s.log(slog.LevelError, "queueing the presence removal", "err", err)
	}
	s.log(slog.LevelDebug, "device disconnected", "reason", reason)
}

// log logs about the session. Sessions keep no logger of their own: a
// slog.Logger.With per session would cost each idle device its attributes.
func (s *session) log(level slog.Level, msg string, args ...any) {
	s.node.log.Log(context.Background(), level, msg, append([]any{"device", s.deviceID, "session", s.id}, args...)...)
}

// connectPresence writes the session's presence row, waiting while the
// presence batcher retries a database that is away, for up to 10s.
func (s *session) connectPresence() error {
	ctx, cancel := context.WithTimeout(s.closing, 10*time.Second)
	defer cancel()
	return s.node.presence.Do(ctx, presenceOp{session: s.dbSession(), connect: true})
}

// readPump reads frames until the socket fails or closes, and says how
// the session ended (the reason label of switchboard_conn_disconnects_total).
func (s *session) readPump() (ended string) {
	defer func() {
		// The node's own close comes first: the read then fails in any of
		// the ways below.
		// A bare return below follows a close of the node's.
		if s.closing.Err() != nil || ended == "" {
			ended = "closed_by_node"
			s.awaitCloseAnswer()
		}
	}()
	n := s.node
	s.ws.SetReadLimit(n.cfg.MaxFrame)
	s.extendReadDeadline()
	s.ws.SetPongHandler(func(string) error { s.extendReadDeadline(); return nil })
	for {
		kind, frame, err := s.ws.ReadMessage()
		if err != nil {
			if errors.Is(err, websocket.ErrReadLimit) {
				// gorilla sent the 1009 as it refused the frame: this counts
				// it (gorilla writes no second close frame).
				s.disconnect(disconnectTooBig)
				return "closed_by_node"
			}
			s.log(slog.LevelDebug, "read ended", "err", err)
			var closed *websocket.CloseError
			var netErr net.Error
			switch {
			case errors.As(err, &closed):
				return "closed_by_device"
			case errors.As(err, &netErr) && netErr.Timeout():
				return "timeout"
			}
			return "lost"
		}
		s.extendReadDeadline()
		if kind != websocket.TextMessage {
			s.reject("binary frames are not part of " + protocol.Subprotocol)
			return
		}
		msg, err := protocol.Decode(frame)
		var refused *protocol.DecodeError
		if errors.As(err, &refused) && refused.Code != "" {
			// A bad event, or a type this node does not know: said in an
			// error frame, and the session goes on. It counts against the
			// rate like the event it would have been.
			if _, closed := s.charge("refused"); closed {
				return
			}
			s.refuse(refused)
			continue
		}
		if err != nil {
			s.reject(err.Error())
			return
		}
		n.metrics.frames.WithLabelValues(msg.Type).Inc()
		switch msg.Type {
		case protocol.TypePing:
			if _, closed := s.charge(msg.Type); closed {
				return
			}
			s.pong()
		case protocol.TypePong:
		case protocol.TypeReply:
			id := uuid.MustParse(msg.ID) // Decode checked the form
			awaited := s.answer(id)
			// A reply read is stored, over the rate or not.
			s.storeReply(db.Reply{ID: id, DeviceID: s.deviceID, OK: *msg.OK, Result: msg.Result, Error: msg.Error})
			if !awaited {
				if _, closed := s.charge(msg.Type); closed {
					return
				}
			}
		case protocol.TypeReport:
			// Counted against the rate like an event, but stored all the
			// same: a report, like a reply, is never shed.
			_, closed := s.charge(msg.Type)
			s.storeReport(db.Report{DeviceID: s.deviceID, Patch: msg.Reported})
			if closed {
				return
			}
		case protocol.TypeEvent:
			// Telemetry may be shed under overload or over the device's
			// rate; replies never are.
			over, closed := s.charge(msg.Type)
			if !over && !n.events.TryAdd(db.DeviceEvent{DeviceID: s.deviceID, Name: msg.Name, Data: msg.Data}) {
				n.metrics.eventsShed.Inc()
			}
			if closed {
				return
			}
		default:
			s.reject("devices may not send " + msg.Type + " frames")
			return
		}
	}
}

// awaitCloseAnswer reads and drops what the device sent after the node's
// close frame, until its answer or closeGrace (disconnect set the
// deadline): a socket closed with unread data is reset, and a device still
// sending, a flooding one say, would lose the close frame and its code.
func (s *session) awaitCloseAnswer() {
	for {
		if _, _, err := s.ws.NextReader(); err != nil {
			return
		}
	}
}

// storeReply queues a reply for the database. While the queue is full (the
// database is slow or away) the read pump waits here, which stops reading
// this device only; pings still go out, and its read deadline restarts
// once the reply is queued, so the wait is not held against the device. A
// reply read from a session that is closing is queued regardless: nothing
// read is dropped.
func (s *session) storeReply(r db.Reply) {
	s.storeDurable(commandOp{kind: opReply, id: r.ID, session: s, reply: &r})
}

// storeDurable queues what a device sent that must not be dropped (a
// reply, a report), as storeReply says.
func (s *session) storeDurable(op commandOp) {
	n := s.node
	if n.commands.TryAdd(op) {
		return
	}
	n.metrics.replyWaits.Inc()
	if err := n.commands.Add(s.closing, op); err != nil && s.closing.Err() != nil {
		_ = n.commands.Push(op)
	}
	s.extendReadDeadline()
}

func (s *session) reject(reason string) { s.disconnect(disconnectBadMessage(reason)) }

// maxErrorsDue bounds the error frames waiting to be written to a device.
const maxErrorsDue = 8

// refuse answers a frame refused without closing the session with an error
// frame, ahead of queued commands; past maxErrorsDue waiting, it is not
// sent (the device is not reading them).
func (s *session) refuse(e *protocol.DecodeError) {
	n := s.node
	n.metrics.refusedFrames.WithLabelValues(e.Code).Inc()
	s.log(slog.LevelDebug, "frame refused", "error", e.Code, "reason", e.Reason, "name", e.Name)
	frame, err := protocol.Encode(e.ErrorFrame())
	if err != nil {
		return // strings always encode
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if !s.ended && len(s.errorsDue) < maxErrorsDue {
		s.errorsDue = append(s.errorsDue, frame)
		s.startWriterLocked()
	}
}

func (s *session) extendReadDeadline() {
	s.deadlineMu.Lock()
	defer s.deadlineMu.Unlock()
	if s.closing.Err() == nil {
		_ = s.ws.SetReadDeadline(time.Now().Add(s.node.cfg.ReadTimeout))
	}
}

// enqueue queues a command frame for the device and starts a writer if
// none runs. A device whose queue is full is not reading: it is closed
// rather than allowed to hold frames forever (a backstop: the deliverer
// claims no more than the queue's room).
func (s *session) enqueue(frame outFrame) bool {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if s.ended {
		return false
	}
	if len(s.queue) >= s.node.cfg.SendQueue {
		go s.disconnect(disconnectSlow)
		return false
	}
	s.queue = append(s.queue, frame)
	s.startWriterLocked()
	return true
}

// pong answers a device's ping, ahead of queued commands.
func (s *session) pong() {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if !s.ended {
		s.pongsDue++
		s.startWriterLocked()
	}
}

// ping asks for a WebSocket ping, ahead of any queued frame. A ping already
// due is not doubled: a device that does not read gets one at a time.
func (s *session) ping() {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if !s.ended && !s.pingDue {
		s.pingDue = true
		s.startWriterLocked()
	}
}

// startWriterLocked starts the writer unless one runs; writeMu is held.
func (s *session) startWriterLocked() {
	if !s.writing {
		s.writing = true
		s.writer.Add(1)
		go s.write()
	}
}

// write owns the socket's data writes while frames are queued, and ends
// when the queue is empty. A command's delivery was recorded before it was
// queued (ClaimDeliveries); once its frame is written, the edges hear of
// it (holdChange), and a device with more pending is read again as its
// queue drains. A failed write closes the socket: the reader fails and
// ends the session, which gives back what it did not answer.
func (s *session) write() {
	defer s.writer.Done()
	n := s.node
	for {
		s.writeMu.Lock()
		if s.ended || (len(s.queue) == 0 && !s.pingDue && s.pongsDue == 0 && len(s.errorsDue) == 0 && s.stateDue == nil) {
			s.writing = false
			s.queue = nil // an idle session holds no buffer
			s.writeMu.Unlock()
			return
		}
		ping := s.pingDue
		var frame outFrame
		var state, refusal bool
		var written time.Time
		switch {
		case ping:
			s.pingDue = false
		case s.pongsDue > 0:
			s.pongsDue--
			frame = outFrame{data: protocol.Pong}
		case len(s.errorsDue) > 0:
			frame, refusal = outFrame{data: s.errorsDue[0]}, true
			s.errorsDue = s.errorsDue[1:]
			if len(s.errorsDue) == 0 {
				s.errorsDue = nil // an idle session holds no buffer
			}
		case s.stateDue != nil:
			frame, state = outFrame{data: s.stateDue}, true
			s.stateDue = nil
		default:
			frame = s.queue[0]
			s.queue[0] = outFrame{}
			s.queue = s.queue[1:]
			// Before the write (a reply can beat the write's return), and
			// while the queue is locked: holding finds the command in the
			// one place or the other. The reply clock starts after written,
			// so the deadline the frame carries comes before the node stops
			// waiting, never after.
			written = time.Now()
			s.setWritten(frame.command, frame.timeout, frame.change)
		}
		drained := len(s.queue) <= lowWater(n)
		s.writeMu.Unlock()
		if frame.command != uuid.Nil && drained && s.backlogged.CompareAndSwap(true, false) {
			n.deliverer.wake(s.deviceID) // claim the next ones while these go out
		}
		if frame.command != uuid.Nil {
			// The deadline is the delivery's, known only now: a redelivery
			// carries its own.
			frame.data = protocol.AppendDeadline(frame.data, written.Add(frame.timeout))
		}

		var err error
		if ping {
			err = s.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(n.cfg.WriteTimeout))
		} else {
			_ = s.ws.SetWriteDeadline(time.Now().Add(n.cfg.WriteTimeout))
			err = s.ws.WriteMessage(websocket.TextMessage, frame.data)
			switch {
			case err != nil:
			case frame.command != uuid.Nil:
				n.metrics.sentCommand.Inc()
				s.holdChange(frame.command)
			case state:
			case refusal:
				n.metrics.sentError.Inc()
			default:
				n.metrics.sentPong.Inc()
			}
		}
		if err != nil {
			s.writeMu.Lock()
			s.ended, s.queue = true, nil
			s.writeMu.Unlock()
			// After the node's close frame, the read pump awaits the
			// device's answer: closing now would reset the socket under it.
			if !errors.Is(err, websocket.ErrCloseSent) {
				s.ws.Close()
			}
		}
	}
}

// endWrites stops the session's writes and waits for a running writer.
func (s *session) endWrites() {
	s.writeMu.Lock()
	s.ended, s.queue, s.pingDue, s.pongsDue, s.errorsDue, s.stateDue = true, nil, false, 0, nil, nil
	s.writeMu.Unlock()
	s.writer.Wait()
}

// room is how many more claimed commands the session's queue takes; none
// once its writes ended. Only the deliverer queues commands, so the room
// it reads can only grow until it queues them.
func (s *session) room() int {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if s.ended {
		return 0
	}
	return s.node.commandRoom() - len(s.queue)
}

// holding returns the commands the session holds: queued, or written and
// awaiting their reply. Locks in the writer's order: writeMu, then
// inflightMu.
func (s *session) holding() []uuid.UUID {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.inflightMu.Lock()
	defer s.inflightMu.Unlock()
	ids := make([]uuid.UUID, 0, len(s.queue)+len(s.awaiting))
	for _, f := range s.queue {
		ids = append(ids, f.command)
	}
	for id := range s.awaiting {
		ids = append(ids, id)
	}
	return ids
}

// lowWater is how far a backlogged device's queue drains before the
// deliverer claims its next commands: half of it, so that a deep backlog is
// claimed in batches of half a queue, not a statement per command.
func lowWater(n *Node) int { return n.commandRoom() / 2 }

// deliver queues a command claimed for this session (ch is the claim's
// change). It reports false when the session's writes have ended or its
// queue is full: the command was then claimed by a session that is
// ending, whose end gives it back.
func (s *session) deliver(ch *db.Change) bool {
	cmd := ch.Command
	frame, err := protocol.Encode(protocol.Message{Type: protocol.TypeCommand, ID: cmd.ID.String(), Name: cmd.Name, Args: cmd.Args})
	if err != nil {
		// The edge checked the args as this encoding writes them: a bug.
		// The session ends, and its end gives the command back.
		s.log(slog.LevelError, "encoding a command", "command", cmd.ID, "err", err)
		s.disconnect(disconnectUnavailable)
		return false
	}
	return s.enqueue(outFrame{data: frame, command: cmd.ID, timeout: time.Duration(cmd.Timeout), change: ch})
}

// setWritten notes that the command's frame is going out: it holds the
// delivery's change for the edges, and starts the reply clock.
func (s *session) setWritten(id uuid.UUID, timeout time.Duration, change *db.Change) {
	s.inflightMu.Lock()
	defer s.inflightMu.Unlock()
	if change != nil {
		if s.held == nil {
			s.held = make(map[uuid.UUID]*db.Change)
		}
		s.held[id] = change
	}
	if s.awaiting == nil {
		s.awaiting = make(map[uuid.UUID]replyClock)
	}
	if old, ok := s.awaiting[id]; ok {
		old.timer.Stop()
	}
	s.awaiting[id] = replyClock{written: time.Now(), timer: time.AfterFunc(timeout, func() {
		s.inflightMu.Lock()
		_, still := s.awaiting[id]
		delete(s.awaiting, id)
		s.inflightMu.Unlock()
		if still {
			_ = s.node.commands.Push(commandOp{kind: opTimedOut, id: id, session: s})
		}
	})}
}

// replyClock is a written command's wait for its reply.
type replyClock struct {
	written time.Time
	timer   *time.Timer // fails the command when it fires
}

// holdChange tells the edges of a written command's delivery after
// MarkDelay, unless the reply comes first and tells them of both.
func (s *session) holdChange(id uuid.UUID) {
	if d := s.node.cfg.MarkDelay; d > 0 {
		time.AfterFunc(d, func() { s.sendChange(id) })
	} else {
		s.sendChange(id)
	}
}

func (s *session) sendChange(id uuid.UUID) {
	s.inflightMu.Lock()
	ch := s.held[id]
	delete(s.held, id)
	s.inflightMu.Unlock()
	if ch != nil {
		_ = s.node.notices.Push(db.Notice{Change: ch})
	}
}

// answer stops the command's reply clock and drops its held change: the
// reply's own change tells the edges the outcome, and their streams fill
// in the delivery. It reports whether the session awaited this reply (a
// reply to a command it wrote, in time), and times the wait.
func (s *session) answer(id uuid.UUID) (awaited bool) {
	s.inflightMu.Lock()
	defer s.inflightMu.Unlock()
	delete(s.held, id)
	c, ok := s.awaiting[id]
	if !ok {
		return false
	}
	c.timer.Stop()
	delete(s.awaiting, id)
	s.node.metrics.replyTime.Observe(time.Since(c.written).Seconds())
	return true
}

// stopClocks stops every reply clock of a session that ended: what it
// left unanswered is given back, not failed.
func (s *session) stopClocks() {
	s.inflightMu.Lock()
	defer s.inflightMu.Unlock()
	for id, c := range s.awaiting {
		c.timer.Stop()
		delete(s.awaiting, id)
	}
}

// disconnect counts why the node closes the session, sends the close frame
// and gives the device closeGrace to answer it before the socket is cut.
// Safe to call from any goroutine, more than once: each call is counted,
// the first is sent.
func (s *session) disconnect(d disconnect) {
	s.node.metrics.closes.WithLabelValues(d.label).Inc()
	s.deadlineMu.Lock()
	first := s.closing.Err() == nil
	if first {
		s.cancelClosing()
		s.closedFor = d.label
		_ = s.ws.SetReadDeadline(time.Now().Add(closeGrace))
	}
	s.deadlineMu.Unlock()
	if first {
		_ = s.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(d.code, d.reason), time.Now().Add(closeGrace))
	}
}

// cut closes the socket at once, without a close frame.
func (s *session) cut() {
	s.cancelClosing()
	s.ws.Close()
}
