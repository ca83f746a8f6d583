package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/oklog/run"
	"golang.org/x/term"

	"github.com/switchboard-iot/switchboard/app"
	"github.com/switchboard-iot/switchboard/app/sim/loadgen"
	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/device/protocol"
	"github.com/switchboard-iot/switchboard/internal/actors"
	"github.com/switchboard-iot/switchboard/internal/certs"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

// portsPerSourceAddr is how many devices one loopback source address takes
// before the next is used: Linux's ephemeral ports number about 28,000.
const portsPerSourceAddr = 25000

// loadgenFlags are the flags of "loadgen".
type loadgenFlags struct {
	store                            storeFlags
	nodes, failover, nodeMetrics, ca *string
	insecure                         *bool
	credentials                      *string
	devices                          *int
	provision                        *bool
	idPrefix                         *string
	hold, answer                     *bool
	ramp                             *string
	perProcess                       *int
	sourceAddrs, edges, apiKey, rate *string
	concurrency, maxInFlight         *int
	wait, warmup, duration           *time.Duration
	json, quiet                      *bool
	cpuProfile                       *string
	worker                           *bool
}

func defineLoadgenFlags(f flags) loadgenFlags {
	return loadgenFlags{
		store:       defineStoreFlags(f),
		nodes:       f.string("nodes", "wss://localhost:8443"+protocol.Path, "comma-separated WebSocket URLs of the nodes; devices take turns", "LOADGEN_NODES"),
		failover:    f.String("failover", "", "comma-separated WebSocket URLs of more nodes (sharing the nodes' certificate) that a device dials once its node failed it, as a load balancer would send it"),
		nodeMetrics: f.string("node-metrics", "", "comma-separated URLs of the nodes' /metrics, on their ops listeners (CONN_OPS_LISTEN), for RSS per session (default, or \"-\": none)", "LOADGEN_NODE_METRICS"),
		ca:          f.string("ca", "", "PEM file of the certificate to trust (a node's -cert-out)", "LOADGEN_CA"),
		insecure:    f.Bool("insecure", false, "do not verify the nodes' certificates"),
		credentials: f.string("credentials", "", `file of "id,secret" lines: the devices (with -provision, created as needed and appended)`, "LOADGEN_CREDENTIALS"),
		devices:     f.Int("devices", 0, "devices to use, the first of -credentials (0: all of them)"),
		provision:   f.Bool("provision", false, "create the devices -credentials lacks, in the database, and append them to it"),
		idPrefix:    f.String("id-prefix", "loadgen-", "with -provision: ids of the devices created, followed by a number"),
		hold:        f.Bool("hold", true, "hold the devices' connections (false: only send them commands; another loadgen holds them)"),
		answer:      f.Bool("answer", false, `devices answer the "echo" command the command clients send (else they only keep their sessions)`),
		ramp:        f.String("ramp", "1000/s", "devices that start connecting a second (0: all at once)"),
		perProcess:  f.Int("per-process", 15000, "devices a process holds; more go to worker processes (the open-files limit)"),
		sourceAddrs: f.String("source-addrs", "", "local addresses the devices' sockets take turns binding, e.g. 127.0.0.2-127.0.0.5 (default: one loopback address per 25,000 devices to loopback nodes, else the system's choice)"),
		edges:       f.string("edges", "", "comma-separated base URLs of the edges to send commands through, taking turns (none: no commands)", "LOADGEN_EDGES"),
		apiKey:      f.string("api-key", "", "API key of the commands (default: a new one, with -database-url)", "SWITCHBOARD_KEY"),
		rate:        f.String("rate", "", "commands a second, sent on schedule (open loop), e.g. 2000/s"),
		concurrency: f.Int("concurrency", 0, "clients each sending a command as soon as their last is answered (closed loop), instead of -rate"),
		maxInFlight: f.Int("max-inflight", 2000, "with -rate: commands in flight at most (and connections to the edges)"),
		wait:        f.Duration("wait", 5*time.Second, "?wait= of each command, and its timeout"),
		warmup:      f.Duration("warmup", 5*time.Second, "how long commands run before they count"),
		duration:    f.Duration("duration", 30*time.Second, "how long commands count, or without commands how long devices are held (0: until interrupted)"),
		json:        f.Bool("json", false, "print the summary as JSON on stdout (and the table on stderr)"),
		quiet:       f.Bool("quiet", false, "no progress bar, and with -json no table"),
		cpuProfile:  f.String("cpuprofile", "", "write this process's CPU profile here (what the load generator itself costs)"),
		worker:      f.Bool("worker", false, "(internal) be a worker process: read a fleet on stdin, report on stdout"),
	}
}

