package e2e

// Monitoring with the real tools: the alerting rules pass promtool's checks
// and unit tests (deploy/prometheus/alerts_test.yml), and a real
// Prometheus (Debian's package; scripts/test installs it and sets
// PROMETHEUS_BIN and PROMTOOL_BIN) scrapes a running system — an edge and
// two nodes in two regions, on their ops listeners — while a device takes
// commands and sends events. Every query of the Grafana dashboard
// (deploy/grafana/switchboard.json) and every alert's expression must
// parse and return data through Prometheus's HTTP API, or be listed below
// as empty at rest, with why; a healthy system fires no alert. Grafana
// itself is not installable here: the dashboard's structure is checked
// instead (TestDashboardStructure).

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-iot/switchboard/app/testsys"
	conntier "github.com/switchboard-iot/switchboard/conn-tier"
	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/device"
)

// emptyAtRest are the dashboard's queries that a short test's traffic
// leaves without data, and why. Any other query must return data.
var emptyAtRest = map[string]string{
	`sum by (limit) (rate(switchboard_edge_requests_limited_total[$__rate_interval]))`:   "no request is refused by a limit (429): the series exists once one is",
	`sum by (reason) (rate(switchboard_conn_closes_total[$__rate_interval]))`:            "no node closes a session (a drain, a replacement, a revocation) during the test",
	`sum by (reason) (rate(switchboard_conn_refused_total[$__rate_interval]))`:           "no node is full or draining, so none refuses a connect",
	`sum by (type) (rate(switchboard_conn_messages_over_rate_total[$__rate_interval]))`:  "no device sends faster than its rate",
	`sum by (outcome) (rate(switchboard_edge_webhook_attempts_total[$__rate_interval]))`: "no webhook endpoint is configured, so no delivery is attempted",
}

// prometheusBinaries are $PROMETHEUS_BIN and $PROMTOOL_BIN, else those on
// PATH; the test is skipped without them.
func prometheusBinaries(t *testing.T) (prometheus, promtool string) {
	t.Helper()
	find := func(env, name string) string {
		if bin := os.Getenv(env); bin != "" {
			return bin
		}
		bin, err := exec.LookPath(name)
		if err != nil {
			t.Skipf("no %s: set %s or put it on PATH (scripts/test installs Debian's prometheus package: apt-get install prometheus)", name, env)
		}
		return bin
	}
	return find("PROMETHEUS_BIN", "prometheus"), find("PROMTOOL_BIN", "promtool")
}

func TestPrometheusRules(t *testing.T) {
	t.Parallel()
	_, promtool := prometheusBinaries(t)
	for _, args := range [][]string{
		{"check", "rules", "alerts.yml"},
		{"test", "rules", "alerts_test.yml"},
		{"check", "config", "prometheus.yml"},
	} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = "../deploy/prometheus"
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	// Every alert has a unit test: its name appears in an alert_rule_test.
	rules, tests := readFile(t, "../deploy/prometheus/alerts.yml"), readFile(t, "../deploy/prometheus/alerts_test.yml")
	names := regexp.MustCompile(`(?m)^\s*- alert: (\S+)`).FindAllStringSubmatch(rules, -1)
	if len(names) == 0 {
		t.Fatal("no alert in alerts.yml")
	}
	for _, m := range names {
		if !regexp.MustCompile(`alertname: ` + m[1] + `\b[^\n]*\n\s*exp_alerts:\s*\n\s*- exp_labels`).MatchString(tests) {
			t.Errorf("alert %s: no unit test in alerts_test.yml expects it to fire", m[1])
		}
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// dashboard is what the tests read of the Grafana dashboard.
type dashboard struct {
	UID        string      `json:"uid"`
	Title      string      `json:"title"`
	Panels     []dashPanel `json:"panels"`
	Templating struct {
		List []struct {
			Name, Type, Query string
		} `json:"list"`
	} `json:"templating"`
}

type dashPanel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	GridPos *struct{ H, W, X, Y int } `json:"gridPos"`
	Targets []struct {
		RefID        string `json:"refId"`
		Expr         string `json:"expr"`
		LegendFormat string `json:"legendFormat"`
	} `json:"targets"`
	FieldConfig struct {
		Defaults struct {
			Unit       string `json:"unit"`
			Thresholds *struct {
				Mode  string            `json:"mode"`
				Steps []json.RawMessage `json:"steps"`
			} `json:"thresholds"`
		} `json:"defaults"`
	} `json:"fieldConfig"`
}

func readDashboard(t *testing.T) dashboard {
	t.Helper()
	var d dashboard
	dec := json.NewDecoder(strings.NewReader(readFile(t, "../deploy/grafana/switchboard.json")))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("deploy/grafana/switchboard.json: %v", err)
	}
	return d
}

