// Package device is the Go device SDK: it connects a device to a
// Switchboard connection node, answers commands with registered handlers,
// sends events, and reconnects with jittered exponential backoff.
//
//	d := device.New(device.Config{URL: "wss://conn.example.com:8443/v1/connect", ID: id, Secret: secret})
//	d.Handle("reboot", func(ctx context.Context, args json.RawMessage) (any, error) { ... })
//	err := d.Run(ctx) // until ctx ends or the credentials are refused
package device

import (
	"cmp"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/switchboard-iot/switchboard/device/protocol"
	"github.com/switchboard-iot/switchboard/internal/backoff"
)

// ErrUnauthorized ends Run: retrying with the same credentials would not help.
var ErrUnauthorized = errors.New("device credentials refused")

// ErrReplaced ends a session that a newer session of the same device
// replaced (close code 4008): Run waits ReplacedDelay, jittered, and tries
// again, in case the other session was a ghost of this device's own past.
var ErrReplaced = errors.New("replaced by a newer session of the same device")

// ErrNotConnected is returned by Event while the device has no session.
var ErrNotConnected = errors.New("not connected")

// HandlerFunc answers one command. A returned error becomes a reply with
// ok false; the result is marshalled to JSON. ctx ends when the session
// does (the command is then delivered again) or at the command's deadline,
// when the node stops waiting for the reply: a handler should give up
// then, since nobody reads its answer.
type HandlerFunc func(ctx context.Context, args json.RawMessage) (result any, err error)

// ErrDeadlinePassed is the error of the reply to a command that came after
// its deadline: the handler was not run.
const ErrDeadlinePassed = "deadline passed"

// FrameError is a frame of this device's that the node refused with an
// error frame, keeping the session: an event it cannot take, or a frame
// type it does not know. Code is the frame's "error" (protocol.ErrInvalid-
// EventName and the like), Message its explanation, Name the refused
// event's name. Event returns one, before sending, for an event the node
// would refuse.
type FrameError struct {
	Code    string
	Message string
	Name    string
}

func (e *FrameError) Error() string {
	if e.Name != "" {
		return fmt.Sprintf("%s (event %q): %s", e.Code, e.Name, e.Message)
	}
	return e.Code + ": " + e.Message
}

// Config says where and as whom to connect.
type Config struct {
	URL    string // wss://host:8443/v1/connect
	ID     string
	Secret string
	TLS    *tls.Config // nil uses the system roots
	// Pin, when set, is the node certificate's SHA-256 fingerprint
	// ("AB:CD:…", colons optional, any case): the SDK then accepts that
	// certificate only, whoever issued it, and refuses any other before
	// sending credentials (ErrPinMismatch). For nodes with a self-signed
	// certificate (CONN_TLS=self-signed).
	Pin string
	Log *slog.Logger

	MinBackoff time.Duration // 500ms: first reconnect delay cap
	MaxBackoff time.Duration // 30s: largest reconnect delay cap
	// ReplacedDelay is the longest wait after another session of this device
	// replaced ours (4008); the wait is random between half of it and all
	// of it, so that two copies of one device do not trade places in step.
	ReplacedDelay time.Duration // 60s
	ReadTimeout   time.Duration // 60s: a server silent this long (no ping) is given up
	Dedup         int           // 1024: recent command ids remembered, to answer a redelivery without re-running it

	// NetDialContext, when set, opens the TCP connection to the node (the
	// SDK still does TLS and the upgrade): a load generator binds its
	// sockets to several source addresses with it.
	NetDialContext func(ctx context.Context, network, addr string) (net.Conn, error)

	// OnConnect and OnDisconnect, when set, are told of each session.
	OnConnect    func()
	OnDisconnect func(err error)
	// OnDialError, when set, is told of each attempt to connect that
	// failed, with a *DialError, before the wait that follows.
	OnDialError func(err error)
	// OnError, when set, is told of each error frame the node sends (the
	// SDK also logs them). It runs on the read loop: keep it short.
	OnError func(err *FrameError)
}

