package e2e

// The built binary, as separate processes: migrate, provisioning, two
// connection nodes, two edges and two simulator processes, configured
// through the environment as in production, stopped with SIGTERM.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/db/dbtest"
	"github.com/switchboard-iot/switchboard/internal/testkit/freeport"
)

// loopback chooses a free address for a process to listen on, passed to it
// as a flag: the test knows where it serves without reading its log.
func loopback(t *testing.T) string {
	t.Helper()
	addr, err := freeport.Loopback()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// ready waits for a process to answer GET url (its /readyz) with 200, and
// fails t if the process exits first.
func (p *proc) ready(t *testing.T, url string) {
	t.Helper()
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	testsys.Eventually(t, p.name+" ready at "+url, func() bool {
		select {
		case <-p.done:
			t.Fatalf("%s exited:\n%s", p.name, p.out.String())
		default:
		}
		resp, err := client.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// binary builds switchboard (with the race detector) once for the tests
// that run it; the folder goes when the tests end.
func binary(t *testing.T) string {
	t.Helper()
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

var (
	binDir    string
	buildOnce = sync.OnceValues(func() (string, error) {
		var err error
		if binDir, err = os.MkdirTemp("", "switchboard-bin-"); err != nil {
			return "", err
		}
		bin := filepath.Join(binDir, "switchboard")
		if out, err := exec.Command("go", "build", "-race", "-o", bin, "..").CombinedOutput(); err != nil {
			return "", fmt.Errorf("go build: %v\n%s", err, out)
		}
		return bin, nil
	})
)

// proc is a running switchboard process.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *testsys.Output
	done chan struct{}
}

// start runs the binary with env added to a clean environment.
func start(t *testing.T, bin, name string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, cmd: exec.Command(bin, args...), out: &testsys.Output{}, done: make(chan struct{})}
	p.cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "LOG_LEVEL=debug"}, env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("--- %s output:\n%s", p.name, p.out.String())
		}
	})
	return p
}

// stop sends SIGTERM and checks the process exits cleanly in time.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		t.Fatalf("%s did not stop within 20s of SIGTERM", p.name)
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("%s exited with %d:\n%s", p.name, code, p.out.String())
	}
}

