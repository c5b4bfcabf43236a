"""The fast read path: the read cache versioned by the projection's checkpoint (PostgreSQL NOTIFY), writes that
wait for their commit's notification, and what happens when the LISTEN connection is lost.

Runs the API in-process against a real nats-server, PostgreSQL and the devcloud (tests/api/conftest.py)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, cast

import asyncpg
import pytest

from proto import subjects
from proto.events import ClusterAdmitted
from services.api import store
from services.api.freshness import APPLIED_CHANNEL, Freshness, ReadCache
from services.api.keys import READ_CACHE, TEMPLATES
from tests.api.conftest import RunningApi, user_token
from tests.api.test_api_integration import Client, publish
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

LATEST = {"OpenStack-API-Version": "container-infra latest"}


@pytest.fixture(scope="module")
async def demo(api: RunningApi) -> Client:
    return Client(api.url, await user_token(api.devcloud, "demo", "demo-pass", "demo"))


def _template(name: str) -> dict[str, Any]:
    return {"name": name, "coe": "kubernetes", "image_id": "fedora-coreos", "flavor_id": "m1.small",
            "master_flavor_id": "m1.small", "external_network_id": "public"}


def _cache(api: RunningApi) -> ReadCache:
    runner = api.server._runner
    assert runner is not None
    return runner.app[READ_CACHE]


async def test_list_is_served_from_cache_until_a_write_lands(api: RunningApi, demo: Client) -> None:
    freshness = api.server.freshness
    assert freshness is not None
    await wait_for(lambda: freshness.live, timeout=10, message="API listening for checkpoint notifications")
    cache = _cache(api)
    name = f"cached-{uuid.uuid4().hex[:6]}"
    status, first, _ = await demo.call("POST", "/v1/clustertemplates", _template(name))
    assert status == 201, first
    status, listed, _ = await demo.call("GET", "/v1/clustertemplates")
    assert status == 200 and name in {t["name"] for t in listed["clustertemplates"]}
    hits = cache.hits
    status, again, headers = await demo.call("GET", "/v1/clustertemplates")
    assert status == 200 and again == listed and cache.hits == hits + 1
    assert headers["Content-Type"].startswith("application/json")
    assert headers["X-Openstack-Request-Id"].startswith("req-")
    # A write is visible to the very next read (the cached page is stale as soon as the write is applied).
    second = f"cached-{uuid.uuid4().hex[:6]}"
    status, _, _ = await demo.call("POST", "/v1/clustertemplates", _template(second))
    assert status == 201
    status, listed, _ = await demo.call("GET", "/v1/clustertemplates")
    assert {name, second} <= {t["name"] for t in listed["clustertemplates"]}
    # Pages, scopes and microversions are cached apart.
    status, one, _ = await demo.call("GET", "/v1/clustertemplates?limit=1")
    assert status == 200 and len(one["clustertemplates"]) == 1 and "next" in one
    status, old, _ = await demo.call("GET", "/v1/clusters", headers={"OpenStack-API-Version": "container-infra 1.1"})
    status, new, _ = await demo.call("GET", "/v1/clusters", headers=LATEST)
    for c in old["clusters"]:
        assert "stack_id" in c and "cluster_id" not in c
    for c in new["clusters"]:
        assert "cluster_id" in c and "stack_id" not in c


async def test_event_from_another_service_invalidates_the_cached_list(
    api: RunningApi, demo: Client, template: dict[str, Any]
) -> None:
    status, body, _ = await demo.call("POST", "/v1/clusters", {
        "name": f"c-{uuid.uuid4().hex[:6]}", "cluster_template_id": template["uuid"], "node_count": 1})
    assert status == 202, body
    cid = body["uuid"]
    status, shown, _ = await demo.call("GET", f"/v1/clusters/{cid}")
    pid = shown["project_id"]
    for _ in range(2):  # cached now
        status, listed, _ = await demo.call("GET", "/v1/clusters")
        assert next(c for c in listed["clusters"] if c["uuid"] == cid)["status"] == "CREATE_IN_PROGRESS"
    await publish(api, "provisioner", cid, pid, _completed(cid, pid))

    async def complete() -> bool:
        _, b, _ = await demo.call("GET", "/v1/clusters")
        return bool(next(c for c in b["clusters"] if c["uuid"] == cid)["status"] == "CREATE_COMPLETE")

    await wait_for(complete, timeout=10, message="the list shows the provisioner's CREATE_COMPLETE")


async def test_cluster_show_is_cached_per_caller_until_an_event_lands(
    api: RunningApi, demo: Client, template: dict[str, Any]
) -> None:
    """A show is answered from the read cache while nothing was applied; the cached body never reaches a caller
    the lookup or policy would refuse (another project: 404), and an event for the cluster invalidates it."""
    cache = _cache(api)
    status, body, _ = await demo.call("POST", "/v1/clusters", {
        "name": f"c-{uuid.uuid4().hex[:6]}", "cluster_template_id": template["uuid"], "node_count": 1})
    assert status == 202, body
    cid = body["uuid"]
    status, first, _ = await demo.call("GET", f"/v1/clusters/{cid}")
    assert status == 200 and first["status"] == "CREATE_IN_PROGRESS", first
    hits = cache.hits
    status, again, _ = await demo.call("GET", f"/v1/clusters/{cid}")
    assert status == 200 and again == first and cache.hits == hits + 1
    alt = Client(api.url, await user_token(api.devcloud, "alt", "alt-pass", "alt"))
    status, refused, _ = await alt.call("GET", f"/v1/clusters/{cid}")
    assert status == 404, refused
    await publish(api, "provisioner", cid, first["project_id"], _completed(cid, first["project_id"]))

    async def complete() -> bool:
        _, shown, _ = await demo.call("GET", f"/v1/clusters/{cid}")
        return bool(shown["status"] == "CREATE_COMPLETE")

    await wait_for(complete, timeout=10, message="the show reflects the provisioner's CREATE_COMPLETE")


def _completed(cid: str, pid: str) -> Any:
    from proto.events import ClusterCreateCompleted

    return ClusterCreateCompleted(uuid=cid, project_id=pid, api_address="https://10.0.0.9:6443",
                                  coe_version="v1.30.1")


@pytest.fixture(scope="module")
async def template(demo: Client) -> dict[str, Any]:
    status, body, _ = await demo.call("POST", "/v1/clustertemplates", _template(f"rp-{uuid.uuid4().hex[:6]}"))
    assert status == 201, body
    return dict(body)


async def test_admission_wait_ends_at_the_decision(
    api: RunningApi, demo: Client, template: dict[str, Any]
) -> None:
    """A stand-in scheduler admits at once: the create answers well before the admission timeout (1 s here), at the
    projection's NOTIFY when the stored decisions are not heard (services/api/decisions.py, unsubscribed here)."""

    async def admit(msg: Any) -> None:
        from proto.envelope import decode
        from proto.events import ClusterCreateRequested

        env = decode(msg.data)
        if isinstance(env.payload, ClusterCreateRequested):
            p = env.payload
            # Decide only once the request is in the read model: a decision fetched in the same batch as the
            # request commits with it, and the create then finds it decided without waiting at all.
            pool = api.service.pool
            assert pool is not None
            await wait_for(lambda: store.get_cluster(pool, p.uuid), timeout=5, message="request applied")
            await publish(api, "scheduler", p.uuid, p.project_id, ClusterAdmitted(
                uuid=p.uuid, project_id=p.project_id, master_count=1, node_count=1))

    freshness, decisions = api.server.freshness, api.server.decisions
    assert freshness is not None and decisions is not None
    await wait_for(lambda: freshness.live, timeout=10, message="listening")
    wakeups = freshness.admission_wakeups
    await decisions.stop()
    sub = await api.bus.nc.subscribe(subjects.producer_events("api", "cluster"), cb=admit)
    try:
        status, body, _ = await demo.call("POST", "/v1/clusters", {
            "name": f"c-{uuid.uuid4().hex[:6]}", "cluster_template_id": template["uuid"], "node_count": 1})
    finally:
        await sub.unsubscribe()
        await decisions.start()
    assert status == 202, body
    # a wake-up is counted only for a waiter still waiting: the create ended at the decision, not at the timeout
    assert freshness.admission_wakeups == wakeups + 1, "woken by the decision's NOTIFY, not by the timeout"


