-- The provisioner's store: built only from events (api, certs and its own), rebuildable by replay.
CREATE TABLE clusters (
    uuid              text PRIMARY KEY,
    project_id        text,
    name              text,
    spec              jsonb,            -- the ClusterCreateRequested payload (template snapshot, counts, trust_id)
    trust_id          text,
    correlation_id    text,
    ca_cert_pem       text,
    desired           text NOT NULL DEFAULT 'present' CHECK (desired IN ('present', 'absent')),
    delete_generation integer NOT NULL DEFAULT 0,   -- ClusterDeleteRequested events seen
    delete_pending    boolean NOT NULL DEFAULT false, -- a delete was requested and not started yet
    status            text,             -- from the provisioner's own events (Magnum status names)
    status_reason     text,
    create_started_at timestamptz,
    last_seq          bigint NOT NULL DEFAULT 0,      -- stream sequence of the last event on our subject
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX clusters_open ON clusters (status) WHERE status IS DISTINCT FROM 'DELETE_COMPLETE';

CREATE TABLE nodes (
    cluster_id  text NOT NULL,
    server_id   text NOT NULL,
    name        text NOT NULL,
    role        text NOT NULL,
    status      text NOT NULL,  -- created | active | failed | deleted
    flavor_id   text,
    vcpus       integer,
    ram_mb      integer,
    disk_gb     integer,
    addresses   jsonb NOT NULL DEFAULT '{}',
    reason      text,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (cluster_id, server_id)
);
