-- The sequencer walks the unpositioned events in (txid, id) order through the partial
-- index, without a LIMIT on the query: held-back events (whose stream predecessor has
-- no position yet) are stepped over, so a run of them can never stall it, and an event
-- whose predecessor got its position earlier in the same walk follows it at once.
CREATE OR REPLACE FUNCTION gf_assign_positions(max_batch int) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    head     bigint;
    given    bigint := 0;
    progress boolean := true;
    r        record;
BEGIN
    SELECT last_position INTO head FROM event_log_head FOR UPDATE;
    WHILE progress AND given < max_batch LOOP
        progress := false;
        FOR r IN
            SELECT e.id, e.aggregate_type, e.aggregate_id, e.sequence
            FROM events e
            WHERE e.position IS NULL
              AND e.txid < pg_snapshot_xmin(pg_current_snapshot())
            ORDER BY e.txid, e.id
        LOOP
            IF EXISTS (SELECT 1 FROM events p
                       WHERE p.aggregate_type = r.aggregate_type
                         AND p.aggregate_id = r.aggregate_id
                         AND p.sequence = r.sequence - 1
                         AND p.position IS NULL) THEN
                CONTINUE;
            END IF;
            head := head + 1;
            UPDATE events SET position = head WHERE id = r.id;
            given := given + 1;
            progress := true;
            EXIT WHEN given >= max_batch;
        END LOOP;
    END LOOP;
    UPDATE event_log_head SET last_position = head;
    RETURN given;
END $$;
