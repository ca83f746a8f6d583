package edge_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/edge"
)

// The request metric's code label is the exact status the API answered,
// so that 401 and 403 rates by route can be watched (docs/monitoring.md),
// not a status class that would mix them with 404s.
func TestMetricStatusCodes(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", func(c *edge.Config) { c.Metrics = prometheus.NewRegistry() })
	reader := newAPI(t, e.URL, sys.APIKey(t, db.ScopeRead))
	anon := newAPI(t, e.URL, "")
	for _, c := range []struct {
		client *api
		method string
		path   string
		want   int
	}{
		{reader, http.MethodGet, "/v1/devices", http.StatusOK},
		{anon, http.MethodGet, "/v1/devices", http.StatusUnauthorized},
		{reader, http.MethodPost, "/v1/devices", http.StatusForbidden},
		{reader, http.MethodGet, "/v1/devices/" + uuid.NewString(), http.StatusNotFound},
	} {
		if resp, body := c.client.call(c.method, c.path, ""); resp.StatusCode != c.want {
			t.Fatalf("%s %s: %d %s, want %d", c.method, c.path, resp.StatusCode, body, c.want)
		}
	}
	resp, body := newAPI(t, e.Ops, "").call(http.MethodGet, "/metrics", "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d", resp.StatusCode)
	}
	for _, want := range []string{
		`code="200",edge="edge-a",method="GET",route="/v1/devices"}`,
		`code="401",edge="edge-a",method="GET",route="/v1/devices"}`,
		`code="403",edge="edge-a",method="POST",route="/v1/devices"}`,
		`code="404",edge="edge-a",method="GET",route="/v1/devices/{id}"}`,
	} {
		if !strings.Contains(string(body), "switchboard_edge_http_request_duration_seconds_count{"+want) {
			t.Errorf("no request series with %s", want)
		}
	}
	for line := range strings.Lines(string(body)) {
		if strings.HasPrefix(line, "switchboard_edge_http_request_duration_seconds_count{") && strings.Contains(line, `xx"`) {
			t.Errorf("a status class, not a code: %s", line)
		}
	}
}
