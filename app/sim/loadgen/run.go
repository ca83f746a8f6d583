// Package loadgen is "switchboard loadgen": it holds devices connected to
// the nodes (in this process, or in worker processes past one process's
// open-files limit), drives HTTP command clients through the edges, and
// sums up what happened: connections, rate, latency, errors by kind and
// the nodes' memory per session.
package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/switchboard-iot/switchboard/internal/actors"
	"github.com/switchboard-iot/switchboard/internal/certs"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

// Config is one run.
type Config struct {
	Fleet   FleetConfig
	Devices []secret.Credential // held for the run
	// PerProcess is how many devices one process holds: past it, they go
	// to worker processes started with WorkerCommand.
	PerProcess    int
	WorkerCommand []string
	// Commands, when set, drives command clients once the devices are up.
	Commands *CommandsConfig
	// Warmup is how long commands run before they count; Duration how long
	// they count, or without commands how long the devices are held (0:
	// until ctx ends).
	Warmup, Duration time.Duration
	NodeMetrics      []string // URLs of the nodes' /metrics
	Progress         io.Writer
	Stderr           io.Writer // the workers' logs
	Log              *slog.Logger
}

// Summary is what a run did.
type Summary struct {
	Devices     DeviceCounts    `json:"devices"`
	Processes   int             `json:"worker_processes"` // 0: the devices were held in this process
	RampSeconds float64         `json:"ramp_s"`           // until every device's first attempt ended
	Commands    *CommandSummary `json:"commands,omitempty"`
	Nodes       *NodeMetrics    `json:"nodes,omitempty"`
}

// CommandSummary is what the command clients did in the measured window.
type CommandSummary struct {
	Mode          string  `json:"mode"` // "open" (-rate) or "closed" (-concurrency)
	TargetRate    float64 `json:"target_rate,omitempty"`
	Concurrency   int     `json:"concurrency,omitempty"`
	WarmupSeconds float64 `json:"warmup_s"`
	Seconds       float64 `json:"duration_s"`
	CommandCounts
	Rate         float64 `json:"rate"`          // commands sent a second
	SuccessRate  float64 `json:"success_rate"`  // commands succeeded a second
	SuccessRatio float64 `json:"success_ratio"` // succeeded over attempted
}

// devices is a fleet wherever it runs.
type devices interface {
	Run(ctx context.Context) error
	Counts() DeviceCounts
}

// Run runs the load until its duration has passed or ctx ends, and sums it
// up. Ending ctx early still gives the summary of what was done.
func Run(ctx context.Context, cfg Config) (Summary, error) {
	var s Summary
	// The nodes' metrics are served with the TLS their devices see.
	nodeTLS, err := certs.Client(cfg.Fleet.CAFile, cfg.Fleet.Insecure)
	if err != nil {
		return s, err
	}
	var before NodeMetrics
	if len(cfg.NodeMetrics) > 0 {
		before = ScrapeNodes(ctx, cfg.NodeMetrics, nodeTLS)
	}

	var fleet devices
	if len(cfg.Devices) > 0 {
		if cfg.PerProcess > 0 && len(cfg.Devices) > cfg.PerProcess {
			if len(cfg.WorkerCommand) == 0 {
				return s, errors.New("more devices than one process holds, and no worker command")
			}
			w := NewWorkers(cfg.Fleet, cfg.Devices, cfg.PerProcess, cfg.WorkerCommand, cfg.Stderr, cfg.Log)
			s.Processes = w.Processes()
			fleet = w
		} else {
			f, err := NewFleet(cfg.Fleet, cfg.Devices, cfg.Log)
			if err != nil {
				return s, err
			}
			fleet = f
		}
	} else {
		fleet = noDevices{}
	}
	fleetCtx, stopFleet := context.WithCancel(context.WithoutCancel(ctx))
	defer stopFleet()
	fleetTask := actors.Go(func() error { return fleet.Run(fleetCtx) })
	// The fleet stops last, so that its sessions outlive the commands; its
	// final counts are the summary's, with the sessions open before it
	// stopped.
	stop := func() error {
		open := fleet.Counts().Open
		stopFleet()
		err := fleetTask.Wait()
		s.Devices = fleet.Counts()
		s.Devices.Open = open
		return err
	}

	rampStart := time.Now()
	if err := ramp(ctx, fleet, len(cfg.Devices), fleetTask, cfg.Progress); err != nil {
		return s, errors.Join(err, stop())
	}
	s.RampSeconds = time.Since(rampStart).Seconds()

	if cfg.Commands != nil {
		s.Commands, err = drive(ctx, *cfg.Commands, cfg, fleetTask)
	} else {
		err = hold(ctx, cfg, fleet, fleetTask)
	}
	if len(cfg.NodeMetrics) > 0 {
		after := ScrapeNodes(context.WithoutCancel(ctx), cfg.NodeMetrics, nodeTLS)
		after.Since(before)
		s.Nodes = &after
	}
	return s, errors.Join(err, stop())
}

// noDevices is the fleet of a run that only sends commands.
type noDevices struct{}

func (noDevices) Run(ctx context.Context) error { <-ctx.Done(); return nil }
func (noDevices) Counts() DeviceCounts          { return DeviceCounts{} }

// pollEvery is how often the progress is read and shown.
const pollEvery = 100 * time.Millisecond

