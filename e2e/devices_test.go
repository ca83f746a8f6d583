package e2e

// "switchboard devices": rotate, disable, enable, delete, and the refusal
// of bad ids and weak imported secrets, against a real node.

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/switchboard-iot/switchboard/app/testsys"
	conntier "github.com/switchboard-iot/switchboard/conn-tier"
	"github.com/switchboard-iot/switchboard/device"
	"github.com/switchboard-iot/switchboard/device/protocol"
)

// dial connects as a device and returns the HTTP status of the handshake
// (101 when it upgraded), closing any session at once.
func dial(t *testing.T, node *testsys.Node, id, devSecret string) int {
	t.Helper()
	d := websocket.Dialer{TLSClientConfig: node.TLS(), Subprotocols: []string{protocol.Subprotocol}, HandshakeTimeout: 10 * time.Second}
	header := http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(id+":"+devSecret))}}
	ws, resp, err := d.DialContext(t.Context(), node.URL, header)
	if ws != nil {
		ws.Close()
	}
	if resp == nil {
		t.Fatalf("dial as %s: %v", id, err)
	}
	return resp.StatusCode
}

// graceLeft reads how long a device's previous secret still works.
func graceLeft(t *testing.T, sys *testsys.System, id string) time.Duration {
	t.Helper()
	var until time.Time
	if err := sys.Pool.QueryRow(t.Context(), `SELECT previous_secret_until FROM devices WHERE id = $1`, id).Scan(&until); err != nil {
		t.Fatal(err)
	}
	return time.Until(until)
}

func TestDevicesCommandLine(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	url := sys.DBURL
	// It dials one device many times in a row: no connect rate.
	node := sys.StartNode(t, "node-a", func(c *conntier.Config) { c.DeviceConnectRate = -1 })
	old := alone(t, "devices add", first(mustRun(t, url, "", "devices", "add", "dev-1")))

	// Rotate: the new secret alone; the old one works for the grace (24h by
	// default), then not.
	fresh := alone(t, "devices rotate", first(mustRun(t, url, "", "devices", "rotate", "dev-1")))
	if left := graceLeft(t, sys, "dev-1"); left < 23*time.Hour+59*time.Minute || left > 24*time.Hour {
		t.Fatalf("default grace: %v left, want 24h", left)
	}
	for _, s := range []string{old, fresh} {
		if got := dial(t, node, "dev-1", s); got != http.StatusSwitchingProtocols {
			t.Fatalf("within the grace: dial %d, want 101", got)
		}
	}
	if _, err := sys.Pool.Exec(t.Context(), `UPDATE devices SET previous_secret_until = now() - interval '1 second' WHERE id = 'dev-1'`); err != nil {
		t.Fatal(err)
	}
	if got := dial(t, node, "dev-1", old); got != http.StatusUnauthorized {
		t.Fatalf("the old secret after the grace: %d, want 401", got)
	}
	if got := dial(t, node, "dev-1", fresh); got != http.StatusSwitchingProtocols {
		t.Fatalf("the new secret after the grace: %d, want 101", got)
	}
	newer := alone(t, "devices rotate", first(mustRun(t, url, "", "devices", "rotate", "dev-1", "-grace", "1h")))
	if left := graceLeft(t, sys, "dev-1"); left < 59*time.Minute || left > time.Hour {
		t.Fatalf("-grace 1h: %v left", left)
	}
	latest := alone(t, "devices rotate", first(mustRun(t, url, "", "devices", "rotate", "-grace", "0", "dev-1")))
	if dial(t, node, "dev-1", newer) != http.StatusUnauthorized || dial(t, node, "dev-1", latest) != http.StatusSwitchingProtocols {
		t.Fatal("-grace 0: want the replaced secret refused at once, the new one accepted")
	}

	// Disable: the device's session is closed; the SDK reconnects, is
	// refused and stops. Enable undoes it.
	d := testsys.StartDevice(t, node, "dev-1", latest, nil)
	if _, said := mustRun(t, url, "", "devices", "disable", "dev-1"); !strings.Contains(said, "disabled") {
		t.Errorf("disable said %q", said)
	}
	stopped(t, d)
	if got := dial(t, node, "dev-1", latest); got != http.StatusUnauthorized {
		t.Fatalf("a disabled device: dial %d, want 401", got)
	}
	mustRun(t, url, "", "devices", "enable", "dev-1")
	d = testsys.StartDevice(t, node, "dev-1", latest, nil)

	// Delete: its session is closed, its commands go.
	if _, err := sys.Pool.Exec(t.Context(), `INSERT INTO commands (id, device_id, name, timeout, expires_at) VALUES (gen_random_uuid(), 'dev-1', 'x', '10s', now() + interval '1h')`); err != nil {
		t.Fatal(err)
	}
	if _, said := mustRun(t, url, "", "devices", "delete", "dev-1"); !strings.Contains(said, "1 commands") {
		t.Errorf("delete said %q", said)
	}
	stopped(t, d)
	if n := countRows(t, sys, "devices") + countRows(t, sys, "commands"); n != 0 {
		t.Fatalf("%d device and command rows after the delete", n)
	}

	// Bad input: a clear error, a non-zero exit, nothing stored or printed.
	mustRun(t, url, "", "devices", "add", "dev-2")
	devicesBefore := countRows(t, sys, "devices")
	for _, tc := range []struct {
		stdin string
		args  []string
		says  string
	}{
		{"", []string{"devices", "add", "dev:3"}, `no ":"`},
		{"imp-1\nimp:2\n", []string{"devices", "import"}, `line 2: device id "imp:2"`},
		{"imp-1," + strings.Repeat("0", 30) + "\n", []string{"devices", "import"}, "only 1 different characters; at least 8"},
		{"imp-1,changeme-changeme-changeme\n", []string{"devices", "import"}, "same 9 characters over and over"},
		{"imp-1,short\n", []string{"devices", "import"}, "at least 22"},
		{"", []string{"devices", "rotate", "nope"}, `device "nope" does not exist`},
		{"", []string{"devices", "disable", "nope"}, `device "nope" does not exist`},
		{"", []string{"devices", "enable", "nope"}, `device "nope" does not exist`},
		{"", []string{"devices", "delete", "nope"}, `device "nope" does not exist`},
		{"", []string{"devices", "rotate", "dev-2", "-grace", "-1h"}, "-grace"},
		{"", []string{"devices", "rotate", "dev:2"}, `no ":"`},
		{"", []string{"devices", "rotate"}, "usage"},
		{"", []string{"devices", "import", "extra"}, "usage"},
		{"", []string{"devices", "frobnicate", "dev-2"}, "usage"},
	} {
		stdout, stderr, err := switchboard(t, url, tc.stdin, tc.args...)
		if err == nil {
			t.Errorf("switchboard %q succeeded", tc.args)
			continue
		}
		if said := err.Error() + stderr; !strings.Contains(said, tc.says) {
			t.Errorf("switchboard %q: %v\n%s\nwant it to say %q", tc.args, err, stderr, tc.says)
		}
		if stdout != "" {
			t.Errorf("switchboard %q failed but printed %q", tc.args, stdout)
		}
	}
	if n := countRows(t, sys, "devices"); n != devicesBefore {
		t.Fatalf("bad input changed the device count by %d", n-devicesBefore)
	}
	if creds, err := sys.Store.ManyDeviceCredentials(context.Background(), []string{"dev-2"}); err != nil || creds["dev-2"].SecretHash == nil {
		t.Fatalf("dev-2 after a refused rotation: %+v, %v", creds, err)
	}
}

