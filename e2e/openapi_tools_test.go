package e2e

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-iot/switchboard/app/testsys"
)

// The tools that read the API's description, pinned: a new release is
// a change to review, not a surprise in CI. npx fetches each once into
// npm's cache (~/.npm), outside the repository.
const (
	redoclyCLI        = "@redocly/cli@2.77.0"
	openAPITypeScript = "openapi-typescript@7.13.0"
	typeScript        = "typescript@5.9.3" // openapi-typescript 7 wants TypeScript 5
)

// TestOpenAPITools runs what API clients run on GET /v1/openapi.json, as a
// real edge serves it: Redocly's linter (recommended rules: no error, no
// warning), then openapi-typescript, whose types must let a client build
// a command with free args ({"celsius": 21.5}) and read its result under
// tsc --strict (testdata/openapi-client/client.ts), and refuse args that
// are not an object (wrong.ts). It needs npm (scripts/test installs it:
// ensure_node) and the npm registry, or npm's cache.
func TestOpenAPITools(t *testing.T) {
	if _, err := exec.LookPath("npx"); err != nil {
		t.Skip("npx not found: install Node.js and npm (scripts/test does, with ensure_node) to lint the OpenAPI description and type-check a generated client")
	}
	// Redocly CLI 2 runs on Node.js 20.19 or newer: an older one is a
	// machine to fix, not a reason to pass.
	out, err := exec.Command("node", "-p", "process.versions.node").Output()
	if err != nil {
		t.Fatalf("node: %v", err)
	}
	version := strings.TrimSpace(string(out))
	if major, rest, _ := strings.Cut(version, "."); versionBelow(major, 20) || major == "20" && versionBelow(rest, 19) {
		t.Fatalf("Node.js %s: the pinned tools want 20.19 or newer (https://nodejs.org/en/download)", version)
	}
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", nil)
	dir := t.TempDir()

	resp, err := http.Get(e.URL + "/v1/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v1/openapi.json: %d %v", resp.StatusCode, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "openapi.json"), doc, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"client.ts", "wrong.ts"} {
		src, err := os.ReadFile(filepath.Join("testdata", "openapi-client", name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), src, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// The first run downloads the tools.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	npx := func(args ...string) (stdout string, err error) {
		cmd := exec.CommandContext(ctx, "npx", append([]string{"--yes"}, args...)...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(),
			"REDOCLY_TELEMETRY=off", "REDOCLY_SUPPRESS_UPDATE_NOTICE=true",
			"NO_UPDATE_NOTIFIER=1", "npm_config_update_notifier=false", "npm_config_fund=false", "npm_config_audit=false")
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		if err := cmd.Run(); err != nil {
			return out.String(), &toolError{err: err, output: out.String() + errOut.String()}
		}
		return out.String(), nil
	}

	// Lint: --format=json gives the totals (the text format also prints
	// banners, such as Node.js deprecation notices, that are not findings).
	lintOut, lintErr := npx(redoclyCLI, "lint", "--format=json", "openapi.json")
	var lint struct {
		Totals   struct{ Errors, Warnings int }
		Problems []struct {
			RuleID   string `json:"ruleId"`
			Severity string
			Message  string
			Location []struct{ Pointer string }
		}
	}
	if err := json.Unmarshal([]byte(lintOut), &lint); err != nil {
		t.Fatalf("redocly lint: %v; output %s", cmp.Or(lintErr, err), lintOut)
	}
	for _, p := range lint.Problems {
		at := ""
		if len(p.Location) > 0 {
			at = p.Location[0].Pointer
		}
		t.Errorf("redocly lint: %s %s at %s: %s", p.Severity, p.RuleID, at, p.Message)
	}
	if lintErr != nil || lint.Totals.Errors+lint.Totals.Warnings > 0 {
		t.Errorf("redocly lint: %d errors, %d warnings (%v)", lint.Totals.Errors, lint.Totals.Warnings, lintErr)
	}

	if _, err := npx("-p", openAPITypeScript, "-p", typeScript, "openapi-typescript", "openapi.json", "-o", "api.d.ts"); err != nil {
		t.Fatalf("openapi-typescript: %v", err)
	}
	if _, err := npx("-p", typeScript, "tsc", "--strict", "--noEmit", "client.ts"); err != nil {
		t.Errorf("tsc --strict on a client of the generated types: %v", err)
	}
	_, err = npx("-p", typeScript, "tsc", "--strict", "--noEmit", "wrong.ts")
	var te *toolError
	if !errors.As(err, &te) || !strings.Contains(te.output, "wrong.ts(") || !strings.Contains(te.output, "TS2322") {
		t.Errorf("tsc --strict accepted args that are not an object, or failed otherwise: %v", err)
	}
}

// toolError is a tool that ended in failure, with what it printed.
type toolError struct {
	err    error
	output string
}

func (e *toolError) Error() string { return e.err.Error() + "\n" + e.output }

// versionBelow reports whether the leading number of v ("19.2") is below n.
func versionBelow(v string, n int) bool {
	head, _, _ := strings.Cut(v, ".")
	got, err := strconv.Atoi(head)
	return err != nil || got < n
}
