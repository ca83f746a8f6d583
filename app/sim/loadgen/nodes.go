package loadgen

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// The series read from a node's /metrics.
const (
	rssSeries      = "process_resident_memory_bytes"
	sessionsSeries = "switchboard_conn_sessions"
)

// NodeProcess is what a node process's metrics say. Nodes sharing a
// process (switchboard dev) share one.
type NodeProcess struct {
	URL      string   `json:"url"`
	Nodes    []string `json:"nodes"` // the node ids it serves
	RSSBytes int64    `json:"rss_bytes"`
	Sessions int64    `json:"sessions"`
	Err      string   `json:"error,omitempty"`
}

// NodeMetrics is the target nodes' memory and sessions.
type NodeMetrics struct {
	Processes []NodeProcess `json:"processes"`
	RSSBytes  int64         `json:"rss_bytes"` // of all the processes
	Sessions  int64         `json:"sessions"`
	// RSSPerSession is RSSBytes over Sessions: what a connection costs,
	// the process's own baseline included.
	RSSPerSession int64 `json:"rss_per_session_bytes"`
	// AddedPerSession is what the RSS grew by over the sessions added since
	// the run began: the baseline left out. 0 when it did not grow (memory
	// of an earlier run, not yet returned, was reused).
	AddedPerSession int64 `json:"added_rss_per_session_bytes"`
}

// ScrapeNodes reads each URL's metrics. A process seen through two URLs
// (the same node ids) counts once.
func ScrapeNodes(ctx context.Context, urls []string, tlsCfg *tls.Config) NodeMetrics {
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}, Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	var m NodeMetrics
	seen := make(map[string]bool)
	for _, u := range urls {
		p := scrapeNode(ctx, client, u)
		key := strings.Join(p.Nodes, ",")
		if p.Err == "" && key != "" && seen[key] {
			continue
		}
		seen[key] = true
		m.Processes = append(m.Processes, p)
		m.RSSBytes += p.RSSBytes
		m.Sessions += p.Sessions
	}
	if m.Sessions > 0 {
		m.RSSPerSession = m.RSSBytes / m.Sessions
	}
	return m
}

// Since sets AddedPerSession from a scrape taken before.
func (m *NodeMetrics) Since(before NodeMetrics) {
	if added := m.Sessions - before.Sessions; added > 0 && m.RSSBytes > before.RSSBytes {
		m.AddedPerSession = (m.RSSBytes - before.RSSBytes) / added
	}
}

func scrapeNode(ctx context.Context, client *http.Client, u string) NodeProcess {
	p := NodeProcess{URL: u}
	fail := func(err error) NodeProcess {
		p.Err = err.Error()
		return p
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fail(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return fail(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fail(fmt.Errorf("%s: HTTP %d", u, resp.StatusCode))
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return fail(fmt.Errorf("%s: %w", u, err))
	}
	if f := families[rssSeries]; f != nil && len(f.GetMetric()) > 0 {
		p.RSSBytes = int64(f.GetMetric()[0].GetGauge().GetValue())
	}
	if f := families[sessionsSeries]; f != nil {
		for _, s := range f.GetMetric() {
			p.Sessions += int64(s.GetGauge().GetValue())
			for _, l := range s.GetLabel() {
				if l.GetName() == "node" {
					p.Nodes = append(p.Nodes, l.GetValue())
				}
			}
		}
	}
	slices.Sort(p.Nodes)
	return p
}
