// Package expiring is a bounded map whose entries expire: the caches,
// limiter tables and memories of the tiers, some keyed by what an attacker
// chooses (source addresses, guessed credentials). It never holds more than
// its maximum: when full, it forgets its oldest entry to make room. It starts no goroutine; expired entries
// read as absent and are dropped as new ones arrive.
package expiring

import (
	"sync"
	"time"
)

// Map maps keys to values that expire. Its methods are safe for
// concurrent use.
type Map[K comparable, V any] struct {
	max int

	mu    sync.Mutex // guards the following
	items map[K]item[V]
	// queue holds each key of items once, oldest first from head: the
	// order in which keys were added, which is the order to evict them.
	queue []K
	head  int
}

type item[V any] struct {
	v       V
	expires time.Time
}

// New makes a map of at most size entries (at least 1).
func New[K comparable, V any](size int) *Map[K, V] {
	return &Map[K, V]{max: max(size, 1), items: make(map[K]item[V])}
}

// Get returns k's value if it has one that has not expired at now.
func (m *Map[K, V]) Get(k K, now time.Time) (V, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	it, ok := m.items[k]
	if !ok || !now.Before(it.expires) {
		var zero V
		return zero, false
	}
	return it.v, true
}

// Put stores v for k for ttl from now.
func (m *Map[K, V]) Put(k K, v V, now time.Time, ttl time.Duration) {
	m.Do(k, now, func(V, bool) (V, time.Time) { return v, now.Add(ttl) })
}

// Do calls fn, under the map's lock, with k's value at now (found is false
// when there is none or it has expired), and stores the value fn returns
// until the time it returns. A value that expires at or before now is
// as good as gone.
func (m *Map[K, V]) Do(k K, now time.Time, fn func(v V, found bool) (V, time.Time)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	it, exists := m.items[k]
	found := exists && now.Before(it.expires)
	if !found {
		var zero V
		it.v = zero
	}
	v, expires := fn(it.v, found)
	if exists {
		m.items[k] = item[V]{v, expires} // keeps its place in the queue
		return
	}
	m.dropExpired(now)
	if len(m.items) >= m.max {
		m.dropOldest()
	}
	m.items[k] = item[V]{v, expires}
	m.queue = append(m.queue, k)
}

// Delete forgets k's value. Its entry expires at once (and keeps its place
// in the queue, which holds each key once); it goes as expired ones do.
func (m *Map[K, V]) Delete(k K) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.items[k]; ok {
		m.items[k] = item[V]{}
	}
}

// Clear forgets every entry.
func (m *Map[K, V]) Clear() {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.items)
	clear(m.queue)
	m.queue, m.head = m.queue[:0], 0
}

// Len reports how many entries the map holds, expired ones included.
func (m *Map[K, V]) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.items)
}

// dropExpired drops the oldest entries while they have expired. An entry
// whose time was extended stops the sweep; it and those behind it go when
// they reach the front, or when the map is full.
func (m *Map[K, V]) dropExpired(now time.Time) {
	for m.head < len(m.queue) && !now.Before(m.items[m.queue[m.head]].expires) {
		m.dropOldest()
	}
}

func (m *Map[K, V]) dropOldest() {
	var zero K
	delete(m.items, m.queue[m.head])
	m.queue[m.head] = zero
	m.head++
	// Compact once half the queue is spent: amortised O(1), at most twice
	// the entries in memory.
	if m.head >= 64 && m.head*2 >= len(m.queue) {
		n := copy(m.queue, m.queue[m.head:])
		clear(m.queue[n:])
		m.queue = m.queue[:n]
		m.head = 0
	}
}
