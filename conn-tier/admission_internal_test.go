package conntier

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/switchboard-iot/switchboard/internal/clientaddr"
)

// gateForTest runs a handshake gate on a loopback port; reasons receives
// why each silent connection it closed was closed.
func gateForTest(t *testing.T, limits gateLimits) (g *handshakeGate, reasons chan string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reasons = make(chan string, 16)
	g = newHandshakeGate(ln, limits, func(reason string) { reasons <- reason })
	t.Cleanup(func() { g.Close() })
	return g, reasons
}

// dialGate connects to g from the loopback address from, and sends hello
// unless it is empty.
func dialGate(t *testing.T, g *handshakeGate, from, hello string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c, err := d.Dial("tcp", g.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if hello != "" {
		if _, err := c.Write([]byte(hello)); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// until polls cond, failing t after a deadline.
func until(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// closedByGate checks the gate closed c: a read ends at once.
func closedByGate(t *testing.T, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); errors.Is(err, os.ErrDeadlineExceeded) || err == nil {
		t.Fatalf("the connection is still open (read: %v)", err)
	}
}

func silentAt(g *handshakeGate, addr string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if q := g.byAddress[netip.MustParseAddr(addr)]; q != nil {
		return q.Len()
	}
	return 0
}

// A connection that has spoken is handed out past silent ones, with its
// first byte; the next waits for a handshake slot, not for the silent.
func TestHandshakeGateHandsOutSpokenConnections(t *testing.T) {
	g, _ := gateForTest(t, gateLimits{handshakes: 1, silent: 10, silentPerAddress: 10, firstByte: time.Minute})
	dialGate(t, g, "127.0.0.2", "")
	dialGate(t, g, "127.0.0.1", "hello")
	first, err := g.Accept()
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(first, got); err != nil || string(got) != "hello" {
		t.Fatalf("read %q, %v; want hello", got, err)
	}

	dialGate(t, g, "127.0.0.1", "x")
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := g.Accept()
		accepted <- c
	}()
	until(t, "the second connection to speak", func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.queued == 1
	})
	select {
	case <-accepted:
		t.Fatal("a second connection was handed out while the one slot was taken")
	default:
	}
	g.connState(first, http.StateHijacked)
	if c := <-accepted; c == nil {
		t.Fatal("no connection once the slot came free")
	}
	if h, silent := g.load(); h != 1 || silent != 1 {
		t.Fatalf("load: %d handshakes, %d silent; want 1 and 1", h, silent)
	}
}

// A connection that stops sending halfway through its handshake gives back
// its slot while the node waits on it, and is listed as silent.
func TestHandshakeGateFreesTheSlotsOfStalledConnections(t *testing.T) {
	g, _ := gateForTest(t, gateLimits{handshakes: 1, silent: 10, silentPerAddress: 10, firstByte: time.Minute})
	stalledClient := dialGate(t, g, "127.0.0.1", "\x16")
	stalled, err := g.Accept()
	if err != nil {
		t.Fatal(err)
	}
	readErr := make(chan error, 1)
	go func() {
		_, err := io.ReadFull(stalled, make([]byte, 2)) // the first byte, then a wait
		readErr <- err
	}()
	until(t, "the stalled connection's wait", func() bool { h, silent := g.load(); return h == 0 && silent == 1 })
	dialGate(t, g, "127.0.0.1", "\x16")
	if _, err := g.Accept(); err != nil {
		t.Fatal(err)
	}
	stalledClient.Close()
	if err := <-readErr; err == nil {
		t.Fatal("the stalled connection read past its client's close")
	}
	if h, silent := g.load(); h != 1 || silent != 0 {
		t.Fatalf("load: %d handshakes, %d silent; want 1 and 0", h, silent)
	}
}

// Silent connections are closed after the first-byte timeout, and, oldest
// first, past the cap of their address and the node's, once idle (here at
// once: idleAfter is zero).
func TestHandshakeGateClosesSilentConnections(t *testing.T) {
	g, reasons := gateForTest(t, gateLimits{handshakes: 1, silent: 3, silentPerAddress: 2, firstByte: time.Minute})
	a1 := dialGate(t, g, "127.0.0.2", "")
	until(t, "a1 placed", func() bool { return silentAt(g, "127.0.0.2") == 1 })
	a2 := dialGate(t, g, "127.0.0.2", "")
	until(t, "a2 placed", func() bool { return silentAt(g, "127.0.0.2") == 2 })
	dialGate(t, g, "127.0.0.2", "")
	closedByGate(t, a1)
	if r := <-reasons; r != "address" {
		t.Fatalf("closed for %q, want address", r)
	}
	until(t, "a3 placed", func() bool { return silentAt(g, "127.0.0.2") == 2 })
	dialGate(t, g, "127.0.0.3", "")
	until(t, "b1 placed", func() bool { return silentAt(g, "127.0.0.3") == 1 })
	dialGate(t, g, "127.0.0.3", "")
	closedByGate(t, a2)
	if r := <-reasons; r != "node" {
		t.Fatalf("closed for %q, want node", r)
	}

	quick, reasons := gateForTest(t, gateLimits{handshakes: 1, silent: 3, silentPerAddress: 2, firstByte: 50 * time.Millisecond})
	closedByGate(t, dialGate(t, quick, "127.0.0.1", ""))
	if r := <-reasons; r != "timeout" {
		t.Fatalf("closed for %q, want timeout", r)
	}

	// Connections silent for less than idleAfter stay, past the caps.
	spared, reasons := gateForTest(t, gateLimits{handshakes: 1, silent: 1, silentPerAddress: 1, firstByte: time.Minute, idleAfter: time.Minute})
	dialGate(t, spared, "127.0.0.2", "")
	dialGate(t, spared, "127.0.0.2", "")
	until(t, "both placed", func() bool { return silentAt(spared, "127.0.0.2") == 2 })
	select {
	case r := <-reasons:
		t.Fatalf("a young silent connection was closed (%s)", r)
	default:
	}
}

// Behind a trusted proxy, a silent connection counts under the client its
// PROXY header names, not under the proxy.
func TestHandshakeGateCountsProxiedClients(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	trusted, _ := clientaddr.ParseTrusted("127.0.0.0/8")
	reasons := make(chan string, 4)
	g := newHandshakeGate(clientaddr.Listener(ln, trusted), gateLimits{handshakes: 1, silent: 10, silentPerAddress: 1, firstByte: time.Minute},
		func(reason string) { reasons <- reason })
	t.Cleanup(func() { g.Close() })
	viaProxy := func(client string) net.Conn {
		c := dialGate(t, g, "127.0.0.1", "")
		h := proxyproto.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.ParseIP(client), Port: 40000}, c.RemoteAddr())
		if _, err := h.WriteTo(c); err != nil {
			t.Fatal(err)
		}
		return c
	}
	first := viaProxy("192.0.2.1")
	viaProxy("192.0.2.2")
	until(t, "both clients placed", func() bool { return silentAt(g, "192.0.2.1") == 1 && silentAt(g, "192.0.2.2") == 1 })
	viaProxy("192.0.2.1")
	closedByGate(t, first)
	if r := <-reasons; r != "address" {
		t.Fatalf("closed for %q, want address", r)
	}
}

// A node sheds its excess over the region's mean, bounded by its share,
// and nothing within the slack or below the mean.
func TestRebalanceShed(t *testing.T) {
	for _, tc := range []struct {
		name  string
		mine  int
		loads map[string]int
		share float64
		want  int
	}{
		{"alone", 100, map[string]int{"a": 100}, 0.05, 0},
		{"after a scale-up: bounded by the share", 15000, map[string]int{"a": 15000, "b": 0, "c": 0}, 0.05, 750},
		{"near the mean: the excess", 120, map[string]int{"a": 120, "b": 90, "c": 90}, 0.5, 20},
		{"within the slack", 105, map[string]int{"a": 105, "b": 100, "c": 95}, 0.05, 0},
		{"a few over: no move", 10, map[string]int{"a": 10, "b": 2}, 0.5, 0},
		{"below the mean", 10, map[string]int{"a": 10, "b": 100}, 0.5, 0},
	} {
		if got := rebalanceShed(tc.mine, tc.loads, tc.share); got != tc.want {
			t.Errorf("%s: rebalanceShed(%d, %v, %v) = %d, want %d", tc.name, tc.mine, tc.loads, tc.share, got, tc.want)
		}
	}
}
