"""Load balancer (Octavia v2) through real openstacksdk and the `openstack` CLI: provisioning PENDING_* -> ACTIVE,
409 immutability, the full chain with parent linkage, status tree, cascade delete, quotas, policy and ERROR
injection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openstack
import pytest
from openstack import exceptions

from tests.conftest import Devcloud

OPENSTACK = str(Path(sys.executable).with_name("openstack"))
W = {"wait": 20, "interval": 0.05}


def cli(*args: str) -> Any:
    out = subprocess.run([OPENSTACK, "--os-cloud", "cove-demo", *args], check=False, capture_output=True,
                         text=True, timeout=90, env=os.environ.copy())
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if "-f" in args else out.stdout


def admin_put(devcloud: Devcloud, path: str, body: dict[str, Any]) -> None:
    admin = openstack.connect(cloud="cove-admin")
    resp = admin.session.put(f"{devcloud.url}{path}", json=body)
    assert resp.status_code == 200


@pytest.fixture(scope="module")
def subnet(devcloud: Devcloud) -> Iterator[Any]:
    conn = openstack.connect(cloud="cove-demo")
    net = conn.network.create_network(name="test-lb-net")
    sub = conn.network.create_subnet(network_id=net.id, cidr="10.42.0.0/24", ip_version=4, name="test-lb-subnet")
    yield sub
    conn.network.delete_subnet(sub)
    conn.network.delete_network(net)


def test_versions_and_both_prefixes(devcloud: Devcloud) -> None:
    conn = openstack.connect(cloud="cove-demo")
    assert conn.load_balancer.get_endpoint() == f"{devcloud.url}/load-balancer/v2.0"
    root = conn.session.get(f"{devcloud.url}/load-balancer/").json()
    assert root["versions"][-1]["id"] == "v2.27" and root["versions"][-1]["status"] == "CURRENT"
    for prefix in ("v2", "v2.0"):
        resp = conn.session.get(f"{devcloud.url}/load-balancer/{prefix}/lbaas/loadbalancers")
        assert resp.json() == {"loadbalancers": [], "loadbalancers_links": []} or "loadbalancers" in resp.json()
    assert {p.name for p in conn.load_balancer.providers()} >= {"amphora"}


def test_full_chain_immutability_status_and_cascade(devcloud: Devcloud, subnet: Any) -> None:
    conn = openstack.connect(cloud="cove-demo")
    # the cloud at its own pace (3 to 6 s to make a load balancer): at the session's time factor (30 to 60 ms) a
    # loaded machine sent the next write after the load balancer had gone ACTIVE (CI, once)
    admin_put(devcloud, "/admin/timing", {"time_factor": 1.0})
    try:
        lb = conn.load_balancer.create_load_balancer(name="test-lb-chain", vip_subnet_id=subnet.id)
    finally:
        admin_put(devcloud, "/admin/timing", {"time_factor": 0.01})
    assert lb.provisioning_status == "PENDING_CREATE" and lb.operating_status == "OFFLINE"
    assert lb.vip_address and lb.vip_address.startswith("10.42.0.")
    vip = conn.network.get_port(lb.vip_port_id)
    assert vip.device_owner == "Octavia" and vip.device_id == lb.id
    # writes while PENDING_* are refused
    with pytest.raises(exceptions.ConflictException, match="immutable"):
        conn.load_balancer.create_listener(name="too-early", protocol="TCP", protocol_port=80,
                                           loadbalancer_id=lb.id)
    lb = conn.load_balancer.wait_for_load_balancer(lb.id, **W)
    assert lb.provisioning_status == "ACTIVE" and lb.operating_status == "ONLINE"

    # slow the cloud down so that "immediately" is reliably inside the PENDING window
    admin_put(devcloud, "/admin/timing", {"time_factor": 1.0})
    try:
        listener = conn.load_balancer.create_listener(name="test-l", protocol="TCP", protocol_port=6443,
                                                      loadbalancer_id=lb.id)
        with pytest.raises(exceptions.ConflictException):
            conn.load_balancer.create_pool(name="test-p", protocol="TCP", lb_algorithm="ROUND_ROBIN",
                                           listener_id=listener.id)
    finally:
        admin_put(devcloud, "/admin/timing", {"time_factor": 0.01})
    assert listener.load_balancers == [{"id": lb.id}]
    conn.load_balancer.wait_for_load_balancer(lb.id, **W)
    pool = conn.load_balancer.create_pool(name="test-p", protocol="TCP", lb_algorithm="ROUND_ROBIN",
                                          listener_id=listener.id)
    assert pool.loadbalancers == [{"id": lb.id}] and pool.listeners == [{"id": listener.id}]
    conn.load_balancer.wait_for_load_balancer(lb.id, **W)
    member = conn.load_balancer.create_member(pool, address="10.42.0.50", protocol_port=6443,
                                              subnet_id=subnet.id)
    conn.load_balancer.wait_for_load_balancer(lb.id, **W)
    assert conn.load_balancer.get_member(member, pool).operating_status == "NO_MONITOR"
    with pytest.raises(exceptions.ConflictException):
        conn.load_balancer.create_member(pool, address="10.42.0.50", protocol_port=6443, subnet_id=subnet.id)
    hm = conn.load_balancer.create_health_monitor(pool_id=pool.id, type="TCP", delay=5, timeout=3,
                                                  max_retries=3)
    assert hm.pools == [{"id": pool.id}]
    conn.load_balancer.wait_for_load_balancer(lb.id, **W)
    assert conn.load_balancer.get_member(member, pool).operating_status == "ONLINE"

    lb = conn.load_balancer.get_load_balancer(lb.id)
    assert lb.listeners == [{"id": listener.id}] and lb.pools == [{"id": pool.id}]
    assert conn.load_balancer.get_listener(listener.id).default_pool_id == pool.id
    assert conn.load_balancer.get_pool(pool.id).health_monitor_id == hm.id
    tree = conn.load_balancer.get(f"/lbaas/loadbalancers/{lb.id}/status").json()["statuses"]["loadbalancer"]
    tpool = tree["listeners"][0]["pools"][0]
    assert tpool["members"][0]["id"] == member.id and tpool["health_monitor"]["id"] == hm.id
    assert conn.load_balancer.get_load_balancer_statistics(lb.id).active_connections == 0

    with pytest.raises(exceptions.BadRequestException, match="children"):
        conn.load_balancer.delete_load_balancer(lb)
    conn.load_balancer.delete_load_balancer(lb, cascade=True)
    conn.load_balancer.wait_for_delete(lb, **W)
    for getter, oid in ((conn.load_balancer.get_listener, listener.id), (conn.load_balancer.get_pool, pool.id),
                        (conn.load_balancer.get_health_monitor, hm.id)):
        with pytest.raises(exceptions.NotFoundException):
            getter(oid)
    with pytest.raises(exceptions.NotFoundException):
        conn.network.get_port(lb.vip_port_id)
    admin = openstack.connect(cloud="cove-admin")
    records = {r["id"]: r for r in admin.session.get(f"{devcloud.url}/admin/ledger").json()["records"]}
    for oid in (lb.id, listener.id, pool.id, member.id, hm.id):
        assert records[oid]["deleted_at"] is not None


def test_isolation_policy_paging_and_quota(devcloud: Devcloud, subnet: Any) -> None:
    demo = openstack.connect(cloud="cove-demo")
    alt = openstack.connect(cloud="cove-alt")
    viewer = openstack.connect(cloud="cove-viewer")
    admin = openstack.connect(cloud="cove-admin")
    pid = demo.current_project_id
    with pytest.raises(exceptions.ForbiddenException):
        viewer.load_balancer.create_load_balancer(name="test-lb-reader", vip_subnet_id=subnet.id)
    lbs = [demo.load_balancer.create_load_balancer(name=f"test-lb-page-{i}", vip_subnet_id=subnet.id)
           for i in range(3)]
    try:
        with pytest.raises(exceptions.NotFoundException):
            alt.load_balancer.get_load_balancer(lbs[0].id)
        assert viewer.load_balancer.get_load_balancer(lbs[0].id).id == lbs[0].id
        # (the session's devcloud is shared with other modules' clusters in this project: only ours are counted)
        paged = [lb.id for lb in demo.load_balancer.load_balancers(limit=1) if lb.name.startswith("test-lb-page-")]
        assert sorted(paged) == sorted(lb.id for lb in lbs)
        first = demo.load_balancer.get("/lbaas/loadbalancers?limit=1").json()
        assert first["loadbalancers_links"][0]["rel"] == "next"
        assert [lb.id for lb in demo.load_balancer.load_balancers(name="test-lb-page-1")] == [lbs[1].id]
        quota = admin.session.put(f"{devcloud.url}/load-balancer/v2/lbaas/quotas/{pid}",
                                  json={"quota": {"load_balancer": 3}})
        assert quota.json()["quota"]["load_balancer"] == 3
        with pytest.raises(exceptions.ForbiddenException, match="Quota has been met"):
            demo.load_balancer.create_load_balancer(name="test-lb-over", vip_subnet_id=subnet.id)
        assert demo.load_balancer.get_quota(pid).load_balancers == 3
    finally:
        admin.session.delete(f"{devcloud.url}/load-balancer/v2/lbaas/quotas/{pid}")
        for lb in lbs:
            demo.load_balancer.wait_for_load_balancer(lb.id, **W)
            demo.load_balancer.delete_load_balancer(lb)
        for lb in lbs:
            demo.load_balancer.wait_for_delete(lb, **W)


def test_injected_failure_goes_to_error(devcloud: Devcloud, subnet: Any) -> None:
    conn = openstack.connect(cloud="cove-demo")
    admin_put(devcloud, "/admin/faults", {"lb_failure_rate": 1.0})
    try:
        lb = conn.load_balancer.create_load_balancer(name="test-lb-error", vip_subnet_id=subnet.id)
        with pytest.raises(exceptions.ResourceFailure):
            conn.load_balancer.wait_for_load_balancer(lb.id, **W)
    finally:
        admin_put(devcloud, "/admin/faults", {"lb_failure_rate": 0.0})
    assert conn.load_balancer.get_load_balancer(lb.id).provisioning_status == "ERROR"
    conn.load_balancer.delete_load_balancer(lb)  # an ERROR load balancer may be deleted
    conn.load_balancer.wait_for_delete(lb, **W)


def test_cli_chain(devcloud: Devcloud, subnet: Any) -> None:
    lb = cli("loadbalancer", "create", "--name", "test-lb-cli", "--vip-subnet-id", subnet.id, "--wait",
             "-f", "json")
    assert lb["name"] == "test-lb-cli"
    cli("loadbalancer", "listener", "create", "--name", "test-cli-l", "--protocol", "TCP", "--protocol-port",
        "6443", "--wait", "test-lb-cli", "-f", "json")
    cli("loadbalancer", "pool", "create", "--name", "test-cli-p", "--protocol", "TCP", "--lb-algorithm",
        "ROUND_ROBIN", "--listener", "test-cli-l", "--wait", "-f", "json")
    cli("loadbalancer", "member", "create", "--address", "10.42.0.5", "--protocol-port", "6443", "--subnet-id",
        subnet.id, "--wait", "test-cli-p", "-f", "json")
    cli("loadbalancer", "healthmonitor", "create", "--delay", "5", "--timeout", "3", "--max-retries", "3",
        "--type", "TCP", "--wait", "test-cli-p", "-f", "json")
    status = json.loads(cli("loadbalancer", "status", "show", "test-lb-cli"))  # always prints JSON
    assert status["loadbalancer"]["provisioning_status"] == "ACTIVE"
    assert status["loadbalancer"]["listeners"][0]["pools"][0]["members"][0]["address"] == "10.42.0.5"
    cli("loadbalancer", "delete", "--cascade", "--wait", "test-lb-cli")
    conn = openstack.connect(cloud="cove-demo")
    with pytest.raises(exceptions.NotFoundException):
        conn.load_balancer.get_load_balancer(lb["id"])
