-- Tell listening API processes, at commit, how far the projection got and which clusters were admitted or
-- refused: writes wait for these instead of polling, and the read cache is versioned by the checkpoint
-- (services/api/freshness.py). NOTIFY is transactional: it is delivered only when the change is visible.

-- The projection's tracking table (services/runtime/projection.py creates it the same way, IF NOT EXISTS, after
-- the migrations; it must exist here to carry the trigger).
CREATE TABLE IF NOT EXISTS checkpoint (
    consumer   text PRIMARY KEY,
    stream_seq bigint NOT NULL
);

CREATE FUNCTION notify_checkpoint() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('cove_api_applied', NEW.consumer || ' ' || NEW.stream_seq::text);
    RETURN NULL;
END $$;

CREATE TRIGGER checkpoint_notify AFTER INSERT OR UPDATE ON checkpoint
    FOR EACH ROW EXECUTE FUNCTION notify_checkpoint();

CREATE FUNCTION notify_admission() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.admission IS DISTINCT FROM OLD.admission THEN
        PERFORM pg_notify('cove_api_admission', NEW.uuid);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER clusters_admission_notify AFTER UPDATE OF admission ON clusters
    FOR EACH ROW EXECUTE FUNCTION notify_admission();
