package loadgen

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// CommandsConfig says how the HTTP command clients drive the edges.
type CommandsConfig struct {
	Edges   []string // base URLs, such as http://127.0.0.1:8080; requests take turns
	APIKey  string
	Devices []string // the ids commanded, in turn
	// Rate is the commands a second sent on schedule, whether or not earlier
	// ones have been answered (open loop), by at most MaxInFlight at once.
	// When 0, Concurrency clients each send a command as soon as their last
	// one is answered (closed loop).
	Rate        float64
	Concurrency int
	MaxInFlight int
	Wait        time.Duration // ?wait=: how long the edge holds the request for the reply
	TLS         *tls.Config   // for https edges
}

// request outcomes, counted by kind; "ok" is success.
const (
	kindOK       = "ok"
	kindFailed   = "command_failed"  // 200, status failed: no reply within the command's timeout
	kindExpired  = "command_expired" // 200, status expired: not delivered within its ttl
	kindNotOK    = "reply_not_ok"    // 200, the device answered ok:false
	kindCanceled = "canceled"        // the run ended first
)

// Commands sends commands through the edges and records their outcome and
// latency.
type Commands struct {
	cfg    CommandsConfig
	client *http.Client
	urls   []string // one per device, each through an edge in turn
	body   []byte   // the same for every command
	header http.Header

	// from is when outcomes start to count (unix nanoseconds; 0: not
	// yet): commands due before it (the warm-up's) are dropped.
	from atomic.Int64

	mu        sync.Mutex // guards the following
	attempted int64
	succeeded int64
	latency   *hdrhistogram.Histogram
	byKind    map[string]int64 // failures by kind
}

// maxLatency bounds the histogram: nothing takes longer than a request's
// timeout, which is well under this.
const maxLatency = 5 * time.Minute

// NewCommands prepares the clients.
func NewCommands(cfg CommandsConfig) (*Commands, error) {
	if len(cfg.Edges) == 0 || len(cfg.Devices) == 0 {
		return nil, errors.New("commands need an edge and a device")
	}
	if cfg.Rate <= 0 && cfg.Concurrency <= 0 {
		return nil, errors.New("commands need a rate or a concurrency")
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 1000
	}
	if cfg.Wait <= 0 {
		cfg.Wait = 5 * time.Second
	}
	conns := cfg.Concurrency
	if cfg.Rate > 0 {
		conns = cfg.MaxInFlight
	}
	transport := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     cfg.TLS,
		MaxIdleConns:        conns + len(cfg.Edges),
		MaxIdleConnsPerHost: conns, // every request in flight keeps its connection for the next
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	c := &Commands{
		cfg:     cfg,
		client:  &http.Client{Transport: transport, Timeout: cfg.Wait + 10*time.Second},
		body:    []byte(`{"name":"` + EchoCommand + `","args":{"n":1},"timeout":"` + cfg.Wait.String() + `"}`),
		header:  http.Header{"Authorization": {"Bearer " + cfg.APIKey}, "Content-Type": {"application/json"}},
		latency: hdrhistogram.New(1, maxLatency.Microseconds(), 3),
		byKind:  make(map[string]int64),
	}
	wait := url.QueryEscape(cfg.Wait.String())
	for i, id := range cfg.Devices {
		edge := strings.TrimSuffix(cfg.Edges[i%len(cfg.Edges)], "/")
		c.urls = append(c.urls, edge+"/v1/devices/"+url.PathEscape(id)+"/commands?wait="+wait)
	}
	return c, nil
}

// Record counts the outcomes of the commands due from now on, until
// sending stops.
func (c *Commands) Record() { c.from.Store(time.Now().UnixNano()) }

// Run sends commands until sending ends, then waits for those in flight,
// which inFlight abandons: a command sent in the window counts however
// long it takes.
func (c *Commands) Run(sending, inFlight context.Context) error {
	defer c.client.CloseIdleConnections()
	if c.cfg.Rate > 0 {
		c.openLoop(sending, inFlight)
	} else {
		c.closedLoop(sending, inFlight)
	}
	return nil
}

// due is a command of the open loop: the n-th, due at at.
type due struct {
	n  int
	at time.Time
}

