-- The accounting store, built only from the provisioner's node and cluster events (rebuilt by replay).
-- One row per node (server): its size from NodeCreated, its active interval [active_at, ended_at).
-- Timestamps are the events' occurred_at, never now().

CREATE TABLE nodes (
    server_id   text PRIMARY KEY,
    cluster_id  text NOT NULL,
    project_id  text NOT NULL,
    node_name   text,
    role        text,
    flavor_id   text,
    vcpus       integer NOT NULL DEFAULT 0,
    ram_mb      integer NOT NULL DEFAULT 0,
    created_at  timestamptz,
    active_at   timestamptz,
    ended_at    timestamptz,
    end_reason  text
);

CREATE INDEX nodes_project_active ON nodes (project_id, active_at) WHERE active_at IS NOT NULL;
CREATE INDEX nodes_cluster_open ON nodes (cluster_id) WHERE ended_at IS NULL;
