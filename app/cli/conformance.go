package cli

import (
	"context"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"sync"

	"github.com/switchboard-iot/switchboard/app/conformance"
)

// conformanceFlags are the flags of "conformance".
type conformanceFlags struct {
	deviceCmd, deviceDir, run, databaseURL *string
	jitterDevices, parallel                *int
	json, keep                             *bool
}

func defineConformanceFlags(f flags) conformanceFlags {
	return conformanceFlags{
		deviceCmd: f.string("device-cmd", "", "the device implementation to test: a command line, run with sh -c once per device instance, "+
			"with SWITCHBOARD_URL, SWITCHBOARD_DEVICE_ID, SWITCHBOARD_DEVICE_SECRET, SWITCHBOARD_CA… set (docs/conformance.md)"),
		deviceDir: f.string("device-dir", "", "working folder of the device command (\"\": this one)"),
		run:       f.string("run", "", "run only the scenarios whose names match this regular expression (\"\": all of them: "+strings.Join(conformance.Names(), ", ")+")"),
		// Never from DATABASE_URL: the suite fills the database it is given.
		databaseURL:   f.string("database-url", "", "an empty database of the suite's own to use (\"\": start a private PostgreSQL); never a production one"),
		jitterDevices: f.int("jitter-devices", 20, "device instances the reconnect-jitter scenario runs"),
		parallel:      f.int("parallel", 1, "scenarios run at once"),
		json:          f.Bool("json", false, "print the report as JSON on stdout (progress goes to stderr)"),
		keep:          f.Bool("keep", false, "keep the work folder (database, system log, each device's output) and print where it is"),
	}
}

// runConformance runs the conformance suite against a device command and
// prints a line per scenario; it fails (ExitNotDone) when a scenario does.
func runConformance(ctx context.Context, cf conformanceFlags, c call) error {
	if strings.TrimSpace(*cf.deviceCmd) == "" {
		fmt.Fprintln(c.Stderr, "conformance: -device-cmd is required, e.g. -device-cmd \"node sdk/js/dist/examples/conformance.js\"")
		return ErrUsage
	}
	cfg := conformance.Config{
		DeviceCmd:     *cf.deviceCmd,
		WorkDir:       *cf.deviceDir,
		DatabaseURL:   *cf.databaseURL,
		JitterDevices: *cf.jitterDevices,
		Parallel:      *cf.parallel,
		Keep:          *cf.keep,
	}
	if *cf.run != "" {
		re, err := regexp.Compile(*cf.run)
		if err != nil {
			return fmt.Errorf("-run: %w", err)
		}
		if !slices.ContainsFunc(conformance.Names(), re.MatchString) {
			return fmt.Errorf("-run %q matches no scenario (%s)", *cf.run, strings.Join(conformance.Names(), ", "))
		}
		cfg.Run = re
	}
	// Progress: a line per scenario as it ends, on stdout for people, on
	// stderr beside -json's report.
	progress := c.Stdout
	if *cf.json {
		progress = c.Stderr
	}
	var mu sync.Mutex
	cfg.Progress = func(r conformance.Result) {
		mu.Lock()
		defer mu.Unlock()
		writeResult(progress, r)
	}
	fmt.Fprintf(c.Stderr, "conformance: starting a system and running %q\n", cfg.DeviceCmd)
	rep, err := conformance.Run(ctx, cfg)
	if err != nil && rep == nil {
		return err
	}
	if *cf.json {
		if err := writeJSONDoc(c.Stdout, rep); err != nil {
			return err
		}
	}
	fmt.Fprintf(progress, "%d passed, %d failed in %.0fs\n", rep.Passed, rep.Failed, rep.Seconds)
	if rep.Dir != "" {
		fmt.Fprintf(progress, "work folder (logs/ has each device's output): %s\n", rep.Dir)
	}
	if err != nil {
		return err
	}
	if rep.Failed > 0 {
		return &outcomeError{fmt.Sprintf("conformance: %d of %d scenarios failed", rep.Failed, rep.Failed+rep.Passed), ExitNotDone}
	}
	return nil
}

// writeResult prints one scenario's line, and for a failure the end of its
// devices' output, indented.
func writeResult(w io.Writer, r conformance.Result) {
	verdict := "PASS"
	if !r.Pass {
		verdict = "FAIL"
	}
	fmt.Fprintf(w, "%s  %-18s %5.1fs  %s\n", verdict, r.Name, r.Seconds, r.Detail)
	if r.Log != "" {
		for line := range strings.Lines(r.Log) {
			fmt.Fprintf(w, "        | %s", line)
		}
		fmt.Fprintln(w)
	}
}
