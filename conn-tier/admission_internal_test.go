package conntier

import (
	"net"
	"net/http"
	"sync/atomic"
	"testing"
)

// fakeListener hands out pipe ends and records whether the gate had a slot
// free when each Accept reached it.
type fakeListener struct {
	net.Listener
	released *atomic.Bool
	sawFree  chan bool
}

func (l *fakeListener) Close() error { return nil }

func (l *fakeListener) Accept() (net.Conn, error) {
	l.sawFree <- l.released.Load()
	c, _ := net.Pipe()
	return c, nil
}

// A full gate accepts again only once a connection is upgraded or closed.
func TestHandshakeGateWaitsForASlot(t *testing.T) {
	var released atomic.Bool
	inner := &fakeListener{released: &released, sawFree: make(chan bool, 2)}
	g := newHandshakeGate(inner, 1)

	first, err := g.Accept()
	if err != nil {
		t.Fatal(err)
	}
	<-inner.sawFree
	accepted := make(chan error, 1)
	go func() {
		_, err := g.Accept()
		accepted <- err
	}()
	released.Store(true)
	g.connState(first, http.StateHijacked)
	if free := <-inner.sawFree; !free {
		t.Fatal("the second Accept reached the listener before the first connection's slot was freed")
	}
	if err := <-accepted; err != nil {
		t.Fatal(err)
	}
	if n := g.inProgress(); n != 1 {
		t.Fatalf("%d in progress, want 1", n)
	}

	// Closing the gate frees an Accept waiting for a slot.
	go func() {
		_, err := g.Accept()
		accepted <- err
	}()
	g.Close()
	if err := <-accepted; err == nil {
		t.Fatal("Accept on a closed gate returned a connection")
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
