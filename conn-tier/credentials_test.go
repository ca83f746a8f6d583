package conntier_test

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/websocket"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/device"
	"github.com/switchboard-iot/switchboard/device/protocol"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

// refusedWith dials as id and checks the node answered 401 without
// upgrading; it returns the problem's detail.
func refusedWith(t *testing.T, node *testsys.Node, id, devSecret string) string {
	t.Helper()
	ws, resp, err := dialRaw(t, node, basicAuth(id, devSecret), protocol.Subprotocol)
	if err == nil || ws != nil || !errors.Is(err, websocket.ErrBadHandshake) {
		t.Fatalf("dial as %s: %v; want it refused", id, err)
	}
	return readProblem(t, resp, http.StatusUnauthorized, "unauthorized").Detail
}

// After a rotation the old secret works for its grace, then not; the new
// one works throughout.
func TestRotatedSecret(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", nil)
	old := sys.AddDevice(t, "dev-1")
	fresh := secret.New("")
	if _, err := sys.Store.RotateDeviceSecret(context.Background(), "dev-1", secret.Hash(fresh), time.Hour); err != nil {
		t.Fatal(err)
	}
	closeNormally(t, connect(t, node, "dev-1", old))
	closeNormally(t, connect(t, node, "dev-1", fresh))

	// The grace ends: moved in the table, not waited for.
	if _, err := sys.Pool.Exec(t.Context(), `UPDATE devices SET previous_secret_until = now() - interval '1 second'`); err != nil {
		t.Fatal(err)
	}
	if got, want := refusedWith(t, node, "dev-1", old), refusedWith(t, node, "dev-nobody", old); got != want {
		t.Fatalf("the expired secret is told apart from an unknown device: %q vs %q", got, want)
	}
	closeNormally(t, connect(t, node, "dev-1", fresh))
}

// Disabling a device closes its session (1008, on whichever node holds it)
// and refuses its connections with 401 until it is enabled again.
func TestDisabledDevice(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	nodeA := sys.StartNode(t, "node-a", nil)
	nodeB := sys.StartNode(t, "node-b", nil)
	devSecret := sys.AddDevice(t, "dev-1")
	waitListening(t, sys, "node-a")
	waitListening(t, sys, "node-b")

	ws := connect(t, nodeB, "dev-1", devSecret)
	waitOnline(t, sys, "dev-1", "node-b", uuid.Nil)
	if err := sys.Store.DisableDevice(context.Background(), "dev-1"); err != nil {
		t.Fatal(err)
	}
	if ce := expectClose(t, ws, protocol.CloseBadMessage); ce.Text != "device disabled" {
		t.Fatalf("close reason %q, want %q", ce.Text, "device disabled")
	}
	waitOffline(t, sys, "dev-1")
	for _, node := range []*testsys.Node{nodeA, nodeB} {
		if detail := refusedWith(t, node, "dev-1", devSecret); detail != "device disabled" {
			t.Fatalf("a disabled device with its secret: %q, want %q", detail, "device disabled")
		}
		// Without the secret, nothing is told.
		if detail := refusedWith(t, node, "dev-1", "wrong"); detail != "unknown device or wrong secret" {
			t.Fatalf("a disabled device with a wrong secret: %q", detail)
		}
	}

	if err := sys.Store.EnableDevice(context.Background(), "dev-1"); err != nil {
		t.Fatal(err)
	}
	closeNormally(t, connect(t, nodeA, "dev-1", devSecret))

	// The SDK: closed with 1008, it reconnects, gets 401 and stops.
	d := testsys.StartDevice(t, nodeA, "dev-1", devSecret, nil)
	if err := sys.Store.DisableDevice(context.Background(), "dev-1"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.Done():
	case <-time.After(wait):
		t.Fatal("the SDK device did not stop after it was disabled")
	}
	if err := d.Stop(); !errors.Is(err, device.ErrUnauthorized) {
		t.Fatalf("the SDK device stopped with %v, want ErrUnauthorized", err)
	}
}

// Deleting a device closes its session, and its credentials no longer work.
func TestDeletedDevice(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", nil)
	devSecret := sys.AddDevice(t, "dev-1")
	waitListening(t, sys, "node-a")
	ws := connect(t, node, "dev-1", devSecret)
	waitOnline(t, sys, "dev-1", "node-a", uuid.Nil)
	newCommand(t, sys, "dev-1", "set", `{}`)

	n, err := sys.Store.DeleteDevice(context.Background(), "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	if ce := expectClose(t, ws, protocol.CloseBadMessage); ce.Text != "device deleted" {
		t.Fatalf("close reason %q, want %q", ce.Text, "device deleted")
	}
	if n.Commands != 1 || count(t, sys, `SELECT count(*) FROM commands`) != 0 {
		t.Fatalf("deleted %d commands; %d remain", n.Commands, count(t, sys, `SELECT count(*) FROM commands`))
	}
	waitOffline(t, sys, "dev-1")
	testsys.Eventually(t, "the node to drop the session", func() bool { return node.Sessions() == 0 })
	if detail := refusedWith(t, node, "dev-1", devSecret); detail != "unknown device or wrong secret" {
		t.Fatalf("a deleted device: %q", detail)
	}
}
