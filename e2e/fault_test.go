package e2e

// Fault tests: at-least-once delivery while things fail for real. Every
// accepted command (a 2xx with an id) must end done, or failed/expired
// exactly where its timeout or ttl says; the tables are the judge.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/db/dbtest"
	"github.com/switchboard-iot/switchboard/device"
)

// outcome is a command's row as the fault tests judge it.
type outcome struct {
	ID       uuid.UUID
	Device   string
	Status   string
	Attempts int
	NodeID   *string
	Result   []byte
}

// outcomes reads the commands with these ids.
func outcomes(t *testing.T, ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, ids []uuid.UUID) map[uuid.UUID]outcome {
	t.Helper()
	rows, err := q.Query(ctx, `SELECT id, device_id, status, attempts, node_id, result FROM commands WHERE id = ANY($1)`, ids)
	if err != nil {
		t.Fatal(err)
	}
	list, err := pgx.CollectRows(rows, pgx.RowToStructByPos[outcome])
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[uuid.UUID]outcome, len(list))
	for _, o := range list {
		out[o.ID] = o
	}
	return out
}

// waitAllDone polls until every command is done, failing at the first
// that ends otherwise, and returns the outcomes.
func waitAllDone(t *testing.T, ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, ids []uuid.UUID) map[uuid.UUID]outcome {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		got := outcomes(t, ctx, q, ids)
		done := 0
		for _, o := range got {
			switch o.Status {
			case "done":
				done++
			case "failed", "expired":
				t.Fatalf("command %s of %s ended %s", o.ID, o.Device, o.Status)
			}
		}
		if done == len(ids) {
			return got
		}
		if time.Now().After(deadline) {
			for _, o := range got {
				t.Logf("%s of %s: %s after %d attempts", o.ID, o.Device, o.Status, o.Attempts)
			}
			t.Fatalf("%d of %d accepted commands done after 60s", done, len(ids))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// accept posts a fire-and-forget command and returns its id.
func accept(t *testing.T, ctx context.Context, edgeURL, key, deviceID, body string) uuid.UUID {
	t.Helper()
	resp := post(t, ctx, edgeURL, key, deviceID, "", "", body)
	defer resp.Body.Close()
	var c command
	if err := json.NewDecoder(resp.Body).Decode(&c); err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST to %s: %d %v", deviceID, resp.StatusCode, err)
	}
	return uuid.MustParse(c.ID)
}

// A device that drops its socket (no close frame) after receiving a command
// and before answering gets it again on its next session, on the other
// node: the command ends done with attempts = 2. Ten devices at once.
func TestDeviceDropsBeforeReplying(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	key := sys.APIKey(t)
	e := sys.StartEdge(t, "edge-a", nil)
	nodes := []*testsys.Node{sys.StartNode(t, "node-a", nil), sys.StartNode(t, "node-b", nil)}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	dial := func(node *testsys.Node, id, devSecret string) *websocket.Conn {
		ws, _, err := websocket.Dial(ctx, node.URL, &websocket.DialOptions{
			HTTPClient:   node.HTTPClient(),
			HTTPHeader:   http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(id+":"+devSecret))}},
			Subprotocols: []string{"switchboard.v1"},
		})
		if err != nil {
			t.Fatalf("%s dialling %s: %v", id, node.ID, err)
		}
		return ws
	}
	type frame struct{ Type, ID, Name string }

	var wg sync.WaitGroup
	ids := make([]uuid.UUID, 10)
	for i := range ids {
		id := fmt.Sprintf("dropper-%d", i)
		devSecret := sys.AddDevice(t, id)
		first := dial(nodes[0], id, devSecret)
		testsys.Eventually(t, id+" online", func() bool { return livePresence(t, sys)[id] == "node-a" })
		ids[i] = accept(t, ctx, e.URL, key, id, `{"name":"work"}`)
		wg.Go(func() {
			var got frame
			if err := wsjson.Read(ctx, first, &got); err != nil || got.ID != ids[i].String() {
				t.Errorf("%s: first delivery %+v, %v", id, got, err)
				return
			}
			first.CloseNow() // the socket goes, with no close frame and no reply

			second := dial(nodes[1], id, devSecret)
			defer second.CloseNow()
			if err := wsjson.Read(ctx, second, &got); err != nil || got.ID != ids[i].String() {
				t.Errorf("%s: redelivery %+v, %v", id, got, err)
				return
			}
			if err := wsjson.Write(ctx, second, map[string]any{"type": "reply", "id": got.ID, "ok": true, "result": map[string]string{"by": id}}); err != nil {
				t.Error(err)
			}
			// Keep the session until the reply is stored.
			testsys.Eventually(t, id+"'s reply stored", func() bool { return outcomes(t, ctx, sys.Pool, ids[i:i+1])[ids[i]].Status == "done" })
			second.Close(websocket.StatusNormalClosure, "")
		})
	}
	wg.Wait()
	waitAllDone(t, ctx, sys.Pool, ids)
	// Each session claimed the command before writing it: two attempts,
	// the last one node-b's.
	settled := func(o outcome) bool { return o.Attempts == 2 && o.NodeID != nil && *o.NodeID == "node-b" }
	var unsettled []outcome // at the last look, for the failure's message
	defer func() {
		if !t.Failed() {
			return
		}
		for _, o := range unsettled {
			node := "none"
			if o.NodeID != nil {
				node = *o.NodeID
			}
			t.Logf("unsettled: command %s of %s: %s, attempts %d, node %s", o.ID, o.Device, o.Status, o.Attempts, node)
		}
	}()
	testsys.EventuallyWithin(t, 10*time.Second, "each command delivered twice, the last time by node-b", func() bool {
		unsettled = unsettled[:0]
		for _, o := range outcomes(t, ctx, sys.Pool, ids) {
			if !settled(o) {
				unsettled = append(unsettled, o)
			}
		}
		return len(unsettled) == 0
	})
	for _, o := range outcomes(t, ctx, sys.Pool, ids) {
		if !settled(o) || o.Status != "done" {
			t.Errorf("command %s of %s: %s, attempts %d, node %v; want done after 2 deliveries, the last by node-b", o.ID, o.Device, o.Status, o.Attempts, o.NodeID)
		}
	}
	// The API says so too.
	resp, err := http.DefaultClient.Do(authed(t, ctx, http.MethodGet, e.URL+"/v1/commands/"+ids[0].String(), key))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var c struct {
		Status   string
		Attempts int
	}
	if err := json.NewDecoder(resp.Body).Decode(&c); err != nil || c.Status != "done" || c.Attempts != 2 {
		t.Fatalf("GET /v1/commands/{id}: %+v, %v; want done after 2 attempts", c, err)
	}
}

