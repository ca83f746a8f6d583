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
	nc := func(device, args string) db.NewCommand {
		return db.NewCommand{
			ID: uuid.Must(uuid.NewV7()), DeviceID: device, Name: "x", Args: json.RawMessage(args),
			Timeout: time.Second, TTL: time.Minute, ReplyTo: "edge-a",
		}
	}
	// good, refused, unknown device, good
	ncs := []db.NewCommand{nc("dev-1", `{}`), nc("dev-1", `{"s":"a\u0000b"}`), nc("ghost", `{}`), nc("dev-1", `{"n":2}`)}
	type answer struct {
		c   command.Command
		err error
	}
	ins := newInserter(store)
	answers := make([]chan answer, len(ncs))
	for i, nc := range ncs {
		answers[i] = make(chan answer, 1)
		go func() {
			c, err := ins.create(nc)
			answers[i] <- answer{c, err}
		}()
	}
	// All queue before the inserter runs: they go in one batch.
	for deadline := time.Now().Add(10 * time.Second); ins.waiting() < len(ncs); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d requests queued, want 4", ins.waiting())
		}
	}
	runCtx, stop := context.WithCancel(ctx)
	stopped := make(chan error)
	go func() { stopped <- ins.run(runCtx) }()
	defer func() {
		stop()
		if err := <-stopped; err != nil {
			t.Error(err)
		}
	}()

	var got [4]answer
	for i := range answers {
		got[i] = <-answers[i] // every request is answered
	}
	for _, i := range []int{0, 3} {
		if got[i].err != nil || got[i].c.ID != ncs[i].ID || got[i].c.Status != command.Pending {
			t.Errorf("good row: %+v, err %v", got[i].c, got[i].err)
		}
	}
	if !errors.Is(got[1].err, db.ErrInvalid) {
		t.Errorf("refused row: err = %v, want ErrInvalid", got[1].err)
	}
	if !errors.Is(got[2].err, db.ErrNotFound) {
		t.Errorf("unknown device: err = %v, want ErrNotFound", got[2].err)
	}
}
