// Package ratelimit keeps token buckets (golang.org/x/time/rate) by key,
// for limits whose keys come from outside: API keys, source addresses. A
// table holds a bounded number of buckets and forgets one once it has
// refilled, since a new bucket is the same as a full one.
package ratelimit

import (
	"math"
	"time"

	"golang.org/x/time/rate"

	"github.com/switchboard-iot/switchboard/internal/expiring"
)

// Table is a set of token buckets, one per key, each refilling at the same
// rate up to the same burst.
type Table struct {
	limit   rate.Limit
	burst   int
	buckets *expiring.Map[string, *rate.Limiter]
}

// NewTable makes a table of buckets that refill perSecond tokens a second
// up to burst, holding at most size buckets: past that the oldest is
// forgotten (its key starts again with a full bucket).
func NewTable(perSecond float64, burst, size int) *Table {
	return &Table{limit: rate.Limit(perSecond), burst: max(burst, 1), buckets: expiring.New[string, *rate.Limiter](size)}
}

// Burst is the tokens a full bucket holds.
func (t *Table) Burst() int { return t.burst }

// Refill is how long an empty bucket takes to fill.
func (t *Table) Refill() time.Duration { return t.duration(float64(t.burst)) }

// State is a bucket's state after a take or a look.
type State struct {
	OK         bool          // the take succeeded (a look: a token is there)
	Remaining  int           // whole tokens left
	RetryAfter time.Duration // until the next token, when there is none
	Full       time.Duration // until the bucket is full again
}

// Take takes a token from key's bucket, if it has one.
func (t *Table) Take(key string, now time.Time) State {
	return t.do(key, now, true)
}

// Look reports key's bucket without taking from it.
func (t *Table) Look(key string, now time.Time) State {
	return t.do(key, now, false)
}

func (t *Table) do(key string, now time.Time, take bool) State {
	var s State
	t.buckets.Do(key, now, func(b *rate.Limiter, found bool) (*rate.Limiter, time.Time) {
		// A look at a missing bucket leaves nil until its now: a caller
		// whose clock read came earlier, but the lock later, finds that.
		if !found || b == nil {
			if !take {
				s = State{OK: true, Remaining: t.burst}
				return nil, now // nothing to keep
			}
			b = rate.NewLimiter(t.limit, t.burst)
		}
		if take {
			s.OK = b.AllowN(now, 1)
		}
		tokens := b.TokensAt(now)
		if !take {
			s.OK = tokens >= 1
		}
		s.Remaining = int(max(math.Floor(tokens), 0))
		if tokens < 1 {
			s.RetryAfter = t.duration(1 - tokens)
		}
		s.Full = t.duration(float64(t.burst) - tokens)
		return b, now.Add(s.Full)
	})
	return s
}

// duration is how long the bucket takes to earn tokens.
func (t *Table) duration(tokens float64) time.Duration {
	if tokens <= 0 {
		return 0
	}
	if t.limit <= 0 {
		return time.Duration(math.MaxInt64) // never refills
	}
	return time.Duration(math.Ceil(tokens / float64(t.limit) * float64(time.Second)))
}
