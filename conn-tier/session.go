package conntier

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/websocket"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/device/protocol"
	"github.com/switchboard-iot/switchboard/internal/command"
	"github.com/switchboard-iot/switchboard/internal/problem"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

// closeGrace is how long a closing session waits for the device to answer
// the close frame before the socket is cut.
const closeGrace = time.Second

// outFrame is a frame queued for the device; command frames carry their id
// so the write pump can record the delivery once the frame is written.
type outFrame struct {
	data    []byte
	command uuid.UUID
}

// conn is one device session.
type conn struct {
	node       *Node
	ws         *websocket.Conn
	deviceID   string
	sessionID  uuid.UUID
	remoteAddr string

	send chan outFrame // frames for the write pump
	done chan struct{} // closed when the session ends

	// registered is set once the session's presence row is written.
	registered atomic.Bool

	// deadlineMu orders read-deadline changes: once closing is set, nothing
	// may push the deadline past the close grace.
	deadlineMu sync.Mutex
	closing    atomic.Bool

	inflightMu sync.Mutex             // guards inflight
	inflight   map[uuid.UUID]struct{} // written to the socket, delivery not yet recorded

	// backlogged is set when the deliverer left commands pending for want
	// of queue space; the write pump wakes the deliverer as the queue drains.
	backlogged atomic.Bool
}

// commandRoom is how much of the send queue commands may fill: the rest
// stays free for pongs, so a device with a backlog is paced, not dropped.
func (c *conn) commandRoom() bool { return len(c.send) < cap(c.send)-8 }

func (c *conn) session() db.Session {
	return db.Session{DeviceID: c.deviceID, SessionID: c.sessionID, RemoteAddr: c.remoteAddr}
}

// handleConnect authenticates a device, upgrades, and runs its session.
func (n *Node) handleConnect(w http.ResponseWriter, r *http.Request) {
	if !n.admit() {
		w.Header().Set("Retry-After", "1")
		problem.Write(w, http.StatusServiceUnavailable, "node-draining", "Node is draining", "connect to another node")
		return
	}
	defer n.sessions.Done()
	deviceID, devSecret, ok := r.BasicAuth()
	if !ok || !db.ValidDeviceID(deviceID) {
		n.metrics.connects.WithLabelValues("unauthorized").Inc()
		unauthorized(w, "HTTP Basic credentials device_id:secret are required")
		return
	}
	hash, err := n.store.DeviceSecretHash(r.Context(), deviceID)
	switch {
	case errors.Is(err, db.ErrNotFound) || (err == nil && !secret.Matches(devSecret, hash)):
		// The same answer for an unknown device and a wrong secret.
		n.metrics.connects.WithLabelValues("unauthorized").Inc()
		unauthorized(w, "unknown device or wrong secret")
		return
	case err != nil:
		n.log.Error("checking device credentials", "device", deviceID, "err", err)
		n.metrics.connects.WithLabelValues("error").Inc()
		w.Header().Set("Retry-After", "5")
		problem.Write(w, http.StatusServiceUnavailable, "unavailable", "Cannot check credentials now", "")
		return
	}
	if !websocket.IsWebSocketUpgrade(r) {
		problem.Write(w, http.StatusBadRequest, "websocket-required", "WebSocket upgrade required",
			"connect with a WebSocket client, offering the subprotocol "+protocol.Subprotocol)
		return
	}
	if offered := websocket.Subprotocols(r); len(offered) > 0 && !slices.Contains(offered, protocol.Subprotocol) {
		problem.Write(w, http.StatusBadRequest, "unsupported-subprotocol", "Unsupported subprotocol",
			"this node speaks "+protocol.Subprotocol)
		return
	}
	ws, err := n.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader has answered
	}
	n.metrics.connects.WithLabelValues("ok").Inc()
	c := &conn{
		node:       n,
		ws:         ws,
		deviceID:   deviceID,
		sessionID:  uuid.Must(uuid.NewV7()), // time-ordered: the newer session of a device wins
		remoteAddr: r.RemoteAddr,
		send:       make(chan outFrame, n.cfg.SendQueue),
		done:       make(chan struct{}),
		inflight:   make(map[uuid.UUID]struct{}),
	}
	c.serve()
}

