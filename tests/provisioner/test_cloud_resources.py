"""ClusterCloud's resource steps against the real devcloud over HTTP, through real openstacksdk (no mocks).

Each test builds one cluster's resources with a ClusterCloud on the demo user's own connection (no trust is needed
for these), proves each ``ensure_*`` idempotent by the ledger (run twice, one resource), and ends with
``delete_cluster_resources`` leaving no live resource the test made, of any kind. The ledger is the ground truth:
a test snapshots the record ids of the project before it starts and looks only at what came after.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import openstack
import pytest
import requests
import yaml
from openstack import exceptions

from deploy.devcloud.config import DEFAULT_CONFIG
from deploy.devcloud.process import start_devcloud, stop_process
from services.provisioner import billing, model
from services.provisioner.cloud import (
    CloudError,
    ClusterCloud,
    LoadBalancerState,
    RetryPolicy,
    classify,
    made_at,
    role_security_group_name,
    server_group_name,
)
from services.provisioner.drivers.base import PortRule
from tests.conftest import Devcloud, wait_for

pytestmark = pytest.mark.integration

FAST = RetryPolicy(attempts=4, base=0.02, cap=0.2)

RULES = {
    "master": [
        PortRule("tcp", 6443, 6443, "allowed", "Kubernetes API"),
        PortRule("tcp", 22, 22, "allowed", "SSH"),
        PortRule("tcp", 2379, 2380, "cluster", "etcd"),
        PortRule("ipip", None, None, "cluster", "calico IP-in-IP"),
    ],
    "worker": [
        PortRule("tcp", 22, 22, "allowed", "SSH"),
        PortRule("udp", 8472, 8472, "cluster", "flannel VXLAN"),
        PortRule("tcp", 30000, 32767, "allowed", "NodePorts"),
    ],
}


# ---------------------------------------------------------------------------------------------------------- helpers


class Ledger:
    """The devcloud's ledger for one project, relative to a snapshot taken when the test starts."""

    def __init__(self, url: str, admin: openstack.connection.Connection, project_id: str) -> None:
        self.url, self.admin, self.project_id = url, admin, project_id
        self.before = {r["id"] for r in self.records()}

    def records(self, **params: str) -> list[dict[str, Any]]:
        resp = self.admin.session.get(f"{self.url}/admin/ledger", params={"project_id": self.project_id, **params})
        assert resp.status_code == 200, resp.text
        # the project's `default` security group, made on its first network call, is nobody's cluster
        return [r for r in resp.json()["records"] if not (r["kind"] == "security_group" and r["name"] == "default")]

    def new(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Records created since the snapshot (live or not)."""
        params = {"kind": kind} if kind else {}
        return [r for r in self.records(**params) if r["id"] not in self.before]

    def live_new(self) -> list[dict[str, Any]]:
        return [r for r in self.records(live="true") if r["id"] not in self.before]

    def count(self, kind: str) -> int:
        return len(self.new(kind))


def admin_connection(url: str) -> openstack.connection.Connection:
    return openstack.connect(auth_url=f"{url}/identity", username="admin", password="admin-pass",
                             project_name="admin", user_domain_name="Default", project_domain_name="Default")


def user_connection(url: str, user: str = "demo") -> openstack.connection.Connection:
    return openstack.connect(auth_url=f"{url}/identity", username=user, password=f"{user}-pass",
                             project_name=user.rstrip("2"), user_domain_name="Default",
                             project_domain_name="Default")


def admin_call(url: str, admin: openstack.connection.Connection, method: str, path: str, **kw: Any) -> Any:
    resp = admin.session.request(f"{url}{path}", method, **kw)
    assert resp.status_code < 300, resp.text
    return resp.json() if resp.content else None


@contextlib.contextmanager
def time_factor(url: str, admin: openstack.connection.Connection, factor: float) -> Iterator[None]:
    """Set the devcloud's time factor for a block, and restore the one it had (the fixture's)."""
    previous = float(admin_call(url, admin, "GET", "/admin/timing")["time_factor"])
    admin_call(url, admin, "PUT", "/admin/timing", json={"time_factor": factor})
    try:
        yield
    finally:
        admin_call(url, admin, "PUT", "/admin/timing", json={"time_factor": previous})


def stats(url: str, admin: openstack.connection.Connection) -> dict[str, Any]:
    return dict(admin_call(url, admin, "GET", "/admin/stats"))


def cluster(name: str) -> tuple[str, str]:
    cid = str(uuid.uuid4())
    return model.cluster_prefix(name, cid), cid


def ingress(conn: openstack.connection.Connection, sg_id: str) -> set[tuple[Any, ...]]:
    rules = conn.network.get_security_group(sg_id).security_group_rules
    return {
        (r["protocol"], r["port_range_min"], r["port_range_max"], r["remote_ip_prefix"], r["remote_group_id"])
        for r in rules if r["direction"] == "ingress"
    }


def expected_rules(role: str, cidrs: list[str], groups: dict[str, str]) -> set[tuple[Any, ...]]:
    out = set()
    for rule in RULES[role]:
        if rule.source == "allowed":
            out |= {(rule.protocol, rule.port_min, rule.port_max, c, None) for c in cidrs}
        else:
            out |= {(rule.protocol, rule.port_min, rule.port_max, None, g) for g in groups.values()}
    return out


async def teardown(cc: ClusterCloud, prefix: str, cid: str, ledger: Ledger) -> None:
    """delete_cluster_resources until it says nothing is left, then once more; the ledger must agree."""
    await wait_for(lambda: cc.delete_cluster_resources(prefix, cid), timeout=30, interval=0.05,
                   message=f"delete_cluster_resources({prefix}) is done")
    assert cc.delete_cluster_resources(prefix, cid) is True  # twice: nothing to do, nothing fails
    live = ledger.live_new()
    assert live == [], [(r["kind"], r["name"], r["status"]) for r in live]


@pytest.fixture(scope="module")
def demo(devcloud: Devcloud) -> openstack.connection.Connection:
    return user_connection(devcloud.url)


@pytest.fixture(scope="module")
def admin(devcloud: Devcloud) -> openstack.connection.Connection:
    return admin_connection(devcloud.url)


@pytest.fixture
def ledger(devcloud: Devcloud, demo: openstack.connection.Connection,
           admin: openstack.connection.Connection) -> Ledger:
    return Ledger(devcloud.url, admin, demo.current_project_id)


@pytest.fixture
def cc(demo: openstack.connection.Connection) -> ClusterCloud:
    return ClusterCloud(demo, retry=FAST)


# ---------------------------------------------------------------------------------------------------------- tests


async def test_security_groups_hold_exactly_the_asked_rules_and_converge(
    cc: ClusterCloud, demo: openstack.connection.Connection, ledger: Ledger
) -> None:
    prefix, cid = cluster("t-sg")
    cidrs = ["10.1.0.0/16", "192.0.2.0/24"]
    groups = cc.ensure_security_groups(prefix, cid, RULES, cidrs)
    assert cc.ensure_security_groups(prefix, cid, RULES, cidrs) == groups  # twice: the same groups
    assert set(groups) == {"master", "worker"}
    assert sorted(r["name"] for r in ledger.new("security_group")) == sorted(
        role_security_group_name(prefix, role) for role in ("master", "worker"))
    for role, sg_id in groups.items():
        assert ingress(demo, sg_id) == expected_rules(role, cidrs, groups)
        sg = demo.network.get_security_group(sg_id)
        assert model.cluster_tag(cid) in sg.tags
        # egress stays as Neutron made it
        assert sum(1 for r in sg.security_group_rules if r["direction"] == "egress") == 2

    # a rule nobody asked for is removed; the allow-list changes: only the new CIDR is let in
    demo.network.create_security_group_rule(security_group_id=groups["master"], direction="ingress",
                                            protocol="tcp", port_range_min=3306, port_range_max=3306,
                                            remote_ip_prefix="203.0.113.0/24")
    assert cc.ensure_security_groups(prefix, cid, RULES, ["198.51.100.7/32"]) == groups
    for role, sg_id in groups.items():
        assert ingress(demo, sg_id) == expected_rules(role, ["198.51.100.7/32"], groups)
    # an empty allow-list means from anywhere
    cc.ensure_security_groups(prefix, cid, RULES, [])
    for role, sg_id in groups.items():
        assert ingress(demo, sg_id) == expected_rules(role, ["0.0.0.0/0"], groups)
    # an invalid CIDR is the user's to fix
    with pytest.raises(CloudError) as err:
        cc.ensure_security_groups(prefix, cid, RULES, ["10.0.0.300/24"])
    assert err.value.permanent and "10.0.0.300/24" in err.value.reason

    # a group of the layout before per-role groups (clusters built earlier) goes at teardown too
    cc.conn.network.create_security_group(name=model.security_group_name(prefix),
                                          description=f"Cove cluster {cid}")
    assert ledger.count("security_group") == 3
    await teardown(cc, prefix, cid, ledger)


async def test_load_balancer_goes_active_with_listener_pool_monitor_and_members(
    devcloud: Devcloud, cc: ClusterCloud, demo: openstack.connection.Connection,
    admin: openstack.connection.Connection, ledger: Ledger,
) -> None:
    prefix, cid = cluster("t-lb")
    net = cc.ensure_network(prefix, cid, fixed_network=None, fixed_subnet=None, external_network=None,
                            cidr="10.20.0.0/24", dns_nameserver=None)
    assert net.subnet_id is not None
    subnet_id = net.subnet_id
    # slow the cloud so that a pending load balancer is seen; every call must still return at once
    with time_factor(devcloud.url, admin, 0.1):
        first = cc.ensure_load_balancer(prefix, cid, subnet_id=subnet_id, api_port=6443,
                                        allowed_cidrs=["192.0.2.0/24"])
        again = cc.ensure_load_balancer(prefix, cid, subnet_id=subnet_id, api_port=6443,
                                        allowed_cidrs=["192.0.2.0/24"])
        # both returned while Octavia still builds (0.3-0.6 s now): nothing waited
        assert not first.ready and first.provisioning_status == "PENDING_CREATE"
        assert again.lb_id == first.lb_id and not again.ready and again.provisioning_status == "PENDING_CREATE"
        assert again.listener_id is None
        assert first.vip_address and first.vip_address.startswith("10.20.0.")

        calls = 0

        def step() -> LoadBalancerState | None:
            nonlocal calls
            calls += 1
            state = cc.ensure_load_balancer(prefix, cid, subnet_id=subnet_id, api_port=6443,
                                            allowed_cidrs=["192.0.2.0/24"])
            return state if state.ready else None

        state = await wait_for(step, timeout=30, interval=0.05, message="the load balancer is ready")
    assert calls >= 4  # one write per call: listener, pool, monitor, each after the load balancer settled
    assert state.listener_id and state.pool_id and state.monitor_id and state.provisioning_status == "ACTIVE"
    assert cc.ensure_load_balancer(prefix, cid, subnet_id=subnet_id, api_port=6443,
                                   allowed_cidrs=["192.0.2.0/24"]) == state
    for kind in ("load_balancer", "listener", "pool", "health_monitor"):
        assert ledger.count(kind) == 1, kind
    lbs = demo.load_balancer
    listener = lbs.get_listener(state.listener_id)
    assert listener.protocol == "TCP" and listener.protocol_port == 6443
    assert listener.allowed_cidrs == ["192.0.2.0/24"]
    pool = lbs.get_pool(state.pool_id)
    assert pool.protocol == "TCP" and pool.lb_algorithm == "ROUND_ROBIN" and pool.health_monitor_id == state.monitor_id
    assert lbs.get_health_monitor(state.monitor_id).type == "TCP"
    assert model.cluster_tag(cid) in lbs.get_load_balancer(state.lb_id).tags

    # the allow-list changes: the listener follows, then the load balancer is ready again
    state = await wait_for(lambda: (s := cc.ensure_load_balancer(
        prefix, cid, subnet_id=subnet_id, api_port=6443, allowed_cidrs=["198.51.100.0/24", "192.0.2.0/24"]
    )).ready and s, timeout=30, message="listener CIDRs updated")
    assert sorted(lbs.get_listener(state.listener_id).allowed_cidrs) == ["192.0.2.0/24", "198.51.100.0/24"]

    # members: two masters' ports, then one
    sg = cc.ensure_security_groups(prefix, cid, RULES, [])
    ports = {name: cc.ensure_port(prefix, cid, name, network_id=net.network_id, subnet_id=subnet_id,
                                  security_group_ids=[sg["master"]])
             for name in (model.node_name(prefix, model.MASTER, 0), model.node_name(prefix, model.MASTER, 1))}
    members = {name: str(p.ip) for name, p in ports.items()}
    await wait_for(lambda: cc.ensure_lb_members(state, members, 6443), timeout=30, message="two members")
    have = {(m.address, m.protocol_port, m.provisioning_status) for m in lbs.members(state.pool_id)}
    assert have == {(ip, 6443, "ACTIVE") for ip in members.values()}
    assert cc.ensure_lb_members(state, members, 6443) is True
    one = dict(list(members.items())[:1])
    await wait_for(lambda: cc.ensure_lb_members(state, one, 6443), timeout=30, message="one member")
    assert [m.address for m in lbs.members(state.pool_id)] == list(one.values())
    assert ledger.count("member") == 2  # made once each, one deleted
    await teardown(cc, prefix, cid, ledger)


async def test_load_balancer_forwards_the_drivers_extra_ports_to_every_master(
    cc: ClusterCloud, demo: openstack.connection.Connection, ledger: Ledger,
) -> None:
    """Swarm's managers join through the load balancer on 2377 besides the engine's 2376: a listener, pool and
    monitor per port, the extra port's allow-list opened to the cluster's subnet, and members on each pool."""
    prefix, cid = cluster("t-lb2")
    net = cc.ensure_network(prefix, cid, fixed_network=None, fixed_subnet=None, external_network=None,
                            cidr="10.21.0.0/24", dns_nameserver=None)
    assert net.subnet_id is not None
    subnet_id = net.subnet_id

    def step() -> LoadBalancerState | None:
        state = cc.ensure_load_balancer(prefix, cid, subnet_id=subnet_id, api_port=2376, extra_ports=[2377],
                                        allowed_cidrs=["192.0.2.0/24"], subnet_cidr="10.21.0.0/24")
        return state if state.ready else None

    state = await wait_for(step, timeout=30, interval=0.05, message="both ports ready")
    lbs = demo.load_balancer
    assert [p for p, _ in state.pools] == [2376, 2377]
    listeners = {li.protocol_port: li for li in lbs.listeners(loadbalancer_id=state.lb_id)}
    assert sorted(listeners) == [2376, 2377]
    assert listeners[2376].allowed_cidrs == ["192.0.2.0/24"]
    assert sorted(listeners[2377].allowed_cidrs) == ["10.21.0.0/24", "192.0.2.0/24"]
    for kind in ("listener", "pool", "health_monitor"):
        assert ledger.count(kind) == 2, kind
    sg = cc.ensure_security_groups(prefix, cid, RULES, [])
    port = cc.ensure_port(prefix, cid, model.node_name(prefix, model.MASTER, 0), network_id=net.network_id,
                          subnet_id=subnet_id, security_group_ids=[sg["master"]])
    members = {"m0": str(port.ip)}
    await wait_for(lambda: cc.ensure_lb_members(state, members, 2376), timeout=30, message="members on both")
    for port_number, pool_id in state.pools:
        assert [(m.address, m.protocol_port) for m in lbs.members(pool_id)] == [(str(port.ip), port_number)]
    await teardown(cc, prefix, cid, ledger)


async def test_server_boots_with_port_volume_group_and_zone_and_gets_a_floating_ip(
    cc: ClusterCloud, demo: openstack.connection.Connection, ledger: Ledger
) -> None:
    prefix, cid = cluster("t-full")
    net = cc.ensure_network(prefix, cid, fixed_network=None, fixed_subnet=None, external_network="public",
                            cidr="10.30.0.0/24", dns_nameserver=None)
    assert net.subnet_id and net.router_id
    groups = cc.ensure_security_groups(prefix, cid, RULES, [])
    group = cc.ensure_server_group(prefix, cid, "soft-anti-affinity")
    assert cc.ensure_server_group(prefix, cid, "soft-anti-affinity") == group
    name = model.node_name(prefix, model.MASTER, 0)
    port = cc.ensure_port(prefix, cid, name, network_id=net.network_id, subnet_id=net.subnet_id,
                          security_group_ids=[groups["master"]])
    assert cc.ensure_port(prefix, cid, name, network_id=net.network_id, subnet_id=net.subnet_id,
                          security_group_ids=[groups["master"]]) == port
    assert port.ip and port.ip.startswith("10.30.0.")
    vol = cc.ensure_volume(prefix, cid, f"{name}-etcd", size_gb=2, availability_zone="nova")
    assert vol.status in ("creating", "available")
    vol = await wait_for(lambda: (v := cc.ensure_volume(prefix, cid, f"{name}-etcd", size_gb=2)).status
                         == "available" and v, timeout=30, message="the volume is available")
    for kind in ("server_group", "volume"):
        assert ledger.count(kind) == 1, kind
    assert [r["name"] for r in ledger.new("port")].count(name) == 1  # beside the router's interface and gateway

    image = cc.image("ubuntu-22.04")
    flavor = cc.flavor("m1.tiny")
    sid = cc.create_server(name=name, flavor_id=flavor.id, image_id=image, port_id=port.id, key_name=None,
                           metadata={"cove_cluster_id": cid, "cove_role": "master", "cove_node": name},
                           user_data="#cloud-config\n", volume_ids=[vol.id], server_group=group,
                           availability_zone="nova")
    await wait_for(lambda: demo.compute.get_server(sid).status == "ACTIVE", timeout=30, message="server ACTIVE")
    server = demo.compute.get_server(sid)
    assert server.availability_zone == "nova"
    assert [ip for ips in model.addresses_of(server.addresses).values() for ip in ips] == [port.ip]
    assert {sg["name"] for sg in server.security_groups} == {role_security_group_name(prefix, "master")}
    assert sid in demo.compute.get_server_group(group).member_ids
    assert demo.compute.get_server_group(group).name == server_group_name(prefix)
    await wait_for(lambda: demo.block_storage.get_volume(vol.id).status == "in-use", timeout=30,
                   message="the volume is in-use")
    attachments = demo.block_storage.get_volume(vol.id).attachments
    assert [a["server_id"] for a in attachments] == [sid]
    assert [a["id"] for a in server.attached_volumes] == [vol.id]
    again = cc.ensure_volume(prefix, cid, f"{name}-etcd", size_gb=2)
    assert (again.id, again.status, again.size_gb) == (vol.id, "in-use", 2)
    assert again.created_at is not None and vol.created_at is not None  # found: Cinder's time; made: the call's

    made = cc.ensure_floating_ip(prefix, cid, external_network="public", port_id=port.id, name="api")
    found = cc.ensure_floating_ip(prefix, cid, external_network="public", port_id=port.id, name="api")
    address = made.address
    assert (found.id, found.address) == (made.id, address) and found.created_at is not None
    assert ledger.count("floating_ip") == 1
    fip = next(demo.network.ips(floating_ip_address=address))
    assert fip.port_id == port.id and fip.fixed_ip_address == port.ip and model.cluster_tag(cid) in fip.tags
    assert address.startswith("127.24.4.")  # the devcloud's pool is loopback (never connected to all the same)

    # a worker on the network (Nova makes its port, in the worker group given by id), then its floating IP
    worker = model.node_name(prefix, model.WORKER, 0)
    wid = cc.create_server(name=worker, flavor_id=flavor.id, image_id=image, network_id=net.network_id,
                           security_group_ids=[groups["worker"]], key_name=None,
                           metadata={"cove_cluster_id": cid, "cove_role": "worker", "cove_node": worker},
                           user_data="#cloud-config\n")
    await wait_for(lambda: demo.compute.get_server(wid).status == "ACTIVE", timeout=30, message="worker ACTIVE")
    assert {sg["name"] for sg in demo.compute.get_server(wid).security_groups} == {
        role_security_group_name(prefix, "worker")}
    wport = cc.server_port(wid)
    assert wport is not None and wport.ip and wport.ip.startswith("10.30.0.") and wport.id != port.id
    assert cc.server_port(str(uuid.uuid4())) is None
    waddress = cc.ensure_floating_ip(prefix, cid, external_network="public", port_id=wport.id,
                                     name=f"{worker}-fip").address
    assert waddress != address and ledger.count("floating_ip") == 2
    assert {s.name for s in cc.list_servers(prefix, cid)} == {name, worker}

    # while the servers live, teardown leaves what they hold (the ports, the volume) and says so
    assert cc.delete_cluster_resources(prefix, cid) is False
    assert demo.block_storage.get_volume(vol.id).status == "in-use"
    assert demo.network.get_port(port.id).device_id == sid
    # servers are the reconciler's to delete; then everything goes
    for server_id in (sid, wid):
        cc.delete_server(server_id)
    await wait_for(lambda: not cc.list_servers(prefix, cid), timeout=30, message="servers gone")
    await teardown(cc, prefix, cid, ledger)
    assert {r["kind"] for r in ledger.new()} >= {
        "network", "subnet", "router", "port", "security_group", "server_group", "volume", "floating_ip", "server"}


async def test_teardown_of_a_half_built_cluster(
    devcloud: Devcloud, cc: ClusterCloud, admin: openstack.connection.Connection, ledger: Ledger
) -> None:
    """A create that stopped half-way: a network, a load balancer still PENDING_CREATE and a volume still
    creating. Teardown waits them out and takes everything."""
    prefix, cid = cluster("t-half")
    with time_factor(devcloud.url, admin, 0.1):
        net = cc.ensure_network(prefix, cid, fixed_network=None, fixed_subnet=None, external_network="public",
                                cidr="10.40.0.0/24", dns_nameserver=None)
        assert net.subnet_id is not None
        lb = cc.ensure_load_balancer(prefix, cid, subnet_id=net.subnet_id, api_port=6443, allowed_cidrs=[])
        vol = cc.ensure_volume(prefix, cid, "docker", size_gb=1)
        assert lb.provisioning_status == "PENDING_CREATE" and vol.status == "creating"
        assert cc.delete_cluster_resources(prefix, cid) is False  # the load balancer and volume are not done
        await teardown(cc, prefix, cid, ledger)
    assert {r["kind"] for r in ledger.new()} >= {"network", "subnet", "router", "load_balancer", "volume", "port"}


async def test_a_cluster_with_nothing_yet_deletes_at_once(cc: ClusterCloud, ledger: Ledger) -> None:
    prefix, cid = cluster("t-none")
    assert cc.delete_cluster_resources(prefix, cid) is True
    assert ledger.live_new() == []


async def test_transient_answers_are_retried_and_bounded(
    devcloud: Devcloud, cc: ClusterCloud, admin: openstack.connection.Connection, ledger: Ledger
) -> None:
    url = devcloud.url
    prefix, cid = cluster("t-retry")
    # two 503s on the group create, then service: the step succeeds
    admin_call(url, admin, "POST", "/admin/faults/api", json={
        "service": "network", "method": "POST", "path": "/security-groups$", "status": 503, "count": 2})
    try:
        groups = cc.ensure_security_groups(prefix, cid, RULES, [])
        assert set(groups) == {"master", "worker"}
        assert all(f["count"] == 0 for f in admin_call(url, admin, "GET", "/admin/faults")["api"])
        # a server that keeps failing: as many tries as the policy allows, then a non-permanent error
        admin_call(url, admin, "PUT", "/admin/faults", json={"api": [
            {"service": "network", "method": "GET", "path": "/ports$", "status": 502, "count": -1}]})
        before = stats(url, admin)["by_status"].get("502", 0)
        with pytest.raises(CloudError) as err:
            cc.ensure_port(prefix, cid, "x", network_id="unused", subnet_id=None, security_group_ids=[])
        assert not err.value.permanent and f"after {FAST.attempts} tries" in err.value.reason
        assert stats(url, admin)["by_status"].get("502", 0) - before == FAST.attempts
    finally:
        admin_call(url, admin, "DELETE", "/admin/faults")
    await teardown(cc, prefix, cid, ledger)


async def test_a_write_to_a_pending_load_balancer_waits_out_octavias_409(
    devcloud: Devcloud, demo: openstack.connection.Connection, admin: openstack.connection.Connection,
    ledger: Ledger,
) -> None:
    """Octavia's "immutable" 409 while a load balancer is PENDING_* is transient: the request is sent again
    after a back-off until Octavia takes it (here a listener sent right after the load balancer's create)."""
    patient = ClusterCloud(demo, retry=RetryPolicy(attempts=12, base=0.05, cap=0.4))
    prefix, cid = cluster("t-409")
    net = patient.ensure_network(prefix, cid, fixed_network=None, fixed_subnet=None, external_network=None,
                                 cidr="10.70.0.0/24", dns_nameserver=None)
    assert net.subnet_id is not None
    subnet_id = net.subnet_id
    with time_factor(devcloud.url, admin, 0.1):
        lb = patient.ensure_load_balancer(prefix, cid, subnet_id=subnet_id, api_port=6443, allowed_cidrs=[])
        assert lb.provisioning_status == "PENDING_CREATE"
        before = stats(devcloud.url, admin)["by_status"].get("409", 0)
        listener = patient._api("Creating a listener", lambda: demo.load_balancer.create_listener(
            name=f"{prefix}-api-listener", loadbalancer_id=lb.lb_id, protocol="TCP", protocol_port=6443,
            tags=[model.cluster_tag(cid)]), idempotent=False)
        assert listener.provisioning_status == "PENDING_CREATE"
        assert stats(devcloud.url, admin)["by_status"].get("409", 0) > before  # it was refused, then taken
        # the step finds the listener it did not make itself, and goes on from there
        state = await wait_for(lambda: (s := patient.ensure_load_balancer(
            prefix, cid, subnet_id=subnet_id, api_port=6443, allowed_cidrs=[])).ready and s,
            timeout=30, message="the load balancer is ready")
        assert state.listener_id == listener.id and ledger.count("listener") == 1
        await teardown(patient, prefix, cid, ledger)


async def test_a_quota_is_permanent_and_not_retried(devcloud: Devcloud, admin: openstack.connection.Connection) -> None:
    """The alt project runs out of floating IPs: one request, a reason the user can act on."""
    url = devcloud.url
    alt = user_connection(url, "alt")
    cc = ClusterCloud(alt, retry=FAST)
    ledger = Ledger(url, admin, alt.current_project_id)
    prefix, cid = cluster("t-quota")
    net = cc.ensure_network(prefix, cid, fixed_network=None, fixed_subnet=None, external_network="public",
                            cidr="10.50.0.0/24", dns_nameserver=None)
    port = cc.ensure_port(prefix, cid, "master-0", network_id=net.network_id, subnet_id=net.subnet_id,
                          security_group_ids=[])
    admin_call(url, admin, "PUT", f"/networking/v2.0/quotas/{alt.current_project_id}",
               json={"quota": {"floatingip": 0}})
    try:
        before = stats(url, admin)["by_status"].get("409", 0)
        with pytest.raises(CloudError) as err:
            cc.ensure_floating_ip(prefix, cid, external_network="public", port_id=port.id, name="api")
        assert err.value.permanent
        assert "Quota exceeded for floating IPs" in err.value.reason, err.value.reason
        assert stats(url, admin)["by_status"].get("409", 0) - before == 1
    finally:
        admin_call(url, admin, "DELETE", f"/networking/v2.0/quotas/{alt.current_project_id}")
    await teardown(cc, prefix, cid, ledger)


def test_classify_reads_status_and_retry_after() -> None:
    def http(status: int, message: str, **headers: str) -> exceptions.HttpException:
        response = requests.Response()
        response.status_code = status
        response.headers.update(headers)
        return exceptions.HttpException(message=message, response=response, details=message)

    assert classify(http(429, "Rate limit exceeded"))
    assert classify(http(413, "Too many requests", **{"Retry-After": "2"}))
    assert not classify(http(413, "VolumeLimitExceeded: Maximum number of volumes allowed (10) exceeded"))
    assert classify(http(409, "Load Balancer x is immutable and cannot be updated."))
    assert not classify(http(409, "Quota exceeded for resources: ['floatingip']."))
    assert not classify(http(409, "Security group rule already exists."))
    assert classify(http(503, "Service Unavailable"))
    assert classify(http(500, "oops")) and not classify(http(500, "oops"), idempotent=False)
    for status in (400, 401, 403, 404):
        assert not classify(http(status, "no"))


# ------------------------------------------------------------------------------- a rate-limited cloud of our own


@pytest.fixture(scope="module")
def limited_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devcloud]:
    workdir = tmp_path_factory.mktemp("devcloud-rate")
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["timing"]["api_rate_limit"] = 10
    config = workdir / "cloud.yaml"
    config.write_text(yaml.safe_dump(raw))
    cloud = start_devcloud(workdir, time_factor=0.01, config=config)
    try:
        yield cloud
    finally:
        stop_process(cloud.process)


