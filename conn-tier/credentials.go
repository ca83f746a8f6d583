package conntier

import (
	"context"
	"fmt"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/batch"
)

// readCredentials answers a batch of look-ups (Node.credentials) with one
// query; db.ErrNotFound for an unknown device. A failed read is answered,
// not retried: those devices get 503 and come back later, rather than wait
// on a database that is away.
func (n *Node) readCredentials(ctx context.Context, deviceIDs []string) ([]batch.Outcome[db.DeviceCredentials], error) {
	ids := make([]string, 0, len(deviceIDs))
	seen := make(map[string]bool, len(deviceIDs))
	for _, id := range deviceIDs {
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	found, err := n.store.ManyDeviceCredentials(ctx, ids)
	if err != nil {
		return nil, err
	}
	out := make([]batch.Outcome[db.DeviceCredentials], len(deviceIDs))
	for i, id := range deviceIDs {
		var ok bool
		if out[i].Result, ok = found[id]; !ok {
			out[i].Err = fmt.Errorf("device %s: %w", id, db.ErrNotFound)
		}
	}
	return out, nil
}
