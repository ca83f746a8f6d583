package conntier

import (
	"container/list"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
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

// Silent connections are those the node waits on: accepted and nothing
// read yet, or halfway through a TLS handshake or a connect request and
// waiting for the client's next bytes. A device sends each flight a round
// trip after the node's (plus its own computation), so a connection that
// has been silent for seconds is most likely not a device.
const (
	// DefaultFirstByteTimeout is how long a connection may stay silent
	// before its first byte: the TLS handshake's own deadline, since a
	// microcontroller may take seconds to make the key share its
	// ClientHello carries. After the first byte, the HTTP server's
	// deadlines apply.
	DefaultFirstByteTimeout = 10 * time.Second
	// DefaultMaxSilent bounds a node's idle silent connections; past it,
	// the one silent longest is closed.
	DefaultMaxSilent = 2048
	// DefaultMaxSilentPerAddress bounds the idle silent connections of one
	// source address; past it, that address's silent longest is closed.
	DefaultMaxSilentPerAddress = 1024
	// defaultIdleAfter is how long a connection must have been silent
	// before it may be closed to make room. Younger ones are never closed
	// for room, caps or not: a reconnect storm from a carrier NAT puts
	// thousands of devices on one address, all in their first round trips
	// at once.
	defaultIdleAfter = 5 * time.Second
)

// gateLimits are a handshake gate's bounds.
type gateLimits struct {
	handshakes       int           // connections the node works on at once
	silent           int           // idle silent connections, node-wide
	silentPerAddress int           // idle silent connections of one source address
	firstByte        time.Duration // how long a connection may stay silent before its first byte
	idleAfter        time.Duration // how long a silent connection is spared (defaultIdleAfter)
}

// handshakeGate is the node's listener. It accepts every connection at
// once and waits for its first byte (a goroutine each, blocked in a read)
// before handing it to the HTTP server. From then until its upgrade (or
// close) a connection holds one of the handshake slots while the node
// works on it, and gives it back whenever the node waits on its client
// (gateConn.Read). So connections that stop sending, before their first
// byte or halfway through their handshake or request, hold no slot and
// cannot hold back devices that keep talking. Silent connections are
// closed at their deadlines (firstByte, then the HTTP server's), or, once
// idle, silent longest first, when there are too many on the node or from
// one address.
//
// While the slots and the connections that spoke and wait for one make up
// the handshake limit, the gate stops accepting, so a reconnect storm
// waits in the kernel's accept queue instead of flattening the node with
// handshakes it cannot finish in time.
type handshakeGate struct {
	ln     net.Listener
	limits gateLimits
	// closedSilent counts a silent connection the gate closed, by reason:
	// timeout, address or node (the cap it made room under).
	closedSilent func(reason string)

	ready   chan *gateConn // connections that have spoken, for Accept
	slots   chan struct{}  // one per connection the node works on
	wake    chan struct{}  // a slot came free: the accept loop may go on
	closing chan struct{}  // closed by Close
	done    chan struct{}  // closed when the accept loop has returned
	err     error          // why it returned; read once done is closed
	tasks   sync.WaitGroup
	once    sync.Once

	mu     sync.Mutex // guards the following, and the gateConn fields marked so
	shut   bool       // Close has begun: no more connections are tracked
	queued int        // spoke, and wait for a slot
	// The silent connections, each in the order its silence began: all of
	// them, and those of each source address.
	silent    list.List
	byAddress map[netip.Addr]*list.List
}

// connection phases, for gateConn.Read.
const (
	talking  = iota // handshake and request: reads are waits on the client
	working         // the handler runs: it holds its slot until the upgrade
	finished        // upgraded or closed
)

// gateConn is a connection from its accept to its upgrade (or close).
type gateConn struct {
	net.Conn
	gate   *handshakeGate
	first  byte // read by the gate, returned by the first Read
	unread bool
	phase  atomic.Int32 // talking, working, finished; set under gate.mu

	// guarded by gate.mu
	addr     netip.Addr    // known once its first read began
	holds    bool          // a handshake slot
	since    time.Time     // when its silence began
	elem     *list.Element // in silent, while silent
	addrElem *list.Element // in byAddress[addr], while silent and once addr is known
}

func newHandshakeGate(ln net.Listener, limits gateLimits, closedSilent func(reason string)) *handshakeGate {
	g := &handshakeGate{
		ln: ln, limits: limits, closedSilent: closedSilent,
		ready: make(chan *gateConn), slots: make(chan struct{}, limits.handshakes), wake: make(chan struct{}, 1),
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
	var c *gateConn
	select {
	case c = <-g.ready:
	case <-g.done:
		return nil, g.err
	}
	if !g.takeSlot(c) {
		c.Close()
		<-g.done // the accept loop ends with the gate
		return nil, g.err
	}
	return c, nil
}

// Close stops accepting, closes the connections not handed out yet and
// the silent ones, and waits for the gate's goroutines.
func (g *handshakeGate) Close() error {
	var err error
	g.once.Do(func() {
		close(g.closing)
		err = g.ln.Close()
		g.mu.Lock()
		g.shut = true
		var silent []net.Conn
		for e := g.silent.Front(); e != nil; e = e.Next() {
			silent = append(silent, e.Value.(*gateConn).Conn)
		}
		g.mu.Unlock()
		for _, c := range silent {
			c.Close()
		}
		g.tasks.Wait()
	})
	return err
}

// connState follows a connection handed out: a kept-alive one waits for
// its next request as for its handshake, and an upgraded or closed one
// gives back its slot.
func (g *handshakeGate) connState(nc net.Conn, state http.ConnState) {
	c := asGateConn(nc)
	if c == nil {
		return
	}
	g.mu.Lock()
	switch state {
	case http.StateIdle:
		c.phase.Store(talking)
	case http.StateHijacked, http.StateClosed:
		c.phase.Store(finished)
		g.releaseSlot(c)
	}
	g.mu.Unlock()
}

// connContext notes the connection in its requests' context, for
// handling.
func (g *handshakeGate) connContext(ctx context.Context, nc net.Conn) context.Context {
	return context.WithValue(ctx, gateConnKey{}, asGateConn(nc))
}

type gateConnKey struct{}

// handling marks a connection as worked on once its request is read: its
// handler (credentials, upgrade) keeps the slot, and the HTTP server's
// background read of it, which begins with the handler, is no wait.
func (g *handshakeGate) handling(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c, _ := r.Context().Value(gateConnKey{}).(*gateConn); c != nil {
			g.mu.Lock()
			c.phase.CompareAndSwap(talking, working)
			g.mu.Unlock()
		}
		next.ServeHTTP(w, r)
	})
}

