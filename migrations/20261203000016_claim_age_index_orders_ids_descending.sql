-- The claim's age-ordered candidate set (the oldest queued jobs of a product) must be
-- read from the partial queue index. With both orders ascending, `job_view_product`
-- (every job of the product, for the job list) delivered the same order, and the
-- planner costed the two within a fraction of a percent whenever the statistics said
-- most jobs were queued — as they do after a large submit. Our connections keep
-- their generic plans (db::connect), so a connection that picked `job_view_product`
-- then walked every finished job of the product, oldest first, on every claim until
-- the next ANALYZE: 15,000 heap rows filtered per read late in a 20,000-job drain,
-- the drain's costliest statement (docs/performance.md).
--
-- Ties of `created_at` now go by job id descending, an order `job_view_product`
-- cannot deliver by a scan in either direction: it would have to add a sort on top,
-- so the queue index wins on cost whatever the statistics say. (Which of two jobs
-- submitted in the same microsecond enters the bounded candidate set first is no
-- contract: the scheduler ranks the set afterwards.)
DROP INDEX job_view_queued_product_age;
CREATE INDEX job_view_queued_product_age
    ON job_view (product_id, created_at, job_id DESC) WHERE stage = 'queued';
