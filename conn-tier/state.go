package conntier

import (
	"context"
	"log/slog"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/device/protocol"
)

// Desired and reported state (issue 17). A session is sent its device's
// desired document in a "state" frame once it is registered, and again
// whenever the desired version grows: the edge's PATCH wakes the node
// ("state DEVICE"), and the deliverer's goroutine reads the documents of
// the devices woken, newer than what each session was sent, in one query
// per round (db.NewerDesired). A lost wake-up is repaired by the periodic
// rescan, which reads them for every session. Only the latest document
// waits to be written (session.stateDue): a device offline, or slow to
// read, gets the newest version, never the ones between.
//
// A device's "report" frames go the way of replies (storeReport): never
// shed, retried until the database takes them, in the order read.

// wakeState has the device's desired document read and sent, if newer.
func (d *deliverer) wakeState(deviceID string) {
	d.mu.Lock()
	d.stateDirty[deviceID] = struct{}{}
	d.mu.Unlock()
	d.poke()
}

// takeStates returns the registered sessions whose desired document is
// to be read again.
func (d *deliverer) takeStates() []*session {
	d.mu.Lock()
	defer d.mu.Unlock()
	out, _ := d.takeMarked(&d.stateAll, d.stateDirty)
	return out
}

// sendStates reads the desired documents of the sessions woken and sends
// those newer than each was sent. On an error the sessions not done are
// marked again, for the next round.
func (d *deliverer) sendStates(ctx context.Context) error {
	sessions := d.takeStates()
	for len(sessions) > 0 {
		chunk := sessions[:min(len(sessions), roundDevices)]
		bySession := make(map[string]*session, len(chunk))
		cursors := make([]db.StateCursor, len(chunk))
		for i, s := range chunk {
			bySession[s.deviceID] = s
			cursors[i] = db.StateCursor{DeviceID: s.deviceID, Version: s.sentState()}
		}
		newer, err := d.node.store.NewerDesired(ctx, cursors)
		if err != nil {
			d.mu.Lock()
			for _, s := range sessions {
				d.stateDirty[s.deviceID] = struct{}{}
			}
			d.mu.Unlock()
			return err
		}
		for _, st := range newer {
			if s := bySession[st.DeviceID]; s != nil {
				s.sendState(st)
			}
		}
		sessions = sessions[len(chunk):]
	}
	return nil
}

// sentState is the desired version last queued for the device on this session.
func (s *session) sentState() int64 {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	return s.stateSent
}

// sendState queues the device's desired document, unless the session was
// sent that version or a newer one. It replaces a document still waiting:
// the device needs only the latest.
func (s *session) sendState(st db.Desired) {
	frame, err := protocol.Encode(protocol.Message{Type: protocol.TypeState, Desired: st.Desired, Version: st.Version})
	if err != nil {
		s.log(slog.LevelError, "encoding a state frame", "err", err) // a jsonb document always encodes: a bug
		return
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if s.ended || st.Version <= s.stateSent {
		return
	}
	s.stateDue, s.stateSent = frame, st.Version
	s.startWriterLocked()
}

// storeReport queues a device's report for the database, the way
// storeReply does: it waits for room rather than drop it.
func (s *session) storeReport(r db.Report) {
	s.storeDurable(commandOp{kind: opReport, session: s, report: &r})
}