func unauthorized(w http.ResponseWriter, detail string) {
	w.Header().Set("WWW-Authenticate", `Basic realm="switchboard devices"`)
	problem.Write(w, http.StatusUnauthorized, "unauthorized", "Unauthorized", detail)
}

// serve runs the session until the device goes away or is closed.
func (c *conn) serve() {
	n := c.node
	log := n.log.With("device", c.deviceID, "session", c.sessionID)
	n.metrics.sessions.Inc()
	defer n.metrics.sessions.Dec()
	if old := n.hub.add(c); old != nil {
		go old.close(protocol.CloseReplaced, "replaced by a newer session")
	}
	if n.draining.Load() {
		// Admitted just before the drain began, registered just after its
		// snapshot of the hub: close it like the others.
		c.close(protocol.CloseGoingAway, "node draining")
	}
	writerDone := make(chan struct{})
	go func() { defer close(writerDone); c.writePump() }()

	// The presence row commits before pending commands are read: a command
	// stored earlier is found by that read, a later one finds the row.
	if err := c.connectPresence(); errors.Is(err, errStale) {
		c.close(protocol.CloseReplaced, "replaced by a newer session")
	} else if err != nil {
		log.Error("writing presence", "err", err)
		c.close(protocol.CloseInternalError, "presence unavailable; reconnect later")
	} else {
		c.registered.Store(true)
		log.Debug("device connected", "remote", c.remoteAddr)
		n.deliverer.wake(c.deviceID)
	}

	c.readPump(log)

	n.hub.remove(c)
	close(c.done)
	<-writerDone
	c.ws.Close()
	if err := n.presence.Add(context.Background(), presenceOp{session: c.session()}); err != nil {
		log.Error("queueing the presence removal", "err", err)
	}
	log.Debug("device disconnected")
}

func (c *conn) connectPresence() error {
	op := presenceOp{session: c.session(), connect: true, done: make(chan error, 1)}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.node.presence.Add(ctx, op); err != nil {
		return err
	}
	select {
	case err := <-op.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-c.done:
		return errors.New("session closed")
	}
}

// readPump reads frames until the socket fails or closes.
func (c *conn) readPump(log *slog.Logger) {
	n := c.node
	c.ws.SetReadLimit(n.cfg.MaxFrame)
	c.extendReadDeadline()
	c.ws.SetPongHandler(func(string) error { c.extendReadDeadline(); return nil })
	for {
		kind, frame, err := c.ws.ReadMessage()
		if err != nil {
			// gorilla has already sent 1009 for an oversized frame.
			if errors.Is(err, websocket.ErrReadLimit) {
				n.metrics.closes.WithLabelValues("too_big").Inc()
			}
			log.Debug("read ended", "err", err)
			return
		}
		c.extendReadDeadline()
		if kind != websocket.TextMessage {
			c.reject("binary frames are not part of " + protocol.Subprotocol)
			return
		}
		msg, err := protocol.Decode(frame)
		if err != nil {
			c.reject(err.Error())
			return
		}
		n.metrics.frames.WithLabelValues(msg.Type).Inc()
		switch msg.Type {
		case protocol.TypePing:
			c.enqueue(outFrame{data: protocol.Pong})
		case protocol.TypePong:
		case protocol.TypeReply:
			id := uuid.MustParse(msg.ID) // Decode checked the form
			c.forget(id)
			reply := db.Reply{ID: id, DeviceID: c.deviceID, OK: *msg.OK, Result: msg.Result, Error: msg.Error}
			_ = n.commands.Add(context.Background(), commandOp{reply: &reply})
		case protocol.TypeEvent:
			_ = n.events.Add(context.Background(), db.DeviceEvent{DeviceID: c.deviceID, Name: msg.Name, Data: msg.Data})
		default:
			c.reject("devices may not send " + msg.Type + " frames")
			return
		}
	}
}