async def test_a_rate_limited_cloud_is_retried_and_succeeds(limited_cloud: Devcloud) -> None:
    url = limited_cloud.url
    cc = ClusterCloud(user_connection(url), retry=RetryPolicy(attempts=8, base=0.1, cap=1.0))
    admin = admin_connection(url)
    project_id = cc.conn.current_project_id
    ledger = Ledger(url, admin, project_id)
    prefix, cid = cluster("t-rate")
    # dozens of requests in a burst against 10 per second
    net = cc.ensure_network(prefix, cid, fixed_network=None, fixed_subnet=None, external_network="public",
                            cidr="10.60.0.0/24", dns_nameserver=None)
    groups = cc.ensure_security_groups(prefix, cid, RULES, ["192.0.2.0/24", "198.51.100.0/24"])
    ports = [cc.ensure_port(prefix, cid, f"node-{i}", network_id=net.network_id, subnet_id=net.subnet_id,
                            security_group_ids=[groups["worker"]]) for i in range(4)]
    assert len({p.id for p in ports}) == 4
    await teardown(cc, prefix, cid, ledger)
    assert stats(url, admin)["by_status"].get("429", 0) > 0  # the limit did bite, and every step came through


def direct_reconciler(cc: ClusterCloud) -> Any:
    """What billing's Nova questions use of a Reconciler: ``cloud.call(trust, fn)``, run here on ``cc`` directly."""

    class Calls:
        async def call(self, trust: str, fn: Any) -> Any:
            return fn(cc)

    return SimpleNamespace(cloud=Calls())


