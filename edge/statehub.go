package edge

import (
	"strings"
	"sync"
)

// stateHub wakes this edge's state streams (GET /v1/devices/{id}/state as
// an event stream) when their device's state changes. A change is stored
// by any edge (a desired patch) or any node (a report), which then names
// the device on db.StateChannel; the hub signals the streams of that
// device, and each reads the state again. A wake-up carries no state: one
// lost, or many merged, costs nothing but a read, and a listener that
// reconnected wakes every stream (it may have missed some).
type stateHub struct {
	mu   sync.Mutex
	subs map[string]map[chan struct{}]struct{} // device → its streams' signals
}

func newStateHub() *stateHub {
	return &stateHub{subs: make(map[string]map[chan struct{}]struct{})}
}

// subscribe returns a signal for the device's changes. A stream
// subscribes before its first read of the state, so that no change falls
// between the two.
func (h *stateHub) subscribe(deviceID string) chan struct{} {
	c := make(chan struct{}, 1)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.subs[deviceID] == nil {
		h.subs[deviceID] = make(map[chan struct{}]struct{})
	}
	h.subs[deviceID][c] = struct{}{}
	return c
}

func (h *stateHub) unsubscribe(deviceID string, c chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.subs[deviceID], c)
	if len(h.subs[deviceID]) == 0 {
		delete(h.subs, deviceID)
	}
}

// onNotify wakes the streams of the devices a payload names, a line each.
func (h *stateHub) onNotify(payload string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.subs) == 0 {
		return
	}
	for line := range strings.Lines(payload) {
		for c := range h.subs[strings.TrimSpace(line)] {
			raise(c)
		}
	}
}

// wakeAll wakes every stream: the listener (re)connected.
func (h *stateHub) wakeAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, streams := range h.subs {
		for c := range streams {
			raise(c)
		}
	}
}

// raise sets a signal of capacity one, if it is not set already.
func raise(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}