func (c *conn) reject(reason string) {
	c.node.metrics.closes.WithLabelValues("bad_message").Inc()
	c.close(protocol.CloseBadMessage, reason)
}

func (c *conn) extendReadDeadline() {
	c.deadlineMu.Lock()
	defer c.deadlineMu.Unlock()
	if !c.closing.Load() {
		_ = c.ws.SetReadDeadline(time.Now().Add(c.node.cfg.ReadTimeout))
	}
}

// writePump owns all data writes to the socket and sends the heartbeat. A
// command counts as delivered once its frame is written: frames still queued
// when the session ends stay pending and go out on the next session.
func (c *conn) writePump() {
	n := c.node
	ping := time.NewTicker(n.cfg.PingInterval)
	defer ping.Stop()
	for {
		var err error
		select {
		case frame := <-c.send:
			_ = c.ws.SetWriteDeadline(time.Now().Add(n.cfg.WriteTimeout))
			err = c.ws.WriteMessage(websocket.TextMessage, frame.data)
			if err == nil && frame.command != uuid.Nil {
				_ = n.commands.Add(context.Background(), commandOp{delivered: frame.command, conn: c})
			}
			if len(c.send) <= cap(c.send)/2 && c.backlogged.CompareAndSwap(true, false) {
				n.deliverer.wake(c.deviceID)
			}
		case <-ping.C:
			err = c.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(n.cfg.WriteTimeout))
		case <-c.done:
			return
		}
		if err != nil {
			c.ws.Close() // the read pump fails and ends the session
			return
		}
	}
}

// enqueue hands a frame to the write pump. A device whose queue is full is
// not reading: it is closed rather than allowed to hold frames forever.
func (c *conn) enqueue(frame outFrame) bool {
	select {
	case c.send <- frame:
		return true
	case <-c.done:
		return false
	default:
		c.node.metrics.closes.WithLabelValues("slow").Inc()
		go c.close(protocol.CloseTryAgainLater, "write queue full")
		return false
	}
}

// deliver queues a pending command for the device, once per session. The
// delivery is recorded after the frame is written, so a crash in between
// redelivers the command (at least once) instead of losing it. It reports
// false when the queue has no room: the command stays pending, and the
// device is woken again as its queue drains.
func (c *conn) deliver(cmd command.Command) bool {
	if !c.commandRoom() {
		c.backlogged.Store(true)
		// Look again: the write pump may have drained the queue before it
		// could see the flag. (If so, the flag only causes a spare wake-up.)
		if !c.commandRoom() {
			return false
		}
	}
	c.inflightMu.Lock()
	_, sent := c.inflight[cmd.ID]
	c.inflight[cmd.ID] = struct{}{}
	c.inflightMu.Unlock()
	if sent {
		return true
	}
	frame, err := protocol.Encode(protocol.Message{Type: protocol.TypeCommand, ID: cmd.ID.String(), Name: cmd.Name, Args: cmd.Args})
	if err != nil || !c.enqueue(outFrame{data: frame, command: cmd.ID}) {
		c.forget(cmd.ID) // still pending: delivered on the next session
		return false
	}
	return true
}

// forget drops a command from the in-flight set once its delivery is
// recorded or its reply came.
func (c *conn) forget(id uuid.UUID) {
	c.inflightMu.Lock()
	delete(c.inflight, id)
	c.inflightMu.Unlock()
}

// close sends a close frame and gives the device closeGrace to answer it
// before the socket is cut. Safe to call from any goroutine, more than once.
func (c *conn) close(code int, reason string) {
	c.deadlineMu.Lock()
	first := c.closing.CompareAndSwap(false, true)
	if first {
		_ = c.ws.SetReadDeadline(time.Now().Add(closeGrace))
	}
	c.deadlineMu.Unlock()
	if first {
		_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(closeGrace))
	}
}
