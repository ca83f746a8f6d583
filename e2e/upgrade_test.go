package e2e

// A rolling upgrade, in docs/operations.md's order, with the previous
// release and this one side by side for one step: the old binary is built
// from the commit before the newest migration. Migrate (the old edge and
// node carry on over the new schema), then an edge of the new release
// beside the old one, then the node replaced with a drain: the device
// moves to the new node, and every command accepted on the way ends done.

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/db/dbtest"
)

// previous is the previous release, built; or why it is not: skip when
// the repository's history is not there, err when it would not build.
type previous struct {
	bin, commit, skip string
	err               error
}

// previousRelease builds switchboard, in dir, as it was just before the
// newest migration was added: the commit whose child added it, which has
// one migration fewer.
func previousRelease(dir string) (r previous) {
	git := func(args ...string) (string, error) {
		cmd := exec.Command("git", args...)
		cmd.Dir = repoRoot
		out, err := cmd.Output()
		return strings.TrimSpace(string(out)), err
	}
	if _, err := exec.LookPath("git"); err != nil {
		return previous{skip: "the upgrade test builds the previous release from git history: git is not installed"}
	}
	if shallow, err := git("rev-parse", "--is-shallow-repository"); err != nil || shallow != "false" {
		return previous{skip: fmt.Sprintf("the upgrade test builds the previous release from git history, which is not here (a shallow clone or no repository: %q %v)", shallow, err)}
	}
	newest, err := git("log", "-1", "--format=%H", "--", "db/migrations")
	if err != nil || newest == "" {
		return previous{skip: fmt.Sprintf("no commit touched db/migrations in this history (%v)", err)}
	}
	commit := newest + "^"
	before, err := git("ls-tree", "--name-only", commit, "db/migrations/")
	if err != nil {
		return previous{err: fmt.Errorf("git ls-tree %s: %w", commit, err)}
	}
	entries, err := os.ReadDir(filepath.Join(repoRoot, "db", "migrations"))
	if err != nil {
		return previous{err: err}
	}
	if n := len(strings.Fields(before)); n != len(entries)-1 {
		return previous{err: fmt.Errorf("%s has %d migrations and the working tree %d: want one fewer (did a commit add two, or remove one?)", commit, n, len(entries))}
	}
	if commit, err = git("rev-parse", commit); err != nil {
		return previous{err: err}
	}

	// git archive, not a worktree: the repository is left as it was.
	src := filepath.Join(dir, "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		return previous{err: err}
	}
	archive := exec.Command("git", "archive", "--format=tar", commit)
	archive.Dir = repoRoot
	untar := exec.Command("tar", "-x", "-C", src)
	pipe, err := archive.StdoutPipe()
	if err != nil {
		return previous{err: err}
	}
	untar.Stdin = pipe
	if err := untar.Start(); err != nil {
		return previous{err: err}
	}
	if err := archive.Run(); err != nil {
		return previous{err: fmt.Errorf("git archive %s: %w", commit, err)}
	}
	if err := untar.Wait(); err != nil {
		return previous{err: fmt.Errorf("untar %s: %w", commit, err)}
	}
	bin := filepath.Join(dir, "switchboard-previous")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Dir = src
	build.Env = append(os.Environ(), "GOFLAGS=-mod=readonly")
	if out, err := build.CombinedOutput(); err != nil {
		return previous{err: fmt.Errorf("building the previous release (%s): %w\n%s", commit, err, out)}
	}
	return previous{bin: bin, commit: commit}
}

// frontDoor stands in for the platform's proxy in front of the nodes: it
// sends each new connection to the node it points at now, as Fly's proxy
// routes only to nodes whose check passes. Its goroutines end when the
// test does.
type frontDoor struct {
	ln      net.Listener
	backend atomic.Pointer[string]
	mu      sync.Mutex
	conns   []net.Conn
	wg      sync.WaitGroup
}

