package conntier_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/db/dbtest"
	"github.com/switchboard-iot/switchboard/device/protocol"
)

func patchDesired(t *testing.T, sys *testsys.System, deviceID, patch string) db.DeviceState {
	t.Helper()
	st, err := sys.Store.PatchDesired(context.Background(), deviceID, json.RawMessage(patch), nil)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func wantState(t *testing.T, m protocol.Message, version int64, desired string) {
	t.Helper()
	if m.Type != protocol.TypeState || m.Version != version || !jsonEqual(t, m.Desired, desired) {
		t.Fatalf("got %+v (desired %s), want state version %d of %s", m, m.Desired, version, desired)
	}
}

// Desired state set while the device is offline arrives on connect, the
// latest version only; a change reaches the connected device; a device
// that ignores state frames still gets its commands; reports are stored.
func TestDesiredAndReportedState(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", nil)
	devSecret := sys.AddDevice(t, "dev-1")
	sys.AddDevice(t, "dev-2")

	patchDesired(t, sys, "dev-1", `{"target_celsius":19}`)
	patchDesired(t, sys, "dev-1", `{"target_celsius":20,"mode":"heat"}`)
	patchDesired(t, sys, "dev-1", `{"target_celsius":21}`)
	ws := connect(t, node, "dev-1", devSecret)
	wantState(t, readMessage(t, ws), 3, `{"target_celsius":21,"mode":"heat"}`)

	// A change while connected: the node is woken and sends the new document.
	first := waitOnline(t, sys, "dev-1", "node-a", uuid.Nil)
	waitListening(t, sys, "node-a")
	patchDesired(t, sys, "dev-1", `{"mode":null}`)
	wantState(t, readMessage(t, ws), 4, `{"target_celsius":21}`)
	// A patch of another device sends this one nothing: the next frame is the command.
	patchDesired(t, sys, "dev-2", `{"x":1}`)
	cmd := newCommand(t, sys, "dev-1", "reboot", `{}`)
	wake(t, sys, "dev-1")
	if m := readMessage(t, ws); m.Type != protocol.TypeCommand || m.ID != cmd.ID.String() {
		t.Fatalf("got %+v, want command %s", m, cmd.ID)
	}
	send(t, ws, `{"type":"reply","id":"`+cmd.ID.String()+`","ok":true}`)
	waitStatus(t, sys, cmd.ID, "done")

	// Reports: merge patches of reported, in order.
	send(t, ws, `{"type":"report","reported":{"celsius":19.5,"mode":"heat","fw":{"v":1,"b":2}}}`)
	send(t, ws, `{"type":"report","reported":{"target_celsius":21,"mode":null,"fw":{"b":null}}}`)
	var st db.DeviceState
	testsys.Eventually(t, "both reports stored", func() bool {
		var err error
		st, err = sys.Store.State(context.Background(), "dev-1")
		if err != nil {
			t.Fatal(err)
		}
		return st.ReportedVersion == 2
	})
	if !jsonEqual(t, st.Reported, `{"celsius":19.5,"target_celsius":21,"fw":{"v":1}}`) || !jsonEqual(t, st.Delta, `{}`) {
		t.Fatalf("reported %s, delta %s", st.Reported, st.Delta)
	}
	patchDesired(t, sys, "dev-1", `{"target_celsius":22.5}`)
	wantState(t, readMessage(t, ws), 5, `{"target_celsius":22.5}`)
	if st, _ = sys.Store.State(context.Background(), "dev-1"); !jsonEqual(t, st.Delta, `{"target_celsius":22.5}`) {
		t.Fatalf("delta %s, want the new target", st.Delta)
	}

	// A new session is sent the current document again.
	closeNormally(t, ws)
	waitOffline(t, sys, "dev-1")
	ws = connect(t, node, "dev-1", devSecret)
	wantState(t, readMessage(t, ws), 5, `{"target_celsius":22.5}`)
	waitOnline(t, sys, "dev-1", "node-a", first.SessionID)

	// A report that is not an object closes the session with 1008.
	send(t, ws, `{"type":"report","reported":[1]}`)
	if ce := expectClose(t, ws, protocol.CloseBadMessage); !strings.Contains(ce.Text, "report") {
		t.Fatalf("close reason %q", ce.Text)
	}
}

// A device without desired state is sent no state frame: its first frame
// is its command, as before.
func TestNoStateNoFrame(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", nil)
	devSecret := sys.AddDevice(t, "dev-1")
	cmd := newCommand(t, sys, "dev-1", "reboot", `{}`)
	ws := connect(t, node, "dev-1", devSecret)
	if m := readMessage(t, ws); m.Type != protocol.TypeCommand || m.ID != cmd.ID.String() {
		t.Fatalf("got %+v, want command %s", m, cmd.ID)
	}
}

// A report read while PostgreSQL is down waits in the node, like a reply,
// and is stored once the database is back.
func TestReportDuringDatabaseOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("stops a PostgreSQL cluster of its own")
	}
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cluster, url := dbtest.PrivateCluster(ctx, t)
	sys := testsys.Attach(t, url)
	node := sys.StartNode(t, "node-a", nil)
	devSecret := sys.AddDevice(t, "dev-1")
	ws := connect(t, node, "dev-1", devSecret)
	waitOnline(t, sys, "dev-1", "node-a", uuid.Nil)

	if err := cluster.Crash(); err != nil {
		t.Fatal(err)
	}
	send(t, ws, `{"type":"report","reported":{"celsius":19.5}}`)
	send(t, ws, `{"type":"report","reported":{"mode":"heat"}}`)
	testsys.Eventually(t, "the node to read both reports", func() bool {
		return node.Metric(t, `switchboard_conn_frames_received_total{node="node-a",type="report"}`) >= 2
	})
	if err := cluster.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	testsys.Eventually(t, "both reports stored", func() bool {
		st, err := sys.Store.State(ctx, "dev-1")
		return err == nil && st.ReportedVersion == 2 && jsonEqual(t, st.Reported, `{"celsius":19.5,"mode":"heat"}`)
	})
}
