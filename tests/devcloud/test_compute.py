"""Compute (Nova v2.1) through real openstacksdk and the `openstack` CLI: discovery and microversions, flavors,
keypairs, server groups, the server life cycle (BUILD -> ACTIVE -> deleted), listing, paging, actions, metadata,
limits and quota sets, isolation and policy, quota and capacity errors, and injected faults."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import openstack
import pytest
import yaml
from openstack import exceptions
from openstack.connection import Connection

from deploy.devcloud import network
from deploy.devcloud.config import DEFAULT_CONFIG
from deploy.devcloud.process import start_devcloud, stop_process
from tests.conftest import Devcloud

OPENSTACK = str(Path(sys.executable).with_name("openstack"))
T = TypeVar("T")
WAIT = 15.0

needs_network = pytest.mark.skipif(
    not hasattr(network, "create_server_port"), reason="pending: network.py create_server_port not written yet"
)


def cli(*args: str, cloud: str = "cove-demo") -> Any:
    out = subprocess.run([OPENSTACK, "--os-cloud", cloud, *args], check=False, capture_output=True, text=True,
                         timeout=60, env=os.environ.copy())
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if "json" in args else out.stdout


def poll(predicate: Callable[[], T], timeout: float = WAIT, message: str = "") -> T:
    """Wait for a condition with a deadline (the SDK's own waiters cover servers)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"not met within {timeout}s: {message}")
        time.sleep(0.05)


def admin_get(devcloud_url: str, path: str) -> Any:
    admin = openstack.connect(cloud="cove-admin")
    return admin.session.get(f"{devcloud_url}{path}").json()


def ledger_record(url: str, admin: Connection, resource_id: str) -> dict[str, Any]:
    records = admin.session.get(f"{url}/admin/ledger?kind=server").json()["records"]
    return {r["id"]: r for r in records}[resource_id]


def settle(conn: Connection, server_id: str, status: str) -> Any:
    """The server in `status` with no task in progress (the SDK's waiter returns at once when the object it holds
    already has the status, e.g. ACTIVE before a reboot)."""

    def done() -> Any:
        s = conn.compute.get_server(server_id)
        return s if s.status == status and s.task_state is None else None

    return poll(done, message=f"server {server_id} {status}")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture(scope="module")
def demo(devcloud: Devcloud) -> Connection:
    return openstack.connect(cloud="cove-demo")


@pytest.fixture(scope="module")
def image_id(demo: Connection) -> str:
    return str(demo.image.find_image("ubuntu-22.04", ignore_missing=False).id)


@pytest.fixture(scope="module")
def tiny(demo: Connection) -> str:
    return str(demo.compute.find_flavor("m1.tiny", ignore_missing=False).id)


def boot(conn: Connection, name: str, flavor_id: str, image_id: str, **kwargs: Any) -> Any:
    kwargs.setdefault("networks", "none")
    return conn.compute.create_server(name=name, flavor_id=flavor_id, image_id=image_id, **kwargs)


# -------------------------------------------------------------------------------------------------------------------
# Discovery and microversions


def test_discovery_and_microversions(devcloud: Devcloud, demo: Connection) -> None:
    data = demo.compute.get_endpoint_data()
    assert data.max_microversion == (2, 96)
    assert data.min_microversion == (2, 1)
    assert demo.compute.get_endpoint() == f"{devcloud.url}/compute/v2.1"
    root = demo.session.get(f"{devcloud.url}/compute/", authenticated=False).json()
    assert [v["id"] for v in root["versions"]] == ["v2.0", "v2.1"]
    resp = demo.compute.get("/servers/detail", microversion="2.96")
    assert resp.headers["OpenStack-API-Version"] == "compute 2.96"
    assert resp.headers["X-OpenStack-Nova-API-Version"] == "2.96"
    assert "OpenStack-API-Version" in resp.headers["Vary"]
    assert resp.headers["x-compute-request-id"].startswith("req-")
    latest = demo.compute.get("/flavors", headers={"OpenStack-API-Version": "compute latest"})
    assert latest.headers["OpenStack-API-Version"] == "compute 2.96"
    legacy = demo.compute.get("/flavors", headers={"X-OpenStack-Nova-API-Version": "2.47"})
    assert legacy.headers["OpenStack-API-Version"] == "compute 2.47"
    none = demo.compute.get("/flavors", headers={"OpenStack-API-Version": None, "X-OpenStack-Nova-API-Version": None})
    assert none.headers["OpenStack-API-Version"] == "compute 2.1"
    bad = demo.compute.get("/servers", microversion="9.99", raise_exc=False)
    assert bad.status_code == 406
    assert "maximum is 2.96" in bad.json()["computeFault"]["message"]


def test_server_shape_follows_microversion(demo: Connection, tiny: str, image_id: str) -> None:
    server = boot(demo, "mv-shape", tiny, image_id)
    try:
        old = demo.compute.get(f"/servers/{server.id}", microversion="2.46").json()["server"]
        assert set(old["flavor"]) == {"id", "links"} and old["flavor"]["id"] == tiny
        assert "tags" in old and "server_groups" not in old
        new = demo.compute.get(f"/servers/{server.id}", microversion="2.96").json()["server"]
        assert new["flavor"]["original_name"] == "m1.tiny" and new["flavor"]["vcpus"] == 1
        assert new["server_groups"] == [] and "pinned_availability_zone" in new
        # at >= 2.37 networks is required
        body = {"server": {"name": "no-nets", "flavorRef": tiny, "imageRef": image_id}}
        resp = demo.compute.post("/servers", json=body, microversion="2.37", raise_exc=False)
        assert resp.status_code == 400 and "networks" in resp.json()["badRequest"]["message"]
        resp = demo.compute.post("/servers", json=body, microversion="2.36", raise_exc=False)
        assert resp.status_code == 202  # no networks in the project: none
        demo.compute.delete_server(resp.json()["server"]["id"])
    finally:
        demo.compute.delete_server(server)


# -------------------------------------------------------------------------------------------------------------------
# Flavors, keypairs, server groups


def test_flavors(devcloud: Devcloud, demo: Connection) -> None:
    names = {f.name for f in demo.compute.flavors()}
    assert {"m1.tiny", "m1.small", "m1.medium", "m1.large"} <= names
    small = demo.compute.find_flavor("m1.small", ignore_missing=False)
    assert (small.vcpus, small.ram, small.disk) == (1, 2048, 20)
    again = demo.compute.get_flavor(small.id)
    assert again.name == "m1.small" and again.extra_specs == {}
    with pytest.raises(exceptions.NotFoundException):
        demo.compute.get_flavor("m1.small")
    assert demo.compute.get(f"/flavors/{small.id}/os-extra_specs").json() == {"extra_specs": {}}
    page = list(demo.compute.flavors(limit=1))
    assert len(page) == len(names)
    rows = cli("flavor", "list", "-f", "json")
    assert "m1.small" in {r["Name"] for r in rows}
    shown = cli("flavor", "show", "m1.small", "-f", "json")
    assert shown["ram"] == 2048


def test_keypairs(demo: Connection, tmp_path: Path) -> None:
    generated = demo.compute.create_keypair(name="kp-generated")
    assert generated.private_key and generated.private_key.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert len(generated.fingerprint.split(":")) == 16
    with pytest.raises(exceptions.ConflictException):
        demo.compute.create_keypair(name="kp-generated")
    with pytest.raises(exceptions.BadRequestException):
        demo.compute.create_keypair(name="kp-bad", public_key="ssh-rsa not-base64!!")
    public = generated.public_key
    own = demo.compute.create_keypair(name="kp-own", public_key=public)
    assert own.private_key is None and own.fingerprint == generated.fingerprint
    listed = {k.name for k in demo.compute.keypairs()}
    assert {"kp-generated", "kp-own"} <= listed
    raw = demo.compute.get("/os-keypairs", microversion="2.10").json()["keypairs"]
    assert all(set(item) == {"keypair"} for item in raw)  # each item wrapped
    # keypairs belong to the user: demo2 in the same project does not see them
    other = openstack.connect(cloud="cove-demo2")
    assert "kp-own" not in {k.name for k in other.compute.keypairs()}
    demo.compute.delete_keypair("kp-own")
    with pytest.raises(exceptions.NotFoundException):
        demo.compute.get_keypair("kp-own")
    key_file = tmp_path / "id.pub"
    key_file.write_text(public)
    created = cli("keypair", "create", "--public-key", str(key_file), "kp-cli", "-f", "json")
    assert created["name"] == "kp-cli" and created["fingerprint"] == generated.fingerprint
    private = cli("keypair", "create", "kp-cli-generated")  # OSC generates locally and prints the private key
    assert "PRIVATE KEY" in private
    cli("keypair", "delete", "kp-cli-generated")
    assert "kp-cli" in {r["Name"] for r in cli("keypair", "list", "-f", "json")}
    cli("keypair", "delete", "kp-cli")
    demo.compute.delete_keypair("kp-generated")


def test_server_groups(demo: Connection) -> None:
    group = demo.compute.create_server_group(name="sg-anti", policy="anti-affinity",
                                             rules={"max_server_per_host": 1})
    assert group.policy == "anti-affinity" and group.rules == {"max_server_per_host": 1}
    assert group.member_ids == []
    old = demo.compute.get(f"/os-server-groups/{group.id}", microversion="2.63").json()["server_group"]
    assert old["policies"] == ["anti-affinity"] and "policy" not in old
    with pytest.raises(exceptions.BadRequestException):
        demo.compute.create_server_group(name="sg-bad", policy="sideways")
    shown = cli("server", "group", "create", "--policy", "affinity", "sg-cli", "-f", "json")
    assert shown["policy"] == "affinity"
    assert {"sg-anti", "sg-cli"} <= {g.name for g in demo.compute.server_groups()}
    demo.compute.delete_server_group(group)
    demo.compute.delete_server_group(shown["id"])
    with pytest.raises(exceptions.NotFoundException):
        demo.compute.get_server_group(group.id)


# -------------------------------------------------------------------------------------------------------------------
# Servers


def test_server_life_cycle(devcloud: Devcloud, demo: Connection, tiny: str, image_id: str) -> None:
    admin = openstack.connect(cloud="cove-admin")
    demo.compute.create_keypair(name="kp-life")
    group = demo.compute.create_server_group(name="grp-life", policy="anti-affinity")
    used_before = demo.compute.get_limits().absolute.instances_used
    server = boot(demo, "life-vm", tiny, image_id, key_name="kp-life", user_data=b64("#cloud-config\n{}\n"),
                  metadata={"role": "master"}, scheduler_hints={"group": group.id}, tags=["cove"])
    server = demo.compute.wait_for_server(server, wait=WAIT, interval=0.05)
    assert server.status == "ACTIVE" and server.power_state == 1 and server.vm_state == "active"
    assert server.metadata == {"role": "master"} and server.key_name == "kp-life" and server.tags == ["cove"]
    assert server.flavor.vcpus == 1 and server.image.id == image_id
    assert server.server_groups == [group.id]
    assert demo.compute.get_server_group(group.id).member_ids == [server.id]
    assert demo.compute.get_limits().absolute.instances_used == used_before + 1
    record = ledger_record(devcloud.url, admin, server.id)
    assert (record["vcpus"], record["ram_mb"], record["disk_gb"]) == (1, 512, 1)
    assert [e["status"] for e in record["events"]][:2] == ["BUILD", "BUILD"] and record["status"] == "ACTIVE"
    assert record["host"]

    found = list(demo.compute.servers(name="life-v", status="ACTIVE"))
    assert [s.id for s in found] == [server.id]
    assert list(demo.compute.servers(name="^nomatch$")) == []
    assert [s.id for s in demo.compute.servers(tags="cove")] == [server.id]

    demo.compute.set_server_metadata(server, extra="1")
    assert demo.compute.get_server_metadata(server).metadata == {"role": "master", "extra": "1"}
    demo.compute.delete_server_metadata(server, ["extra"])
    assert demo.compute.get_server(server.id).metadata == {"role": "master"}

    demo.compute.stop_server(server)
    settle(demo, server.id, "SHUTOFF")
    with pytest.raises(exceptions.ConflictException):
        demo.compute.stop_server(server)
    demo.compute.start_server(server)
    settle(demo, server.id, "ACTIVE")
    demo.compute.reboot_server(server, "HARD")
    assert demo.compute.get_server(server.id).status in ("HARD_REBOOT", "ACTIVE")
    settle(demo, server.id, "ACTIVE")
    demo.compute.rebuild_server(server, image=image_id, name="life-vm2")
    server = settle(demo, server.id, "ACTIVE")
    assert server.name == "life-vm2"

    demo.compute.delete_server(server)
    demo.compute.wait_for_delete(server, wait=WAIT, interval=0.05)
    record = ledger_record(devcloud.url, admin, server.id)
    assert record["deleted_at"] is not None and [e["status"] for e in record["events"]][-2:] == ["DELETING", "deleted"]
    assert demo.compute.get_server_group(group.id).member_ids == []
    assert demo.compute.get_limits().absolute.instances_used == used_before
    demo.compute.delete_server_group(group)
    demo.compute.delete_keypair("kp-life")


def test_create_validation(demo: Connection, tiny: str, image_id: str) -> None:
    with pytest.raises(exceptions.BadRequestException, match="base 64"):
        boot(demo, "bad-ud", tiny, image_id, user_data="not base64 at all!")
    with pytest.raises(exceptions.BadRequestException, match="key_name"):
        boot(demo, "bad-key", tiny, image_id, key_name="no-such-key")
    with pytest.raises(exceptions.BadRequestException, match="Flavor"):
        boot(demo, "bad-flavor", "no-such-flavor", image_id)
    with pytest.raises(exceptions.BadRequestException, match="Image"):
        boot(demo, "bad-image", tiny, "3a1f7c2e-0000-4000-8000-000000000000")
    with pytest.raises(exceptions.BadRequestException, match="availability zone"):
        boot(demo, "bad-az", tiny, image_id, availability_zone="atlantis")
    own = [n for n in demo.network.networks(project_id=demo.current_project_id) if not n.is_router_external]
    if len(own) != 1:  # 'auto' needs exactly one network of the project's own
        with pytest.raises(exceptions.BadRequestException, match="auto"):
            boot(demo, "bad-auto", tiny, image_id, networks="auto")


def test_paging_and_multi_create(demo: Connection, tiny: str, image_id: str) -> None:
    body = {"server": {"name": "page", "flavorRef": tiny, "imageRef": image_id, "networks": "none",
                       "min_count": 5, "max_count": 5}}
    demo.compute.post("/servers", json=body, microversion="2.96")
    mine = [s for s in demo.compute.servers(name="^page-")]
    try:
        assert sorted(s.name for s in mine) == [f"page-{i}" for i in range(1, 6)]
        paged = list(demo.compute.servers(name="^page-", limit=2))
        assert [s.id for s in paged] == [s.id for s in mine]  # newest first, same order across pages
        assert len(list(demo.compute.servers(name="^page-", max_items=3))) == 3
        first = demo.compute.get("/servers?name=^page-&limit=2").json()
        assert first["servers_links"][0]["rel"] == "next"
        bad = demo.compute.get("/servers?marker=nope", raise_exc=False)
        assert bad.status_code == 400
        by_name = list(demo.compute.servers(name="^page-", sort_key="display_name", sort_dir="asc"))
        assert [s.name for s in by_name] == [f"page-{i}" for i in range(1, 6)]
    finally:
        for s in mine:
            demo.compute.delete_server(s)
        for s in mine:
            demo.compute.wait_for_delete(s, wait=WAIT, interval=0.05)


def test_isolation_and_policy(devcloud: Devcloud, demo: Connection, tiny: str, image_id: str) -> None:
    server = boot(demo, "private-vm", tiny, image_id)
    try:
        alt = openstack.connect(cloud="cove-alt")
        with pytest.raises(exceptions.NotFoundException):
            alt.compute.get_server(server.id)
        assert server.id not in {s.id for s in alt.compute.servers()}
        with pytest.raises(exceptions.NotFoundException):
            alt.compute.delete_server(server.id, ignore_missing=False)
        viewer = openstack.connect(cloud="cove-viewer")
        assert server.id in {s.id for s in viewer.compute.servers()}
        with pytest.raises(exceptions.ForbiddenException):
            boot(viewer, "viewer-vm", tiny, image_id)
        with pytest.raises(exceptions.ForbiddenException):
            viewer.compute.delete_server(server.id)
        admin = openstack.connect(cloud="cove-admin")
        assert server.id not in {s.id for s in admin.compute.servers()}
        assert server.id in {s.id for s in admin.compute.servers(all_projects=True)}
        assert admin.compute.get_server(server.id).compute_host
    finally:
        demo.compute.delete_server(server)
        demo.compute.wait_for_delete(server, wait=WAIT, interval=0.05)


def test_quota_exceeded_is_forbidden(demo: Connection, tiny: str, image_id: str) -> None:
    admin = openstack.connect(cloud="cove-admin")
    alt = openstack.connect(cloud="cove-alt")
    pid = alt.current_project_id
    admin.compute.update_quota_set(pid, instances=1)
    first = None
    try:
        assert alt.compute.get_quota_set(pid).instances == 1
        first = boot(alt, "q1", tiny, image_id)
        with pytest.raises(exceptions.ForbiddenException, match="Quota exceeded for instances: Requested 1, "
                                                              "but already used 1 of 1 instances"):
            boot(alt, "q2", tiny, image_id)
        detail = alt.compute.get_quota_set(pid, usage=True)
        assert detail.usage["instances"] == 1
        with pytest.raises(exceptions.ForbiddenException):
            alt.compute.update_quota_set(pid, instances=50)
        with pytest.raises(exceptions.ForbiddenException):
            alt.compute.get_quota_set(demo.current_project_id)
    finally:
        admin.compute.update_quota_set(pid, instances=100)
        if first is not None:
            alt.compute.delete_server(first)
            alt.compute.wait_for_delete(first, wait=WAIT, interval=0.05)
    admin.compute.update_quota_set(pid, cores=2)
    try:
        with pytest.raises(exceptions.ForbiddenException, match="cores: Requested 4, but already used 0 of 2"):
            boot(alt, "q3", demo.compute.find_flavor("m1.large", ignore_missing=False).id, image_id)
    finally:
        admin.compute.update_quota_set(pid, cores=200)


def test_limits_and_quota_cli(demo: Connection) -> None:
    absolute = demo.compute.get_limits().absolute
    assert absolute.instances == 100 and absolute.total_cores == 200
    rows = cli("limits", "show", "--absolute", "-f", "json")
    by_name = {r["Name"]: r["Value"] for r in rows}
    assert by_name["max_total_instances"] == 100 and by_name["total_cores_used"] == absolute.total_cores_used
    quota = cli("quota", "show", "-f", "json")
    values = {r["Resource"]: r["Limit"] for r in quota} if isinstance(quota, list) else quota
    assert values["instances"] == 100 and values["cores"] == 200


def test_cli_server_round_trip(demo: Connection) -> None:
    cli("keypair", "create", "kp-round")
    shown = cli("server", "create", "--flavor", "m1.tiny", "--image", "ubuntu-22.04", "--no-network",
                "--key-name", "kp-round", "--property", "role=worker", "--wait", "cli-vm", "-f", "json")
    assert shown["status"] == "ACTIVE"
    rows = cli("server", "list", "-f", "json")
    assert "cli-vm" in {r["Name"] for r in rows}
    rows = cli("server", "list", "--name", "cli-vm", "--status", "ACTIVE", "-f", "json")
    assert [r["Name"] for r in rows] == ["cli-vm"]
    info = cli("server", "show", "cli-vm", "-f", "json")
    assert info["key_name"] == "kp-round" and "m1.tiny" in str(info["flavor"])
    assert info["properties"] == {"role": "worker"} or "role='worker'" in str(info["properties"])
    cli("server", "delete", "--wait", "cli-vm")
    with pytest.raises(exceptions.NotFoundException):
        demo.compute.find_server("cli-vm", ignore_missing=False)
    cli("keypair", "delete", "kp-round")


def test_availability_zones_and_hypervisors(demo: Connection) -> None:
    zones = demo.compute.get("/os-availability-zone").json()["availabilityZoneInfo"]
    assert zones == [{"zoneName": "nova", "zoneState": {"available": True}, "hosts": None}]
    admin = openstack.connect(cloud="cove-admin")
    hypervisors = list(admin.compute.hypervisors(details=True))
    assert len(hypervisors) == 16
    assert demo.compute.get("/os-hypervisors", raise_exc=False).status_code == 403


@needs_network
def test_server_on_a_network(demo: Connection, tiny: str, image_id: str) -> None:
    net = demo.network.create_network(name="cmp-net")
    subnet = demo.network.create_subnet(network_id=net.id, cidr="10.9.0.0/24", ip_version=4)
    sg = demo.network.create_security_group(name="cmp-sg")
    public = demo.network.find_network("public", ignore_missing=False)
    router = demo.network.create_router(name="cmp-router", external_gateway_info={"network_id": public.id})
    demo.network.add_interface_to_router(router, subnet_id=subnet.id)
    with pytest.raises(exceptions.BadRequestException):
        boot(demo, "no-such-net", tiny, image_id, networks=[{"uuid": "7c0c5a53-1111-4111-8111-000000000000"}])
    server = boot(demo, "net-vm", tiny, image_id, networks=[{"uuid": net.id}], security_groups=[{"name": sg.name}])
    auto = boot(demo, "auto-vm", tiny, image_id, networks="auto")  # the project's only network
    fip = None
    try:
        server = demo.compute.wait_for_server(server, wait=WAIT, interval=0.05)
        addrs = server.addresses["cmp-net"]
        assert addrs[0]["OS-EXT-IPS:type"] == "fixed" and addrs[0]["addr"].startswith("10.9.0.")
        assert server.security_groups == [{"name": "cmp-sg"}]
        ports = list(demo.network.ports(device_id=server.id))
        assert len(ports) == 1 and ports[0].device_owner == "compute:nova"
        assert ports[0].fixed_ips[0]["ip_address"] == addrs[0]["addr"]
        assert addrs[0]["OS-EXT-IPS-MAC:mac_addr"] == ports[0].mac_address
        fip = demo.network.create_ip(floating_network_id=public.id, port_id=ports[0].id)
        floating = [a for a in demo.compute.get_server(server.id).addresses["cmp-net"]
                    if a["OS-EXT-IPS:type"] == "floating"]
        assert [a["addr"] for a in floating] == [fip.floating_ip_address]
        assert [p.network_id for p in demo.network.ports(device_id=auto.id)] == [net.id]
    finally:
        for s in (server, auto):
            demo.compute.delete_server(s)
            demo.compute.wait_for_delete(s, wait=WAIT, interval=0.05)
    assert not list(demo.network.ports(device_id=server.id))  # the ports Nova made went with the server
    if fip is not None:
        demo.network.delete_ip(fip)
    demo.network.remove_interface_from_router(router, subnet_id=subnet.id)
    demo.network.delete_router(router)
    demo.network.delete_security_group(sg)
    demo.network.delete_subnet(subnet)
    demo.network.delete_network(net)


def test_volume_attachments(demo: Connection, tiny: str, image_id: str) -> None:
    server = demo.compute.wait_for_server(boot(demo, "attach-vm", tiny, image_id), wait=WAIT, interval=0.05)
    vol = demo.block_storage.create_volume(size=1, name="cmp-attach")
    vol = demo.block_storage.wait_for_status(vol, "available", wait=WAIT, interval=0.05)
    try:
        attachment = demo.compute.create_volume_attachment(server, volume_id=vol.id, delete_on_termination=True)
        assert attachment.volume_id == vol.id and attachment.attachment_id and attachment.bdm_id
        raw = demo.compute.get(f"/servers/{server.id}/os-volume_attachments", microversion="2.89").json()
        (item,) = raw["volumeAttachments"]
        assert "id" not in item and item["delete_on_termination"] is True and item["device"].startswith("/dev/vd")
        old = demo.compute.get(f"/servers/{server.id}/os-volume_attachments/{vol.id}", microversion="2.1").json()
        assert old["volumeAttachment"]["id"] == vol.id and "attachment_id" not in old["volumeAttachment"]
        demo.block_storage.wait_for_status(vol, "in-use", wait=WAIT, interval=0.05)
        attached = demo.compute.get_server(server.id).attached_volumes
        assert [(a.id, a.delete_on_termination) for a in attached] == [(vol.id, True)]
        with pytest.raises(exceptions.NotFoundException):
            demo.compute.delete_volume_attachment("7c0c5a53-2222-4222-8222-000000000000", server, ignore_missing=False)
        demo.compute.delete_volume_attachment(vol.id, server)
        demo.block_storage.wait_for_status(vol, "available", wait=WAIT, interval=0.05)
        assert demo.compute.get_server(server.id).attached_volumes == []
    finally:
        demo.compute.delete_server(server)
        demo.compute.wait_for_delete(server, wait=WAIT, interval=0.05)
        demo.block_storage.wait_for_status(vol, "available", wait=WAIT, interval=0.05)
        demo.block_storage.delete_volume(vol)


# -------------------------------------------------------------------------------------------------------------------
# Capacity and faults, on a private devcloud with two small hosts in two zones


@pytest.fixture(scope="module")
def small_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devcloud]:
    workdir = tmp_path_factory.mktemp("devcloud-compute")
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["availability_zones"] = ["nova", "zone-b"]
    raw["hypervisors"] = [
        {"az": "nova", "count": 1, "vcpus": 2, "ram_mb": 4096, "disk_gb": 100},
        {"az": "zone-b", "count": 1, "vcpus": 2, "ram_mb": 4096, "disk_gb": 100},
    ]
    config = workdir / "cloud.yaml"
    config.write_text(yaml.safe_dump(raw))
    cloud = start_devcloud(workdir, time_factor=0.01, config=config)
    try:
        yield cloud
    finally:
        stop_process(cloud.process)


