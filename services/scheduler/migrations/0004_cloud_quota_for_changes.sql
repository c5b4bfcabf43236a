-- The cloud's quota checked for resizes and new nodegroups too, not only for creates (ADR 0008).
-- trust_id: the cluster's Keystone trust (from ClusterCreateRequested), through which the project's cloud quota is
-- asked; floating_ips: whether its nodes get floating IPs (from its resolved spec), so a growth counts them.
-- Both are filled by replaying the stream (the store is rebuilt from events), NULL / false for rows kept from before.
ALTER TABLE clusters
    ADD COLUMN trust_id     text,
    ADD COLUMN floating_ips boolean NOT NULL DEFAULT false;

-- growing: nodes a resize or a new nodegroup reserved that the cloud may not count yet (not built): subtracted from
-- what the cloud says is left, as a waiting or building cluster's are. Zero again when the update ends
-- (ClusterUpdateCompleted or ClusterUpdateFailed), when the cloud's own usage holds what was built.
ALTER TABLE cluster_groups ADD COLUMN growing integer NOT NULL DEFAULT 0;

-- A decided growth (a resize up, a new nodegroup) between its request and the scheduler's published decision on it
-- (ClusterUpdateAdmitted / NodeGroupCreateAdmitted / ClusterUpdateRejected, whose causation_id is request_id). The
-- published decision is the fact: a replay that decides otherwise (the cloud is not asked for an old request; a
-- refusal it did not repeat changed the usage a later request saw) is set right when the decision is read.
-- applied: whether the store holds the growth now. before_count: the group's node count before (NULL: a new group).
CREATE TABLE pending_changes (
    request_id   text PRIMARY KEY,
    cluster_id   text NOT NULL,
    name         text NOT NULL,
    applied      boolean NOT NULL,
    before_count integer,
    node_count   integer NOT NULL,
    delta        integer NOT NULL,
    vcpus        integer NOT NULL DEFAULT 0,
    ram_mb       integer NOT NULL DEFAULT 0,
    volume_gb    integer NOT NULL DEFAULT 0
);
