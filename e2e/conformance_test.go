package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-iot/switchboard/app/cli"
	"github.com/switchboard-iot/switchboard/app/conformance"
	"github.com/switchboard-iot/switchboard/db/dbtest"
)

// The conformance suite, as "switchboard conformance" runs it, passes the
// conformance device of every SDK in the repository (Go, TypeScript,
// Python) in every scenario, and fails a device broken on purpose in
// exactly the scenarios its faults break: the suite can tell.
func TestConformance(t *testing.T) {
	t.Parallel()
	goDevice := buildConformanceDevice(t)
	cases := []struct {
		name     string
		cmd      string   // run in the repository's root folder
		run      string   // -run: the scenarios ("": all)
		wantFail []string // the scenarios that must fail; all others pass
		prepare  func(t *testing.T)
	}{
		{name: "go", cmd: goDevice},
		{name: "typescript", cmd: "node sdk/js/dist/examples/conformance.js", prepare: buildJSSDK},
		{name: "python", cmd: pythonSDK + " sdk/python/examples/conformance.py", prepare: needPythonSDK},
		{
			// Each fault fails its scenario; command shows the rest of
			// the device still works.
			name:     "go-broken",
			cmd:      goDevice + " -broken nojitter,nodedup,nopin,nowatchdog",
			run:      "^(command|redelivery|reconnect-jitter|rate-limited-4029|silent-node|pin)$",
			wantFail: []string{"pin", "rate-limited-4029", "reconnect-jitter", "redelivery", "silent-node"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.prepare != nil {
				tc.prepare(t)
			}
			rep, err := runConformance(t, tc.cmd, tc.run)
			var failed []string
			for _, r := range rep.Scenarios {
				t.Logf("%s %s (%.1fs): %s", map[bool]string{true: "PASS", false: "FAIL"}[r.Pass], r.Name, r.Seconds, r.Detail)
				if !r.Pass {
					failed = append(failed, r.Name)
					if !slices.Contains(tc.wantFail, r.Name) {
						t.Logf("%s: the devices' output ends:\n%s", r.Name, r.Log)
					}
				}
			}
			slices.Sort(failed)
			if !slices.Equal(failed, tc.wantFail) {
				t.Fatalf("failed scenarios %v, want %v", failed, tc.wantFail)
			}
			if want := map[bool]int{true: cli.ExitOK, false: cli.ExitNotDone}[len(tc.wantFail) == 0]; cli.ExitCode(err) != want {
				t.Fatalf("exit code %d (%v), want %d", cli.ExitCode(err), err, want)
			}
			if tc.run == "" && len(rep.Scenarios) != len(conformance.Names()) {
				t.Fatalf("%d scenarios ran, want all %d", len(rep.Scenarios), len(conformance.Names()))
			}
		})
	}
}

// runConformance runs "switchboard conformance -json" in this process on a
// database of the test's own, the device command in the repository's root
// folder, and returns its report and error.
func runConformance(t *testing.T, deviceCmd, run string) (conformance.Report, error) {
	t.Helper()
	args := []string{"conformance", "-json", "-device-cmd", deviceCmd, "-device-dir", repoRoot, "-database-url", dbtest.NewDatabase(t)}
	if run != "" {
		args = append(args, "-run", run)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	err := cli.Run(ctx, args, func(string) string { return "" }, cli.IO{Stdin: strings.NewReader(""), Stdout: &stdout, Stderr: &stderr})
	var rep conformance.Report
	if jerr := json.Unmarshal(stdout.Bytes(), &rep); jerr != nil {
		t.Fatalf("switchboard conformance: %v; no JSON report (%v):\n%s\n%s", err, jerr, stdout.String(), stderr.String())
	}
	return rep, err
}

// buildConformanceDevice builds the Go SDK's conformance device (without
// the race detector: the suite runs twenty of them at once).
func buildConformanceDevice(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "conformance-device")
	if out, err := exec.Command("go", "build", "-o", bin, "../device/examples/conformance").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// buildJSSDK installs the TypeScript SDK's locked dependencies and compiles
// it (sdk/js/dist), as sdk/js/test.sh does. Without npm the case is
// skipped, and says so: scripts/test installs Node.js (ensure_node).
func buildJSSDK(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("npm"); err != nil {
		t.Skip("npm not found: install Node.js 18+ and npm to test the TypeScript SDK (scripts/test does, as root)")
	}
	for _, args := range [][]string{{"ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"}, {"run", "--silent", "build"}} {
		cmd := exec.Command("npm", args...)
		cmd.Dir = filepath.Join(repoRoot, "sdk", "js")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("npm %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// pythonSDK is the Python the SDK is tested with: Debian's, whose
// python3-websockets package is the only websockets installable here.
const pythonSDK = "/usr/bin/python3"

// needPythonSDK skips the case without that Python and its websockets:
// scripts/test installs them, as root (ensure_python_websockets).
func needPythonSDK(t *testing.T) {
	t.Helper()
	if out, err := exec.Command(pythonSDK, "-c", "import sys, websockets; sys.exit(sys.version_info < (3, 11))").CombinedOutput(); err != nil {
		t.Skipf("%s with websockets (Python 3.11+) not found: apt-get install python3-websockets to test the Python SDK (scripts/test does, as root): %v %s",
			pythonSDK, err, out)
	}
}
