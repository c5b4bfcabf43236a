"""`make run-cluster`'s stack: 3 NATS nodes in one JetStream cluster (R3 streams), 2 copies of every service, each
service on its own NATS user, the API's copies on one port. A cluster is created and deleted through the API, then
one NATS node is killed and another cluster is created and deleted while it is down.

Short on purpose (it runs in `make test`): one small cluster each time, the devcloud 20x faster than its model."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from deploy.local.stack import SERVICES, LocalStack
from proto import subjects
from services.runtime.bus import Bus
from tests.conftest import wait_for
from tests.stacks import running_stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LATEST = {"OpenStack-API-Version": "container-infra latest"}


@pytest.fixture(scope="module")
async def cluster_stack(pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    async with running_stack(None, pg_admin_url, tmp_path_factory.mktemp("run-cluster"), timeout=150.0,
                             time_factor=0.05, copies=2, nats_nodes=3) as local:
        yield local


async def http(method: str, url: str, tok: str | None, body: Any = None) -> tuple[int, Any]:
    headers = {**LATEST, **({"X-Auth-Token": tok} if tok else {})}
    async with aiohttp.ClientSession() as s, s.request(method, url, json=body, headers=headers) as r:
        return r.status, (await r.json(content_type=None) if r.content_length != 0 else None)


async def token(st: LocalStack) -> str:
    body = {"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": "demo", "domain": {"name": "Default"}, "password": "demo-pass"}}},
        "scope": {"project": {"name": "demo", "domain": {"name": "Default"}}}}}
    async with aiohttp.ClientSession() as s, s.post(f"{st.devcloud_url}/identity/v3/auth/tokens", json=body) as r:
        assert r.status == 201, await r.text()
        return r.headers["X-Subject-Token"]


async def create_and_delete(st: LocalStack, tok: str, template: str) -> float:
    """Create a cluster, wait for CREATE_COMPLETE, delete it, wait until it is gone. While NATS fails over, the API
    answers 503 ("could not be stored; try again later"), as it must when nothing acknowledged the request: the
    create is tried again, and the seconds that took are returned."""
    name = f"rc-{uuid.uuid4().hex[:6]}"
    first = time.monotonic()

    async def create() -> tuple[int, Any] | None:
        code, body = await http("POST", f"{st.api_url}/clusters", tok, {
            "name": name, "cluster_template_id": template, "master_count": 1, "node_count": 1})
        return None if code == 503 else (code, body)

    code, body = await wait_for(create, timeout=60, interval=0.5, message="the API stores a create again")
    unavailable = time.monotonic() - first
    assert code == 202, body
    cid = body["uuid"]

    async def status() -> str | None:
        code, shown = await http("GET", f"{st.api_url}/clusters/{cid}", tok)
        assert code == 200, shown
        assert not shown["status"].endswith("FAILED"), shown
        return shown["status"] if shown["status"] == "CREATE_COMPLETE" else None

    await wait_for(status, timeout=120, interval=0.5, message=f"{name} CREATE_COMPLETE")
    code, body = await http("DELETE", f"{st.api_url}/clusters/{cid}", tok)
    assert code == 204, body

    async def gone() -> bool:
        code, shown = await http("GET", f"{st.api_url}/clusters/{cid}", tok)
        assert code == 200 and not shown["status"].endswith("FAILED") if code != 404 else True, shown
        return code == 404

    await wait_for(gone, timeout=120, interval=0.5, message=f"{name} deleted")
    return unavailable


async def test_run_cluster_serves_and_survives_a_nats_node(cluster_stack: LocalStack) -> None:
    st = cluster_stack
    # 3 NATS nodes, 2 copies of each service, each service with its own NATS user
    assert [n.server_name for n in st.nats_nodes] == ["cove-n1", "cove-n2", "cove-n3"]
    assert sorted(c.name for c in st.children if c.name != "devcloud") == sorted(
        f"{s.name}-{i}" for s in SERVICES for i in (1, 2))
    api_copies = [c for c in st.children if c.name.startswith("api-")]
    assert {c.env["COVE_API_PORT"] for c in api_copies} == {str(st.api_port)}
    for child in st.children:
        if child.name != "devcloud":
            assert child.env["COVE_NATS_USER"] == child.name.rsplit("-", 1)[0]
            assert "@" not in child.env["COVE_NATS_URL"] and child.env["COVE_NATS_URL"].count(",") == 2
    bus = await Bus.connect(st.nats_url, name="test-run-cluster")
    try:
        for stream in (subjects.EVENTS_STREAM, subjects.DLQ_STREAM, subjects.HEARTBEATS_STREAM):
            info = await bus.js.stream_info(stream)
            assert info.config.num_replicas == 3
            assert info.cluster is not None and len(info.cluster.replicas or []) == 2, info.cluster
        events_leader = (await bus.js.stream_info(subjects.EVENTS_STREAM)).cluster.leader  # type: ignore[union-attr]
    finally:
        await bus.close()

    tok = await token(st)
    code, body = await http("POST", f"{st.api_url}/clustertemplates", tok, {
        "name": f"rc-{uuid.uuid4().hex[:6]}", "coe": "kubernetes", "image_id": "fedora-coreos",
        "external_network_id": "public", "flavor_id": "m1.small", "master_flavor_id": "m1.small"})
    assert code == 201, body
    template = body["uuid"]
    await create_and_delete(st, tok, template)

    # the NATS node leading the events stream dies (SIGKILL): the two others keep a quorum of every R3 stream and
    # elect a new leader, clients fail over
    victim = next(n for n in st.nats_nodes if n.server_name == events_leader)
    await asyncio.to_thread(victim.kill)
    try:
        unavailable = await create_and_delete(st, tok, template)
        print(f"creates refused with 503 for {unavailable:.1f} s after the NATS node was killed")
        assert all(c.alive() for c in st.children), [c.name for c in st.children if not c.alive()]
        # every subject a service used was within its NATS permissions (a violation is only logged, not raised)
        refused = {c.name: c.log_file.read_text().lower().count("permissions violation") for c in st.children}
        assert not any(refused.values()), refused
    finally:
        await asyncio.to_thread(victim.start)
