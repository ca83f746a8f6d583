package e2e

// The README's Fly steps, run as printed by bash against a local stand-in:
// a "fly" that records secrets, and a deploy that runs fly.toml's
// release_command and process commands with the built binary (the
// production image's entrypoint), with fly.toml's [env] and the secrets.
// So a first command reaches a device with no psql and no shell on a
// Machine, and the bootstrap key is tested as operators will use it.

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/db/dbtest"
)

// flyStandIn is what the README's "fly" commands do here: they print what
// they stand for, and "secrets set" and "secrets unset" keep the app's
// secrets in a file, one NAME=VALUE a line, for the deploy to read.
const flyStandIn = `#!/usr/bin/env bash
set -euo pipefail
echo "fly $* (stand-in)"
case "$1 ${2:-}" in
"secrets set")
	shift 2
	for kv in "$@"; do [[ $kv == --* ]] || printf '%s\n' "$kv" >>"$FLY_STANDIN/secrets"; done ;;
"secrets unset")
	shift 2
	for name in "$@"; do grep -v "^$name=" "$FLY_STANDIN/secrets" >"$FLY_STANDIN/secrets.new" || true; mv "$FLY_STANDIN/secrets.new" "$FLY_STANDIN/secrets"; done ;;
esac
`

// flyToml is the part of fly.toml a deploy reads: each section's
// key = "value" lines.
func flyToml(t *testing.T) map[string]map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "fly.toml"))
	if err != nil {
		t.Fatal(err)
	}
	pair := regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"([^"]*)"\s*(#.*)?$`)
	out := map[string]map[string]string{}
	section := ""
	for line := range strings.Lines(string(b)) {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "[") {
			section = strings.Trim(line, "[]")
			continue
		}
		if m := pair.FindStringSubmatch(line); m != nil {
			if out[section] == nil {
				out[section] = map[string]string{}
			}
			out[section][m[1]] = m[2]
		}
	}
	return out
}

// deploy does what "fly deploy" does with fly.toml: the release command,
// then one Machine of each process group, with [env] and the secrets.
// Local stand-ins replace what only Fly has: loopback ports for Fly's
// proxy, the test's database for Managed Postgres, a self-signed node
// certificate (written to cert) for Let's Encrypt's.
func deploy(t *testing.T, bin, secretsFile, databaseURL, cert string) (api, conn string) {
	t.Helper()
	toml := flyToml(t)
	env := []string{"FLY_APP_NAME=my-switchboard", "FLY_REGION=ams"}
	for k, v := range toml["env"] {
		env = append(env, k+"="+v)
	}
	b, err := os.ReadFile(secretsFile)
	if err != nil {
		t.Fatalf("fly deploy without secrets: %v", err)
	}
	for _, kv := range strings.Fields(string(b)) {
		env = append(env, kv)
	}
	api, conn, connOps := loopback(t), loopback(t), loopback(t)
	env = append(env, "DATABASE_URL="+databaseURL, // the stand-in's, whatever the secret says
		"EDGE_LISTEN="+api, "EDGE_OPS_LISTEN="+loopback(t), "EDGE_ID=fly-edge",
		"CONN_LISTEN="+conn, "CONN_OPS_LISTEN="+connOps, "NODE_ID=fly-conn", "CONN_TLS=self-signed", "CONN_CERT_OUT="+cert)

	run := func(command string) []string {
		args := strings.Fields(command)
		if len(args) < 2 || args[0] != "switchboard" {
			t.Fatalf("fly.toml command %q: want switchboard and a subcommand", command)
		}
		return args[1:]
	}
	release := toml["deploy"]["release_command"]
	output(t, bin, env, "", run(release)...)
	edgeProc := start(t, bin, "fly edge", env, run(toml["processes"]["edge"])...)
	connProc := start(t, bin, "fly conn", env, run(toml["processes"]["conn"])...)
	edgeProc.ready(t, "http://"+api+"/readyz")
	connProc.ready(t, "http://"+connOps+"/readyz")
	return "http://" + api, "wss://" + conn + "/v1/connect"
}