// DialError is an attempt to connect that failed. StatusCode is the
// node's HTTP status when it answered without upgrading (401, 429, 503),
// else 0; RetryAfter is how long its 429 or 503 asked the device to wait
// (its Retry-After, at most maxRetryAfter), else 0; Err is why
// (ErrUnauthorized for a 401).
type DialError struct {
	URL        string
	StatusCode int
	RetryAfter time.Duration
	Err        error
}

// maxRetryAfter bounds the wait a Retry-After can ask for: a node asks for
// at most 10 s, and a wrong header must not park a device for hours.
const maxRetryAfter = 5 * time.Minute

// retryAfter reads a Retry-After header: whole seconds, or an HTTP date.
func retryAfter(h http.Header) time.Duration {
	v := h.Get("Retry-After")
	if v == "" {
		return 0
	}
	var d time.Duration
	if secs, err := strconv.ParseUint(v, 10, 64); err == nil || errors.Is(err, strconv.ErrRange) {
		d = maxRetryAfter // also for more seconds than fit
		if err == nil && secs < uint64(maxRetryAfter/time.Second) {
			d = time.Duration(secs) * time.Second
		}
	} else if at, err := http.ParseTime(v); err == nil {
		d = time.Until(at)
	}
	return min(max(d, 0), maxRetryAfter)
}

func (e *DialError) Error() string {
	if e.StatusCode != 0 {
		return fmt.Sprintf("dial %s: HTTP %d: %v", e.URL, e.StatusCode, e.Err)
	}
	return fmt.Sprintf("dial %s: %v", e.URL, e.Err)
}

func (e *DialError) Unwrap() error { return e.Err }

// Client is one device's connection. Handle must be called before Run.
type Client struct {
	cfg      Config
	tls      *tls.Config // cfg.TLS, pinned to cfg.Pin
	pinErr   error       // a Pin that does not parse: Run returns it
	log      *slog.Logger
	handlers map[string]HandlerFunc
	dedup    *dedup
	// onDesired is called with each newer desired document (OnDesired);
	// desiredVersion is the last one it was given. Only the read loop
	// touches them once Run has started.
	onDesired      func(desired json.RawMessage, version int64)
	desiredVersion int64

	// running counts command handlers. A handler outlives the session that
	// started it (its reply still counts on the next); Run waits for them.
	running sync.WaitGroup
	// replied tells the writer the outbox has replies (cap 1).
	replied chan struct{}

	mu      sync.Mutex      // guards the following
	out     chan<- []byte   // the current session's events, nil between sessions
	outDone <-chan struct{} // closed when that session ends
	outbox  [][]byte        // replies and reports not yet written, whichever session ran them
}

// maxOutbox bounds the replies and reports kept while there is no session.
const maxOutbox = 1024

// withDefaults fills what the caller left zero.
func (c Config) withDefaults() Config {
	c.MinBackoff = cmp.Or(c.MinBackoff, 500*time.Millisecond)
	c.MaxBackoff = cmp.Or(c.MaxBackoff, 30*time.Second)
	c.ReplacedDelay = cmp.Or(c.ReplacedDelay, time.Minute)
	c.ReadTimeout = cmp.Or(c.ReadTimeout, 60*time.Second)
	c.Dedup = cmp.Or(c.Dedup, 1024)
	c.Log = cmp.Or(c.Log, slog.Default())
	return c
}

// New makes a client.
func New(cfg Config) *Client {
	cfg = cfg.withDefaults()
	tlsCfg, pinErr := cfg.TLS, error(nil)
	if cfg.Pin != "" {
		var sum []byte
		if sum, pinErr = parsePin(cfg.Pin); pinErr == nil {
			tlsCfg = pinnedTLS(cfg.TLS, sum)
		}
	}
	return &Client{
		cfg:      cfg,
		tls:      tlsCfg,
		pinErr:   pinErr,
		log:      cfg.Log.With("device", cfg.ID),
		handlers: make(map[string]HandlerFunc),
		dedup:    newDedup(cfg.Dedup),
		replied:  make(chan struct{}, 1),
	}
}

