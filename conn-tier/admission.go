package conntier

import (
	"container/list"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/switchboard-iot/switchboard/internal/problem"
)

// Admission defaults.
const (
	// DefaultMaxHandshakes bounds the connections a node has taken on
	// (their first byte read) and not yet upgraded: TLS handshakes,
	// requests being read, credentials being checked. Two cores complete a few thousand handshakes a second;
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
// the pool, the handshakes, the silent connections and the listeners have
// theirs.
func defaultMaxSessions(poolConns, handshakes, silent int) int {
	return max(openFilesLimit()-poolConns-handshakes-silent-fdReserve, 1)
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

// Silent connections: accepted, and nothing read from them yet. A device
// sends its TLS ClientHello one round trip after its connect, so a silent
// connection is either a moment old or not a device.
const (
	// DefaultFirstByteTimeout is how long a silent connection is kept: the
	// TLS handshake's own deadline, since a microcontroller may take
	// seconds to make the key share its ClientHello carries. The caps,
	// not this, are what keep silent connections from costing devices.
	DefaultFirstByteTimeout = 10 * time.Second
	// DefaultMaxSilent bounds a node's silent connections; past it, the
	// oldest is closed to make room.
	DefaultMaxSilent = 2048
	// DefaultMaxSilentPerAddress bounds the silent connections of one
	// source address; past it, that address's oldest is closed. A carrier
	// NAT puts thousands of devices on one address, so it is generous: a
	// device is closed only if this many newer connections come from its
	// address before its first byte does.
	DefaultMaxSilentPerAddress = 1024
)

// gateLimits are a handshake gate's bounds.
type gateLimits struct {
	handshakes       int           // connections past their first byte and not yet upgraded
	silent           int           // silent connections, node-wide
	silentPerAddress int           // silent connections of one source address
	firstByte        time.Duration // how long a connection may stay silent
}

// handshakeGate is the node's listener. It accepts every connection at
// once and waits for its first byte (a goroutine each, blocked in a read)
// before handing it to the HTTP server, so silent connections take no
// handshake slot and cannot hold back devices that speak: they are closed
// after firstByte, or, oldest first, when there are too many of them, on
// the node or from one address. Connections that have spoken take one of
// the handshake slots until their upgrade (or close); while the slots are
// spoken for, the gate stops accepting, so a reconnect storm waits in the
// kernel's accept queue instead of flattening the node with handshakes it
// cannot finish in time. The HTTP server's ConnState hook reports each
// connection's end (connState).
type handshakeGate struct {
	ln     net.Listener
	limits gateLimits
	// closedSilent counts a silent connection the gate closed, by reason:
	// timeout, address or node (the cap it made room under).
	closedSilent func(reason string)

	ready   chan net.Conn // connections that have spoken, for Accept
	slots   chan struct{} // one per connection handed out and not yet upgraded or closed
	wake    chan struct{} // a slot came free: the accept loop may go on
	closing chan struct{} // closed by Close
	done    chan struct{} // closed when the accept loop has returned
	err     error         // why it returned; read once done is closed
	tasks   sync.WaitGroup
	once    sync.Once

	mu        sync.Mutex // guards the following
	shut      bool       // Close has begun: no more connections are tracked
	silent    list.List  // *silentConn, oldest first
	byAddress map[netip.Addr]*list.List
	queued    int // spoken, not yet handed out by Accept
}

// silentConn is a connection in the gate's lists until its first byte.
type silentConn struct {
	net.Conn
	addr         netip.Addr
	elem, inAddr *list.Element // nil once it left the lists
}

func newHandshakeGate(ln net.Listener, limits gateLimits, closedSilent func(reason string)) *handshakeGate {
	g := &handshakeGate{
		ln: ln, limits: limits, closedSilent: closedSilent,
		ready: make(chan net.Conn), slots: make(chan struct{}, limits.handshakes), wake: make(chan struct{}, 1),
		closing: make(chan struct{}), done: make(chan struct{}),
		byAddress: make(map[netip.Addr]*list.List),
	}
	g.tasks.Go(g.acceptLoop)
	return g
}

func (g *handshakeGate) Addr() net.Addr { return g.ln.Addr() }

// Accept hands out the next connection that has spoken once a handshake
// slot is free for it.
func (g *handshakeGate) Accept() (net.Conn, error) {
	var c net.Conn
	select {
	case c = <-g.ready:
	case <-g.done:
		return nil, g.err
	}
	taken := true
	select {
	case g.slots <- struct{}{}:
	case <-g.done:
		taken = false
		c.Close()
	}
	g.mu.Lock()
	g.queued--
	g.mu.Unlock()
	if !taken {
		return nil, g.err
	}
	return c, nil
}

// Close stops accepting, closes the silent connections and those that
// spoke but were not handed out, and waits for the gate's goroutines.
func (g *handshakeGate) Close() error {
	var err error
	g.once.Do(func() {
		close(g.closing)
		err = g.ln.Close()
		g.mu.Lock()
		g.shut = true
		var silent []net.Conn
		for e := g.silent.Front(); e != nil; e = e.Next() {
			silent = append(silent, e.Value.(*silentConn).Conn)
		}
		g.mu.Unlock()
		for _, c := range silent {
			c.Close()
		}
		g.tasks.Wait()
	})
	return err
}

// connState frees a connection's slot once it is upgraded or closed: every
// connection the server accepted ends in one of the two.
func (g *handshakeGate) connState(_ net.Conn, state http.ConnState) {
	if state == http.StateHijacked || state == http.StateClosed {
		<-g.slots
		select { // wake the accept loop
		case g.wake <- struct{}{}:
		default:
		}
	}
}

// load is how many connections hold a handshake slot, and how many are
// silent.
func (g *handshakeGate) load() (handshakes, silent int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.slots), g.silent.Len()
}

// acceptLoop accepts while the handshake slots are not all spoken for
// (taken, or claimed by connections that spoke), whatever the silent
// connections: they claim none.
func (g *handshakeGate) acceptLoop() {
	defer close(g.done)
	pause := time.Duration(0)
	for {
		if !g.waitForSlot() {
			g.err = net.ErrClosed
			return
		}
		c, err := g.ln.Accept()
		if err != nil {
			// Out of file descriptors, as net/http handles it: back off,
			// the connections that end will free some.
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				pause = min(max(2*pause, 5*time.Millisecond), time.Second)
				select {
				case <-time.After(pause):
					continue
				case <-g.closing:
				}
			}
			g.err = err
			return
		}
		pause = 0
		if w := g.track(c); w != nil {
			g.tasks.Go(func() { g.awaitFirstByte(w) })
		}
	}
}

