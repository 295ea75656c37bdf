-- An event says whether the transaction that appended it also wrote every read model
-- it touches (the command path does: ride-along writes in the append's statement,
-- the rest in the same transaction). The projector passes over such events: applying
-- them again would find every row already there (a version check per table, the
-- runs' and the timeline's statements, their payloads read and decoded) — about a
-- tenth of the database's statement time under the drain, and a pass of the log
-- worker competing with the next claim for the CPU. Events appended any other way
-- (postgres-es's own repository, tools, older rows) keep the default, false, and are
-- applied as before. Replays and rebuilds apply every event whatever it says.
--
-- Not part of the hash chain (the canonical bytes name their fields): it says how
-- the event was written, not what happened; the append-only triggers keep it as
-- written. A constant default: no table rewrite.
ALTER TABLE events ADD COLUMN read_models_written boolean NOT NULL DEFAULT false;

-- The log in its order, with the new column (appended: the view's columns so far
-- keep their places).
CREATE OR REPLACE VIEW positioned_events AS
SELECT p.position, e.*
FROM event_positions p
JOIN events e ON e.id = p.event_id;

-- Up to this position a projection applies every event, written by its own
-- transaction or not: those transactions did not write a projection that did not
-- exist yet (a checkpoint created later starts here at the log's head, see
-- `projector::checkpoints`), nor rows someone removed to rebuild them. Moving a
-- checkpoint back (to rebuild from there) moves this to where the checkpoint had
-- been, so the projector applies every event again up to there.
ALTER TABLE projection_checkpoints
    ADD COLUMN applies_every_event_through bigint NOT NULL DEFAULT 0;

CREATE FUNCTION gf_checkpoint_moved_back() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.applies_every_event_through :=
        greatest(NEW.applies_every_event_through, OLD.applies_every_event_through, OLD.position);
    RETURN NEW;
END $$;
CREATE TRIGGER projection_checkpoints_moved_back BEFORE UPDATE ON projection_checkpoints
    FOR EACH ROW WHEN (NEW.position < OLD.position)
    EXECUTE FUNCTION gf_checkpoint_moved_back();
