-- The cluster's health as the provisioner's last ClusterHealthChanged said (services/provisioner/health.py):
-- published only on a change, so the task compares what it computes with these.
ALTER TABLE clusters ADD COLUMN health_status text;
ALTER TABLE clusters ADD COLUMN health_reason jsonb;
CREATE INDEX IF NOT EXISTS clusters_status ON clusters (status) WHERE desired = 'present';
