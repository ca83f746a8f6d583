// Command fleet measures connection nodes under a fleet of idle devices,
// each node a process of the built binary on a private PostgreSQL:
//
//	go run ./scripts/fleet memory -n 15000    # a node's RSS per idle TLS WebSocket
//	go run ./scripts/fleet storm -n 15000     # kill a node holding n devices: time until all are back elsewhere
//
// The devices are gorilla clients in this process with HTTP Basic auth,
// answering pings, reconnecting with the SDK's backoff. BENCHMARKS.md
// records what these printed.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/switchboard-iot/switchboard/internal/backoff"
	"github.com/switchboard-iot/switchboard/internal/pgcluster"
)

func main() {
	if len(os.Args) < 2 || (os.Args[1] != "memory" && os.Args[1] != "storm") {
		fmt.Fprintln(os.Stderr, "usage: fleet memory|storm [-n N] [flags]; fleet memory -h for the flags")
		os.Exit(2)
	}
	mode := os.Args[1]
	fs := flag.NewFlagSet("fleet "+mode, flag.ExitOnError)
	o := options{mode: mode}
	fs.IntVar(&o.n, "n", 15000, "devices")
	fs.IntVar(&o.rate, "rate", 1000, "connects a second while the fleet comes up")
	fs.DurationVar(&o.settle, "settle", 45*time.Second, "memory: how long the fleet idles before the node's RSS is read")
	fs.StringVar(&o.bin, "bin", "", "the switchboard binary (default: go build one)")
	fs.StringVar(&o.out, "out", "", "memory: write the node's heap and goroutine profiles here; storm: a 10s CPU profile of a surviving node from the SIGKILL on")
	fs.StringVar(&o.locals, "local", "127.0.0.1,127.0.0.2", "source addresses for the devices' connections, used in turn")
	fs.StringVar(&o.nodeEnv, "node-env", "", "extra environment for the nodes, comma-separated KEY=VALUE")
	_ = fs.Parse(os.Args[2:])

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "fleet:", err)
		os.Exit(1)
	}
}

type options struct {
	mode, bin, out, locals, nodeEnv string
	n, rate                         int
	settle                          time.Duration
}

// setup is the private database, the binary and the provisioned devices.
type setup struct {
	dir, bin, dbURL string
	pool            *pgxpool.Pool
	creds           []credential
	nodes           []*node
}

func run(ctx context.Context, o options) error {
	dir, err := os.MkdirTemp("", "fleet-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o711); err != nil { // as root, postgres runs as its own user and must enter
		return err
	}
	cluster, err := pgcluster.Start(ctx, filepath.Join(dir, "pg"), pgcluster.Options{Fast: true})
	if err != nil {
		return err
	}
	defer cluster.Stop()
	s := &setup{dir: dir, bin: o.bin, dbURL: cluster.URL}
	defer func() {
		for _, n := range s.nodes {
			n.kill()
		}
	}()
	if err := s.prepare(ctx, o.n); err != nil {
		return err
	}
	defer s.pool.Close()
	if o.mode == "memory" {
		return s.memory(ctx, o)
	}
	return s.storm(ctx, o)
}

func (s *setup) prepare(ctx context.Context, n int) error {
	if s.bin == "" {
		s.bin = filepath.Join(s.dir, "switchboard")
		fmt.Println("building switchboard...")
		if out, err := exec.CommandContext(ctx, "go", "build", "-o", s.bin, ".").CombinedOutput(); err != nil {
			return fmt.Errorf("go build: %v\n%s", err, out)
		}
	}
	if _, err := s.output(ctx, "", "migrate"); err != nil {
		return err
	}
	var ids strings.Builder
	for i := range n {
		fmt.Fprintf(&ids, "fleet-%05d\n", i)
	}
	fmt.Printf("provisioning %d devices...\n", n)
	csv, err := s.output(ctx, ids.String(), "devices", "import")
	if err != nil {
		return err
	}
	for line := range strings.Lines(csv) {
		id, sec, _ := strings.Cut(strings.TrimSpace(line), ",")
		s.creds = append(s.creds, credential{id, sec})
	}
	s.pool, err = pgxpool.New(ctx, s.dbURL)
	return err
}

