-- The device.state_reported webhook event (issue 17): a device's reported
-- document changed. Written by a trigger, like the other events (00017),
-- in the same transaction as the report it announces. A report that
-- changes nothing moves no version (db.StoreReports) and sends nothing.

-- +goose Up
-- +goose StatementBegin
CREATE FUNCTION webhook_state_reported() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- The common case, no endpoint wanting it, costs one index probe and
    -- builds no document.
    IF NOT EXISTS (SELECT FROM webhooks WHERE 'device.state_reported' = ANY (events) AND disabled_at IS NULL) THEN
        RETURN NULL;
    END IF;
    PERFORM webhook_enqueue('device.state_reported', NEW.device_id, NULL,
        jsonb_build_object('device_id', NEW.device_id, 'reported', NEW.reported,
                           'reported_version', NEW.reported_version, 'reported_updated_at', NEW.reported_updated_at,
                           'desired_version', NEW.desired_version,
                           'delta', sb_state_delta(NEW.desired, NEW.reported)));
    RETURN NULL;
END $$;
-- +goose StatementEnd
CREATE TRIGGER webhook_state_reported_insert AFTER INSERT ON device_state
    FOR EACH ROW WHEN (NEW.reported_version > 0)
    EXECUTE FUNCTION webhook_state_reported();
CREATE TRIGGER webhook_state_reported_update AFTER UPDATE OF reported_version ON device_state
    FOR EACH ROW WHEN (OLD.reported_version IS DISTINCT FROM NEW.reported_version)
    EXECUTE FUNCTION webhook_state_reported();

-- +goose Down
DROP TRIGGER webhook_state_reported_update ON device_state;
DROP TRIGGER webhook_state_reported_insert ON device_state;
DROP FUNCTION webhook_state_reported();
