package edge

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/device/protocol"
	"github.com/switchboard-iot/switchboard/internal/command"
	"github.com/switchboard-iot/switchboard/internal/problem"
)

// commandRequest is the body of POST /v1/devices/{id}/commands, read by
// decodeJSON (so its args are JSON PostgreSQL can store).
type commandRequest struct {
	Name    string           `json:"name"`
	Args    json.RawMessage  `json:"args"`
	Timeout command.Duration `json:"timeout"` // to reply, once delivered
	TTL     command.Duration `json:"ttl"`     // to be delivered

	argsSize int // the args' bytes as a node sends them; set by validate
}

// MaxArgs bounds a command's args, compacted and with their numbers written
// out as jsonb stores them: with its id and name, the
// command's frame stays within a node's 64 KiB. A job's command has the
// same limit (its body may be larger, for a long device list).
const MaxArgs = 63 << 10

// badRequest is a refused request: the problem type, which says what kind
// of wrong, and what is wrong.
type badRequest struct {
	kind   problem.Type
	detail string
}

func (b *badRequest) Error() string { return b.detail }

// write answers the refusal.
func (b *badRequest) write(w http.ResponseWriter) { b.kind.Write(w, b.detail) }

// validate checks a command request, a single command's or a job's, and
// fills in its defaults; its args are compacted.
func (req *commandRequest) validate() *badRequest {
	invalid := func(format string, a ...any) *badRequest {
		return &badRequest{problem.InvalidCommand, fmt.Sprintf(format, a...)}
	}
	if !protocol.ValidName(req.Name) {
		return invalid(`name: want 1-128 characters of letters, digits and "_.:/-", starting with a letter or digit`)
	}
	switch args := strings.TrimSpace(string(req.Args)); {
	case args == "" || args == "null":
		req.Args = json.RawMessage(`{}`)
	case !strings.HasPrefix(args, "{"):
		return invalid("args: want a JSON object")
	default:
		var compact bytes.Buffer
		if err := json.Compact(&compact, req.Args); err != nil {
			return invalid("args: %v", err)
		}
		req.Args = compact.Bytes()
	}
	// Measured as a node will send them: compact, numbers written out.
	size, err := protocol.StoredSize(req.Args)
	if err != nil {
		return invalid("args: %v", err)
	}
	if size > MaxArgs {
		return &badRequest{problem.RequestTooLarge, fmt.Sprintf(
			"args: at most %d KiB, compacted and with numbers written out, so that the command fits a device's 64 KiB frame; these are %d bytes", MaxArgs>>10, size)}
	}
	req.argsSize = size
	check := func(field string, d *command.Duration, def, max time.Duration) *badRequest {
		switch v := time.Duration(*d); {
		case v == 0:
			*d = command.Duration(def)
		case v < time.Second || v > max:
			return invalid("%s: want between 1s and %s, got %s", field, command.Duration(max), command.Duration(v))
		}
		return nil
	}
	if bad := check("timeout", &req.Timeout, command.DefaultTimeout, command.MaxTimeout); bad != nil {
		return bad
	}
	return check("ttl", &req.TTL, command.DefaultTTL, command.MaxTTL)
}

// maxIdempotencyKey bounds an Idempotency-Key header.
const maxIdempotencyKey = 255

// validIdempotencyKey reports whether key can be an Idempotency-Key: none,
// or at most maxIdempotencyKey printable ASCII characters.
func validIdempotencyKey(key string) bool {
	return len(key) <= maxIdempotencyKey && !strings.ContainsFunc(key, func(r rune) bool { return r < ' ' || r > '~' })
}

// parseWait reads the ?wait= of a command request: how long to wait for the
// outcome, at most limit; zero when absent.
func parseWait(v string, limit time.Duration) (time.Duration, bool) {
	if v == "" {
		return 0, true
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, false
	}
	return min(d, limit), true
}

