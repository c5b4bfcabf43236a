-- Admission read the number of clusters counted against a project's quota with count(*) over its clusters: every
-- decision got slower as clusters accumulated. A per-project counter, kept by a trigger in the same transaction as
-- the change to ``clusters``, makes it one row read. A cluster counts while decision = 'admitted' AND NOT
-- delete_completed (see 0001 and services/scheduler/admission.py); the trigger follows every transition (insert,
-- upsert, re-decision on replay, delete completed, row deleted), so the counter equals the count at every commit.

CREATE TABLE project_usage (
    project_id text PRIMARY KEY,
    clusters   integer NOT NULL CHECK (clusters >= 0)
);

INSERT INTO project_usage (project_id, clusters)
SELECT project_id, count(*) FROM clusters WHERE decision = 'admitted' AND NOT delete_completed GROUP BY project_id;

CREATE FUNCTION project_usage_track() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    was boolean := TG_OP <> 'INSERT' AND OLD.decision IS NOT DISTINCT FROM 'admitted' AND NOT OLD.delete_completed;
    now_counted boolean := TG_OP <> 'DELETE' AND NEW.decision IS NOT DISTINCT FROM 'admitted' AND NOT NEW.delete_completed;
BEGIN
    IF was AND (NOT now_counted OR OLD.project_id IS DISTINCT FROM NEW.project_id) THEN
        UPDATE project_usage SET clusters = clusters - 1 WHERE project_id = OLD.project_id;
    END IF;
    IF now_counted AND (NOT was OR OLD.project_id IS DISTINCT FROM NEW.project_id) THEN
        INSERT INTO project_usage (project_id, clusters) VALUES (NEW.project_id, 1)
        ON CONFLICT (project_id) DO UPDATE SET clusters = project_usage.clusters + 1;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER clusters_project_usage AFTER INSERT OR UPDATE OR DELETE ON clusters
    FOR EACH ROW EXECUTE FUNCTION project_usage_track();
