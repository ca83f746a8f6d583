package db

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Webhook event types (docs/api.md, "Webhooks").
const (
	WebhookCommandCompleted   = "command.completed"
	WebhookCommandFailed      = "command.failed"
	WebhookCommandExpired     = "command.expired"
	WebhookDeviceConnected    = "device.connected"
	WebhookDeviceDisconnected = "device.disconnected"
	WebhookDeviceEvent        = "device.event"
	WebhookStateReported      = "device.state_reported"
	WebhookJobFinished        = "job.finished"
)

// WebhookEvents are the event types an endpoint may ask for; the triggers
// of migrations 00017 and 00018 write them.
var WebhookEvents = []string{WebhookCommandCompleted, WebhookCommandFailed, WebhookCommandExpired,
	WebhookDeviceConnected, WebhookDeviceDisconnected, WebhookDeviceEvent, WebhookStateReported, WebhookJobFinished}

// Webhook is an endpoint, without its secret (shown once, at creation).
type Webhook struct {
	ID             int64      `json:"id"`
	URL            string     `json:"url"`
	Events         []string   `json:"events"`
	Names          []string   `json:"names"` // device.event: only these names; empty: all
	Paused         bool       `json:"paused"`
	CreatedAt      time.Time  `json:"created_at"`
	FailingSince   *time.Time `json:"failing_since,omitempty"` // first failure since the last success
	DisabledAt     *time.Time `json:"disabled_at,omitempty"`
	DisabledReason *string    `json:"disabled_reason,omitempty"`
}

const webhookColumns = `id, url, events, event_names, paused, created_at, failing_since, disabled_at, disabled_reason`

func scanWebhook(row pgx.Row) (Webhook, error) {
	var w Webhook
	err := row.Scan(&w.ID, &w.URL, &w.Events, &w.Names, &w.Paused, &w.CreatedAt, &w.FailingSince, &w.DisabledAt, &w.DisabledReason)
	return w, err
}

// CreateWebhook stores an endpoint with its secret.
func (s *Store) CreateWebhook(ctx context.Context, url string, events, names []string, secret string) (Webhook, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	w, err := scanWebhook(s.db.QueryRow(ctx, `
		INSERT INTO webhooks (url, events, event_names, secret) VALUES ($1, $2, $3, $4)
		RETURNING `+webhookColumns, url, events, names, secret))
	return w, translate(err, "create webhook")
}

// GetWebhook returns an endpoint; ErrNotFound when there is none.
func (s *Store) GetWebhook(ctx context.Context, id int64) (Webhook, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	w, err := scanWebhook(s.db.QueryRow(ctx, `SELECT `+webhookColumns+` FROM webhooks WHERE id = $1`, id))
	return w, translate(err, "get webhook")
}

// ListWebhooks returns up to limit endpoints in id order after the id
// after, and whether more follow.
func (s *Store) ListWebhooks(ctx context.Context, after int64, limit int) ([]Webhook, bool, error) {
	if limit < 1 || limit > MaxPage {
		return nil, false, fmt.Errorf("list webhooks: limit %d: %w", limit, ErrInvalid)
	}
	ctx, cancel := bound(ctx)
	defer cancel()
	rows, err := s.db.Query(ctx, `SELECT `+webhookColumns+` FROM webhooks WHERE id > $1 ORDER BY id LIMIT $2`, after, limit+1)
	if err != nil {
		return nil, false, translate(err, "list webhooks")
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Webhook, error) { return scanWebhook(r) })
	if err != nil {
		return nil, false, translate(err, "list webhooks")
	}
	more := len(out) > limit
	return out[:min(len(out), limit)], more, nil
}

// WebhookPatch changes an endpoint; nil fields stay.
type WebhookPatch struct {
	URL    *string
	Events *[]string
	Names  *[]string
	// Paused stops (true) or resumes (false) deliveries; resuming also
	// enables an endpoint that was disabled, its failures forgotten.
	Paused *bool
}