func TestFlySteps(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	for _, tool := range []string{"bash", "curl", "jq", "openssl", "sha256sum"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("the README's Fly steps use %s, which is not installed", tool)
		}
	}
	t.Parallel()
	bin := binary(t)
	dir := t.TempDir()
	standIn := filepath.Join(dir, "bin")
	if err := os.Mkdir(standIn, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(standIn, "fly"), []byte(flyStandIn), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(bin, filepath.Join(standIn, "switchboard")); err != nil {
		t.Fatal(err)
	}

	// The README's block, split where it deploys.
	block := docSection(t, "README.md", "## Deploying on Fly")
	_, block, ok := strings.Cut(block, "```sh\n")
	block, _, ok2 := strings.Cut(block, "```")
	if !ok || !ok2 {
		t.Fatal("README.md's Deploying on Fly has no ```sh block")
	}
	before, after, ok := strings.Cut(block, "\nfly deploy")
	if !ok {
		t.Fatal("README.md's Fly steps never run fly deploy")
	}
	_, after, _ = strings.Cut(after, "\n") // the rest of the deploy's line

	// Bash reads the steps from a pipe, so that it waits, with its
	// variables, while the stand-in deploys.
	cert := filepath.Join(dir, "conn.pem")
	sh := exec.Command("bash")
	sh.Env = []string{"PATH=" + standIn + ":" + os.Getenv("PATH"), "HOME=" + dir, "FLY_STANDIN=" + dir, "DEVICE_CA=" + cert, "LOG_LEVEL=warn"}
	sh.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // its background device goes with it
	stdin, err := sh.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := sh.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &testsys.Output{} // bash's, and its background device's
	sh.Stderr = stderr
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		exited <- sh.Wait()
	}()
	t.Cleanup(func() {
		_ = syscall.Kill(-sh.Process.Pid, syscall.SIGKILL)
		stdin.Close()
		for range lines {
		}
		<-exited
	})
	var said []string // what the steps printed
	readUntil := func(marker string) {
		t.Helper()
		timeout := time.After(2 * time.Minute)
		for {
			select {
			case l, open := <-lines:
				if !open {
					t.Fatalf("the steps ended before %q:\n%s\n%s", marker, strings.Join(said, "\n"), stderr.String())
				}
				if l == marker {
					return
				}
				said = append(said, l)
			case <-timeout:
				t.Fatalf("no %q within 2 minutes:\n%s\n%s", marker, strings.Join(said, "\n"), stderr.String())
			}
		}
	}
	write := func(script string) {
		t.Helper()
		if _, err := io.WriteString(stdin, script); err != nil {
			t.Fatal(err)
		}
	}

	write("set -euo pipefail\n" + before + "\necho __deploy__\n")
	readUntil("__deploy__")
	api, conn := deploy(t, bin, filepath.Join(dir, "secrets"), dbtest.NewEmptyDatabase(t), cert)
	for placeholder, local := range map[string]string{"https://my-switchboard.fly.dev": api, "wss://conn.example.com:8443/v1/connect": conn} {
		if !strings.Contains(after, placeholder) {
			t.Fatalf("the README's steps after the deploy do not use %s", placeholder)
		}
		after = strings.ReplaceAll(after, placeholder, local)
	}
	write(after + "\necho __done__\n")
	readUntil("__done__")

	// The first command's answer, from the thermostat; the bootstrap key
	// retired; the secrets left as a deployment's should be.
	out := strings.Join(said, "\n")
	if !regexp.MustCompile(`"device_id":"kitchen-1","name":"get_state",.*"status":"done","ok":true,"result":\{"mode"`).MatchString(out) {
		t.Fatalf("the steps printed no answer from kitchen-1:\n%s\n%s", out, stderr.String())
	}
	if !regexp.MustCompile(`"name":"bootstrap".*"revoked_at":"`).MatchString(out) {
		t.Errorf("the bootstrap key was not revoked:\n%s", out)
	}
	secrets, err := os.ReadFile(filepath.Join(dir, "secrets"))
	if err != nil || !strings.HasPrefix(string(secrets), "DATABASE_URL=") || strings.Contains(string(secrets), "BOOTSTRAP") {
		t.Errorf("secrets left: %q %v; want DATABASE_URL alone", secrets, err)
	}
	if strings.Contains(out+stderr.String(), "sbk_") {
		t.Errorf("a key was printed:\n%s\n%s", out, stderr.String())
	}
}

// flyService is one [[services]] of fly.toml: its own keys, and its
// sub-tables ([[services.ports]], [[services.http_checks]], …) by name,
// with values as written, strings unquoted.
type flyService struct {
	keys   map[string]string
	tables map[string][]map[string]string
}

