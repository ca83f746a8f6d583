package edge

import (
	"testing"
	"time"

	"github.com/switchboard-iot/switchboard/db"
)

// A lookup that a drop overtook is not cached: the key it read may be the
// one just revoked.
func TestKeyCacheDropBeatsSlowLookup(t *testing.T) {
	c := newKeyCache(time.Minute)
	now := time.Now()
	k := db.APIKey{ID: 1}

	_, ok, gen := c.get("h", now)
	if ok {
		t.Fatal("empty cache hit")
	}
	c.drop() // a revocation arrives while the lookup runs
	c.put("h", cached{key: k}, gen, now)
	if _, ok, _ := c.get("h", now); ok {
		t.Fatal("a lookup from before the drop was cached")
	}

	_, _, gen = c.get("h", now)
	c.put("h", cached{key: k}, gen, now)
	if got, ok, _ := c.get("h", now.Add(59*time.Second)); !ok || got.key.ID != 1 {
		t.Fatal("a fresh lookup was not cached")
	}
	if _, ok, _ := c.get("h", now.Add(time.Minute)); ok {
		t.Fatal("an entry outlived its ttl")
	}

	// A console session is trusted until it ends, if that comes first.
	_, _, gen = c.get("s", now)
	c.put("s", cached{key: k, until: now.Add(time.Second)}, gen, now)
	if _, ok, _ := c.get("s", now.Add(time.Second)); ok {
		t.Fatal("a session's entry outlived the session")
	}
	// A sign-out forgets the session, and a lookup under way is not cached.
	_, _, gen = c.get("s", now)
	c.put("s", cached{key: k}, gen, now)
	_, _, gen = c.get("s2", now)
	c.forget("s")
	c.put("s2", cached{key: k}, gen, now)
	if _, ok, _ := c.get("s", now); ok {
		t.Fatal("a forgotten session is still cached")
	}
	if _, ok, _ := c.get("s2", now); ok {
		t.Fatal("a lookup from before a forget was cached")
	}
}
