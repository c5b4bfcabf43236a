-- The API's read model: built only from events (rebuildable by replaying COVE_EVENTS).

CREATE TABLE cluster_templates (
    id          bigserial PRIMARY KEY,            -- insertion order: Magnum's default sort key
    uuid        text NOT NULL UNIQUE,
    name        text,
    project_id  text NOT NULL,
    user_id     text NOT NULL,
    public      boolean NOT NULL DEFAULT false,
    hidden      boolean NOT NULL DEFAULT false,
    body        jsonb NOT NULL,                   -- the full proto ClusterTemplate
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz
);
CREATE INDEX cluster_templates_project ON cluster_templates (project_id);
CREATE INDEX cluster_templates_name ON cluster_templates (name);

CREATE TABLE clusters (
    id                  bigserial PRIMARY KEY,
    uuid                text NOT NULL UNIQUE,
    name                text NOT NULL,
    project_id          text NOT NULL,
    user_id             text NOT NULL,
    cluster_template_id text NOT NULL,
    status              text NOT NULL,
    status_reason       text,
    admission           text,                      -- NULL (pending), 'admitted' or 'rejected'
    health_status       text,
    api_address         text,
    master_addresses    jsonb NOT NULL DEFAULT '[]',
    node_addresses      jsonb NOT NULL DEFAULT '[]',
    stack_id            text,
    coe_version         text,
    container_version   text,
    spec                jsonb NOT NULL,            -- the request's fields (node_count, flavors, labels...)
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz
);
CREATE INDEX clusters_project ON clusters (project_id);
CREATE INDEX clusters_name ON clusters (name);
CREATE INDEX clusters_template ON clusters (cluster_template_id);

CREATE TABLE nodes (
    cluster_uuid text NOT NULL,
    server_id    text NOT NULL,
    node_name    text,
    role         text,
    status       text NOT NULL,                   -- BUILD, ACTIVE, ERROR
    reason       text,
    addresses    jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (cluster_uuid, server_id)
);
