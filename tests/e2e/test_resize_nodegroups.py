"""Resize, nodegroups and upgrade end to end (LocalStack: every service, the devcloud, the openstack CLI):
servers are really added and removed in the devcloud (its ledger), statuses go UPDATE_IN_PROGRESS ->
UPDATE_COMPLETE, the cluster's node_count follows its worker groups, and accounting meters the added nodes."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from deploy.local.stack import LocalStack
from proto import subjects
from proto.requests import GetUsage, UsageReport
from services.runtime import rpc
from services.runtime.bus import Bus
from tests.conftest import wait_for
from tests.e2e.test_cluster_lifecycle import http, live_servers, osc, private_nats, stack, token

pytestmark = [pytest.mark.integration, pytest.mark.slow]
__all__ = ["private_nats", "stack"]


async def settled(st: LocalStack, tok: str, cid: str, wanted: str = "UPDATE_COMPLETE") -> dict[str, Any] | None:
    code, body = await http("GET", f"{st.api_url}/clusters/{cid}", tok)
    assert code == 200, body
    assert not body["status"].endswith("FAILED"), body
    return dict(body) if body["status"] == wanted else None


async def group(st: LocalStack, tok: str, cid: str, name: str) -> dict[str, Any]:
    code, body = await http("GET", f"{st.api_url}/clusters/{cid}/nodegroups/{name}", tok)
    assert code == 200, body
    return dict(body)


async def test_resize_nodegroups_and_upgrade(stack: LocalStack) -> None:
    st = stack
    demo = await token(st, "demo", "demo-pass", "demo")
    admin = await token(st, "admin", "admin-pass", "admin")
    tname = f"rs-{uuid.uuid4().hex[:6]}"
    code, tpl = await http("POST", f"{st.api_url}/clustertemplates", demo, {
        "name": tname, "coe": "kubernetes", "image_id": "fedora-coreos", "external_network_id": "public",
        "flavor_id": "m1.small", "master_flavor_id": "m1.small"})
    assert code == 201, tpl
    code, body = await http("POST", f"{st.api_url}/clusters", demo, {
        "name": "rs-cluster", "cluster_template_id": tpl["uuid"], "node_count": 1})
    assert code == 202, body
    cid = body["uuid"]
    cluster = await wait_for(lambda: settled(st, demo, cid, "CREATE_COMPLETE"), timeout=90, interval=0.5,
                             message="CREATE_COMPLETE")
    project = cluster["project_id"]
    assert len(await live_servers(st, admin, project)) == 2

    groups = json.loads(osc(st, "coe", "nodegroup", "list", "rs-cluster", "-f", "json"))
    assert sorted(g["name"] for g in groups) == ["default-master", "default-worker"]
    master = await group(st, demo, cid, "default-master")
    assert master["is_default"] and master["role"] == "master" and master["status"] == "CREATE_COMPLETE"

    # resize the default worker group with the CLI: 1 -> 3
    osc(st, "coe", "cluster", "resize", "rs-cluster", "3")
    code, body = await http("GET", f"{st.api_url}/clusters/{cid}", demo)
    assert body["status"] in ("UPDATE_IN_PROGRESS", "UPDATE_COMPLETE")
    cluster = await wait_for(lambda: settled(st, demo, cid), timeout=90, interval=0.5, message="resize to 3")
    assert cluster["node_count"] == 3 and len(cluster["node_addresses"]) == 3
    assert len(await live_servers(st, admin, project)) == 4
    assert (await group(st, demo, cid, "default-worker"))["status"] == "UPDATE_COMPLETE"

    # the master group cannot be resized; out of bounds and bad versions are refused
    code, body = await http("POST", f"{st.api_url}/clusters/{cid}/actions/resize", demo,
                            {"node_count": 3, "nodegroup": "default-master"})
    assert code == 400 and "master" in body["errors"][0]["detail"]
    code, _ = await http("DELETE", f"{st.api_url}/clusters/{cid}/nodegroups/default-worker", demo)
    assert code == 400

    # a new nodegroup with the CLI
    osc(st, "coe", "nodegroup", "create", "rs-cluster", "extra", "--node-count", "1", "--max-nodes", "2")
    ng = await group(st, demo, cid, "extra")
    assert ng["status"] in ("CREATE_IN_PROGRESS", "CREATE_COMPLETE") and not ng["is_default"]  # a fast cloud is done

    async def extra_done() -> dict[str, Any] | None:
        g = await group(st, demo, cid, "extra")
        assert not g["status"].endswith("FAILED"), g
        return g if g["status"] == "CREATE_COMPLETE" else None

    await wait_for(extra_done, timeout=90, interval=0.5, message="nodegroup CREATE_COMPLETE")
    assert len(await live_servers(st, admin, project)) == 5
    cluster = await wait_for(lambda: settled(st, demo, cid), timeout=30, interval=0.5, message="cluster settled")
    assert cluster["node_count"] == 4
    code, body = await http("POST", f"{st.api_url}/clusters/{cid}/actions/resize", demo,
                            {"node_count": 3, "nodegroup": "extra"})
    assert code == 400 and "outside the allowed range" in body["errors"][0]["detail"]
    code, body = await http("POST", f"{st.api_url}/clusters/{cid}/nodegroups", demo, {"name": "extra"})
    assert code == 409, body
    osc(st, "coe", "nodegroup", "update", "rs-cluster", "extra", "--min-nodes", "1")
    shown = json.loads(osc(st, "coe", "nodegroup", "show", "rs-cluster", "extra", "-f", "json"))
    assert shown["min_node_count"] == 1 and shown["max_node_count"] == 2

    # python-magnumclient: shrink the default group removing one named server
    from keystoneauth1 import session as ks_session
    from keystoneauth1.identity import v3
    from magnumclient.v1 import client as magnum_client

    auth = v3.Password(auth_url=f"{st.devcloud_url}/identity/v3", username="demo", password="demo-pass",
                       project_name="demo", user_domain_name="Default", project_domain_name="Default")
    mc = magnum_client.Client(session=ks_session.Session(auth=auth), api_version="latest")
    workers = [r for r in await live_servers(st, admin, project) if "-node-" in (r.get("name") or "")]
    assert len(workers) == 3, workers
    victim = workers[0]["id"]
    mc.clusters.resize(cid, 2, nodes_to_remove=[victim], nodegroup="default-worker")
    cluster = await wait_for(lambda: settled(st, demo, cid), timeout=90, interval=0.5, message="shrink")
    live = await live_servers(st, admin, project)
    assert victim not in [r["id"] for r in live] and len(live) == 4
    assert cluster["node_count"] == 3

    # delete the extra group
    osc(st, "coe", "nodegroup", "delete", "rs-cluster", "extra")

    async def extra_gone() -> bool:
        code, _ = await http("GET", f"{st.api_url}/clusters/{cid}/nodegroups/extra", demo)
        return code == 404

    await wait_for(extra_gone, timeout=90, interval=0.5, message="nodegroup deleted")
    assert len(await live_servers(st, admin, project)) == 3
    cluster = await wait_for(lambda: settled(st, demo, cid), timeout=30, interval=0.5, message="settled")
    assert cluster["node_count"] == 2

    # upgrade to a template with another image: the workers are replaced, one at a time
    code, tpl2 = await http("POST", f"{st.api_url}/clustertemplates", demo, {
        "name": f"{tname}-v2", "coe": "kubernetes", "image_id": "ubuntu-22.04", "external_network_id": "public",
        "flavor_id": "m1.small", "master_flavor_id": "m1.small"})
    assert code == 201, tpl2
    before = {r["id"] for r in await live_servers(st, admin, project) if "-node-" in (r.get("name") or "")}
    osc(st, "coe", "cluster", "upgrade", "rs-cluster", tpl2["name"], "--max-batch-size", "1")
    cluster = await wait_for(lambda: settled(st, demo, cid), timeout=120, interval=0.5, message="upgrade")
    assert cluster["cluster_template_id"] == tpl2["uuid"]
    after = {r["id"] for r in await live_servers(st, admin, project) if "-node-" in (r.get("name") or "")}
    assert len(after) == 2 and not (before & after)
    assert (await group(st, demo, cid, "default-worker"))["image_id"] == "ubuntu-22.04"

    # accounting saw every node that ever ran: 2 at create, 2 grown, 1 extra, 2 upgrade replacements
    bus = await Bus.connect(st.nats_url, name="e2e-resize")
    try:
        async def usage() -> UsageReport | None:
            reply = await rpc.request(bus.nc, subjects.ACCOUNTING_USAGE, GetUsage(project_id=project,
                                                                                   cluster_id=cid))
            assert isinstance(reply, UsageReport), reply
            nodes = sum(c.nodes for c in reply.clusters)
            return reply if nodes >= 7 else None

        await wait_for(usage, timeout=30, interval=0.5, message="accounting counted the added nodes")
    finally:
        await bus.close()

    osc(st, "coe", "cluster", "delete", "rs-cluster")

    async def gone() -> bool:
        return (await http("GET", f"{st.api_url}/clusters/{cid}", demo))[0] == 404

    await wait_for(gone, timeout=90, interval=0.5, message="cluster deleted")
    assert await live_servers(st, admin, project) == []
