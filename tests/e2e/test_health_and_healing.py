"""Day 2 (issue 13) end to end, through every service and the devcloud's fault injection: the provisioner's watch
notices a node the cloud lost, the cluster's health_status turns UNHEALTHY naming it, accounting stops billing it at
the ledger's time; without the label nothing is replaced, with ``auto_healing_enabled`` the node is replaced and the
cluster is HEALTHY again; an availability zone outage replaces at most COVE_PROVISIONER_MAX_REPAIRS_PER_NODEGROUP
nodes of a group at a time. (How fast: benchmarks/watch.py; here only generous deadlines.)"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any

import pytest

from deploy.local.stack import LocalStack
from proto import subjects
from proto.requests import GetUsage, UsageReport
from services.ops import events
from services.provisioner import model
from services.runtime import rpc
from services.runtime.bus import Bus
from tests.conftest import wait_for
from tests.e2e.test_cluster_lifecycle import http, token
from tests.stacks import module_stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ENV = {"COVE_PROVISIONER_WATCH_INTERVAL": "0.2", "COVE_PROVISIONER_MAX_REPAIRS_PER_NODEGROUP": "1"}


stack = module_stack("health", ENV, time_factor=0.05)


@pytest.fixture(scope="module")
async def tokens(stack: LocalStack) -> dict[str, str]:
    return {"demo": await token(stack, "demo", "demo-pass", "demo"),
            "admin": await token(stack, "admin", "admin-pass", "admin")}


async def make_cluster(stack: LocalStack, demo: str, *, healing: bool, node_count: int) -> dict[str, Any]:
    labels = {"auto_healing_enabled": "true"} if healing else {}
    status, template = await http("POST", f"{stack.api_url}/clustertemplates", demo, {
        "name": f"t-{uuid.uuid4().hex[:6]}", "coe": "kubernetes", "image_id": "fedora-coreos",
        "external_network_id": "public", "flavor_id": "m1.small", "master_flavor_id": "m1.small",
        "floating_ip_enabled": False, "labels": labels})
    assert status == 201, template
    name = f"h-{uuid.uuid4().hex[:6]}"
    status, body = await http("POST", f"{stack.api_url}/clusters", demo, {
        "name": name, "cluster_template_id": template["uuid"], "node_count": node_count, "master_count": 1})
    assert status == 202, body
    cid = body["uuid"]

    async def healthy() -> dict[str, Any] | None:
        status, shown = await http("GET", f"{stack.api_url}/clusters/{cid}", demo)
        assert status == 200 and not shown["status"].endswith("FAILED"), shown
        ok = shown["status"] == "CREATE_COMPLETE" and shown.get("health_status") == "HEALTHY"
        return dict(shown) if ok else None

    shown = await wait_for(healthy, timeout=120, interval=0.5, message="cluster CREATE_COMPLETE and HEALTHY")
    reason = dict(shown["health_status_reason"])
    assert reason.pop("api", "ok") == "ok", reason  # once the COE's API was checked, as Magnum shows it
    assert reason and all(k.endswith(".Ready") and v == "True" for k, v in reason.items()), reason
    return shown


async def servers_of(stack: LocalStack, admin: str, cluster: dict[str, Any], *, live: bool | None = True
                     ) -> list[dict[str, Any]]:
    query = "" if live is None else f"&live={'true' if live else 'false'}"
    status, body = await http("GET", f"{stack.devcloud_url}/admin/ledger?kind=server&project_id="
                              f"{cluster['project_id']}{query}", admin)
    assert status == 200, body
    prefix = model.cluster_prefix(cluster["name"], cluster["uuid"])
    return [r for r in body["records"] if r["name"].startswith(prefix + "-")]


async def inject(stack: LocalStack, admin: str, server_id: str, action: str) -> None:
    status, body = await http("POST", f"{stack.devcloud_url}/admin/faults/servers", admin,
                              {"name": server_id, "action": action, "after_seconds": 0})
    assert status == 201, body


async def health(stack: LocalStack, demo: str, cid: str) -> dict[str, Any]:
    status, shown = await http("GET", f"{stack.api_url}/clusters/{cid}", demo)
    assert status == 200, shown
    return dict(shown)


async def server_usage(stack: LocalStack, project_id: str, server_id: str) -> Any:
    bus = await Bus.connect(stack.nats_url, name="e2e-health")
    try:
        reply = await rpc.request(bus.nc, subjects.ACCOUNTING_USAGE, GetUsage(project_id=project_id,
                                                                             group_by="resource"))
        assert isinstance(reply, UsageReport), reply
        return next((r for r in reply.rows if r.resource_id == server_id), None)
    finally:
        await bus.close()


def ledger_time(record: dict[str, Any], status: str) -> datetime:
    if status == "deleted":
        return datetime.fromisoformat(record["deleted_at"])
    return datetime.fromisoformat(next(e["at"] for e in record["events"] if e["status"] == status))


async def test_without_auto_healing_a_failed_node_is_reported_not_replaced(
        stack: LocalStack, tokens: dict[str, str]) -> None:
    demo, admin = tokens["demo"], tokens["admin"]
    cluster = await make_cluster(stack, demo, healing=False, node_count=2)
    before = await servers_of(stack, admin, cluster)
    victim = next(r for r in before if "-node-" in r["name"])
    await inject(stack, admin, victim["id"], "error")

    async def unhealthy() -> dict[str, Any] | None:
        shown = await health(stack, demo, cluster["uuid"])
        return shown if shown.get("health_status") == "UNHEALTHY" else None

    shown = await wait_for(unhealthy, timeout=30, interval=0.2, message="health_status UNHEALTHY")
    reason = shown["health_status_reason"]
    assert reason[f"{victim['name']}.Ready"] == "False" and reason[f"{victim['name']}.reason"] == "Hardware failure"
    assert shown["status"] == "CREATE_COMPLETE"

    # accounting stops billing the lost node at the cloud's time of the failure (the ledger's ERROR)
    record = next(r for r in await servers_of(stack, admin, cluster) if r["id"] == victim["id"])
    try:
        row = await wait_for(lambda: _ended(stack, cluster["project_id"], victim["id"]), timeout=30, interval=0.3,
                             message="the lost node's usage ended")
    except TimeoutError as exc:  # say what the stream holds (was NodeLost emitted?) and what accounting has
        usage_row = await server_usage(stack, cluster["project_id"], victim["id"])
        raise AssertionError(f"{exc}; accounting's row: {usage_row}; the cluster's events: "
                             f"{await _history(stack, cluster['uuid'])}") from exc
    assert abs((row.ended_at - ledger_time(record, "ERROR")).total_seconds()) < 1.0, (row.ended_at, record)

    # nothing is replaced: the ERROR server stays, no new server appears (checked over several watch intervals)
    for _ in range(10):
        await asyncio.sleep(0.3)
        now = await servers_of(stack, admin, cluster, live=None)
        assert {r["id"] for r in now} == {r["id"] for r in before}
    assert (await health(stack, demo, cluster["uuid"]))["health_status"] == "UNHEALTHY"


async def _history(stack: LocalStack, cluster_id: str) -> list[str]:
    bus = await Bus.connect(stack.nats_url, name="e2e-health-history")
    try:
        return [f"{r.seq} {r.env.type} {getattr(r.env.payload, 'node_name', '')}"
                for r in await events.history(bus, cluster_id)]
    finally:
        await bus.close()


async def _ended(stack: LocalStack, project_id: str, server_id: str) -> Any:
    row = await server_usage(stack, project_id, server_id)
    return row if row is not None and row.ended_at is not None else None


async def test_auto_healing_replaces_a_vanished_node(stack: LocalStack, tokens: dict[str, str]) -> None:
    demo, admin = tokens["demo"], tokens["admin"]
    cluster = await make_cluster(stack, demo, healing=True, node_count=2)
    before = await servers_of(stack, admin, cluster)
    victim = next(r for r in before if "-node-" in r["name"])
    await inject(stack, admin, victim["id"], "vanish")

    async def unhealthy() -> dict[str, Any] | None:
        shown = await health(stack, demo, cluster["uuid"])
        return shown if shown.get("health_status") == "UNHEALTHY" else None

    shown = await wait_for(unhealthy, timeout=30, interval=0.1, message="health_status UNHEALTHY")
    assert shown["health_status_reason"][f"{victim['name']}.Ready"] == "False"

    async def replaced() -> list[dict[str, Any]] | None:
        live = await servers_of(stack, admin, cluster)
        same = [r for r in live if r["name"] == victim["name"] and r["status"] == "ACTIVE"]
        shown = await health(stack, demo, cluster["uuid"])
        return same if same and shown.get("health_status") == "HEALTHY" else None

    same = await wait_for(replaced, timeout=90, interval=0.5, message="node replaced and cluster HEALTHY")
    assert same[0]["id"] != victim["id"] and same[0]["flavor"] == victim["flavor"]
    live = await servers_of(stack, admin, cluster)
    assert sorted(r["name"] for r in live) == sorted(r["name"] for r in before)
    shown = await health(stack, demo, cluster["uuid"])
    assert shown["status"] == "CREATE_COMPLETE" and shown["node_count"] == 2

    # billing of the vanished server ended at the ledger's deletion time
    record = next(r for r in await servers_of(stack, admin, cluster, live=False) if r["id"] == victim["id"])
    row = await wait_for(lambda: _ended(stack, cluster["project_id"], victim["id"]), timeout=30, interval=0.3,
                         message="the vanished node's usage ended")
    assert abs((row.ended_at - ledger_time(record, "deleted")).total_seconds()) < 1.0, (row.ended_at, record)
    assert await server_usage(stack, cluster["project_id"], same[0]["id"]) is not None  # the new one is billed


async def test_zone_outage_replaces_at_most_one_node_per_group_at_a_time(
        stack: LocalStack, tokens: dict[str, str]) -> None:
    demo, admin = tokens["demo"], tokens["admin"]
    cluster = await make_cluster(stack, demo, healing=True, node_count=3)
    before = await servers_of(stack, admin, cluster)
    original = {r["id"] for r in before}
    status, _ = await http("POST", f"{stack.devcloud_url}/admin/faults/zones/nova/down", admin)
    assert status == 200
    try:
        await wait_for(lambda: _all_unhealthy(stack, demo, cluster["uuid"], [r["name"] for r in before]),
                       timeout=30, interval=0.2, message="every node UNHEALTHY")
        most_gone = 0
        end = asyncio.get_running_loop().time() + 6.0
        # 6 s of outage, by the clock (a loaded machine's slow looks must not stretch it: repairs that keep failing
        # back off up to a minute): each group may have one node in repair, never more
        while (now := asyncio.get_running_loop().time()) < end or (most_gone == 0 and now < end + 30):
            records = await servers_of(stack, admin, cluster, live=None)
            for role in ("-master-", "-node-"):
                gone = [r for r in records if r["id"] in original and role in r["name"]
                        and (r["deleted_at"] is not None or any(e["status"] == "DELETING" for e in r["events"]))]
                new_alive = [r for r in records if r["id"] not in original and role in r["name"]
                             and r["deleted_at"] is None]
                assert len(gone) <= 1, f"{len(gone)} {role} nodes replaced at once: {[r['name'] for r in gone]}"
                assert len(new_alive) <= 1, new_alive
                most_gone = max(most_gone, len(gone))
            await asyncio.sleep(0.2)
        assert most_gone == 1, "auto-healing did not start a repair"
    finally:
        await http("POST", f"{stack.devcloud_url}/admin/faults/zones/nova/up", admin)

    async def recovered() -> bool:
        shown = await health(stack, demo, cluster["uuid"])
        live = await servers_of(stack, admin, cluster)
        return shown.get("health_status") == "HEALTHY" and len(live) == 4 and not ({r["id"] for r in live} & original)

    try:
        await wait_for(recovered, timeout=180, interval=0.5, message="every node replaced after the zone came back")
    except TimeoutError as exc:
        live = await servers_of(stack, admin, cluster)
        raise AssertionError(f"{exc}: health {await health(stack, demo, cluster['uuid'])}; servers "
                             f"{[(r['name'], r['status'], r['id'] in original) for r in live]}") from exc


async def _all_unhealthy(stack: LocalStack, demo: str, cid: str, names: list[str]) -> bool:
    shown = await health(stack, demo, cid)
    reason = shown.get("health_status_reason") or {}
    return shown.get("health_status") == "UNHEALTHY" and all(reason.get(f"{n}.Ready") == "False" for n in names)
