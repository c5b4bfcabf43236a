-- Magnum nodegroups in the API's read model (projected from cluster and nodegroup events).
CREATE TABLE nodegroups (
    id              bigserial PRIMARY KEY,      -- Magnum's integer id and default sort key
    uuid            text NOT NULL UNIQUE,
    cluster_uuid    text NOT NULL,
    project_id      text NOT NULL,
    name            text NOT NULL,
    role            text NOT NULL,
    is_default      boolean NOT NULL DEFAULT false,
    node_count      integer NOT NULL,
    min_node_count  integer NOT NULL DEFAULT 0,
    max_node_count  integer,
    status          text NOT NULL,
    status_reason   text,
    body            jsonb NOT NULL,             -- the proto NodeGroup (flavor, image, labels, node labels/taints)
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz,
    UNIQUE (cluster_uuid, name)
);
CREATE INDEX nodegroups_cluster ON nodegroups (cluster_uuid);

ALTER TABLE nodes ADD COLUMN nodegroup text;