// Handle registers the handler for commands called name.
func (c *Client) Handle(name string, h HandlerFunc) { c.handlers[name] = h }

// OnDesired registers the function called with the device's desired
// state: the whole document and its version, on connect and on each
// change. It runs on the read loop (a slow one delays commands), with
// versions in increasing order; a version not newer than the last is not
// passed again, so the function may treat each call as "apply this". Call
// it before Run.
func (c *Client) OnDesired(f func(desired json.RawMessage, version int64)) { c.onDesired = f }

// Report sends a JSON merge patch (RFC 7396) of the device's reported
// state: {"celsius":20.5,"old_key":null}. Like a reply it is kept until a
// session writes it, whichever session that is, and the node stores it
// however busy the database is. patch must encode as a JSON object.
func (c *Client) Report(patch any) error {
	raw, err := json.Marshal(patch)
	if err != nil {
		return err
	}
	frame, err := protocol.Encode(protocol.Message{Type: protocol.TypeReport, Reported: raw})
	if err != nil {
		return err
	}
	if _, err := protocol.Decode(frame); err != nil {
		return err // not an object, or too large: the node would close the session
	}
	c.reply(frame)
	return nil
}

// Event queues a telemetry or alert event on the current session. Events
// are at most once: one queued as the session ends is lost (late telemetry
// is worth little; replies, which are kept, are another matter). An event
// the node would refuse (a bad name, data PostgreSQL cannot store) is not
// sent: Event returns the *FrameError the node would have answered.
func (c *Client) Event(ctx context.Context, name string, data any) error {
	raw, err := json.Marshal(data)
	if err != nil {
		return err
	}
	frame, err := protocol.Encode(protocol.Message{Type: protocol.TypeEvent, Name: name, Data: raw})
	if err != nil {
		return err
	}
	if _, err := protocol.Decode(frame); err != nil {
		var de *protocol.DecodeError
		if errors.As(err, &de) && de.Code != "" {
			return &FrameError{Code: de.Code, Message: de.Reason, Name: de.Name}
		}
		return err
	}
	c.mu.Lock()
	out, done := c.out, c.outDone
	c.mu.Unlock()
	if out == nil {
		return ErrNotConnected
	}
	select {
	case out <- frame:
		return nil
	case <-done:
		return ErrNotConnected
	case <-ctx.Done():
		return ctx.Err()
	}
}

// reply puts a reply in the outbox for whichever session writes next: the
// node takes the answer to a command it delivered on any session of the
// device, so a reply finished after its session ended is not lost.
func (c *Client) reply(frame []byte) {
	c.mu.Lock()
	if len(c.outbox) == maxOutbox {
		c.outbox = c.outbox[1:]
		c.log.Warn("outbox full: dropping the oldest reply or report")
	}
	c.outbox = append(c.outbox, frame)
	c.mu.Unlock()
	select {
	case c.replied <- struct{}{}:
	default:
	}
}

func (c *Client) takeOutbox() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	frames := c.outbox
	c.outbox = nil
	return frames
}

// putBack returns replies a failed write left to the front of the outbox.
func (c *Client) putBack(frames [][]byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.outbox = append(frames, c.outbox...)
}

