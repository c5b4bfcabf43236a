-- A refused create shows as the scheduler decided whatever order the API's copies apply its events in. Two copies
-- share the durable consumer (ADR 0002: replicas apply in-flight messages out of order), so the scheduler's
-- ClusterRejected and the API's ClusterWithdrawn, milliseconds apart, can be applied in either order, and either
-- before the request itself (its batch held by a copy that was killed, delivered again later). Seen in make
-- chaos: refused clusters left CREATE_FAILED after their withdrawal, or CREATE_IN_PROGRESS for ever.
-- A rejection or a withdrawal of a cluster the read model does not have yet is remembered here; a request applied
-- after it inserts the cluster as rejected (CREATE_FAILED, the reason), or not at all once withdrawn. The copies'
-- transactions run at once, so the insert and the handlers of the refusal take the same transaction-scoped
-- advisory lock on the cluster (cluster_lock_key): whichever commits second sees what the first wrote (without it,
-- make chaos left a withdrawn cluster inserted by the other copy in the same moment).
CREATE FUNCTION cluster_lock_key(cluster_uuid text) RETURNS bigint LANGUAGE sql IMMUTABLE AS $$
    SELECT hashtextextended('cove-cluster:' || cluster_uuid, 0)
$$;

CREATE TABLE refused_clusters (
    uuid         text PRIMARY KEY,
    reason       text,
    rejected_at  timestamptz,
    withdrawn_at timestamptz
);

CREATE FUNCTION refused_cluster_row() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    refused refused_clusters%ROWTYPE;
BEGIN
    PERFORM pg_advisory_xact_lock(cluster_lock_key(NEW.uuid));
    SELECT * INTO refused FROM refused_clusters r WHERE r.uuid = NEW.uuid;
    IF NOT FOUND THEN
        RETURN NEW;
    ELSIF refused.withdrawn_at IS NOT NULL THEN
        RETURN NULL;
    END IF;
    NEW.status := 'CREATE_FAILED';
    NEW.admission := 'rejected';
    NEW.status_reason := refused.reason;
    NEW.updated_at := refused.rejected_at;
    RETURN NEW;
END $$;

CREATE FUNCTION refused_cluster_nodegroup() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    refused refused_clusters%ROWTYPE;
BEGIN
    PERFORM pg_advisory_xact_lock(cluster_lock_key(NEW.cluster_uuid));
    SELECT * INTO refused FROM refused_clusters r WHERE r.uuid = NEW.cluster_uuid;
    IF NOT FOUND THEN
        RETURN NEW;
    ELSIF refused.withdrawn_at IS NOT NULL THEN
        RETURN NULL;
    ELSIF NEW.status = 'CREATE_IN_PROGRESS' THEN
        NEW.status := 'CREATE_FAILED';
        NEW.status_reason := refused.reason;
        NEW.updated_at := refused.rejected_at;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER clusters_refused BEFORE INSERT ON clusters
    FOR EACH ROW EXECUTE FUNCTION refused_cluster_row();
CREATE TRIGGER nodegroups_refused BEFORE INSERT ON nodegroups
    FOR EACH ROW EXECUTE FUNCTION refused_cluster_nodegroup();
