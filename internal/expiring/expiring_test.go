package expiring

import (
	"fmt"
	"testing"
	"time"
)

func TestExpiry(t *testing.T) {
	m := New[string, int](10)
	now := time.Unix(1000, 0)
	m.Put("a", 1, now, time.Second)
	if v, ok := m.Get("a", now.Add(999*time.Millisecond)); !ok || v != 1 {
		t.Fatalf("Get before expiry = %d, %v; want 1, true", v, ok)
	}
	if _, ok := m.Get("a", now.Add(time.Second)); ok {
		t.Fatal("Get at expiry found the entry")
	}
	// Do sees an expired value as absent, and may revive the key.
	m.Do("a", now.Add(2*time.Second), func(v int, found bool) (int, time.Time) {
		if found || v != 0 {
			t.Errorf("Do on an expired entry got %d, %v; want 0, false", v, found)
		}
		return 2, now.Add(3 * time.Second)
	})
	if v, ok := m.Get("a", now.Add(2*time.Second)); !ok || v != 2 {
		t.Fatalf("revived entry = %d, %v; want 2, true", v, ok)
	}
}

// The map never holds more than its maximum, whatever the keys: the
// oldest entry makes room for a new one.
func TestBounded(t *testing.T) {
	const max = 100
	m := New[string, int](max)
	now := time.Unix(1000, 0)
	for i := range 100 * max {
		m.Put(fmt.Sprint(i), i, now, time.Hour)
		if n := m.Len(); n > max {
			t.Fatalf("after %d puts the map holds %d entries, want at most %d", i+1, n, max)
		}
		if len(m.queue) > 2*max+64 {
			t.Fatalf("after %d puts the queue holds %d keys", i+1, len(m.queue))
		}
	}
	// The newest survive, the oldest went.
	if _, ok := m.Get(fmt.Sprint(100*max-1), now); !ok {
		t.Error("the newest entry is gone")
	}
	if _, ok := m.Get("0", now); ok {
		t.Error("the oldest entry survived")
	}
}

// Expired entries make room before a live one is evicted.
func TestExpiredGoFirst(t *testing.T) {
	m := New[string, int](3)
	now := time.Unix(1000, 0)
	m.Put("short", 1, now, time.Second)
	m.Put("long-1", 2, now, time.Hour)
	m.Put("long-2", 3, now, time.Hour)
	later := now.Add(time.Minute)
	m.Put("new", 4, later, time.Hour)
	for _, k := range []string{"long-1", "long-2", "new"} {
		if _, ok := m.Get(k, later); !ok {
			t.Errorf("%s was evicted; the expired entry should have made room", k)
		}
	}
	if m.Len() != 3 {
		t.Errorf("Len = %d, want 3", m.Len())
	}
}

// Updating a key keeps one entry for it.
func TestUpdateInPlace(t *testing.T) {
	m := New[string, int](2)
	now := time.Unix(1000, 0)
	for range 50 {
		m.Do("k", now, func(v int, _ bool) (int, time.Time) { return v + 1, now.Add(time.Hour) })
	}
	if v, _ := m.Get("k", now); v != 50 || m.Len() != 1 || len(m.queue)-m.head != 1 {
		t.Fatalf("value %d, %d entries, %d queued; want 50, 1, 1", v, m.Len(), len(m.queue)-m.head)
	}
}

// Delete and Clear forget; a deleted key comes back with one entry, and a
// cleared map fills to its maximum again.
func TestDeleteAndClear(t *testing.T) {
	m := New[string, int](2)
	now := time.Unix(1000, 0)
	m.Put("a", 1, now, time.Hour)
	m.Delete("a")
	m.Delete("never")
	if _, ok := m.Get("a", now); ok {
		t.Fatal("Get found a deleted entry")
	}
	m.Do("a", now, func(v int, found bool) (int, time.Time) {
		if found || v != 0 {
			t.Errorf("Do on a deleted entry got %d, %v; want 0, false", v, found)
		}
		return 2, now.Add(time.Hour)
	})
	if v, ok := m.Get("a", now); !ok || v != 2 || m.Len() != 1 || len(m.queue)-m.head != 1 {
		t.Fatalf("re-added entry %d, %v; %d entries, %d queued; want 2, true, 1, 1", v, ok, m.Len(), len(m.queue)-m.head)
	}
	m.Put("b", 3, now, time.Hour)
	m.Clear()
	if _, ok := m.Get("b", now); ok || m.Len() != 0 {
		t.Fatalf("after Clear: found b %v, %d entries", ok, m.Len())
	}
	m.Put("c", 4, now, time.Hour)
	m.Put("d", 5, now, time.Hour)
	for _, k := range []string{"c", "d"} {
		if _, ok := m.Get(k, now); !ok {
			t.Errorf("%s missing after Clear and two puts", k)
		}
	}
}
