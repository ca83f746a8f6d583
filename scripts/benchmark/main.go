// Command benchmark reproduces Switchboard's performance targets from
// scratch, on this machine: a private PostgreSQL, edges and connection
// nodes as processes of the built binary, and `switchboard loadgen` as the
// devices and the HTTP clients. scripts/bench runs it; it prints a table and
// rewrites the measured section of BENCHMARKS.md.
//
//	go run ./scripts/benchmark -bin /tmp/switchboard [-quick] [-only memory,throughput,scale,storm,job,state,webhooks]
//
// Every scenario starts its own processes and stops them; the database is
// shared, and so are the provisioned devices.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/switchboard-iot/switchboard/app/sim/loadgen"
	"github.com/switchboard-iot/switchboard/internal/certs"
	"github.com/switchboard-iot/switchboard/internal/pgcluster"
	"github.com/switchboard-iot/switchboard/internal/testkit/freeport"
)

func main() {
	var o options
	flag.StringVar(&o.bin, "bin", "", "the switchboard binary (required)")
	flag.StringVar(&o.loadgenBin, "loadgen-bin", "", "the binary whose loadgen runs (default -bin): to measure an older -bin, which has none")
	flag.BoolVar(&o.quick, "quick", false, "a smoke run: small fleets, short runs; BENCHMARKS.md is left alone")
	flag.StringVar(&o.only, "only", "", "comma-separated scenarios to run (default all): "+strings.Join(scenarioNames(), ", "))
	flag.StringVar(&o.write, "write", "BENCHMARKS.md", "the file whose measured section is rewritten, after a run of every scenario (\"\": none)")
	flag.StringVar(&o.profiles, "profiles", "", "memory: save the node's heap and goroutine profiles in this folder")
	flag.Parse()
	if o.bin == "" {
		fmt.Fprintln(os.Stderr, "benchmark: -bin is required (scripts/bench builds it)")
		os.Exit(2)
	}
	if o.loadgenBin == "" {
		o.loadgenBin = o.bin
	}
	if o.quick {
		o.write = ""
		quickRun = true
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "benchmark:", err)
		os.Exit(1)
	}
}

// quickRun judges nothing: its fleets are too small for the targets.
var quickRun bool

type options struct {
	bin, only, write, profiles, loadgenBin string
	quick                                  bool
}

// sizes are a run's fleets and durations: the targets', or -quick's.
type sizes struct {
	memoryDevices     int
	throughputDevices int
	scaleDevices      int
	scaleNodes        int
	stormDevices      int
	run, warmup       time.Duration
	rates             []int // open-loop rates tried, commands a second
	closedClients     int   // closed loop: clients sending as fast as answered
	jobDevices        int   // the fleet job's targets
	webhookRate       int   // commands a second whose completions are delivered
	backlog           int   // deliveries piled up for the drain (commands sent at 500/s, or 200/s quick)
}

func sizesFor(quick bool) sizes {
	if quick {
		return sizes{memoryDevices: 300, throughputDevices: 100, scaleDevices: 600, scaleNodes: 3, stormDevices: 300,
			run: 3 * time.Second, warmup: time.Second, rates: []int{200}, closedClients: 32, jobDevices: 200,
			webhookRate: 50, backlog: 400}
	}
	return sizes{memoryDevices: 15000, throughputDevices: 2000, scaleDevices: 90000, scaleNodes: 6, stormDevices: 15000,
		run: 30 * time.Second, warmup: 5 * time.Second, rates: []int{1000, 2000, 3000}, closedClients: 256, jobDevices: 10000,
		webhookRate: 100, backlog: 5000}
}

// A scenario measures one target and adds its rows.
type scenario struct {
	name string
	run  func(b *bench, ctx context.Context) error
}

var scenarios = []scenario{
	{"memory", (*bench).memory},
	{"throughput", (*bench).throughput},
	{"scale", (*bench).scale},
	{"storm", (*bench).storm},
	{"job", (*bench).job},
	{"state", (*bench).state},
	{"webhooks", (*bench).webhooks},
}

func scenarioNames() []string {
	var names []string
	for _, s := range scenarios {
		names = append(names, s.name)
	}
	return names
}

// row is one line of the result table.
type row struct {
	what, target, measured, verdict string
}

type bench struct {
	o     options
	sz    sizes
	dir   string
	dbURL string
	pool  *pgxpool.Pool
	pgPID int // the postmaster: its children are PostgreSQL's CPU
	// idlePerSecond is PostgreSQL's CPU a second without load (pgIdle).
	idlePerSecond time.Duration
	creds         string
	rows          []row
	notes         []string // details printed under the table
}

