package db

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/switchboard-iot/switchboard/internal/backoff"
)

// Notifier holds a process's one LISTEN connection and multiplexes its
// channels over it. Every NOTIFY wakes every listening backend, so a process
// listens once, not once per component.
//
// The connection must reach the primary directly (or through a session
// pooler). It pings when idle, reconnects with backoff and re-LISTENs; since
// nothing is replayed to a listener that was away, each subscription's ready
// hook runs after every (re)connect so its owner can rescan the tables.
type Notifier struct {
	connect func(context.Context) (*pgx.Conn, error)
	log     *slog.Logger
	// idle is how long a quiet connection waits before it pings.
	idle time.Duration

	mu          sync.Mutex // guards the following
	subs        map[string]*subscription
	interrupt   context.CancelCauseFunc // stops the current wait, to apply a change
	connections int                     // successful connects so far, for tests and metrics
	up          bool                    // a connection is open now, for metrics
}

type subscription struct {
	onNotify func(payload string)
	onReady  func()
}

var errInterrupted = errors.New("subscriptions changed")

// ListenerApplicationName marks listener sessions in pg_stat_activity.
const ListenerApplicationName = "switchboard listener"

// NewNotifier makes a notifier that connects with cfg (copied).
func NewNotifier(cfg *pgx.ConnConfig, log *slog.Logger) *Notifier {
	cfg = cfg.Copy()
	cfg.RuntimeParams["application_name"] = ListenerApplicationName
	return &Notifier{
		connect: func(ctx context.Context) (*pgx.Conn, error) { return pgx.ConnectConfig(ctx, cfg) },
		log:     log.With("component", "notifier"),
		idle:    15 * time.Second,
		subs:    make(map[string]*subscription),
	}
}

// Listen subscribes to channel. onNotify gets each payload; onReady runs once
// the LISTEN is in effect, and again after every reconnect. Both run on the
// notifier's goroutine and must not block: hand work to your own goroutine.
// The returned function unsubscribes.
func (n *Notifier) Listen(channel string, onNotify func(payload string), onReady func()) (unlisten func()) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, dup := n.subs[channel]; dup {
		panic(fmt.Sprintf("notifier: channel %q is already subscribed", channel))
	}
	n.subs[channel] = &subscription{onNotify: onNotify, onReady: onReady}
	n.interruptLocked()
	return func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		delete(n.subs, channel)
		n.interruptLocked()
	}
}

func (n *Notifier) interruptLocked() {
	if n.interrupt != nil {
		n.interrupt(errInterrupted)
	}
}

// Connections reports how many times the notifier has connected.
func (n *Notifier) Connections() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.connections
}

// Up reports whether the notifier holds a connection now (false while it
// reconnects), for metrics.
func (n *Notifier) Up() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.up
}

// Run keeps a listening connection until ctx is done.
func (n *Notifier) Run(ctx context.Context) error {
	const stable = 10 * time.Second // a connection that lasted this long resets the backoff
	retry := backoff.Backoff{Min: 100 * time.Millisecond, Max: 10 * time.Second}
	for {
		conn, err := n.connect(ctx)
		if err == nil {
			n.mu.Lock()
			n.connections++
			n.up = true
			n.mu.Unlock()
			start := time.Now()
			err = n.serve(ctx, conn)
			n.mu.Lock()
			n.up = false
			n.mu.Unlock()
			closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			conn.Close(closeCtx)
			cancel()
			if time.Since(start) > stable {
				retry.Reset()
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		wait := retry.Next()
		n.log.Warn("listener connection lost; reconnecting", "err", err, "in", wait)
		if !backoff.Sleep(ctx, wait) {
			return nil
		}
	}
}

// serve listens on one connection until it fails or ctx is done.
func (n *Notifier) serve(ctx context.Context, conn *pgx.Conn) error {
	listening := make(map[string]bool)
	for {
		waitCtx, interrupt := context.WithCancelCause(ctx)
		n.mu.Lock()
		n.interrupt = interrupt
		want := make(map[string]*subscription, len(n.subs))
		for ch, sub := range n.subs {
			want[ch] = sub
		}
		n.mu.Unlock()

		for ch := range listening {
			if want[ch] == nil {
				if _, err := conn.Exec(ctx, "UNLISTEN "+pgx.Identifier{ch}.Sanitize()); err != nil {
					interrupt(nil)
					return fmt.Errorf("unlisten %s: %w", ch, err)
				}
				delete(listening, ch)
			}
		}
		for ch, sub := range want {
			if listening[ch] {
				continue
			}
			if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{ch}.Sanitize()); err != nil {
				interrupt(nil)
				return fmt.Errorf("listen %s: %w", ch, err)
			}
			listening[ch] = true
			sub.onReady()
		}

		idleCtx, cancelIdle := context.WithTimeout(waitCtx, n.idle)
		msg, err := conn.WaitForNotification(idleCtx)
		idled := errors.Is(idleCtx.Err(), context.DeadlineExceeded)
		cancelIdle()
		interrupted := errors.Is(context.Cause(waitCtx), errInterrupted)
		interrupt(nil)
		switch {
		case ctx.Err() != nil:
			return nil
		case err == nil:
			n.mu.Lock()
			sub := n.subs[msg.Channel]
			n.mu.Unlock()
			if sub != nil {
				sub.onNotify(msg.Payload)
			}
		case interrupted:
			// A cancelled wait leaves the connection usable (pgx cancels
			// by deadline); loop to apply the change.
		case idled:
			pingCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err = conn.Ping(pingCtx)
			cancel()
			if err != nil {
				return fmt.Errorf("ping: %w", err)
			}
		default:
			return err
		}
	}
}