// hash identifies a validated request to a device: a repeat under the same
// Idempotency-Key must hash the same.
func (req *commandRequest) hash(deviceID string) []byte {
	var args bytes.Buffer
	if err := json.Compact(&args, req.Args); err != nil {
		args.Write(req.Args)
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00%s\x00%d\x00%d", deviceID, req.Name, args.Bytes(), req.Timeout, req.TTL)
	return h.Sum(nil)
}

// handleSendCommand stores a command, wakes the device's node, and answers
// in one of three ways: an SSE stream (Accept: text/event-stream), a wait
// for the outcome (?wait=10s), or at once with 202 and a Location.
func (e *Edge) handleSendCommand(w http.ResponseWriter, r *http.Request) {
	arrived := time.Now()
	deviceID := chi.URLParam(r, "id")
	var req commandRequest
	if !decodeJSON(w, r, &req) {
		return
	}
	if bad := req.validate(); bad != nil {
		bad.write(w)
		return
	}
	stream := acceptsEventStream(r)
	wait, ok := parseWait(r.URL.Query().Get("wait"), e.cfg.MaxWait)
	if !ok {
		problem.InvalidWait.Write(w, `wait: want a duration such as "10s"`)
		return
	}

	idemKey := r.Header.Get("Idempotency-Key")
	if !validIdempotencyKey(idemKey) {
		problem.InvalidIdempotencyKey.Write(w, fmt.Sprintf("Idempotency-Key: want at most %d printable ASCII characters", maxIdempotencyKey))
		return
	}

	id := uuid.Must(uuid.NewV7()) // time-ordered: index-friendly
	var wt *waiter
	if stream || wait > 0 {
		wt = e.replies.wait(id) // before the insert: no wake-up can come first
		defer e.replies.done(wt)
	}
	var c command.Command
	created := false
	err := db.ErrNotFound // no such device can exist; spare the database
	if db.ValidDeviceID(deviceID) {
		// Not the request's context: a client that hangs up as the insert
		// commits must not leave a command stored but never announced.
		nc := db.NewCommand{
			ID: id, DeviceID: deviceID, Name: req.Name, Args: req.Args,
			Timeout: time.Duration(req.Timeout), TTL: time.Duration(req.TTL), ReplyTo: e.cfg.ID,
			APIKeyID: apiKey(r).ID, QueueCap: e.cfg.DeviceQueue,
		}
		if idemKey == "" {
			c, err = e.inserts.create(nc)
			created = err == nil
		} else {
			nc.IdempotencyKey, nc.RequestHash = idemKey, req.hash(deviceID)
			c, created, err = e.store.CreateCommand(context.WithoutCancel(r.Context()), nc)
		}
	}
	switch {
	case errors.Is(err, db.ErrNotFound):
		problem.DeviceNotFound.Write(w, "no device has the id "+strconv.Quote(deviceID))
		return
	case errors.Is(err, db.ErrQueueFull):
		e.metrics.limited.WithLabelValues("device_queue").Inc()
		problem.DeviceQueueFull.WriteRetryAfter(w, fmt.Sprintf(
			"device %q already has %d pending commands, its cap: nothing was stored; send again once it took some (or they expired, or were cancelled)",
			deviceID, e.cfg.DeviceQueue), queueFullRetryAfter)
		return
	case errors.Is(err, db.ErrKeyReused):
		problem.IdempotencyKeyReused.Write(w,
			"this Idempotency-Key was sent with another request in the last 24 hours; use a new key for a new command")
		return
	case errors.Is(err, db.ErrInvalid):
		problem.InvalidCommand.Write(w, "the database cannot store this command")
		return
	case err != nil:
		e.unavailable(w, "storing a command", err)
		return
	}
	if created {
		e.metrics.accepted.Inc()
		// The command is stored: from here on nothing may lose its wake-up,
		// which the notices batcher retries until the database takes it.
		_ = e.notices.Push(db.Notice{Wake: deviceID})
	} else {
		// A repeat: answer with the first command, which another edge may
		// have accepted. Ask to be woken too, then read, so that no change
		// falls between the two.
		w.Header().Set("Idempotent-Replayed", "true")
		wt = nil
		if stream || wait > 0 {
			wt = e.replies.wait(c.ID)
			defer e.replies.done(wt)
			if err := e.store.Watch(r.Context(), c.ID, e.cfg.ID); err != nil {
				e.unavailable(w, "watching a command", err)
				return
			}
			if c, err = e.store.Command(r.Context(), c.ID); err != nil {
				e.unavailable(w, "reading a command", err)
				return
			}
		}
	}

	w.Header().Set("Location", "/v1/commands/"+c.ID.String())
	switch {
	case stream:
		e.stream(w, r, wt, c, 0)
	case wait > 0:
		e.waitForOutcome(w, r, wt, c, wait)
	default:
		writeJSON(w, http.StatusAccepted, c)
	}
	// A command this request accepted and saw to its end: time its round
	// trip (a replayed one began with another request).
	if created && wt != nil {
		if last, ok := wt.get(); ok && last.Status.Final() {
			e.metrics.roundTrip.WithLabelValues(string(last.Status)).Observe(time.Since(arrived).Seconds())
		}
	}
}

// waitForOutcome answers 200 with the command once it is final, or 202
// with its state so far when wait runs out. The answer may come long after
// the request's write deadline: it gets one of its own.
func (e *Edge) waitForOutcome(w http.ResponseWriter, r *http.Request, wt *waiter, c command.Command, wait time.Duration) {
	rc := http.NewResponseController(w)
	answer := func(status int, c command.Command) {
		e.writeSoon(rc)
		writeJSON(w, status, c)
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for !c.Status.Final() {
		select {
		case <-wt.changed:
			c, _ = wt.get()
		case <-timer.C:
			// Look once more: a wake-up can be lost, the row cannot.
			if fresh, err := e.store.Command(r.Context(), c.ID); err == nil && fresh.Status.Final() {
				wt.set(fresh) // for the round trip's metric
				answer(http.StatusOK, fresh)
				return
			}
			answer(http.StatusAccepted, c)
			return
		case <-e.closing:
			answer(http.StatusAccepted, c)
			return
		case <-r.Context().Done():
			return
		}
	}
	answer(http.StatusOK, c)
}

func (e *Edge) handleGetCommand(w http.ResponseWriter, r *http.Request) {
	id, ok := uuidParam(w, r, problem.InvalidCommandID, "command ids are UUIDs")
	if !ok {
		return
	}
	c, err := e.store.CommandSentBy(r.Context(), id, apiKey(r).Creator())
	switch {
	case errors.Is(err, db.ErrNotFound):
		commandNotFound(w, id)
	case err != nil:
		e.unavailable(w, "reading a command", err)
	default:
		writeJSON(w, http.StatusOK, c)
	}
}

// handleCommandEvents streams a command's events, resuming after the
// Last-Event-ID a client sends when it reconnects (to this edge or another).
func (e *Edge) handleCommandEvents(w http.ResponseWriter, r *http.Request) {
	id, ok := uuidParam(w, r, problem.InvalidCommandID, "command ids are UUIDs")
	if !ok {
		return
	}
	lastSeq, ok := parseLastEventID(r.Header.Get("Last-Event-ID"))
	if !ok {
		problem.InvalidLastEventID.Write(w, "Last-Event-ID: want the id of an event this stream sent")
		return
	}
	wt := e.replies.wait(id)
	defer e.replies.done(wt)
	// This edge may not be the one that accepted the command: ask to be
	// woken too, then read, so no change falls between the two.
	if err := e.store.Watch(r.Context(), id, e.cfg.ID); err != nil {
		e.unavailable(w, "watching a command", err)
		return
	}
	c, err := e.store.CommandSentBy(r.Context(), id, apiKey(r).Creator())
	switch {
	case errors.Is(err, db.ErrNotFound):
		commandNotFound(w, id)
		return
	case err != nil:
		e.unavailable(w, "reading a command", err)
		return
	}
	e.stream(w, r, wt, c, lastSeq)
}

// maxStreamSeq bounds the Last-Event-ID of a command's or a job's stream,
// whose ids count 1, 2, 3…: none gets near it (a job's stream, at most an
// event a second, in 68 years), and counting on from it cannot overflow.
const maxStreamSeq = math.MaxInt32

// parseLastEventID reads the Last-Event-ID a resuming client sends to a
// command's or a job's stream: the step it saw last, zero when absent.
func parseLastEventID(v string) (int, bool) {
	if v == "" {
		return 0, true
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > maxStreamSeq {
		return 0, false
	}
	return n, true
}

func commandNotFound(w http.ResponseWriter, id uuid.UUID) {
	problem.CommandNotFound.Write(w, "no command has the id "+id.String())
}

func acceptsEventStream(r *http.Request) bool {
	return strings.Contains(r.Header.Get("Accept"), "text/event-stream")
}