func run(ctx context.Context, o options) error {
	only := map[string]bool{}
	for s := range strings.SplitSeq(o.only, ",") {
		if s = strings.TrimSpace(s); s != "" {
			if !slices.Contains(scenarioNames(), s) {
				return fmt.Errorf("-only: no scenario %q (have %s)", s, strings.Join(scenarioNames(), ", "))
			}
			only[s] = true
		}
	}
	dir, err := os.MkdirTemp("", "switchboard-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o711); err != nil { // as root, postgres runs as its own user and must enter
		return err
	}
	// The tests' settings (no fsync): the figures are the system's, not the
	// disk's. MaxConnections: six nodes' and two edges' pools, and room.
	// pg_stat_statements counts the statements per command.
	cluster, err := pgcluster.Start(ctx, filepath.Join(dir, "pg"), pgcluster.Options{Fast: true, MaxConnections: 400,
		Settings: []string{"shared_preload_libraries='pg_stat_statements'"}})
	if err != nil {
		return err
	}
	defer cluster.Stop()
	b := &bench{o: o, sz: sizesFor(o.quick), dir: dir, dbURL: cluster.URL, creds: filepath.Join(dir, "devices.csv")}
	if b.pgPID, err = postmasterPID(filepath.Join(dir, "pg")); err != nil {
		return err
	}
	if b.pool, err = pgxpool.New(ctx, cluster.URL); err != nil {
		return err
	}
	defer b.pool.Close()
	if _, err := b.output(ctx, "migrate"); err != nil {
		return err
	}
	if _, err := b.pool.Exec(ctx, `CREATE EXTENSION pg_stat_statements`); err != nil {
		return err
	}
	// A scenario that fails is a row of the table too, and the run goes on
	// to the others; the exit status says it failed.
	started := time.Now()
	var failed []error
	for _, s := range scenarios {
		if len(only) > 0 && !only[s.name] {
			continue
		}
		fmt.Printf("\n== %s\n", s.name)
		if err := s.run(b, ctx); err != nil {
			failed = append(failed, fmt.Errorf("%s: %w", s.name, err))
			b.rows = append(b.rows, row{what: s.name, measured: "failed: " + strings.ReplaceAll(err.Error(), "\n", " "), verdict: "NOT met"})
		}
	}
	table := b.table(time.Since(started))
	fmt.Print("\n" + table)
	// The file's table is of every scenario: one run of some of them
	// would take the others' rows out.
	if o.write != "" && len(only) == 0 {
		if err := rewrite(o.write, table); err != nil {
			return err
		}
		fmt.Println("\nrewrote the measured section of", o.write)
	}
	return errors.Join(failed...)
}

// ---- processes

// proc is a running edge or node, on addresses chosen before it started
// (freeport): its log is for people, not for finding it.
type proc struct {
	id, addr, ops string // addr: its device or API port; ops: a node's ops listener, if it serves one
	cmd           *exec.Cmd
	logPath       string
	done          chan struct{}
}

// start runs the binary and waits until it answers readyz with 200.
func (b *bench) start(ctx context.Context, id, addr, readyz string, args []string, env ...string) (*proc, error) {
	p := &proc{id: id, addr: addr, logPath: filepath.Join(b.dir, id+".log"), done: make(chan struct{})}
	logFile, err := os.Create(p.logPath)
	if err != nil {
		return nil, err
	}
	p.cmd = exec.Command(b.o.bin, args...)
	p.cmd.Env = append(append(os.Environ(), "DATABASE_URL="+b.dbURL, "LOG_LEVEL=INFO"), env...)
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	if err := p.cmd.Start(); err != nil {
		logFile.Close()
		return nil, err
	}
	go func() { _ = p.cmd.Wait(); logFile.Close(); close(p.done) }()
	err = poll(ctx, 60*time.Second, func() bool { return p.exited() || b.answers(ctx, readyz) })
	if err == nil && p.exited() {
		err = errors.New("it exited")
	}
	if err != nil {
		p.stop()
		return nil, fmt.Errorf("%s did not start: %w; its log:\n%s", id, err, tail(p.logPath))
	}
	return p, nil
}