async def test_a_server_deleted_while_no_task_watched_is_billed_to_its_deletion_at_the_cloud(
    cc: ClusterCloud, demo: openstack.connection.Connection, ledger: Ledger
) -> None:
    """billing.server_ends: a restarted provisioner that finds a server gone bills it until Nova's
    terminated_at (the ledger's deletion time), not until its own listing; an id Nova never deleted keeps the
    listing's time."""
    prefix, cid = cluster("t-ends")
    net = cc.ensure_network(prefix, cid, fixed_network=None, fixed_subnet=None, external_network=None,
                            cidr="10.31.0.0/24", dns_nameserver=None)
    image = cc.image("ubuntu-22.04")
    name = model.node_name(prefix, model.WORKER, 0)
    sid = cc.create_server(name=name, flavor_id=cc.flavor("m1.tiny").id, image_id=image, network_id=net.network_id,
                           security_group_ids=[], key_name=None, user_data="#cloud-config\n",
                           metadata={"cove_cluster_id": cid, "cove_role": "worker", "cove_node": name})
    await wait_for(lambda: demo.compute.get_server(sid).status == "ACTIVE", timeout=30, message="ACTIVE")
    cc.delete_server(sid)
    await wait_for(lambda: not cc.list_servers(prefix, cid), timeout=30, message="gone")
    await asyncio.sleep(1.5)  # the provisioner "restarts": it looks only now
    listed_at = billing.now()

    r = direct_reconciler(cc)
    row = SimpleNamespace(uuid=cid, trust_id="trust", project_id=None)
    never = str(uuid.uuid4())
    ends = await billing.server_ends(r, row, [sid, never], listed_at)  # type: ignore[arg-type]
    deleted_at = datetime.fromisoformat(next(x for x in ledger.new("server") if x["id"] == sid)["deleted_at"])
    assert abs((ends[sid] - deleted_at).total_seconds()) < 0.5, (ends[sid], deleted_at)
    assert (listed_at - ends[sid]).total_seconds() > 1.0
    assert ends[never] == listed_at
    await teardown(cc, prefix, cid, ledger)