// runLoadgen holds devices and drives command clients; see README.md,
// "Load generator".
func runLoadgen(ctx context.Context, lf loadgenFlags, c call) error {
	// Devices log their troubles at Warn: thousands of them would bury
	// the summary unless asked for with LOG_LEVEL.
	deviceLog := c.log
	if c.getenv("LOG_LEVEL") == "" {
		deviceLog = slog.New(newLogHandler(c.Stderr, c.logFormat, slog.LevelError))
	}
	if *lf.worker {
		// Ctrl-C reaches the whole process group: the parent stops its
		// workers itself, by closing their stdin, once it has their counts.
		signal.Ignore(os.Interrupt)
		return loadgen.RunWorker(ctx, c.Stdin, c.Stdout, deviceLog)
	}
	cfg, err := lf.config(ctx, c)
	if err != nil {
		return err
	}
	cfg.Log = deviceLog
	if *lf.cpuProfile != "" {
		stop, err := startCPUProfile(*lf.cpuProfile)
		if err != nil {
			return err
		}
		defer stop()
	}
	var summary loadgen.Summary
	var g run.Group
	actors.Add(&g, ctx, app.UntilSignal)
	actors.Add(&g, ctx, func(ctx context.Context) error {
		var err error
		summary, err = loadgen.Run(ctx, cfg)
		return err
	})
	runErr := g.Run()
	if err := lf.writeSummary(summary, c.IO); err != nil {
		return err
	}
	return runErr
}

// config is the run the flags describe, its devices provisioned if asked.
func (lf loadgenFlags) config(ctx context.Context, c call) (loadgen.Config, error) {
	ramp, err := loadgen.ParseRate(*lf.ramp)
	if err != nil {
		return loadgen.Config{}, fmt.Errorf("-ramp: %w", err)
	}
	sourceAddrs, err := loadgen.ParseSourceAddrs(*lf.sourceAddrs)
	if err != nil {
		return loadgen.Config{}, fmt.Errorf("-source-addrs: %w", err)
	}
	nodeURLs, edgeURLs := splitList(*lf.nodes), splitList(*lf.edges)
	if len(edgeURLs) == 0 && !*lf.hold {
		return loadgen.Config{}, errors.New("nothing to do: no -edges to send commands through, and -hold=false")
	}
	cmdRate, err := lf.commandRate(edgeURLs)
	if err != nil {
		return loadgen.Config{}, err
	}
	creds, err := lf.creds(ctx, c)
	if err != nil {
		return loadgen.Config{}, err
	}
	cfg := loadgen.Config{
		Fleet: loadgen.FleetConfig{Nodes: nodeURLs, Failover: splitList(*lf.failover), CAFile: *lf.ca, Insecure: *lf.insecure, Answer: *lf.answer, Ramp: ramp,
			SourceAddrs: sourceAddrs},
		PerProcess: *lf.perProcess,
		Warmup:     *lf.warmup, Duration: *lf.duration,
		Stderr: c.Stderr,
	}
	if *lf.hold {
		cfg.Devices = creds
		if len(sourceAddrs) == 0 {
			cfg.Fleet.SourceAddrs = loopbackSources(nodeURLs, len(creds))
		}
		exe, err := os.Executable()
		if err != nil {
			return cfg, err
		}
		cfg.WorkerCommand = []string{exe, "loadgen", "-worker"}
	}
	if len(edgeURLs) > 0 {
		if cfg.Commands, err = lf.commands(ctx, c, edgeURLs, cmdRate, creds); err != nil {
			return cfg, err
		}
	} else {
		cfg.Warmup = 0
	}
	cfg.NodeMetrics = lf.nodeMetricsURLs()
	if file, ok := c.Stderr.(*os.File); ok && !*lf.quiet && term.IsTerminal(int(file.Fd())) {
		cfg.Progress = c.Stderr
	}
	return cfg, nil
}

