-- Keystone trusts the provisioner still has to delete: filled by the projection (ClusterDeleteCompleted: the
-- cluster's trust; ClusterTrustRotated: the trust it replaced), emptied by ClusterTrustDeleted, which the trust
-- reaper publishes once Keystone answered 204 or 404. Built only from events, like every other table.
CREATE TABLE trusts_to_delete (
    trust_id    text PRIMARY KEY,
    cluster_id  text NOT NULL,
    project_id  text,
    reason      text NOT NULL CHECK (reason IN ('cluster_deleted', 'rotated')),
    recorded_at timestamptz NOT NULL DEFAULT now()
);