func authed(t *testing.T, ctx context.Context, method, url, key string) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	return req
}

// PostgreSQL stops (as in a crash) for longer than any retry schedule and
// than the nodes' leases, while devices answer the commands they hold:
// their replies wait in the node, and once the database is back every
// accepted command ends done, with the default 10 s timeout, and a stream
// opened before the outage gets its reply.
func TestDatabaseOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("stops a PostgreSQL cluster of its own for 16 s")
	}
	t.Parallel()
	const outage = 16 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cluster, url := dbtest.PrivateCluster(ctx, t)

	sys := testsys.Attach(t, url)
	key := sys.APIKey(t)
	e := sys.StartEdge(t, "edge-a", nil)
	node := sys.StartNode(t, "node-a", nil)
	release := make(chan struct{})
	for i := range 5 {
		id := fmt.Sprintf("thermo-%d", i)
		testsys.StartDevice(t, node, id, sys.AddDevice(t, id), map[string]device.HandlerFunc{
			"work": func(ctx context.Context, _ json.RawMessage) (any, error) {
				select {
				case <-release:
					return map[string]string{"by": id}, nil
				case <-ctx.Done():
					return nil, ctx.Err()
				}
			},
		})
	}
	testsys.Eventually(t, "devices online", func() bool { return len(livePresence(t, sys)) == 5 })

	var ids []uuid.UUID
	for i := range 10 {
		ids = append(ids, accept(t, ctx, e.URL, key, fmt.Sprintf("thermo-%d", i%5), `{"name":"work"}`))
	}
	testsys.Eventually(t, "all delivered", func() bool {
		n := 0
		for _, o := range outcomes(t, ctx, sys.Pool, ids) {
			if o.Status == "delivered" {
				n++
			}
		}
		return n == len(ids)
	})
	// A client follows one command over SSE through the outage.
	streamReq := authed(t, ctx, http.MethodGet, e.URL+"/v1/commands/"+ids[0].String()+"/events", key)
	streamReq.Header.Set("Last-Event-ID", "2")
	stream, err := http.DefaultClient.Do(streamReq)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Body.Close()

	if err := cluster.Crash(); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	close(release) // the devices answer while the database is away

	// Requests the edge cannot serve now get 503 and Retry-After.
	resp := post(t, ctx, e.URL, key, "thermo-0", "", "", `{"name":"work"}`)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" ||
		resp.Header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("POST during the outage: %d, Retry-After %q: %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	testsys.Eventually(t, "the node to hold all ten replies", func() bool {
		return node.Metric(t, `switchboard_conn_frames_received_total{node="node-a",type="reply"}`) >= float64(len(ids))
	})

	// The outage lasts longer than any retry schedule and than the lease;
	// its length is the fault itself, not a wait for an event.
	time.Sleep(time.Until(down.Add(outage)))
	if err := cluster.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("PostgreSQL was down for %v", time.Since(down).Round(time.Second))

	redelivered := 0
	for _, o := range waitAllDone(t, ctx, sys.Pool, ids) {
		if !strings.Contains(string(o.Result), `"by": "`+o.Device+`"`) {
			t.Errorf("command %s of %s: result %s", o.ID, o.Device, o.Result)
		}
		if o.Attempts > 1 {
			redelivered++
		}
	}
	t.Logf("%d of %d commands were delivered more than once (the lease lapsed during the outage)", redelivered, len(ids))

	events, err := testsys.NewEventReader(stream.Body).All()
	if err != nil || len(events) != 1 || events[0].Name != "reply" || events[0].ID != "3" {
		t.Fatalf("stream through the outage: %+v, %v; want the reply (id 3)", events, err)
	}

	// And the system serves new commands again.
	resp = post(t, ctx, e.URL, key, "thermo-1", "?wait=20s", "", `{"name":"work"}`)
	defer resp.Body.Close()
	var c command
	if err := json.NewDecoder(resp.Body).Decode(&c); err != nil || resp.StatusCode != http.StatusOK || c.Status != "done" {
		t.Fatalf("after the outage: %d %+v %v", resp.StatusCode, c, err)
	}
}