// openLoop sends Rate commands a second, on schedule. A command waiting
// for a free client counts as late: its latency runs from when it was due,
// so a saturated load generator shows up in the figures rather than
// hiding in them.
func (c *Commands) openLoop(ctx, inFlight context.Context) {
	queue := make(chan due)
	var clients sync.WaitGroup
	for range c.cfg.MaxInFlight {
		clients.Go(func() {
			for d := range queue {
				c.send(inFlight, d.n, d.at)
			}
		})
	}
	defer clients.Wait()
	defer close(queue)

	// Wake at most every millisecond and send what has come due since.
	const tick = time.Millisecond
	interval := time.Duration(float64(time.Second) / c.cfg.Rate)
	wake := time.NewTimer(0)
	defer wake.Stop()
	<-wake.C
	start := time.Now()
	for sent := 0; ; {
		now := time.Now()
		for ; ; sent++ {
			at := start.Add(time.Duration(sent) * interval)
			if at.After(now) {
				break
			}
			select {
			case queue <- due{sent, at}:
			case <-ctx.Done():
				return
			}
		}
		next := start.Add(time.Duration(sent) * interval)
		wake.Reset(max(time.Until(next), tick))
		select {
		case <-wake.C:
		case <-ctx.Done():
			return
		}
	}
}

// closedLoop runs Concurrency clients, each sending its next command once
// its last one is answered.
func (c *Commands) closedLoop(ctx, inFlight context.Context) {
	var clients sync.WaitGroup
	for w := range c.cfg.Concurrency {
		clients.Go(func() {
			for n := w; ctx.Err() == nil; n += c.cfg.Concurrency {
				c.send(inFlight, n, time.Now())
			}
		})
	}
	clients.Wait()
}

// bufs are response bodies being read.
var bufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// send sends the n-th command, due at at, and records its outcome.
func (c *Commands) send(ctx context.Context, n int, at time.Time) {
	kind := c.roundTrip(ctx, c.urls[n%len(c.urls)])
	if from := c.from.Load(); from == 0 || at.UnixNano() < from || kind == kindCanceled {
		return
	}
	took := time.Since(at)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.attempted++
	_ = c.latency.RecordValue(took.Microseconds())
	if kind == kindOK {
		c.succeeded++
	} else {
		c.byKind[kind]++
	}
}

// roundTrip posts one command and names its outcome.
func (c *Commands) roundTrip(ctx context.Context, url string) string {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(c.body))
	if err != nil {
		return kindBadResponse
	}
	req.Header = c.header.Clone()
	resp, err := c.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return kindCanceled
		}
		return netKind(err)
	}
	buf := bufs.Get().(*bytes.Buffer)
	defer bufs.Put(buf)
	buf.Reset()
	_, err = io.Copy(buf, resp.Body)
	resp.Body.Close()
	if err != nil {
		if ctx.Err() != nil {
			return kindCanceled
		}
		return netKind(err)
	}
	return outcome(resp.StatusCode, buf.Bytes())
}

// outcome names the result of a ?wait= request from its status and body.
func outcome(status int, body []byte) string {
	switch status {
	case http.StatusOK:
		var cmd struct {
			Status string `json:"status"`
			OK     *bool  `json:"ok"`
		}
		if json.Unmarshal(body, &cmd) != nil {
			return kindBadResponse
		}
		switch {
		case cmd.Status == "done" && cmd.OK != nil && *cmd.OK:
			return kindOK
		case cmd.Status == "done":
			return kindNotOK
		case cmd.Status == "failed":
			return kindFailed
		case cmd.Status == "expired":
			return kindExpired
		}
		return kindBadResponse
	case http.StatusAccepted:
		return kindNotDone
	}
	// A problem's type names it better than its status alone.
	var p struct {
		Type string `json:"type"`
	}
	if json.Unmarshal(body, &p) == nil && p.Type != "" {
		return fmt.Sprintf("%s %s", httpKind(status), p.Type[strings.LastIndexByte(p.Type, '/')+1:])
	}
	return httpKind(status)
}

// CommandCounts are the recorded outcomes.
type CommandCounts struct {
	Attempted int64            `json:"attempted"`
	Succeeded int64            `json:"succeeded"`
	Failed    int64            `json:"failed"`
	FailedBy  map[string]int64 `json:"failed_by"`
	Latency   Latency          `json:"latency_ms"`
}

// Latency is a distribution in milliseconds.
type Latency struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p999"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

// Counts is a snapshot of the recorded outcomes.
func (c *Commands) Counts() CommandCounts {
	c.mu.Lock()
	defer c.mu.Unlock()
	ms := func(us int64) float64 { return float64(us) / 1000 }
	out := CommandCounts{
		Attempted: c.attempted,
		Succeeded: c.succeeded,
		FailedBy:  make(map[string]int64, len(c.byKind)),
		Latency: Latency{
			P50: ms(c.latency.ValueAtQuantile(50)), P90: ms(c.latency.ValueAtQuantile(90)),
			P99: ms(c.latency.ValueAtQuantile(99)), P999: ms(c.latency.ValueAtQuantile(99.9)),
			Max: ms(c.latency.Max()), Mean: c.latency.Mean() / 1000,
		},
	}
	for k, n := range c.byKind {
		out.FailedBy[k] = n
		out.Failed += n
	}
	return out
}
