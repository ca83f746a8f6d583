package edge

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/switchboard-iot/switchboard/internal/command"
)

// stream writes a command's events as Server-Sent Events: those after
// lastSeq at once, then each new one, until the outcome. Each event's data
// is the command as it stands; its id is the step number, which a client
// sends back as Last-Event-ID to resume on any edge. Each write has
// WriteTimeout: a client that stopped reading loses its stream.
func (e *Edge) stream(w http.ResponseWriter, r *http.Request, wt *waiter, c command.Command, lastSeq int) {
	rc := e.startStream(w)

	// emit writes the events c implies that the client has not seen, and
	// reports whether the stream is over.
	emit := func(c command.Command) (done bool, err error) {
		data, err := json.Marshal(c)
		if err != nil {
			return true, err
		}
		for _, ev := range command.Events(c) {
			if ev.Seq <= lastSeq {
				continue
			}
			if err := e.writeEvent(w, rc, strconv.Itoa(ev.Seq), ev.Name, data); err != nil {
				return true, err
			}
			lastSeq = ev.Seq
		}
		return c.Status.Final(), rc.Flush()
	}
	if done, err := emit(c); done || err != nil {
		return
	}

	keepAlive := time.NewTicker(e.cfg.KeepAlive)
	defer keepAlive.Stop()
	recheck := time.NewTimer(e.recheckAfter(c))
	defer recheck.Stop()
	for {
		select {
		case <-wt.changed:
			c, _ = wt.get()
			if done, err := emit(c); done || err != nil {
				return
			}
			recheck.Reset(e.recheckAfter(c))
		case <-recheck.C:
			// The command should have moved by now and no wake-up said so
			// (one can be lost when a write and its NOTIFY part): look.
			if fresh, err := e.store.Command(r.Context(), c.ID); err == nil {
				wt.set(fresh)
			}
			recheck.Reset(e.recheckAfter(c))
		case <-keepAlive.C:
			if !e.keepAlive(w, rc) {
				return
			}
		case <-r.Context().Done():
			return
		case <-e.closing:
			return // the client resumes elsewhere with Last-Event-ID
		}
	}
}

// startStream answers 200 as an event stream: the headers every stream
// (a command's, a device's events, a job's) sends, proxies told not to
// hold events back.
func (e *Edge) startStream(w http.ResponseWriter) *http.ResponseController {
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	e.writeSoon(rc)
	w.WriteHeader(http.StatusOK)
	return rc
}

// writeEvent writes one Server-Sent Event, within WriteTimeout; the
// caller flushes.
func (e *Edge) writeEvent(w http.ResponseWriter, rc *http.ResponseController, id, name string, data []byte) error {
	e.writeSoon(rc)
	_, err := fmt.Fprintf(w, "id: %s\nevent: %s\ndata: %s\n\n", id, name, data)
	return err
}

// keepAlive writes a comment on a quiet stream, so that proxies and
// clients see it is alive; false when the client is gone.
func (e *Edge) keepAlive(w http.ResponseWriter, rc *http.ResponseController) bool {
	e.writeSoon(rc)
	_, err := fmt.Fprint(w, ": keep-alive\n\n")
	return err == nil && rc.Flush() == nil
}

// recheckAfter is when a stream should read its command itself: when the
// command is overdue (the sweeper should by then have failed or expired it),
// and at least every maxRecheck, since a wake-up can be lost and a pending
// command's ttl can be days away.
func (e *Edge) recheckAfter(c command.Command) time.Duration {
	deadline := c.ExpiresAt
	if c.DeliveredAt != nil {
		deadline = c.DeliveredAt.Add(time.Duration(c.Timeout))
	}
	return min(max(time.Until(deadline)+2*e.cfg.SweepInterval+time.Second, time.Second), maxRecheck)
}

const maxRecheck = 30 * time.Second
