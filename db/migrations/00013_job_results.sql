-- Jobs that tell the truth (issue 16): a finished job is done only when
-- every command succeeded (done_with_failures otherwise); a job may start
-- later (scheduled until start_at); it may retry a target's failed or
-- expired command, as a new command to the same device (so each attempt
-- keeps its own error); and it carries a title and description, beside the
-- command's name, to tell jobs of one command apart.

-- +goose Up
ALTER TABLE jobs DROP CONSTRAINT jobs_status;
ALTER TABLE jobs ADD CONSTRAINT jobs_status
    CHECK (status IN ('scheduled', 'running', 'done', 'done_with_failures', 'cancelled', 'aborted'));
ALTER TABLE jobs
    ADD COLUMN title        text NOT NULL DEFAULT '',
    ADD COLUMN description  text NOT NULL DEFAULT '',
    ADD COLUMN start_at     timestamptz, -- null: started when created
    -- Commands a target may get: 1 never retries.
    ADD COLUMN max_attempts integer NOT NULL DEFAULT 1 CONSTRAINT jobs_max_attempts CHECK (max_attempts BETWEEN 1 AND 10),
    ADD COLUMN backoff      interval NOT NULL DEFAULT '0'; -- the wait before a first retry (the runner's policy grows it)
CREATE INDEX jobs_scheduled ON jobs (start_at) WHERE status = 'scheduled';

-- A job's command is its target's attempt number job_attempt (1 for a
-- command sent alone); retried says a later attempt replaced it, so that a
-- job's counts read each target's latest command. Constant defaults: no
-- rewrite of the table.
ALTER TABLE commands
    ADD COLUMN job_attempt integer NOT NULL DEFAULT 1,
    ADD COLUMN retried     boolean NOT NULL DEFAULT false;
-- A device gets at most one command per attempt of a job, whatever runners race.
DROP INDEX commands_job_device;
CREATE UNIQUE INDEX commands_job_attempt ON commands (job_id, device_id, job_attempt) WHERE job_id IS NOT NULL;

-- +goose Down
-- The earlier schema knows one command per target: the retried attempts go.
DELETE FROM commands WHERE job_id IS NOT NULL AND retried;
DROP INDEX commands_job_attempt;
CREATE UNIQUE INDEX commands_job_device ON commands (job_id, device_id) WHERE job_id IS NOT NULL;
ALTER TABLE commands DROP COLUMN retried, DROP COLUMN job_attempt;
DROP INDEX jobs_scheduled;
UPDATE jobs SET status = 'done' WHERE status = 'done_with_failures';
UPDATE jobs SET status = 'cancelled', finished_at = now() WHERE status = 'scheduled';
ALTER TABLE jobs DROP COLUMN backoff, DROP COLUMN max_attempts, DROP COLUMN start_at,
    DROP COLUMN description, DROP COLUMN title;
ALTER TABLE jobs DROP CONSTRAINT jobs_status;
ALTER TABLE jobs ADD CONSTRAINT jobs_status CHECK (status IN ('running', 'done', 'cancelled', 'aborted'));