async def test_a_create_answers_on_the_stored_decision_before_its_projection_applies_it(
    api: RunningApi, demo: Client, template: dict[str, Any]
) -> None:
    """A stand-in scheduler admits while the cluster's read-model row is locked, so the projection cannot apply the
    decision: the create answers 202 at once from the stored decision (not at the 1 s admission timeout), and the
    cluster it names is readable already (its own event was applied)."""
    decisions, pool = api.server.decisions, api.service.pool
    assert decisions is not None and pool is not None
    release = asyncio.Event()
    decided: list[str] = []

    async def admit_while_locked(msg: Any) -> None:
        from proto.envelope import decode
        from proto.events import ClusterCreateRequested

        p = decode(msg.data).payload
        if not isinstance(p, ClusterCreateRequested):
            return
        await wait_for(lambda: store.get_cluster(pool, p.uuid), timeout=5, message="request applied")
        conn = await asyncpg.connect(api.service.config.database_url)
        try:
            async with conn.transaction():
                await conn.execute("SELECT 1 FROM api.clusters WHERE uuid = $1 FOR UPDATE", p.uuid)
                await publish(api, "scheduler", p.uuid, p.project_id, ClusterAdmitted(
                    uuid=p.uuid, project_id=p.project_id, master_count=1, node_count=1))
                decided.append(p.uuid)
                await asyncio.wait_for(release.wait(), 15)
        finally:
            await conn.close()

    wakeups = decisions.wakeups
    sub = await api.bus.nc.subscribe(subjects.producer_events("api", "cluster"), cb=admit_while_locked)
    try:
        status, body, _ = await demo.call("POST", "/v1/clusters", {
            "name": f"c-{uuid.uuid4().hex[:6]}", "cluster_template_id": template["uuid"], "node_count": 1})
        assert status == 202, body
        assert decided == [body["uuid"]]
        assert decisions.wakeups == wakeups + 1, "answered on the stored decision, not at the admission timeout"
        assert await store.admission_of(pool, body["uuid"]) is None, "the projection has not applied the decision"
        status, shown, _ = await demo.call("GET", f"/v1/clusters/{body['uuid']}")
        assert status == 200 and shown["status"] == "CREATE_IN_PROGRESS"
    finally:
        release.set()
        await sub.unsubscribe()
    await wait_for(lambda: store.admission_of(pool, body["uuid"]), timeout=10, message="the decision applied")


