package device

import "sync"

// dedup remembers the newest command ids and their replies. Delivery is at
// least once: a command redelivered after a reconnect is answered from
// here instead of being run twice.
type dedup struct {
	mu      sync.Mutex        // guards the following
	replies map[string][]byte // id → reply frame; nil while the handler runs
	order   []string          // ring of ids, oldest at next
	next    int
}

func newDedup(size int) *dedup {
	return &dedup{replies: make(map[string][]byte, size), order: make([]string, size)}
}

// begin records id. fresh is false when id was seen; reply is then its
// answer, or nil while the first run is still going.
func (d *dedup) begin(id string) (reply []byte, fresh bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if reply, seen := d.replies[id]; seen {
		return reply, false
	}
	if old := d.order[d.next]; old != "" {
		delete(d.replies, old)
	}
	d.order[d.next] = id
	d.next = (d.next + 1) % len(d.order)
	d.replies[id] = nil
	return nil, true
}

// finish stores id's reply, if id is still remembered.
func (d *dedup) finish(id string, reply []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.replies[id]; ok {
		d.replies[id] = reply
	}
}

// forget drops id, so that its next delivery runs again.
func (d *dedup) forget(id string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.replies, id)
}
