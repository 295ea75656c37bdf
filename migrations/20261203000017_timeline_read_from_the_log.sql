-- The job timeline is read from the log itself: a job's events, oldest first, are its
-- stream in `events` (the primary key's order), so the timeline is a view over
-- them instead of a table rebuilt from them. Every append used to write one
-- timeline row per job event — a copy of the event's type, payload and time, its
-- heap tuple and key entry, about a tenth of the write-ahead log a job makes in a
-- drain (docs/performance.md) — and every replay rebuilt them all. The view is
-- always equal to the log (nothing to rebuild, nothing to lag), and keeps the
-- table's name and columns for whoever queried it; the API reads the stream by
-- its key (projections/src/timeline.rs).
DROP TABLE job_event_view;
CREATE VIEW job_event_view AS
SELECT substring(aggregate_id FROM '[^/]*$')::uuid AS job_id, sequence, event_type,
       payload, recorded_at
FROM events
WHERE aggregate_type = 'job';
-- Its projector checkpoint would hold the low-water mark where it stands.
DELETE FROM projection_checkpoints WHERE projection = 'timeline';
