package e2e

// Backups and restore as docs/operations.md tells operators to do them:
// pg_dump -Fc of a running system, pg_restore into a fresh cluster, the
// same binary started against it; the devices, still running, reconnect to
// the new node, and everything the dump held is there.

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	gws "github.com/gorilla/websocket"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/db/dbtest"
	"github.com/switchboard-iot/switchboard/device/protocol"
	"github.com/switchboard-iot/switchboard/internal/pgcluster"
	"github.com/switchboard-iot/switchboard/internal/webhook"
)

// startNode runs a connection node of bin on addr, its self-signed
// certificate written to cert, and waits until its ops listener says it
// is ready.
func startNode(t *testing.T, bin, id, databaseURL, addr, cert string, extra ...string) *proc {
	t.Helper()
	ops := loopback(t)
	env := append([]string{"DATABASE_URL=" + databaseURL, "CONN_LISTEN=" + addr, "CONN_OPS_LISTEN=" + ops, "NODE_ID=" + id,
		"FLY_REGION=ams", "CONN_TLS=self-signed", "CONN_CERT_OUT=" + cert, "CONN_DRAIN=1s"}, extra...)
	p := start(t, bin, id, env, "conn")
	p.ready(t, "http://"+ops+"/readyz")
	return p
}

// startEdge runs an edge of bin that may deliver webhooks to loopback
// over plain HTTP (the test's receiver), and returns it with its URL once
// it is ready.
func startEdge(t *testing.T, bin, id, databaseURL string) (*proc, string) {
	t.Helper()
	addr := loopback(t)
	p := start(t, bin, id, []string{"DATABASE_URL=" + databaseURL, "EDGE_LISTEN=" + addr, "EDGE_OPS_LISTEN=" + loopback(t),
		"EDGE_ID=" + id, "EDGE_WEBHOOKS_ALLOW_HTTP=true", "EDGE_WEBHOOKS_ALLOW_PRIVATE=true"}, "edge")
	p.ready(t, "http://"+addr+"/readyz")
	return p, "http://" + addr
}

// apiCall sends an API request with key and returns the status and body.
func apiCall(t *testing.T, method, url, key, contentType, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return resp.StatusCode, b
}

// roundTrip sends set_target through edgeURL to id, waits for its answer,
// and returns the command's id; it fails t unless the device ran it.
func roundTrip(t *testing.T, edgeURL, key, id string, celsius int) string {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"name": "set_target", "args": map[string]int{"celsius": celsius}})
	code, b := apiCall(t, http.MethodPost, edgeURL+"/v1/devices/"+id+"/commands?wait=15s", key, "application/json", string(body))
	var c command
	if err := json.Unmarshal(b, &c); err != nil || code != http.StatusOK || c.Status != "done" ||
		!strings.Contains(string(c.Result), `"target":`+itoa(celsius)) {
		t.Fatalf("set_target %d via %s to %s: %d %s", celsius, edgeURL, id, code, b)
	}
	return c.ID
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

// deviceDialStatus connects as a device through a node at addr, trusting
// the certificate in cert, and returns the handshake's HTTP status.
func deviceDialStatus(t *testing.T, addr, cert, id, secret string) int {
	t.Helper()
	pem, err := os.ReadFile(cert)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	d := gws.Dialer{TLSClientConfig: &tls.Config{RootCAs: roots}, Subprotocols: []string{protocol.Subprotocol}, HandshakeTimeout: 10 * time.Second}
	header := http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(id+":"+secret))}}
	ws, resp, err := d.DialContext(t.Context(), "wss://"+addr+protocol.Path, header)
	if ws != nil {
		ws.Close()
	}
	if resp == nil {
		t.Fatalf("dial as %s: %v", id, err)
	}
	return resp.StatusCode
}

