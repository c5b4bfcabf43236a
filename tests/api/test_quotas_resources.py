"""Quotas by clusters, nodes and vCPUs through Magnum's API, with the real scheduler and certs services beside it
(one private nats-server, one fresh database, the session's devcloud for Keystone and Nova's flavors), and the
build queue's place shown by ``cluster show`` (docs/adr/0008).

The provisioner does not run: where a test needs a build to end or a delete to complete it publishes that fact."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from deploy.local.nats import NatsServer
from proto import subjects
from proto.envelope import new_envelope
from proto.events import ClusterCreateCompleted, ClusterDeleteCompleted, Event
from services.api.service import build_service as build_api
from services.certs.service import build_service as build_certs
from services.runtime.bus import Bus
from services.runtime.service import Service, ServiceConfig
from services.scheduler.admission import quota_exceeded_message
from services.scheduler.service import build_service as build_scheduler
from tests.api.test_certs_quotas_stats import Client, Stack, client, project_id
from tests.conftest import Devcloud, drop_database, fresh_database, wait_for

pytestmark = pytest.mark.integration

MAX_BUILDS = 2


@pytest.fixture(scope="module")
async def qstack(
    tmp_path_factory: pytest.TempPathFactory, pg_admin_url: str, devcloud: Devcloud
) -> AsyncIterator[tuple[Stack, str]]:
    nats_server = NatsServer(Path(tmp_path_factory.mktemp("q-nats")), server_name="cove-q")
    nats_server.start()
    db_url = await fresh_database(pg_admin_url)
    common: dict[str, str] = {"COVE_STATE_DIR": str(tmp_path_factory.mktemp("q-state"))}

    def config(name: str, extra: dict[str, str]) -> ServiceConfig:
        return ServiceConfig(service=name, nats_url=nats_server.url, database_url=db_url, http_port=0,
                             heartbeat_interval=1.0, extra={**common, **extra})

    api, server = build_api(config("api", {
        "COVE_API_PORT": "0", "COVE_AUTH_URL": f"{devcloud.url}/identity", "COVE_API_ADMISSION_TIMEOUT": "30.0",
        # short, so that the test holding the projection answers soon
        "COVE_API_READ_YOUR_WRITES_TIMEOUT": "2.0",
    }))
    services: list[Service] = [build_scheduler(config("scheduler", {"COVE_MAX_BUILDS": str(MAX_BUILDS)})),
                               build_certs(config("certs", {})), api]
    started: list[Service] = []
    try:
        for svc in services:
            await svc.start()
            started.append(svc)
        bus = await Bus.connect(nats_server.url, name="test-q")
        try:
            yield Stack(server.url + "/v1", bus, devcloud, services), db_url
        finally:
            await bus.close()
    finally:
        for svc in reversed(started):
            await svc.stop()
        nats_server.stop()
        await drop_database(pg_admin_url, db_url)


@pytest.fixture(scope="module")
async def admin(qstack: tuple[Stack, str]) -> Client:
    return await client(qstack[0], "admin", "admin-pass", "admin")


async def template_of(user: Client) -> str:
    status, body = await user.call("POST", "/clustertemplates", {
        "name": f"k8s-{uuid.uuid4().hex[:6]}", "coe": "kubernetes", "image_id": "fedora-coreos",
        "flavor_id": "m1.small", "master_flavor_id": "m1.small", "external_network_id": "public"})
    assert status == 201, body
    return str(body["uuid"])


async def fact(stack: Stack, cid: str, project: str, payload: Event) -> None:
    """Publish what the provisioner would have."""
    await stack.bus.publish(subjects.cluster_events("provisioner", cid),
                            new_envelope(payload, project_id=project, cluster_id=cid))


async def set_quota(admin: Client, project: str, resource: str, limit: int) -> None:
    status, body = await admin.call("POST", "/quotas", {"project_id": project, "resource": resource,
                                                        "hard_limit": limit})
    if status == 409:
        status, body = await admin.call("PATCH", f"/quotas/{project}/{resource}", {"hard_limit": limit})
    assert status in (201, 202), body
    assert body["resource"] == resource and body["hard_limit"] == limit


async def remove_all(stack: Stack, user: Client, project: str) -> None:
    """Delete every cluster of the project (the provisioner's completion published here) and wait until gone."""
    status, body = await user.call("GET", "/clusters")
    assert status == 200, body
    for c in body["clusters"]:
        assert (await user.call("DELETE", f"/clusters/{c['uuid']}"))[0] == 204
        await fact(stack, c["uuid"], project, ClusterDeleteCompleted(uuid=c["uuid"], project_id=project))

    async def empty() -> bool:
        s, b = await user.call("GET", "/clusters")
        return s == 200 and not b["clusters"]

    await wait_for(empty, timeout=30, message="every cluster deleted")


async def usage(db_url: str, project: str) -> tuple[int, ...]:
    conn = await asyncpg.connect(db_url)
    try:
        row = await conn.fetchrow("SELECT clusters, nodes, vcpus, ram_mb, volume_gb FROM scheduler.project_usage"
                                  " WHERE project_id = $1", project)
    finally:
        await conn.close()
    return tuple(row.values()) if row else (0, 0, 0, 0, 0)


async def burst(user: Client, body: dict[str, Any], n: int) -> list[tuple[int, Any]]:
    async def one(i: int) -> tuple[int, Any]:
        return await user.call("POST", "/clusters", {**body, "name": f"b-{i}-{uuid.uuid4().hex[:4]}"})

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def test_200_concurrent_creates_at_the_cluster_quota(qstack: tuple[Stack, str], admin: Client) -> None:
    stack, db_url = qstack
    alt = await client(stack, "alt", "alt-pass", "alt")
    alt_id = await project_id(stack, admin, "alt")
    await set_quota(admin, alt_id, "Cluster", 7)
    tpl = await template_of(alt)
    answers = await burst(alt, {"cluster_template_id": tpl, "node_count": 1}, 200)
    accepted = [b for s, b in answers if s == 202]
    refused = [b for s, b in answers if s == 403]
    assert len(accepted) == 7 and len(refused) == 193, sorted({s for s, _ in answers})
    assert {b["errors"][0]["detail"] for b in refused} == {quota_exceeded_message(7)}
    status, listed = await alt.call("GET", "/clusters")
    assert status == 200 and len(listed["clusters"]) == 7  # the refused ones were withdrawn
    # 1 master + 1 worker of m1.small (1 vCPU, 2048 MB, flavors looked up in Nova) each
    await wait_for(lambda: _usage_is(db_url, alt_id, (7, 14, 14, 14 * 2048, 0)), message="7 clusters reserved")
    await remove_all(stack, alt, alt_id)
    await wait_for(lambda: _usage_is(db_url, alt_id, (0, 0, 0, 0, 0)), message="the quota fully released")
    status, body = await alt.call("POST", "/clusters", {"name": "after", "cluster_template_id": tpl})
    assert status == 202, body
    await remove_all(stack, alt, alt_id)


async def test_a_refusal_says_why_while_the_read_model_is_behind(qstack: tuple[Stack, str], admin: Client) -> None:
    """Under load the API's projection can be seconds behind the scheduler's decision, past read-your-writes'
    bound: the 403 still gives the scheduler's reason (read from the rejection in the stream), not a bare refusal.
    The projection is held here by the lock ``cove verify`` takes on its inbox."""
    stack, db_url = qstack
    demo = await client(stack, "demo", "demo-pass", "demo")
    demo_id = await project_id(stack, admin, "demo")
    await set_quota(admin, demo_id, "Cluster", 0)
    tpl = await template_of(demo)
    conn = await asyncpg.connect(db_url)
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE api.inbox IN EXCLUSIVE MODE")
            status, body = await demo.call("POST", "/clusters", {"name": "behind", "cluster_template_id": tpl})
            assert await conn.fetchval("SELECT count(*) FROM api.clusters WHERE name = 'behind'") == 0, \
                "the projection was held"
    finally:
        await conn.close()
    assert status == 403, body
    assert body["errors"][0]["detail"] == quota_exceeded_message(0)

    async def withdrawn() -> bool:
        s, b = await demo.call("GET", "/clusters")
        return s == 200 and not any(c["name"] == "behind" for c in b["clusters"])

    await wait_for(withdrawn, message="the refused cluster withdrawn once the projection caught up")
    assert (await admin.call("DELETE", f"/quotas/{demo_id}/Cluster"))[0] == 204


async def test_200_concurrent_creates_at_the_vcpu_quota(qstack: tuple[Stack, str], admin: Client) -> None:
    stack, db_url = qstack
    demo = await client(stack, "demo", "demo-pass", "demo")
    demo_id = await project_id(stack, admin, "demo")
    await set_quota(admin, demo_id, "vCPU", 22)  # 1 master m1.small (1) + 1 worker m1.large (4) = 5: 4 fit
    tpl = await template_of(demo)
    answers = await burst(demo, {"cluster_template_id": tpl, "node_count": 1, "flavor_id": "m1.large"}, 200)
    accepted = [b for s, b in answers if s == 202]
    refused = [b for s, b in answers if s == 403]
    assert len(accepted) == 4 and len(refused) == 196, sorted({s for s, _ in answers})
    assert {b["errors"][0]["detail"] for b in refused} == {"Quota exceeded for vCPU: requested 5, 2 of 22 left."}
    await wait_for(lambda: _usage_is(db_url, demo_id, (4, 8, 20, 4 * (2048 + 8192), 0)), message="4 reserved")
    await remove_all(stack, demo, demo_id)
    await wait_for(lambda: _usage_is(db_url, demo_id, (0, 0, 0, 0, 0)), message="the quota fully released")
    assert (await admin.call("DELETE", f"/quotas/{demo_id}/vCPU"))[0] == 204


async def test_resize_over_the_node_quota_is_refused(qstack: tuple[Stack, str], admin: Client) -> None:
    stack, db_url = qstack
    demo = await client(stack, "demo", "demo-pass", "demo")
    demo_id = await project_id(stack, admin, "demo")
    await set_quota(admin, demo_id, "Node", 3)
    status, body = await demo.call("POST", "/clusters", {"name": "rs", "cluster_template_id": await template_of(demo)})
    assert status == 202, body
    cid = body["uuid"]
    await fact(stack, cid, demo_id, ClusterCreateCompleted(uuid=cid, project_id=demo_id, api_address="https://x"))

    async def complete() -> bool:
        s, b = await demo.call("GET", f"/clusters/{cid}")
        return s == 200 and b["status"] == "CREATE_COMPLETE"

    await wait_for(complete, message="CREATE_COMPLETE")
    patch = [{"op": "replace", "path": "/node_count", "value": 3}]
    status, err = await demo.call("PATCH", f"/clusters/{cid}", patch)
    assert status == 403, err
    assert err["errors"][0]["detail"] == "Quota exceeded for Node: requested 2, 1 of 3 left."
    status, shown = await demo.call("GET", f"/clusters/{cid}")
    assert shown["status"] == "CREATE_COMPLETE" and shown["node_count"] == 1  # nothing changed
    # the resize action (what `openstack coe cluster resize` sends) is decided the same way
    status, err = await demo.call("POST", f"/clusters/{cid}/actions/resize", {"node_count": 3})
    assert status == 403, err
    assert err["errors"][0]["detail"] == "Quota exceeded for Node: requested 2, 1 of 3 left."
    status, shown = await demo.call("GET", f"/clusters/{cid}")
    assert shown["status"] == "CREATE_COMPLETE" and shown["node_count"] == 1
    status, body = await demo.call("PATCH", f"/clusters/{cid}", [{"op": "replace", "path": "/node_count", "value": 2}])
    assert status == 202, body
    status, shown = await demo.call("GET", f"/clusters/{cid}")
    assert shown["status"] == "UPDATE_IN_PROGRESS" and shown["node_count"] == 2
    assert (await usage(db_url, demo_id))[1] == 3
    # a new nodegroup is decided on the quota too
    status, err = await demo.call("POST", f"/clusters/{cid}/nodegroups", {"name": "extra", "node_count": 1})
    assert status == 403, err
    assert err["errors"][0]["detail"] == "Quota exceeded for Node: requested 1, 0 of 3 left."
    status, groups = await demo.call("GET", f"/clusters/{cid}/nodegroups")
    assert status == 200 and sorted(g["name"] for g in groups["nodegroups"]) == ["default-master", "default-worker"]
    await set_quota(admin, demo_id, "Node", 4)
    status, body = await demo.call("POST", f"/clusters/{cid}/nodegroups", {"name": "extra", "node_count": 1})
    assert status == 202 and body["name"] == "extra", body
    assert (await usage(db_url, demo_id))[1] == 4
    await remove_all(stack, demo, demo_id)
    assert (await admin.call("DELETE", f"/quotas/{demo_id}/Node"))[0] == 204


async def test_queue_place_shown_while_waiting_to_be_built(qstack: tuple[Stack, str], admin: Client) -> None:
    stack, _ = qstack
    alt = await client(stack, "alt", "alt-pass", "alt")
    alt_id = await project_id(stack, admin, "alt")
    tpl = await template_of(alt)
    ids = []
    for i in range(MAX_BUILDS + 2):
        status, body = await alt.call("POST", "/clusters", {"name": f"q{i}", "cluster_template_id": tpl})
        assert status == 202, body
        ids.append(body["uuid"])

    async def reason(cid: str) -> str | None:
        s, b = await alt.call("GET", f"/clusters/{cid}")
        assert s == 200, b
        assert b["status"] == "CREATE_IN_PROGRESS", b
        return b["status_reason"]  # type: ignore[no-any-return]

    assert await reason(ids[0]) is None and await reason(ids[1]) is None
    assert await reason(ids[2]) == "Waiting to be built: 1st in line"
    assert await reason(ids[3]) == "Waiting to be built: 2nd in line"
    await fact(stack, ids[0], alt_id, ClusterCreateCompleted(uuid=ids[0], project_id=alt_id, api_address="https://x"))

    async def moved() -> bool:
        return await reason(ids[3]) == "Waiting to be built: 1st in line"

    await wait_for(moved, message="the queue moved")
    assert await reason(ids[2]) is None  # being built now
    await remove_all(stack, alt, alt_id)


async def _usage_is(db_url: str, project: str, want: tuple[int, ...]) -> bool:
    return await usage(db_url, project) == want