async def test_a_found_servers_start_is_asked_again_when_nova_answers_500(
    devcloud: Devcloud, cc: ClusterCloud, demo: openstack.connection.Connection,
    admin: openstack.connection.Connection, ledger: Ledger,
) -> None:
    """billing.server_starts: a server a task found without its NodeCreated (the task that made it lost its emit to
    a NATS node's kill) is billed from Nova's ``created``. Nova answering the show with a 500 once was read as no
    time, and the server billed from when it was found (make chaos: 4.2 s short); it is asked again. The time is the
    middle of what Nova's whole second allows, within a second of the ledger's, never the moment it was found."""
    prefix, cid = cluster("t-starts")
    net = cc.ensure_network(prefix, cid, fixed_network=None, fixed_subnet=None, external_network=None,
                            cidr="10.32.0.0/24", dns_nameserver=None)
    name = model.node_name(prefix, model.WORKER, 0)
    sid = cc.create_server(name=name, flavor_id=cc.flavor("m1.tiny").id, image_id=cc.image("ubuntu-22.04"),
                           network_id=net.network_id, security_group_ids=[], key_name=None,
                           user_data="#cloud-config\n",
                           metadata={"cove_cluster_id": cid, "cove_role": "worker", "cove_node": name})
    await asyncio.sleep(1.5)  # found later, by another task

    r = direct_reconciler(cc)
    row = SimpleNamespace(uuid=cid, trust_id="trust", project_id=None)
    admin_call(devcloud.url, admin, "PUT", "/admin/faults", json={"api": [
        {"service": "compute", "method": "GET", "path": f"/servers/{sid}$", "status": 500, "count": 2}]})
    try:
        found_at = billing.now()
        starts = await billing.server_starts(r, row, [sid, str(uuid.uuid4())])  # type: ignore[arg-type]
    finally:
        admin_call(devcloud.url, admin, "DELETE", "/admin/faults")
    created = datetime.fromisoformat(next(x for x in ledger.new("server") if x["id"] == sid)["created_at"])
    assert list(starts) == [sid]  # the other id Nova does not know: left out
    assert abs((starts[sid] - created).total_seconds()) <= 0.75, (starts[sid], created)
    assert (found_at - starts[sid]).total_seconds() > 1.0
    cc.delete_server(sid)
    await wait_for(lambda: not cc.list_servers(prefix, cid), timeout=30, message="gone")
    await teardown(cc, prefix, cid, ledger)


