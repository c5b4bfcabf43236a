-- Engineer C (issue 4): quotas read model (from QuotaCreated/QuotaUpdated/QuotaDeleted) and the mservices registry.

-- Magnum's quotas rows: the integer id is what GET /v1/quotas pages on (marker = id).
CREATE TABLE quotas (
    id          bigserial PRIMARY KEY,
    project_id  text NOT NULL,
    resource    text NOT NULL DEFAULT 'Cluster',
    hard_limit  integer NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz,
    UNIQUE (project_id, resource)
);

-- One row per (binary, host) ever seen heartbeating: a stable id and created_at for GET /v1/mservices. The
-- state, report_count and updated_at come from the last heartbeat kept by stream COVE_HEARTBEATS.
CREATE TABLE mservices (
    id            bigserial PRIMARY KEY,
    binary_name   text NOT NULL,
    host          text NOT NULL,
    report_count  integer NOT NULL DEFAULT 0,
    state         text NOT NULL DEFAULT 'up',
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz,
    UNIQUE (binary_name, host)
);
