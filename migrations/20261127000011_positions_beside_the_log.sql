-- Positions live beside the log, not in it. The sequencer used to UPDATE every event
-- once to give it its position: a second heap tuple per event, new entries in every
-- index of `events` (its GIN index included), and dead rows for vacuum. It now
-- INSERTs (position, event id) pairs into `event_positions`, and `events` is written
-- once, never updated.
--
-- Finding what still needs a position: every event before
-- (`event_log_head.scan_from_txid`, `scan_from_id`) in (txid, id) order has one. The
-- sequencer moves that mark up to the first event it leaves without a position (held
-- back, or past its batch), else to the visibility horizon; it looks only at events
-- from the mark on, through an index on (txid, id), leaving out those already in
-- `event_positions`. (No transaction below the horizon can still add an event.)

CREATE TABLE event_positions
(
    position bigint PRIMARY KEY,
    event_id bigint NOT NULL UNIQUE
);

-- Processes still running the old code may append and sequence meanwhile: hold the
-- old sequencer off (the head's row lock) and every writer (the table lock) until
-- this migration commits, so no position is given between the copy and the drop.
SELECT last_position FROM event_log_head FOR UPDATE;
LOCK TABLE events IN ACCESS EXCLUSIVE MODE;

INSERT INTO event_positions (position, event_id)
SELECT position, id FROM events WHERE position IS NOT NULL;

ALTER TABLE event_log_head
    ADD COLUMN scan_from_txid xid8   NOT NULL DEFAULT '0',
    ADD COLUMN scan_from_id   bigint NOT NULL DEFAULT 0;
-- The mark: the visibility horizon (a transaction still running, e.g. one that took
-- its id before our locks, can still append below any later mark), or the first
-- committed event without a position, whichever comes first.
UPDATE event_log_head SET scan_from_txid = pg_snapshot_xmin(pg_current_snapshot());
UPDATE event_log_head SET (scan_from_txid, scan_from_id) =
    (SELECT txid, id FROM events WHERE position IS NULL ORDER BY txid, id LIMIT 1)
WHERE EXISTS (SELECT 1 FROM events
              WHERE position IS NULL
                AND (txid, id) < (pg_snapshot_xmin(pg_current_snapshot()), 0));

CREATE INDEX events_txid ON events (txid, id);
DROP INDEX events_unpositioned;
-- Also drops its unique index.
ALTER TABLE events DROP COLUMN position;

-- Stamping: as migration 10, without the position.
CREATE OR REPLACE FUNCTION gf_events_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    prev bytea;
    payload_text  text := NEW.payload::text;
    metadata_text text := NEW.metadata::text;
    sequence_text text := NEW.sequence::text;
BEGIN
    NEW.txid := pg_current_xact_id();
    NEW.recorded_at := now();
    IF NEW.sequence > 1 THEN
        SELECT hash INTO prev FROM events
        WHERE aggregate_type = NEW.aggregate_type AND aggregate_id = NEW.aggregate_id
          AND sequence = NEW.sequence - 1;
        IF prev IS NULL THEN
            RAISE EXCEPTION 'event %/% #% has no predecessor', NEW.aggregate_type, NEW.aggregate_id, NEW.sequence
                USING ERRCODE = 'foreign_key_violation';
        END IF;
    END IF;
    NEW.hash := sha256(coalesce(prev, ''::bytea) || convert_to(
        octet_length(convert_to(NEW.aggregate_type, 'UTF8')) || ':' || NEW.aggregate_type || E'\n' ||
        octet_length(convert_to(NEW.aggregate_id, 'UTF8')) || ':' || NEW.aggregate_id || E'\n' ||
        octet_length(convert_to(sequence_text, 'UTF8')) || ':' || sequence_text || E'\n' ||
        octet_length(convert_to(NEW.event_type, 'UTF8')) || ':' || NEW.event_type || E'\n' ||
        octet_length(convert_to(NEW.event_version, 'UTF8')) || ':' || NEW.event_version || E'\n' ||
        octet_length(convert_to(payload_text, 'UTF8')) || ':' || payload_text || E'\n' ||
        octet_length(convert_to(metadata_text, 'UTF8')) || ':' || metadata_text || E'\n',
        'UTF8'));
    RETURN NEW;
END $$;

-- Nothing updates an event any more, and positions are as permanent as events.
CREATE OR REPLACE FUNCTION gf_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the event log is append-only: % on % is refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER event_positions_append_only BEFORE UPDATE OR DELETE ON event_positions
    FOR EACH ROW EXECUTE FUNCTION gf_events_append_only();
CREATE TRIGGER event_positions_no_truncate BEFORE TRUNCATE ON event_positions
    FOR EACH STATEMENT EXECUTE FUNCTION gf_events_append_only();

-- The log in its order: what every reader reads.
CREATE VIEW positioned_events AS
SELECT p.position, e.*
FROM event_positions p
JOIN events e ON e.id = p.event_id;

-- The sequencer (migration 9's rounds), writing positions beside the log and
-- looking only at events from the mark on.
--
-- Its plans are fixed: generic plans (our connections force them) know nothing of
-- the window's size, and chose a bitmap scan of the whole window and a sort, and a
-- hash anti-join reading all of `event_positions` on every call. The window is read
-- in index order and stops at the batch's end (no bitmap or sequential scans: every
-- table is read through an index), and each "has it a position?" is one probe of
-- `event_positions`' event_id index (OFFSET 0 keeps the NOT EXISTS a per-row subplan).
CREATE OR REPLACE FUNCTION gf_assign_positions(max_batch int) RETURNS bigint LANGUAGE plpgsql
SET enable_bitmapscan = off SET enable_seqscan = off SET jit = off AS $$
DECLARE
    head    bigint;
    from_txid xid8;
    from_id   bigint;
    given   bigint := 0;
    n       bigint;
    horizon xid8;
BEGIN
    SELECT last_position, scan_from_txid, scan_from_id INTO head, from_txid, from_id
    FROM event_log_head WHERE singleton FOR UPDATE;
    -- Every transaction below the horizon has ended; later statements see them all.
    horizon := pg_snapshot_xmin(pg_current_snapshot());
    LOOP
        WITH candidate AS (
            SELECT w.id, w.aggregate_type, w.aggregate_id, w.sequence,
                   row_number() OVER (ORDER BY w.txid, w.id) AS ord
            FROM (SELECT e.id, e.txid, e.aggregate_type, e.aggregate_id, e.sequence
                  FROM events e
                  WHERE (e.txid, e.id) >= (from_txid, from_id) AND e.txid < horizon
                    AND NOT EXISTS (SELECT 1 FROM event_positions q WHERE q.event_id = e.id OFFSET 0)
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
                                AND NOT EXISTS (SELECT 1 FROM event_positions q
                                                WHERE q.event_id = p.id OFFSET 0))
        )
        INSERT INTO event_positions (position, event_id)
        SELECT head + row_number() OVER (ORDER BY ord), id FROM ready;
        GET DIAGNOSTICS n = ROW_COUNT;
        EXIT WHEN n = 0;
        head := head + n;
        given := given + n;
        EXIT WHEN given >= max_batch;
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