// UpdateWebhook applies p; ErrNotFound when there is no such endpoint.
func (s *Store) UpdateWebhook(ctx context.Context, id int64, p WebhookPatch) (Webhook, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	w, err := scanWebhook(s.db.QueryRow(ctx, `
		UPDATE webhooks SET
			url = coalesce($2, url), events = coalesce($3, events), event_names = coalesce($4, event_names),
			paused = coalesce($5, paused),
			disabled_at = CASE WHEN $5 = false THEN NULL ELSE disabled_at END,
			disabled_reason = CASE WHEN $5 = false THEN NULL ELSE disabled_reason END,
			failing_since = CASE WHEN $5 = false THEN NULL ELSE failing_since END
		WHERE id = $1 RETURNING `+webhookColumns, id, p.URL, p.Events, p.Names, p.Paused))
	return w, translate(err, "update webhook")
}

// DeleteWebhook deletes an endpoint and its deliveries, pending ones
// included: none is sent after this returns, but one in flight may still
// land. ErrNotFound when there is none.
func (s *Store) DeleteWebhook(ctx context.Context, id int64) error {
	ctx, cancel := bound(ctx)
	defer cancel()
	tag, err := s.db.Exec(ctx, `DELETE FROM webhooks WHERE id = $1`, id)
	if err == nil && tag.RowsAffected() == 0 {
		err = pgx.ErrNoRows
	}
	return translate(err, "delete webhook")
}

// WebhookDelivery is one event for one endpoint, as listed.
type WebhookDelivery struct {
	ID             int64      `json:"id"`
	EventType      string     `json:"event_type"`
	DeviceID       *string    `json:"device_id,omitempty"`
	Status         string     `json:"status"` // pending, delivered, failed (gave up)
	Attempts       int        `json:"attempts"`
	LastStatusCode *int       `json:"last_status_code,omitempty"`
	LastError      *string    `json:"last_error,omitempty"`
	LastAttemptAt  *time.Time `json:"last_attempt_at,omitempty"`
	NextAttemptAt  *time.Time `json:"next_attempt_at,omitempty"` // pending only
	CreatedAt      time.Time  `json:"created_at"`
	DeliveredAt    *time.Time `json:"delivered_at,omitempty"`
}

// ListWebhookDeliveries returns up to limit of an endpoint's deliveries,
// newest first, before the id before (0: from the newest), and whether
// more follow; ErrNotFound when there is no such endpoint.
func (s *Store) ListWebhookDeliveries(ctx context.Context, webhook, before int64, limit int) ([]WebhookDelivery, bool, error) {
	if limit < 1 || limit > MaxPage {
		return nil, false, fmt.Errorf("list webhook deliveries: limit %d: %w", limit, ErrInvalid)
	}
	if _, err := s.GetWebhook(ctx, webhook); err != nil {
		return nil, false, err
	}
	ctx, cancel := bound(ctx)
	defer cancel()
	if before <= 0 {
		before = 1<<63 - 1
	}
	rows, err := s.db.Query(ctx, `
		SELECT id, event_type, device_id, status, attempts, last_status_code, last_error, last_attempt_at,
		       CASE WHEN status = 'pending' THEN next_attempt_at END, created_at, delivered_at
		FROM webhook_deliveries WHERE webhook_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3`, webhook, before, limit+1)
	if err != nil {
		return nil, false, translate(err, "list webhook deliveries")
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (d WebhookDelivery, err error) {
		err = r.Scan(&d.ID, &d.EventType, &d.DeviceID, &d.Status, &d.Attempts, &d.LastStatusCode, &d.LastError,
			&d.LastAttemptAt, &d.NextAttemptAt, &d.CreatedAt, &d.DeliveredAt)
		return d, err
	})
	if err != nil {
		return nil, false, translate(err, "list webhook deliveries")
	}
	more := len(out) > limit
	return out[:min(len(out), limit)], more, nil
}

// ClaimedDelivery is a delivery an edge leased, to send.
type ClaimedDelivery struct {
	ID, Webhook int64
	Attempt     int // this attempt's number, from 1
	URL, Secret string
	Payload     []byte
	CreatedAt   time.Time
}