// errFleetStopped means the fleet stopped before it was told to (a worker
// process died).
var errFleetStopped = errors.New("the devices stopped before the run ended")

// ramp waits for every device's first attempt to connect to end.
func ramp(ctx context.Context, fleet devices, n int, fleetTask *actors.Task, progress io.Writer) error {
	if n == 0 {
		return nil
	}
	bar := newBar(progress, int64(n), "connecting")
	defer bar.finish()
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for {
		c := fleet.Counts()
		bar.set(c.Ramped, fmt.Sprintf("connecting: %d open, %d failed", c.Open, c.Failed))
		if c.Ramped >= int64(n) {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-fleetTask.Done():
			return fmt.Errorf("%w: %v", errFleetStopped, fleetTask.Wait())
		case <-tick.C:
		}
	}
}

// hold keeps the devices connected for the duration, or until ctx ends.
func hold(ctx context.Context, cfg Config, fleet devices, fleetTask *actors.Task) error {
	var end <-chan time.Time
	if cfg.Duration > 0 {
		t := time.NewTimer(cfg.Duration)
		defer t.Stop()
		end = t.C
	}
	bar := newBar(cfg.Progress, durationSteps(cfg.Duration), "holding")
	defer bar.finish()
	start := time.Now()
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-end:
			return nil
		case <-fleetTask.Done():
			return fmt.Errorf("%w: %v", errFleetStopped, fleetTask.Wait())
		case <-tick.C:
			c := fleet.Counts()
			bar.set(int64(time.Since(start)/pollEvery), fmt.Sprintf("holding: %d open, %d disconnects", c.Open, c.Disconnects))
		}
	}
}

// drive sends commands for the warm-up and the duration.
func drive(ctx context.Context, cc CommandsConfig, cfg Config, fleetTask *actors.Task) (*CommandSummary, error) {
	cmds, err := NewCommands(cc)
	if err != nil {
		return nil, err
	}
	sending, stopSending := context.WithCancel(ctx)
	defer stopSending()
	task := actors.Go(func() error { return cmds.Run(sending, ctx) })

	sum := &CommandSummary{Mode: "closed", Concurrency: cc.Concurrency}
	if cc.Rate > 0 {
		sum.Mode, sum.TargetRate, sum.Concurrency = "open", cc.Rate, 0
	}
	bar := newBar(cfg.Progress, durationSteps(cfg.Warmup+cfg.Duration), "warming up")
	defer bar.finish()
	begin := time.Now()
	var start time.Time // of the measured window
	warmup := time.NewTimer(cfg.Warmup)
	defer warmup.Stop()
	var end <-chan time.Time // none with no duration: until ctx ends
	if cfg.Duration > 0 {
		t := time.NewTimer(cfg.Warmup + cfg.Duration)
		defer t.Stop()
		end = t.C
	}
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	var stopped error
wait:
	for {
		select {
		case <-ctx.Done():
			break wait
		case <-fleetTask.Done():
			stopped = fmt.Errorf("%w: %v", errFleetStopped, fleetTask.Wait())
			break wait
		case <-warmup.C:
			start = time.Now()
			cmds.Record()
		case <-end:
			break wait
		case <-tick.C:
			what := "warming up"
			if !start.IsZero() {
				c := cmds.Counts()
				what = fmt.Sprintf("%.0f/s, %d ok, %d failed, p99 %.1f ms",
					float64(c.Attempted)/time.Since(start).Seconds(), c.Succeeded, c.Failed, c.Latency.P99)
			}
			bar.set(int64(time.Since(begin)/pollEvery), what)
		}
	}
	stopSending()
	if !start.IsZero() {
		sum.Seconds = time.Since(start).Seconds()
	}
	_ = task.Wait() // the commands in flight end, or ctx abandons them
	sum.WarmupSeconds = cfg.Warmup.Seconds()
	sum.CommandCounts = cmds.Counts()
	if sum.Seconds > 0 {
		sum.Rate = float64(sum.Attempted) / sum.Seconds
		sum.SuccessRate = float64(sum.Succeeded) / sum.Seconds
	}
	if sum.Attempted > 0 {
		sum.SuccessRatio = float64(sum.Succeeded) / float64(sum.Attempted)
	}
	return sum, stopped
}

// durationSteps is a duration in progress steps (0: unknown, a spinner).
func durationSteps(d time.Duration) int64 {
	if d <= 0 {
		return -1
	}
	return int64(d / pollEvery)
}

// bar is a progress bar on a terminal, or nothing.
type bar struct{ pb *progressbar.ProgressBar }

func newBar(w io.Writer, max int64, what string) bar {
	if w == nil {
		return bar{}
	}
	return bar{progressbar.NewOptions64(max,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription(what),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(pollEvery),
		progressbar.OptionShowElapsedTimeOnFinish(),
		progressbar.OptionSetRenderBlankState(true),
		progressbar.OptionClearOnFinish(),
	)}
}

func (b bar) set(n int64, what string) {
	if b.pb == nil {
		return
	}
	b.pb.Describe(what)
	if m := b.pb.GetMax64(); m >= 0 {
		n = min(n, m)
	}
	_ = b.pb.Set64(n)
}

func (b bar) finish() {
	if b.pb == nil {
		return
	}
	_ = b.pb.Finish()
	_ = b.pb.Exit()
}
