package edge

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/db/dbtest"
	"github.com/switchboard-iot/switchboard/internal/command"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

// One batch: a row PostgreSQL refuses fails alone, an unknown device is
// not found, the others are stored, and every request is answered.
func TestInserterIsolatesRefusedRows(t *testing.T) {
	t.Parallel()
	store := db.NewStore(dbtest.NewPool(t))
	ctx := context.Background()
	if _, err := store.AddDevices(ctx, []db.Credential{{ID: "dev-1", SecretHash: secret.Hash("s")}}); err != nil {
		t.Fatal(err)
	}
	nc := func(device, args string) *insert {
		return &insert{done: make(chan struct{}), nc: db.NewCommand{
			ID: uuid.Must(uuid.NewV7()), DeviceID: device, Name: "x", Args: json.RawMessage(args),
			Timeout: time.Second, TTL: time.Minute, ReplyTo: "edge-a",
		}}
	}
	good1, bad, ghost, good2 := nc("dev-1", `{}`), nc("dev-1", `{"s":"a\u0000b"}`), nc("ghost", `{}`), nc("dev-1", `{"n":2}`)
	newInserter(store).flush(ctx, []*insert{good1, bad, ghost, good2})

	for _, req := range []*insert{good1, bad, ghost, good2} {
		select {
		case <-req.done:
		default:
			t.Fatalf("request %s was not answered", req.nc.ID)
		}
	}
	for _, good := range []*insert{good1, good2} {
		if good.err != nil || good.c.ID != good.nc.ID || good.c.Status != command.Pending {
			t.Errorf("good row: %+v, err %v", good.c, good.err)
		}
	}
	if !errors.Is(bad.err, db.ErrInvalid) {
		t.Errorf("refused row: err = %v, want ErrInvalid", bad.err)
	}
	if !errors.Is(ghost.err, db.ErrNotFound) {
		t.Errorf("unknown device: err = %v, want ErrNotFound", ghost.err)
	}
}