func (g *handshakeGate) waitForSlot() bool {
	for {
		g.mu.Lock()
		busy := g.queued + len(g.slots)
		g.mu.Unlock()
		if busy < g.limits.handshakes {
			return true
		}
		select {
		case <-g.wake:
		case <-g.closing:
			return false
		}
	}
}

// track lists a connection just accepted as silent, closing the node's
// oldest silent connection if there are too many.
func (g *handshakeGate) track(c net.Conn) *silentConn {
	w := &silentConn{Conn: c}
	var evicted *silentConn
	g.mu.Lock()
	if g.shut {
		g.mu.Unlock()
		c.Close()
		return nil
	}
	if g.silent.Len() >= g.limits.silent {
		evicted = g.silent.Front().Value.(*silentConn)
		g.untrack(evicted)
	}
	w.elem = g.silent.PushBack(w)
	g.mu.Unlock()
	if evicted != nil {
		evicted.Close()
		g.closedSilent("node")
	}
	return w
}

// placeAddress lists a silent connection under its source address, closing
// that address's oldest silent connection if it has too many. False: the
// connection was closed meanwhile.
func (g *handshakeGate) placeAddress(w *silentConn, addr netip.Addr) bool {
	var evicted *silentConn
	g.mu.Lock()
	if w.elem == nil {
		g.mu.Unlock()
		return false
	}
	if q := g.byAddress[addr]; q != nil && q.Len() >= g.limits.silentPerAddress {
		evicted = q.Front().Value.(*silentConn)
		g.untrack(evicted) // may delete q from the map
	}
	q := g.byAddress[addr]
	if q == nil {
		q = new(list.List)
		g.byAddress[addr] = q
	}
	w.addr, w.inAddr = addr, q.PushBack(w)
	g.mu.Unlock()
	if evicted != nil {
		evicted.Close()
		g.closedSilent("address")
	}
	return true
}

// untrack takes w out of the lists; it reports whether w was in them.
// g.mu must be held.
func (g *handshakeGate) untrack(w *silentConn) bool {
	if w.elem == nil {
		return false
	}
	g.silent.Remove(w.elem)
	w.elem = nil
	if w.inAddr != nil {
		q := g.byAddress[w.addr]
		q.Remove(w.inAddr)
		if q.Len() == 0 {
			delete(g.byAddress, w.addr)
		}
		w.inAddr = nil
	}
	return true
}

// awaitFirstByte reads a connection's first byte, then queues it for
// Accept with the byte put back. Behind a trusted proxy, the PROXY header
// that names the client is read first, under the same deadline.
func (g *handshakeGate) awaitFirstByte(w *silentConn) {
	_ = w.SetReadDeadline(time.Now().Add(g.limits.firstByte))
	if !g.placeAddress(w, sourceAddress(w.RemoteAddr())) {
		return // closed to make room
	}
	var first [1]byte
	_, err := io.ReadFull(w.Conn, first[:])
	g.mu.Lock()
	tracked := g.untrack(w)
	if tracked && err == nil {
		g.queued++
	}
	g.mu.Unlock()
	switch {
	case !tracked:
		return // closed to make room, or by Close
	case err != nil:
		w.Close()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			g.closedSilent("timeout")
		}
		return
	}
	_ = w.SetReadDeadline(time.Time{}) // the HTTP server sets the handshake's
	select {
	case g.ready <- &spokenConn{Conn: w.Conn, first: first[0], unread: true}:
	case <-g.closing:
		w.Close()
		g.mu.Lock()
		g.queued--
		g.mu.Unlock()
	}
}

// sourceAddress is the address a connection's silent-connection cap
// counts it under: its client, or for IPv6 the client's /64, which one
// subscriber usually holds whole.
func sourceAddress(a net.Addr) netip.Addr {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	addr := ap.Addr().Unmap()
	if addr.Is6() {
		p, _ := addr.Prefix(64)
		return p.Addr()
	}
	return addr
}

// spokenConn is a connection whose first byte the gate read: its first Read
// returns that byte.
type spokenConn struct {
	net.Conn
	first  byte
	unread bool
}

func (c *spokenConn) Read(p []byte) (int, error) {
	if c.unread && len(p) > 0 {
		p[0], c.unread = c.first, false
		return 1, nil
	}
	return c.Conn.Read(p)
}
