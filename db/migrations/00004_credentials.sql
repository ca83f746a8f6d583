-- Credentials for production: API keys carry scopes and may expire.

-- +goose Up
-- Existing keys keep the access they had: all three scopes.
ALTER TABLE api_keys
    ADD COLUMN scopes     text[] NOT NULL DEFAULT '{commands,read,admin}'
               CONSTRAINT api_keys_scopes CHECK (scopes <> '{}' AND scopes <@ '{commands,read,admin}'),
    ADD COLUMN expires_at timestamptz;          -- null: never

-- +goose Down
ALTER TABLE api_keys DROP COLUMN scopes, DROP COLUMN expires_at;