// stopped waits for an SDK device to stop because its credentials were
// refused.
func stopped(t *testing.T, d *testsys.Device) {
	t.Helper()
	select {
	case <-d.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the device did not stop within 10s")
	}
	if err := d.Stop(); !errors.Is(err, device.ErrUnauthorized) {
		t.Fatalf("the device stopped with %v, want %v", err, device.ErrUnauthorized)
	}
}

// "devices list" and "devices label": a table of the devices a filter
// chooses, and labels set and deleted.
func TestDevicesListCommandLine(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	url := sys.DBURL
	node := sys.StartNode(t, "node-a", nil)
	on := alone(t, "devices add", first(mustRun(t, url, "", "devices", "add", "kitchen-1")))
	mustRun(t, url, "", "devices", "add", "hall-1")
	mustRun(t, url, "", "devices", "label", "kitchen-1", "room=kitchen", "fw=2.1")
	_, stderr := mustRun(t, url, "", "devices", "label", "kitchen-1", "fw-", "beta=")
	if !strings.Contains(stderr, "beta=,room=kitchen") {
		t.Errorf("devices label said %q, want the labels beta=,room=kitchen", stderr)
	}
	testsys.StartDevice(t, node, "kitchen-1", on, nil)
	// The node writes presence after the session opens: poll.
	var out string
	testsys.Eventually(t, "kitchen-1 listed online", func() bool {
		out, _ = mustRun(t, url, "", "devices", "list", "-online")
		return strings.Contains(out, "kitchen-1")
	})
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || strings.Join(strings.Fields(lines[0]), " ") != "ID ONLINE NODE REGION LABELS" ||
		strings.Join(strings.Fields(lines[1]), " ") != "kitchen-1 true node-a test beta=,room=kitchen" {
		t.Errorf("devices list -online:\n%s", out)
	}
	for args, want := range map[string]string{
		"-online=false":        "hall-1",
		"-label room=kitchen":  "kitchen-1",
		"-label !room":         "hall-1",
		"-q HALL":              "hall-1",
		"-region test -online": "kitchen-1",
		"-node node-a":         "kitchen-1",
	} {
		out, stderr := mustRun(t, url, "", append([]string{"devices", "list"}, strings.Fields(args)...)...)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 2 || !strings.HasPrefix(lines[1], want+" ") || !strings.HasPrefix(stderr, "1 devices") {
			t.Errorf("devices list %s:\n%s%s, want %s alone", args, out, stderr, want)
		}
	}
	for _, args := range [][]string{
		{"devices", "list", "-label", "=x"},
		{"devices", "list", "-q", "a b"},
		{"devices", "label", "kitchen-1"},
		{"devices", "label", "kitchen-1", "bad key=x"},
		{"devices", "label", "kitchen-1", "-room"},
		{"devices", "label", "ghost", "a=b"},
	} {
		if _, _, err := switchboard(t, url, "", args...); err == nil {
			t.Errorf("switchboard %s succeeded, want an error", strings.Join(args, " "))
		}
	}
}
