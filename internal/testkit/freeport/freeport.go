// Package freeport chooses the loopback ports of processes a harness
// starts, before it starts them: the harness passes each its address as a
// flag and knows where to reach it, without reading the process's log.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// span is how many ports below the ephemeral range are chosen from.
const span = 12000

var (
	mu     sync.Mutex
	chosen = map[int]bool{} // guarded by mu: a port is handed out once per process
)

// Loopback returns an address 127.0.0.1:PORT whose port is free now. The
// port lies below the system's ephemeral range (net.ipv4.ip_local_port_range),
// where no client socket gets one by itself: a port of that range, free a
// moment ago, may be some connection's source port by the time the process
// listens on it.
func Loopback() (string, error) {
	hi := ephemeralStart()
	lo := max(1024, hi-span)
	mu.Lock()
	defer mu.Unlock()
	var err error
	for range 100 {
		port := lo + rand.N(hi-lo)
		if chosen[port] {
			continue
		}
		var ln net.Listener
		if ln, err = net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			ln.Close()
			chosen[port] = true
			return ln.Addr().String(), nil
		}
	}
	return "", fmt.Errorf("no free port in 127.0.0.1:%d-%d: %w", lo, hi-1, err)
}

// ephemeralStart is the first port the system hands to sockets that do not
// choose one (32768 unless configured otherwise).
func ephemeralStart() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	fields := strings.Fields(string(b))
	if len(fields) == 0 {
		return 32768
	}
	first, err := strconv.Atoi(fields[0])
	if err != nil || first <= 2048 {
		return 32768
	}
	return first
}
