-- Device events read back: streams resume by event id, each device's
-- latest value of each event name is kept, and old rows are deleted.

-- +goose Up
-- The latest event of each name per device, and how many of that name are
-- stored, written with the events (one row per device and name, updated
-- in place). The counts find the devices over their cap without counting.
CREATE TABLE event_latest (
    device_id   text NOT NULL,
    name        text NOT NULL,
    event_id    bigint NOT NULL,
    data        jsonb,
    received_at timestamptz NOT NULL,
    stored      bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (device_id, name)
);
INSERT INTO event_latest (device_id, name, event_id, data, received_at, stored)
SELECT DISTINCT ON (device_id, name) device_id, name, id, data, received_at,
       count(*) OVER (PARTITION BY device_id, name)
FROM events ORDER BY device_id, name, id DESC;

-- Retention deletes by age, oldest first, in small batches.
CREATE INDEX events_received_at ON events (received_at);
CREATE INDEX commands_completed_at ON commands (completed_at) WHERE completed_at IS NOT NULL;

-- +goose Down
DROP INDEX commands_completed_at;
DROP INDEX events_received_at;
DROP TABLE event_latest;