// freshCluster starts an empty PostgreSQL cluster of the test's own, with
// an empty database "switchboard", and returns that database's URL.
func freshCluster(t *testing.T) string {
	t.Helper()
	// Not t.TempDir: as root the cluster runs as the postgres user, who
	// must enter the folder (dbtest.PrivateCluster does the same).
	dir, err := os.MkdirTemp("", "switchboard-restore-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	cluster, err := pgcluster.Start(t.Context(), filepath.Join(dir, "pg"), pgcluster.Options{Fast: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cluster.Stop() })
	if err := dbtest.Exec(t.Context(), cluster.URL, "CREATE DATABASE switchboard"); err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(cluster.URL)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/switchboard"
	return u.String()
}

// pgTool runs one of PostgreSQL's programs (pg_dump, pg_restore).
func pgTool(t *testing.T, name string, args ...string) {
	t.Helper()
	path, err := pgcluster.Tool(name)
	if err != nil {
		t.Fatalf("%s, installed beside initdb: %v", name, err)
	}
	if out, err := exec.CommandContext(t.Context(), path, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// hookReceiver takes webhook deliveries, checks their signature against
// the endpoint's secret, and records the command ids they carry.
type hookReceiver struct {
	mu       sync.Mutex
	secret   string
	commands map[string]bool
	bad      []string
}

func (h *hookReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := webhook.Verify(h.secret, body, r.Header); err != nil {
		h.bad = append(h.bad, err.Error())
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	var d struct {
		Data struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	_ = json.Unmarshal(body, &d)
	h.commands[d.Data.ID] = true
	w.WriteHeader(http.StatusNoContent)
}

func (h *hookReceiver) got(id string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.commands[id]
}

func TestBackupRestore(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary, and a PostgreSQL cluster of its own")
	}
	t.Parallel()
	bin := binary(t)
	dir := t.TempDir()
	source := dbtest.NewEmptyDatabase(t)
	srcEnv := []string{"DATABASE_URL=" + source}
	output(t, bin, srcEnv, "", "migrate")
	key := strings.TrimSpace(output(t, bin, srcEnv, "", "apikeys", "add", "backup-test"))
	creds := filepath.Join(dir, "devices.csv")
	if err := os.WriteFile(creds, []byte(output(t, bin, srcEnv, "bk-1\nbk-2\n", "devices", "import")), 0o600); err != nil {
		t.Fatal(err)
	}

	// The system: a node, an edge, two devices that run throughout.
	nodeAddr, cert := loopback(t), filepath.Join(dir, "node.pem")
	node := startNode(t, bin, "bk-node-old", source, nodeAddr, cert)
	edge, edgeURL := startEdge(t, bin, "bk-edge-old", source)
	start(t, bin, "devices", []string{"DEVICE_URL=wss://" + nodeAddr + "/v1/connect"}, "device", "-credentials", creds, "-ca", cert, "-telemetry", "0")
	srcPool := dbtest.Pool(t, source)
	// onNode reports whether both devices are live on node, in the
	// database at url.
	onNode := func(url, node string) func() bool {
		pool := srcPool
		if url != source {
			pool = dbtest.Pool(t, url)
		}
		return func() bool {
			var n int
			_ = pool.QueryRow(t.Context(), `SELECT count(*) FROM presence_live WHERE node_id = $1 AND device_id IN ('bk-1', 'bk-2')`, node).Scan(&n)
			return n == 2
		}
	}
	testsys.Eventually(t, "both devices connected", onNode(source, "bk-node-old"))

	// What the dump must hold: a webhook and its secret, a command's
	// result, a desired state.
	hooks := &hookReceiver{commands: map[string]bool{}}
	receiver := httptest.NewServer(hooks)
	t.Cleanup(receiver.Close)
	code, b := apiCall(t, http.MethodPost, edgeURL+"/v1/webhooks", key, "application/json",
		`{"url":"`+receiver.URL+`/hook","events":["command.completed"]}`)
	var wh struct {
		ID     int64  `json:"id"`
		Secret string `json:"secret"`
	}
	if err := json.Unmarshal(b, &wh); err != nil || code != http.StatusCreated || wh.Secret == "" {
		t.Fatalf("POST /v1/webhooks: %d %s", code, b)
	}
	hooks.mu.Lock()
	hooks.secret = wh.Secret
	hooks.mu.Unlock()
	before := roundTrip(t, edgeURL, key, "bk-1", 22)
	if code, b := apiCall(t, http.MethodPatch, edgeURL+"/v1/devices/bk-2/state/desired", key, "application/merge-patch+json",
		`{"target_celsius":23}`); code != http.StatusOK {
		t.Fatalf("PATCH desired: %d %s", code, b)
	}
	testsys.Eventually(t, "the webhook delivery of the command before the dump", func() bool { return hooks.got(before) })

	// The backup, of the running system.
	dump := filepath.Join(dir, "switchboard.dump")
	pgTool(t, "pg_dump", "-Fc", "-f", dump, "-d", source)

	// After the dump: what a restore to it loses.
	late := strings.TrimSpace(output(t, bin, srcEnv, "", "devices", "add", "bk-late"))
	lost := roundTrip(t, edgeURL, key, "bk-1", 29)

	// Into a fresh cluster; the release command finds nothing to migrate.
	restored := freshCluster(t)
	pgTool(t, "pg_restore", "--no-owner", "--no-privileges", "--exit-on-error", "-d", restored, dump)
	output(t, bin, []string{"DATABASE_URL=" + restored}, "", "migrate")

	// The old database is gone with its processes (killed: nothing of
	// theirs reaches the restored one). The new node takes the old one's
	// address, as a Machine behind the same name would.
	for _, p := range []*proc{node, edge} {
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	oldCert, err := os.ReadFile(cert)
	if err != nil {
		t.Fatal(err)
	}
	newCert := filepath.Join(dir, "node-new.pem")
	startNode(t, bin, "bk-node-new", restored, nodeAddr, newCert)
	_, edgeURL = startEdge(t, bin, "bk-edge-new", restored)

	// The devices reconnect on their own: the certificate is the one they
	// trust, restored with the rest.
	testsys.Eventually(t, "both devices reconnected to the restored system", onNode(restored, "bk-node-new"))
	if got, err := os.ReadFile(newCert); err != nil || !bytes.Equal(got, oldCert) {
		t.Errorf("the restored node serves another certificate (%v)", err)
	}

	// The dump's data.
	code, b = apiCall(t, http.MethodGet, edgeURL+"/v1/commands/"+before, key, "", "")
	var c command
	if err := json.Unmarshal(b, &c); err != nil || code != http.StatusOK || c.Status != "done" || !strings.Contains(string(c.Result), `"target":22`) {
		t.Errorf("the command before the dump, restored: %d %s", code, b)
	}
	code, b = apiCall(t, http.MethodGet, edgeURL+"/v1/devices/bk-2/state", key, "", "")
	var st struct {
		Desired        map[string]any `json:"desired"`
		DesiredVersion int64          `json:"desired_version"`
	}
	if err := json.Unmarshal(b, &st); err != nil || code != http.StatusOK || st.Desired["target_celsius"] != 23.0 || st.DesiredVersion != 1 {
		t.Errorf("bk-2's state, restored: %d %s", code, b)
	}
	if code, b := apiCall(t, http.MethodGet, edgeURL+"/v1/webhooks/"+itoa(int(wh.ID)), key, "", ""); code != http.StatusOK ||
		!strings.Contains(string(b), receiver.URL) {
		t.Errorf("the webhook, restored: %d %s", code, b)
	}

	// What came after the dump is not there.
	if code, b := apiCall(t, http.MethodGet, edgeURL+"/v1/commands/"+lost, key, "", ""); code != http.StatusNotFound {
		t.Errorf("the command after the dump: %d %s; want 404", code, b)
	}
	if got := deviceDialStatus(t, nodeAddr, newCert, "bk-late", late); got != http.StatusUnauthorized {
		t.Errorf("the device provisioned after the dump connects with %d; want 401", got)
	}

	// A new command round-trips, and its webhook delivery is signed with
	// the restored secret.
	after := roundTrip(t, edgeURL, key, "bk-2", 24)
	testsys.Eventually(t, "the webhook delivery of a command after the restore, with the restored secret", func() bool { return hooks.got(after) })
	hooks.mu.Lock()
	defer hooks.mu.Unlock()
	if len(hooks.bad) > 0 {
		t.Errorf("deliveries with a bad signature: %v", hooks.bad)
	}
}