// flyServices reads fly.toml's [[services]], enough of TOML for them.
func flyServices(t *testing.T) []*flyService {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "fly.toml"))
	if err != nil {
		t.Fatal(err)
	}
	pair := regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*(#.*)?$`)
	var out []*flyService
	var cur *flyService
	var table map[string]string // the sub-table lines go to, or nil for the service's own
	for line := range strings.Lines(string(b)) {
		line = strings.TrimSpace(line)
		switch {
		case line == "[[services]]":
			cur = &flyService{keys: map[string]string{}, tables: map[string][]map[string]string{}}
			out, table = append(out, cur), nil
		case strings.HasPrefix(line, "[") && cur != nil && strings.HasPrefix(strings.Trim(line, "[]"), "services."):
			name := strings.TrimPrefix(strings.Trim(line, "[]"), "services.")
			table = map[string]string{}
			cur.tables[name] = append(cur.tables[name], table)
		case strings.HasPrefix(line, "["):
			cur, table = nil, nil
		case cur != nil:
			if m := pair.FindStringSubmatch(line); m != nil {
				v := strings.Trim(m[2], `"`)
				if table != nil {
					table[m[1]] = v
				} else {
					cur.keys[m[1]] = v
				}
			}
		}
	}
	return out
}

// flyCheck makes an http_check as Fly's checker does: straight to the
// Machine's internal port (addr), no proxy in between, so no PROXY header
// and no X-Forwarded-Proto; over TLS with the check's name, verifying the
// certificate unless it says not to. It returns the status, or the error.
func flyCheck(check map[string]string, addr string) (int, error) {
	scheme := check["protocol"]
	if scheme == "" {
		scheme = "http"
	}
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		TLSClientConfig:   &tls.Config{ServerName: check["tls_server_name"], InsecureSkipVerify: check["tls_skip_verify"] == "true"},
	}}
	req, err := http.NewRequest(strings.ToUpper(check["method"]), scheme+"://"+addr+check["path"], nil)
	if err != nil {
		return 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// TestFlyChecks: both process groups are checked on /readyz, so Fly's
// proxy routes devices and clients only to a Machine that can serve them;
// and the checks, made as Fly makes them against a deploy of fly.toml,
// pass on a ready edge and node and fail on a node with no certificate,
// whose port a TCP check would find open.
func TestFlyChecks(t *testing.T) {
	toml := flyToml(t)
	groups := map[string]*flyService{}
	for _, s := range flyServices(t) {
		groups[s.keys["processes"]] = s
	}
	checkOf := func(group, protocol string) map[string]string {
		t.Helper()
		s := groups[`["`+group+`"]`]
		if s == nil {
			t.Fatalf("fly.toml has no [[services]] for the %s group", group)
		}
		checks := s.tables["http_checks"]
		if len(checks) != 1 {
			t.Fatalf("the %s service has %d http_checks; want one, on /readyz", group, len(checks))
		}
		c := checks[0]
		if c["path"] != "/readyz" || !strings.EqualFold(c["method"], "get") || c["protocol"] != protocol {
			t.Fatalf("the %s service's check: %v; want GET /readyz over %s", group, c, protocol)
		}
		return c
	}
	edgeCheck := checkOf("edge", "http")
	connCheck := checkOf("conn", "https") // 8443 is the node's own TLS
	if connCheck["tls_server_name"] != toml["env"]["CONN_DOMAIN"] {
		t.Errorf("the conn check's tls_server_name %q is not CONN_DOMAIN %q: the node serves its certificate by that name",
			connCheck["tls_server_name"], toml["env"]["CONN_DOMAIN"])
	}
	if connCheck["tls_skip_verify"] != "true" {
		// Here the node's certificate is self-signed; on Fly it is Let's
		// Encrypt's, whose expiry has an alert of its own.
		t.Errorf("the conn check verifies the certificate: tls_skip_verify = %q", connCheck["tls_skip_verify"])
	}
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	t.Parallel()
	bin := binary(t)
	dir := t.TempDir()
	secrets := filepath.Join(dir, "secrets")
	if err := os.WriteFile(secrets, []byte("DATABASE_URL=postgres://set-by-the-stand-in\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	databaseURL := dbtest.NewEmptyDatabase(t)
	api, conn := deploy(t, bin, secrets, databaseURL, filepath.Join(dir, "conn.pem"))
	apiAddr := strings.TrimPrefix(api, "http://")
	connAddr := strings.TrimSuffix(strings.TrimPrefix(conn, "wss://"), "/v1/connect")
	for what, c := range map[string]struct {
		check map[string]string
		addr  string
	}{"edge": {edgeCheck, apiAddr}, "conn": {connCheck, connAddr}} {
		if code, err := flyCheck(c.check, c.addr); err != nil || code != http.StatusOK {
			t.Errorf("Fly's check of a ready %s: %d %v; want 200", what, code, err)
		}
	}

	// A node whose certificate never comes (its CA is unreachable): it
	// listens, so a TCP check passes, but Fly's check fails, and its ops
	// listener says why.
	env := []string{"DATABASE_URL=" + databaseURL}
	for k, v := range toml["env"] {
		env = append(env, k+"="+v)
	}
	pending, ops := loopback(t), loopback(t)
	env = append(env, "CONN_LISTEN="+pending, "CONN_OPS_LISTEN="+ops, "NODE_ID=fly-conn-no-cert", "FLY_REGION=ams",
		"CONN_TLS=acme", "CONN_ACME_CA=https://"+loopback(t)+"/dir")
	start(t, bin, "conn without a certificate", env, "conn")
	client := &http.Client{Timeout: 2 * time.Second}
	testsys.Eventually(t, "the node's ops listener says it has no certificate", func() bool {
		resp, err := client.Get("http://" + ops + "/readyz")
		if err != nil {
			return false
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable && strings.Contains(string(body), "no certificate yet")
	})
	c, err := net.DialTimeout("tcp", pending, 2*time.Second)
	if err != nil {
		t.Fatalf("the node without a certificate does not listen: %v", err)
	}
	c.Close()
	if code, err := flyCheck(connCheck, pending); err == nil {
		t.Errorf("Fly's check of a node without a certificate passed: %d", code)
	}
}

// dockerIgnored returns .dockerignore's rule: whether a path of the build
// context (slash-separated, relative to the repository) is left out.
// Docker's patterns: anchored at the root, * and ? within a name, ** across
// folders; a folder left out takes what it holds with it. This file uses
// no exceptions (!), which this reading does not implement.
func dockerIgnored(t *testing.T) func(rel string) bool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	var res []*regexp.Regexp
	for line := range strings.Lines(string(b)) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, "!") {
			t.Fatalf(".dockerignore: %q: exceptions are not read here", line)
		}
		var re strings.Builder
		re.WriteString("^")
		p := strings.Trim(filepath.ToSlash(filepath.Clean(line)), "/")
		for i := 0; i < len(p); i++ {
			switch {
			case strings.HasPrefix(p[i:], "**/"):
				re.WriteString("(.*/)?")
				i += 2
			case strings.HasPrefix(p[i:], "**"):
				re.WriteString(".*")
				i++
			case p[i] == '*':
				re.WriteString("[^/]*")
			case p[i] == '?':
				re.WriteString("[^/]")
			default:
				re.WriteString(regexp.QuoteMeta(p[i : i+1]))
			}
		}
		re.WriteString("$")
		res = append(res, regexp.MustCompile(re.String()))
	}
	return func(rel string) bool {
		for p := rel; p != "."; p = filepath.ToSlash(filepath.Dir(p)) { // rel, then its folders
			for _, re := range res {
				if re.MatchString(p) {
					return true
				}
			}
		}
		return false
	}
}

// TestFlyDockerContext: the image's build context, as .dockerignore leaves
// it, holds what the Dockerfile's build needs and none of the local state.
func TestFlyDockerContext(t *testing.T) {
	ignored := dockerIgnored(t)
	for _, rel := range []string{".git", ".dev", "switchboard", "sdk/js/node_modules", "sdk/js/dist", "sdk/python/switchboard_device/__pycache__",
		"edge/edge.test", "cover.out", "docs/console.png", "db/testdata/fuzz"} {
		if !ignored(rel) {
			t.Errorf(".dockerignore sends %s to the image's build", rel)
		}
	}
	for _, rel := range []string{"go.mod", "go.sum", "main.go", "edge/openapi.json", "db/migrations/00001_initial.sql", "console/static/app.js", "console/templates/layout.html"} {
		if ignored(rel) {
			t.Errorf(".dockerignore leaves out %s, which the build needs", rel)
		}
	}
	if testing.Short() {
		t.Skip("builds the binary")
	}
	t.Parallel()
	// The context, copied as Docker sends it, and the Dockerfile's build.
	ctxDir := t.TempDir()
	err := filepath.WalkDir(repoRoot, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(repoRoot, path)
		if err != nil || rel == "." {
			return err
		}
		rel = filepath.ToSlash(rel)
		if ignored(rel) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		dst := filepath.Join(ctxDir, rel)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	build := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(t.TempDir(), "switchboard"), ".")
	build.Dir = ctxDir
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=readonly", "GOWORK=off")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build in the context .dockerignore leaves: %v\n%s", err, out)
	}
}
