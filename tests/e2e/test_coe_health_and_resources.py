"""Issue 13's last two pieces end to end, through every service and the devcloud: the COE's own health check (the
provisioner asks the cluster's kube-apiserver stand-in for ``/healthz`` and ``/api/v1/nodes`` with its client
certificate, as Magnum's monitor does) and the watch of a cluster's load balancer and volumes. Faults are injected
in the devcloud (``/admin/faults/coe``, ``/load_balancers``, ``/volumes``) and must surface in ``cluster show``'s
``health_status_reason``, naming the node, the API or the resource; none of them replaces a node. (How fast the
watch sees a change: benchmarks/watch.py; here only generous deadlines.)"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from deploy.local.stack import LocalStack
from services.provisioner import model
from tests.conftest import wait_for
from tests.e2e.test_cluster_lifecycle import http, osc, token
from tests.e2e.test_health_and_healing import health, make_cluster, servers_of
from tests.stacks import module_stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ENV = {"COVE_PROVISIONER_WATCH_INTERVAL": "0.2", "COVE_PROVISIONER_API_CHECK_INTERVAL": "1",
       "COVE_PROVISIONER_API_CHECK_TIMEOUT": "3", "COVE_PROVISIONER_WATCH_RESOURCES_INTERVAL": "0.5",
       "COVE_PROVISIONER_WATCH_VOLUME_SWEEP": "2"}


stack = module_stack("coe-health", ENV, time_factor=0.05)


@pytest.fixture(scope="module")
async def tokens(stack: LocalStack) -> dict[str, str]:
    return {"demo": await token(stack, "demo", "demo-pass", "demo"),
            "admin": await token(stack, "admin", "admin-pass", "admin")}


async def fault(stack: LocalStack, admin: str, kind: str, body: dict[str, Any]) -> None:
    status, answer = await http("POST", f"{stack.devcloud_url}/admin/faults/{kind}", admin, body)
    assert status == 201, answer


async def reason_where(stack: LocalStack, demo: str, cid: str, what: str, test: Any) -> dict[str, Any]:
    """Wait until the cluster's health_status_reason passes ``test``; returns the cluster as shown."""
    async def check() -> dict[str, Any] | None:
        shown = await health(stack, demo, cid)
        return shown if test(shown.get("health_status_reason") or {}, shown) else None

    return await wait_for(check, timeout=60, interval=0.3, message=what)


async def test_the_coe_health_check_names_a_not_ready_node_and_a_failing_api(
        stack: LocalStack, tokens: dict[str, str]) -> None:
    demo, admin = tokens["demo"], tokens["admin"]
    cluster = await make_cluster(stack, demo, healing=True, node_count=2)
    cid = cluster["uuid"]
    before = {r["id"] for r in await servers_of(stack, admin, cluster)}
    worker = min(r["name"] for r in await servers_of(stack, admin, cluster) if "-node-" in r["name"])

    # the kubelet of a worker whose server runs reports NotReady: the node is named, in Kubernetes' words
    await fault(stack, admin, "coe", {"cluster_id": cid, "not_ready": [worker.lower()]})
    shown = await reason_where(stack, demo, cid, "the NotReady node in health_status_reason",
                               lambda r, _: r.get(f"{worker}.Ready") == "False")
    assert shown["health_status"] == "UNHEALTHY"
    assert shown["health_status_reason"][f"{worker}.reason"].startswith(
        "Kubernetes reports the node Ready=False (KubeletNotReady"), shown["health_status_reason"]
    assert shown["health_status_reason"]["api"] == "ok"  # the API passed its check, as Magnum's monitor shows it

    # the API server's /healthz fails: "api" says how (from the second failing check on), the nodes are judged by
    # their servers again (the provisioner reads no node list from an unhealthy API)
    await fault(stack, admin, "coe", {"cluster_id": cid, "api_status": 500})
    shown = await reason_where(stack, demo, cid, "the failing API in health_status_reason",
                               lambda r, _: "api" in r and r.get(f"{worker}.Ready") == "True")
    assert shown["health_status"] == "UNHEALTHY"
    assert shown["health_status_reason"]["api"].startswith("HTTP 500: [-]etcd failed"), shown["health_status_reason"]
    # what a user sees of it: `openstack coe cluster show`
    cli = json.loads(await asyncio.to_thread(osc, stack, "coe", "cluster", "show", cid, "-f", "json"))
    assert cli["health_status"] == "UNHEALTHY", cli
    assert cli["health_status_reason"]["api"].startswith("HTTP 500: [-]etcd failed"), cli
    assert cli["health_status_reason"][f"{worker}.Ready"] == "True", cli

    # cleared: HEALTHY again, in Magnum's shape, and no node was replaced (auto-healing is on, but the COE's verdict
    # alone never replaces a node whose server runs)
    status, _ = await http("DELETE", f"{stack.devcloud_url}/admin/faults", admin)
    assert status == 204
    shown = await reason_where(stack, demo, cid, "HEALTHY again",
                               lambda r, s: s.get("health_status") == "HEALTHY")
    reason = dict(shown["health_status_reason"])
    assert reason.pop("api") == "ok" and all(k.endswith(".Ready") and v == "True" for k, v in reason.items()), reason
    assert {r["id"] for r in await servers_of(stack, admin, cluster)} == before


