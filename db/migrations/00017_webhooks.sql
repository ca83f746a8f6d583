-- Webhooks (issue 17): endpoints that are told, by a signed POST
-- (Standard Webhooks), when a command ends, a device connects or
-- disconnects, a device sends an event, or a job finishes.
--
-- webhook_deliveries is an outbox: a row per (endpoint, event), written by
-- triggers in the same transaction as the change it reports, so a change
-- that commits is delivered at least once and one that rolls back never
-- is. Triggers rather than edits to each writer: the final statuses of
-- commands, presence and jobs are written by many statements (replies, the
-- sweeper, cancels, job aborts, nodes' connects and reaps), and a trigger
-- cannot be forgotten by the next one. With no endpoint the triggers' work
-- is one scan of the (tiny) webhooks table.

-- +goose Up
CREATE TABLE webhooks (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    url             text NOT NULL,
    events          text[] NOT NULL,               -- event types it wants
    event_names     text[] NOT NULL DEFAULT '{}',  -- device.event: only these names ({}: all)
    secret          text NOT NULL,                 -- whsec_…: needed in clear to sign
    paused          boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    failing_since   timestamptz,                   -- first failure since its last success
    last_success_at timestamptz,
    disabled_at     timestamptz,                   -- failing for the whole give-up window
    disabled_reason text
);

CREATE TABLE webhook_deliveries (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, -- also the per-device order
    webhook_id       bigint NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_type       text NOT NULL,
    device_id        text,                          -- the order key; null for job.finished
    payload          jsonb NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CONSTRAINT webhook_deliveries_status CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_until      timestamptz,                   -- claimed by an edge until then
    leased_by        text,
    last_status_code integer,                       -- the receiver's answer; null: none (network error)
    last_error       text,
    last_attempt_at  timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz
);
-- The claim: an endpoint's pending deliveries, oldest first (the
-- delivered ones, kept 7 days, are not scanned), and a device's earlier ones.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (webhook_id, id) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (webhook_id, device_id, id) WHERE status = 'pending';
-- The listing, newest first.
CREATE INDEX webhook_deliveries_webhook ON webhook_deliveries (webhook_id, id);

-- +goose StatementBegin
CREATE FUNCTION webhook_enqueue(etype text, dev text, ename text, data jsonb) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO webhook_deliveries (webhook_id, event_type, device_id, payload)
    SELECT w.id, etype, dev, jsonb_build_object('type', etype, 'timestamp', now(), 'data', data)
    FROM webhooks w
    WHERE etype = ANY (w.events) AND w.disabled_at IS NULL
      AND (ename IS NULL OR w.event_names = '{}' OR ename = ANY (w.event_names))
    ORDER BY w.id
$$;
-- +goose StatementEnd

-- A command's final status: done, failed or expired (cancelled has no event).
-- +goose StatementBegin
CREATE FUNCTION webhook_command_final() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM webhook_enqueue(
        CASE NEW.status WHEN 'done' THEN 'command.completed' WHEN 'failed' THEN 'command.failed' ELSE 'command.expired' END,
        NEW.device_id, NULL,
        jsonb_build_object('id', NEW.id, 'device_id', NEW.device_id, 'name', NEW.name, 'status', NEW.status,
                           'ok', NEW.ok, 'result', NEW.result, 'error', NEW.error, 'job_id', NEW.job_id,
                           'created_at', NEW.created_at, 'completed_at', NEW.completed_at));
    RETURN NULL;
END $$;
-- +goose StatementEnd
CREATE TRIGGER webhook_command_final AFTER UPDATE OF status ON commands
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.status IN ('done', 'failed', 'expired'))
    EXECUTE FUNCTION webhook_command_final();

-- A device's session: a presence row written (a new session, here or
-- replacing one elsewhere) or deleted (its session ended, or its node died).
-- +goose StatementBegin
CREATE FUNCTION webhook_presence() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM webhook_enqueue('device.disconnected', OLD.device_id, NULL,
            jsonb_build_object('device_id', OLD.device_id, 'node', OLD.node_id, 'region', OLD.region,
                               'session_id', OLD.session_id));
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.session_id = NEW.session_id THEN
        RETURN NULL;
    END IF;
    PERFORM webhook_enqueue('device.connected', NEW.device_id, NULL,
        jsonb_build_object('device_id', NEW.device_id, 'node', NEW.node_id, 'region', NEW.region,
                           'session_id', NEW.session_id, 'remote_addr', NEW.remote_addr));
    RETURN NULL;
END $$;
-- +goose StatementEnd
CREATE TRIGGER webhook_presence AFTER INSERT OR UPDATE OF session_id OR DELETE ON presence
    FOR EACH ROW EXECUTE FUNCTION webhook_presence();

-- Device events come in batches: one statement-level trigger per batch,
-- in the events' order.
-- +goose StatementBegin
CREATE FUNCTION webhook_device_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_deliveries (webhook_id, event_type, device_id, payload)
    SELECT w.id, 'device.event', e.device_id,
           jsonb_build_object('type', 'device.event', 'timestamp', now(),
                              'data', jsonb_build_object('id', e.id, 'device_id', e.device_id, 'name', e.name,
                                                         'data', e.data, 'received_at', e.received_at))
    FROM added e JOIN webhooks w
      ON 'device.event' = ANY (w.events) AND w.disabled_at IS NULL
     AND (w.event_names = '{}' OR e.name = ANY (w.event_names))
    ORDER BY e.id, w.id;
    RETURN NULL;
END $$;
-- +goose StatementEnd
CREATE TRIGGER webhook_device_events AFTER INSERT ON events
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION webhook_device_events();

-- A job leaves running (or scheduled) for a final status.
-- +goose StatementBegin
CREATE FUNCTION webhook_job_finished() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM webhook_enqueue('job.finished', NULL, NULL,
        jsonb_build_object('id', NEW.id, 'name', NEW.name, 'status', NEW.status, 'total', NEW.total));
    RETURN NULL;
END $$;
-- +goose StatementEnd
CREATE TRIGGER webhook_job_finished AFTER UPDATE OF status ON jobs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.status IN ('done', 'done_with_failures', 'cancelled', 'aborted'))
    EXECUTE FUNCTION webhook_job_finished();

-- +goose Down
DROP TRIGGER webhook_job_finished ON jobs;
DROP TRIGGER webhook_device_events ON events;
DROP TRIGGER webhook_presence ON presence;
DROP TRIGGER webhook_command_final ON commands;
DROP FUNCTION webhook_job_finished();
DROP FUNCTION webhook_device_events();
DROP FUNCTION webhook_presence();
DROP FUNCTION webhook_command_final();
DROP FUNCTION webhook_enqueue(text, text, text, jsonb);
DROP TABLE webhook_deliveries;
DROP TABLE webhooks;