func newFrontDoor(t *testing.T, backend string) *frontDoor {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &frontDoor{ln: ln}
	f.backend.Store(&backend)
	f.wg.Go(f.serve)
	t.Cleanup(func() {
		ln.Close()
		f.mu.Lock()
		for _, c := range f.conns {
			c.Close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
	return f
}

func (f *frontDoor) serve() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.wg.Go(func() { f.pipe(c) })
	}
}

// pipe copies c to the backend and back until either side closes.
func (f *frontDoor) pipe(c net.Conn) {
	defer c.Close()
	b, err := net.DialTimeout("tcp", *f.backend.Load(), 5*time.Second)
	if err != nil {
		return
	}
	defer b.Close()
	f.mu.Lock()
	f.conns = append(f.conns, c, b)
	f.mu.Unlock()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(b, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, b); done <- struct{}{} }()
	<-done // one side ended: closing both ends the other copy
	c.Close()
	b.Close()
	<-done
}

// sendAsync accepts a command through edgeURL without waiting for it, and
// returns its id.
func sendAsync(t *testing.T, edgeURL, key, id string, celsius int) string {
	t.Helper()
	code, b := apiCall(t, http.MethodPost, edgeURL+"/v1/devices/"+id+"/commands", key, "application/json",
		`{"name":"set_target","args":{"celsius":`+strconv.Itoa(celsius)+`}}`)
	var c command
	if err := json.Unmarshal(b, &c); err != nil || (code != http.StatusAccepted && code != http.StatusOK) || c.ID == "" {
		t.Fatalf("command via %s: %d %s", edgeURL, code, b)
	}
	return c.ID
}

