package loadgen

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
)

// WriteTable writes the summary for people.
func (s Summary) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(name, format string, args ...any) {
		fmt.Fprintf(tw, "%s\t"+format+"\n", append([]any{name}, args...)...)
	}
	if d := s.Devices; d.Devices > 0 {
		where := "in this process"
		if s.Processes > 0 {
			where = fmt.Sprintf("in %d worker processes", s.Processes)
		}
		row("devices", "%d held %s, ramped in %.1f s", d.Devices, where, s.RampSeconds)
		row("connections made", "%d (open at the end: %d)", d.Connected, d.Open)
		row("connections failed", "%d%s", d.Failed, kinds(d.FailedBy))
		row("disconnects", "%d%s", d.Disconnects, kinds(d.DisconnectsBy))
		if d.GaveUp > 0 {
			row("credentials refused", "%d devices gave up", d.GaveUp)
		}
		if d.Answered > 0 {
			row("commands answered", "%d", d.Answered)
		}
		if d.Desired > 0 {
			row("desired states given", "%d", d.Desired)
		}
	}
	if c := s.Commands; c != nil {
		target := fmt.Sprintf("open loop at %.0f/s", c.TargetRate)
		if c.Mode == "closed" {
			target = fmt.Sprintf("closed loop, %d clients", c.Concurrency)
		}
		row("commands", "%s, %.1f s after a %.1f s warm-up", target, c.Seconds, c.WarmupSeconds)
		row("attempted", "%d (%.1f/s)", c.Attempted, c.Rate)
		row("succeeded", "%d (%.1f/s, %.3f%%)", c.Succeeded, c.SuccessRate, 100*c.SuccessRatio)
		row("failed", "%d%s", c.Failed, kinds(c.FailedBy))
		l := c.Latency
		row("latency (ms)", "p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f", l.P50, l.P90, l.P99, l.P999, l.Max)
	}
	if n := s.Nodes; n != nil {
		for _, p := range n.Processes {
			if p.Err != "" {
				row("node "+p.URL, "metrics unread: %s", p.Err)
				continue
			}
			row("node "+strings.Join(p.Nodes, ","), "%d sessions, RSS %s", p.Sessions, mib(p.RSSBytes))
		}
		if n.Sessions > 0 {
			added := ""
			if n.AddedPerSession > 0 {
				added = fmt.Sprintf(" (%s added per session added)", kib(n.AddedPerSession))
			}
			row("node RSS per session", "%s%s", kib(n.RSSPerSession), added)
		}
	}
	return tw.Flush()
}

// kinds lists counts by kind, largest first: " (http_503: 2, timeout: 1)".
func kinds(by map[string]int64) string {
	if len(by) == 0 {
		return ""
	}
	names := slices.SortedFunc(maps.Keys(by), func(a, b string) int {
		if by[a] != by[b] {
			return int(by[b] - by[a])
		}
		return strings.Compare(a, b)
	})
	parts := make([]string, len(names))
	for i, k := range names {
		parts[i] = fmt.Sprintf("%s: %d", k, by[k])
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

func kib(b int64) string { return fmt.Sprintf("%.1f KiB", float64(b)/1024) }
func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
