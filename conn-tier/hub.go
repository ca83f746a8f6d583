package conntier

import (
	"sync"

	"github.com/google/uuid"
)

// hub is the node's map of connected devices: at most one session each.
type hub struct {
	mu    sync.RWMutex     // guards conns
	conns map[string]*conn // by device id
}

// add makes c the device's session and returns the one it replaces, if any.
func (h *hub) add(c *conn) (replaced *conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	replaced = h.conns[c.deviceID]
	h.conns[c.deviceID] = c
	return replaced
}

// remove drops c unless a newer session already replaced it.
func (h *hub) remove(c *conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.conns[c.deviceID] == c {
		delete(h.conns, c.deviceID)
	}
}

func (h *hub) get(deviceID string) *conn {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.conns[deviceID]
}

// current reports whether session is the device's session here.
func (h *hub) current(deviceID string, session uuid.UUID) bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	c := h.conns[deviceID]
	return c != nil && c.sessionID == session
}

func (h *hub) len() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.conns)
}

func (h *hub) all() []*conn {
	h.mu.RLock()
	defer h.mu.RUnlock()
	out := make([]*conn, 0, len(h.conns))
	for _, c := range h.conns {
		out = append(out, c)
	}
	return out
}
