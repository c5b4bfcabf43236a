"""The cluster's server listing (``ClusterCloud.list_servers``) under a failing Nova, against the devcloud: an error
answer is retried and then raised, never read as an empty listing. openstacksdk does not raise an HTTP error for a
raw ``compute.get``; read as JSON, a 500's body has no ``servers``, and the provisioner took every node of the
cluster for gone (a chaos run under the devcloud's faults reported a live server's NodeDeleted 1 s after its
NodeCreated, and accounting billed it 0.9 s of its 16)."""

from __future__ import annotations

import openstack
import pytest

from services.provisioner.cloud import CloudError, ClusterCloud
from tests.conftest import Devcloud
from tests.provisioner.test_cloud_resources import FAST, admin, admin_call, cc, cluster, demo, stats

pytestmark = pytest.mark.integration

__all__ = ["admin", "cc", "demo"]  # test_cloud_resources' fixtures


def test_a_failing_server_listing_is_retried_then_raised_never_read_as_no_servers(
        devcloud: Devcloud, cc: ClusterCloud, admin: openstack.connection.Connection) -> None:
    prefix, cid = cluster("t-list")
    url = devcloud.url
    admin_call(url, admin, "PUT", "/admin/faults", json={"api": [
        {"service": "compute", "method": "GET", "path": "/servers/detail$", "status": 500, "count": -1}]})
    try:
        before = stats(url, admin)["by_status"].get("500", 0)
        with pytest.raises(CloudError) as err:
            cc.list_servers(prefix, cid)
        assert not err.value.permanent and f"after {FAST.attempts} tries" in err.value.reason
        assert stats(url, admin)["by_status"].get("500", 0) - before == FAST.attempts
    finally:
        admin_call(url, admin, "DELETE", "/admin/faults")
    assert cc.list_servers(prefix, cid) == []  # served again: the cluster has no server
