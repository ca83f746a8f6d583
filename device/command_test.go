package device_test

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/device"
)

// A handler's context carries its command's id; other contexts carry none.
func TestCommandID(t *testing.T) {
	t.Parallel()
	if got := device.CommandID(context.Background()); got != "" {
		t.Fatalf("CommandID of a plain context = %q, want \"\"", got)
	}
	n := newFakeNode(t)
	r := start(t, n, nil, func(c *device.Client) {
		c.Handle("whoami", func(ctx context.Context, _ json.RawMessage) (any, error) {
			return map[string]string{"id": device.CommandID(ctx)}, nil
		})
	})
	a := n.accept(t)
	r.waitConnected(t)
	for range 2 {
		id := uuid.NewString()
		sendCommand(t, a.ws, id, "whoami", `{}`)
		_, msg := readReply(t, a.ws, id)
		if want := `{"id":"` + id + `"}`; string(msg.Result) != want {
			t.Fatalf("result %s, want %s", msg.Result, want)
		}
	}
}
