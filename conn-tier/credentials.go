package conntier

import (
	"context"
	"fmt"

	"github.com/switchboard-iot/switchboard/db"
)

// credentialLookup is one connect request waiting for its device's
// credentials. The credentials batcher reads those of every request queued
// while its previous read was in flight in one statement: a reconnect storm
// of 15,000 devices costs a few dozen queries, not 15,000, and an idle node
// adds no delay.
type credentialLookup struct {
	deviceID string
	answer   chan credentialAnswer // cap 1: the batcher never waits on a request that gave up
}

type credentialAnswer struct {
	creds db.DeviceCredentials
	err   error
}

// lookupCredentials reads a device's credentials through the batcher;
// db.ErrNotFound for an unknown device.
func (n *Node) lookupCredentials(ctx context.Context, deviceID string) (db.DeviceCredentials, error) {
	l := credentialLookup{deviceID: deviceID, answer: make(chan credentialAnswer, 1)}
	if err := n.credentials.Add(ctx, l); err != nil {
		return db.DeviceCredentials{}, err
	}
	select {
	case a := <-l.answer:
		return a.creds, a.err
	case <-ctx.Done():
		return db.DeviceCredentials{}, ctx.Err()
	}
}

// readCredentials answers a batch of look-ups with one query. A failed read
// is answered, not retried: those devices get 503 and come back later,
// rather than wait on a database that is away.
func (n *Node) readCredentials(ctx context.Context, lookups []credentialLookup) error {
	ids := make([]string, 0, len(lookups))
	seen := make(map[string]bool, len(lookups))
	for _, l := range lookups {
		if !seen[l.deviceID] {
			seen[l.deviceID] = true
			ids = append(ids, l.deviceID)
		}
	}
	found, err := n.store.ManyDeviceCredentials(ctx, ids)
	for _, l := range lookups {
		a := credentialAnswer{err: err}
		if err == nil {
			var ok bool
			if a.creds, ok = found[l.deviceID]; !ok {
				a.err = fmt.Errorf("device %s: %w", l.deviceID, db.ErrNotFound)
			}
		}
		l.answer <- a
	}
	return nil
}
