package conntier

import (
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/switchboard-iot/switchboard/internal/problem"
)

// Admission defaults.
const (
	// DefaultMaxHandshakes bounds the connections a node has accepted and
	// not yet upgraded: TLS handshakes, requests being read, credentials
	// being checked. Two cores complete a few thousand handshakes a second;
	// more in progress at once would only hold memory and file descriptors.
	DefaultMaxHandshakes = 256
	// fdReserve is what the session limit leaves of the open-files limit
	// besides the pool's connections and the handshakes: listeners, the
	// LISTEN connection, the ops port, log and certificate files.
	fdReserve = 64
	// fullRetryMin and fullRetryMax bound the Retry-After a full node
	// answers, drawn at random so that refused devices come back spread out.
	fullRetryMin = 2 * time.Second
	fullRetryMax = 10 * time.Second
)

// defaultMaxSessions is what the open-files limit leaves for sessions once
// the pool, the handshakes and the listeners have theirs.
func defaultMaxSessions(poolConns, handshakes int) int {
	return max(openFilesLimit()-poolConns-handshakes-fdReserve, 1)
}

// admit counts a connect request in, before any credentials are looked at,
// unless the node is draining or already holds MaxSessions sessions (those
// being set up count): refusal says which. Once the drain has begun,
// nothing is added to the group it waits for.
func (n *Node) admit() (refusal string) {
	n.drainMu.Lock()
	defer n.drainMu.Unlock()
	switch {
	case n.draining.Load():
		return "draining"
	case n.open.Load() >= int64(n.cfg.MaxSessions):
		return "full"
	}
	n.open.Add(1)
	n.sessions.Add(1)
	return ""
}

// leave counts out a request that admit counted in, once its session, if
// any, has ended.
func (n *Node) leave() {
	n.open.Add(-1)
	n.sessions.Done()
}

// refuse answers a connect request that admit turned away: 503, with a
// Retry-After that tells a draining node's devices to come back at once
// (to another node) and spreads out those of a full one.
func (n *Node) refuse(w http.ResponseWriter, refusal string) {
	n.metrics.refused.WithLabelValues(refusal).Inc()
	if refusal == "draining" {
		problem.NodeDraining.WriteRetryAfter(w, "connect to another node", time.Second)
		return
	}
	wait := fullRetryMin + rand.N(fullRetryMax-fullRetryMin+time.Second).Truncate(time.Second)
	problem.NodeFull.WriteRetryAfter(w,
		"this node holds as many devices as it may; connect to another node or retry later", wait)
}

// handshakeGate is the node's listener: it accepts a connection only while
// fewer than its limit are between their accept and their upgrade (or
// close), so a reconnect storm waits in the kernel's accept queue instead
// of flattening the node with handshakes it cannot finish in time. The
// HTTP server's ConnState hook reports each connection's end (release).
type handshakeGate struct {
	net.Listener
	slots     chan struct{} // one per connection in progress
	closed    chan struct{}
	closeOnce sync.Once
}

func newHandshakeGate(ln net.Listener, limit int) *handshakeGate {
	return &handshakeGate{Listener: ln, slots: make(chan struct{}, limit), closed: make(chan struct{})}
}

func (g *handshakeGate) Accept() (net.Conn, error) {
	select {
	case g.slots <- struct{}{}:
	case <-g.closed:
		return nil, net.ErrClosed
	}
	c, err := g.Listener.Accept()
	if err != nil {
		<-g.slots
	}
	return c, err
}

func (g *handshakeGate) Close() error {
	g.closeOnce.Do(func() { close(g.closed) })
	return g.Listener.Close()
}

// connState frees a connection's slot once it is upgraded or closed: every
// connection the server accepted ends in one of the two.
func (g *handshakeGate) connState(_ net.Conn, state http.ConnState) {
	if state == http.StateHijacked || state == http.StateClosed {
		<-g.slots
	}
}

// inProgress is how many connections hold a slot.
func (g *handshakeGate) inProgress() int { return len(g.slots) }