// Run keeps the device connected until ctx ends (nil) or its credentials
// are refused (ErrUnauthorized). Between sessions it waits with exponential
// backoff and full jitter (a random delay up to min(MaxBackoff,
// MinBackoff·2^attempt)), so a fleet that lost its node spreads out; after
// a 1012 it waits the delay the node gave, after a 4008 ReplacedDelay,
// after a 4029 at least 2·MinBackoff, and after a 429 or 503 at least the
// Retry-After. It returns once its handlers have too, or at once with the
// error of a Pin that does not parse.
func (c *Client) Run(ctx context.Context) error {
	if c.pinErr != nil {
		return c.pinErr
	}
	defer c.running.Wait()
	retry := backoff.Backoff{Min: c.cfg.MinBackoff, Max: c.cfg.MaxBackoff}
	for {
		start := time.Now()
		delay, err := c.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, ErrUnauthorized) {
			return err
		}
		var closeErr *websocket.CloseError
		rateLimited := errors.As(err, &closeErr) && closeErr.Code == protocol.CloseRateLimited
		if time.Since(start) > c.cfg.MaxBackoff && !rateLimited {
			retry.Reset() // the session lasted: the next failure starts small again
		}
		var dialErr *DialError
		switch {
		case rateLimited:
			// The device sent faster than its rate (4029): never straight
			// back, however long the session lasted, and later with each
			// 4029 in a row (the attempts are not reset).
			delay = max(retry.Next(), 2*c.cfg.MinBackoff)
		case errors.Is(err, ErrReplaced):
			delay = c.cfg.ReplacedDelay/2 + rand.N(c.cfg.ReplacedDelay/2+1)
		case delay > 0: // a 1012's
		case errors.As(err, &dialErr) && dialErr.RetryAfter > 0:
			// A node that turned us away (full, draining, throttling)
			// said when to come back: not before, and later still if it
			// keeps refusing.
			delay = max(dialErr.RetryAfter, retry.Next())
		default:
			delay = retry.Next()
		}
		c.log.Debug("reconnecting", "in", delay, "err", err)
		if !backoff.Sleep(ctx, delay) {
			return nil
		}
	}
}

// session runs one connection. It returns how long the server asked us to
// wait before reconnecting (1012), or zero, and why the session ended.
func (c *Client) session(ctx context.Context) (time.Duration, error) {
	dialer := websocket.Dialer{
		NetDialContext:   c.cfg.NetDialContext,
		TLSClientConfig:  c.tls,
		Subprotocols:     []string{protocol.Subprotocol},
		HandshakeTimeout: 10 * time.Second,
		Proxy:            http.ProxyFromEnvironment,
	}
	header := http.Header{}
	header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(c.cfg.ID+":"+c.cfg.Secret)))
	ws, resp, err := dialer.DialContext(ctx, c.cfg.URL, header)
	if err != nil {
		dialErr := &DialError{URL: c.cfg.URL, Err: err}
		if resp != nil {
			dialErr.StatusCode = resp.StatusCode
			switch resp.StatusCode {
			case http.StatusUnauthorized:
				dialErr.Err = ErrUnauthorized
			case http.StatusTooManyRequests, http.StatusServiceUnavailable:
				dialErr.RetryAfter = retryAfter(resp.Header)
			}
		}
		if c.cfg.OnDialError != nil && ctx.Err() == nil {
			c.cfg.OnDialError(dialErr)
		}
		if errors.Is(dialErr, ErrUnauthorized) {
			return 0, ErrUnauthorized
		}
		return 0, dialErr
	}
	defer ws.Close()
	skew := clockSkew(resp.Header.Get("Date"), time.Now())

	sessionCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := make(chan []byte, 64)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		c.writeLoop(sessionCtx, ws, events)
	}()
	c.mu.Lock()
	c.out, c.outDone = events, sessionCtx.Done()
	c.mu.Unlock()
	if c.cfg.OnConnect != nil {
		c.cfg.OnConnect()
	}

	delay, err := c.readLoop(sessionCtx, ws, skew)

	c.mu.Lock()
	c.out = nil
	c.mu.Unlock()
	cancel()
	<-writerDone
	if ctx.Err() != nil {
		// Say goodbye properly; the node removes our presence row.
		_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	}
	if c.cfg.OnDisconnect != nil {
		c.cfg.OnDisconnect(err)
	}
	return delay, err
}

