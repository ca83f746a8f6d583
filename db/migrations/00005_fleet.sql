-- Fleet operations: devices are found by where they were last seen and by
-- their labels, for listings and jobs.

-- +goose Up
-- The region of the device's last session, written when a session ends
-- (with last_seen_at): an offline device still belongs to a region. An
-- online device's region is its presence row's.
ALTER TABLE devices ADD COLUMN region text;
CREATE INDEX devices_region ON devices (region, id);
-- Label selectors (labels @> '{"room":"kitchen"}', labels ? 'room').
CREATE INDEX devices_labels ON devices USING gin (labels);

-- +goose Down
DROP INDEX devices_labels;
DROP INDEX devices_region;
ALTER TABLE devices DROP COLUMN region;
