"""Quotas by resource, reservations under concurrency, resizes and the fair build queue: the scheduler against a
real nats-server and PostgreSQL, fed upstream events straight onto the bus (docs/adr/0008)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest

from deploy.local.nats import NatsServer
from proto import subjects
from proto.clusterspec import resolve_cluster
from proto.envelope import Envelope
from proto.events import (
    ClusterAdmitted,
    ClusterCreateCompleted,
    ClusterCreateRequested,
    ClusterDeleteCompleted,
    ClusterDeleteRequested,
    ClusterQueued,
    ClusterQueuePositions,
    ClusterRejected,
    ClusterTemplate,
    ClusterUpdateAdmitted,
    ClusterUpdateCompleted,
    ClusterUpdateRejected,
    ClusterUpdateRequested,
    QuotaCreated,
)
from services.scheduler.service import build_service
from tests.conftest import wait_for
from tests.scheduler.support import Harness, start_harness, stop_harness

pytestmark = pytest.mark.integration

SIZES = {"m1.small": (2, 2048), "m1.large": (4, 8192)}


@pytest.fixture
async def sched(make_nats_server: Callable[..., NatsServer], database_url: str) -> AsyncIterator[Harness]:
    server = make_nats_server()
    h = await start_harness(build_service, "scheduler", server.url, database_url,
                            {"COVE_DEFAULT_CLUSTER_QUOTA": "1000", "COVE_MAX_BUILDS": "2"})
    yield h
    await stop_harness(h)


@pytest.fixture
async def unqueued(make_nats_server: Callable[..., NatsServer], database_url: str) -> AsyncIterator[Harness]:
    server = make_nats_server()
    h = await start_harness(build_service, "scheduler", server.url, database_url,
                            {"COVE_DEFAULT_CLUSTER_QUOTA": "1000"})
    yield h
    await stop_harness(h)


def request(project: str, name: str, node_count: int = 1, flavor: str = "m1.small") -> ClusterCreateRequested:
    cid = str(uuid.uuid4())
    template = ClusterTemplate(uuid=str(uuid.uuid4()), project_id=project, user_id="u", image_id="img",
                               created_at=datetime.now(UTC), docker_volume_size=5)
    spec = resolve_cluster(template, node_count=node_count, flavor_id=flavor, master_flavor_id="m1.small",
                           flavor_sizes=SIZES)
    return ClusterCreateRequested(uuid=cid, name=name, project_id=project, user_id="u", template=template,
                                  master_count=1, node_count=node_count, flavor_id=flavor, spec=spec)


async def ask(h: Harness, req: ClusterCreateRequested) -> int:
    _, seq = await h.publish(subjects.cluster_events("api", req.uuid), req, project_id=req.project_id,
                             cluster_id=req.uuid)
    return seq


async def tell(h: Harness, producer: str, cluster: str, project: str, payload: object) -> int:
    _, seq = await h.publish(subjects.cluster_events(producer, cluster), payload,  # type: ignore[arg-type]
                             project_id=project, cluster_id=cluster)
    return seq


async def scheduler_events(h: Harness) -> list[Envelope]:
    return await h.events(subjects.producer_events("scheduler"))


async def usage(h: Harness, project: str) -> tuple[int, ...]:
    async with h.pool.acquire() as conn:
        row = await conn.fetchrow(
            f'SELECT clusters, nodes, vcpus, ram_mb, volume_gb FROM "{h.schema}".project_usage WHERE project_id = $1',
            project)
    return tuple(row.values()) if row else (0, 0, 0, 0, 0)


async def settled(h: Harness) -> None:
    last = await h.last_seq()
    await wait_for(lambda: h.applied(last), message="scheduler caught up")
    # its own decisions come back and are applied too
    last2 = await h.last_seq()
    await wait_for(lambda: h.applied(last2), message="scheduler caught up with its decisions")


async def test_200_concurrent_creates_at_the_vcpu_limit_admit_exactly_m_and_free_all_on_delete(
    unqueued: Harness,
) -> None:
    h = unqueued
    project = f"v-{uuid.uuid4().hex[:6]}"
    # each cluster: 1 master m1.small (2 vCPUs) + 1 worker m1.large (4 vCPUs) = 6; 45 vCPUs admit exactly 7
    await h.publish(subjects.event_subject("api", "quota", project),
                    QuotaCreated(project_id=project, resource="vCPU", hard_limit=45), project_id=project,
                    cluster_id="")
    reqs = [request(project, f"c{i}", flavor="m1.large") for i in range(200)]
    await asyncio.gather(*(ask(h, r) for r in reqs))
    events = await wait_for(lambda: _decisions(h, 200), timeout=60, message="200 decisions")
    admitted = [e for e in events if isinstance(e.payload, ClusterAdmitted)]
    rejected = [e.payload for e in events if isinstance(e.payload, ClusterRejected)]
    assert len(admitted) == 7 and len(rejected) == 193
    assert {r.resource for r in rejected} == {"vCPU"}
    assert rejected[0].reason == "Quota exceeded for vCPU: requested 6, 3 of 45 left."
    await settled(h)
    assert await usage(h, project) == (7, 14, 42, 7 * (2048 + 8192), 14 * 5)
    for e in admitted:
        await tell(h, "provisioner", e.payload.uuid, project,
                   ClusterDeleteCompleted(uuid=e.payload.uuid, project_id=project))
    await settled(h)
    assert await usage(h, project) == (0, 0, 0, 0, 0)
    again = request(project, "again", flavor="m1.large")
    await ask(h, again)
    events = await wait_for(lambda: _decisions(h, 201), message="one more decision")
    assert isinstance(events[-1].payload, ClusterAdmitted) and events[-1].cluster_id == again.uuid


async def test_200_concurrent_creates_at_the_cluster_limit_with_two_replicas(
    unqueued: Harness, database_url: str
) -> None:
    """Two scheduler processes on the same store and durable consumer: the project lock, not luck, keeps it exact."""
    h = unqueued
    second = build_service(h.svc.config, schema=h.schema, durable="scheduler")
    await second.start()
    try:
        project = f"n-{uuid.uuid4().hex[:6]}"
        await h.publish(subjects.event_subject("api", "quota", project),
                        QuotaCreated(project_id=project, resource="Cluster", hard_limit=13), project_id=project,
                        cluster_id="")
        await settled(h)
        reqs = [request(project, f"c{i}") for i in range(200)]
        await asyncio.gather(*(ask(h, r) for r in reqs))
        events = await wait_for(lambda: _decisions(h, 200), timeout=60, message="200 decisions")
    finally:
        await second.stop()
    admitted = [e for e in events if isinstance(e.payload, ClusterAdmitted)]
    rejected = [e.payload for e in events if isinstance(e.payload, ClusterRejected)]
    assert len(admitted) == 13 and len(rejected) == 187
    assert {r.resource for r in rejected} == {"Cluster"}
    assert len({e.cluster_id for e in events}) == 200  # one decision per cluster


async def test_resize_over_quota_is_refused_and_a_shrink_frees_at_completion(unqueued: Harness) -> None:
    h = unqueued
    project = f"r-{uuid.uuid4().hex[:6]}"
    await h.publish(subjects.event_subject("api", "quota", project),
                    QuotaCreated(project_id=project, resource="Node", hard_limit=5), project_id=project,
                    cluster_id="")
    req = request(project, "grow", node_count=2)
    await ask(h, req)
    await wait_for(lambda: _decisions(h, 1))
    cid = req.uuid

    async def resize(n: int) -> Envelope:
        before = len(await _updates(h))
        await tell(h, "api", cid, project, ClusterUpdateRequested(uuid=cid, project_id=project, node_count=n,
                                                                  decided=True))
        got = await wait_for(lambda: _updates(h, before + 1), message=f"resize to {n} decided")
        return got[-1]

    refused = await resize(5)  # 1 master + 5 workers > 5 nodes
    assert isinstance(refused.payload, ClusterUpdateRejected) and refused.payload.resource == "Node"
    assert refused.payload.reason == "Quota exceeded for Node: requested 3, 2 of 5 left."
    assert (await usage(h, project))[1] == 3
    ok = await resize(4)
    assert isinstance(ok.payload, ClusterUpdateAdmitted) and ok.payload.node_count == 4
    await settled(h)
    assert (await usage(h, project))[1:3] == (5, 2 + 4 * 2)
    shrink = await resize(1)
    assert isinstance(shrink.payload, ClusterUpdateAdmitted)
    await settled(h)
    assert (await usage(h, project))[1] == 5  # the nodes are still there until the shrink completes
    await tell(h, "provisioner", cid, project, ClusterUpdateCompleted(uuid=cid, project_id=project, node_count=1,
                                                                      nodegroup_counts={"default-worker": 1}))
    await settled(h)
    assert (await usage(h, project))[1:3] == (2, 4)
    # replay rebuilds the same reservations
    tables = {t: await h.rows(t, "1, 2") for t in ("clusters", "cluster_groups", "project_usage")}
    last = await h.last_seq()
    await h.projection.rebuild()
    await wait_for(lambda: h.applied(last), message="replay reached the end of the stream")
    assert {t: await h.rows(t, "1, 2") for t in tables} == tables
    assert await h.last_seq() == last


async def test_one_projects_many_creates_do_not_starve_anothers_one(sched: Harness) -> None:
    h = sched
    a, b = f"a-{uuid.uuid4().hex[:6]}", f"b-{uuid.uuid4().hex[:6]}"
    many = [request(a, f"a{i}") for i in range(30)]
    for r in many:
        await ask(h, r)
    one = request(b, "b0")
    await ask(h, one)
    await wait_for(lambda: _decisions(h, 31), message="31 decisions")
    events = await scheduler_events(h)
    order = [e.cluster_id or "" for e in events if isinstance(e.payload, ClusterAdmitted)]
    assert len(order) == 2 and order[0] == many[0].uuid  # two build slots
    queued = {e.cluster_id: e.payload.position for e in events if isinstance(e.payload, ClusterQueued)}
    assert len(queued) == 29
    if one.uuid in queued:  # (B's may have been in the batch that filled the second slot: then it got it)
        assert queued[one.uuid] == 1  # next in line, before A's 28 others
    # the provisioner finishes builds one at a time; record the order clusters are admitted in
    while len(order) < 31:
        done = order[len(order) - 2]
        await tell(h, "provisioner", done, a if done != one.uuid else b,
                   ClusterCreateCompleted(uuid=done, project_id=a if done != one.uuid else b, api_address="x"))
        want = len(order) + 1
        order = await wait_for(lambda want=want: _admitted(h, want), message=f"admission {want}")
    assert order.index(one.uuid) <= 2, order
    assert [c for c in order if c != one.uuid] == [r.uuid for r in many]  # A's own in the order asked
    assert set(order) == {r.uuid for r in many} | {one.uuid}
    moved = [e.payload for e in await scheduler_events(h) if isinstance(e.payload, ClusterQueuePositions)]
    assert moved and min(moved[0].positions.values()) == 1
    assert all(sorted(p.positions.values()) == list(range(1, len(p.positions) + 1)) for p in moved)
    # replay rebuilds the same store
    await settled(h)
    tables = {t: await h.rows(t, "1, 2") for t in ("project_usage", "cluster_groups")}
    clusters = await h.rows("clusters", "cluster_id")
    last = await h.last_seq()
    await h.projection.rebuild()
    await wait_for(lambda: h.applied(last), message="replay reached the end of the stream")
    assert await h.rows("clusters", "cluster_id") == clusters
    assert {t: await h.rows(t, "1, 2") for t in tables} == tables
    assert await h.last_seq() == last  # nothing re-published during the replay


async def _decisions(h: Harness, n: int) -> list[Envelope]:
    got = [e for e in await scheduler_events(h)
           if isinstance(e.payload, ClusterRejected | ClusterQueued | ClusterAdmitted)]
    firsts: dict[str, Envelope] = {}
    for e in got:
        firsts.setdefault(e.cluster_id or "", e)
    return list(firsts.values()) if len(firsts) >= n else []


async def _updates(h: Harness, n: int = 0) -> list[Envelope]:
    got = [e for e in await scheduler_events(h) if isinstance(e.payload, ClusterUpdateAdmitted | ClusterUpdateRejected)]
    return got if len(got) >= n else ([] if n else got)


async def _admitted(h: Harness, n: int) -> list[str]:
    got = [e.cluster_id or "" for e in await scheduler_events(h) if isinstance(e.payload, ClusterAdmitted)]
    return got if len(got) >= n else []


async def test_a_waiting_cluster_deleted_leaves_the_queue_and_per_cloud_limits(
    make_nats_server: Callable[..., NatsServer], database_url: str
) -> None:
    server = make_nats_server()
    h = await start_harness(build_service, "scheduler", server.url, database_url,
                            {"COVE_MAX_BUILDS_PER_CLOUD": "east=1", "COVE_CLOUD_NAME": "east"})
    try:
        project = f"d-{uuid.uuid4().hex[:6]}"
        reqs = [request(project, f"c{i}") for i in range(3)]
        for r in reqs:
            await ask(h, r)
        events = await wait_for(lambda: _decisions(h, 3), message="three decisions")
        assert [type(e.payload).__name__ for e in events] == ["ClusterAdmitted", "ClusterQueued", "ClusterQueued"]
        # the second is deleted while it waits: it never gets a slot, the third does
        await tell(h, "api", reqs[1].uuid, project, ClusterDeleteRequested(uuid=reqs[1].uuid, project_id=project))
        await tell(h, "provisioner", reqs[0].uuid, project,
                   ClusterCreateCompleted(uuid=reqs[0].uuid, project_id=project, api_address="x"))
        admitted = await wait_for(lambda: _admitted(h, 2), message="the next admitted")
        assert admitted == [reqs[0].uuid, reqs[2].uuid]
        await settled(h)
        assert await _admitted(h, 2) == admitted  # and nothing else
        assert (await usage(h, project))[0] == 3  # the deleted one counts until its delete completes
        await tell(h, "provisioner", reqs[1].uuid, project,
                   ClusterDeleteCompleted(uuid=reqs[1].uuid, project_id=project))
        await settled(h)
        assert (await usage(h, project))[0] == 2
    finally:
        await stop_harness(h)
