-- A console's search box finds devices by part of their id
-- (GET /v1/devices?q=kit): a trigram index serves `id ILIKE '%kit%'`
-- without reading the whole table. pg_trgm ships with PostgreSQL and is a
-- trusted extension (13+): the database's owner may create it.

-- +goose Up
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX devices_id_trgm ON devices USING gin (id gin_trgm_ops);

-- +goose Down
DROP INDEX devices_id_trgm;
