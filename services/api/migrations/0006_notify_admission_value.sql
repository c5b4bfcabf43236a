-- The admission NOTIFY carries the decision ('<cluster uuid> <admitted|rejected>'): a create waiting for the
-- scheduler learns it from the notification instead of reading the cluster's row again (services/api/freshness.py).
CREATE OR REPLACE FUNCTION notify_admission() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.admission IS DISTINCT FROM OLD.admission THEN
        PERFORM pg_notify('cove_api_admission', NEW.uuid || ' ' || COALESCE(NEW.admission, ''));
    END IF;
    RETURN NULL;
END $$;
