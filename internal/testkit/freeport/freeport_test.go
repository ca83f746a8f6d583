package freeport

import (
	"net"
	"strconv"
	"testing"
)

// Loopback's ports are free, below the ephemeral range, and not handed
// out twice.
func TestLoopback(t *testing.T) {
	seen := map[string]bool{}
	for range 50 {
		addr, err := Loopback()
		if err != nil {
			t.Fatal(err)
		}
		if seen[addr] {
			t.Fatalf("%s handed out twice", addr)
		}
		seen[addr] = true
		host, port, _ := net.SplitHostPort(addr)
		if p, _ := strconv.Atoi(port); host != "127.0.0.1" || p < 1024 || p >= ephemeralStart() {
			t.Fatalf("%s: want 127.0.0.1 and a port in [1024, %d)", addr, ephemeralStart())
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("listening on %s: %v", addr, err)
		}
		ln.Close()
	}
}
