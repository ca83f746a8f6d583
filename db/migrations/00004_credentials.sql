-- Credentials for production: API keys carry scopes and may expire; device
-- secrets can be rotated with a grace period for the old one; devices can
-- be disabled; device ids may no longer hold ':'.

-- +goose Up
-- Existing keys keep the access they had: all three scopes.
ALTER TABLE api_keys
    ADD COLUMN scopes     text[] NOT NULL DEFAULT '{commands,read,admin}'
               CONSTRAINT api_keys_scopes CHECK (scopes <> '{}' AND scopes <@ '{commands,read,admin}'),
    ADD COLUMN expires_at timestamptz;          -- null: never

ALTER TABLE devices
    ADD COLUMN previous_secret_hash  bytea,       -- the secret a rotation replaced...
    ADD COLUMN previous_secret_until timestamptz, -- ...still accepted until then
    ADD COLUMN disabled_at           timestamptz; -- set: connections are refused

-- HTTP Basic auth splits at the first ':', so a device whose id holds one
-- could never connect. New ids may not; existing rows are kept (NOT VALID)
-- for their owners to delete. An update of such a row fails this check:
-- only DELETE works on them.
ALTER TABLE devices DROP CONSTRAINT devices_id_format;
ALTER TABLE devices ADD CONSTRAINT devices_id_format CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$') NOT VALID;

-- +goose Down
ALTER TABLE devices DROP CONSTRAINT devices_id_format;
ALTER TABLE devices ADD CONSTRAINT devices_id_format CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$');
ALTER TABLE devices DROP COLUMN previous_secret_hash, DROP COLUMN previous_secret_until, DROP COLUMN disabled_at;
ALTER TABLE api_keys DROP COLUMN scopes, DROP COLUMN expires_at;
