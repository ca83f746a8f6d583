// Package backoff is the one retry delay of Switchboard: exponential backoff
// with full jitter (a random wait up to min(Max, Min·2^attempt)), so that a
// fleet of devices, or of processes, that lost the same peer spreads out
// instead of coming back in step.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff counts failed attempts and says how long to wait after each.
// The zero value is not usable: set Min and Max.
type Backoff struct {
	Min, Max time.Duration
	attempt  int
}

// Ceiling is the longest wait after attempt failures: min(max, base·2^attempt).
func Ceiling(base, maxDelay time.Duration, attempt int) time.Duration {
	if attempt < 62 && base <= maxDelay>>attempt { // base<<attempt fits under maxDelay
		return base << attempt
	}
	return maxDelay
}

// Next returns the wait before the next attempt and counts one failure.
func (b *Backoff) Next() time.Duration {
	d := rand.N(Ceiling(b.Min, b.Max, b.attempt)) + time.Millisecond
	b.attempt++
	return d
}

// Reset starts again from Min, after a success.
func (b *Backoff) Reset() { b.attempt = 0 }

// Attempts reports the failures counted since the last Reset.
func (b *Backoff) Attempts() int { return b.attempt }

// Wait sleeps for Next(); it reports false, early, when ctx ends.
func (b *Backoff) Wait(ctx context.Context) bool { return Sleep(ctx, b.Next()) }

// Sleep waits for d; it reports false, early, when ctx ends.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Retry calls fn until it succeeds, waiting between attempts; onError (if
// set) hears of each failure and the wait that follows. It gives up only
// when ctx ends, returning the last error.
func Retry(ctx context.Context, b Backoff, fn func(context.Context) error, onError func(err error, wait time.Duration)) error {
	for {
		err := fn(ctx)
		if err == nil {
			return nil
		}
		wait := b.Next()
		if onError != nil && ctx.Err() == nil {
			onError(err, wait)
		}
		if !Sleep(ctx, wait) {
			return err
		}
	}
}