// commandRate is -rate, once the flags are known to choose one loop: open
// (-rate) or closed (-concurrency). Without edges there are no commands.
func (lf loadgenFlags) commandRate(edgeURLs []string) (float64, error) {
	if len(edgeURLs) == 0 {
		return 0, nil
	}
	var rate float64
	if *lf.rate != "" {
		var err error
		if rate, err = loadgen.ParseRate(*lf.rate); err != nil {
			return 0, fmt.Errorf("-rate: %w", err)
		}
	}
	if (rate > 0) == (*lf.concurrency > 0) {
		return 0, errors.New("with -edges, give either -rate (open loop) or -concurrency (closed loop)")
	}
	return rate, nil
}

// creds are the run's devices: the first -devices of -credentials, which
// -provision fills up first.
func (lf loadgenFlags) creds(ctx context.Context, c call) ([]secret.Credential, error) {
	file, n := *lf.credentials, *lf.devices
	if file == "" {
		return nil, errors.New(`no devices: give -credentials FILE of "id,secret" lines (with -provision -devices N, it is created)`)
	}
	if *lf.provision {
		if n <= 0 {
			return nil, errors.New("-provision needs -devices N")
		}
		if err := provisionDevices(ctx, *lf.store.url, file, *lf.idPrefix, n, c.IO, c.log); err != nil {
			return nil, err
		}
	}
	creds, err := readCredentials(file)
	if err != nil {
		return nil, err
	}
	if n > 0 {
		if len(creds) < n {
			return nil, fmt.Errorf("%s has %d devices, fewer than -devices %d (add -provision)", file, len(creds), n)
		}
		creds = creds[:n]
	}
	return creds, nil
}

// commands are the command clients' settings, with an API key of their
// own unless -api-key gives one.
func (lf loadgenFlags) commands(ctx context.Context, c call, edgeURLs []string, rate float64, creds []secret.Credential) (*loadgen.CommandsConfig, error) {
	key := *lf.apiKey
	if key == "" {
		var err error
		if key, err = newLoadgenKey(ctx, *lf.store.url, c.IO); err != nil {
			return nil, err
		}
	}
	tlsCfg, err := certs.Client(*lf.ca, *lf.insecure)
	if err != nil {
		return nil, err
	}
	ids := make([]string, len(creds))
	for i, cred := range creds {
		ids[i] = cred.ID
	}
	return &loadgen.CommandsConfig{Edges: edgeURLs, APIKey: key, Devices: ids, Rate: rate,
		Concurrency: *lf.concurrency, MaxInFlight: *lf.maxInFlight, Wait: *lf.wait, TLS: tlsCfg}, nil
}

// nodeMetricsURLs are the /metrics to scrape: -node-metrics; none when
// empty or "-" (nodes serve metrics only on their ops listeners, whose
// addresses the nodes' URLs do not tell).
func (lf loadgenFlags) nodeMetricsURLs() []string {
	if *lf.nodeMetrics == "-" {
		return nil
	}
	return splitList(*lf.nodeMetrics)
}

// startCPUProfile profiles this process into path until stop.
func startCPUProfile(path string) (stop func(), err error) {
	out, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(out); err != nil {
		out.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); out.Close() }, nil
}

