package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-iot/switchboard/app/cli"
	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/maintenance"
)

// "jobs start -desired" makes a state job through a real edge, "jobs
// get" and "jobs targets" show what it did; a command's flags beside
// -desired, or a NAME too, are refused before anything is sent.
func TestJobsStartDesired(t *testing.T) {
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-cli", nil, func(cfg *maintenance.Config) { cfg.JobInterval = 50 * time.Millisecond })
	sys.AddDevice(t, "dev-1")
	sys.AddDevice(t, "dev-2")
	env := map[string]string{"SWITCHBOARD_EDGE": e.URL, "SWITCHBOARD_KEY": sys.APIKey(t)}
	run := func(args ...string) (string, string, error) {
		var out, errOut bytes.Buffer
		err := cli.Run(context.Background(), args, func(k string) string { return env[k] },
			cli.IO{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errOut})
		return out.String(), errOut.String(), err
	}
	out, said, err := run("jobs", "start", "-desired", `{"firmware":"2.4.1"}`, "-devices", "dev-1,dev-2", "-rate", "10", "-json")
	if err != nil {
		t.Fatalf("jobs start -desired: %v (%s)", err, said)
	}
	var j db.Job
	if err := json.Unmarshal([]byte(out), &j); err != nil || j.Kind != db.KindState || j.Total != 2 {
		t.Fatalf("jobs start -desired -json printed %s (%v)", out, err)
	}
	if !strings.Contains(said, "(desired state)") {
		t.Errorf("jobs start said %q", said)
	}
	testsys.Eventually(t, "the job to end", func() bool {
		got, err := sys.Store.Job(t.Context(), j.ID)
		return err == nil && got.Status == db.JobDone
	})
	view, _, err := run("jobs", "get", j.ID.String())
	if err != nil || !strings.Contains(view, `{"firmware":"2.4.1"}`) || !strings.Contains(view, "patched 2") {
		t.Errorf("jobs get: %v\n%s", err, view)
	}
	out, _, err = run("jobs", "targets", j.ID.String(), "-json")
	var targets []db.JobTarget
	if err != nil || json.Unmarshal([]byte(out), &targets) != nil || len(targets) != 2 || targets[0].Outcome != db.OutcomePatched {
		t.Errorf("jobs targets -json: %v\n%s", err, out)
	}
	table, _, err := run("jobs", "targets", j.ID.String(), "-outcome", "patched")
	if err != nil || !strings.Contains(table, "dev-2") || !strings.Contains(table, "CONVERGED") {
		t.Errorf("jobs targets: %v\n%s", err, table)
	}
	for _, args := range [][]string{
		{"jobs", "start", "reboot", "-desired", `{"a":1}`, "-all"},
		{"jobs", "start", "-desired", `{"a":1}`, "-retry", "2", "-all"},
		{"jobs", "start", "-desired", `{"a":1}`, "-args", `{}`, "-all"},
		{"jobs", "start", "-desired", `[1]`, "-all"},
		{"jobs", "start", "-all"},
	} {
		if _, _, err := run(args...); err == nil {
			t.Errorf("%q: no error", args)
		}
	}
	if n := len(must(sys.Store.Jobs(t.Context(), "", [16]byte{}, 10))); n != 1 {
		t.Errorf("%d jobs stored, want the one", n)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
