-- Usage of every billed resource of every cluster (server, volume, floating IP, load balancer) and of the
-- clusters themselves, each an interval [started_at, ended_at) timed by the cloud (docs/operations.md, "Usage").
-- Replaces the node table of 0001, whose intervals began at ACTIVE: the store is rebuilt by replaying the stream
-- (checkpoint and inbox emptied here, so the runtime recreates the consumer from the stream's first event).

DROP TABLE IF EXISTS nodes;

CREATE TABLE resources (
    resource_id  text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('server', 'volume', 'floating_ip', 'load_balancer')),
    cluster_id   text NOT NULL,
    project_id   text NOT NULL,
    name         text,
    vcpus        integer NOT NULL DEFAULT 0,
    ram_mb       integer NOT NULL DEFAULT 0,
    size_gb      integer NOT NULL DEFAULT 0,
    started_at   timestamptz,
    ended_at     timestamptz,
    end_reason   text,
    PRIMARY KEY (kind, resource_id)
);

CREATE INDEX resources_project ON resources (project_id, started_at);
CREATE INDEX resources_cluster_open ON resources (cluster_id) WHERE ended_at IS NULL;

CREATE TABLE clusters (
    cluster_id  text PRIMARY KEY,
    project_id  text NOT NULL,
    started_at  timestamptz,
    ended_at    timestamptz
);

CREATE INDEX clusters_project ON clusters (project_id, started_at);

DO $$
BEGIN
    IF to_regclass('checkpoint') IS NOT NULL THEN
        DELETE FROM checkpoint;
    END IF;
    IF to_regclass('inbox') IS NOT NULL THEN
        DELETE FROM inbox;
    END IF;
END
$$;