def connect(cloud: Devcloud, user: str, password: str, project: str) -> Connection:
    return openstack.connect(auth_url=f"{cloud.url}/identity", username=user, password=password,
                             project_name=project, user_domain_name="Default", project_domain_name="Default")


def test_capacity_and_faults(small_cloud: Devcloud) -> None:
    demo = connect(small_cloud, "demo", "demo-pass", "demo")
    admin = connect(small_cloud, "admin", "admin-pass", "admin")
    image = demo.image.find_image("ubuntu-22.04", ignore_missing=False).id
    medium = demo.compute.find_flavor("m1.medium", ignore_missing=False).id  # 2 vCPUs: one per host
    url = small_cloud.url

    a = demo.compute.wait_for_server(boot(demo, "cap-a", medium, image), wait=WAIT, interval=0.05)
    b = demo.compute.wait_for_server(boot(demo, "cap-b", medium, image), wait=WAIT, interval=0.05)
    assert {a.availability_zone, b.availability_zone} == {"nova", "zone-b"}
    full = boot(demo, "cap-c", medium, image)
    with pytest.raises(exceptions.ResourceFailure):
        demo.compute.wait_for_server(full, wait=WAIT, interval=0.05)
    full = demo.compute.get_server(full.id)
    assert full.status == "ERROR" and full.fault["message"].startswith("No valid host was found")
    assert full.fault["code"] == 500
    demo.compute.delete_server(full)
    demo.compute.wait_for_delete(full, wait=WAIT, interval=0.05)

    # a server fault: the named server vanishes
    admin.session.post(f"{url}/admin/faults/servers", json={"name": "cap-a", "action": "vanish", "after_seconds": 0})
    demo.compute.wait_for_delete(a, wait=WAIT, interval=0.05)
    assert ledger_record(url, admin, a.id)["deleted_at"] is not None

    # a fault for a server not yet there strikes once it is ACTIVE: Hardware failure
    admin.session.post(f"{url}/admin/faults/servers", json={"name": "late", "action": "error"})
    late = boot(demo, "late", medium, image)
    poll(lambda: demo.compute.get_server(late.id).status == "ERROR", message="late server in ERROR")
    assert demo.compute.get_server(late.id).fault["message"] == "Hardware failure"
    demo.compute.delete_server(late)
    demo.compute.wait_for_delete(late, wait=WAIT, interval=0.05)

    # a zone goes down: its servers go to ERROR, and nothing more is placed there
    admin.session.post(f"{url}/admin/faults/zones/zone-b/down")
    poll(lambda: demo.compute.get_server(b.id).status == "ERROR", message="zone-b server in ERROR")
    assert demo.compute.get_server(b.id).fault["message"] == "Availability zone zone-b is down"
    down = boot(demo, "in-down-zone", demo.compute.find_flavor("m1.tiny", ignore_missing=False).id, image,
                availability_zone="zone-b")
    poll(lambda: demo.compute.get_server(down.id).status == "ERROR", message="no host in a down zone")
    admin.session.post(f"{url}/admin/faults/zones/zone-b/up")
    for s in (b, down):
        demo.compute.delete_server(s)
        demo.compute.wait_for_delete(s, wait=WAIT, interval=0.05)

    # every boot fails
    admin.session.put(f"{url}/admin/faults", json={"boot_failure_rate": 1.0})
    try:
        doomed = boot(demo, "doomed", medium, image)
        with pytest.raises(exceptions.ResourceFailure):
            demo.compute.wait_for_server(doomed, wait=WAIT, interval=0.05)
        assert "Failed to spawn" in demo.compute.get_server(doomed.id).fault["message"]
    finally:
        admin.session.put(f"{url}/admin/faults", json={"boot_failure_rate": 0.0})
    demo.compute.delete_server(doomed)
    demo.compute.wait_for_delete(doomed, wait=WAIT, interval=0.05)
    hosts = admin.compute.get("/os-hypervisors/detail", microversion="2.87").json()["hypervisors"]
    assert [h["vcpus_used"] for h in hosts] == [0, 0]  # capacity released on delete (fields gone at 2.88)
