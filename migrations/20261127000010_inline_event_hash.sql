-- The stamping trigger computes the hash chain inline: the same canonical bytes as
-- gf_event_canonical (each field as `<byte length>:<bytes>\n`, UTF-8), built in one
-- expression of built-in functions. Calling the SQL functions from PL/pgSQL ran each of
-- them (nine per event) through the SQL-function executor: most of an append's cost.
-- gf_event_hash and gf_event_canonical stay as they are: verify recomputes every hash
-- from gf_event_canonical, so the audit tests (non-ASCII payloads included) check that
-- both give the same bytes.
CREATE OR REPLACE FUNCTION gf_events_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    prev bytea;
    payload_text  text := NEW.payload::text;
    metadata_text text := NEW.metadata::text;
    sequence_text text := NEW.sequence::text;
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
