-- The web console (console/): an operator signs in with an API key, which
-- becomes a session cookie, so that a browser's EventSource (which cannot
-- send an Authorization header) can stream. Only the SHA-256 digests of the
-- cookie and of one-time sign-in links are stored. A session or link dies
-- with its key (ON DELETE CASCADE); a revoked key's sessions are refused
-- because each request reads the key with its session.

-- +goose Up
CREATE TABLE console_sessions (
    id_hash    bytea PRIMARY KEY,           -- sha256 of the sb_session cookie
    api_key_id bigint NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    csrf       text NOT NULL,               -- the token every state-changing request must echo
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX console_sessions_expires_at ON console_sessions (expires_at);

-- One-time sign-in links (switchboard dev prints one), consumed by a
-- DELETE ... RETURNING: a link works once.
CREATE TABLE console_links (
    token_hash bytea PRIMARY KEY,
    api_key_id bigint NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    expires_at timestamptz NOT NULL
);

-- A device's page lists its newest commands; without this index that
-- would read every command. It costs one more index entry per command.
CREATE INDEX commands_device_created ON commands (device_id, created_at);

-- +goose Down
DROP INDEX commands_device_created;
DROP TABLE console_links;
DROP TABLE console_sessions;
