-- Nodegroups and cluster updates (resize, nodegroup create/delete, upgrade): the desired state per group and
-- a generation counting the update requests, so the reconciler knows whether the last one was carried out.
ALTER TABLE clusters ADD COLUMN update_generation integer NOT NULL DEFAULT 0;  -- update requests applied
ALTER TABLE clusters ADD COLUMN update_started    integer NOT NULL DEFAULT 0;  -- generation of the last ClusterUpdateStarted
ALTER TABLE clusters ADD COLUMN update_done       integer NOT NULL DEFAULT 0;  -- generation of the last Completed/Failed
ALTER TABLE clusters ADD COLUMN max_batch_size    integer NOT NULL DEFAULT 1;

CREATE TABLE nodegroups (
    cluster_id      text NOT NULL,
    name            text NOT NULL,
    uuid            text,
    role            text NOT NULL,
    is_default      boolean NOT NULL DEFAULT false,
    node_count      integer NOT NULL,
    flavor_id       text,
    image_id        text,
    present         boolean NOT NULL DEFAULT true,
    nodes_to_remove jsonb NOT NULL DEFAULT '[]',
    PRIMARY KEY (cluster_id, name)
);