// Real processes die without cleaning up: a connection node is SIGKILLed
// with commands in flight (its devices come back through the load balancer
// on the other node and get the commands again), then an edge is SIGKILLed
// with the commands' SSE streams open (their clients resume on the other
// edge with Last-Event-ID). Every command ends done, delivered twice.
func TestProcessesKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	t.Parallel()
	bin := binary(t)
	dbURL := dbtest.NewEmptyDatabase(t)
	dbEnv := []string{"DATABASE_URL=" + dbURL}
	dir := t.TempDir()
	output(t, bin, dbEnv, "", "migrate")
	key := strings.TrimSpace(output(t, bin, dbEnv, "", "apikeys", "add", "fault-test"))
	var devices []string
	for i := range 10 {
		devices = append(devices, fmt.Sprintf("kill-%d", i))
	}
	creds := strings.Split(strings.TrimSpace(output(t, bin, dbEnv, strings.Join(devices, "\n")+"\n", "devices", "import")), "\n")

	type node struct {
		id, addr string
		proc     *proc
	}
	roots := x509.NewCertPool()
	var nodes []*node
	for _, id := range []string{"kill-node-a", "kill-node-b"} {
		cert := filepath.Join(dir, id+".pem")
		n := &node{id: id, addr: loopback(t)}
		ops := loopback(t)
		n.proc = start(t, bin, id, append(dbEnv, "CONN_LISTEN="+n.addr, "CONN_OPS_LISTEN="+ops, "NODE_ID="+id, "CONN_TLS=self-signed", "CONN_CERT_OUT="+cert), "conn")
		n.proc.ready(t, "http://"+ops+"/readyz")
		testsys.Eventually(t, id+"'s certificate", func() bool {
			pem, err := os.ReadFile(cert)
			return err == nil && roots.AppendCertsFromPEM(pem)
		})
		nodes = append(nodes, n)
	}
	var edges []*proc
	var edgeURLs []string
	for _, id := range []string{"kill-edge-a", "kill-edge-b"} {
		addr := loopback(t)
		p := start(t, bin, id, append(dbEnv, "EDGE_LISTEN="+addr, "EDGE_ID="+id), "edge")
		p.ready(t, "http://"+addr+"/readyz")
		edges, edgeURLs = append(edges, p), append(edgeURLs, "http://"+addr)
	}
	// The load balancer prefers node A while it is alive.
	lb := testsys.StartProxy(t, nodes[0].addr, nodes[1].addr)

	pool := dbtest.Pool(t, dbURL)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	release := make(chan struct{})
	devCtx, stopDevices := context.WithCancel(ctx)
	var running sync.WaitGroup
	defer func() { stopDevices(); running.Wait() }()
	for _, line := range creds {
		id, devSecret, _ := strings.Cut(line, ",")
		d := device.New(device.Config{
			URL: "wss://" + lb.Addr + "/v1/connect", ID: id, Secret: devSecret,
			TLS: &tls.Config{RootCAs: roots}, Log: dbtest.Logger(),
			MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		})
		d.Handle("work", func(ctx context.Context, _ json.RawMessage) (any, error) {
			select {
			case <-release:
				return map[string]string{"by": id}, nil
			case <-ctx.Done():
				return nil, ctx.Err() // the session ended: the redelivery runs it again
			}
		})
		running.Go(func() { _ = d.Run(devCtx) })
	}
	onNode := func(nodeID string) func() bool {
		return func() bool {
			var n int
			_ = pool.QueryRow(ctx, `SELECT count(*) FROM presence_live WHERE node_id = $1`, nodeID).Scan(&n)
			return n == len(devices)
		}
	}
	testsys.Eventually(t, "all devices on node A", onNode("kill-node-a"))

	// One SSE stream per device, through edge A, until each is delivered.
	type stream struct {
		id     uuid.UUID
		body   io.ReadCloser
		events *testsys.EventReader
		last   string
	}
	var streams []*stream
	for _, dev := range devices {
		resp := post(t, ctx, edgeURLs[0], key, dev, "", "text/event-stream", `{"name":"work"}`)
		s := &stream{body: resp.Body, events: testsys.NewEventReader(resp.Body)}
		for s.last != "2" {
			ev, err := s.events.Next()
			if err != nil {
				t.Fatalf("%s's stream: %v", dev, err)
			}
			var c command
			_ = json.Unmarshal([]byte(ev.Data), &c)
			s.id, s.last = uuid.MustParse(c.ID), ev.ID
		}
		streams = append(streams, s)
	}
	var ids []uuid.UUID
	for _, s := range streams {
		ids = append(ids, s.id)
	}

	// Node A dies with ten commands in flight.
	if err := nodes[0].proc.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testsys.Eventually(t, "all devices back, on node B", onNode("kill-node-b"))
	testsys.Eventually(t, "the commands delivered again, by node B", func() bool {
		for _, o := range outcomes(t, ctx, pool, ids) {
			if o.Status != "delivered" || o.Attempts != 2 || *o.NodeID != "kill-node-b" {
				return false
			}
		}
		return true
	})

	// Edge A dies with the streams open; their clients resume on edge B.
	if err := edges[0].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for _, s := range streams {
		if _, err := io.Copy(io.Discard, s.body); err == nil {
			t.Errorf("stream of %s ended cleanly when its edge was killed", s.id)
		}
		s.body.Close()
		req := authed(t, ctx, http.MethodGet, edgeURLs[1]+"/v1/commands/"+s.id.String()+"/events", key)
		req.Header.Set("Accept", "text/event-stream")
		req.Header.Set("Last-Event-ID", s.last)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		s.body, s.events = resp.Body, testsys.NewEventReader(resp.Body)
		defer resp.Body.Close()
	}
	close(release)
	for _, s := range streams {
		events, err := s.events.All()
		if err != nil || len(events) != 1 || events[0].Name != "reply" || events[0].ID != "3" {
			t.Errorf("resumed stream of %s: %+v, %v; want the reply (id 3)", s.id, events, err)
		}
	}
	for _, o := range waitAllDone(t, ctx, pool, ids) {
		if o.Attempts != 2 {
			t.Errorf("command %s of %s: %d deliveries, want 2 (node A's, node B's)", o.ID, o.Device, o.Attempts)
		}
	}

	stopDevices()
	running.Wait()
	nodes[1].proc.stop(t)
	edges[1].stop(t)
}
