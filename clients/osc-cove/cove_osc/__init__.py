"""Cove's python-openstackclient plugin. Its commands join python-magnumclient's in the ``openstack.container_infra.v1``
entry point group, so they use the same ``container_infra`` client (endpoint, token, microversion) as ``openstack
coe cluster list``."""
