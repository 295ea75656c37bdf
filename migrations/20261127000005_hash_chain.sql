-- Tamper evidence: every event carries
--   hash = sha256(previous hash in the same stream ‖ canonical bytes of this event)
-- computed by the database on insert, where no code path can skip it. The first
-- event of a stream chains from the empty string.
--
-- Canonical bytes: these fields, in this order, each as `<byte length>:<bytes>\n`
-- (UTF-8): aggregate_type, aggregate_id, sequence (decimal), event_type,
-- event_version, payload (the stored JSON text, as written), metadata (likewise).

ALTER TABLE events ADD COLUMN hash bytea;

CREATE FUNCTION gf_field(v text) RETURNS bytea LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT convert_to(octet_length(convert_to(v, 'UTF8'))::text || ':', 'UTF8')
           || convert_to(v, 'UTF8') || '\x0a'::bytea
$$;

CREATE FUNCTION gf_event_canonical(aggregate_type text, aggregate_id text, sequence bigint,
                                   event_type text, event_version text, payload json,
                                   metadata json) RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
    SELECT gf_field(aggregate_type) || gf_field(aggregate_id) || gf_field(sequence::text)
           || gf_field(event_type) || gf_field(event_version) || gf_field(payload::text)
           || gf_field(metadata::text)
$$;

CREATE FUNCTION gf_event_hash(prev bytea, e events) RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
    SELECT sha256(coalesce(prev, ''::bytea)
                  || gf_event_canonical(e.aggregate_type, e.aggregate_id, e.sequence, e.event_type,
                                        e.event_version, e.payload, e.metadata))
$$;

-- Back-fill existing events, stream by stream in sequence order. Only this
-- migration's transaction lifts the append-only trigger.
ALTER TABLE events DISABLE TRIGGER events_append_only;
DO $$
DECLARE
    r      events;
    prev   bytea;
    stream text := NULL;
BEGIN
    FOR r IN SELECT * FROM events ORDER BY aggregate_type, aggregate_id, sequence LOOP
        IF stream IS DISTINCT FROM r.aggregate_type || '/' || r.aggregate_id THEN
            prev := NULL;
            stream := r.aggregate_type || '/' || r.aggregate_id;
        END IF;
        prev := gf_event_hash(prev, r);
        UPDATE events SET hash = prev WHERE id = r.id;
    END LOOP;
END $$;
ALTER TABLE events ENABLE TRIGGER events_append_only;
ALTER TABLE events ALTER COLUMN hash SET NOT NULL;

-- Stamping now also chains the hash.
CREATE OR REPLACE FUNCTION gf_events_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    prev bytea;
BEGIN
    NEW.txid := pg_current_xact_id();
    NEW.recorded_at := now();
    NEW.position := NULL;
    IF NEW.sequence > 1 THEN
        SELECT hash INTO prev FROM events
        WHERE aggregate_type = NEW.aggregate_type AND aggregate_id = NEW.aggregate_id
          AND sequence = NEW.sequence - 1;
        IF prev IS NULL THEN
            RAISE EXCEPTION 'event %/% #% has no predecessor', NEW.aggregate_type, NEW.aggregate_id, NEW.sequence
                USING ERRCODE = 'foreign_key_violation';
        END IF;
    END IF;
    NEW.hash := gf_event_hash(prev, NEW);
    RETURN NEW;
END $$;

-- The hash is as immutable as the rest of the event.
CREATE OR REPLACE FUNCTION gf_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.position IS NULL AND NEW.position IS NOT NULL
       AND (NEW.aggregate_type, NEW.aggregate_id, NEW.sequence, NEW.event_type,
            NEW.event_version, NEW.payload::text, NEW.metadata::text, NEW.id, NEW.txid,
            NEW.recorded_at, NEW.product_id, NEW.visible_to, NEW.hash)
           IS NOT DISTINCT FROM
           (OLD.aggregate_type, OLD.aggregate_id, OLD.sequence, OLD.event_type,
            OLD.event_version, OLD.payload::text, OLD.metadata::text, OLD.id, OLD.txid,
            OLD.recorded_at, OLD.product_id, OLD.visible_to, OLD.hash)
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the event log is append-only: % on events is refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