func migrationVersion(t *testing.T, databaseURL string) int64 {
	t.Helper()
	var v int64
	if err := dbtest.Pool(t, databaseURL).QueryRow(t.Context(), `SELECT max(version_id) FROM goose_db_version WHERE is_applied`).Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestRollingUpgrade(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two releases and runs them")
	}
	t.Parallel()
	// Both releases build at once; the old one's build is waited for
	// however the test ends.
	dir := t.TempDir()
	built := make(chan previous, 1)
	oldDir := t.TempDir()
	go func() { built <- previousRelease(oldDir) }()
	var old previous
	waited := false
	t.Cleanup(func() {
		if !waited {
			<-built
		}
	})
	newBin := binary(t)
	old, waited = <-built, true
	if old.skip != "" {
		t.Skip(old.skip)
	}
	if old.err != nil {
		t.Fatal(old.err)
	}
	oldBin := old.bin
	t.Logf("previous release: %s", old.commit)
	databaseURL := dbtest.NewEmptyDatabase(t)
	env := []string{"DATABASE_URL=" + databaseURL}

	// The previous release, as it runs before the upgrade.
	output(t, oldBin, env, "", "migrate")
	oldVersion := migrationVersion(t, databaseURL)
	key := strings.TrimSpace(output(t, oldBin, env, "", "apikeys", "add", "upgrade-test"))
	creds := filepath.Join(dir, "devices.csv")
	if err := os.WriteFile(creds, []byte(output(t, oldBin, env, "up-1\n", "devices", "import")), 0o600); err != nil {
		t.Fatal(err)
	}
	cert := filepath.Join(dir, "node.pem")
	oldNodeAddr := loopback(t)
	oldNode := startNode(t, oldBin, "up-node-old", databaseURL, oldNodeAddr, cert)
	oldEdge, oldEdgeURL := startEdge(t, oldBin, "up-edge-old", databaseURL)
	door := newFrontDoor(t, oldNodeAddr)
	start(t, newBin, "device", []string{"DEVICE_URL=wss://" + door.ln.Addr().String() + "/v1/connect"},
		"device", "-credentials", creds, "-ca", cert, "-telemetry", "0")
	pool := dbtest.Pool(t, databaseURL)
	on := func(node string) func() bool {
		return func() bool {
			var n int
			_ = pool.QueryRow(t.Context(), `SELECT count(*) FROM presence_live WHERE device_id = 'up-1' AND node_id = $1`, node).Scan(&n)
			return n == 1
		}
	}
	testsys.Eventually(t, "the device on the old node", on("up-node-old"))
	roundTrip(t, oldEdgeURL, key, "up-1", 20)

	// 1. Migrate: the new release's release command. The old edge and
	// node keep working over the new schema.
	output(t, newBin, env, "", "migrate")
	if v := migrationVersion(t, databaseURL); v <= oldVersion {
		t.Fatalf("the new release's migrate left the schema at %d (the previous release's: %d)", v, oldVersion)
	}
	roundTrip(t, oldEdgeURL, key, "up-1", 21)
	// A rollback of the binary (its release command runs the old migrate)
	// finds the newer schema and leaves it be.
	output(t, oldBin, env, "", "migrate")

	// 2. Edges: a new one beside the old one; both serve.
	_, newEdgeURL := startEdge(t, newBin, "up-edge-new", databaseURL)
	roundTrip(t, newEdgeURL, key, "up-1", 22)
	roundTrip(t, oldEdgeURL, key, "up-1", 23)

	// 3. Nodes, one at a time: a new node takes the new connections, then
	// the old one drains (SIGTERM: its sessions close with 1001 and the
	// device reconnects, through the front door, to the new node).
	// Commands accepted through both edges meanwhile all end done.
	newNodeAddr := loopback(t)
	startNode(t, newBin, "up-node-new", databaseURL, newNodeAddr, filepath.Join(dir, "node-new.pem"))
	door.backend.Store(&newNodeAddr)
	var accepted []string
	for i, edgeURL := range []string{oldEdgeURL, newEdgeURL} {
		accepted = append(accepted, sendAsync(t, edgeURL, key, "up-1", 24+i))
	}
	_ = oldNode.cmd.Process.Signal(syscall.SIGTERM)
	for i, edgeURL := range []string{oldEdgeURL, newEdgeURL} {
		accepted = append(accepted, sendAsync(t, edgeURL, key, "up-1", 26+i))
	}
	// It exits 0 within its drain; if it hangs, its goroutines say where.
	select {
	case <-oldNode.done:
	case <-time.After(20 * time.Second):
		_ = oldNode.cmd.Process.Signal(syscall.SIGQUIT)
		<-oldNode.done
		t.Fatalf("the old node did not stop within 20s of SIGTERM:\n%s", oldNode.out.String())
	}
	if code := oldNode.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("the old node exited with %d:\n%s", code, oldNode.out.String())
	}
	testsys.Eventually(t, "the device on the new node", on("up-node-new"))
	for _, id := range accepted {
		testsys.Eventually(t, "command "+id+" done", func() bool {
			code, b := apiCall(t, http.MethodGet, newEdgeURL+"/v1/commands/"+id, key, "", "")
			var c command
			if code != http.StatusOK || json.Unmarshal(b, &c) != nil {
				t.Fatalf("GET command %s: %d %s", id, code, b)
			}
			if c.Status == "failed" || c.Status == "expired" || c.Status == "cancelled" {
				t.Fatalf("command %s accepted during the upgrade ended %s: %s", id, c.Status, b)
			}
			return c.Status == "done"
		})
	}
	roundTrip(t, oldEdgeURL, key, "up-1", 28)
	roundTrip(t, newEdgeURL, key, "up-1", 29)

	// The old edge goes last; the new release alone carries on.
	oldEdge.stop(t)
	roundTrip(t, newEdgeURL, key, "up-1", 30)
	var lost int
	if err := pool.QueryRow(t.Context(), `SELECT count(*) FROM commands WHERE device_id = 'up-1' AND status <> 'done'`).Scan(&lost); err != nil {
		t.Fatal(err)
	}
	if lost != 0 {
		t.Errorf("%d commands to up-1 did not end done", lost)
	}
}
