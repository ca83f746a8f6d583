-- The first schema. Table and column names of devices, nodes, presence,
-- presence_live and commands are a contract with operators (psql) and outside
-- tools: add columns freely, rename none.

-- +goose Up
CREATE TABLE devices (
    id           text PRIMARY KEY
                 CONSTRAINT devices_id_format CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$'),
    secret_hash  bytea NOT NULL,            -- sha256 of the device secret
    labels       jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz                -- set when a session ends
);

CREATE TABLE api_keys (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL,
    key_hash   bytea NOT NULL UNIQUE,       -- sha256 of the bearer token
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

-- One lease row per live connection node, renewed by its heartbeat.
CREATE TABLE nodes (
    id               text PRIMARY KEY,
    region           text NOT NULL,
    addr             text NOT NULL DEFAULT '',
    started_at       timestamptz NOT NULL DEFAULT now(),
    heartbeat_at     timestamptz NOT NULL DEFAULT now(),
    lease_expires_at timestamptz NOT NULL
);

-- One row per connected device, written on connect and disconnect only. A
-- row is believed only while its node's lease is alive (presence_live).
CREATE TABLE presence (
    device_id    text PRIMARY KEY,
    node_id      text NOT NULL,
    region       text NOT NULL,
    session_id   uuid NOT NULL,             -- a newer session replaces the row; an old one cannot delete it
    remote_addr  text NOT NULL DEFAULT '',
    connected_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX presence_node_id ON presence (node_id);

CREATE VIEW presence_live AS
SELECT p.*
FROM presence p
JOIN nodes n ON n.id = p.node_id
WHERE n.lease_expires_at > now();

CREATE TABLE commands (
    id             uuid PRIMARY KEY,
    device_id      text NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    name           text NOT NULL,
    args           jsonb NOT NULL DEFAULT '{}',
    status         text NOT NULL DEFAULT 'pending'
                   CONSTRAINT commands_status CHECK (status IN ('pending', 'delivered', 'done', 'failed', 'expired')),
    reply_to       text,                    -- the edge that accepted it, woken on each change
    watchers       text[] NOT NULL DEFAULT '{}', -- other edges streaming it (a resumed stream)
    timeout        interval NOT NULL,       -- how long the device has to reply once delivered
    expires_at     timestamptz NOT NULL,    -- created_at + ttl: undelivered by then means expired
    node_id        text,                    -- the node that delivered it
    ok             boolean,                 -- set when the device replied
    result         jsonb,
    error          text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    delivered_at   timestamptz,
    reply_deadline timestamptz,             -- delivered_at + timeout
    completed_at   timestamptz
);
CREATE INDEX commands_pending ON commands (device_id, created_at) WHERE status = 'pending';
CREATE INDEX commands_pending_expiry ON commands (expires_at) WHERE status = 'pending';
CREATE INDEX commands_reply_deadline ON commands (reply_deadline) WHERE status = 'delivered';

-- Device telemetry and alerts, in arrival order per device.
CREATE TABLE events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id   text NOT NULL,
    name        text NOT NULL,
    data        jsonb,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_device ON events (device_id, id);

-- +goose Down
DROP TABLE events;
DROP TABLE commands;
DROP VIEW presence_live;
DROP TABLE presence;
DROP TABLE nodes;
DROP TABLE api_keys;
DROP TABLE devices;
