-- The sequencer's common call walks the log once, not three times.
--
-- Under the drain a call found every eligible event ready in its first round, then
-- walked the same events twice more: the count of those still without a position
-- (migration 14) and the search for the new mark, each row with a probe of
-- `event_positions`. The round now also returns how many eligible events its window
-- held: when the window was not full and all of them got a position, nothing
-- eligible is left, so the mark moves straight to the horizon. Held-back events, a
-- full window or a batch cut short go on as before (migrations 12 and 14).
CREATE OR REPLACE FUNCTION gf_assign_positions(max_batch int) RETURNS bigint LANGUAGE plpgsql
SET enable_bitmapscan = off SET enable_seqscan = off SET jit = off AS $$
DECLARE
    head    bigint;
    from_txid xid8;
    from_id   bigint;
    given   bigint := 0;
    n       bigint;
    horizon xid8;
    -- How far past the batch a round looks: widened while a full window held only
    -- events whose stream predecessors lie beyond it.
    widen   bigint := 1;
    window_size bigint;
    seen    bigint;
    -- The eligible events the round's window held (all of them when fewer than its size).
    in_window bigint;
BEGIN
    SELECT last_position, scan_from_txid, scan_from_id INTO head, from_txid, from_id
    FROM event_log_head WHERE singleton FOR UPDATE;
    -- Every transaction below the horizon has ended; later statements see them all.
    horizon := pg_snapshot_xmin(pg_current_snapshot());
    LOOP
        window_size := (max_batch - given) * widen;
        WITH candidate AS (
            SELECT w.id, w.aggregate_type, w.aggregate_id, w.sequence,
                   row_number() OVER (ORDER BY w.txid, w.id) AS ord
            FROM (SELECT e.id, e.txid, e.aggregate_type, e.aggregate_id, e.sequence
                  FROM events e
                  WHERE (e.txid, e.id) >= (from_txid, from_id) AND e.txid < horizon
                    AND NOT EXISTS (SELECT 1 FROM event_positions q WHERE q.event_id = e.id OFFSET 0)
                  ORDER BY e.txid, e.id
                  LIMIT window_size) AS w
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
                                AND NOT EXISTS (SELECT 1 FROM event_positions q
                                                WHERE q.event_id = p.id OFFSET 0))
        )
        -- The first of the ready events in (txid, id) order: a stream's ready events
        -- are in that order too, so a cut keeps each stream's positioned events a
        -- prefix of its sequence.
        , positioned AS (
            INSERT INTO event_positions (position, event_id)
            SELECT head + row_number() OVER (ORDER BY ord), id
            FROM (SELECT id, ord FROM ready ORDER BY ord LIMIT max_batch - given) AS cut
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM candidate), (SELECT count(*) FROM positioned)
        INTO in_window, n;
        head := head + n;
        given := given + n;
        -- The window was not full and every event in it got a position: no eligible
        -- event is left without one, and none can appear below the horizon (their
        -- transactions have ended). The mark moves to the horizon; no count, no walk.
        IF in_window < window_size AND n = in_window THEN
            UPDATE event_log_head
            SET last_position = head, scan_from_txid = horizon, scan_from_id = 0
            WHERE singleton;
            RETURN given;
        END IF;
        EXIT WHEN given >= max_batch;
        -- The eligible events still without a position, up to the window's size.
        SELECT count(*) INTO seen FROM (
            SELECT 1 FROM events e
            WHERE (e.txid, e.id) >= (from_txid, from_id) AND e.txid < horizon
              AND NOT EXISTS (SELECT 1 FROM event_positions q WHERE q.event_id = e.id OFFSET 0)
            ORDER BY e.txid, e.id
            LIMIT window_size) AS w;
        IF n > 0 THEN
            -- None left: another round would find nothing. (Events left may be ready
            -- now, behind a predecessor this round positioned: the rounds go on.)
            EXIT WHEN seen = 0;
            widen := 1;
        ELSE
            -- Nothing ready. If the window was full, what is held back may wait for
            -- predecessors past it (their transaction took its id later): look
            -- further instead of returning with eligible events left.
            EXIT WHEN seen < window_size;
            widen := widen * 4;
        END IF;
    END LOOP;
    -- The first event below the horizon still without a position (held back, or
    -- past this call's batch) is the new mark; else the horizon is.
    SELECT e.txid, e.id INTO from_txid, from_id FROM events e
    WHERE (e.txid, e.id) >= (from_txid, from_id) AND e.txid < horizon
      AND NOT EXISTS (SELECT 1 FROM event_positions q WHERE q.event_id = e.id OFFSET 0)
    ORDER BY e.txid, e.id LIMIT 1;
    IF NOT FOUND THEN
        from_txid := horizon;
        from_id := 0;
    END IF;
    UPDATE event_log_head
    SET last_position = head, scan_from_txid = from_txid, scan_from_id = from_id
    WHERE singleton;
    RETURN given;
END $$;