// ClaimWebhookDeliveries leases up to max due deliveries to edge for
// lease: at most perEndpoint in flight per endpoint (its row is locked
// while its claims are counted, so claimers on every edge share the
// limit), and a device's delivery only once its earlier ones to that
// endpoint are no longer pending (delivered or given up), so each device's
// events arrive in order. Paused and disabled endpoints get none. A lease
// that lapses (its edge died) makes the delivery due again.
func (s *Store) ClaimWebhookDeliveries(ctx context.Context, edge string, lease time.Duration, perEndpoint, max int) ([]ClaimedDelivery, error) {
	var out []ClaimedDelivery
	err := s.InTx(ctx, func(tx *Store) error {
		// FOR NO KEY UPDATE: it does not block the triggers' inserts of
		// new deliveries (their foreign key takes KEY SHARE).
		rows, err := tx.db.Query(ctx, `
			SELECT w.id FROM webhooks w
			WHERE NOT w.paused AND w.disabled_at IS NULL AND EXISTS (
				SELECT 1 FROM webhook_deliveries d WHERE d.webhook_id = w.id AND d.status = 'pending'
				AND d.next_attempt_at <= now() AND (d.lease_until IS NULL OR d.lease_until < now()))
			ORDER BY w.id LIMIT 100 FOR NO KEY UPDATE SKIP LOCKED`)
		if err != nil {
			return err
		}
		eps, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil || len(eps) == 0 {
			return err
		}
		rows, err = tx.db.Query(ctx, `
			WITH cand AS (
				SELECT c.id FROM unnest($1::bigint[]) AS eps(id) CROSS JOIN LATERAL (
					SELECT d.id FROM webhook_deliveries d
					WHERE d.webhook_id = eps.id AND d.status = 'pending' AND d.next_attempt_at <= now()
					  AND (d.lease_until IS NULL OR d.lease_until < now())
					  AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e
					                  WHERE e.webhook_id = d.webhook_id AND e.device_id = d.device_id
					                    AND e.status = 'pending' AND e.id < d.id)
					ORDER BY d.id
					LIMIT greatest($2 - (SELECT count(*) FROM webhook_deliveries f
					                     WHERE f.webhook_id = eps.id AND f.status = 'pending' AND f.lease_until >= now()), 0)
				) c ORDER BY c.id LIMIT $3)
			UPDATE webhook_deliveries d
			SET lease_until = now() + $4::interval, leased_by = $5, attempts = d.attempts + 1, last_attempt_at = now()
			FROM cand, webhooks w WHERE d.id = cand.id AND w.id = d.webhook_id
			RETURNING d.id, d.webhook_id, d.attempts, w.url, w.secret, d.payload::text, d.created_at`,
			eps, perEndpoint, max, lease, edge)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (c ClaimedDelivery, err error) {
			var payload string
			err = r.Scan(&c.ID, &c.Webhook, &c.Attempt, &c.URL, &c.Secret, &payload, &c.CreatedAt)
			c.Payload = []byte(payload)
			return c, err
		})
		return err
	})
	return out, translate(err, "claim webhook deliveries")
}

// DeliveryOutcome is how an attempt went.
type DeliveryOutcome struct {
	OK    bool
	Code  int    // the answer's status; 0: none
	Error string // why it failed
	// RetryIn is the wait before the next attempt, when it failed.
	RetryIn time.Duration
	// GiveUp: a failed delivery created this long ago is not tried again
	// (status failed), and an endpoint failing this long is disabled.
	GiveUp time.Duration
}

