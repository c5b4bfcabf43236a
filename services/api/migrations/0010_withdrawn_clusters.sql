-- A refused create (ClusterWithdrawn: the requester was answered 403) leaves the read model whatever order the
-- API's copies apply its events in. Two copies share the durable consumer, so the withdrawal can be applied
-- before the scheduler's ClusterRejected, or before the request itself when a killed copy's batch is delivered
-- again later (make chaos: refused clusters left CREATE_FAILED, or CREATE_IN_PROGRESS for ever). The withdrawal is
-- remembered here, and a request applied after it inserts nothing (nor its nodegroups).
CREATE TABLE withdrawn_clusters (
    uuid text PRIMARY KEY,
    withdrawn_at timestamptz NOT NULL
);

CREATE FUNCTION skip_withdrawn_cluster() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM withdrawn_clusters w WHERE w.uuid = NEW.uuid) THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END $$;

CREATE FUNCTION skip_withdrawn_nodegroup() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM withdrawn_clusters w WHERE w.uuid = NEW.cluster_uuid) THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER clusters_not_withdrawn BEFORE INSERT ON clusters
    FOR EACH ROW EXECUTE FUNCTION skip_withdrawn_cluster();
CREATE TRIGGER nodegroups_not_withdrawn BEFORE INSERT ON nodegroups
    FOR EACH ROW EXECUTE FUNCTION skip_withdrawn_nodegroup();