async def test_lost_listen_connection_disables_the_cache_and_comes_back(
    api: RunningApi, demo: Client
) -> None:
    freshness = api.server.freshness
    assert freshness is not None and api.service.pool is not None
    await wait_for(lambda: freshness.live, timeout=10, message="listening")
    conn = freshness._conn
    assert conn is not None
    backend = conn.get_server_pid()
    epoch = freshness.epoch
    await api.service.pool.execute("SELECT pg_terminate_backend($1)", backend)
    await wait_for(lambda: freshness.epoch > epoch, timeout=10, message="the lost connection noticed")
    # Reads and writes keep working meanwhile (no cache, polling waits), and the listener comes back.
    status, _, _ = await demo.call("GET", "/v1/clustertemplates")
    assert status == 200
    await wait_for(lambda: freshness.live, timeout=10, message="listening again")
    assert freshness._conn is not None and freshness._conn.get_server_pid() != backend
    name = f"after-{uuid.uuid4().hex[:6]}"
    status, _, _ = await demo.call("POST", "/v1/clustertemplates", _template(name))
    assert status == 201
    status, listed, _ = await demo.call("GET", "/v1/clustertemplates")
    assert name in {t["name"] for t in listed["clustertemplates"]}


def test_read_cache_refuses_stale_bodies_and_bounds_its_size() -> None:
    class Live:
        live = True
        seq = 5
        epoch = 0

    f: Any = Live()
    cache = ReadCache(f, max_entries=2, max_bytes=1000)
    v = cache.version()
    assert v == (0, 5)
    cache.put("a", v, b"x" * 10)
    assert cache.get("a") == b"x" * 10
    f.seq = 6  # something was applied: the entry is stale
    assert cache.get("a") is None
    cache.put("b", v, b"old")  # built before the change: not stored
    assert cache.get("b") is None
    v = cache.version()
    for key in ("c", "d", "e"):
        cache.put(key, v, b"y" * 100)
    assert cache.get("c") is None and cache.get("e") == b"y" * 100  # at most 2 entries
    cache.put("big", v, b"z" * 600)  # more than a quarter of max_bytes: never cached
    assert cache.get("big") is None
    f.live = False
    assert cache.version() is None and cache.get("e") is None


async def test_concurrent_misses_share_one_build_at_the_same_version() -> None:
    class Live:
        live = True
        seq = 1
        epoch = 0

    f: Any = Live()
    cache = ReadCache(f)
    builds = 0
    gate = asyncio.Event()

    async def make() -> bytes:
        nonlocal builds
        builds += 1
        await gate.wait()
        return f"v{f.seq}".encode()

    v1 = cache.version()
    first = [asyncio.create_task(cache.fill("k", v1, make)) for _ in range(5)]
    await asyncio.sleep(0)
    f.seq = 2  # a later commit: a request that knows of it must not join the older build
    late = asyncio.create_task(cache.fill("k", cache.version(), make))
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*first) == [b"v2"] * 5  # (built after the bump, stored under v1: stale at once)
    assert await late == b"v2"
    assert builds == 2 and cache.joined == 4
    assert cache.get("k") == b"v2"  # the late build, stored under the current version

    # The first request going away does not fail the ones that joined it: they build their own.
    gate.clear()
    f.seq = 3
    leader = asyncio.create_task(cache.fill("x", cache.version(), make))
    await asyncio.sleep(0)
    follower = asyncio.create_task(cache.fill("x", cache.version(), make))
    await asyncio.sleep(0)
    leader.cancel()
    await asyncio.sleep(0)
    gate.set()
    assert await follower == b"v3"
    assert leader.cancelled()


