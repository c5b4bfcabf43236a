"""What the provisioner's watch of load balancers and volumes needs of the devcloud, through real openstacksdk:
Cinder's time filters (microversion 3.60: ``updated_at=gte:<time>``, and nothing before it), the volume faults
(``error``, ``vanish``: gone from every listing and from the ledger), and Octavia's ``fields`` selection with the
load balancer faults (ERROR / OFFLINE)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import openstack

from tests.conftest import Devcloud, wait_for


def _admin_post(devcloud: Devcloud, path: str, body: dict[str, Any]) -> Any:
    admin = openstack.connect(cloud="cove-admin")
    return admin.session.post(f"{devcloud.url}{path}", json=body, endpoint_filter=None, raise_exc=False)


def _volumes(conn: openstack.connection.Connection, **params: Any) -> list[dict[str, Any]]:
    version = params.pop("microversion", "3.60")
    resp = conn.block_storage.get("/volumes/detail", params=params, microversion=version)
    assert resp.status_code == 200, resp.text
    return list(resp.json()["volumes"])


async def test_cinder_time_filters_and_volume_faults(devcloud: Devcloud) -> None:
    demo = openstack.connect(cloud="cove-demo")
    tag = uuid.uuid4().hex[:6]
    old = demo.block_storage.create_volume(size=1, name=f"watch-old-{tag}")
    await wait_for(lambda: demo.block_storage.get_volume(old.id).status == "available", timeout=30, interval=0.2,
                   message="the first volume available")
    since = datetime.now(UTC)  # after the first volume's last change (the devcloud's times are to the microsecond)
    new = demo.block_storage.create_volume(size=1, name=f"watch-new-{tag}")
    await wait_for(lambda: demo.block_storage.get_volume(new.id).status == "available", timeout=30, interval=0.2,
                   message="the second volume available")
    stamp = since.strftime("%Y-%m-%dT%H:%M:%S.%f")
    changed = {v["id"] for v in _volumes(demo, updated_at=f"gte:{stamp}")}
    assert new.id in changed and old.id not in changed
    before = {v["id"] for v in _volumes(demo, updated_at=f"lt:{stamp}")}
    assert old.id in before and new.id not in before
    # before 3.60 the filter is not Cinder's: every volume is listed
    assert {old.id, new.id} <= {v["id"] for v in _volumes(demo, updated_at=f"gte:{stamp}", microversion="3.59")}
    assert demo.block_storage.get("/volumes/detail", params={"updated_at": "gte:yesterday"},
                                  microversion="3.60").status_code == 400

    # a volume fault: error shows in the changes listing; vanish takes it out of every listing and the ledger
    later = (datetime.now(UTC) - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S")
    assert _admin_post(devcloud, "/admin/faults/volumes", {"name": old.id, "action": "error"}).status_code == 201
    assert {v["id"]: v["status"] for v in _volumes(demo, updated_at=f"gte:{later}")}.get(old.id) == "error"
    assert _admin_post(devcloud, "/admin/faults/volumes", {"name": f"watch-new-{tag}", "action": "vanish"}
                       ).status_code == 201
    assert new.id not in {v["id"] for v in _volumes(demo)}
    admin = openstack.connect(cloud="cove-admin")
    records = admin.session.get(f"{devcloud.url}/admin/ledger?kind=volume", endpoint_filter=None).json()["records"]
    assert next(r for r in records if r["id"] == new.id)["deleted_at"] is not None
    assert _admin_post(devcloud, "/admin/faults/volumes", {"name": "no-such-volume"}).status_code == 404
    demo.block_storage.delete_volume(old.id)


async def test_octavia_fields_and_load_balancer_faults(devcloud: Devcloud) -> None:
    demo = openstack.connect(cloud="cove-demo")
    tag = uuid.uuid4().hex[:6]
    net = demo.network.create_network(name=f"watch-lb-{tag}")
    subnet = demo.network.create_subnet(network_id=net.id, cidr="10.91.0.0/24", ip_version=4, name=f"watch-{tag}")
    lb = demo.load_balancer.create_load_balancer(name=f"watch-lb-{tag}", vip_subnet_id=subnet.id,
                                                 tags=[f"watch-{tag}"])
    try:
        await wait_for(lambda: demo.load_balancer.get_load_balancer(lb.id).provisioning_status == "ACTIVE",
                       timeout=60, interval=0.3, message="the load balancer ACTIVE")
        resp = demo.load_balancer.get("/lbaas/loadbalancers", params={
            "fields": ["id", "provisioning_status", "operating_status", "tags"], "tags": f"watch-{tag}"})
        assert resp.json()["loadbalancers"] == [{"id": lb.id, "provisioning_status": "ACTIVE",
                                                 "operating_status": "ONLINE", "tags": [f"watch-{tag}"]}]
        assert _admin_post(devcloud, "/admin/faults/load_balancers", {
            "name": f"watch-lb-{tag}", "provisioning_status": "ERROR", "operating_status": "OFFLINE"}).status_code == 201
        broken = demo.load_balancer.get_load_balancer(lb.id)
        assert (broken.provisioning_status, broken.operating_status) == ("ERROR", "OFFLINE")
        assert _admin_post(devcloud, "/admin/faults/load_balancers", {
            "name": lb.id, "provisioning_status": "ACTIVE", "operating_status": "ONLINE"}).status_code == 201
        assert demo.load_balancer.get_load_balancer(lb.id).provisioning_status == "ACTIVE"
        assert _admin_post(devcloud, "/admin/faults/load_balancers", {"name": "nope"}).status_code == 404
    finally:
        demo.load_balancer.delete_load_balancer(lb.id, cascade=True)
        await wait_for(lambda: demo.load_balancer.find_load_balancer(lb.id) is None, timeout=60, interval=0.3,
                       message="the load balancer deleted")
        demo.network.delete_subnet(subnet.id)
        demo.network.delete_network(net.id)
