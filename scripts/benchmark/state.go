package main

// The state and webhooks scenarios (issue 17): desired-state patches as
// fast as answered, and webhook deliveries to a receiver this process
// serves, with what each costs PostgreSQL.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

// fleetIDs are the ids of the first n devices of the credentials file:
// those a loadgen of n devices holds.
func (b *bench) fleetIDs(n int) ([]string, error) {
	creds, err := os.ReadFile(b.creds)
	if err != nil {
		return nil, err
	}
	var ids []string
	for line := range strings.Lines(string(creds)) {
		if id, _, ok := strings.Cut(strings.TrimSpace(line), ","); ok && len(ids) < n {
			ids = append(ids, id)
		}
	}
	if len(ids) < n {
		return nil, fmt.Errorf("%d devices in %s, want %d", len(ids), b.creds, n)
	}
	return ids, nil
}

// apiKey makes an API key with these scopes.
func (b *bench) apiKey(ctx context.Context, name, scopes string) (string, error) {
	out, err := b.output(ctx, "apikeys", "add", name, "-scopes", scopes)
	return strings.TrimSpace(string(out)), err
}

// call sends one API request and decodes a 2xx answer's JSON into out
// (when given).
func call(ctx context.Context, method, url, key string, body any, out any) error {
	var r io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return err
		}
		r = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, r)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: %d %s", method, url, resp.StatusCode, raw)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(raw, out)
}

// ---- state

// patchRun is what the patch clients did.
type patchRun struct {
	ok, failed int64            // every patch, the warm-up's included
	okWindow   int64            // answered 200 in the measured window
	failedBy   map[string]int64 // in the window, by status
	seconds    float64          // the measured window
	latency    *hdrhistogram.Histogram
}

