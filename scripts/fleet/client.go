package main

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"

	"github.com/switchboard-iot/switchboard/device/protocol"
	"github.com/switchboard-iot/switchboard/internal/backoff"
)

// fleet is many idle devices: each holds one TLS WebSocket, answers the
// node's pings (gorilla does, while it reads), and reconnects as the SDK
// does (full-jitter backoff; the delay a 1012 gives).
type fleet struct {
	urls    *targets
	tls     *tls.Config
	locals  []net.IP // source addresses, round-robin: more than 28k ports to one node
	backoff backoff.Backoff

	connected atomic.Int64 // sessions open now
	dials     atomic.Int64 // dial attempts
	refused   atomic.Int64 // dials answered with an HTTP status (401, 503)
	failed    atomic.Int64 // dials that failed otherwise
	closes    sync.Map     // close code → *atomic.Int64
}

type credential struct{ id, secret string }

// targets are the nodes a device may dial, as a load balancer would see
// them: one that refused a TCP connection is skipped for a while.
type targets struct {
	mu   sync.Mutex
	urls []string
	down map[string]time.Time // until when
}

func newTargets(urls []string) *targets {
	return &targets{urls: urls, down: make(map[string]time.Time)}
}

func (t *targets) set(urls []string) {
	t.mu.Lock()
	t.urls = urls
	t.mu.Unlock()
}

func (t *targets) pick() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	var up []string
	for _, u := range t.urls {
		if now.After(t.down[u]) {
			up = append(up, u)
		}
	}
	if len(up) == 0 {
		up = t.urls
	}
	return up[rand.N(len(up))]
}

func (t *targets) markDown(u string) {
	t.mu.Lock()
	t.down[u] = time.Now().Add(5 * time.Second)
	t.mu.Unlock()
}

// run keeps one device connected until ctx ends.
func (f *fleet) run(ctx context.Context, c credential, local net.IP) {
	header := http.Header{}
	header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(c.id+":"+c.secret)))
	dialer := websocket.Dialer{
		TLSClientConfig:  f.tls,
		Subprotocols:     []string{protocol.Subprotocol},
		HandshakeTimeout: 10 * time.Second,
		ReadBufferSize:   512,
		WriteBufferSize:  256,
		NetDialContext:   (&net.Dialer{LocalAddr: &net.TCPAddr{IP: local}, Timeout: 10 * time.Second}).DialContext,
	}
	retry := f.backoff
	for ctx.Err() == nil {
		url := f.urls.pick()
		f.dials.Add(1)
		ws, resp, err := dialer.DialContext(ctx, url, header)
		if err != nil {
			switch {
			case resp != nil:
				f.refused.Add(1)
			case errors.Is(err, syscall.ECONNREFUSED):
				f.urls.markDown(url)
				f.failed.Add(1)
			default:
				f.failed.Add(1)
			}
			if !retry.Wait(ctx) {
				return
			}
			continue
		}
		start := time.Now()
		f.connected.Add(1)
		delay := f.idle(ctx, ws)
		f.connected.Add(-1)
		if time.Since(start) > retry.Max {
			retry.Reset()
		}
		if delay == 0 {
			delay = retry.Next()
		}
		if !backoff.Sleep(ctx, delay) {
			return
		}
	}
}

// idle reads (and so answers pings) until the session ends; it returns the
// delay a 1012 close asked for.
func (f *fleet) idle(ctx context.Context, ws *websocket.Conn) time.Duration {
	stop := context.AfterFunc(ctx, func() {
		_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
		ws.Close()
	})
	defer stop()
	defer ws.Close()
	for {
		_ = ws.SetReadDeadline(time.Now().Add(90 * time.Second))
		if _, _, err := ws.ReadMessage(); err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				f.countClose(ce.Code)
				if ce.Code == protocol.CloseRebalance {
					return rebalanceDelay(ce.Text)
				}
			} else {
				f.countClose(0)
			}
			return 0
		}
	}
}

func (f *fleet) countClose(code int) {
	v, _ := f.closes.LoadOrStore(code, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
}

func rebalanceDelay(reason string) time.Duration {
	for field := range strings.FieldsSeq(reason) {
		if d, err := time.ParseDuration(field); err == nil && d > 0 {
			return min(d, 10*time.Minute)
		}
	}
	return time.Second
}

// start launches one goroutine per credential, at most rate a second, and
// returns a wait for them all.
func (f *fleet) start(ctx context.Context, creds []credential, perSecond int) *sync.WaitGroup {
	var wg sync.WaitGroup
	tick := time.NewTicker(time.Second / time.Duration(max(perSecond, 1)))
	go func() {
		defer tick.Stop()
		for i, c := range creds {
			select {
			case <-tick.C:
			case <-ctx.Done():
				return
			}
			wg.Go(func() { f.run(ctx, c, f.locals[i%len(f.locals)]) })
		}
	}()
	return &wg
}
