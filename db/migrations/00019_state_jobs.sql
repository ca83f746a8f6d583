-- State jobs (issue 17): a job may patch its targets' desired state (a
-- JSON merge patch, jobs.desired) instead of sending them a command. It
-- reuses the job's rollout (job_targets in position order, at the job's
-- rate, by whichever runner claims the job) but creates no command: each
-- batch is one statement that merges the patch into the targets' desired
-- documents and records each target's outcome on its job_targets row.
-- Whether a patched target has since reported the patched values is
-- computed when the job is read, from device_state.

-- +goose Up
-- null: a command job (name, args…); an object: a state job, whose
-- name is '' and whose timeout and ttl are 0.
ALTER TABLE jobs ADD COLUMN desired jsonb
    CONSTRAINT jobs_desired_object CHECK (desired IS NULL OR jsonb_typeof(desired) = 'object');
-- A state job's target, once its batch ran: patched (its desired document
-- changed, to desired_version), unchanged (already at the patched state),
-- gone (the device was deleted since the snapshot) or too_large (the patch
-- would leave the document over 32 KiB: not applied). null: not reached.
-- Constant defaults (none): no rewrite of the table.
ALTER TABLE job_targets
    ADD COLUMN outcome text
        CONSTRAINT job_targets_outcome CHECK (outcome IN ('patched', 'unchanged', 'gone', 'too_large')),
    ADD COLUMN desired_version bigint,
    ADD COLUMN patched_at timestamptz;

-- +goose Down
-- The earlier schema knows only command jobs: the state jobs go (their
-- patches stay applied).
DELETE FROM jobs WHERE desired IS NOT NULL;
ALTER TABLE job_targets DROP COLUMN patched_at, DROP COLUMN desired_version, DROP COLUMN outcome;
ALTER TABLE jobs DROP COLUMN desired;
