package edge_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/edge"
)

// Metric labels come from fixed sets: a client inventing methods cannot
// add series.
func TestMetricLabelsAreBounded(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", func(c *edge.Config) { c.Metrics = prometheus.NewRegistry() })
	anon := newAPI(t, e.URL, "")
	keyed := newAPI(t, e.URL, sys.APIKey(t))
	scraper := newAPI(t, e.Ops, "")
	series := func() (n int, other bool) {
		t.Helper()
		resp, body := scraper.call(http.MethodGet, "/metrics", "")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /metrics: %d", resp.StatusCode)
		}
		for line := range strings.Lines(string(body)) {
			if strings.HasPrefix(line, "switchboard_edge_http_request_duration_seconds_count{") {
				n++
				other = other || strings.Contains(line, `method="OTHER"`) && strings.Contains(line, `code="4`)
			}
		}
		return n, other
	}
	bogus := func(i int) {
		path := []string{"/healthz", "/v1/commands/" + uuid.NewString(), "/nowhere/" + strconv.Itoa(i)}[i%3]
		c := []*api{anon, keyed}[i%2]
		if resp, _ := c.call(fmt.Sprintf("BOGUS%04d", i), path, ""); resp.StatusCode < 400 {
			t.Fatalf("method BOGUS%04d %s: status %d, want an error", i, path, resp.StatusCode)
		}
	}
	for i := range 6 { // every path and client once
		bogus(i)
	}
	series() // the scrape's own series
	before, other := series()
	if !other {
		t.Fatal(`no series with method="OTHER" and a 4xx code`)
	}
	for i := 6; i < 1000; i++ {
		bogus(i)
	}
	if after, _ := series(); after != before {
		t.Fatalf("%d series after a thousand bogus methods, %d before: methods became label values", after, before)
	}

	// A method of a megabyte never reaches a handler.
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(requestTimeout))
	go func() { _, _ = io.WriteString(conn, strings.Repeat("M", 1<<20)+" / HTTP/1.1\r\nHost: x\r\n\r\n") }()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading the answer to a 1 MB method: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("a 1 MB method got %d, want 431", resp.StatusCode)
	}
	if after, _ := series(); after != before {
		t.Fatalf("%d series after a 1 MB method, %d before", after, before)
	}
}

// A body sent slowly is cut at ReadTimeout: it cannot hold a handler.
func TestSlowBodyIsCut(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", func(c *edge.Config) { c.ReadTimeout = 300 * time.Millisecond })
	sys.AddDevice(t, "dev-1")
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(requestTimeout))
	fmt.Fprintf(conn, "POST /v1/devices/dev-1/commands HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: 1000\r\n\r\n{", sys.APIKey(t))
	answered := make(chan struct{})
	dribbled := make(chan int, 1)
	go func() { // a byte every 50ms, as a slow client would, until answered
		n := 0
		defer func() { dribbled <- n }()
		for ; n < 300; n++ {
			select {
			case <-answered:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if _, err := conn.Write([]byte(" ")); err != nil {
				return
			}
		}
	}()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	close(answered)
	if err != nil {
		t.Fatalf("no answer to a slow body: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	wantProblem(t, resp, body, http.StatusRequestTimeout, "request-timeout")
	if n := <-dribbled; n >= 300 {
		t.Fatalf("the edge waited for all %d bytes", n)
	}
	if n := countCommands(t, sys); n != 0 {
		t.Errorf("%d commands stored, want 0", n)
	}
}

// Streams and waits outlast the per-request deadlines, which would cut
// them if they were the server's.
func TestLongResponsesOutliveDeadlines(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", func(c *edge.Config) {
		c.ReadTimeout, c.WriteTimeout = 100*time.Millisecond, 100*time.Millisecond
		c.KeepAlive = 50 * time.Millisecond
	})
	sys.AddDevice(t, "dev-1")
	c := newAPI(t, e.URL, sys.APIKey(t))
	t.Run("stream", func(t *testing.T) {
		t.Parallel()
		_, sse := c.stream(http.MethodPost, "/v1/devices/dev-1/commands", `{"name":"read","ttl":"2s"}`)
		if got := eventsSummary(sse.all(t)); got != "1:accepted 3:expired" {
			t.Errorf("events %q, want 1:accepted 3:expired: the stream was cut", got)
		}
		if sse.Comments < 2 {
			t.Errorf("%d keep-alive comments over 2s, want several", sse.Comments)
		}
	})
	t.Run("wait", func(t *testing.T) {
		t.Parallel()
		start := time.Now()
		resp, body := c.sendCommand("dev-1?wait=1s", `{"name":"read"}`)
		wantCommand(t, resp, body, http.StatusAccepted)
		if took := time.Since(start); took < time.Second {
			t.Errorf("answered after %v, before the 1s wait: cut short", took)
		}
	})
}