// answers reports whether GET url answers 200 now. An https URL is a
// node's, whose certificate the nodes write before they listen.
func (b *bench) answers(ctx context.Context, url string) bool {
	tr := &http.Transport{DisableKeepAlives: true}
	if strings.HasPrefix(url, "https:") {
		var err error
		if tr.TLSClientConfig, err = certs.Client(b.ca(), false); err != nil {
			return false
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// startNode starts a connection node with the self-signed certificate the
// nodes share (through the database), written to cert.pem.
func (b *bench) startNode(ctx context.Context, id string) (*proc, error) {
	addr, err := freeport.Loopback()
	if err != nil {
		return nil, err
	}
	return b.startNodeAt(ctx, id, addr)
}

// startNodeAt starts a node on addr. It is ready once its device port's
// /readyz says so: every version of the binary serves it there.
func (b *bench) startNodeAt(ctx context.Context, id, addr string) (*proc, error) {
	ops, err := freeport.Loopback()
	if err != nil {
		return nil, err
	}
	p, err := b.start(ctx, id, addr, "https://"+addr+"/readyz", []string{"conn"}, "NODE_ID="+id, "REGION=bench", "CONN_LISTEN="+addr,
		"CONN_OPS_LISTEN="+ops, "CONN_TLS=self-signed", "CONN_CERT_OUT="+b.ca())
	// A binary from before CONN_OPS_LISTEN serves none (and /metrics on
	// its device port); later ones serve /metrics on the ops port only.
	if err == nil && b.answers(ctx, "http://"+ops+"/healthz") {
		p.ops = ops
	}
	return p, err
}

func (b *bench) startEdge(ctx context.Context, id string, env ...string) (*proc, error) {
	addr, err := freeport.Loopback()
	if err != nil {
		return nil, err
	}
	// The load generator's one API key sends every command: no per-key limit.
	return b.start(ctx, id, addr, "http://"+addr+"/readyz", []string{"edge"}, append([]string{"EDGE_ID=" + id, "EDGE_LISTEN=" + addr, "EDGE_KEY_RATE=-1"}, env...)...)
}

func (b *bench) ca() string { return filepath.Join(b.dir, "cert.pem") }

func (p *proc) url() string { return "wss://" + p.addr + "/v1/connect" }
func (p *proc) metricsURL() string {
	if p.ops == "" {
		return "https://" + p.addr + "/metrics"
	}
	return "http://" + p.ops + "/metrics"
}

// stop ends the process with SIGTERM (SIGKILL after a minute).
func (p *proc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(time.Minute):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

func stopAll(ps []*proc) {
	for _, p := range ps {
		p.stop()
	}
}

// output runs a switchboard command to its end.
func (b *bench) output(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, b.o.bin, args...)
	cmd.Env = append(os.Environ(), "DATABASE_URL="+b.dbURL)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("switchboard %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return out, nil
}

// loadgen is a running `switchboard loadgen -json`.
type loadgenRun struct {
	cmd    *exec.Cmd
	stdout bytes.Buffer
	stderr bytes.Buffer
	done   chan error
}

// loadgen starts the load generator over the shared credentials file,
// provisioning devices as needed; wait returns its summary.
func (b *bench) loadgen(ctx context.Context, devices int, args ...string) (*loadgenRun, error) {
	all := append([]string{"loadgen", "-json", "-quiet", "-credentials", b.creds, "-provision", "-devices", strconv.Itoa(devices),
		"-id-prefix", "bench-", "-ca", b.ca()}, args...)
	r := &loadgenRun{cmd: exec.CommandContext(ctx, b.o.loadgenBin, all...), done: make(chan error, 1)}
	r.cmd.Env = append(os.Environ(), "DATABASE_URL="+b.dbURL)
	r.cmd.Stdout, r.cmd.Stderr = &r.stdout, &r.stderr
	fmt.Printf("  switchboard %s\n", strings.Join(all, " "))
	if err := r.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { r.done <- r.cmd.Wait() }()
	return r, nil
}

func (r *loadgenRun) wait() (loadgen.Summary, error) {
	var s loadgen.Summary
	if err := <-r.done; err != nil {
		return s, fmt.Errorf("loadgen: %v\n%s", err, r.stderr.String())
	}
	if err := json.Unmarshal(r.stdout.Bytes(), &s); err != nil {
		return s, fmt.Errorf("loadgen's summary: %v\n%s", err, r.stdout.String())
	}
	fmt.Print(indent(r.stderr.String())) // the table
	return s, nil
}

// ---- measuring PostgreSQL

// pgUsage is what PostgreSQL spent over a scenario.
type pgUsage struct {
	cpu        time.Duration // of every server process
	walBytes   int64
	wall       time.Duration
	statements int64 // the system's, not the benchmark's own
	commits    int64
	commands   int64 // sent while measured, when commands were
}

type pgMark struct {
	ticks   int64
	lsn     string
	at      time.Time
	commits int64
}

// ownQueries are the benchmark's queries, left out of the counts.
const ownQueries = `query NOT LIKE '%pg_stat_statements%' AND query NOT LIKE '%presence_live%' AND query NOT LIKE '%pg_wal_lsn%' AND query NOT LIKE '%pg_stat_database%'`

// pgIdle measures what PostgreSQL spends a second with the processes
// started but no load (leases, sweeps, listeners' pings): pgSince takes it
// off, so that what is left is the load's.
func (b *bench) pgIdle(ctx context.Context) {
	m := b.pgMark(ctx)
	select {
	case <-ctx.Done():
	case <-time.After(3 * time.Second):
	}
	idle := time.Duration(cpuTicks(b.pgPID)-m.ticks) * time.Second / clockTicks
	b.idlePerSecond = time.Duration(float64(idle) / time.Since(m.at).Seconds())
}

func (b *bench) pgMark(ctx context.Context) pgMark {
	m := pgMark{ticks: cpuTicks(b.pgPID), at: time.Now()}
	_, _ = b.pool.Exec(ctx, `SELECT pg_stat_statements_reset()`)
	_ = b.pool.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text, (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database())`).Scan(&m.lsn, &m.commits)
	return m
}

func (b *bench) pgSince(ctx context.Context, m pgMark) pgUsage {
	u := pgUsage{cpu: time.Duration(cpuTicks(b.pgPID)-m.ticks) * time.Second / clockTicks, wall: time.Since(m.at)}
	u.cpu = max(0, u.cpu-time.Duration(float64(b.idlePerSecond)*u.wall.Seconds()))
	_ = b.pool.QueryRow(ctx, `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::bigint,
		(SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()) - $2`, m.lsn, m.commits).Scan(&u.walBytes, &u.commits)
	_ = b.pool.QueryRow(ctx, `SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements WHERE `+ownQueries).Scan(&u.statements)
	// The log shows which statements those were.
	// (exec ms counts lock waits too; WAL is each statement's own.)
	rows, err := b.pool.Query(ctx, `SELECT calls, rows, total_exec_time, wal_bytes::bigint, left(regexp_replace(query, '\s+', ' ', 'g'), 90)
		FROM pg_stat_statements WHERE `+ownQueries+` ORDER BY total_exec_time DESC LIMIT 8`)
	if err == nil {
		fmt.Println("    calls      rows   exec ms    WAL kB  statement")
		for rows.Next() {
			var calls, nrows, wal int64
			var ms float64
			var query string
			if rows.Scan(&calls, &nrows, &ms, &wal, &query) == nil {
				fmt.Printf("  %7d  %8d  %8.0f  %8d  %s\n", calls, nrows, ms, wal/1024, query)
			}
		}
		rows.Close()
	}
	return u
}

func ticks(t int64) time.Duration { return time.Duration(t) * time.Second / clockTicks }

// clockTicks is USER_HZ, the unit of /proc's CPU times (100 on Linux).
const clockTicks = 100

// cpuTicks is the CPU time of the postmaster, its live children and the
// children it reaped (backends come and go).
func cpuTicks(pid int) int64 {
	total := procTicks(pid, true)
	children, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	for f := range strings.FieldsSeq(string(children)) {
		if child, err := strconv.Atoi(f); err == nil {
			total += procTicks(child, false)
		}
	}
	return total
}

func procTicks(pid int, reaped bool) int64 {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after the command name, which is in parentheses.
	_, rest, _ := strings.Cut(string(stat), ") ")
	f := strings.Fields(rest)
	sum := func(idx ...int) (t int64) {
		for _, i := range idx {
			v, _ := strconv.ParseInt(f[i], 10, 64)
			t += v
		}
		return t
	}
	if reaped {
		return sum(11, 12, 13, 14) // utime, stime, cutime, cstime
	}
	return sum(11, 12)
}

func postmasterPID(clusterDir string) (int, error) {
	b, err := os.ReadFile(filepath.Join(clusterDir, "data", "postmaster.pid"))
	if err != nil {
		return 0, err
	}
	first, _, _ := strings.Cut(string(b), "\n")
	return strconv.Atoi(strings.TrimSpace(first))
}

// livePresence counts presence_live rows, on these nodes when given.
func (b *bench) livePresence(ctx context.Context, nodes ...*proc) int {
	var n int
	if len(nodes) == 0 {
		_ = b.pool.QueryRow(ctx, `SELECT count(*) FROM presence_live`).Scan(&n)
		return n
	}
	var ids []string
	for _, p := range nodes {
		ids = append(ids, p.id)
	}
	_ = b.pool.QueryRow(ctx, `SELECT count(*) FROM presence_live WHERE node_id = ANY($1)`, ids).Scan(&n)
	return n
}

// ---- scenarios

// memory: one node holds the idle fleet; its RSS per session.
func (b *bench) memory(ctx context.Context) error {
	n := b.sz.memoryDevices
	node, err := b.startNode(ctx, "mem-a")
	if err != nil {
		return err
	}
	defer node.stop()
	b.pgIdle(ctx)
	mark := b.pgMark(ctx)
	lg, err := b.loadgen(ctx, n, "-nodes", node.url(), "-node-metrics", node.metricsURL(), "-ramp", "1000/s",
		"-duration", (2 * b.sz.run).String()) // idle long enough for the ramp's garbage to go back to the system
	if err != nil {
		return err
	}
	// The connects' cost to PostgreSQL: from the start to all present.
	var connects pgUsage
	var upIn time.Duration
	if err := poll(ctx, 10*time.Minute, func() bool { return b.livePresence(ctx, node) == n }); err == nil {
		connects, upIn = b.pgSince(ctx, mark), time.Since(mark.at)
	}
	if b.o.profiles != "" {
		b.saveProfiles(node)
	}
	s, err := lg.wait()
	if err != nil {
		return err
	}
	m := s.Nodes
	if m == nil || m.Sessions != int64(n) {
		return fmt.Errorf("the node's metrics: %+v, want %d sessions", m, n)
	}
	// What a connection costs is what the node's RSS grew by per session
	// (the node's own baseline, some 20 MiB, left out); the RSS over the
	// sessions is shown too.
	per := float64(m.AddedPerSession) / 1024
	b.rows = append(b.rows, row{
		what:     fmt.Sprintf("node RSS per idle TLS WebSocket, %d on one node", m.Sessions),
		target:   "≤ 20 KiB (aim 10)",
		measured: fmt.Sprintf("%.1f KiB added per session (RSS %.0f MiB: %.1f KiB per session, baseline included)", per, float64(m.RSSBytes)/(1<<20), float64(m.RSSPerSession)/1024),
		verdict:  verdict(per <= 20, per <= 10),
	})
	if upIn > 0 {
		b.notes = append(b.notes, fmt.Sprintf("connects: %d sessions present in %.1f s; PostgreSQL spent %.0f µs of CPU and %d bytes of WAL per connect (%.0f connects/s per PostgreSQL core)",
			n, upIn.Seconds(), perOp(connects.cpu, n), connects.walBytes/int64(n), float64(n)/connects.cpu.Seconds()))
	}
	return nil
}

func (b *bench) saveProfiles(node *proc) {
	for path, file := range map[string]string{
		"/debug/pprof/heap?gc=1": "heap.pprof", "/debug/pprof/goroutine": "goroutine.pprof",
		"/debug/pprof/heap?debug=1": "heap.txt", "/debug/pprof/goroutine?debug=1": "goroutine.txt",
	} {
		b.saveProfile(node, path, file)
	}
}

// saveProfile saves what a node's ops listener serves at path in the
// -profiles folder.
func (b *bench) saveProfile(node *proc, path, file string) {
	_ = os.MkdirAll(b.o.profiles, 0o755)
	resp, err := http.Get("http://" + node.ops + path)
	if err != nil {
		fmt.Println("  profile:", err)
		return
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if err := os.WriteFile(filepath.Join(b.o.profiles, file), body, 0o644); err != nil {
		fmt.Println("  profile:", err)
		return
	}
	fmt.Println("  saved", filepath.Join(b.o.profiles, file))
}

// answeringFleet starts two nodes and two edges (ids prefixed; edgeEnv
// added to the edges' environment) and one loadgen holding n devices that
// answer, on the nodes, until stop (which is to be called whatever the
// error, and again harmlessly). Each measured run then only sends
// commands, so what it costs is the commands' alone. It returns the edges'
// URLs once every device is present; stop returns the fleet's summary.
func (b *bench) answeringFleet(ctx context.Context, prefix string, n int, edgeEnv ...string) (edges []string, stop func() loadgen.Summary, err error) {
	var procs []*proc
	var fleet *loadgenRun
	var summary loadgen.Summary
	stopped := false
	stop = func() loadgen.Summary {
		if stopped {
			return summary
		}
		stopped = true
		if fleet != nil {
			_ = fleet.cmd.Process.Signal(os.Interrupt)
			summary, _ = fleet.wait()
		}
		stopAll(procs)
		return summary
	}
	var nodes []string
	for _, id := range []string{prefix + "-node-a", prefix + "-node-b"} {
		p, err := b.startNode(ctx, id)
		if err != nil {
			return nil, stop, err
		}
		procs, nodes = append(procs, p), append(nodes, p.url())
	}
	for _, id := range []string{prefix + "-edge-a", prefix + "-edge-b"} {
		p, err := b.startEdge(ctx, id, edgeEnv...)
		if err != nil {
			return nil, stop, err
		}
		procs, edges = append(procs, p), append(edges, "http://"+p.addr)
	}
	if fleet, err = b.loadgen(ctx, n, "-nodes", strings.Join(nodes, ","), "-node-metrics", "-", "-answer", "-duration", "1h"); err != nil {
		return nil, stop, err
	}
	if err := poll(ctx, 5*time.Minute, func() bool { return b.livePresence(ctx) == n }); err != nil {
		return nil, stop, fmt.Errorf("the devices: %w (%d present)", err, b.livePresence(ctx))
	}
	return edges, stop, nil
}

// throughput: 2 edges, 2 nodes, answering devices; open-loop rates, then a
// closed loop as fast as answers come.
func (b *bench) throughput(ctx context.Context) error {
	n := b.sz.throughputDevices
	edges, stop, err := b.answeringFleet(ctx, "rt", n)
	defer stop()
	if err != nil {
		return err
	}
	b.pgIdle(ctx)
	common := []string{"-hold=false", "-edges", strings.Join(edges, ","), "-duration", b.sz.run.String(), "-warmup", b.sz.warmup.String()}
	measure := func(args ...string) (*loadgen.CommandSummary, pgUsage, error) {
		mark := b.pgMark(ctx)
		lg, err := b.loadgen(ctx, n, append(slices.Clone(common), args...)...)
		if err != nil {
			return nil, pgUsage{}, err
		}
		s, err := lg.wait()
		if err != nil {
			return nil, pgUsage{}, err
		}
		c := s.Commands
		if c == nil {
			return nil, pgUsage{}, errors.New("no commands in the summary")
		}
		// A smoke run's load is light: every command must succeed.
		if quickRun && (c.Failed > 0 || c.Succeeded == 0) {
			return nil, pgUsage{}, fmt.Errorf("%d of %d commands failed: %v", c.Failed, c.Attempted, c.FailedBy)
		}
		// PostgreSQL's figures cover the warm-up too: so must the count.
		pg := b.pgSince(ctx, mark)
		pg.commands = int64(float64(c.Attempted) * (c.WarmupSeconds + c.Seconds) / c.Seconds)
		return c, pg, nil
	}
	for _, rate := range b.sz.rates {
		c, pg, err := measure("-rate", fmt.Sprintf("%d/s", rate))
		if err != nil {
			return err
		}
		target, ok := "≥ 99.9% succeed, p99 ≤ 100 ms", c.SuccessRatio >= 0.999 && c.Latency.P99 <= 100
		if rate <= 1000 {
			target, ok = "≥ 99.9% succeed, p99 ≤ 25 ms", c.SuccessRatio >= 0.999 && c.Latency.P99 <= 25
		}
		b.rows = append(b.rows, row{
			what:     fmt.Sprintf("round trips at %d/s offered (open loop, %d devices, 2 edges, 2 nodes)", rate, n),
			target:   target,
			measured: fmt.Sprintf("%.0f/s done, %.2f%% ok, p50 %.1f p99 %.1f max %.0f ms", c.SuccessRate, 100*c.SuccessRatio, c.Latency.P50, c.Latency.P99, c.Latency.Max),
			verdict:  verdict(ok, ok),
		})
		b.notePG(fmt.Sprintf("%d/s", rate), pg)
	}
	c, pg, err := measure("-concurrency", strconv.Itoa(b.sz.closedClients))
	if err != nil {
		return err
	}
	b.rows = append(b.rows, row{
		what:     fmt.Sprintf("round trips/s, as fast as answered (%d clients, %d devices, 2 edges, 2 nodes)", b.sz.closedClients, n),
		target:   "≥ 3,000/s (aim 5,000)",
		measured: fmt.Sprintf("%.0f/s, %.2f%% ok, p50 %.1f p99 %.1f ms", c.SuccessRate, 100*c.SuccessRatio, c.Latency.P50, c.Latency.P99),
		verdict:  verdict(c.SuccessRate >= 3000, c.SuccessRate >= 5000),
	})
	b.notePG("closed loop", pg)
	return nil
}

// job: a fleet job to the whole fleet must not slow the single-command
// path. Closed-loop round trips, the throughput scenario's, are measured
// alone, then again while a job rolls out to every device at a rate that
// lasts the whole run.
func (b *bench) job(ctx context.Context) error {
	n := b.sz.jobDevices
	edges, stop, err := b.answeringFleet(ctx, "job", n)
	defer stop()
	if err != nil {
		return err
	}
	out, err := b.output(ctx, "apikeys", "add", "bench-jobs", "-scopes", "commands")
	if err != nil {
		return err
	}
	key := strings.TrimSpace(string(out))
	measure := func() (*loadgen.CommandSummary, error) {
		lg, err := b.loadgen(ctx, n, "-hold=false", "-edges", strings.Join(edges, ","), "-duration", b.sz.run.String(),
			"-warmup", b.sz.warmup.String(), "-concurrency", strconv.Itoa(b.sz.closedClients))
		if err != nil {
			return nil, err
		}
		s, err := lg.wait()
		if err != nil {
			return nil, err
		}
		if s.Commands == nil {
			return nil, errors.New("no commands in the summary")
		}
		return s.Commands, nil
	}
	alone, err := measure()
	if err != nil {
		return err
	}

	// The job's targets: the fleet's devices, by id (the database holds
	// other scenarios' devices too), at a rate that spans the run.
	creds, err := os.ReadFile(b.creds)
	if err != nil {
		return err
	}
	var ids []string
	for line := range strings.Lines(string(creds)) {
		if id, _, ok := strings.Cut(strings.TrimSpace(line), ","); ok && len(ids) < n {
			ids = append(ids, id)
		}
	}
	rate := float64(n) / (b.sz.warmup + b.sz.run).Seconds()
	body, _ := json.Marshal(map[string]any{"name": "echo", "args": map[string]any{"job": true}, "target": map[string]any{"devices": ids}, "rate": rate})
	api := func(method, path string, body []byte) (map[string]any, error) {
		req, err := http.NewRequestWithContext(ctx, method, edges[0]+path, bytes.NewReader(body))
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		if resp.StatusCode/100 != 2 {
			return nil, fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, raw)
		}
		var v map[string]any
		return v, json.Unmarshal(raw, &v)
	}
	created := time.Now()
	j, err := api(http.MethodPost, "/v1/jobs", body)
	if err != nil {
		return err
	}
	withJob, err := measure()
	if err != nil {
		return err
	}
	jobPath := fmt.Sprintf("/v1/jobs/%v", j["id"])
	if err := poll(ctx, 5*time.Minute, func() bool {
		j, err = api(http.MethodGet, jobPath, nil)
		return err == nil && j["status"] != "running"
	}); err != nil {
		return fmt.Errorf("the job did not end: %w (%v)", err, j)
	}
	took := time.Since(created)
	b.rows = append(b.rows, row{
		what:     fmt.Sprintf("round trips/s, as fast as answered (%d clients, %d devices, 2 edges, 2 nodes), alone", b.sz.closedClients, n),
		target:   "(the baseline of the next row)",
		measured: fmt.Sprintf("%.0f/s, %.2f%% ok, p50 %.1f p99 %.1f ms", alone.SuccessRate, 100*alone.SuccessRatio, alone.Latency.P50, alone.Latency.P99),
		verdict:  "",
	})
	ok := withJob.SuccessRatio >= 0.999 && withJob.SuccessRate >= 0.9*alone.SuccessRate && withJob.Latency.P99 <= 1.25*alone.Latency.P99
	b.rows = append(b.rows, row{
		what:     fmt.Sprintf("the same, while a job sends a command to all %d devices at %.0f/s", n, rate),
		target:   "≥ 90% of the rate alone, p99 ≤ 1.25× alone",
		measured: fmt.Sprintf("%.0f/s, %.2f%% ok, p50 %.1f p99 %.1f ms; the job %v after %.0f s, counts %v", withJob.SuccessRate, 100*withJob.SuccessRatio, withJob.Latency.P50, withJob.Latency.P99, j["status"], took.Seconds(), j["counts"]),
		verdict:  verdict(ok, ok),
	})
	if j["status"] != "done" {
		return fmt.Errorf("the job ended %v: %v", j["status"], j["counts"])
	}
	return nil
}

// notePG notes what PostgreSQL spent per command over a run, and the rate
// its two cores would carry at that cost.
func (b *bench) notePG(what string, pg pgUsage) {
	commands := pg.commands
	if commands == 0 {
		return
	}
	b.notes = append(b.notes, fmt.Sprintf("%s: per command, PostgreSQL ran %.2f statements and %.2f commits, spent %.0f µs of CPU and wrote %d bytes of WAL; at that cost one core carries %.0f commands/s",
		what, float64(pg.statements)/float64(commands), float64(pg.commits)/float64(commands), perOp(pg.cpu, int(commands)), pg.walBytes/commands, float64(commands)/pg.cpu.Seconds()))
}

// scale: idle devices over several nodes, several loadgen processes and
// source addresses, each with a presence row.
func (b *bench) scale(ctx context.Context) error {
	var nodes []*proc
	defer func() { stopAll(nodes) }()
	var urls, metrics []string
	for i := range b.sz.scaleNodes {
		p, err := b.startNode(ctx, fmt.Sprintf("scale-%d", i+1))
		if err != nil {
			return err
		}
		nodes, urls, metrics = append(nodes, p), append(urls, p.url()), append(metrics, p.metricsURL())
	}
	n := b.sz.scaleDevices
	lg, err := b.loadgen(ctx, n, "-nodes", strings.Join(urls, ","), "-node-metrics", strings.Join(metrics, ","),
		"-ramp", "500/s", "-duration", "1h")
	if err != nil {
		return err
	}
	start := time.Now()
	present := 0
	err = poll(ctx, 10*time.Minute, func() bool { present = b.livePresence(ctx, nodes...); return present == n })
	upIn := time.Since(start)
	if err == nil {
		// Held, not only reached: the heartbeats keep every session.
		select {
		case <-ctx.Done():
		case <-time.After(b.sz.run):
		}
		if present = b.livePresence(ctx, nodes...); present < n {
			err = fmt.Errorf("%d sessions lost while idle", n-present)
		}
	}
	_ = lg.cmd.Process.Signal(os.Interrupt) // it sums up what it did
	if err != nil && quickRun {
		_, _ = lg.wait()
		return fmt.Errorf("%d of %d devices present: %w", present, n, err)
	}
	s, werr := lg.wait()
	if werr != nil {
		return werr
	}
	per := "?"
	if s.Nodes != nil && s.Nodes.Sessions > 0 {
		per = fmt.Sprintf("%.1f KiB", float64(s.Nodes.RSSPerSession)/1024)
	}
	b.rows = append(b.rows, row{
		what:     fmt.Sprintf("idle devices held by %d nodes, heartbeats on", len(nodes)),
		target:   "≥ 90,000, each in presence_live",
		measured: fmt.Sprintf("%d in presence_live after %.0f s idle (%s; %d loadgen processes; node RSS %s per session)", present, b.sz.run.Seconds(), upText(err, upIn), max(1, s.Processes), per),
		verdict:  verdict(err == nil && present >= 90000, err == nil && present >= 90000),
	})
	return nil
}

// storm: a node holding the fleet is SIGKILLed; how long until every device
// is back in presence_live on the others.
func (b *bench) storm(ctx context.Context) error {
	a, err := b.startNode(ctx, "storm-a")
	if err != nil {
		return err
	}
	nodes := []*proc{a}
	defer func() { stopAll(nodes) }()
	// The other two start once the fleet is on storm-a, on ports chosen
	// now, which the devices fail over to (until then they refuse, and the
	// devices go back to storm-a).
	var spare []string
	for range 2 {
		addr, err := freeport.Loopback()
		if err != nil {
			return err
		}
		spare = append(spare, addr)
	}
	n := b.sz.stormDevices
	lg, err := b.loadgen(ctx, n, "-nodes", a.url(), "-failover", "wss://"+spare[0]+"/v1/connect,wss://"+spare[1]+"/v1/connect",
		"-node-metrics", "-", "-ramp", "1000/s", "-duration", "10m")
	if err != nil {
		return err
	}
	defer func() { _ = lg.cmd.Process.Signal(os.Interrupt); _, _ = lg.wait() }()
	if err := poll(ctx, 10*time.Minute, func() bool { return b.livePresence(ctx, a) == n }); err != nil {
		return fmt.Errorf("the fleet on %s: %w (%d present)", a.id, err, b.livePresence(ctx, a))
	}
	var others []*proc
	for i, id := range []string{"storm-b", "storm-c"} {
		p, err := b.startNodeAt(ctx, id, spare[i])
		if err != nil {
			return err
		}
		nodes, others = append(nodes, p), append(others, p)
	}
	fmt.Printf("  %d devices on %s; SIGKILL\n", n, a.id)
	cpuOf := func() (nodes, clients int64) {
		for _, p := range others {
			nodes += procTicks(p.cmd.Process.Pid, false)
		}
		return nodes, procTicks(lg.cmd.Process.Pid, false)
	}
	nodes0, clients0 := cpuOf()
	profiled := make(chan struct{})
	if b.o.profiles != "" {
		// A CPU profile of one of the nodes taking the storm.
		go func() {
			defer close(profiled)
			b.saveProfile(others[0], "/debug/pprof/profile?seconds=15", "storm-cpu.pprof")
		}()
	} else {
		close(profiled)
	}
	defer func() { <-profiled }()
	mark := b.pgMark(ctx)
	a.kill()
	nodes = others
	back := 0
	var most time.Duration // until 99% were back: the rest is the devices' backoff after failed tries
	err = poll(ctx, 5*time.Minute, func() bool {
		back = b.livePresence(ctx, others...)
		if most == 0 && back*100 >= n*99 {
			most = time.Since(mark.at)
		}
		return back == n
	})
	took := time.Since(mark.at)
	if err != nil && quickRun {
		return fmt.Errorf("%d of %d devices back: %w", back, n, err)
	}
	pg := b.pgSince(ctx, mark)
	b.rows = append(b.rows, row{
		what:     fmt.Sprintf("reconnect storm: a node holding %d devices SIGKILLed", n),
		target:   "all back in presence_live within 15 s",
		measured: fmt.Sprintf("%d back in %.1f s (99%% in %.1f s)", back, took.Seconds(), most.Seconds()),
		verdict:  verdict(err == nil && took <= 15*time.Second, err == nil && took <= 15*time.Second),
	})
	nodes1, clients1 := cpuOf()
	b.notes = append(b.notes, fmt.Sprintf("storm: CPU per reconnect: the two nodes %.0f µs, the devices (loadgen, TLS client side) %.0f µs, PostgreSQL %.0f µs; %.1f s of CPU in all over %.1f s on %d cores",
		perOp(ticks(nodes1-nodes0), n), perOp(ticks(clients1-clients0), n), perOp(pg.cpu, n),
		(ticks(nodes1-nodes0)+ticks(clients1-clients0)+pg.cpu).Seconds(), took.Seconds(), runtime.NumCPU()))
	return nil
}

// ---- results

func upText(err error, took time.Duration) string {
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("all up in %.0f s", took.Seconds())
}

func verdict(must, aim bool) string {
	switch {
	case quickRun:
		return "(smoke run)"
	case aim:
		return "met"
	case must:
		return "met (must)"
	}
	return "NOT met"
}

func perOp(d time.Duration, n int) float64 { return float64(d.Microseconds()) / float64(max(n, 1)) }

func (b *bench) table(took time.Duration) string {
	var buf bytes.Buffer
	host, _ := os.Hostname()
	fmt.Fprintf(&buf, "Measured %s on %s (%d cores, %s, %s), in %.0f min, by:\n\n    scripts/bench\n\n",
		time.Now().UTC().Format("2006-01-02"), host, runtime.NumCPU(), cpuModel(), runtime.Version(), took.Minutes())
	buf.WriteString("| target | wanted | measured | |\n|---|---|---|---|\n")
	for _, r := range b.rows {
		fmt.Fprintf(&buf, "| %s | %s | %s | %s |\n", r.what, r.target, r.measured, r.verdict)
	}
	if len(b.notes) > 0 {
		buf.WriteString("\n")
		for _, n := range b.notes {
			fmt.Fprintf(&buf, "- %s\n", n)
		}
	}
	return buf.String()
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for line := range strings.Lines(string(b)) {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}

// The measured section of BENCHMARKS.md lies between these lines.
const (
	beginMark = "<!-- scripts/bench: begin -->"
	endMark   = "<!-- scripts/bench: end -->"
)

func rewrite(path, table string) error {
	old, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	text := string(old)
	i, j := strings.Index(text, beginMark), strings.Index(text, endMark)
	if i < 0 || j < i {
		return fmt.Errorf("%s has no %q ... %q section", path, beginMark, endMark)
	}
	text = text[:i+len(beginMark)] + "\n" + table + text[j:]
	return os.WriteFile(path, []byte(text), 0o644)
}

// ---- small things

// poll checks cond every 200ms until it holds, for at most limit.
func poll(ctx context.Context, limit time.Duration, cond func() bool) error {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %v", limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return nil
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	return string(b[max(0, len(b)-4000):])
}

func indent(s string) string {
	var out strings.Builder
	for line := range strings.Lines(s) {
		out.WriteString("    " + line)
	}
	return out.String()
}