// writeLoop owns the session's writes: replies from the outbox (those of
// earlier sessions first) and events.
func (c *Client) writeLoop(ctx context.Context, ws *websocket.Conn, events <-chan []byte) {
	write := func(frame []byte) bool {
		_ = ws.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if err := ws.WriteMessage(websocket.TextMessage, frame); err != nil {
			ws.Close() // ends the read loop
			return false
		}
		return true
	}
	flush := func() bool {
		replies := c.takeOutbox()
		for i, frame := range replies {
			if !write(frame) {
				c.putBack(replies[i:])
				return false
			}
		}
		return true
	}
	if !flush() {
		return
	}
	for {
		select {
		case <-c.replied:
			if !flush() {
				return
			}
		case frame := <-events:
			if !write(frame) {
				return
			}
		case <-ctx.Done():
			return
		}
	}
}

// minSkew is the clock difference below which the device's clock is taken
// to agree with the node's: a Date header is whole seconds, and the
// response took a while to come.
const minSkew = 2 * time.Second

// clockSkew is how far the node's clock (its Date header, read at local
// time now) is ahead of the device's, or 0 when they agree within minSkew
// or the node sent no date. A command's deadline, by the node's clock,
// less the skew is the deadline by the device's: a device whose clock is
// off (no RTC, no NTP yet) neither drops every command as late nor waits
// on ones long given up.
func clockSkew(date string, now time.Time) time.Duration {
	nodeNow, err := http.ParseTime(date)
	if err != nil {
		return 0
	}
	// Date drops the fraction: the node's clock read up to a second more.
	skew := nodeNow.Sub(now)
	if skew > -minSkew && skew < minSkew {
		return 0
	}
	return skew
}

func (c *Client) readLoop(ctx context.Context, ws *websocket.Conn, skew time.Duration) (time.Duration, error) {
	// On shutdown the read deadline is set to now to unblock the read; the
	// mutex keeps a frame or ping arriving meanwhile from pushing it back.
	var deadlineMu sync.Mutex
	extend := func() {
		deadlineMu.Lock()
		defer deadlineMu.Unlock()
		if ctx.Err() == nil {
			_ = ws.SetReadDeadline(time.Now().Add(c.cfg.ReadTimeout))
		}
	}
	extend()
	ws.SetPingHandler(func(data string) error {
		extend()
		err := ws.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(10*time.Second))
		if errors.Is(err, websocket.ErrCloseSent) {
			return nil
		}
		return err
	})
	stop := context.AfterFunc(ctx, func() {
		deadlineMu.Lock()
		defer deadlineMu.Unlock()
		_ = ws.SetReadDeadline(time.Now())
	})
	defer stop()
	for {
		_, frame, err := ws.ReadMessage()
		if err != nil {
			var closeErr *websocket.CloseError
			if errors.As(err, &closeErr) {
				switch closeErr.Code {
				case protocol.CloseReplaced:
					return 0, ErrReplaced
				case protocol.CloseRebalance:
					return rebalanceDelay(closeErr.Text), err
				}
			}
			return 0, err
		}
		extend()
		msg, err := protocol.Decode(frame)
		if err != nil {
			var de *protocol.DecodeError
			if errors.As(err, &de) && de.Code == protocol.ErrUnknownType {
				// A newer node's frame: v1 devices ignore what they do not know.
				c.log.Debug("ignoring a frame of a type this SDK does not know", "err", err)
			} else {
				c.log.Warn("ignoring a frame the node sent", "err", err)
			}
			continue
		}
		if msg.Type == protocol.TypeError {
			fe := &FrameError{Code: msg.Error, Message: msg.Message, Name: msg.Name}
			c.log.Warn("the node refused a frame", "error", fe.Code, "message", fe.Message, "name", fe.Name)
			if c.cfg.OnError != nil {
				c.cfg.OnError(fe)
			}
			continue
		}
		if msg.Type == protocol.TypeState {
			if c.onDesired != nil && msg.Version > c.desiredVersion {
				c.desiredVersion = msg.Version
				c.onDesired(msg.Desired, msg.Version)
			}
			continue
		}
		if msg.Type != protocol.TypeCommand {
			continue // pong, or types of a newer protocol
		}
		reply, fresh := c.dedup.begin(msg.ID)
		if !fresh {
			if reply != nil {
				c.reply(reply) // a redelivery: answer again, do not re-run
			}
			continue
		}
		deadline, hasDeadline := msg.DeadlineTime()
		if hasDeadline {
			deadline = deadline.Add(-skew) // by the device's clock
		}
		if hasDeadline && !time.Now().Before(deadline) {
			// The node has stopped waiting (the frame sat unread, or the
			// device was busy): running it would act for nobody. The reply
			// says why, should the node still take it.
			c.log.Warn("command came after its deadline: not run", "command", msg.Name, "id", msg.ID, "deadline", msg.Deadline)
			ok := false
			reply, _ := protocol.Encode(protocol.Message{Type: protocol.TypeReply, ID: msg.ID, OK: &ok, Error: ErrDeadlinePassed})
			c.dedup.finish(msg.ID, reply)
			c.reply(reply)
			continue
		}
		c.running.Go(func() {
			hctx := ctx
			if hasDeadline { // an older node sends none
				var cancel context.CancelFunc
				hctx, cancel = context.WithDeadline(ctx, deadline)
				defer cancel()
			}
			reply, interrupted := c.run(ctx, hctx, msg)
			if interrupted {
				// The session ended under the handler: let the redelivery
				// run it again rather than replay a cancellation.
				c.dedup.forget(msg.ID)
				return
			}
			c.dedup.finish(msg.ID, reply)
			if reply == nil {
				// It failed at its deadline: the node fails the command
				// then by itself ("no reply within …"), and a reply now
				// would only race that.
				c.log.Info("command gave up at its deadline: not answered", "command", msg.Name, "id", msg.ID)
				return
			}
			c.reply(reply)
		})
	}
}

