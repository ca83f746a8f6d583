package maintenance

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/webhook"
)

// Webhook delivery policy (docs/api.md, "Webhooks").
const (
	// DefaultWebhookBackoff is the base of the retries' backoff: attempt
	// k+1 waits a random time in [0, base × 2^(k-1)] (full jitter), the
	// bound capped at maxWebhookWait.
	DefaultWebhookBackoff = 5 * time.Second
	maxWebhookWait        = time.Hour
	// DefaultWebhookGiveUp: a delivery is retried this long after its
	// event, and an endpoint failing every attempt this long is disabled.
	DefaultWebhookGiveUp = 24 * time.Hour
	// DefaultWebhookConcurrency is how many deliveries to one endpoint
	// are in flight at once, over every edge.
	DefaultWebhookConcurrency = 4
	// webhookSlots bounds one edge's deliveries in flight.
	webhookSlots = 64
	// webhookLease is how long a claimed delivery is the claimer's: past
	// the client's timeout, so only a dead edge's claims lapse.
	webhookLease = 3 * webhook.Timeout
	// keepWebhookDeliveries is how long delivered and failed deliveries
	// stay listed.
	keepWebhookDeliveries = 7 * 24 * time.Hour
)

// webhookWait is the wait before the attempt after attempt failed.
func webhookWait(base time.Duration, attempt int) time.Duration {
	bound := base
	for range attempt - 1 {
		if bound >= maxWebhookWait {
			break
		}
		bound *= 2
	}
	bound = min(bound, maxWebhookWait)
	return rand.N(bound + 1)
}

// deliverWebhooks is the delivery loop: every WebhookInterval it claims
// the due deliveries it has slots for and sends each in its own goroutine,
// which it owns: on return it waits for them (each ends within the
// client's timeout, or at once when ctx ends; an unfinished attempt's
// lease lapses and another edge sends it again: at least once).
func (m *Maintainer) deliverWebhooks(ctx context.Context) error {
	client := webhook.NewClient(webhook.Options{AllowHTTP: m.cfg.WebhooksAllowHTTP, AllowPrivate: m.cfg.WebhooksAllowPrivate})
	defer client.Close()
	var inflight sync.WaitGroup
	defer inflight.Wait()
	slots := make(chan struct{}, webhookSlots)
	done := make(chan struct{}, 1) // a delivery finished: claim again now
	tick := time.NewTicker(m.cfg.WebhookInterval)
	defer tick.Stop()
	outage := outage{log: m.log, doing: "delivering webhooks"}
	lastPurge := time.Now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-done:
		}
		free := webhookSlots - len(slots)
		if free == 0 {
			continue
		}
		claimed, err := m.store.ClaimWebhookDeliveries(ctx, m.cfg.EdgeID, webhookLease, m.cfg.WebhookConcurrency, free)
		if err != nil {
			outage.failed(ctx, err)
			continue
		}
		outage.worked()
		for _, d := range claimed {
			slots <- struct{}{}
			inflight.Go(func() {
				defer func() {
					<-slots
					select {
					case done <- struct{}{}:
					default:
					}
				}()
				m.deliver(ctx, client, d)
			})
		}
		if time.Since(lastPurge) > 10*time.Minute { // a scan of the table: not often
			lastPurge = time.Now()
			if _, err := m.store.PurgeWebhookDeliveries(ctx, keepWebhookDeliveries); err != nil && ctx.Err() == nil {
				m.log.Warn("purging webhook deliveries", "err", err)
			}
		}
	}
}

// deliver sends one claimed delivery and records how it went.
func (m *Maintainer) deliver(ctx context.Context, client *webhook.Client, d db.ClaimedDelivery) {
	code, err := client.Send(ctx, webhook.Message{
		URL: d.URL, Secret: d.Secret, ID: fmt.Sprintf("msg_%d", d.ID), Timestamp: time.Now(), Body: d.Payload,
	})
	if ctx.Err() != nil {
		return // shutting down: the lease lapses and the delivery is sent again
	}
	o := db.DeliveryOutcome{OK: err == nil, Code: code, GiveUp: m.cfg.WebhookGiveUp}
	if err != nil {
		o.Error = truncate(err.Error(), 300)
		o.RetryIn = webhookWait(m.cfg.WebhookBackoff, d.Attempt)
		m.metrics.webhooks.WithLabelValues("failed").Inc()
	} else {
		m.metrics.webhooks.WithLabelValues("delivered").Inc()
	}
	// Recorded even as ctx ends: the attempt happened.
	if err := m.store.FinishWebhookDelivery(context.WithoutCancel(ctx), d.ID, d.Attempt, o); err != nil {
		m.log.Warn("recording a webhook delivery", "delivery", d.ID, "err", err)
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
