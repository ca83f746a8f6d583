-- Presence history: each session a node saw end, for operators and the
-- console ("where was this device, and when").

-- +goose Up
CREATE TABLE device_sessions (
    session_id      uuid PRIMARY KEY,
    device_id       text NOT NULL,
    node_id         text NOT NULL,
    region          text NOT NULL,
    remote_addr     text NOT NULL DEFAULT '',
    connected_at    timestamptz NOT NULL,  -- the node's clock, from the session id (UUIDv7)
    disconnected_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX device_sessions_device ON device_sessions (device_id, connected_at);
CREATE INDEX device_sessions_disconnected_at ON device_sessions (disconnected_at);

-- +goose Down
DROP TABLE device_sessions;
