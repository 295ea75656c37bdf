-- The job state and the timeline's event payloads are kept as `json` (the text as
-- written), not `jsonb`: nothing queries inside them, every reader parses them in the
-- server, and building jsonb (parse, sort the keys, then print it back on every read)
-- was the largest part of a replay's database time and a cost of every append.
ALTER TABLE job_view ALTER COLUMN state TYPE json USING state::json;
ALTER TABLE job_event_view ALTER COLUMN payload TYPE json USING payload::json;
