-- The sequencer gives positions a set at a time instead of one row at a time, with
-- the same result as the walk it replaces (migration 7). The walk went through the
-- unpositioned events below the visibility horizon in (txid, id) order, giving the
-- next position to each event whose stream predecessor had one (possibly given
-- earlier in the same walk) and stepping over the others, then walked again while it
-- made progress. One round here is one such walk, as one UPDATE: among the first
-- rows in (txid, id) order, an event is numbered when its stream's events in the
-- window, from the stream's first unpositioned one up to it, are contiguous and come
-- in sequence order — exactly the events the walk would have reached with their
-- predecessor already numbered. Positions follow (txid, id) order among them. The
-- rest wait for the next round of the same call (held-back events are stepped over,
-- so they can never stall the sequencer).
CREATE OR REPLACE FUNCTION gf_assign_positions(max_batch int) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    head    bigint;
    given   bigint := 0;
    n       bigint;
    horizon xid8;
BEGIN
    SELECT last_position INTO head FROM event_log_head FOR UPDATE;
    -- Every transaction below the horizon has ended; later statements see them all.
    horizon := pg_snapshot_xmin(pg_current_snapshot());
    LOOP
        WITH candidate AS (
            SELECT w.id, w.aggregate_type, w.aggregate_id, w.sequence,
                   row_number() OVER (ORDER BY w.txid, w.id) AS ord
            FROM (SELECT e.id, e.txid, e.aggregate_type, e.aggregate_id, e.sequence
                  FROM events e
                  WHERE e.position IS NULL AND e.txid < horizon
                  ORDER BY e.txid, e.id
                  LIMIT max_batch - given) AS w
        ), by_stream AS (
            SELECT c.*,
                   row_number() OVER s AS rn,
                   first_value(c.sequence) OVER s AS first_sequence,
                   coalesce(lag(c.ord) OVER s < c.ord, true) AS after_previous
            FROM candidate c
            WINDOW s AS (PARTITION BY c.aggregate_type, c.aggregate_id ORDER BY c.sequence)
        ), chained AS (
            SELECT b.*,
                   bool_and(b.after_previous) OVER (
                       PARTITION BY b.aggregate_type, b.aggregate_id ORDER BY b.sequence
                   ) AS in_order
            FROM by_stream b
        ), ready AS (
            SELECT ch.id, ch.ord FROM chained ch
            WHERE ch.in_order
              AND ch.sequence = ch.first_sequence + ch.rn - 1
              AND NOT EXISTS (SELECT 1 FROM events p
                              WHERE p.aggregate_type = ch.aggregate_type
                                AND p.aggregate_id = ch.aggregate_id
                                AND p.sequence = ch.first_sequence - 1
                                AND p.position IS NULL)
        ), numbered AS (
            SELECT id, head + row_number() OVER (ORDER BY ord) AS position FROM ready
        )
        UPDATE events e SET position = numbered.position
        FROM numbered WHERE e.id = numbered.id;
        GET DIAGNOSTICS n = ROW_COUNT;
        EXIT WHEN n = 0;
        head := head + n;
        given := given + n;
        EXIT WHEN given >= max_batch;
    END LOOP;
    UPDATE event_log_head SET last_position = head;
    RETURN given;
END $$;
