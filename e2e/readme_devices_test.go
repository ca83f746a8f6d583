package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/db"
)

// TestReadmeDevices: the README's "Writing a device" shows the three
// minimal devices whole (each block is its file), and each, started by its
// line of the README's run block as printed, connects to a real node,
// answers a command and reports the desired state it was given.
//
// Not parallel: the TypeScript line runs npm ci in sdk/js, as
// TestConformance's build does, and the two must not share node_modules
// at once (the parallel tests start after this one).
func TestReadmeDevices(t *testing.T) {
	section := docSection(t, "README.md", "## Writing a device")
	blocks := fencedBlocks(section)
	devices := []struct {
		lang, file, comment string
		skip                func(t *testing.T)
	}{
		{"go", "device/examples/minimal/main.go", "# Go", nil},
		{"js", "sdk/js/examples/minimal.mjs", "# TypeScript", needNPM},
		{"python", "sdk/python/examples/minimal.py", "# Python", needPythonSDK},
	}
	var run string
	for _, b := range blocks {
		if b.lang == "sh" && strings.Contains(b.body, "go run ./device/examples/minimal") {
			run = b.body
		}
	}
	if run == "" {
		t.Fatal(`README.md's "Writing a device" has no sh block that runs the devices`)
	}

	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", nil)
	ed := sys.StartEdge(t, "edge-a", nil)
	sb := cliEdge{t, ed.URL, sys.APIKey(t, db.ScopeCommands, db.ScopeRead)}
	ca := filepath.Join(t.TempDir(), "conn.pem")
	if err := os.WriteFile(ca, node.PEM, 0o600); err != nil {
		t.Fatal(err)
	}

	for _, d := range devices {
		t.Run(d.lang, func(t *testing.T) {
			src, err := os.ReadFile(filepath.Join(repoRoot, d.file))
			if err != nil {
				t.Fatal(err)
			}
			shown := false
			for _, b := range blocks {
				shown = shown || (b.lang == d.lang && b.body == string(src))
			}
			if !shown {
				t.Fatalf("README.md's %s block is not %s as it is", d.lang, d.file)
			}
			line := ""
			for l := range strings.Lines(run) {
				if cmd, comment, ok := strings.Cut(l, " # "); ok && strings.HasPrefix("# "+strings.TrimSpace(comment), d.comment) {
					line = strings.TrimSpace(cmd)
				}
			}
			if line == "" {
				t.Fatalf("README.md's run block has no line commented %q", d.comment)
			}
			if d.skip != nil {
				d.skip(t)
			}
			id := "readme-" + d.lang
			secret := sys.AddDevice(t, id)
			startShell(t, line, "SWITCHBOARD_URL="+node.URL, "SWITCHBOARD_DEVICE_ID="+id,
				"SWITCHBOARD_DEVICE_SECRET="+secret, "SWITCHBOARD_CA="+ca)

			// Go builds it, npm installs and compiles: allow for both.
			testsys.EventuallyWithin(t, 3*time.Minute, id+" to connect", func() bool {
				var online bool
				err := sys.Pool.QueryRow(t.Context(), `SELECT EXISTS (SELECT FROM presence_live WHERE device_id = $1)`, id).Scan(&online)
				return err == nil && online
			})
			c := jsonOut[command](sb, "", "commands", "send", id, "echo", "-args", `{"hi":1}`, "-wait", "10s", "-json")
			if c.Status != "done" || compact(c.Result) != `{"echo":{"hi":1}}` {
				t.Fatalf("echo: %+v", c)
			}
			sb.must("", "state", "patch", id, `{"target_celsius":21}`)
			testsys.Eventually(t, id+" to report its desired state", func() bool {
				var st struct{ Reported, Delta json.RawMessage }
				out, _ := sb.must("", "state", "get", id, "-json")
				return json.Unmarshal([]byte(out), &st) == nil && compact(st.Reported) == `{"target_celsius":21}` && compact(st.Delta) == `{}`
			})
		})
	}
}

// startShell runs a README line with bash in the repository's root, with
// the environment and these variables, until the test ends (then SIGTERM
// to its process group, SIGKILL if it lingers).
func startShell(t *testing.T, line string, env ...string) {
	t.Helper()
	sh := exec.Command("bash", "-c", line)
	sh.Dir = repoRoot
	sh.Env = append(os.Environ(), env...)
	sh.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out := &testsys.Output{}
	sh.Stdout, sh.Stderr = out, out
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = sh.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-sh.Process.Pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-sh.Process.Pid, syscall.SIGKILL)
			<-done
		}
		if t.Failed() {
			t.Logf("%s:\n%s", line, out.String())
		}
	})
}

// needNPM skips without npm, as TestConformance's TypeScript case does.
func needNPM(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("npm"); err != nil {
		t.Skip("npm not found: install Node.js 18+ and npm to run the TypeScript device (scripts/test does, as root)")
	}
}

// block is a fenced code block: its info string's first word and its text.
type block struct{ lang, body string }

// fencedBlocks returns the ``` blocks of Markdown text, in order.
func fencedBlocks(text string) []block {
	var out []block
	var cur *block
	for l := range strings.Lines(text) {
		trimmed := strings.TrimSpace(l)
		switch {
		case cur == nil && strings.HasPrefix(trimmed, "```"):
			cur = &block{lang: strings.TrimPrefix(trimmed, "```")}
		case cur != nil && trimmed == "```":
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			cur.body += l
		}
	}
	return out
}
