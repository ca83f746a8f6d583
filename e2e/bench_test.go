package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/edge"
)

// BenchmarkRoundTrip measures a command's full round trip: HTTP POST with
// ?wait to an edge, INSERT, NOTIFY to the node, delivery over TLS WebSocket
// to an SDK device, its reply, UPDATE, NOTIFY to the edge, the HTTP answer.
// Two edges, two nodes and 20 devices share one PostgreSQL, all on this
// machine. Serial measures latency; parallel (64 clients) measures
// throughput, which the batched writes and coalesced wake-ups serve.
//
//	go test -run '^$' -bench RoundTrip -benchtime 3000x .
func BenchmarkRoundTrip(b *testing.B) {
	sys := testsys.New(b)
	key := sys.APIKey(b)
	// One key sends every command, faster than its default rate allows:
	// the benchmark measures the round trip, not the limiter.
	noKeyLimit := func(c *edge.Config) { c.KeyRate = -1 }
	edges := []*testsys.Edge{sys.StartEdge(b, "bench-edge-a", noKeyLimit), sys.StartEdge(b, "bench-edge-b", noKeyLimit)}
	nodes := []*testsys.Node{sys.StartNode(b, "bench-node-a", nil), sys.StartNode(b, "bench-node-b", nil)}
	var ids []string
	for i := range 20 {
		id := fmt.Sprintf("bench-%02d", i)
		testsys.StartDevice(b, nodes[i%2], id, sys.AddDevice(b, id), whoami(id))
		ids = append(ids, id)
	}
	testsys.Eventually(b, "all devices present", func() bool {
		var n int
		_ = sys.Pool.QueryRow(context.Background(), `SELECT count(*) FROM presence_live`).Scan(&n)
		return n == len(ids)
	})
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}, Timeout: 30 * time.Second}
	var next atomic.Int64
	send := func() error {
		n := next.Add(1)
		url := fmt.Sprintf("%s/v1/devices/%s/commands?wait=10s", edges[n%2].URL, ids[n%int64(len(ids))])
		req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(`{"name":"whoami"}`))
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"status":"done"`) {
			return fmt.Errorf("%d %s", resp.StatusCode, body)
		}
		return nil
	}

	b.Run("serial", func(b *testing.B) {
		for b.Loop() {
			if err := send(); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "commands/s")
	})
	b.Run("parallel64", func(b *testing.B) {
		b.SetParallelism(64 / runtime.GOMAXPROCS(0)) // 64 clients in all
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := send(); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "commands/s")
	})
}
