package edge

import (
	"sync"
	"time"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/expiring"
)

// keyCache holds checked API keys for a while (Config.APIKeyCache), sparing
// the database a lookup per request. A revocation reaches it at once over
// db.KeysChannel and drops every entry; so does each (re)connect of the
// listener, since a revocation sent while it was away is not replayed.
// While the listener is away, a revoked key may work until its entry lapses.
type keyCache struct {
	ttl     time.Duration
	entries *expiring.Map[string, cached] // by hex key hash

	mu sync.Mutex // guards gen, and orders drops against puts
	// gen counts the drops: a lookup that began before one may have read a
	// key that was revoked meanwhile, and must not be cached.
	gen uint64
}

// keyCacheSize bounds the cache: more keys and console sessions than an
// installation uses at once; past it, the oldest is looked up again.
const keyCacheSize = 1 << 16

// cached is a checked API key (or console session) and until when it is
// trusted.
type cached struct {
	key   db.APIKey
	csrf  string    // a console session's
	until time.Time // a console session's end: the entry, and its streams, last no longer
}

func newKeyCache(ttl time.Duration) *keyCache {
	return &keyCache{ttl: ttl, entries: expiring.New[string, cached](keyCacheSize)}
}

// get returns the cached entry for hash, if it is still trusted at now,
// and the generation to hand to put after a lookup: the one the
// credential is checked in, since a hit survived every drop before it.
func (c *keyCache) get(hash string, now time.Time) (e cached, ok bool, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok = c.entries.Get(hash, now)
	return e, ok, c.gen
}

// generation counts the drops so far: a credential checked in an older
// one may have been revoked or signed out since.
func (c *keyCache) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

// put caches an entry looked up since get returned gen, unless a drop came
// between. It is trusted for the cache's ttl, or until e.until if that is
// sooner (a console session's end).
func (c *keyCache) put(hash string, e cached, gen uint64, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return
	}
	until := now.Add(c.ttl)
	if !e.until.IsZero() && e.until.Before(until) {
		until = e.until
	}
	c.entries.Do(hash, now, func(cached, bool) (cached, time.Time) { return e, until })
}

// drop forgets every key. Revocations are rare, and each key costs one
// lookup to cache again.
func (c *keyCache) drop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.entries.Clear()
	c.gen++
}

// forget drops one entry (a signed-out session).
func (c *keyCache) forget(hash string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.entries.Delete(hash)
	c.gen++ // a look-up under way may have read the session before it was deleted
}
