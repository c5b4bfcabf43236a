-- nodegroups_cluster (cluster_uuid) duplicates the leading column of the UNIQUE (cluster_uuid, name) index, which
-- serves every lookup by cluster; dropping it saves an index entry per nodegroup row written (two per create).
DROP INDEX IF EXISTS nodegroups_cluster;
