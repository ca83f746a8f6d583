package cli_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-iot/switchboard/app/cli"
	"github.com/switchboard-iot/switchboard/app/testsys"
)

// The edge's -device-queue flag (and EDGE_DEVICE_QUEUE, which the flag
// overrides) reaches the edge: a real `switchboard edge` refuses a
// device's command past the flag's cap, 429 device-queue-full.
func TestEdgeDeviceQueueFlag(t *testing.T) {
	sys := testsys.New(t)
	sys.AddDevice(t, "dev-1")
	key := sys.APIKey(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // the edge listens on it itself
	env := map[string]string{"DATABASE_URL": sys.DBURL, "EDGE_DEVICE_QUEUE": "5"}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- cli.Run(ctx, []string{"edge", "-listen", addr, "-id", "edge-flag", "-key-rate", "-1", "-device-queue", "2"},
			func(k string) string { return env[k] }, cli.IO{Stdin: strings.NewReader(""), Stdout: io.Discard, Stderr: io.Discard})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("the edge: %v", err)
		}
	})
	hc := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
	t.Cleanup(hc.CloseIdleConnections)
	testsys.Eventually(t, "the edge to listen", func() bool {
		resp, err := hc.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil && resp.StatusCode == http.StatusOK
	})
	send := func() (*http.Response, string) {
		req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/v1/devices/dev-1/commands", strings.NewReader(`{"name":"x"}`))
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	for range 2 {
		if resp, b := send(); resp.StatusCode != http.StatusAccepted {
			t.Fatalf("a command within the cap: %d %s", resp.StatusCode, b)
		}
	}
	resp, b := send()
	if resp.StatusCode != http.StatusTooManyRequests || !strings.Contains(b, "device-queue-full") || resp.Header.Get("Retry-After") != "30" {
		t.Errorf("a third command under -device-queue 2 (EDGE_DEVICE_QUEUE 5): %d Retry-After %q %s, want 429 device-queue-full",
			resp.StatusCode, resp.Header.Get("Retry-After"), b)
	}
}
