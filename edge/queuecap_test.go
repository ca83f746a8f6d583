package edge_test

import (
	"context"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/edge"
	"github.com/switchboard-iot/switchboard/internal/command"
)

// pendingRows counts a device's pending commands, as stored.
func pendingRows(t *testing.T, sys *testsys.System, deviceID string) int {
	t.Helper()
	var n int
	if err := sys.Pool.QueryRow(context.Background(),
		`SELECT count(*) FROM commands WHERE device_id = $1 AND status = 'pending'`, deviceID).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// A device's queue cap (issue 17): past it a command is refused, 429
// device-queue-full with Retry-After, and nothing is stored, with or
// without an Idempotency-Key (whose key is not taken); a retry of an
// accepted command still answers it; another device is not affected;
// sending works again once a command expired or was cancelled; each
// refusal is counted.
func TestDeviceQueueFull(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", func(cfg *edge.Config) {
		fastJobs(cfg)
		cfg.DeviceQueue = 3
	})
	c := newAPI(t, e.URL, sys.APIKey(t))
	provision(t, sys, "dev", 2) // offline: nothing is delivered
	send := func(body string, hdr ...string) (*http.Response, []byte) {
		t.Helper()
		return c.sendCommand("dev-0000", body, hdr...)
	}
	accepted := func(resp *http.Response, b []byte) {
		t.Helper()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("status %d, want 202; body %s", resp.StatusCode, b)
		}
	}
	full := func(resp *http.Response, b []byte) {
		t.Helper()
		p := wantProblem(t, resp, b, http.StatusTooManyRequests, "device-queue-full")
		if ra := resp.Header.Get("Retry-After"); ra != "30" {
			t.Errorf("Retry-After %q, want 30", ra)
		}
		if !strings.Contains(p.Detail, "3 pending commands") {
			t.Errorf("detail %q, want it to name the cap", p.Detail)
		}
	}

	resp, b := send(`{"name":"a"}`, "Idempotency-Key", "order-1")
	accepted(resp, b)
	keyed := commandIDFrom(t, resp)
	resp, b = send(`{"name":"b"}`)
	accepted(resp, b)
	cancelMe := commandIDFrom(t, resp)
	resp, b = send(`{"name":"c"}`)
	accepted(resp, b)
	short := commandIDFrom(t, resp)

	full(send(`{"name":"d"}`))
	full(send(`{"name":"d"}`, "Idempotency-Key", "order-2"))
	if n := pendingRows(t, sys, "dev-0000"); n != 3 {
		t.Fatalf("dev-0000 has %d pending commands after refusals, want 3", n)
	}
	var keys int
	if err := sys.Pool.QueryRow(t.Context(), `SELECT count(*) FROM idempotency_keys WHERE key = 'order-2'`).Scan(&keys); err != nil || keys != 0 {
		t.Errorf("the refused request's key: %d rows (%v), want none", keys, err)
	}
	// A retry of the accepted command answers it, full queue or not.
	resp, b = send(`{"name":"a"}`, "Idempotency-Key", "order-1")
	accepted(resp, b)
	if id := commandIDFrom(t, resp); id != keyed || resp.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("a retry of an accepted command: %s (replayed %q), want %s replayed", id, resp.Header.Get("Idempotent-Replayed"), keyed)
	}
	// The cap is per device.
	resp, b = c.sendCommand("dev-0001", `{"name":"a"}`)
	accepted(resp, b)
	if v, ok := e.Scrape(t).Get("switchboard_edge_requests_limited_total", "limit", "device_queue"); !ok || v != 2 {
		t.Errorf("switchboard_edge_requests_limited_total{limit=device_queue} = %v (%v), want 2", v, ok)
	}

	// A command's ttl runs out (moved to now, not waited for): the sweeper
	// expires it, and there is room for one.
	if _, err := sys.Pool.Exec(t.Context(), `UPDATE commands SET expires_at = now() WHERE id = $1`, short); err != nil {
		t.Fatal(err)
	}
	testsys.Eventually(t, "the command to expire", func() bool {
		cmd, err := sys.Store.Command(t.Context(), short)
		if err != nil {
			t.Fatal(err)
		}
		return cmd.Status == command.Expired
	})
	accepted(send(`{"name":"e"}`))
	full(send(`{"name":"f"}`))
	// A cancelled command makes room too.
	if resp, b := c.call(http.MethodPost, "/v1/commands/"+cancelMe.String()+"/cancel", ""); resp.StatusCode != http.StatusOK {
		t.Fatalf("cancel: %d %s", resp.StatusCode, b)
	}
	accepted(send(`{"name":"f"}`))
	full(send(`{"name":"g"}`))
	if n := pendingRows(t, sys, "dev-0000"); n != 3 {
		t.Errorf("dev-0000 has %d pending commands, want its cap, 3", n)
	}
}

