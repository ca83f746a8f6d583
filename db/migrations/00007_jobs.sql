-- Fleet jobs: one command to a target set, created in batches at a rollout
-- rate by whichever edge claims the job. The target set is a snapshot taken
-- when the job is created (job_targets), so its total never changes; each
-- target gets an ordinary command row (commands.job_id), and a job's counts
-- are the statuses of its commands.

-- +goose Up
CREATE TABLE jobs (
    id                   uuid PRIMARY KEY,
    name                 text NOT NULL,
    args                 jsonb NOT NULL DEFAULT '{}',
    timeout              interval NOT NULL,
    ttl                  interval NOT NULL,      -- each command's, from its own creation
    target               jsonb NOT NULL,         -- as the client gave it (a device list as its count)
    rate                 double precision NOT NULL CONSTRAINT jobs_rate CHECK (rate > 0), -- devices a second
    abort_failed_percent double precision NOT NULL DEFAULT 100
                         CONSTRAINT jobs_abort_failed_percent CHECK (abort_failed_percent BETWEEN 0 AND 100),
    status               text NOT NULL DEFAULT 'running'
                         CONSTRAINT jobs_status CHECK (status IN ('running', 'done', 'cancelled', 'aborted')),
    total                integer NOT NULL DEFAULT 0, -- targets, fixed at creation
    created              integer NOT NULL DEFAULT 0, -- targets whose command was created: positions below it
    api_key_id           bigint,
    created_at           timestamptz NOT NULL DEFAULT now(),
    -- The rollout's clock: the next batch is rate × (now - advanced_at)
    -- targets, and moves it on by what it created.
    advanced_at          timestamptz NOT NULL DEFAULT now(),
    checked_at           timestamptz NOT NULL DEFAULT '-infinity', -- a runner's last look: spreads jobs over edges
    finished_at          timestamptz
);
CREATE INDEX jobs_running ON jobs (checked_at) WHERE status = 'running';
CREATE INDEX jobs_status ON jobs (status, id);

-- The snapshot of a job's targets, in rollout order.
CREATE TABLE job_targets (
    job_id    uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    position  integer NOT NULL,
    device_id text NOT NULL,
    PRIMARY KEY (job_id, position)
);

ALTER TABLE commands ADD COLUMN job_id uuid; -- the job that created it; null for a command sent alone
-- A device gets at most one command of a job, whatever runners race.
CREATE UNIQUE INDEX commands_job_device ON commands (job_id, device_id) WHERE job_id IS NOT NULL;
-- A job's counts by status, and a batch's pending commands (by seq) for
-- its wake-ups. Partial: commands sent alone never touch it.
CREATE INDEX commands_job_status ON commands (job_id, status, seq) WHERE job_id IS NOT NULL;

-- +goose Down
DROP INDEX commands_job_status;
DROP INDEX commands_job_device;
ALTER TABLE commands DROP COLUMN job_id;
DROP TABLE job_targets;
DROP TABLE jobs;
