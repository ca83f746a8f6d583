-- The claim counts an endpoint's deliveries under way (leased) to keep
-- within its concurrency limit; without this index that count read every
-- pending delivery of the endpoint, so a claim slowed as a backlog grew
-- (0.65 ms with a short queue, ~5 ms at 5,000 pending: BENCHMARKS.md).
-- A finished attempt clears its lease, so the index holds only the
-- deliveries under way, and the leases a stopped edge left.

-- +goose Up
CREATE INDEX webhook_deliveries_leased ON webhook_deliveries (webhook_id, lease_until)
    WHERE status = 'pending' AND lease_until IS NOT NULL;

-- +goose Down
DROP INDEX webhook_deliveries_leased;
