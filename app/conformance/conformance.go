// Package conformance is the device conformance suite (docs/conformance.md):
// it starts a real Switchboard (a private PostgreSQL, an edge, connection
// nodes with self-signed TLS behind TCP fronts of its own), runs a device
// implementation given as a command line, once per device it needs, and
// drives it through scenarios, each passed or failed: answers to commands,
// de-duplication of a redelivered command, reconnects with jitter, the
// close codes, a silent node, certificate pinning, events and state.
// "switchboard conformance" runs it (app/cli).
package conformance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"
)

// Config says what device to test, and how.
type Config struct {
	// DeviceCmd is the device implementation: a command line run with
	// sh -c, once per device instance, with the contract's environment.
	DeviceCmd string
	// WorkDir is the device command's working folder ("": the suite's).
	WorkDir string
	// Run, when set, runs only the scenarios whose names it matches.
	Run *regexp.Regexp
	// DatabaseURL, when set, is a database of the suite's own (empty, or
	// migrated and unused): it fills it. Else the suite starts a private
	// PostgreSQL in its work folder.
	DatabaseURL string
	// JitterDevices is how many instances the reconnect-jitter scenario
	// runs (20).
	JitterDevices int
	// Parallel is how many scenarios run at once (1).
	Parallel int
	// Keep keeps the work folder (database, device logs) and names it in
	// the report; else it is deleted at the end.
	Keep bool
	// Log receives the system's own log (nil: discarded; its file in the
	// work folder has it too when Keep is set).
	Log *slog.Logger
	// Progress, when set, is told each scenario's result as it ends.
	Progress func(Result)
}

// Result is one scenario's outcome.
type Result struct {
	Name    string  `json:"name"`
	Title   string  `json:"title"`
	Pass    bool    `json:"pass"`
	Detail  string  `json:"detail"`             // what was measured, or why it failed
	Seconds float64 `json:"seconds"`            // how long it took
	Log     string  `json:"log_tail,omitempty"` // on failure: the end of its devices' output
}

// Report is the suite's outcome.
type Report struct {
	DeviceCmd string   `json:"device_cmd"`
	Passed    int      `json:"passed"`
	Failed    int      `json:"failed"`
	Seconds   float64  `json:"seconds"`
	Dir       string   `json:"dir,omitempty"` // the work folder, when kept
	Scenarios []Result `json:"scenarios"`
}

// Names lists the scenarios, in the order they run.
func Names() []string {
	var out []string
	for _, s := range scenarios {
		out = append(out, s.name)
	}
	return out
}

// Run starts the system, runs the scenarios and stops it all. The error is
// the suite's own (the system would not start); failed scenarios are in
// the report.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if strings.TrimSpace(cfg.DeviceCmd) == "" {
		return nil, errors.New("a device command is required")
	}
	if cfg.JitterDevices <= 0 {
		cfg.JitterDevices = 20
	}
	cfg.Parallel = max(cfg.Parallel, 1)
	start := time.Now()
	dir, err := os.MkdirTemp("", "switchboard-conformance-")
	if err != nil {
		return nil, err
	}
	if !cfg.Keep {
		defer os.RemoveAll(dir)
	}
	// As root the cluster runs as the postgres user, who must enter it.
	if err := os.Chmod(dir, 0o711); err != nil {
		return nil, err
	}
	if err := os.Mkdir(filepath.Join(dir, "logs"), 0o755); err != nil {
		return nil, err
	}
	logFile, err := os.Create(filepath.Join(dir, "system.log"))
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	var logOut io.Writer = logFile
	if cfg.Log != nil {
		logOut = io.MultiWriter(logFile, logWriter{cfg.Log})
	}
	log := slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: slog.LevelDebug}))

	sys, err := startSystem(ctx, dir, cfg.DatabaseURL, log)
	if err != nil {
		return nil, err
	}
	defer sys.close()
	r := &runner{cfg: cfg, sys: sys, dir: dir, log: log}
	rep := &Report{DeviceCmd: cfg.DeviceCmd}
	if cfg.Keep {
		rep.Dir = dir
	}
	var todo []scenario
	for _, s := range scenarios {
		if cfg.Run == nil || cfg.Run.MatchString(s.name) {
			todo = append(todo, s)
		}
	}
	results := make([]Result, len(todo))
	sem := make(chan struct{}, cfg.Parallel)
	var wg sync.WaitGroup
	for i, s := range todo {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			results[i] = r.run(ctx, s)
			if cfg.Progress != nil {
				cfg.Progress(results[i])
			}
		})
	}
	wg.Wait()
	for _, res := range results {
		if res.Pass {
			rep.Passed++
		} else {
			rep.Failed++
		}
	}
	rep.Scenarios = results
	rep.Seconds = time.Since(start).Seconds()
	return rep, ctx.Err()
}

