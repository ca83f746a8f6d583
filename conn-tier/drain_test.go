package conntier_test

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/switchboard-iot/switchboard/app/testsys"
	conntier "github.com/switchboard-iot/switchboard/conn-tier"
	"github.com/switchboard-iot/switchboard/device/protocol"
)

// A stopping node closes its sessions with 1001 in batches paced over the
// drain window, not all at once, and still leaves no rows behind.
func TestDrainIsPaced(t *testing.T) {
	t.Parallel()
	const devices = 120
	sys := testsys.New(t)
	// 300ms in 100ms ticks: batches of max(120/3, 50) = 50.
	node := sys.StartNode(t, "node-a", func(c *conntier.Config) { c.DrainWindow = 300 * time.Millisecond })
	var clients []*websocket.Conn
	for i := range devices {
		id := fmt.Sprintf("dev-%03d", i)
		clients = append(clients, connect(t, node, id, sys.AddDevice(t, id)))
	}
	testsys.Eventually(t, "every device in presence_live", func() bool {
		return count(t, sys, `SELECT count(*) FROM presence_live WHERE node_id = 'node-a'`) == devices
	})

	var mu sync.Mutex
	var batches []int
	node.OnDrainBatch(func(closed, left int) {
		mu.Lock()
		batches = append(batches, closed)
		mu.Unlock()
	})
	stopped := make(chan error, 1)
	go func() { stopped <- node.Stop() }()
	codes := make(chan int, devices)
	for _, ws := range clients {
		go func() { codes <- closeCode(ws) }()
	}
	for range devices {
		if code := <-codes; code != protocol.CloseGoingAway {
			t.Fatalf("a session ended with %d, want %d", code, protocol.CloseGoingAway)
		}
	}
	if err := <-stopped; err != nil {
		t.Fatalf("Stop: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []int{50, 50, 20}; !slices.Equal(batches, want) {
		t.Fatalf("drain batches %v, want %v", batches, want)
	}
	if n := count(t, sys, `SELECT count(*) FROM presence WHERE node_id = 'node-a'`); n != 0 {
		t.Fatalf("%d presence rows left", n)
	}
}

// closeCode reads until the session ends and returns its close code, 0 if
// it ended without one. It may run on any goroutine.
func closeCode(ws *websocket.Conn) int {
	_ = ws.SetReadDeadline(time.Now().Add(wait))
	for {
		if _, _, err := ws.ReadMessage(); err != nil {
			if ce, ok := err.(*websocket.CloseError); ok {
				return ce.Code
			}
			return 0
		}
	}
}
