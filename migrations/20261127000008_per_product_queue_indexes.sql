-- The claim's candidate sets are read per product (one ordered index range each), so
-- a factory's claim reads about `per_set` rows per product whatever the queue's
-- length, the other products' queues or the table's statistics.
CREATE INDEX job_view_queued_product_priority
    ON job_view (product_id, priority_rank, created_at, job_id) WHERE stage = 'queued';
CREATE INDEX job_view_queued_product_age
    ON job_view (product_id, created_at, job_id) WHERE stage = 'queued';
DROP INDEX job_view_queued_oldest;
-- Only rows with an affinity belong in the affinity index.
DROP INDEX job_view_queued_affinity;
CREATE INDEX job_view_queued_affinity
    ON job_view (affinity_factory_id) WHERE stage = 'queued' AND affinity_factory_id IS NOT NULL;
