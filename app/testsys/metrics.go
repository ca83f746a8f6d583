package testsys

import (
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Metrics is one scrape of a /metrics page in Prometheus's text format.
type Metrics struct {
	// Families maps each metric family's name (from its "# TYPE" line) to
	// its type: counter, gauge, histogram, summary or untyped.
	Families map[string]string
	Samples  []Sample
}

// Sample is one line of a scrape: a series and its value.
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// Scrape reads url (a /metrics page) with client (nil: a plain one).
func Scrape(t testing.TB, client *http.Client, url string) Metrics {
	t.Helper()
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("scraping %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("scraping %s: %v", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scraping %s: %d %s", url, resp.StatusCode, body)
	}
	m, err := ParseMetrics(string(body))
	if err != nil {
		t.Fatalf("scraping %s: %v", url, err)
	}
	return m
}

var (
	sampleLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: \S+)?$`)
	labelPair  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)
)

// ParseMetrics reads Prometheus's text exposition format.
func ParseMetrics(text string) (Metrics, error) {
	m := Metrics{Families: make(map[string]string)}
	for line := range strings.Lines(text) {
		line = strings.TrimSpace(line)
		if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			if name, kind, ok := strings.Cut(rest, " "); ok {
				m.Families[name] = kind
			}
			continue
		}
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		parts := sampleLine.FindStringSubmatch(line)
		if parts == nil {
			return Metrics{}, fmt.Errorf("unreadable sample %q", line)
		}
		v, err := strconv.ParseFloat(parts[3], 64)
		if err != nil {
			return Metrics{}, fmt.Errorf("sample %q: %v", line, err)
		}
		s := Sample{Name: parts[1], Labels: make(map[string]string), Value: v}
		for _, pair := range labelPair.FindAllStringSubmatch(parts[2], -1) {
			s.Labels[pair[1]] = pair[2]
		}
		m.Samples = append(m.Samples, s)
	}
	return m, nil
}

// Get sums the samples named name whose labels include labels (given as
// "key", "value" pairs), and reports whether there was any.
func (m Metrics) Get(name string, labels ...string) (float64, bool) {
	var sum float64
	found := false
next:
	for _, s := range m.Samples {
		if s.Name != name {
			continue
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if s.Labels[labels[i]] != labels[i+1] {
				continue next
			}
		}
		sum, found = sum+s.Value, true
	}
	return sum, found
}

// HasFamily reports whether name is a family of the scrape, or one of a
// histogram's or summary's series (name_bucket, name_sum, name_count).
func (m Metrics) HasFamily(name string) bool {
	if _, ok := m.Families[name]; ok {
		return true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok {
			if kind := m.Families[base]; kind == "histogram" || kind == "summary" {
				return true
			}
		}
	}
	return false
}

// ScrapeOps scrapes the node's ops listener.
func (n *Node) ScrapeOps(t testing.TB) Metrics {
	t.Helper()
	return Scrape(t, nil, n.Ops+"/metrics")
}

// Scrape scrapes the edge's ops listener.
func (e *Edge) Scrape(t testing.TB) Metrics {
	t.Helper()
	return Scrape(t, nil, e.Ops+"/metrics")
}
