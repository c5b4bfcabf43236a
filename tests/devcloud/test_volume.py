"""Block storage (Cinder v3) through real openstacksdk and the `openstack` CLI: discovery and microversions,
volume create -> available -> delete, Nova-driven attach/detach, quotas (413), limits, isolation and policy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import openstack
import pytest
from openstack import exceptions
from openstack.block_storage.v3.volume import Volume

from tests.conftest import Devcloud

OPENSTACK = str(Path(sys.executable).with_name("openstack"))


def cli(*args: str) -> Any:
    out = subprocess.run([OPENSTACK, "--os-cloud", "cove-demo", *args], check=False, capture_output=True,
                         text=True, timeout=60, env=os.environ.copy())
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if "-f" in args else out.stdout


def ledger(devcloud: Devcloud, resource_id: str) -> dict[str, Any]:
    admin = openstack.connect(cloud="cove-admin")
    resp = admin.session.get(f"{devcloud.url}/admin/ledger?kind=volume")
    records = {r["id"]: r for r in resp.json()["records"]}
    return records[resource_id]


def test_discovery_and_microversion(devcloud: Devcloud) -> None:
    conn = openstack.connect(cloud="cove-demo")
    data = conn.block_storage.get_endpoint_data()
    assert data.max_microversion == (3, 70)
    assert data.min_microversion == (3, 0)
    assert conn.block_storage.get_endpoint() == f"{devcloud.url}/volume/v3/{conn.current_project_id}"
    ok = conn.block_storage.get("/volumes", microversion="3.60")
    assert ok.status_code == 200
    assert ok.headers["OpenStack-API-Version"] == "volume 3.60"
    bad = conn.block_storage.get("/volumes", microversion="3.99", raise_exc=False)
    assert bad.status_code == 406
    root = conn.session.get(f"{devcloud.url}/volume/", authenticated=False, raise_exc=False)
    assert root.status_code == 300
    assert root.json()["versions"][0]["links"][-1]["href"] == f"{devcloud.url}/volume/v3/"


def test_create_wait_available_then_delete(devcloud: Devcloud) -> None:
    conn = openstack.connect(cloud="cove-demo")
    vol = conn.block_storage.create_volume(size=2, name="test-vol-life", metadata={"role": "etcd"})
    assert vol.status == "creating"
    assert vol.is_bootable is False
    vol = conn.block_storage.wait_for_status(vol, "available", wait=10, interval=0.05)
    assert vol.size == 2 and vol.metadata == {"role": "etcd"}
    assert vol.volume_type == "__DEFAULT__"
    found = conn.block_storage.find_volume("test-vol-life", ignore_missing=False)
    assert found.id == vol.id
    assert [v.id for v in conn.block_storage.volumes(name="test-vol-life")] == [vol.id]
    by_meta = conn.block_storage.get('/volumes?metadata={"role":"etcd"}').json()["volumes"]
    assert vol.id in [v["id"] for v in by_meta]
    assert conn.block_storage.get('/volumes?metadata={"role":"other"}').json()["volumes"] == []
    conn.block_storage.extend_volume(vol, 3)
    # wait_for_status trusts the object it is given first: hand it a fresh one (status "extending", or already
    # "available" again on a loaded machine, where the extend's short model time passes before this look)
    fresh = conn.block_storage.get_volume(vol.id)
    assert fresh.status in ("extending", "available"), fresh.status
    vol = conn.block_storage.wait_for_status(fresh, "available", wait=10, interval=0.05)
    assert conn.block_storage.get_volume(vol.id).size == 3
    conn.block_storage.delete_volume(vol)
    conn.block_storage.wait_for_delete(vol, wait=10, interval=0.05)
    with pytest.raises(exceptions.NotFoundException):
        conn.block_storage.get_volume(vol.id)
    record = ledger(devcloud, vol.id)
    assert record["volume_gb"] == 3
    assert record["deleted_at"] is not None
    statuses = [e["status"] for e in record["events"]]
    assert statuses[:2] == ["creating", "available"] and statuses[-2:] == ["deleting", "deleted"]


def test_paging_and_limits(devcloud: Devcloud) -> None:
    conn = openstack.connect(cloud="cove-demo")
    before = conn.block_storage.get_limits().absolute
    made = [conn.block_storage.create_volume(size=1, name=f"test-vol-page-{i}") for i in range(3)]
    try:
        paged = [v.id for v in conn.block_storage.volumes(limit=1) if v.name.startswith("test-vol-page-")]
        assert sorted(paged) == sorted(v.id for v in made)
        first = conn.block_storage.get("/volumes/detail?limit=1").json()
        assert first["volumes_links"][0]["rel"] == "next"
        assert first["volumes_links"][0]["href"].startswith(f"{devcloud.url}/volume/v3/")
        bad = conn.block_storage.get("/volumes?marker=nope", raise_exc=False)
        assert bad.status_code == 400
        after = conn.block_storage.get_limits().absolute
        assert after.total_volumes_used == before.total_volumes_used + 3
        assert after.total_gigabytes_used == before.total_gigabytes_used + 3
        quota = conn.block_storage.get_quota_set(conn.current_project_id, usage=True)
        assert quota.usage["volumes"] == after.total_volumes_used
        assert quota.volumes == 100
        assert [t.name for t in conn.block_storage.types()] == ["__DEFAULT__"]
    finally:
        for v in made:
            conn.block_storage.wait_for_status(v, "available", wait=10, interval=0.05)
            conn.block_storage.delete_volume(v)


def test_quota_exceeded_is_413(devcloud: Devcloud) -> None:
    admin = openstack.connect(cloud="cove-admin")
    alt = openstack.connect(cloud="cove-alt")
    pid = alt.current_project_id
    used = alt.block_storage.get_limits().absolute.total_volumes_used
    resp = admin.block_storage.put(
        f"/os-quota-sets/{pid}", json={"quota_set": {"volumes": used + 1, "gigabytes": 50}}
    )
    assert resp.json()["quota_set"]["volumes"] == used + 1
    vol = alt.block_storage.create_volume(size=1, name="test-vol-quota")
    try:
        with pytest.raises(exceptions.HttpException) as exc:
            alt.block_storage.create_volume(size=1, name="test-vol-quota-2")
        assert exc.value.status_code == 413
        assert "VolumeLimitExceeded" in str(exc.value)
        assert "exceeded for quota 'volumes'" in str(exc.value)
        with pytest.raises(exceptions.HttpException) as gexc:
            alt.block_storage.extend_volume(alt.block_storage.wait_for_status(vol, "available", wait=10,
                                                                                interval=0.05), 60)
        assert gexc.value.status_code == 413
        # a member may not change quotas
        denied = alt.block_storage.put(f"/os-quota-sets/{pid}", json={"quota_set": {"volumes": 1000}},
                                       raise_exc=False)
        assert denied.status_code == 403
    finally:
        admin.block_storage.put(f"/os-quota-sets/{pid}", json={"quota_set": {"volumes": 100, "gigabytes": 10000}})
        alt.block_storage.wait_for_status(vol, "available", wait=10, interval=0.05)
        alt.block_storage.delete_volume(vol)


def test_isolation_and_policy(devcloud: Devcloud) -> None:
    demo = openstack.connect(cloud="cove-demo")
    alt = openstack.connect(cloud="cove-alt")
    viewer = openstack.connect(cloud="cove-viewer")
    admin = openstack.connect(cloud="cove-admin")
    vol = demo.block_storage.create_volume(size=1, name="test-vol-private")
    try:
        # another project's id in the URL is refused
        other = demo.session.get(
            f"{devcloud.url}/volume/v3/{alt.current_project_id}/volumes", raise_exc=False
        )
        assert other.status_code == 403
        # the other project's token does not see the volume
        with pytest.raises(exceptions.NotFoundException):
            alt.block_storage.get_volume(vol.id)
        assert vol.id not in {v.id for v in alt.block_storage.volumes()}
        # a reader reads but may not write
        assert viewer.block_storage.get_volume(vol.id).id == vol.id
        with pytest.raises(exceptions.ForbiddenException):
            viewer.block_storage.create_volume(size=1, name="test-vol-reader")
        with pytest.raises(exceptions.ForbiddenException):
            viewer.block_storage.delete_volume(vol)
        # admin sees all projects with all_tenants
        assert vol.id in {v.id for v in admin.block_storage.volumes(all_projects=True)}
        assert vol.id not in {v.id for v in admin.block_storage.volumes()}
        # os-reset_status is admin-only
        with pytest.raises(exceptions.ForbiddenException):
            demo.block_storage.reset_volume_status(vol, "error", None, None)
        demo.block_storage.wait_for_status(vol, "available", wait=10, interval=0.05)
        admin.block_storage.reset_volume_status(vol, "error", None, None)
        assert demo.block_storage.get_volume(vol.id).status == "error"
    finally:
        demo.block_storage.delete_volume(vol)
        demo.block_storage.wait_for_delete(vol, wait=10, interval=0.05)


def test_cli_volume_create_list_show_delete(devcloud: Devcloud) -> None:
    created = cli("volume", "create", "--size", "1", "test-vol-cli", "-f", "json")
    assert created["name"] == "test-vol-cli" and created["size"] == 1
    conn = openstack.connect(cloud="cove-demo")
    conn.block_storage.wait_for_status(conn.block_storage.get_volume(created["id"]), "available", wait=10,
                                       interval=0.05)
    listed = cli("volume", "list", "-f", "json")
    assert {"test-vol-cli": "available"}.items() <= {v["Name"]: v["Status"] for v in listed}.items()
    shown = cli("volume", "show", "test-vol-cli", "-f", "json")
    assert shown["id"] == created["id"] and shown["status"] == "available"
    cli("volume", "delete", "test-vol-cli")
    conn.block_storage.wait_for_delete(Volume(id=created["id"]), wait=10, interval=0.05)
    assert ledger(devcloud, created["id"])["deleted_at"] is not None


def _nova_ready(conn: openstack.connection.Connection) -> bool:
    resp = conn.compute.get("/flavors", raise_exc=False)
    return resp.status_code == 200


def test_attach_through_nova_then_detach(devcloud: Devcloud) -> None:
    conn = openstack.connect(cloud="cove-demo")
    if not _nova_ready(conn):
        pytest.skip("compute.py (Nova) does not serve servers yet")
    flavor = conn.compute.find_flavor("m1.tiny", ignore_missing=False)
    image = conn.image.find_image("ubuntu-22.04", ignore_missing=False)
    server = conn.compute.create_server(name="test-vol-host", flavor_id=flavor.id, image_id=image.id,
                                        networks="none")
    server = conn.compute.wait_for_server(server, wait=20, interval=0.05)
    vol = conn.block_storage.create_volume(size=1, name="test-vol-attach")
    vol = conn.block_storage.wait_for_status(vol, "available", wait=10, interval=0.05)
    try:
        conn.compute.create_volume_attachment(server, volume_id=vol.id)
        vol = conn.block_storage.wait_for_status(vol, "in-use", wait=10, interval=0.05)
        assert vol.attachments[0]["server_id"] == server.id
        assert vol.attachments[0]["device"].startswith("/dev/vd")
        with pytest.raises(exceptions.BadRequestException):
            conn.block_storage.delete_volume(vol)
        conn.compute.delete_volume_attachment(vol.id, server)
        vol = conn.block_storage.wait_for_status(vol, "available", wait=10, interval=0.05)
        assert vol.attachments == []
    finally:
        conn.compute.delete_server(server)
        conn.compute.wait_for_delete(server, wait=20, interval=0.05)
        conn.block_storage.wait_for_status(vol, "available", wait=10, interval=0.05)
        conn.block_storage.delete_volume(vol)
        conn.block_storage.wait_for_delete(vol, wait=10, interval=0.05)
