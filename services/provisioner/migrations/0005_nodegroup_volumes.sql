-- Each nodegroup's container-storage volume size (GB) from the resolved spec (proto/clusterspec.py): the
-- provisioner attaches a volume of that size to each of the group's servers before it boots. NULL: no volume.
ALTER TABLE nodegroups ADD COLUMN docker_volume_size integer;