def test_a_resource_is_made_in_the_middle_of_what_its_call_and_the_clouds_time_allow() -> None:
    """cloud.made_at: the middle of the create call, narrowed by the cloud's own ``created``: exact to the
    microsecond, or a whole second (Nova) allowing [s - 0.5, s + 1); a cloud's time that does not meet the call (a
    clock apart from ours) is left aside."""
    t = datetime(2026, 1, 1, 12, 0, 0, 300_000, tzinfo=UTC)
    ms = timedelta(milliseconds=1)
    assert made_at(t, t + 10 * ms) == t + 5 * ms
    assert made_at(t, t + 10 * ms, None) == t + 5 * ms
    # A call that hung 4 s after the server was made at t: Nova says 12:00:00, which allows [11:59:59.5, 12:00:01).
    nova = "2026-01-01T12:00:00Z"
    got = made_at(t - 100 * ms, t + timedelta(seconds=4), nova)
    assert got == datetime(2026, 1, 1, 12, 0, 0, 600_000, tzinfo=UTC)  # the middle of [.200, 1.000): 0.3 s off
    assert made_at(t - 100 * ms, t + timedelta(seconds=4)) == t + timedelta(seconds=1.95)  # the call alone: 1.65 s
    # The cloud's microsecond time is the time.
    assert made_at(t - ms, t + timedelta(seconds=4), "2026-01-01T12:00:00.300000") == t
    # Far from the call: the call alone.
    assert made_at(t, t + 10 * ms, "2025-06-01T00:00:00Z") == t + 5 * ms
    # A call answered before it was sent (a clock stepped back): its start.
    assert made_at(t, t - ms) == t