// FinishWebhookDelivery records attempt attempt of delivery id: delivered,
// or due again after RetryIn, or failed for good once GiveUp passed since
// it was created; and the endpoint's failing_since, disabling an endpoint
// that has been failing for GiveUp. An attempt whose lease was retaken
// (attempts moved on) changes nothing.
func (s *Store) FinishWebhookDelivery(ctx context.Context, id int64, attempt int, o DeliveryOutcome) error {
	var code *int
	if o.Code != 0 {
		code = &o.Code
	}
	var errText *string
	if !o.OK {
		errText = &o.Error
	}
	return translate(s.InTx(ctx, func(tx *Store) error {
		var webhook int64
		var gaveUp bool
		var created time.Time
		// The endpoint's row first, as a claim and a delete lock them
		// (endpoint, then its deliveries): in the other order, a delete
		// racing with this deadlocks. KEY SHARE is enough to hold off a
		// delete, and does not turn away claims (their NO KEY UPDATE
		// SKIP LOCKED would skip an endpoint a stronger lock held, and
		// claim nothing while any attempt is being recorded).
		err := tx.db.QueryRow(ctx, `
			SELECT w.id FROM webhooks w JOIN webhook_deliveries d ON d.webhook_id = w.id
			WHERE d.id = $1 FOR KEY SHARE OF w`, id).Scan(&webhook)
		if err == pgx.ErrNoRows {
			return nil // deleted
		}
		if err != nil {
			return err
		}
		err = tx.db.QueryRow(ctx, `
			UPDATE webhook_deliveries SET
				status = CASE WHEN $3 THEN 'delivered' WHEN created_at < now() - $6::interval THEN 'failed' ELSE 'pending' END,
				delivered_at = CASE WHEN $3 THEN now() END,
				next_attempt_at = CASE WHEN $3 THEN next_attempt_at ELSE now() + $7::interval END,
				lease_until = NULL, leased_by = NULL, last_status_code = $4, last_error = $5
			WHERE id = $1 AND attempts = $2 AND status = 'pending'
			RETURNING webhook_id, status = 'failed', created_at`, id, attempt, o.OK, code, errText, o.GiveUp, o.RetryIn).Scan(&webhook, &gaveUp, &created)
		if err == pgx.ErrNoRows {
			return nil // deleted, or retaken
		}
		if err != nil {
			return err
		}
		if o.OK {
			// A healthy endpoint's row is written at most once a second
			// (last_success_at to within a second), not per delivery:
			// each write would hold off the claims for its endpoint.
			_, err = tx.db.Exec(ctx, `UPDATE webhooks SET failing_since = NULL, last_success_at = now()
				WHERE id = $1 AND (failing_since IS NOT NULL OR last_success_at IS NULL OR last_success_at < now() - interval '1 second')`, webhook)
			return err
		}
		// Disabled once it has failed for GiveUp: its first failure since
		// a success is that old, or a delivery was given up with no
		// success since its event (every attempt of the window failed).
		_, err = tx.db.Exec(ctx, `
			WITH w AS (
				SELECT id, coalesce(failing_since, now()) AS since,
				       coalesce(failing_since, now()) < now() - $2::interval
				       OR ($5 AND (last_success_at IS NULL OR last_success_at < $6)) AS disable
				FROM webhooks WHERE id = $1 AND disabled_at IS NULL FOR NO KEY UPDATE)
			UPDATE webhooks SET failing_since = w.since,
				disabled_at = CASE WHEN w.disable THEN now() END,
				disabled_reason = CASE WHEN w.disable THEN 'every delivery failed for ' || $3 || '; last: ' || $4 END
			FROM w WHERE webhooks.id = w.id`, webhook, o.GiveUp, o.GiveUp.String(), o.Error, gaveUp, created)
		return err
	}), "finish webhook delivery")
}

// PurgeWebhookDeliveries deletes delivered and failed deliveries older
// than keep, at most 10,000 a call, and returns how many went.
func (s *Store) PurgeWebhookDeliveries(ctx context.Context, keep time.Duration) (int64, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	tag, err := s.db.Exec(ctx, `
		DELETE FROM webhook_deliveries WHERE id IN (
			SELECT id FROM webhook_deliveries WHERE status <> 'pending' AND created_at < now() - $1::interval LIMIT 10000)`, keep)
	return tag.RowsAffected(), translate(err, "purge webhook deliveries")
}
