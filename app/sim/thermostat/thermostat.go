// Package thermostat is the simulated device behind `switchboard device` and
// `switchboard dev`: a thermostat that reports its temperature and answers
// get_state, set_target and set_mode the way firmware would. It takes its
// target from the desired state's target_celsius (and mode, when given),
// and reports celsius, mode and target_celsius as its reported state.
package thermostat

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/switchboard-iot/switchboard/device"
)

// State is what get_state returns.
type State struct {
	Celsius float64 `json:"celsius"`
	Target  float64 `json:"target"`
	Mode    string  `json:"mode"` // heat, cool or off
}

// Thermostat is one simulated device.
type Thermostat struct {
	client *device.Client

	mu    sync.Mutex // guards state
	state State
}

// New makes a thermostat that connects with cfg.
func New(cfg device.Config) *Thermostat {
	t := &Thermostat{
		client: device.New(cfg),
		state:  State{Celsius: 18 + rand.Float64()*4, Target: 20, Mode: "heat"},
	}
	t.client.Handle("get_state", func(context.Context, json.RawMessage) (any, error) { return t.snapshot(), nil })
	t.client.Handle("set_target", t.setTarget)
	t.client.Handle("set_mode", t.setMode)
	t.client.OnDesired(t.applyDesired)
	return t
}

// applyDesired takes the target (5-30°C) and mode of the desired state,
// and reports what it applied. A value out of range or of the wrong kind
// is left out: the delta then shows it was not applied.
func (t *Thermostat) applyDesired(desired json.RawMessage, _ int64) {
	var d struct {
		Target *float64 `json:"target_celsius"`
		Mode   *string  `json:"mode"`
	}
	_ = json.Unmarshal(desired, &d) // a field of another kind stays nil
	t.mu.Lock()
	if d.Target != nil && *d.Target >= 5 && *d.Target <= 30 {
		t.state.Target = *d.Target
	}
	if d.Mode != nil && (*d.Mode == "heat" || *d.Mode == "cool" || *d.Mode == "off") {
		t.state.Mode = *d.Mode
	}
	state := t.state
	t.mu.Unlock()
	_ = t.client.Report(reported(state))
}

// reported is the reported-state patch of a state.
func reported(s State) map[string]any {
	return map[string]any{"celsius": math.Round(s.Celsius*10) / 10, "mode": s.Mode, "target_celsius": s.Target}
}

func (t *Thermostat) snapshot() State {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.state
}

func (t *Thermostat) setTarget(_ context.Context, args json.RawMessage) (any, error) {
	var a struct {
		Celsius *float64 `json:"celsius"`
	}
	if err := json.Unmarshal(args, &a); err != nil || a.Celsius == nil {
		return nil, errors.New(`want args {"celsius": <number>}`)
	}
	if *a.Celsius < 5 || *a.Celsius > 30 {
		return nil, fmt.Errorf("target %.1f°C is outside 5-30°C", *a.Celsius)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.state.Target = *a.Celsius
	_ = t.client.Report(reported(t.state))
	return t.state, nil
}

func (t *Thermostat) setMode(_ context.Context, args json.RawMessage) (any, error) {
	var a struct {
		Mode string `json:"mode"`
	}
	_ = json.Unmarshal(args, &a)
	switch a.Mode {
	case "heat", "cool", "off":
	default:
		return nil, errors.New(`want args {"mode": "heat" | "cool" | "off"}`)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.state.Mode = a.Mode
	_ = t.client.Report(reported(t.state))
	return t.state, nil
}

// Run keeps the thermostat connected and, every telemetry interval (none if
// zero), drifts its temperature toward the target and reports it.
func (t *Thermostat) Run(ctx context.Context, telemetry time.Duration) error {
	if telemetry > 0 {
		reportCtx, cancel := context.WithCancel(ctx)
		var reporter sync.WaitGroup
		reporter.Go(func() { t.report(reportCtx, telemetry) })
		defer reporter.Wait()
		defer cancel()
	}
	return t.client.Run(ctx)
}

func (t *Thermostat) report(ctx context.Context, every time.Duration) {
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		t.mu.Lock()
		if t.state.Mode != "off" {
			t.state.Celsius += (t.state.Target - t.state.Celsius) * 0.2
		}
		t.state.Celsius += (rand.Float64() - 0.5) * 0.1
		state := t.state
		t.mu.Unlock()
		// Not connected: skip this reading, and its report (reports are
		// kept for the next session, and a stale temperature is not worth it).
		if t.client.Event(ctx, "telemetry", state) == nil {
			_ = t.client.Report(reported(state))
		}
	}
}