async def make_lb_cluster(stack: LocalStack, demo: str) -> dict[str, Any]:
    """A Kubernetes cluster with a load balancer in front of its master and a container volume on each node."""
    status, template = await http("POST", f"{stack.api_url}/clustertemplates", demo, {
        "name": f"t-{uuid.uuid4().hex[:6]}", "coe": "kubernetes", "image_id": "fedora-coreos",
        "external_network_id": "public", "flavor_id": "m1.small", "master_flavor_id": "m1.small",
        "floating_ip_enabled": False, "master_lb_enabled": True, "docker_volume_size": 1})
    assert status == 201, template
    status, body = await http("POST", f"{stack.api_url}/clusters", demo, {
        "name": f"r-{uuid.uuid4().hex[:6]}", "cluster_template_id": template["uuid"], "node_count": 2,
        "master_count": 1})
    assert status == 202, body
    cid = body["uuid"]

    async def healthy() -> dict[str, Any] | None:
        status, shown = await http("GET", f"{stack.api_url}/clusters/{cid}", demo)
        assert status == 200 and not shown["status"].endswith("FAILED"), shown
        ok = shown["status"] == "CREATE_COMPLETE" and shown.get("health_status") == "HEALTHY"
        return dict(shown) if ok else None

    return await wait_for(healthy, timeout=150, interval=0.5, message="LB cluster CREATE_COMPLETE and HEALTHY")


async def records(stack: LocalStack, admin: str, cluster: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    status, body = await http("GET", f"{stack.devcloud_url}/admin/ledger?kind={kind}&live=true&project_id="
                              f"{cluster['project_id']}", admin)
    assert status == 200, body
    prefix = model.cluster_prefix(cluster["name"], cluster["uuid"])
    return [r for r in body["records"] if r["name"].startswith(prefix + "-")]


async def test_a_broken_load_balancer_and_volumes_in_error_or_gone_make_the_cluster_unhealthy(
        stack: LocalStack, tokens: dict[str, str]) -> None:
    demo, admin = tokens["demo"], tokens["admin"]
    cluster = await make_lb_cluster(stack, demo)
    cid = cluster["uuid"]
    servers = {r["name"]: r["id"] for r in await servers_of(stack, admin, cluster)}
    workers = sorted(n for n in servers if "-node-" in n)
    [lb] = await records(stack, admin, cluster, "load_balancer")
    volumes = {r["name"]: r for r in await records(stack, admin, cluster, "volume")}
    erred = next(v for v in sorted(volumes) if v.startswith(workers[0] + "-"))
    vanished = next(v for v in sorted(volumes) if v.startswith(workers[1] + "-"))

    # the amphora fails: provisioning_status ERROR, operating_status OFFLINE, named by the load balancer's name
    await fault(stack, admin, "load_balancers", {"name": lb["id"], "provisioning_status": "ERROR",
                                                 "operating_status": "OFFLINE"})
    shown = await reason_where(stack, demo, cid, "the load balancer in health_status_reason",
                               lambda r, _: f"{lb['name']}.status" in r)
    assert shown["health_status"] == "UNHEALTHY"
    assert shown["health_status_reason"][f"{lb['name']}.status"] == (
        "the load balancer is provisioning_status ERROR, operating_status OFFLINE")

    # Octavia repairs it: the reason forgets it
    await fault(stack, admin, "load_balancers", {"name": lb["id"], "provisioning_status": "ACTIVE",
                                                 "operating_status": "ONLINE"})
    await reason_where(stack, demo, cid, "the load balancer's entry cleared",
                       lambda r, _: f"{lb['name']}.status" not in r)

    # a worker's volume goes to error (the changes listing), another's vanishes (the sweep)
    await fault(stack, admin, "volumes", {"name": erred, "action": "error"})
    await fault(stack, admin, "volumes", {"name": vanished, "action": "vanish"})
    shown = await reason_where(stack, demo, cid, "both volumes in health_status_reason",
                               lambda r, _: f"{erred}.status" in r and f"{vanished}.status" in r)
    reason = shown["health_status_reason"]
    assert shown["health_status"] == "UNHEALTHY"
    assert reason[f"{erred}.status"] == f"the volume of server {servers[workers[0]]} is in error", reason
    assert reason[f"{vanished}.status"] == f"the volume of server {servers[workers[1]]} is gone from the cloud", reason
    assert shown["status"] == "CREATE_COMPLETE"  # reported, nothing replaced
    assert {r["id"] for r in await servers_of(stack, admin, cluster)} == set(servers.values())