// The dashboard as Grafana would load it: every panel has a unique id, a
// place on the grid, the Prometheus datasource (the dashboard's
// datasource variable), a unit, thresholds and queries with legends; and
// docs/monitoring.md shows each query.
func TestDashboardStructure(t *testing.T) {
	t.Parallel()
	d := readDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Errorf("dashboard uid %q, title %q: want both", d.UID, d.Title)
	}
	if !slices.ContainsFunc(d.Templating.List, func(v struct{ Name, Type, Query string }) bool {
		return v.Name == "datasource" && v.Type == "datasource" && v.Query == "prometheus"
	}) {
		t.Error(`no "datasource" variable of type datasource for prometheus`)
	}
	docs := readFile(t, "../docs/monitoring.md")
	ids := map[int]string{}
	type cell struct{ x, y int }
	taken := map[cell]string{}
	queries := 0
	for _, p := range d.Panels {
		name := fmt.Sprintf("panel %d %q", p.ID, p.Title)
		if other, dup := ids[p.ID]; dup || p.ID <= 0 {
			t.Errorf("%s: id not unique and positive (also %s)", name, other)
		}
		ids[p.ID] = p.Title
		if p.Title == "" {
			t.Errorf("%s: no title", name)
		}
		if p.GridPos == nil || p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X < 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("%s: gridPos %+v: want a place within the 24 columns", name, p.GridPos)
		} else {
			for x := p.GridPos.X; x < p.GridPos.X+p.GridPos.W; x++ {
				for y := p.GridPos.Y; y < p.GridPos.Y+p.GridPos.H; y++ {
					if other, ok := taken[cell{x, y}]; ok {
						t.Fatalf("%s overlaps %s at %d,%d", name, other, x, y)
					}
					taken[cell{x, y}] = name
				}
			}
		}
		if p.Type == "row" {
			continue
		}
		if !slices.Contains([]string{"timeseries", "stat", "gauge", "bargauge", "table"}, p.Type) {
			t.Errorf("%s: type %q", name, p.Type)
		}
		if p.Datasource == nil || p.Datasource.Type != "prometheus" || p.Datasource.UID != "${datasource}" {
			t.Errorf("%s: datasource %+v, want prometheus ${datasource}", name, p.Datasource)
		}
		if p.FieldConfig.Defaults.Unit == "" {
			t.Errorf("%s: no unit", name)
		}
		if th := p.FieldConfig.Defaults.Thresholds; th == nil || th.Mode == "" || len(th.Steps) == 0 {
			t.Errorf("%s: no thresholds", name)
		}
		if len(p.Targets) == 0 {
			t.Errorf("%s: no query", name)
		}
		refs := map[string]bool{}
		for _, q := range p.Targets {
			queries++
			if q.Expr == "" || q.RefID == "" || refs[q.RefID] || q.LegendFormat == "" {
				t.Errorf("%s: target %+v: want an expr, a legend and a unique refId", name, q)
			}
			refs[q.RefID] = true
			if !strings.Contains(docs, q.Expr) {
				t.Errorf("%s: docs/monitoring.md does not show its query %s", name, q.Expr)
			}
		}
	}
	if queries < 40 {
		t.Errorf("%d queries: the dashboard lost panels", queries)
	}
}

// promAPI queries a Prometheus's HTTP API.
type promAPI struct {
	t    *testing.T
	base string
}

// get decodes the data of a successful answer to path into out; it
// returns the error Prometheus gave, if any.
func (p promAPI) get(path string, out any) error {
	p.t.Helper()
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(p.base + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	var env struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		return fmt.Errorf("%s: %d %s", path, resp.StatusCode, body)
	}
	if env.Status != "success" {
		return fmt.Errorf("%s: %s", path, env.Error)
	}
	return json.Unmarshal(env.Data, out)
}

// query evaluates expr now: the number of series it returns.
func (p promAPI) query(expr string) (int, error) {
	var data struct {
		ResultType string            `json:"resultType"`
		Result     []json.RawMessage `json:"result"`
	}
	if err := p.get("/api/v1/query?query="+url.QueryEscape(expr), &data); err != nil {
		return 0, err
	}
	if data.ResultType != "vector" {
		return 0, fmt.Errorf("result type %s, want vector", data.ResultType)
	}
	return len(data.Result), nil
}