// run calls the command's handler with hctx (the session's ctx, bounded
// by the command's deadline) and renders its reply frame. It reports
// whether the handler failed because the session ended (ctx cancelled); one
// that failed once its deadline passed gets no frame (nil): the node has
// failed the command itself.
func (c *Client) run(ctx, hctx context.Context, cmd protocol.Message) (frame []byte, interrupted bool) {
	ok := true
	reply := protocol.Message{Type: protocol.TypeReply, ID: cmd.ID, OK: &ok}
	h := withCommandID(c.handlers[cmd.Name], cmd.ID)
	if h == nil {
		ok = false
		reply.Error = "unknown command " + cmd.Name
	} else if result, err := h(hctx, cmd.Args); err != nil {
		if ctx.Err() != nil {
			return nil, true
		}
		if hctx.Err() != nil {
			return nil, false
		}
		ok = false
		reply.Error = err.Error()
	} else if reply.Result, err = json.Marshal(result); err != nil {
		ok = false
		reply.Result, reply.Error = nil, "result is not JSON: "+err.Error()
	}
	frame, _ = protocol.Encode(reply)
	return frame, false
}

// maxRebalanceDelay bounds the wait a node asks for: a typo in a node ("30h"
// for "30m") must not park its devices for a day.
const maxRebalanceDelay = 10 * time.Minute

// rebalanceDelay reads the delay a node gave with close code 1012, such as
// "30s" or "reconnect in 30s", up to maxRebalanceDelay; absent or
// unreadable, a second.
func rebalanceDelay(reason string) time.Duration {
	for _, field := range strings.Fields(reason) {
		if d, err := time.ParseDuration(field); err == nil && d > 0 {
			return min(d, maxRebalanceDelay)
		}
	}
	return time.Second
}
