package testsys

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// Proxy stands in for the load balancer in front of connection nodes: it
// forwards each TCP connection to the first of its backends that accepts
// it, so devices that lose their node come back on another. TLS passes
// through untouched.
type Proxy struct {
	Addr     string // 127.0.0.1:port
	ln       net.Listener
	backends []string

	wg    sync.WaitGroup
	mu    sync.Mutex // guards conns
	conns map[net.Conn]struct{}
}

// StartProxy listens on loopback until the test ends.
func StartProxy(t testing.TB, backends ...string) *Proxy {
	t.Helper()
	p := &Proxy{ln: listen(t), backends: backends, conns: make(map[net.Conn]struct{})}
	p.Addr = p.ln.Addr().String()
	p.wg.Go(p.accept)
	t.Cleanup(p.close)
	return p
}

func (p *Proxy) accept() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Go(func() { p.forward(client) })
	}
}

func (p *Proxy) forward(client net.Conn) {
	defer client.Close()
	var backend net.Conn
	for _, addr := range p.backends {
		var err error
		if backend, err = net.DialTimeout("tcp", addr, time.Second); err == nil {
			break
		}
	}
	if backend == nil {
		return
	}
	defer backend.Close()
	if !p.track(client, backend) {
		return
	}
	defer p.untrack(client, backend)
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		done <- struct{}{}
	}
	go pipe(backend, client)
	go pipe(client, backend)
	<-done // either side ended: end both
	client.Close()
	backend.Close()
	<-done
}

// track registers a forwarded pair, unless the proxy is closing.
func (p *Proxy) track(conns ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		return false
	}
	for _, c := range conns {
		p.conns[c] = struct{}{}
	}
	return true
}

func (p *Proxy) untrack(conns ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range conns {
		delete(p.conns, c)
	}
}

func (p *Proxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.conns = nil
	p.mu.Unlock()
	p.wg.Wait()
}
