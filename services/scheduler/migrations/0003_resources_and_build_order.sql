-- Quotas on nodes, vCPUs, RAM (MB) and volume GB besides the cluster count, and the fair build order (ADR 0008).
-- A cluster's reservation is the sum over its nodegroups (cluster_groups: reserved nodes x per-node sizes),
-- copied onto its clusters row; the project_usage trigger keeps each project's totals in step, as it did the count.
-- build: NULL (rejected, or before this migration), 'queued' (within quota, waiting for a build slot),
-- 'building' (ClusterAdmitted: certs and the provisioner go), 'done' (create completed or failed, deleted, or
-- deleted while queued). Timestamps and sequences come from events only.

ALTER TABLE clusters
    ADD COLUMN cloud      text NOT NULL DEFAULT 'default',
    ADD COLUMN nodes      integer NOT NULL DEFAULT 0,
    ADD COLUMN vcpus      integer NOT NULL DEFAULT 0,
    ADD COLUMN ram_mb     bigint NOT NULL DEFAULT 0,
    ADD COLUMN volume_gb  integer NOT NULL DEFAULT 0,
    ADD COLUMN build      text CHECK (build IN ('queued', 'building', 'done')),
    ADD COLUMN queued_seq bigint;

UPDATE clusters SET nodes = master_count + node_count, build = 'done' WHERE decision = 'admitted';

CREATE INDEX clusters_queued ON clusters (queued_seq) WHERE build = 'queued';
CREATE INDEX clusters_building ON clusters (cloud, project_id) WHERE build = 'building';

CREATE TABLE cluster_groups (
    cluster_id text NOT NULL,
    name       text NOT NULL,
    node_count integer NOT NULL,
    reserved   integer NOT NULL,   -- max(node_count, what a pending shrink still holds until it completes)
    vcpus      integer NOT NULL DEFAULT 0,
    ram_mb     integer NOT NULL DEFAULT 0,
    volume_gb  integer NOT NULL DEFAULT 0,
    PRIMARY KEY (cluster_id, name)
);

ALTER TABLE project_usage
    ADD COLUMN nodes     bigint NOT NULL DEFAULT 0,
    ADD COLUMN vcpus     bigint NOT NULL DEFAULT 0,
    ADD COLUMN ram_mb    bigint NOT NULL DEFAULT 0,
    ADD COLUMN volume_gb bigint NOT NULL DEFAULT 0;

UPDATE project_usage u SET nodes = s.nodes
FROM (SELECT project_id, sum(nodes) AS nodes FROM clusters WHERE decision = 'admitted' AND NOT delete_completed
      GROUP BY project_id) s
WHERE s.project_id = u.project_id;

CREATE OR REPLACE FUNCTION project_usage_track() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    was boolean := TG_OP <> 'INSERT' AND OLD.decision IS NOT DISTINCT FROM 'admitted' AND NOT OLD.delete_completed;
    now_counted boolean := TG_OP <> 'DELETE' AND NEW.decision IS NOT DISTINCT FROM 'admitted' AND NOT NEW.delete_completed;
BEGIN
    IF was AND now_counted AND OLD.project_id = NEW.project_id AND OLD.nodes = NEW.nodes AND OLD.vcpus = NEW.vcpus
            AND OLD.ram_mb = NEW.ram_mb AND OLD.volume_gb = NEW.volume_gb THEN
        RETURN NULL;
    END IF;
    IF was THEN
        UPDATE project_usage SET clusters = clusters - 1, nodes = nodes - OLD.nodes, vcpus = vcpus - OLD.vcpus,
            ram_mb = ram_mb - OLD.ram_mb, volume_gb = volume_gb - OLD.volume_gb
        WHERE project_id = OLD.project_id;
    END IF;
    IF now_counted THEN
        INSERT INTO project_usage (project_id, clusters, nodes, vcpus, ram_mb, volume_gb)
        VALUES (NEW.project_id, 1, NEW.nodes, NEW.vcpus, NEW.ram_mb, NEW.volume_gb)
        ON CONFLICT (project_id) DO UPDATE SET clusters = project_usage.clusters + 1,
            nodes = project_usage.nodes + EXCLUDED.nodes, vcpus = project_usage.vcpus + EXCLUDED.vcpus,
            ram_mb = project_usage.ram_mb + EXCLUDED.ram_mb, volume_gb = project_usage.volume_gb + EXCLUDED.volume_gb;
    END IF;
    RETURN NULL;
END $$;