// patchLoop runs clients that each PATCH the desired state of their own
// devices (client w has the devices w, w+clients, …: no two clients wait
// on one device's lock), one after the other, each as soon as the last
// was answered, through the edges in turn, for warmup and run. Every
// patch sets a new target_celsius, so every one changes the document.
func patchLoop(ctx context.Context, edges []string, key string, ids []string, clients int, warmup, run time.Duration) *patchRun {
	clients = min(clients, len(ids))
	tr := &http.Transport{MaxIdleConns: clients + len(edges), MaxIdleConnsPerHost: clients, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	r := &patchRun{failedBy: map[string]int64{}, latency: hdrhistogram.New(1, (time.Minute).Microseconds(), 3)}
	var mu sync.Mutex // guards r
	begin := time.Now()
	from, end := begin.Add(warmup), begin.Add(warmup+run)
	var wg sync.WaitGroup
	for w := range clients {
		wg.Go(func() {
			mine := (len(ids) - w + clients - 1) / clients
			for k := 0; ctx.Err() == nil; k++ {
				start := time.Now()
				if !start.Before(end) {
					return
				}
				id := ids[w+(k%mine)*clients]
				url := edges[(w+k)%len(edges)] + "/v1/devices/" + id + "/state/desired"
				body := fmt.Sprintf(`{"target_celsius":%d}`, k*clients+w+1)
				req, err := http.NewRequestWithContext(ctx, http.MethodPatch, url, strings.NewReader(body))
				if err != nil {
					return
				}
				req.Header.Set("Authorization", "Bearer "+key)
				req.Header.Set("Content-Type", "application/merge-patch+json")
				kind := "ok"
				resp, err := client.Do(req)
				if err != nil {
					if ctx.Err() != nil {
						return
					}
					kind = "error"
				} else {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						kind = "http_" + strconv.Itoa(resp.StatusCode)
					}
				}
				took := time.Since(start)
				mu.Lock()
				if kind == "ok" {
					r.ok++
				} else {
					r.failed++
				}
				if !start.Before(from) {
					_ = r.latency.RecordValue(took.Microseconds())
					if kind == "ok" {
						r.okWindow++
					} else {
						r.failedBy[kind]++
					}
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	r.seconds = time.Since(from).Seconds()
	return r
}

func ms(h *hdrhistogram.Histogram, q float64) float64 { return float64(h.ValueAtQuantile(q)) / 1000 }

// state: clients patch the desired state of answering devices as fast as
// answered; the devices count the state frames they are given.
func (b *bench) state(ctx context.Context) error {
	n := b.sz.throughputDevices
	edges, stop, err := b.answeringFleet(ctx, "state", n)
	defer stop()
	if err != nil {
		return err
	}
	ids, err := b.fleetIDs(n)
	if err != nil {
		return err
	}
	key, err := b.apiKey(ctx, "bench-state", "commands")
	if err != nil {
		return err
	}
	b.pgIdle(ctx)
	mark := b.pgMark(ctx)
	clients := b.sz.closedClients
	fmt.Printf("  %d clients patching the desired state of %d devices for %v after %v\n", clients, n, b.sz.run, b.sz.warmup)
	r := patchLoop(ctx, edges, key, ids, clients, b.sz.warmup, b.sz.run)
	pg := b.pgSince(ctx, mark)
	if r.ok == 0 {
		return fmt.Errorf("no patch succeeded: %s", sortedKinds(r.failedBy))
	}
	if quickRun && r.failed > 0 {
		return fmt.Errorf("%d of %d patches failed: %s", r.failed, r.ok+r.failed, sortedKinds(r.failedBy))
	}
	// The devices' count: the nodes send each state frame within a few
	// milliseconds of the patch's NOTIFY (or of their rescan); the fleet
	// is stopped (and sums up) after a pause long enough for the last.
	// The database's versions say what each device should have had last;
	// a shortfall is shown in the row, not failed on (the pause is a
	// guess, which a starved machine could outlast).
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(2 * time.Second):
	}
	var versions int64
	if err := b.pool.QueryRow(ctx, `SELECT coalesce(sum(desired_version), 0)::bigint FROM device_state WHERE device_id = ANY($1)`, ids).Scan(&versions); err != nil {
		return err
	}
	d := stop().Devices
	latest := "every device was given its latest version"
	if d.DesiredVersions != versions {
		latest = fmt.Sprintf("the devices' last versions sum to %d, the stored ones to %d", d.DesiredVersions, versions)
	}
	window := r.okWindow
	for _, c := range r.failedBy {
		window += c
	}
	rate := float64(r.okWindow) / r.seconds
	failed := ""
	if len(r.failedBy) > 0 {
		failed = " (" + sortedKinds(r.failedBy) + ")"
	}
	b.rows = append(b.rows, row{
		what:   fmt.Sprintf("desired-state patches/s, as fast as answered (%d clients, %d devices, 2 edges, 2 nodes)", min(clients, n), n),
		target: "— (the issue sets none)",
		measured: fmt.Sprintf("%.0f/s, %.2f%% ok%s, p50 %.1f p99 %.1f ms; the devices were given %d state frames for %d patches (%s)",
			rate, 100*float64(r.okWindow)/float64(max(window, 1)), failed, ms(r.latency, 50), ms(r.latency, 99), d.Desired, r.ok, latest),
		verdict: "",
	})
	b.notes = append(b.notes, fmt.Sprintf("state patches: per patch, PostgreSQL ran %.2f statements and %.2f commits, spent %.0f µs of CPU and wrote %d bytes of WAL; at that cost one core carries %.0f patches/s",
		float64(pg.statements)/float64(r.ok), float64(pg.commits)/float64(r.ok), perOp(pg.cpu, int(r.ok)), pg.walBytes/r.ok, float64(r.ok)/pg.cpu.Seconds()))
	return nil
}

// ---- webhooks

// receiver is a webhook endpoint on loopback: it verifies each delivery's
// signature (Standard Webhooks, as docs/api.md's receiver does), counts
// the distinct ones, and times each from its event (the body's
// timestamp, the time of the transaction that recorded it) to now.
type receiver struct {
	ln  net.Listener
	srv *http.Server

	mu       sync.Mutex // guards the following
	wh       *standardwebhooks.Webhook
	seen     map[string]bool
	bad      int64 // refused: a bad signature or body
	repeats  int64 // a webhook-id seen before
	last     time.Time
	from, to time.Time // the window whose receipts are timed
	inWindow int64
	lag      *hdrhistogram.Histogram // µs, of the receipts in the window
	want     int                     // reached is closed once this many were seen
	reached  chan struct{}
}

func startReceiver() (*receiver, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	rc := &receiver{ln: ln, seen: map[string]bool{}}
	rc.srv = &http.Server{Handler: rc, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = rc.srv.Serve(ln) }() // ends with close
	return rc, nil
}

func (rc *receiver) url() string { return "http://" + rc.ln.Addr().String() + "/hook" }
func (rc *receiver) close()      { _ = rc.srv.Close() }

// setSecret is the endpoint's, known once it was created.
func (rc *receiver) setSecret(secret string) error {
	wh, err := standardwebhooks.NewWebhook(secret)
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.wh = wh
	return err
}

// window starts timing the receipts between from and to.
func (rc *receiver) window(from, to time.Time) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.from, rc.to, rc.inWindow = from, to, 0
	rc.lag = hdrhistogram.New(1, (10 * time.Minute).Microseconds(), 3)
}

// expect returns a channel closed once want distinct deliveries were seen.
func (rc *receiver) expect(want int) <-chan struct{} {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.want, rc.reached = want, make(chan struct{})
	if len(rc.seen) >= want {
		close(rc.reached)
	}
	return rc.reached
}

func (rc *receiver) counts() (seen int, bad, repeats int64, last time.Time) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return len(rc.seen), rc.bad, rc.repeats, rc.last
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	var event struct {
		Timestamp time.Time `json:"timestamp"`
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if err == nil && rc.wh != nil {
		if err = rc.wh.Verify(body, r.Header); err == nil {
			err = json.Unmarshal(body, &event)
		}
	}
	if err != nil || rc.wh == nil {
		rc.bad++
		http.Error(w, "refused", http.StatusUnauthorized)
		return
	}
	id := r.Header.Get("webhook-id")
	if rc.seen[id] {
		rc.repeats++
	} else {
		rc.seen[id] = true
		rc.last = now
		if rc.lag != nil && !now.Before(rc.from) && now.Before(rc.to) {
			rc.inWindow++
			_ = rc.lag.RecordValue(max(0, now.Sub(event.Timestamp).Microseconds()))
		}
		if rc.reached != nil && len(rc.seen) == rc.want {
			close(rc.reached)
		}
	}
	w.WriteHeader(http.StatusNoContent)
}

// webhooks: an endpoint for command.completed on a receiver served here,
// while commands are sent at a steady rate; then a backlog, piled up while
// the endpoint is paused, drained as fast as it goes.
func (b *bench) webhooks(ctx context.Context) error {
	n := b.sz.throughputDevices
	edges, stop, err := b.answeringFleet(ctx, "hooks", n, "EDGE_WEBHOOKS_ALLOW_HTTP=true", "EDGE_WEBHOOKS_ALLOW_PRIVATE=true")
	defer stop()
	if err != nil {
		return err
	}
	admin, err := b.apiKey(ctx, "bench-webhooks", "admin")
	if err != nil {
		return err
	}
	rc, err := startReceiver()
	if err != nil {
		return err
	}
	defer rc.close()
	b.pgIdle(ctx)

	// commands runs loadgen's command clients over the fleet and returns
	// what PostgreSQL spent from the start until done() holds (the
	// deliveries drained, or nothing) and the commands created meanwhile.
	commands := func(done func() error, args ...string) (pgUsage, int64, error) {
		mark := b.pgMark(ctx)
		lg, err := b.loadgen(ctx, n, append([]string{"-hold=false", "-edges", strings.Join(edges, ",")}, args...)...)
		if err != nil {
			return pgUsage{}, 0, err
		}
		s, err := lg.wait()
		if err != nil {
			return pgUsage{}, 0, err
		}
		if c := s.Commands; c == nil || c.Succeeded == 0 || (quickRun && c.Failed > 0) {
			return pgUsage{}, 0, fmt.Errorf("the commands: %+v", c)
		}
		// Commands a client gave up on (?wait= passed) may complete
		// later, and their deliveries come with them: wait for them.
		if err := poll(ctx, 2*time.Minute, func() bool {
			var open int64
			err := b.pool.QueryRow(ctx, `SELECT count(*) FROM commands WHERE created_at >= $1 AND status IN ('pending', 'delivered')`, mark.at).Scan(&open)
			return err == nil && open == 0
		}); err != nil {
			return pgUsage{}, 0, fmt.Errorf("the commands did not end: %w", err)
		}
		if err := done(); err != nil {
			return pgUsage{}, 0, err
		}
		pg := b.pgSince(ctx, mark)
		var cmds int64
		err = b.pool.QueryRow(ctx, `SELECT count(*) FROM commands WHERE created_at >= $1`, mark.at).Scan(&cmds)
		return pg, cmds, err
	}
	steady := []string{"-rate", fmt.Sprintf("%d/s", b.sz.webhookRate), "-duration", b.sz.run.String(), "-warmup", b.sz.warmup.String()}

	// The commands alone, with no endpoint: the baseline whose cost is
	// taken off. A smoke run judges no cost and skips it (its note then
	// counts the commands' cost too).
	var base pgUsage
	var baseCmds int64
	if !quickRun {
		fmt.Printf("  commands at %d/s, no webhook\n", b.sz.webhookRate)
		if base, baseCmds, err = commands(func() error { return nil }, steady...); err != nil {
			return err
		}
	}

	var hook struct {
		ID     int64  `json:"id"`
		Secret string `json:"secret"`
	}
	if err := call(ctx, http.MethodPost, edges[0]+"/v1/webhooks", admin,
		map[string]any{"url": rc.url(), "events": []string{"command.completed"}}, &hook); err != nil {
		return err
	}
	if err := rc.setSecret(hook.Secret); err != nil {
		return err
	}
	hookURL := fmt.Sprintf("%s/v1/webhooks/%d", edges[0], hook.ID)
	deliveries := func() (pending, all int64) {
		_ = b.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FROM webhook_deliveries WHERE webhook_id = $1`,
			hook.ID).Scan(&pending, &all)
		return pending, all
	}
	// drained: every delivery recorded delivered (or given up).
	drained := func() error {
		return poll(ctx, 5*time.Minute, func() bool { p, _ := deliveries(); return p == 0 })
	}

	// The same commands, each completion delivered.
	fmt.Printf("  commands at %d/s, each completion delivered to %s\n", b.sz.webhookRate, rc.url())
	start := time.Now().Add(b.sz.warmup)
	rc.window(start, start.Add(b.sz.run))
	withHooks, hookCmds, err := commands(drained, steady...)
	if err != nil {
		return err
	}
	_, steadyAll := deliveries()
	seen, bad, repeats, _ := rc.counts()
	rc.mu.Lock()
	inWindow, lag := rc.inWindow, rc.lag
	rc.mu.Unlock()
	if int64(seen) != steadyAll || bad > 0 {
		return fmt.Errorf("%d deliveries recorded, %d received, %d refused", steadyAll, seen, bad)
	}
	// What the deliveries added: the run's cost less the commands' at
	// the baseline's cost per command.
	extraCPU := withHooks.cpu - time.Duration(float64(base.cpu)*float64(hookCmds)/float64(max(baseCmds, 1)))
	extraWAL := withHooks.walBytes - base.walBytes*hookCmds/max(baseCmds, 1)
	extraStmts := float64(withHooks.statements) - float64(base.statements)*float64(hookCmds)/float64(max(baseCmds, 1))
	rate := float64(inWindow) / b.sz.run.Seconds()
	ok := lag.ValueAtQuantile(99) <= time.Second.Microseconds()
	b.rows = append(b.rows, row{
		what:   fmt.Sprintf("webhook deliveries of command.completed, commands at %d/s (1 endpoint on a local receiver, 2 edges)", b.sz.webhookRate),
		target: "all delivered and verified, lag p99 ≤ 1 s (a modest goal: the issue sets none)",
		measured: fmt.Sprintf("%.0f/s received, lag (event → received) p50 %.1f p99 %.1f max %.0f ms; %d of %d delivered, signatures valid, %d repeats",
			rate, ms(lag, 50), ms(lag, 99), float64(lag.Max())/1000, seen, steadyAll, repeats),
		verdict: verdict(ok, ok),
	})
	than := fmt.Sprintf("more than the command alone (%.0f µs and %d bytes a command with no endpoint)", perOp(base.cpu, int(baseCmds)), base.walBytes/max(baseCmds, 1))
	if baseCmds == 0 {
		than = "with the command's own cost (a smoke run measures no baseline)"
	}
	b.notes = append(b.notes, fmt.Sprintf("webhooks at %d/s: per delivery, the outbox insert (the trigger), the claim and the mark-delivered together cost PostgreSQL %.1f statements, %.0f µs of CPU and %d bytes of WAL %s",
		b.sz.webhookRate, extraStmts/float64(steadyAll), perOp(extraCPU, int(steadyAll)), extraWAL/max(steadyAll, 1), than))

	// A backlog: the endpoint paused while commands complete, at a rate
	// the commands' path carries, then resumed; its deliveries drain as
	// fast as they go.
	if err := call(ctx, http.MethodPatch, hookURL, admin, map[string]any{"paused": true}, nil); err != nil {
		return err
	}
	backlogRate := 500
	if quickRun {
		backlogRate = 200
	}
	fmt.Printf("  endpoint paused: %d commands at %d/s pile up deliveries\n", b.sz.backlog, backlogRate)
	if _, _, err := commands(func() error { return nil }, "-rate", fmt.Sprintf("%d/s", backlogRate),
		"-duration", (time.Duration(b.sz.backlog) * time.Second / time.Duration(backlogRate)).String(), "-warmup", "0s"); err != nil {
		return err
	}
	pending, all := deliveries()
	reached := rc.expect(int(all))
	mark := b.pgMark(ctx)
	waits := b.sampleLockWaits(ctx)
	resumed := time.Now()
	if err := call(ctx, http.MethodPatch, hookURL, admin, map[string]any{"paused": false}, nil); err != nil {
		return err
	}
	fmt.Printf("  endpoint resumed with %d deliveries pending\n", pending)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-reached:
	case <-time.After(10 * time.Minute):
		seen, _, _, _ := rc.counts()
		return fmt.Errorf("the backlog: %d of %d received in 10 min", seen, all)
	}
	if err := drained(); err != nil {
		return err
	}
	waiting, busy, samples := waits()
	drain := b.pgSince(ctx, mark)
	_, bad, repeats, last := rc.counts()
	if bad > 0 {
		return fmt.Errorf("%d deliveries refused", bad)
	}
	took := last.Sub(resumed)
	b.rows = append(b.rows, row{
		what:     fmt.Sprintf("webhook deliveries/s draining a backlog of %d (1 endpoint, at most 4 in flight over the 2 edges)", pending),
		target:   "— (the issue sets none)",
		measured: fmt.Sprintf("%.0f/s: all received %.1f s after the endpoint was resumed, signatures valid, %d repeats", float64(pending)/took.Seconds(), took.Seconds(), repeats),
		verdict:  "",
	})
	b.notes = append(b.notes, fmt.Sprintf("webhooks, the backlog: sampled every 50 ms over the drain (%d samples), %.2f sessions on average were in a webhook statement or transaction, %.2f of them waiting for a lock",
		samples, busy, waiting))
	// (No commits a delivery: over a drain of many seconds the fleet's
	// own transactions outnumber the deliveries'.)
	b.notes = append(b.notes, fmt.Sprintf("webhooks, the backlog: per delivery, the claim and the mark-delivered cost PostgreSQL %.2f statements, %.0f µs of CPU and %d bytes of WAL; at that cost one core carries %.0f deliveries/s",
		float64(drain.statements)/float64(pending), perOp(drain.cpu, int(pending)), drain.walBytes/max(pending, 1), float64(pending)/drain.cpu.Seconds()))
	return nil
}

// sampleLockWaits samples, every 50 ms until the returned function is
// called, the sessions in a webhook statement or transaction and how many
// of them wait for a lock (pg_stat_activity: the claims and marks of one
// endpoint meet on its row); that function stops the sampling and returns
// the means and the number of samples.
func (b *bench) sampleLockWaits(ctx context.Context) func() (waiting, busy float64, samples int) {
	ctx, cancel := context.WithCancel(ctx)
	var waitSum, busySum, n int
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			var waiting, busy int
			if b.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE wait_event_type = 'Lock'), count(*) FROM pg_stat_activity
				WHERE state <> 'idle' AND query LIKE '%webhook%' AND pid <> pg_backend_pid()`).Scan(&waiting, &busy) == nil {
				waitSum, busySum, n = waitSum+waiting, busySum+busy, n+1
			}
		}
	}()
	return func() (float64, float64, int) {
		cancel()
		<-done
		return float64(waitSum) / float64(max(n, 1)), float64(busySum) / float64(max(n, 1)), n
	}
}

// sortedKinds is for messages: "http_412: 3, error: 1".
func sortedKinds(by map[string]int64) string {
	var parts []string
	for k, v := range by {
		parts = append(parts, fmt.Sprintf("%s: %d", k, v))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}