// logWriter passes the system's text log lines on to a logger.
type logWriter struct{ log *slog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	w.log.Debug(strings.TrimSpace(string(p)))
	return len(p), nil
}

// runner runs scenarios on one system.
type runner struct {
	cfg Config
	sys *system
	dir string
	log *slog.Logger
}

// scenario is one thing a device must get right.
type scenario struct {
	name, title string
	limit       time.Duration // the most it may take
	run         func(ctx context.Context, sc *scenarioRun) (detail string, err error)
}

// scenarioRun is a scenario as it runs: its devices, fronts and
// instances, all stopped when it ends.
type scenarioRun struct {
	*runner
	name      string
	fronts    []*front
	instances []*instance
	devices   int
}

func (r *runner) run(ctx context.Context, s scenario) Result {
	start := time.Now()
	sc := &scenarioRun{runner: r, name: s.name}
	ctx, cancel := context.WithTimeout(ctx, s.limit)
	detail, err := s.run(ctx, sc)
	cancel()
	res := Result{Name: s.name, Title: s.title, Pass: err == nil, Detail: detail}
	if err != nil {
		res.Detail = err.Error()
		var tails []string
		for _, in := range sc.instances[:min(len(sc.instances), 2)] {
			if t := in.tail(15); t != "" {
				tails = append(tails, "["+in.id+"]\n"+t)
			}
		}
		res.Log = strings.Join(tails, "\n")
	}
	sc.cleanup()
	res.Seconds = time.Since(start).Seconds()
	r.log.Info("scenario", "name", s.name, "pass", res.Pass, "detail", res.Detail)
	return res
}

// cleanup stops the scenario's instances, at once, and closes its fronts.
func (sc *scenarioRun) cleanup() {
	var wg sync.WaitGroup
	for _, in := range sc.instances {
		wg.Go(in.stop)
	}
	wg.Wait()
	for _, f := range sc.fronts {
		f.close()
	}
}

// device is a provisioned device, its front and its running instance.
type device struct {
	id, secret string
	front      *front
	*instance
}

// startDevice provisions a device, gives it a front to node, and runs the
// device command as it.
func (sc *scenarioRun) startDevice(ctx context.Context, node string, set settings) (*device, error) {
	d, err := sc.provision(ctx, node)
	if err != nil {
		return nil, err
	}
	return d, sc.launch(d, set)
}

// provision provisions a device and its front, without running it.
func (sc *scenarioRun) provision(ctx context.Context, node string) (*device, error) {
	sc.devices++
	id := fmt.Sprintf("%s-%d", sc.name, sc.devices)
	devSecret, err := sc.sys.addDevice(ctx, id)
	if err != nil {
		return nil, err
	}
	f, err := newFront(id, sc.sys.nodeAddrs[node], sc.log)
	if err != nil {
		return nil, err
	}
	sc.fronts = append(sc.fronts, f)
	return &device{id: id, secret: devSecret, front: f}, nil
}

// launch runs the device command as d.
func (sc *scenarioRun) launch(d *device, set settings) error {
	in, err := sc.startInstance(sc, d.id, d.secret, d.front, set)
	d.instance = in
	return err
}

// waitOnline waits until the device is online (on node, if given).
func (sc *scenarioRun) waitOnline(ctx context.Context, d *device, node string, limit time.Duration) error {
	err := poll(ctx, limit, func() (bool, error) {
		if !d.running() {
			return false, fmt.Errorf("%w with status %d", errExited, d.exitCode)
		}
		dev, err := sc.sys.api.device(ctx, d.id)
		if err != nil {
			return false, err
		}
		return dev.Online && (node == "" || dev.Presence != nil && dev.Presence.NodeID == node), nil
	})
	if err != nil {
		return fmt.Errorf("device %s did not come online: %w", d.id, err)
	}
	return nil
}
