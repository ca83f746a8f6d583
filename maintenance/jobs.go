package maintenance

import (
	"context"
	"math"
	"time"

	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/db"
)

// Abort rule: a job is aborted once more than abort_failed_percent of its
// targets whose command is final failed or expired, judged once at least
// abortMinFinal of them (or all its targets, when fewer) are final. A
// target awaiting a retry is not final: only its last attempt counts.
const abortMinFinal = 10

// maxJobBatch bounds the commands one step creates for one job: a
// second's worth at the highest rate the API takes (edge.MaxJobRate).
const maxJobBatch = 10_000

// maxBehind is how far, in seconds, the rollout's clock may stay behind
// now: after a pause (no edge ran), at most a second's worth is made up at
// once.
const maxBehind = 1.0

// maxRetryWait bounds the backoff before a retry, however many attempts
// doubled it: the API's largest backoff (edge.MaxJobBackoff).
const maxRetryWait = time.Hour

// planJob is the runner's policy for a job it claimed: abort it by the
// abort rule; finish it once every target's command was created and is
// final with no retry left to make (done when all succeeded, else
// done_with_failures); or create the commands its rate made due since the
// rollout's clock (at most maxBatch): the due retries first, then the next
// targets, moving the clock on by what was due, not to now, so that a slow
// tick does not lose the fraction.
func planJob(s db.JobState, maxBatch int) db.JobPlan {
	c := s.Counts
	final := c.Final()
	if final >= min(abortMinFinal, s.Total) && float64(c.Failed+c.Expired)*100 > s.Abort*float64(final) {
		return db.JobPlan{End: db.JobAborted}
	}
	left := s.Total - s.Created
	if left == 0 && c.Pending+c.Delivered+c.Retrying == 0 {
		if c.Unsuccessful() == 0 {
			return db.JobPlan{End: db.JobDone}
		}
		return db.JobPlan{End: db.JobDoneWithFailures}
	}
	n := min(left+c.Retrying, maxBatch, int(math.Floor(s.Rate*s.Elapsed)))
	if n <= 0 {
		return db.JobPlan{}
	}
	p := db.JobPlan{Create: n, Behind: min(s.Elapsed-float64(n)/s.Rate, maxBehind)}
	if c.Retrying > 0 {
		p.RetryWaits = retryWaits(s.MaxAttempts, s.Backoff)
	}
	return p
}

// retryWaits is the retry policy: after a target's attempt k failed or
// expired, its attempt k+1 waits backoff × 2^(k-1), at most maxRetryWait.
func retryWaits(maxAttempts int, backoff time.Duration) []time.Duration {
	waits := make([]time.Duration, max(maxAttempts-1, 0))
	for k := range waits {
		waits[k] = min(backoff<<k, maxRetryWait)
	}
	return waits
}

// runJobs is the job runner: every JobInterval, and when poked, it steps
// each running job no runner (of any edge) looked at within the interval:
// creates its due batch (a command job's commands, or a state job's
// patches), aborts or finishes it, in one transaction per job, then wakes
// the nodes of the batch's devices: one notice per node for commands, a
// state notice per patched online device.
// Jobs live in the database: any edge runs any job, and one that stops
// leaves its jobs to the others.
func (m *Maintainer) runJobs(ctx context.Context) error {
	tick := time.NewTicker(m.cfg.JobInterval)
	defer tick.Stop()
	plan := func(s db.JobState) db.JobPlan {
		p := planJob(s, maxJobBatch)
		p.QueueCap = m.cfg.DeviceQueue
		return p
	}
	lastCount := time.Time{}
	outage := outage{log: m.log, doing: "running jobs"}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-m.poke:
		}
		started, err := m.store.StartDueJobs(ctx)
		if err != nil {
			outage.failed(ctx, err)
			continue
		}
		for _, id := range started {
			m.logJob(ctx, "scheduled job started", id, db.JobRunning)
		}
		// A step per due job; a job is due again only after the interval,
		// so this ends.
		for range 1000 {
			step, ok, err := m.store.StepJob(ctx, m.cfg.JobInterval*3/4, plan)
			if err != nil {
				outage.failed(ctx, err)
				break
			}
			outage.worked()
			if !ok {
				break
			}
			if step.Wake != nil {
				m.metrics.jobBatches.Inc()
				m.metrics.jobCommands.Add(float64(step.Created))
				m.metrics.jobRetries.Add(float64(step.Retried))
				m.metrics.jobFull.Add(float64(step.QueueFull))
				_ = m.notices.Push(db.Notice{Job: step.Wake})
			}
			m.metrics.jobPatches.Add(float64(step.Patched))
			// A state job's batch: the nodes of the patched devices that
			// are online send them their new desired document.
			for _, n := range step.Notices {
				_ = m.notices.Push(n)
			}
			for i := range step.Changes {
				m.metrics.final.WithLabelValues(string(step.Changes[i].Command.Status)).Inc() // cancelled by an abort
				_ = m.notices.Push(db.Notice{Change: &step.Changes[i]})
			}
			if step.Ended != "" {
				m.logJob(ctx, "job ended", step.Job, step.Ended)
			}
		}
		if time.Since(lastCount) > 5*time.Second {
			lastCount = time.Now()
			if n, err := m.store.RunningJobs(ctx); err == nil {
				m.metrics.jobsRunning.Set(float64(n))
			}
		}
	}
}

// logJob logs a job's start or end with what an operator knows it by: its
// kind, command name and targets, and at its end its targets' counts. A
// job starts and ends once, so the read this costs is nothing; should it
// fail, the line goes out with the job's id and status alone.
func (m *Maintainer) logJob(ctx context.Context, msg string, id uuid.UUID, status db.JobStatus) {
	args := []any{"job", id, "status", status}
	if j, err := m.store.Job(ctx, id); err == nil {
		args = append(args, "kind", j.Kind, "name", j.Name, "total", j.Total)
		switch {
		case status == db.JobRunning:
		case j.Counts != nil:
			args = append(args, "counts", *j.Counts)
		case j.StateCounts != nil:
			args = append(args, "counts", *j.StateCounts)
		}
	}
	m.log.Info(msg, args...)
}
