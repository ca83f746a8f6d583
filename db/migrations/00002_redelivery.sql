-- At-least-once delivery: each delivery records the session it went to and
-- counts itself; a session that ends without a reply gives its commands back
-- (status 'pending'), to be delivered again in their original order (seq).
-- Idempotent accepts remember, per API key, which command a key created.

-- +goose Up
ALTER TABLE commands
    ADD COLUMN seq        bigint GENERATED ALWAYS AS IDENTITY, -- PostgreSQL's order of acceptance: a device's commands go out in it
    ADD COLUMN attempts   integer NOT NULL DEFAULT 0,           -- deliveries so far
    ADD COLUMN session_id uuid,                                 -- the session of the last delivery
    ADD COLUMN api_key_id bigint;                               -- the key that sent it

-- The foreign key locked the device row (FOR KEY SHARE) on every insert:
-- many clients commanding one device queued on that lock. Inserts check
-- that the device exists instead; deleting a device deletes its commands.
ALTER TABLE commands DROP CONSTRAINT commands_device_id_fkey;

DROP INDEX commands_pending;
CREATE INDEX commands_pending ON commands (device_id, seq) WHERE status = 'pending';
CREATE INDEX commands_delivered ON commands (device_id) WHERE status = 'delivered';

-- The newest session of a device is the one PostgreSQL registered last: the
-- presence upsert always replaces, and stamps the row from this sequence.
ALTER TABLE presence ADD COLUMN registered_seq bigint NOT NULL DEFAULT 0;
CREATE SEQUENCE presence_registered_seq;
CREATE OR REPLACE VIEW presence_live AS
SELECT p.*
FROM presence p
JOIN nodes n ON n.id = p.node_id
WHERE n.lease_expires_at > now();

CREATE TABLE idempotency_keys (
    api_key_id   bigint NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    key          text NOT NULL,
    request_hash bytea NOT NULL,            -- sha256 of the device and the request: a repeat must match
    command_id   uuid NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (api_key_id, key)
);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);

-- +goose Down
DROP TABLE idempotency_keys;
DROP SEQUENCE presence_registered_seq;
DROP VIEW presence_live;
ALTER TABLE presence DROP COLUMN registered_seq;
CREATE VIEW presence_live AS
SELECT p.*
FROM presence p
JOIN nodes n ON n.id = p.node_id
WHERE n.lease_expires_at > now();
DROP INDEX commands_delivered;
DROP INDEX commands_pending;
CREATE INDEX commands_pending ON commands (device_id, created_at) WHERE status = 'pending';
ALTER TABLE commands DROP COLUMN seq, DROP COLUMN attempts, DROP COLUMN session_id, DROP COLUMN api_key_id;
ALTER TABLE commands ADD CONSTRAINT commands_device_id_fkey FOREIGN KEY (device_id) REFERENCES devices (id) ON DELETE CASCADE;
