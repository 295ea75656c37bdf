-- Preemption's nominations and the fleet's run-time flags.

-- A freed slot reserved for a critical job after a preemption.
ALTER TABLE job_view ADD COLUMN nominated_factory_id uuid, ADD COLUMN nominated_until timestamptz;
CREATE INDEX job_view_nominated ON job_view (nominated_factory_id) WHERE nominated_factory_id IS NOT NULL;

-- Flags as the log has them (a flag without a row follows the environment's seed).
CREATE TABLE flag_view
(
    flag    text PRIMARY KEY,
    mode    text   NOT NULL,
    version bigint NOT NULL
);
