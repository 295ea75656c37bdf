-- The scoring scheduler's read models.

-- The factory holding a job's latest checkpoint (the affinity term), and indexes for
-- the claim's bounded candidate set: best by priority ∪ oldest ∪ affinity.
ALTER TABLE job_view ADD COLUMN affinity_factory_id uuid;
CREATE INDEX job_view_queued_oldest ON job_view (created_at, job_id) WHERE stage = 'queued';
CREATE INDEX job_view_queued_affinity ON job_view (affinity_factory_id) WHERE stage = 'queued';
CREATE INDEX job_view_running_product ON job_view (product_id) WHERE lease_factory_id IS NOT NULL;

-- Per-product scheduling settings (the weights' product override).
CREATE TABLE product_settings_view
(
    product_id text PRIMARY KEY,
    weights    jsonb  NOT NULL,
    version    bigint NOT NULL
);
