-- The event log. The first block is postgres-es's own `events` table, unchanged, so
-- its `PostgresEventRepository` reads and writes it; the rest is what Gigafactory adds.
CREATE TABLE events
(
    aggregate_type text                         NOT NULL,
    aggregate_id   text                         NOT NULL,
    sequence       bigint CHECK (sequence >= 0) NOT NULL,
    event_type     text                         NOT NULL,
    event_version  text                         NOT NULL,
    payload        json                         NOT NULL,
    metadata       json                         NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

ALTER TABLE events
    -- insertion order; NOT the log order (transactions commit out of order)
    ADD COLUMN id          bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    -- the writing transaction, for the sequencer's visibility horizon
    ADD COLUMN txid        xid8        NOT NULL DEFAULT pg_current_xact_id(),
    ADD COLUMN recorded_at timestamptz NOT NULL DEFAULT now(),
    -- the owning product; NULL for fleet-wide aggregates (access tokens, factories)
    ADD COLUMN product_id  text,
    -- the products whose callers may see this event (a factory's product list)
    ADD COLUMN visible_to  text[]      NOT NULL DEFAULT '{}',
    -- the log order, given by the sequencer (gf_assign_positions) after commit
    ADD COLUMN position    bigint UNIQUE;

CREATE INDEX events_unpositioned ON events (txid, id) WHERE position IS NULL;
CREATE INDEX events_visible_to ON events USING gin (visible_to);

-- Nobody chooses their own txid, time or position: the database sets them.
CREATE FUNCTION gf_events_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.txid := pg_current_xact_id();
    NEW.recorded_at := now();
    NEW.position := NULL;
    RETURN NEW;
END $$;
CREATE TRIGGER events_stamp BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION gf_events_stamp();

-- The log is append-only. The one update allowed is the sequencer giving a position
-- to an event that has none, changing nothing else.
CREATE FUNCTION gf_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.position IS NULL AND NEW.position IS NOT NULL
       AND (NEW.aggregate_type, NEW.aggregate_id, NEW.sequence, NEW.event_type,
            NEW.event_version, NEW.payload::text, NEW.metadata::text, NEW.id, NEW.txid,
            NEW.recorded_at, NEW.product_id, NEW.visible_to)
           IS NOT DISTINCT FROM
           (OLD.aggregate_type, OLD.aggregate_id, OLD.sequence, OLD.event_type,
            OLD.event_version, OLD.payload::text, OLD.metadata::text, OLD.id, OLD.txid,
            OLD.recorded_at, OLD.product_id, OLD.visible_to)
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the event log is append-only: % on events is refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION gf_events_append_only();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION gf_events_append_only();

-- The head of the log: the last position given. Its row lock makes the sequencer
-- one at a time across every process.
CREATE TABLE event_log_head
(
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_position bigint  NOT NULL
);
INSERT INTO event_log_head VALUES (true, 0);

-- The sequencer. Gives positions, in (txid, id) order, to committed events whose
-- transactions are below the visibility horizon (no older transaction can still
-- commit), holding back an event whose stream predecessor has no position yet (by
-- induction, checking the one just before is enough).
-- Returns how many positions it gave.
CREATE FUNCTION gf_assign_positions(max_batch int) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    head     bigint;
    given    bigint := 0;
    progress boolean := true;
    r        record;
BEGIN
    SELECT last_position INTO head FROM event_log_head FOR UPDATE;
    WHILE progress LOOP
        progress := false;
        FOR r IN
            SELECT e.id, e.aggregate_type, e.aggregate_id, e.sequence
            FROM events e
            WHERE e.position IS NULL
              AND e.txid < pg_snapshot_xmin(pg_current_snapshot())
            ORDER BY e.txid, e.id
            LIMIT max_batch
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
        END LOOP;
        EXIT WHEN given >= max_batch;
    END LOOP;
    UPDATE event_log_head SET last_position = head;
    RETURN given;
END $$;
