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