async def test_a_rewound_checkpoint_invalidates_everything_cached() -> None:
    """A rebuild replays the stream from 1: bodies cached before it must not be served, and a write waits until
    the replay passes its sequence again."""
    f = Freshness(cast(Any, None), "api", live=True)
    cache = ReadCache(f)
    f._on_applied(None, 0, APPLIED_CHANNEL, "api 10")
    f._on_applied(None, 0, APPLIED_CHANNEL, "scheduler 99")  # another consumer's checkpoint: not ours
    assert f.seq == 10
    cache.put("page", cache.version(), b"before")
    assert cache.get("page") == b"before"
    f._on_applied(None, 0, APPLIED_CHANNEL, "api 1")
    assert f.seq == 1 and cache.get("page") is None
    waiting = asyncio.create_task(f.wait_applied(10, timeout=5))
    await asyncio.sleep(0)
    f._on_applied(None, 0, APPLIED_CHANNEL, "api 9")
    await asyncio.sleep(0)
    assert not waiting.done()
    f._on_applied(None, 0, APPLIED_CHANNEL, "api 10")
    assert await waiting is True


async def test_cluster_creates_use_the_cached_template_until_it_changes(api: RunningApi, demo: Client) -> None:
    """The template a create looks up is cached per process and dropped when a template changes (NOTIFY at commit):
    a create right after a template PATCH or delete that this process waited for sees the change. (A template in
    use cannot change, so the lookups before the change are creates refused after the lookup: master_count 3 needs
    a load balancer.)"""
    freshness = api.server.freshness
    assert freshness is not None
    await wait_for(lambda: freshness.live, timeout=10, message="listening")
    runner = api.server._runner
    assert runner is not None
    cache = runner.app[TEMPLATES]
    status, t, _ = await demo.call("POST", "/v1/clustertemplates",
                                   {**_template(f"tc-{uuid.uuid4().hex[:6]}"), "labels": {"kube_tag": "v1.30.1"}})
    assert status == 201, t
    refused = {"name": "never", "cluster_template_id": t["name"], "master_count": 3, "node_count": 1}
    status, body, _ = await demo.call("POST", "/v1/clusters", refused, headers=LATEST)
    assert status == 400 and "master_count must be 1" in body["errors"][0]["detail"], body
    hits = cache.hits
    status, body, _ = await demo.call("POST", "/v1/clusters", refused, headers=LATEST)
    assert status == 400, body
    assert cache.hits == hits + 1, "the second lookup was answered from the cache"
    changes = freshness.template_changes
    status, patched, _ = await demo.call(
        "PATCH", f"/v1/clustertemplates/{t['uuid']}", [{"op": "replace", "path": "/labels", "value": {"kube_tag": "v1.31.0"}}])
    assert status == 200, patched
    assert freshness.template_changes > changes, "the PATCH's commit was heard of before the PATCH answered"
    status, body, _ = await demo.call("POST", "/v1/clusters", {**refused, "master_count": 1}, headers=LATEST)
    assert status == 202, body
    status, shown, _ = await demo.call("GET", f"/v1/clusters/{body['uuid']}", headers=LATEST)
    assert status == 200 and shown["labels"] == {"kube_tag": "v1.31.0"}, shown
    # A deleted template is not found any more.
    status, other, _ = await demo.call("POST", "/v1/clustertemplates", _template(f"tc-{uuid.uuid4().hex[:6]}"))
    assert status == 201, other
    refused = {**refused, "cluster_template_id": other["uuid"]}
    status, body, _ = await demo.call("POST", "/v1/clusters", refused, headers=LATEST)
    assert status == 400, body
    status, body, _ = await demo.call("DELETE", f"/v1/clustertemplates/{other['uuid']}")
    assert status == 204, body
    status, body, _ = await demo.call("POST", "/v1/clusters", refused, headers=LATEST)
    assert status == 404 and "could not be found" in body["errors"][0]["detail"], body
