package loadgen

// A process may hold about 19,000 sockets (its open-files limit), so a run
// of more devices is split over worker processes: copies of this binary
// started as "switchboard loadgen -worker". A worker reads, on stdin, one
// line of JSON (its FleetConfig), then its devices as "id,secret" lines,
// then a line "."; it reports its DeviceCounts as JSON lines on stdout,
// every reportEvery and once more at the end. It stops when its stdin
// closes: when the parent stops it, or dies.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"sync"
	"time"

	"github.com/switchboard-iot/switchboard/internal/actors"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

// reportEvery is how often a worker reports its counts.
const reportEvery = 200 * time.Millisecond

// endOfDevices ends the devices a worker reads on stdin.
const endOfDevices = "."

// workerStopGrace is how long a worker may take to close its sessions once
// told to stop, before it is killed.
const workerStopGrace = 15 * time.Second

// report is one line a worker writes.
type report struct {
	Counts DeviceCounts `json:"counts"`
	Final  bool         `json:"final,omitempty"`
}

// Workers holds a fleet's devices in worker processes, perProcess at most
// each, and adds up their counts.
type Workers struct {
	cfg        FleetConfig
	creds      []secret.Credential
	perProcess int
	command    []string // the worker's command line: the binary, "loadgen", "-worker"
	stderr     io.Writer
	log        *slog.Logger

	mu     sync.Mutex     // guards the following
	latest []DeviceCounts // each worker's last report
}

// NewWorkers prepares the worker processes for creds.
func NewWorkers(cfg FleetConfig, creds []secret.Credential, perProcess int, command []string, stderr io.Writer, log *slog.Logger) *Workers {
	n := (len(creds) + perProcess - 1) / perProcess
	return &Workers{cfg: cfg, creds: creds, perProcess: perProcess, command: command, stderr: &lockedWriter{w: stderr}, log: log,
		latest: make([]DeviceCounts, n)}
}

// Processes is the number of worker processes.
func (w *Workers) Processes() int { return len(w.latest) }

// Run starts the workers, each with an even share of the devices and of the
// ramp, and returns once they have all stopped, after ctx ends (or when
// one fails).
func (w *Workers) Run(ctx context.Context) error {
	n := len(w.latest)
	fns := make([]func(context.Context) error, n)
	for i := range n {
		lo, hi := i*len(w.creds)/n, (i+1)*len(w.creds)/n
		cfg := w.cfg
		cfg.Offset += lo
		cfg.Ramp /= float64(n)
		fns[i] = func(ctx context.Context) error {
			if err := w.runWorker(ctx, i, cfg, w.creds[lo:hi]); err != nil {
				return fmt.Errorf("worker %d: %w", i+1, err)
			}
			return nil
		}
	}
	// A worker that fails stops the others: its devices' counts would be
	// missing from the summary.
	task, stop := actors.Group(ctx, fns...)
	defer stop()
	select {
	case <-ctx.Done():
		stop()
	case <-task.Done():
	}
	return task.Wait()
}

// runWorker runs one worker process until ctx ends, then closes its stdin
// and waits for it to stop.
func (w *Workers) runWorker(ctx context.Context, i int, cfg FleetConfig, creds []secret.Credential) error {
	cmd := exec.CommandContext(ctx, w.command[0], w.command[1:]...)
	cmd.Stderr = w.stderr
	stopWithParent(cmd)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	// Stopping is closing stdin; past the grace, the worker is killed.
	cmd.Cancel = stdin.Close
	cmd.WaitDelay = workerStopGrace
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	// Its devices go at once, through the pipe's buffer: the worker reads
	// them before anything else.
	var devices bytes.Buffer
	spec, _ := json.Marshal(cfg)
	devices.Write(append(spec, '\n'))
	for _, c := range creds {
		_ = secret.WriteCredential(&devices, c)
	}
	devices.WriteString(endOfDevices + "\n")
	if _, err := stdin.Write(devices.Bytes()); err != nil {
		_ = cmd.Wait()
		return fmt.Errorf("sending its devices: %w", err)
	}

	var final bool
	lines := bufio.NewScanner(stdout)
	for lines.Scan() {
		var r report
		if err := json.Unmarshal(lines.Bytes(), &r); err != nil {
			w.log.Warn("a worker's report did not parse", "worker", i+1, "line", lines.Text(), "err", err)
			continue
		}
		w.mu.Lock()
		w.latest[i] = r.Counts
		w.mu.Unlock()
		final = r.Final
	}
	err = cmd.Wait()
	switch {
	case err != nil && ctx.Err() == nil:
		return err
	case err != nil && !final:
		return fmt.Errorf("stopped without its final report: %w", err)
	case ctx.Err() == nil:
		return errors.New("stopped before it was told to")
	}
	return nil
}

// Counts adds up the workers' last reports.
func (w *Workers) Counts() DeviceCounts {
	w.mu.Lock()
	defer w.mu.Unlock()
	var sum DeviceCounts
	for _, c := range w.latest {
		sum.Add(c)
	}
	sum.Devices = len(w.creds) // reported or not yet
	return sum
}

// lockedWriter is one writer that several workers' logs share: exec copies
// each worker's stderr in a goroutine of its own unless it is a file.
type lockedWriter struct {
	mu sync.Mutex // guards w
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// RunWorker is a worker process's side: it reads its fleet from stdin,
// holds its devices and reports their counts on stdout until stdin closes
// or ctx ends.
func RunWorker(ctx context.Context, stdin io.Reader, stdout io.Writer, log *slog.Logger) error {
	in := bufio.NewReader(stdin)
	spec, err := in.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("reading the worker's config: %w", err)
	}
	var cfg FleetConfig
	if err := json.Unmarshal(spec, &cfg); err != nil {
		return fmt.Errorf("reading the worker's config: %w", err)
	}
	var lines bytes.Buffer
	for {
		line, err := in.ReadString('\n')
		if err != nil {
			return fmt.Errorf("reading the worker's devices: %w", err)
		}
		if line == endOfDevices+"\n" {
			break
		}
		lines.WriteString(line)
	}
	var creds []secret.Credential
	_ = secret.ScanCredentials(&lines, func(_ int, c secret.Credential) error {
		creds = append(creds, c)
		return nil
	})
	fleet, err := NewFleet(cfg, creds, log)
	if err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The parent closes stdin to stop the worker, and so does its death.
	// Should the worker stop otherwise (a signal), this read is left to
	// end with the process: a pipe inherited as stdin has no deadlines.
	go func() {
		_, _ = io.Copy(io.Discard, in)
		cancel()
	}()
	fleetDone := actors.Go(func() error { return fleet.Run(ctx) })
	tick := time.NewTicker(reportEvery)
	defer tick.Stop()
	out := json.NewEncoder(stdout)
	for {
		select {
		case <-tick.C:
			if err := out.Encode(report{Counts: fleet.Counts()}); err != nil {
				cancel() // the parent is gone
			}
		case <-fleetDone.Done():
			return out.Encode(report{Counts: fleet.Counts(), Final: true})
		}
	}
}