func asGateConn(nc net.Conn) *gateConn {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	c, _ := nc.(*gateConn)
	return c
}

// load is how many connections hold a handshake slot, and how many are
// silent.
func (g *handshakeGate) load() (handshakes, silent int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.slots), g.silent.Len()
}

// takeSlot waits for a handshake slot for c, counted meanwhile as having
// spoken; false if the gate closed first.
func (g *handshakeGate) takeSlot(c *gateConn) bool {
	g.mu.Lock()
	g.queued++
	g.mu.Unlock()
	var took bool
	select {
	case g.slots <- struct{}{}:
		took = true
	case <-g.closing:
	}
	g.mu.Lock()
	g.queued--
	c.holds = took
	g.mu.Unlock()
	return took
}

// releaseSlot gives back c's slot, if it holds one, and wakes the accept
// loop. g.mu must be held.
func (g *handshakeGate) releaseSlot(c *gateConn) {
	if !c.holds {
		return
	}
	c.holds = false
	<-g.slots
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

// acceptLoop accepts while the connections the node works on, or will as
// soon as a slot is free, are fewer than the handshake limit, whatever the
// silent ones: they claim none.
func (g *handshakeGate) acceptLoop() {
	defer close(g.done)
	pause := time.Duration(0)
	for {
		if !g.waitForRoom() {
			g.err = net.ErrClosed
			return
		}
		nc, err := g.ln.Accept()
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
		c := &gateConn{Conn: nc, gate: g, unread: true}
		if g.beginSilence(c, false) {
			g.tasks.Go(func() { g.awaitFirstByte(c) })
		}
	}
}

func (g *handshakeGate) waitForRoom() bool {
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

// awaitFirstByte reads a connection's first byte, then queues it for
// Accept. Behind a trusted proxy, the PROXY header that names the client
// is read first, under the same deadline.
func (g *handshakeGate) awaitFirstByte(c *gateConn) {
	_ = c.SetReadDeadline(time.Now().Add(g.limits.firstByte))
	addr := sourceAddress(c.RemoteAddr())
	g.mu.Lock()
	var evicted []eviction
	silent := c.elem != nil
	if silent {
		c.addr = addr
		evicted = g.placeAddress(c, evicted)
	}
	g.mu.Unlock()
	g.evict(evicted)
	if !silent {
		return // closed to make room, or by Close
	}
	var first [1]byte
	_, err := io.ReadFull(c.Conn, first[:])
	if !g.endSilence(c) {
		return // closed to make room, or by Close
	}
	if err != nil {
		c.Close()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			g.closedSilent("timeout")
		}
		return
	}
	_ = c.SetReadDeadline(time.Time{}) // the HTTP server sets the handshake's
	c.first = first[0]
	select {
	case g.ready <- c:
	case <-g.closing:
		c.Close()
	}
}

// Read returns the byte the gate read first, then reads the connection.
// Before its handler runs, a read is a wait on the client: the connection
// gives back its slot and is silent until the client's bytes come, then
// takes a slot again.
func (c *gateConn) Read(p []byte) (int, error) {
	if c.unread && len(p) > 0 {
		p[0], c.unread = c.first, false
		return 1, nil
	}
	if c.phase.Load() != talking {
		return c.Conn.Read(p) // a session's reads, after the upgrade
	}
	g := c.gate
	g.mu.Lock()
	g.releaseSlot(c)
	g.mu.Unlock()
	if !g.beginSilence(c, true) {
		return 0, net.ErrClosed
	}
	n, err := c.Conn.Read(p)
	if !g.endSilence(c) {
		return 0, net.ErrClosed // closed to make room
	}
	switch {
	case err != nil || c.phase.Load() != talking:
		// A failed read ends the connection; a read that began before the
		// handler (the HTTP server's background read) takes no slot.
		return n, err
	case !g.takeSlot(c):
		return 0, net.ErrClosed
	}
	return n, nil
}

// eviction is a silent connection closed to make room under a cap: node or
// address.
type eviction struct {
	c   *gateConn
	cap string
}

// beginSilence lists c as silent, under its address too if it is known,
// making room under the caps. False, with c closed, if the gate is
// closing.
func (g *handshakeGate) beginSilence(c *gateConn, addrKnown bool) bool {
	var evicted []eviction
	now := time.Now()
	g.mu.Lock()
	if g.shut {
		g.mu.Unlock()
		c.Close()
		return false
	}
	if g.silent.Len() >= g.limits.silent {
		if oldest := g.silent.Front().Value.(*gateConn); now.Sub(oldest.since) >= g.limits.idleAfter {
			g.endSilenceLocked(oldest)
			evicted = append(evicted, eviction{oldest, "node"})
		}
	}
	c.since, c.elem = now, g.silent.PushBack(c)
	if addrKnown {
		evicted = g.placeAddress(c, evicted)
	}
	g.mu.Unlock()
	g.evict(evicted)
	return true
}

// placeAddress lists silent c under its address, making room there.
// g.mu must be held.
func (g *handshakeGate) placeAddress(c *gateConn, evicted []eviction) []eviction {
	if q := g.byAddress[c.addr]; q != nil && q.Len() >= g.limits.silentPerAddress {
		if oldest := q.Front().Value.(*gateConn); time.Since(oldest.since) >= g.limits.idleAfter {
			g.endSilenceLocked(oldest) // may delete q from the map
			evicted = append(evicted, eviction{oldest, "address"})
		}
	}
	q := g.byAddress[c.addr]
	if q == nil {
		q = new(list.List)
		g.byAddress[c.addr] = q
	}
	c.addrElem = q.PushBack(c)
	return evicted
}

// evict closes the connections closed to make room.
func (g *handshakeGate) evict(evicted []eviction) {
	for _, e := range evicted {
		e.c.Close()
		g.closedSilent(e.cap)
	}
}

// endSilence takes c out of the silent lists; false if it was closed to
// make room (or by Close) meanwhile.
func (g *handshakeGate) endSilence(c *gateConn) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.endSilenceLocked(c)
}

func (g *handshakeGate) endSilenceLocked(c *gateConn) bool {
	if c.elem == nil {
		return false
	}
	g.silent.Remove(c.elem)
	c.elem = nil
	if c.addrElem != nil {
		q := g.byAddress[c.addr]
		q.Remove(c.addrElem)
		if q.Len() == 0 {
			delete(g.byAddress, c.addr)
		}
		c.addrElem = nil
	}
	return true
}

// sourceAddress is the address a connection's per-address cap counts it
// under: its client, or for IPv6 the client's /64, which one subscriber
// usually holds whole.
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
