-- The sequencer gives positions a set at a time instead of one row at a time: each
-- round is one UPDATE numbering, in (txid, id) order, the unpositioned events below the
-- visibility horizon whose stream predecessor already has a position. An event whose
-- predecessor is positioned in this round (a command that appended two events to one
-- stream) gets its position in the next round of the same call, so it still follows
-- its predecessor; events of other streams may come in between, which the log order
-- allows (SPEC §11: one order, each stream in sequence order). Held-back events are
-- stepped over as before, so they can never stall the sequencer.
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
        WITH ready AS (
            SELECT e.id, e.txid FROM events e
            WHERE e.position IS NULL
              AND e.txid < horizon
              AND NOT EXISTS (SELECT 1 FROM events p
                              WHERE p.aggregate_type = e.aggregate_type
                                AND p.aggregate_id = e.aggregate_id
                                AND p.sequence = e.sequence - 1
                                AND p.position IS NULL)
            ORDER BY e.txid, e.id
            LIMIT max_batch - given
        ), numbered AS (
            SELECT id, head + row_number() OVER (ORDER BY txid, id) AS position FROM ready
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
