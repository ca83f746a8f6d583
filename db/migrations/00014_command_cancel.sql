-- Commands a client lists and cancels (issue 16): a pending command may be
-- withdrawn before delivery, and ends in the new final status 'cancelled'
-- (so do the undelivered commands of a job that is cancelled or aborted);
-- GET /v1/commands lists commands newest first, by (created_at, id).
--
-- Not in a transaction: on a large commands table, an index built in one
-- would block every insert while it is built, and a CHECK validated in one
-- would scan the table under an exclusive lock. Each statement commits by
-- itself instead, and each can run again should the migration stop halfway
-- (goose then records nothing, and the next start repeats it).

-- +goose NO TRANSACTION
-- +goose Up
-- One ALTER, so the table is never without the check; NOT VALID takes its
-- lock for a moment only, and VALIDATE reads the table without blocking
-- writes (every row passes: the new check only allows more).
ALTER TABLE commands DROP CONSTRAINT commands_status,
    ADD CONSTRAINT commands_status
    CHECK (status IN ('pending', 'delivered', 'done', 'failed', 'expired', 'cancelled')) NOT VALID;
ALTER TABLE commands VALIDATE CONSTRAINT commands_status;

-- The listing, newest first: every key's (scope read), filtered or not.
-- An index a failed build left invalid is dropped and built again.
DROP INDEX CONCURRENTLY IF EXISTS commands_created;
CREATE INDEX CONCURRENTLY commands_created ON commands (created_at, id);
-- The listing of a key without the read scope: only the commands it sent.
DROP INDEX CONCURRENTLY IF EXISTS commands_api_key_created;
CREATE INDEX CONCURRENTLY commands_api_key_created ON commands (api_key_id, created_at, id) WHERE api_key_id IS NOT NULL;

-- +goose Down
DROP INDEX CONCURRENTLY IF EXISTS commands_api_key_created;
DROP INDEX CONCURRENTLY IF EXISTS commands_created;
-- The earlier schema knows no cancelled command: they read as expired,
-- with their error ("cancelled", "job cancelled") kept.
UPDATE commands SET status = 'expired' WHERE status = 'cancelled';
ALTER TABLE commands DROP CONSTRAINT commands_status,
    ADD CONSTRAINT commands_status
    CHECK (status IN ('pending', 'delivered', 'done', 'failed', 'expired')) NOT VALID;
ALTER TABLE commands VALIDATE CONSTRAINT commands_status;
