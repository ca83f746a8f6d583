package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-iot/switchboard/app/cli"
	"github.com/switchboard-iot/switchboard/app/sim/loadgen"
	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/db/dbtest"
	"github.com/switchboard-iot/switchboard/edge"
)

func TestMain(m *testing.M) {
	// The load generator starts its worker processes as "<this binary>
	// loadgen -worker": the test binary, here, which then is one.
	if len(os.Args) > 1 && os.Args[1] == "loadgen" {
		if err := cli.Run(context.Background(), os.Args[1:], os.Getenv, cli.IO{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}); err != nil {
			fmt.Fprintln(os.Stderr, "worker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(dbtest.Main(m))
}

// loadgenRun runs "switchboard loadgen -json args..." against a fresh node
// and edge, provisioning the devices itself, and returns its summary.
func loadgenRun(t *testing.T, args ...string) loadgen.Summary {
	t.Helper()
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", nil)
	ed := sys.StartEdge(t, "edge-a", func(c *edge.Config) { c.KeyRate = -1 })
	args = append([]string{"loadgen", "-json", "-database-url", sys.DBURL, "-nodes", node.URL, "-insecure",
		"-node-metrics", node.Ops + "/metrics",
		"-credentials", filepath.Join(t.TempDir(), "devices.csv"), "-provision", "-answer", "-edges", ed.URL,
		"-warmup", "300ms", "-duration", "2s", "-wait", "5s"}, args...)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, table, err := runLoadgen(ctx, args)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("summary:\n%s", table)
	return s
}

// runLoadgen runs "switchboard args..." (a loadgen with -json) until it
// ends, and returns its summary and the table it printed.
func runLoadgen(ctx context.Context, args []string) (loadgen.Summary, string, error) {
	var stdout, stderr bytes.Buffer
	var s loadgen.Summary
	if err := cli.Run(ctx, args, func(string) string { return "" }, cli.IO{Stdin: strings.NewReader(""), Stdout: &stdout, Stderr: &stderr}); err != nil {
		return s, "", fmt.Errorf("loadgen: %v\n%s", err, stderr.String())
	}
	if err := json.Unmarshal(stdout.Bytes(), &s); err != nil {
		return s, "", fmt.Errorf("summary JSON: %v\n%s", err, stdout.String())
	}
	return s, stderr.String(), nil
}

// checkSummary asserts a clean run of n answering devices.
func checkSummary(t *testing.T, s loadgen.Summary, n int) {
	t.Helper()
	if d := s.Devices; d.Devices != n || d.Connected != int64(n) || d.Open != int64(n) || d.Failed != 0 || d.Disconnects != 0 {
		t.Errorf("devices: %+v, want %d connected once each, no failure", d, n)
	}
	c := s.Commands
	switch {
	case c == nil:
		t.Fatal("no command summary")
	case c.Succeeded == 0 || c.Failed != 0 || c.Attempted != c.Succeeded:
		t.Errorf("commands: %d attempted, %d succeeded, failed %v", c.Attempted, c.Succeeded, c.FailedBy)
	case c.Rate <= 0 || c.Seconds <= 0 || c.SuccessRatio != 1:
		t.Errorf("commands: rate %v over %v s, success ratio %v", c.Rate, c.Seconds, c.SuccessRatio)
	case c.Latency.P50 <= 0 || c.Latency.P99 < c.Latency.P50 || c.Latency.Max < c.Latency.P999:
		t.Errorf("latency: %+v", c.Latency)
	}
	if s.Devices.Answered < c.Succeeded {
		t.Errorf("devices answered %d commands, fewer than the %d that succeeded", s.Devices.Answered, c.Succeeded)
	}
	nodes := s.Nodes
	if nodes == nil || len(nodes.Processes) != 1 || nodes.Processes[0].Err != "" {
		t.Fatalf("node metrics: %+v", nodes)
	}
	if nodes.Sessions != int64(n) || nodes.RSSBytes <= 0 || nodes.RSSPerSession != nodes.RSSBytes/int64(n) {
		t.Errorf("node metrics: %+v, want %d sessions and an RSS", nodes, n)
	}
}

func TestLoadgenOpenLoop(t *testing.T) {
	t.Parallel()
	s := loadgenRun(t, "-devices", "20", "-rate", "100/s", "-max-inflight", "100")
	checkSummary(t, s, 20)
	if s.Processes != 0 {
		t.Errorf("%d worker processes for 20 devices", s.Processes)
	}
	if c := s.Commands; c != nil && (c.Mode != "open" || c.TargetRate != 100) {
		t.Errorf("mode %q at %v/s, want open at 100/s", c.Mode, c.TargetRate)
	}
}

// TestLoadgenWorkers holds the devices in worker processes (copies of the
// test binary), as past one process's open-files limit.
func TestLoadgenWorkers(t *testing.T) {
	t.Parallel()
	s := loadgenRun(t, "-devices", "25", "-per-process", "10", "-concurrency", "4")
	checkSummary(t, s, 25)
	if s.Processes != 3 {
		t.Errorf("%d worker processes for 25 devices, 10 a process; want 3", s.Processes)
	}
	if c := s.Commands; c != nil && (c.Mode != "closed" || c.Concurrency != 4) {
		t.Errorf("mode %q with %d clients, want closed with 4", c.Mode, c.Concurrency)
	}
}

// With -failover, devices whose node goes away dial the failover nodes,
// as a load balancer in front of the nodes would send them.
func TestLoadgenFailover(t *testing.T) {
	t.Parallel()
	const n = 20
	sys := testsys.New(t)
	a, b := sys.StartNode(t, "node-a", nil), sys.StartNode(t, "node-b", nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	type result struct {
		s   loadgen.Summary
		err error
	}
	done := make(chan result, 1)
	args := []string{"loadgen", "-json", "-quiet", "-database-url", sys.DBURL, "-nodes", a.URL, "-failover", b.URL,
		"-insecure", "-node-metrics", "-", "-credentials", filepath.Join(t.TempDir(), "devices.csv"), "-provision",
		"-devices", fmt.Sprint(n), "-duration", "0"}
	go func() {
		s, _, err := runLoadgen(ctx, args)
		done <- result{s, err}
	}()
	present := func(node string) func() bool {
		return func() bool {
			var c int
			_ = sys.Pool.QueryRow(ctx, `SELECT count(*) FROM presence_live WHERE node_id = $1`, node).Scan(&c)
			return c == n
		}
	}
	testsys.EventuallyWithin(t, 30*time.Second, "the devices on node-a", present("node-a"))
	if err := a.Stop(); err != nil {
		t.Fatal(err)
	}
	testsys.EventuallyWithin(t, 30*time.Second, "the devices on node-b", present("node-b"))
	cancel() // loadgen sums up what it did
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if d := r.s.Devices; d.Connected < 2*n || d.Disconnects < n {
		t.Errorf("devices: %+v, want each connected twice, once to each node", d)
	}
}