func (s *setup) output(ctx context.Context, stdin string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, s.bin, args...)
	cmd.Env = append(os.Environ(), "DATABASE_URL="+s.dbURL)
	cmd.Stdin = strings.NewReader(stdin)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("switchboard %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}

// node is a running "switchboard conn" process.
type node struct {
	id, addr, ops string
	cmd           *exec.Cmd
	log           *os.File
	roots         *x509.CertPool
}

var (
	servingLine = regexp.MustCompile(`msg="connection node serving" .*addr=(127\.0\.0\.1:\d+)`)
	opsLine     = regexp.MustCompile(`msg="ops serving" .*addr=(127\.0\.0\.1:\d+)`)
)

func (s *setup) startNode(ctx context.Context, id, extraEnv string) (*node, error) {
	logPath := filepath.Join(s.dir, id+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cert := filepath.Join(s.dir, id+".pem")
	cmd := exec.Command(s.bin, "conn")
	cmd.Env = append(os.Environ(), "DATABASE_URL="+s.dbURL, "NODE_ID="+id, "REGION=bench", "CONN_LISTEN=127.0.0.1:0",
		"CONN_OPS_LISTEN=127.0.0.1:0", "CONN_TLS=self-signed", "CONN_CERT_OUT="+cert)
	for kv := range strings.SplitSeq(extraEnv, ",") {
		if kv != "" {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	n := &node{id: id, cmd: cmd, log: logFile}
	s.nodes = append(s.nodes, n)
	deadline := time.Now().Add(60 * time.Second)
	for n.addr == "" || n.roots == nil {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Errorf("node %s did not start; see its log:\n%s", id, tail(logPath))
		}
		time.Sleep(100 * time.Millisecond)
		text, _ := os.ReadFile(logPath)
		if m := servingLine.FindSubmatch(text); m != nil {
			n.addr = string(m[1])
		}
		if m := opsLine.FindSubmatch(text); m != nil {
			n.ops = string(m[1])
		}
		if pem, err := os.ReadFile(cert); err == nil {
			pool := x509.NewCertPool()
			if pool.AppendCertsFromPEM(pem) {
				n.roots = pool
			}
		}
	}
	return n, nil
}

func (n *node) url() string { return "wss://" + n.addr + "/v1/connect" }

func (n *node) kill() {
	if n.cmd.ProcessState == nil {
		_ = n.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = n.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			_ = n.cmd.Process.Kill()
			<-done
		}
	}
	n.log.Close()
}

// rss is the node's resident set (VmRSS) in KiB.
func (n *node) rss() (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", n.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, errors.New("no VmRSS")
}

// fetch saves one of the node's debug endpoints to path (and returns it).
func (n *node) fetch(path, to string) (string, error) {
	if n.ops == "" {
		return "", errors.New("the node has no ops listener")
	}
	resp, err := http.Get("http://" + n.ops + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if to != "" {
		err = os.WriteFile(to, body, 0o644)
	}
	return string(body), err
}

func (s *setup) newFleet(o options, roots *x509.CertPool, urls ...string) *fleet {
	f := &fleet{
		urls:    newTargets(urls),
		tls:     &tls.Config{RootCAs: roots},
		backoff: backoff.Backoff{Min: 500 * time.Millisecond, Max: 30 * time.Second}, // the SDK's
	}
	for a := range strings.SplitSeq(o.locals, ",") {
		if ip := net.ParseIP(strings.TrimSpace(a)); ip != nil {
			f.locals = append(f.locals, ip)
		}
	}
	return f
}

// livePresence counts presence_live rows on the given nodes.
func (s *setup) livePresence(ctx context.Context, nodes ...string) int {
	var n int
	_ = s.pool.QueryRow(ctx, `SELECT count(*) FROM presence_live WHERE node_id = ANY($1)`, nodes).Scan(&n)
	return n
}

// waitFor polls cond every 100ms until it holds, printing progress every
// second; it fails after limit.
func waitFor(ctx context.Context, what string, limit time.Duration, progress func() string, cond func() bool) (time.Duration, error) {
	start := time.Now()
	last := start
	for !cond() {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		if time.Since(start) > limit {
			return 0, fmt.Errorf("%s: not within %v (%s)", what, limit, progress())
		}
		if time.Since(last) >= time.Second {
			last = time.Now()
			fmt.Printf("  %5.1fs  %s\n", time.Since(start).Seconds(), progress())
		}
		time.Sleep(100 * time.Millisecond)
	}
	return time.Since(start), nil
}

func (f *fleet) status() string {
	var closes []string
	f.closes.Range(func(k, v any) bool {
		closes = append(closes, fmt.Sprintf("%v:%d", k, v.(interface{ Load() int64 }).Load()))
		return true
	})
	return fmt.Sprintf("connected=%d dials=%d refused=%d failed=%d closes=%v",
		f.connected.Load(), f.dials.Load(), f.refused.Load(), f.failed.Load(), closes)
}

func (s *setup) memory(ctx context.Context, o options) error {
	n, err := s.startNode(ctx, "mem-a", o.nodeEnv)
	if err != nil {
		return err
	}
	time.Sleep(5 * time.Second) // the node's start-up allocations settle
	before, err := n.rss()
	if err != nil {
		return err
	}
	fmt.Printf("node %s (pid %d) idle: VmRSS %d KiB\n", n.id, n.cmd.Process.Pid, before)

	f := s.newFleet(o, n.roots, n.url())
	fleetCtx, stopFleet := context.WithCancel(ctx)
	wg := f.start(fleetCtx, s.creds, o.rate)
	defer func() { stopFleet(); wg.Wait() }()
	took, err := waitFor(ctx, "the fleet connected", 10*time.Minute, f.status, func() bool {
		return f.connected.Load() == int64(len(s.creds)) && s.livePresence(ctx, n.id) == len(s.creds)
	})
	if err != nil {
		return err
	}
	fmt.Printf("%d sessions up in %.1fs; idling %v\n", len(s.creds), took.Seconds(), o.settle)
	var peak, after int64
	for end := time.Now().Add(o.settle); time.Now().Before(end); {
		if !sleepCtx(ctx, 5*time.Second) {
			return ctx.Err()
		}
		if after, err = n.rss(); err != nil {
			return err
		}
		peak = max(peak, after)
		fmt.Printf("  VmRSS %d KiB  %s\n", after, f.status())
	}
	if f.connected.Load() != int64(len(s.creds)) {
		return fmt.Errorf("sessions dropped while idle: %s", f.status())
	}
	if o.out != "" {
		_ = os.MkdirAll(o.out, 0o755)
		for _, p := range []struct{ path, file string }{
			{"/debug/pprof/heap?gc=1", "heap.pprof"},
			{"/debug/pprof/goroutine", "goroutine.pprof"},
			{"/debug/pprof/goroutine?debug=1", "goroutine.txt"},
			{"/debug/pprof/heap?debug=1", "heap.txt"}, // ends with runtime.MemStats: stacks, heap, released
		} {
			if _, err := n.fetch(p.path, filepath.Join(o.out, p.file)); err != nil {
				fmt.Println("  profile:", err)
			}
		}
		fmt.Println("profiles in", o.out)
	}
	goroutines := "?"
	if text, err := n.fetch("/debug/pprof/goroutine?debug=1", ""); err == nil {
		goroutines, _, _ = strings.Cut(strings.TrimPrefix(text, "goroutine profile: total "), "\n")
	}
	per := float64(after-before) / float64(len(s.creds))
	fmt.Printf("\nsessions %d  VmRSS idle %d KiB  with sessions %d KiB (peak %d)  goroutines %s\n", len(s.creds), before, after, peak, goroutines)
	fmt.Printf("per session: %.1f KiB (peak %.1f KiB)\n", per, float64(peak-before)/float64(len(s.creds)))
	return nil
}

func (s *setup) storm(ctx context.Context, o options) error {
	var nodes []*node
	for _, id := range []string{"storm-a", "storm-b", "storm-c"} {
		n, err := s.startNode(ctx, id, o.nodeEnv)
		if err != nil {
			return err
		}
		nodes = append(nodes, n)
	}
	a := nodes[0]
	f := s.newFleet(o, a.roots, a.url()) // the nodes share one self-signed certificate
	fleetCtx, stopFleet := context.WithCancel(ctx)
	wg := f.start(fleetCtx, s.creds, o.rate)
	defer func() { stopFleet(); wg.Wait() }()
	if _, err := waitFor(ctx, "the fleet on "+a.id, 10*time.Minute, f.status, func() bool {
		return s.livePresence(ctx, a.id) == len(s.creds)
	}); err != nil {
		return err
	}
	fmt.Printf("%d devices on %s; SIGKILL it\n", len(s.creds), a.id)
	f.urls.set([]string{a.url(), nodes[1].url(), nodes[2].url()})
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		return err
	}
	if o.out != "" {
		_ = os.MkdirAll(o.out, 0o755)
		go func() {
			if _, err := nodes[1].fetch("/debug/pprof/profile?seconds=10", filepath.Join(o.out, "cpu.pprof")); err != nil {
				fmt.Println("  profile:", err)
			}
		}()
	}
	others := []string{nodes[1].id, nodes[2].id}
	var mu sync.Mutex
	var firstAll time.Duration
	progress := func() string {
		return fmt.Sprintf("presence_live on %s: %d   %s", strings.Join(others, "+"), s.livePresence(ctx, others...), f.status())
	}
	took, err := waitFor(ctx, "the fleet back on the other nodes", 5*time.Minute, progress, func() bool {
		return s.livePresence(ctx, others...) == len(s.creds)
	})
	if err != nil {
		return err
	}
	mu.Lock()
	firstAll = took
	mu.Unlock()
	b, c := s.livePresence(ctx, nodes[1].id), s.livePresence(ctx, nodes[2].id)
	fmt.Printf("\nall %d devices back in presence_live %.1fs after the SIGKILL (%s %d, %s %d)\n", len(s.creds), firstAll.Seconds(), nodes[1].id, b, nodes[2].id, c)
	for _, n := range nodes[1:] {
		if text, err := n.fetch("/metrics", ""); err == nil {
			for line := range strings.Lines(text) {
				if strings.HasPrefix(line, "switchboard_conn_connects_total") {
					fmt.Print("  ", n.id, " ", line)
				}
			}
		}
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}
