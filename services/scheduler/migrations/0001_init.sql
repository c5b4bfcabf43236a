-- The scheduler's store, built only from events (rebuilt by replaying the stream).
-- A cluster counts against its project's quota while decision = 'admitted' AND NOT delete_completed
-- (see services/scheduler/admission.py). Timestamps come from the events, never from now().

CREATE TABLE clusters (
    cluster_id        text PRIMARY KEY,
    project_id        text NOT NULL,
    name              text,
    master_count      integer NOT NULL DEFAULT 1,
    node_count        integer NOT NULL DEFAULT 1,
    decision          text CHECK (decision IN ('admitted', 'rejected')),
    reason            text,
    requested_at      timestamptz,
    decided_at        timestamptz,
    create_failed     boolean NOT NULL DEFAULT false,
    delete_requested  boolean NOT NULL DEFAULT false,
    delete_completed  boolean NOT NULL DEFAULT false,
    ended_at          timestamptz
);

CREATE INDEX clusters_counted ON clusters (project_id) WHERE decision = 'admitted' AND NOT delete_completed;

-- Per-project overrides of the default limit (Magnum's quotas table: unique project_id + resource; the integer id
-- is what GET /v1/quotas pages on). Filled from quota events (issue 4).
CREATE TABLE quotas (
    id          bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    project_id  text NOT NULL,
    resource    text NOT NULL DEFAULT 'Cluster',
    hard_limit  integer NOT NULL CHECK (hard_limit >= 0),
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz,
    PRIMARY KEY (project_id, resource)
);
