package edge

import (
	"fmt"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/switchboard-iot/switchboard/internal/problem"
	"github.com/switchboard-iot/switchboard/internal/ratelimit"
)

// keyLimits hold each API key to a request rate and a number of open
// event streams.
type keyLimits struct {
	requests   *ratelimit.Table // by key id; nil: no rate limit
	maxStreams int              // ≤ 0: no stream limit

	mu      sync.Mutex    // guards streams
	streams map[int64]int // open streams by key id; a key with none has no entry
}

// maxKeyBuckets bounds the request buckets kept (one per recently busy
// key); keys come from the database, so this is a backstop.
const maxKeyBuckets = 16384

// streamRetryAfter is the Retry-After of a refused stream: streams end as
// their commands do, in seconds.
const streamRetryAfter = 5 * time.Second

func newKeyLimits(perSecond float64, burst, streams int) *keyLimits {
	l := &keyLimits{maxStreams: streams, streams: make(map[int64]int)}
	if perSecond > 0 && burst > 0 {
		l.requests = ratelimit.NewTable(perSecond, burst, maxKeyBuckets)
	}
	return l
}

// openStream takes one of the key's stream slots, if one is free.
func (l *keyLimits) openStream(key int64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.maxStreams > 0 && l.streams[key] >= l.maxStreams {
		return false
	}
	l.streams[key]++
	return true
}

func (l *keyLimits) closeStream(key int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.streams[key]--; l.streams[key] <= 0 {
		delete(l.streams, key)
	}
}

// limitKeys holds each authenticated request to its API key's limits (it
// runs after authenticate). Every request takes a token from the key's
// bucket and its answer says what is left in the RateLimit fields; with
// none left it gets 429. A request that asks for an event stream holds one
// of the key's stream slots until it ends; with none free it gets 429
// before anything is stored.
func (e *Edge) limitKeys(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := apiKey(r).ID
		if !e.LimitKey(w, key) {
			return
		}
		if acceptsEventStream(r) {
			if !e.limits.openStream(key) {
				e.metrics.limited.WithLabelValues("key_streams").Inc()
				problem.TooManyStreams.WriteRetryAfter(w, fmt.Sprintf(
					"this API key has %d event streams open, its limit; close one or wait for one to end", e.cfg.KeyStreams), streamRetryAfter)
				return
			}
			defer e.limits.closeStream(key)
		}
		next.ServeHTTP(w, r)
	})
}

// LimitKey takes one of the key's request tokens and says what is left in
// the RateLimit fields; with none left it answers 429 and returns false.
// The console's session-authenticated requests take them here too.
func (e *Edge) LimitKey(w http.ResponseWriter, keyID int64) bool {
	t := e.limits.requests
	if t == nil {
		return true
	}
	s := t.Take(strconv.FormatInt(keyID, 10), time.Now())
	setRateLimitFields(w.Header(), t, s)
	if !s.OK {
		e.metrics.limited.WithLabelValues("key_rate").Inc()
		problem.RateLimited.WriteRetryAfter(w, fmt.Sprintf(
			"this API key may make %g requests a second, %d at once; see the RateLimit fields", e.cfg.KeyRate, t.Burst()), s.RetryAfter)
		return false
	}
	return true
}

// setRateLimitFields writes the RateLimit-Policy and RateLimit fields of
// draft-ietf-httpapi-ratelimit-headers-10 (September 2025): the policy
// "requests" is a token bucket of q requests that refills over w seconds;
// r is how many are left, t the seconds until the bucket is full again.
func setRateLimitFields(h http.Header, t *ratelimit.Table, s ratelimit.State) {
	h.Set("RateLimit-Policy", fmt.Sprintf(`"requests";q=%d;w=%d`, t.Burst(), problem.Seconds(t.Refill())))
	h.Set("RateLimit", fmt.Sprintf(`"requests";r=%d;t=%d`, s.Remaining, int(math.Ceil(s.Full.Seconds()))))
}
