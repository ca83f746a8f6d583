package conntier

import (
	"sync"

	"github.com/google/uuid"
)

// hub is the node's map of connected devices: at most one session each.
type hub struct {
	mu       sync.RWMutex        // guards sessions
	sessions map[string]*session // by device id
}

// add makes s the device's session and returns the one it replaces, if any.
func (h *hub) add(s *session) (replaced *session) {
	h.mu.Lock()
	defer h.mu.Unlock()
	replaced = h.sessions[s.deviceID]
	h.sessions[s.deviceID] = s
	return replaced
}

// remove drops s unless a newer session already replaced it.
func (h *hub) remove(s *session) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.sessions[s.deviceID] == s {
		delete(h.sessions, s.deviceID)
	}
}

func (h *hub) get(deviceID string) *session {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.sessions[deviceID]
}

// current reports whether id is the device's session here.
func (h *hub) current(deviceID string, id uuid.UUID) bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	s := h.sessions[deviceID]
	return s != nil && s.id == id
}

func (h *hub) len() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.sessions)
}

func (h *hub) all() []*session {
	h.mu.RLock()
	defer h.mu.RUnlock()
	out := make([]*session, 0, len(h.sessions))
	for _, s := range h.sessions {
		out = append(out, s)
	}
	return out
}

// slot returns the sessions in one of pingSlots, chosen by the session id's
// random last byte.
func (h *hub) slot(i int) []*session {
	h.mu.RLock()
	defer h.mu.RUnlock()
	var out []*session
	for _, s := range h.sessions {
		if int(s.id[15])%pingSlots == i {
			out = append(out, s)
		}
	}
	return out
}