// Concurrent senders to one device: commands without an Idempotency-Key
// go through the edge's one insert at a time, each counting what the one
// before stored, so exactly the cap is stored; keyed commands are
// statements of their own, which may each miss the others' rows, so the
// queue holds at most the cap plus those in flight at once. Every 202 is a
// stored row and every other answer a 429.
func TestDeviceQueueConcurrent(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	const queueCap, senders = 10, 50
	e := sys.StartEdge(t, "edge-a", func(cfg *edge.Config) {
		fastJobs(cfg)
		cfg.DeviceQueue = queueCap
	})
	c := newAPI(t, e.URL, sys.APIKey(t))
	provision(t, sys, "dev", 2)

	// burst sends senders commands at once to deviceID, the keyed ones
	// with an Idempotency-Key each, and returns the answers' statuses.
	burst := func(deviceID string, keyed bool) []int {
		t.Helper()
		statuses := make([]int, senders)
		errs := make([]error, senders)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range senders {
			wg.Go(func() {
				<-start
				ctx, cancel := context.WithTimeout(t.Context(), requestTimeout)
				defer cancel()
				var hdr []string
				if keyed {
					hdr = []string{"Idempotency-Key", deviceID + "-" + strconv.Itoa(i)}
				}
				resp, err := c.hc.Do(c.request(ctx, http.MethodPost, "/v1/devices/"+deviceID+"/commands", `{"name":"x"}`, hdr...))
				if err != nil {
					errs[i] = err
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				statuses[i] = resp.StatusCode
			})
		}
		close(start)
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		return statuses
	}
	count := func(statuses []int) (accepted, refused int) {
		for _, s := range statuses {
			switch s {
			case http.StatusAccepted:
				accepted++
			case http.StatusTooManyRequests:
				refused++
			default:
				t.Errorf("status %d, want 202 or 429", s)
			}
		}
		return accepted, refused
	}

	statuses := burst("dev-0000", false)
	accepted, refused := count(statuses)
	if n := pendingRows(t, sys, "dev-0000"); n != queueCap || accepted != queueCap || refused != senders-queueCap {
		t.Errorf("unkeyed: %d stored, %d accepted, %d refused; want exactly the cap, %d, stored and accepted", n, accepted, refused, queueCap)
	}

	statuses = burst("dev-0001", true)
	accepted, _ = count(statuses)
	n := pendingRows(t, sys, "dev-0001")
	if n != accepted || n < queueCap || n > queueCap+senders-1 {
		t.Errorf("keyed: %d stored, %d accepted; want them equal, from the cap %d to the cap plus the concurrent inserts", n, accepted, queueCap)
	}
	t.Logf("keyed senders stored %d for a cap of %d", n, queueCap)
}

// A job to targets of which some have a full queue: their commands fail
// at once with the queue's error (counted failed, listed in the job's
// errors, never delivered), the others are queued, and the job ends
// done_with_failures.
func TestJobDeviceQueueFull(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	e := sys.StartEdge(t, "edge-a", func(cfg *edge.Config) {
		fastJobs(cfg)
		cfg.DeviceQueue = 2
	}, fastRunner)
	c := newAPI(t, e.URL, sys.APIKey(t))
	ids, _ := provision(t, sys, "hall", 4)
	for _, id := range ids[:2] {
		for range 2 {
			if resp, b := c.sendCommand(id, `{"name":"fill"}`); resp.StatusCode != http.StatusAccepted {
				t.Fatalf("filling %s: %d %s", id, resp.StatusCode, b)
			}
		}
	}

	j := postJob(t, c, `{"name":"get_state","ttl":"3s","abort_failed_percent":100,"target":`+devicesTarget(ids)+`}`)
	mid := waitJob(t, sys, j.ID, 20*time.Second, "the job's commands", func(j db.Job) bool { return j.Counts.Unsent == 0 })
	// (The queued ones may have expired already on a slow machine.)
	if mid.Counts.Failed != 2 || mid.Counts.Pending+mid.Counts.Expired != 2 {
		t.Errorf("the job once its commands were created: %s %+v, want 2 failed, 2 pending (or expired)", mid.Status, *mid.Counts)
	}
	if !slices.Contains(mid.Errors, db.JobError{Error: db.QueueFullError, Count: 2}) {
		t.Errorf("the job's errors %+v, want 2 of %q", mid.Errors, db.QueueFullError)
	}
	page := jobCommands(t, c, j.ID, "?status=failed")
	if len(page.Commands) != 2 {
		t.Fatalf("failed commands: %s, want 2", summary(page.Commands))
	}
	for i, cmd := range page.Commands {
		if cmd.DeviceID != ids[i] || cmd.Error != db.QueueFullError || cmd.Attempts != 0 || cmd.CompletedAt == nil || cmd.DeliveredAt != nil {
			t.Errorf("failed command %d: %+v, want %s's, never delivered", i, cmd, ids[i])
		}
	}
	for _, id := range ids[:2] {
		if n := pendingRows(t, sys, id); n != 2 {
			t.Errorf("%s has %d pending commands, want its cap, 2", id, n)
		}
	}

	// The queued ones expire offline: the job ends with failures.
	ended := waitJob(t, sys, j.ID, 20*time.Second, "the job to end", func(j db.Job) bool { return j.Status.Final() })
	if ended.Status != db.JobDoneWithFailures || *ended.Counts != (db.JobCounts{Failed: 2, Expired: 2}) {
		t.Errorf("the ended job: %s %+v, want done_with_failures, 2 failed, 2 expired", ended.Status, *ended.Counts)
	}
	if v, ok := e.Scrape(t).Get("switchboard_edge_job_commands_queue_full_total"); !ok || v != 2 {
		t.Errorf("switchboard_edge_job_commands_queue_full_total = %v (%v), want 2", v, ok)
	}
}
