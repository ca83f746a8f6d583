// Package lograte bounds how many lines an event that outsiders can cause
// (a refused authentication) writes to the log: at most a few a window,
// then one line counting the rest as the window ends, so that a flood of
// bad requests costs the log a line or two a minute, not a line each.
package lograte

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Limiter logs one kind of line, at most Max a window.
type Limiter struct {
	log    *slog.Logger
	level  slog.Level
	msg    string
	max    int
	window time.Duration

	mu      sync.Mutex
	start   time.Time   // of the current window
	logged  int         // lines logged in it
	dropped int         // lines not logged in it
	timer   *time.Timer // armed while dropped > 0: logs their count as the window ends
	stopped bool
}

// New makes a limiter of lines msg at level: at most limit (at least 1) a
// window.
func New(log *slog.Logger, level slog.Level, msg string, limit int, window time.Duration) *Limiter {
	return &Limiter{log: log, level: level, msg: msg, max: max(limit, 1), window: window}
}

// Log logs the line with args, unless the window's lines are used up:
// then it only counts it.
func (l *Limiter) Log(args ...any) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.start) >= l.window {
		l.flushLocked()
		l.start = now
	}
	if l.logged < l.max {
		l.logged++
		l.log.Log(context.Background(), l.level, l.msg, args...)
		return
	}
	l.dropped++
	if l.timer == nil && !l.stopped {
		// The count is logged when the window ends, even if no line
		// comes after it. The timer's goroutine is short-lived and
		// Stop cancels it.
		l.timer = time.AfterFunc(l.start.Add(l.window).Sub(now), l.flush)
	}
}

func (l *Limiter) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.timer = nil
	l.flushLocked()
	l.start, l.logged = time.Now(), 0
}

// flushLocked logs how many lines the window dropped, if any.
func (l *Limiter) flushLocked() {
	if l.timer != nil {
		l.timer.Stop()
		l.timer = nil
	}
	if l.dropped > 0 {
		l.log.Log(context.Background(), l.level, l.msg+": more not logged", "more", l.dropped, "window", l.window.String())
		l.dropped = 0
	}
}

// Stop logs the count of lines dropped so far and disarms the timer; lines
// logged after Stop are still limited, and their count is logged with the
// next line of a later window.
func (l *Limiter) Stop() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stopped = true
	l.flushLocked()
}