// rateInterval stands for Grafana's $__rate_interval: at least four scrape
// intervals (1s here).
func withRateInterval(expr string) string { return strings.ReplaceAll(expr, "$__rate_interval", "1m") }

func TestPrometheusScrapesSystem(t *testing.T) {
	t.Parallel()
	promBin, _ := prometheusBinaries(t)
	sys := testsys.New(t)
	key := sys.APIKey(t)
	e := sys.StartEdge(t, "edge-prom", nil)
	nodeEU := sys.StartNode(t, "node-eu", func(c *conntier.Config) { c.Node.Region = "eu" })
	nodeUS := sys.StartNode(t, "node-us", func(c *conntier.Config) { c.Node.Region = "us" })
	dev := testsys.StartDevice(t, nodeEU, "prom-1", sys.AddDevice(t, "prom-1"), map[string]device.HandlerFunc{
		"echo": func(_ context.Context, args json.RawMessage) (any, error) { return args, nil },
	})
	testsys.StartDevice(t, nodeUS, "prom-2", sys.AddDevice(t, "prom-2"), nil)

	// A Prometheus of the test's own: its port, its folder, the
	// repository's rules, a scrape and an evaluation every second.
	dir := t.TempDir()
	rules, err := filepath.Abs("../deploy/prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	host := func(u string) string { return strings.TrimPrefix(u, "http://") }
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [%q]
scrape_configs:
  - job_name: switchboard-edge
    static_configs: [{targets: [%q]}]
  - job_name: switchboard-conn
    static_configs: [{targets: [%q, %q]}]
`, rules, host(e.Ops), host(nodeEU.Ops), host(nodeUS.Ops))
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // Prometheus takes the port: a small race with another process, on loopback only
	logFile, err := os.Create(filepath.Join(dir, "prometheus.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(promBin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+addr, "--log.level=warn")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // ends when the process does: the cleanup below stops it
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(dir, "prometheus.log"))
			t.Logf("prometheus's log:\n%s", log)
		}
	})
	prom := promAPI{t: t, base: "http://" + addr}
	testsys.EventuallyWithin(t, 30*time.Second, "Prometheus to scrape the edge and both nodes", func() bool {
		select {
		case err := <-exited:
			t.Fatalf("prometheus exited: %v", err)
		default:
		}
		n, err := prom.query(`up == 1`)
		return err == nil && n == 3
	})

	// Traffic: commands waited on (the round trip), events, a refused
	// key (401) and a missing scope (403).
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range 5 {
		resp := post(t, ctx, e.URL, key, "prom-1", "?wait=10s", "", fmt.Sprintf(`{"name":"echo","args":{"n":%d}}`, i))
		var got command
		err := json.NewDecoder(resp.Body).Decode(&got)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || got.Status != "done" {
			t.Fatalf("command %d: %d %+v %v, want 200 done", i, resp.StatusCode, got, err)
		}
		if err := dev.Event(ctx, "tick", map[string]int{"n": i}); err != nil {
			t.Fatal(err)
		}
	}
	readOnly := sys.APIKey(t, db.ScopeRead)
	for _, c := range []struct {
		key  string
		want int
	}{{"", http.StatusUnauthorized}, {readOnly, http.StatusForbidden}} {
		resp := post(t, ctx, e.URL, c.key, "prom-1", "", "", `{"name":"echo"}`)
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Fatalf("command with key %q: %d, want %d", c.key, resp.StatusCode, c.want)
		}
	}

	// Every dashboard query parses and, unless it is empty at rest,
	// returns data once a few scrapes have seen the traffic.
	d := readDashboard(t)
	var exprs []string
	for _, p := range d.Panels {
		for _, q := range p.Targets {
			exprs = append(exprs, q.Expr)
		}
	}
	for expr := range emptyAtRest {
		if !slices.Contains(exprs, expr) {
			t.Errorf("emptyAtRest lists %s, which the dashboard no longer has", expr)
		}
	}
	missing := map[string]error{}
	deadline := time.Now().Add(20 * time.Second)
	for {
		clear(missing)
		for _, expr := range exprs {
			n, err := prom.query(withRateInterval(expr))
			if err != nil {
				t.Fatalf("dashboard query %s: %v", expr, err) // a query that does not parse never will
			}
			if _, empty := emptyAtRest[expr]; n == 0 && !empty {
				missing[expr] = nil
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond) // the next scrapes (every second)
	}
	for expr := range missing {
		t.Errorf("dashboard query returns no data: %s", expr)
	}
	if n, _ := prom.query(`sum by (region) (switchboard_conn_sessions * on (node) group_left (region) switchboard_conn_node_info) == 1`); n != 2 {
		t.Errorf("sessions by region: %d regions with one session, want eu and us", n)
	}

	// Every alert: loaded and evaluated without error, annotated, its
	// runbook a section of docs/monitoring.md, its expression valid and
	// naming only series that exist; none fires on this healthy system.
	type rule struct {
		Name        string            `json:"name"`
		Query       string            `json:"query"`
		Type        string            `json:"type"`
		Health      string            `json:"health"`
		LastError   string            `json:"lastError"`
		Annotations map[string]string `json:"annotations"`
		Labels      map[string]string `json:"labels"`
		State       string            `json:"state"`
	}
	var alerts []rule
	testsys.EventuallyWithin(t, 20*time.Second, "Prometheus to evaluate every rule", func() bool {
		var data struct {
			Groups []struct{ Rules []rule } `json:"groups"`
		}
		if err := prom.get("/api/v1/rules?type=alert", &data); err != nil {
			t.Fatal(err)
		}
		alerts = alerts[:0]
		for _, g := range data.Groups {
			alerts = append(alerts, g.Rules...)
		}
		return len(alerts) > 0 && !slices.ContainsFunc(alerts, func(r rule) bool { return r.Health == "unknown" })
	})
	want := regexp.MustCompile(`(?m)^\s*- alert: `).FindAllStringIndex(readFile(t, rules), -1)
	if len(alerts) != len(want) {
		t.Errorf("Prometheus loaded %d alerts, alerts.yml has %d", len(alerts), len(want))
	}
	docs := readFile(t, "../docs/monitoring.md")
	names := regexp.MustCompile(`\b(switchboard_[a-z0-9_]*[a-z0-9]|go_[a-z0-9_]+|process_[a-z0-9_]+|up)\b`)
	for _, r := range alerts {
		if r.Health != "ok" || r.LastError != "" {
			t.Errorf("alert %s: health %s %s", r.Name, r.Health, r.LastError)
		}
		if r.State != "inactive" {
			t.Errorf("alert %s is %s on a healthy system", r.Name, r.State)
		}
		if r.Labels["severity"] == "" {
			t.Errorf("alert %s: no severity label", r.Name)
		}
		for _, a := range []string{"summary", "description", "runbook"} {
			if r.Annotations[a] == "" {
				t.Errorf("alert %s: no %s annotation", r.Name, a)
			}
		}
		anchor := strings.ToLower(r.Name)
		if !strings.HasSuffix(r.Annotations["runbook"], "docs/monitoring.md#"+anchor) || !strings.Contains(docs, "\n### "+r.Name+"\n") {
			t.Errorf("alert %s: runbook %q: want docs/monitoring.md#%s, a section of its own", r.Name, r.Annotations["runbook"], anchor)
		}
		if _, err := prom.query(r.Query); err != nil {
			t.Errorf("alert %s: %v", r.Name, err)
		}
		for _, m := range names.FindAllString(r.Query, -1) {
			if n, err := prom.query(fmt.Sprintf(`count(%s)`, m)); err != nil || n == 0 {
				t.Errorf("alert %s watches %s, which Prometheus has no series of (%v)", r.Name, m, err)
			}
		}
		for _, m := range regexp.MustCompile(`__name__=~"([^"]+)"`).FindAllStringSubmatch(r.Query, -1) {
			if n, err := prom.query(fmt.Sprintf(`count({__name__=~%q})`, m[1])); err != nil || n == 0 {
				t.Errorf("alert %s watches %s, which matches no series (%v)", r.Name, m[1], err)
			}
		}
	}
}

// A node exports its certificate's expiry: the certificate it serves.
func TestCertificateExpiryMetric(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-cert", nil)
	conn, err := tls.Dial("tcp", strings.TrimPrefix(node.Base, "https://"), &tls.Config{RootCAs: node.Roots, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	notAfter := conn.ConnectionState().PeerCertificates[0].NotAfter
	conn.Close()
	got := node.Metric(t, `switchboard_conn_certificate_expiry_timestamp_seconds{node="node-cert"}`)
	if got != float64(notAfter.Unix()) {
		t.Fatalf("switchboard_conn_certificate_expiry_timestamp_seconds = %v, want %d (%v)", got, notAfter.Unix(), notAfter)
	}
	if v := node.Metric(t, `switchboard_conn_lease_held{node="node-cert"}`); v != 1 {
		t.Fatalf("switchboard_conn_lease_held = %v, want 1", v)
	}
}