// writeSummary prints the summary as a table on stdout, or with -json as
// JSON on stdout and the table on stderr (none with -quiet).
func (lf loadgenFlags) writeSummary(summary loadgen.Summary, stdio IO) error {
	table, out := stdio.Stdout, io.Writer(nil)
	if *lf.json {
		table, out = stdio.Stderr, stdio.Stdout
		if *lf.quiet {
			table = nil
		}
	}
	if table != nil {
		if err := summary.WriteTable(table); err != nil {
			return err
		}
	}
	if out != nil {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(summary); err != nil {
			return err
		}
	}
	return nil
}

// loopbackSources spreads devices to loopback nodes over 127.0.0.2, .3, …,
// one per portsPerSourceAddr devices, when one source address's ports would
// not do; otherwise the system chooses.
func loopbackSources(nodeURLs []string, devices int) []netip.Addr {
	if devices <= portsPerSourceAddr {
		return nil
	}
	for _, n := range nodeURLs {
		u, err := url.Parse(n)
		if err != nil {
			return nil
		}
		ips, err := net.LookupIP(u.Hostname())
		if err != nil || len(ips) == 0 || !ips[0].IsLoopback() {
			return nil
		}
	}
	var addrs []netip.Addr
	a := netip.MustParseAddr("127.0.0.2")
	for range (devices + portsPerSourceAddr - 1) / portsPerSourceAddr {
		addrs = append(addrs, a)
		a = a.Next()
	}
	return addrs
}

// provisionDevices makes file hold at least n devices: it creates the
// missing ones (ids prefix1, prefix2, … not in the file yet) through the
// same import as "switchboard devices import", appending their lines.
func provisionDevices(ctx context.Context, dbURL, file, prefix string, n int, stdio IO, log *slog.Logger) error {
	have := make(map[string]bool)
	if _, err := os.Stat(file); err == nil {
		creds, err := readCredentials(file)
		if err != nil {
			return err
		}
		for _, c := range creds {
			have[c.ID] = true
		}
	}
	missing := n - len(have)
	if missing <= 0 {
		return nil
	}
	var ids strings.Builder
	for i := 1; missing > 0; i++ {
		if id := fmt.Sprintf("%s%d", prefix, i); !have[id] {
			fmt.Fprintln(&ids, id)
			missing--
		}
	}
	pool, store, err := openStore(ctx, dbURL, 2)
	if err != nil {
		return err
	}
	defer pool.Close()
	out, err := os.OpenFile(file, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	if err := importLines(ctx, storeImport(ctx, store), IO{Stdin: strings.NewReader(ids.String()), Stdout: out, Stderr: stdio.Stderr}, log, false); err != nil {
		out.Close()
		return fmt.Errorf("provisioning: %w", err)
	}
	if err := out.Close(); err != nil {
		return err
	}
	// Ids that existed were skipped: their secrets are not in the file.
	if creds, err := readCredentials(file); err != nil || len(creds) < n {
		return errors.Join(err, fmt.Errorf("%s holds fewer than %d devices: some ids existed already, without their secrets here; choose another -id-prefix", file, n))
	}
	return nil
}

// newLoadgenKey creates an API key for the run's commands.
func newLoadgenKey(ctx context.Context, dbURL string, stdio IO) (string, error) {
	if dbURL == "" {
		return "", errors.New("commands need an API key: give -api-key (SWITCHBOARD_KEY), or -database-url to create one")
	}
	pool, store, err := openStore(ctx, dbURL, 1)
	if err != nil {
		return "", err
	}
	defer pool.Close()
	key := secret.New("sbk_")
	if _, err := store.AddAPIKey(ctx, db.NewAPIKey{Name: "loadgen", KeyHash: secret.Hash(key), Scopes: []db.Scope{db.ScopeCommands}}); err != nil {
		return "", err
	}
	fmt.Fprintln(stdio.Stderr, `created the API key "loadgen" (scope commands) for this run`)
	return key, nil
}
