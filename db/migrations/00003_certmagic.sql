-- certmagic's storage: certificates, their keys, the ACME account and the
-- challenge tokens, shared by every process so that N nodes cause one
-- issuance and any process (an edge on port 80) can answer a challenge.
-- Keys are slash-separated paths; "directories" are implicit prefixes.
-- Locks are session advisory locks, not rows: PostgreSQL releases them
-- when their holder's connection ends, whatever killed it.

-- +goose Up
CREATE TABLE certmagic_data (
    key      text PRIMARY KEY COLLATE "C", -- C collation: prefix scans use the index
    value    bytea NOT NULL,
    modified timestamptz NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE certmagic_data;
