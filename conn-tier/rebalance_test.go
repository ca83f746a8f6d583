package conntier_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/switchboard-iot/switchboard/app/testsys"
	conntier "github.com/switchboard-iot/switchboard/conn-tier"
	"github.com/switchboard-iot/switchboard/device/protocol"
)

// After a scale-up, the crowded node sheds a bounded share of its sessions
// each round with 1012, never below the mean, and stops once balanced: the
// devices move in steps, not in a stampede.
func TestRebalanceConverges(t *testing.T) {
	t.Parallel()
	const devices, share = 40, 0.25
	sys := testsys.New(t)
	tweak := func(c *conntier.Config) {
		c.RebalanceInterval = time.Second
		c.RebalanceShare = share
		c.RebalanceDelay = 300 * time.Millisecond
	}
	a := sys.StartNode(t, "node-a", tweak)
	newNodes := []*testsys.Node{sys.StartNode(t, "node-b", tweak), sys.StartNode(t, "node-c", tweak)}

	type round struct{ sessions, shed int }
	var mu sync.Mutex
	var rounds []round
	balanced := make(chan struct{})
	var once sync.Once
	// Rounds count once every device is on node-a: one that comes while
	// they still connect judges against a smaller mean (of fewer devices).
	var allConnected atomic.Bool
	a.OnRebalance(func(sessions, shed int) {
		if !allConnected.Load() {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		rounds = append(rounds, round{sessions, shed})
		if shed == 0 && len(rounds) > 1 && rounds[len(rounds)-2].shed > 0 {
			once.Do(func() { close(balanced) })
		}
	})

	// Devices reconnect after a 1012 to the new nodes in turn, as a load
	// balancer that prefers the emptier nodes would send them.
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	var next atomic.Int64
	var moved atomic.Int64
	for i := range devices {
		id := fmt.Sprintf("dev-%02d", i)
		devSecret := sys.AddDevice(t, id)
		ws := connect(t, a, id, devSecret)
		wg.Go(func() {
			for ctx.Err() == nil {
				stop := context.AfterFunc(ctx, func() { ws.Close() })
				code, reason := closeCodeReason(ws)
				stop()
				ws.Close()
				if code != protocol.CloseRebalance || ctx.Err() != nil {
					return
				}
				delay, _ := time.ParseDuration(reason[strings.LastIndex(reason, " ")+1:])
				select {
				case <-ctx.Done():
					return
				case <-time.After(delay):
				}
				node := newNodes[next.Add(1)%2]
				d := websocket.Dialer{TLSClientConfig: node.TLS(), Subprotocols: []string{protocol.Subprotocol}, HandshakeTimeout: wait}
				var err error
				if ws, _, err = d.DialContext(ctx, node.URL, basicAuth(id, devSecret)); err != nil {
					return
				}
				moved.Add(1)
			}
		})
	}

	allConnected.Store(true)

	select {
	case <-balanced:
	case <-time.After(30 * time.Second):
		t.Fatal("node-a did not stop shedding")
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("rounds of node-a (sessions, shed): %v; moved %d", rounds, moved.Load())
	const mean = devices / 3
	for _, r := range rounds {
		if limit := (r.sessions*int(share*100) + 99) / 100; r.shed > limit {
			t.Fatalf("node-a shed %d of %d sessions in one round, want at most %d", r.shed, r.sessions, limit)
		}
		if r.sessions-r.shed < mean {
			t.Fatalf("node-a shed %d of %d sessions, below the mean of %d", r.shed, r.sessions, mean)
		}
	}
	if m := int(moved.Load()); m > devices-mean {
		t.Fatalf("%d moves for %d devices over 3 nodes: more than the excess", m, devices)
	}
}

// closeCodeReason reads until the session ends and returns its close code
// and reason (0 without a close frame).
func closeCodeReason(ws *websocket.Conn) (int, string) {
	for {
		if _, _, err := ws.ReadMessage(); err != nil {
			if ce, ok := err.(*websocket.CloseError); ok {
				return ce.Code, ce.Text
			}
			return 0, ""
		}
	}
}

// MoveDevice closes one device's session with 1012 and the delay given,
// and says when the device has no session there. The node never
// rebalances by itself (a negative interval), and serves all the same.
func TestMoveDevice(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", func(c *conntier.Config) { c.RebalanceInterval = -1 })
	if node.MoveDevice("nobody", time.Second) {
		t.Fatal("MoveDevice of a device with no session reported one")
	}
	ws := connect(t, node, "dev-1", sys.AddDevice(t, "dev-1"))
	defer ws.Close()
	// The session joins the node's hub just after the upgrade.
	testsys.Eventually(t, "MoveDevice to find the session", func() bool { return node.MoveDevice("dev-1", 1500*time.Millisecond) })
	if code, reason := closeCodeReason(ws); code != protocol.CloseRebalance || reason != "rebalance: reconnect in 1.5s" {
		t.Fatalf("close %d %q, want 1012 \"rebalance: reconnect in 1.5s\"", code, reason)
	}
}