// output runs the binary to completion and returns its stdout.
func output(t *testing.T, bin string, env []string, stdin string, args ...string) string {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	cmd.Stdin = strings.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("switchboard %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

func TestBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	t.Parallel()
	bin := binary(t)
	dbEnv := []string{"DATABASE_URL=" + dbtest.NewEmptyDatabase(t)}
	dir := t.TempDir()

	output(t, bin, dbEnv, "", "migrate")
	output(t, bin, dbEnv, "", "migrate") // again: nothing to do, no error
	key := strings.TrimSpace(output(t, bin, dbEnv, "", "apikeys", "add", "binary-test"))
	if !strings.HasPrefix(key, "sbk_") || strings.Contains(key, "\n") {
		t.Fatalf("apikeys add printed %q, want the key alone", key)
	}
	single := strings.TrimSpace(output(t, bin, dbEnv, "", "devices", "add", "solo-1"))
	if single == "" || strings.ContainsAny(single, "\n ,") {
		t.Fatalf("devices add printed %q, want the secret alone", single)
	}

	// Two nodes, each with the devices of one simulator process.
	type node struct {
		id, addr, ops, cert, creds string
		devices                    []string
	}
	var nodes []*node
	for i, id := range []string{"bin-node-a", "bin-node-b"} {
		n := &node{id: id, cert: filepath.Join(dir, id+".pem"), creds: filepath.Join(dir, id+".csv")}
		var ids []string
		for j := range 3 {
			ids = append(ids, fmt.Sprintf("bin-%d-%d", i, j))
		}
		n.devices = ids
		csv := output(t, bin, dbEnv, strings.Join(ids, "\n")+"\n", "devices", "import")
		if lines := strings.Split(strings.TrimSpace(csv), "\n"); len(lines) != 3 || !strings.HasPrefix(lines[0], ids[0]+",") {
			t.Fatalf("devices import printed %q", csv)
		}
		if err := os.WriteFile(n.creds, []byte(csv), 0o600); err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
	}

	var procs []*proc
	for _, n := range nodes {
		n.addr, n.ops = loopback(t), loopback(t)
		p := start(t, bin, n.id, append(dbEnv, "CONN_LISTEN="+n.addr, "NODE_ID="+n.id, "FLY_REGION=ams",
			"CONN_TLS=self-signed", "CONN_CERT_OUT="+n.cert, "CONN_OPS_LISTEN="+n.ops), "conn")
		procs = append(procs, p)
		p.ready(t, "http://"+n.ops+"/readyz")
	}
	var edgeURLs []string
	opsAddrs := []string{nodes[0].ops, nodes[1].ops}
	for _, id := range []string{"bin-edge-a", "bin-edge-b"} {
		addr, ops := loopback(t), loopback(t)
		p := start(t, bin, id, append(dbEnv, "EDGE_LISTEN="+addr, "EDGE_OPS_LISTEN="+ops, "EDGE_ID="+id), "edge")
		procs = append(procs, p)
		p.ready(t, "http://"+addr+"/readyz")
		edgeURLs, opsAddrs = append(edgeURLs, "http://"+addr), append(opsAddrs, ops)
	}
	for _, n := range nodes {
		testsys.Eventually(t, n.id+"'s certificate", func() bool { _, err := os.Stat(n.cert); return err == nil })
		procs = append(procs, start(t, bin, n.id+"-devices", append(dbEnv, "DEVICE_URL=wss://"+n.addr+"/v1/connect"),
			"device", "-credentials", n.creds, "-ca", n.cert, "-telemetry", "0"))
	}

	pool := dbtest.Pool(t, strings.TrimPrefix(dbEnv[0], "DATABASE_URL="))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	testsys.Eventually(t, "all six simulated devices in presence_live", func() bool {
		var n int
		_ = pool.QueryRow(ctx, `SELECT count(*) FROM presence_live WHERE node_id LIKE 'bin-node-%' AND region = 'ams'`).Scan(&n)
		return n == 6
	})

	// Each process's ops listener: plain HTTP, health, metrics and profiles.
	for _, ops := range opsAddrs {
		for _, path := range []string{"/healthz", "/readyz", "/metrics", "/debug/pprof/goroutine?debug=1"} {
			resp, err := http.Get("http://" + ops + path)
			if err != nil {
				t.Fatalf("ops %s%s: %v", ops, path, err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("ops %s%s: %d", ops, path, resp.StatusCode)
			}
		}
	}

	// Through each edge, to a device on each node.
	for _, edgeURL := range edgeURLs {
		for _, n := range nodes {
			id := n.devices[1]
			resp := post(t, ctx, edgeURL, key, id, "?wait=10s", "", `{"name":"set_target","args":{"celsius":22}}`)
			var c command
			err := json.NewDecoder(resp.Body).Decode(&c)
			resp.Body.Close()
			if err != nil || resp.StatusCode != http.StatusOK || c.Status != "done" || !strings.Contains(string(c.Result), `"target":22`) {
				t.Fatalf("via %s to %s: %d %+v %s (%v)", edgeURL, id, resp.StatusCode, c, c.Result, err)
			}
		}
	}

	// SIGTERM: every process exits 0; the nodes leave no lease or presence.
	for _, p := range procs {
		p.stop(t)
	}
	var leases, rows int
	_ = pool.QueryRow(ctx, `SELECT count(*) FROM nodes`).Scan(&leases)
	_ = pool.QueryRow(ctx, `SELECT count(*) FROM presence`).Scan(&rows)
	if leases != 0 || rows != 0 {
		t.Fatalf("after a clean shutdown: %d leases, %d presence rows", leases, rows)
	}
}
