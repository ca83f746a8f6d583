package conntier_test

import (
	"net/http"
	"strconv"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchboard-iot/switchboard/app/testsys"
	conntier "github.com/switchboard-iot/switchboard/conn-tier"
	"github.com/switchboard-iot/switchboard/device/protocol"
)

// A full node answers 503 with a jittered Retry-After before it looks at
// credentials, and admits again once a session has ended.
func TestAdmissionRefusesPastMaxSessions(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	reg := prometheus.NewRegistry()
	node := sys.StartNode(t, "node-a", func(c *conntier.Config) {
		c.MaxSessions = 2
		c.Metrics = reg
	})
	first := connect(t, node, "dev-1", sys.AddDevice(t, "dev-1"))
	connect(t, node, "dev-2", sys.AddDevice(t, "dev-2"))
	thirdSecret := sys.AddDevice(t, "dev-3")

	// Unknown credentials get 503, not 401: nothing was looked up.
	for _, creds := range [][2]string{{"dev-3", thirdSecret}, {"no-such-device", "x"}} {
		ws, resp, err := dialRaw(t, node, basicAuth(creds[0], creds[1]), protocol.Subprotocol)
		if err == nil {
			ws.Close()
			t.Fatalf("%s connected to a full node", creds[0])
		}
		readProblem(t, resp, http.StatusServiceUnavailable, "node-full")
		retry, err := strconv.Atoi(resp.Header.Get("Retry-After"))
		if err != nil || retry < 2 || retry > 10 {
			t.Fatalf("Retry-After %q, want 2 to 10 seconds", resp.Header.Get("Retry-After"))
		}
	}
	if got := node.Metric(t, `switchboard_conn_refused_total{node="node-a",reason="full"}`); got != 2 {
		t.Fatalf("refused (full) = %v, want 2", got)
	}

	closeNormally(t, first)
	testsys.Eventually(t, "dev-1's session to end", func() bool { return node.Sessions() < 2 })
	connect(t, node, "dev-3", thirdSecret)
}
