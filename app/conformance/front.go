package conformance

import (
	"crypto/tls"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// front is the suite's TCP front, the load balancer a device connects to:
// it forwards each connection to its current node, TLS untouched. Each
// device instance gets a front of its own, so that the front's record of
// connections is that device's. The suite acts through it as the network
// would: it cuts every connection (a node that died), sends new ones to
// another node, goes silent (a node that hangs, its socket open), or
// answers with an impostor's certificate.
type front struct {
	name string // the device it fronts, for the log
	log  *slog.Logger
	ln   net.Listener
	addr string // 127.0.0.1:port
	wg   sync.WaitGroup

	mu       sync.Mutex // guards the following
	closed   bool
	backend  string // where new connections go
	impostor *tls.Config
	links    map[*link]struct{}
	accepts  []time.Time // every connection accepted, in order
	ends     []time.Time // when each forwarded connection ended, in order
	// For connections the impostor answered: how many said hello (a TLS
	// ClientHello), how many of those are over, and how many sent bytes
	// after the handshake (an HTTP request, credentials and all).
	hellos, impostorDone, leaks int
}

// link is one forwarded connection.
type link struct {
	client, backend net.Conn
	silent          atomic.Bool // forward nothing more, close nothing
}

func newFront(name, backend string, log *slog.Logger) (*front, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	f := &front{name: name, log: log, ln: ln, addr: ln.Addr().String(), backend: backend, links: map[*link]struct{}{}}
	f.wg.Go(f.accept)
	return f, nil
}

// close stops accepting, closes every connection and waits for the
// goroutines.
func (f *front) close() {
	f.ln.Close()
	f.mu.Lock()
	f.closed = true
	for l := range f.links {
		l.client.Close()
		l.backend.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

func (f *front) accept() {
	for {
		conn, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		f.accepts = append(f.accepts, time.Now())
		backend, impostor := f.backend, f.impostor
		f.mu.Unlock()
		f.log.Debug("front: accepted", "device", f.name, "backend", backend, "impostor", impostor != nil)
		if impostor != nil {
			f.wg.Go(func() { f.impersonate(conn, impostor) })
		} else {
			f.wg.Go(func() { f.forward(conn, backend) })
		}
	}
}

// route sends new connections to backend (a node's host:port), forwarded.
func (f *front) route(backend string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.backend, f.impostor = backend, nil
}

// impersonate has new connections answered by the front itself, with
// config's certificate.
func (f *front) impersonate(conn net.Conn, config *tls.Config) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	said := false
	cfg := config.Clone()
	cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		said = true
		f.mu.Lock()
		f.hellos++
		f.mu.Unlock()
		return nil, nil
	}
	srv := tls.Server(conn, cfg)
	leaked := false
	if srv.Handshake() == nil {
		// A device that checked its pin has hung up by now, or does
		// within the deadline; one that did not sends its request.
		var b [1]byte
		n, _ := srv.Read(b[:])
		leaked = n > 0
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if said {
		f.impostorDone++
	}
	if leaked {
		f.leaks++
	}
}

// useImpostor has new connections answered with config's certificate.
func (f *front) useImpostor(config *tls.Config) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.impostor = config
}

func (f *front) forward(client net.Conn, backend string) {
	b, err := net.DialTimeout("tcp", backend, 2*time.Second)
	if err != nil {
		client.Close()
		return
	}
	l := &link{client: client, backend: b}
	f.mu.Lock()
	if f.closed { // accepted as the front closed
		f.mu.Unlock()
		client.Close()
		b.Close()
		return
	}
	f.links[l] = struct{}{}
	f.mu.Unlock()
	var once sync.Once
	end := func(fromNode bool) {
		once.Do(func() {
			f.mu.Lock()
			f.ends = append(f.ends, time.Now())
			f.mu.Unlock()
			f.log.Debug("front: ended", "device", f.name, "by_node", fromNode)
		})
	}
	var copies sync.WaitGroup
	copies.Go(func() { f.copy(l, client, b, false, end) })
	copies.Go(func() { f.copy(l, b, client, true, end) })
	copies.Wait()
	f.mu.Lock()
	delete(f.links, l)
	f.mu.Unlock()
}

// copy forwards from src to dst until src ends; then, unless the link
// went silent, it closes both sides. A silent link reads on and forwards
// nothing: the device's socket stays open, with nothing on it, until the
// device closes it.
func (f *front) copy(l *link, src, dst net.Conn, fromNode bool, end func(fromNode bool)) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !l.silent.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil && !l.silent.Load() {
				err = werr
			}
		}
		if err != nil {
			break
		}
	}
	if l.silent.Load() && fromNode {
		return // the node gave up: the device must notice by itself
	}
	end(fromNode)
	l.client.Close()
	l.backend.Close()
}

// cut closes every connection at once, without a word: to the device, as
// if its node died.
func (f *front) cut() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for l := range f.links {
		l.client.Close()
		l.backend.Close()
	}
}

// silence stops forwarding on every open connection, leaving the sockets
// open: a node that hangs.
func (f *front) silence() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for l := range f.links {
		l.silent.Store(true)
	}
}

// acceptsAfter returns the connections accepted after t.
func (f *front) acceptsAfter(t time.Time) []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []time.Time
	for _, a := range f.accepts {
		if a.After(t) {
			out = append(out, a)
		}
	}
	return out
}

// endsAfter returns when the connections that ended after t ended.
func (f *front) endsAfter(t time.Time) []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []time.Time
	for _, e := range f.ends {
		if e.After(t) {
			out = append(out, e)
		}
	}
	return out
}

// impostorCounts returns hellos, finished hellos and leaks.
func (f *front) impostorCounts() (hellos, done, leaks int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hellos, f.impostorDone, f.leaks
}
