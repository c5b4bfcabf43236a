"""The cloud's quota for resizes and new nodegroups (docs/adr/0008), in the scheduler's handler against a real
PostgreSQL store (the service's own schema, migrated by the running service): a growth over what the cloud has left
less Cove's unbuilt reservations is refused in the cloud's words and reserves nothing, a cloud that cannot be asked
does not block, and the published decision is the fact when a replay decided otherwise.

The cloud's answer is put in ``CloudQuota``'s per-project cache, as a look-up leaves it (the e2e test,
tests/e2e/test_cloud_quota_resize.py, asks the devcloud's Nova for real); the identity URL is a closed port, so
anything not cached cannot be known.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from deploy.local.nats import NatsServer
from deploy.local.ports import free_port
from proto.clusterspec import resolve_cluster
from proto.envelope import Envelope, new_envelope
from proto.events import (
    ClusterCreateCompleted,
    ClusterCreateRequested,
    ClusterTemplate,
    ClusterUpdateAdmitted,
    ClusterUpdateCompleted,
    ClusterUpdateRejected,
    ClusterUpdateRequested,
    Event,
    NodeGroup,
    NodeGroupCreateAdmitted,
    NodeGroupCreateRequested,
)
from services.runtime.projection import Outgoing
from services.scheduler import cloudquota
from services.scheduler.cloudquota import CloudQuota, CloudQuotaSettings, Room
from services.scheduler.handlers import Handlers
from services.scheduler.service import build_service
from tests.scheduler.support import Harness, start_harness, stop_harness

pytestmark = pytest.mark.integration

SIZES = {"m1.small": (2, 2048)}


@pytest.fixture
async def store(make_nats_server: Callable[..., NatsServer], database_url: str) -> AsyncIterator[Harness]:
    """A running scheduler (it migrates its schema); the tests call a handler of their own on its store."""
    server = make_nats_server()
    h = await start_harness(build_service, "scheduler", server.url, database_url,
                            {"COVE_DEFAULT_CLUSTER_QUOTA": "1000"})
    yield h
    await stop_harness(h)


def handlers() -> Handlers:
    settings = CloudQuotaSettings(auth_url=f"http://127.0.0.1:{free_port()}/identity", ttl=3600.0)
    return Handlers(1000, cloud_quota=CloudQuota(settings))


def cloud_left(h: Handlers, project: str, cores: int, limit: int) -> None:
    """What the cloud said the project has left (cores only; the rest unlimited)."""
    assert h.cloud_quota is not None
    h.cloud_quota._cache[project] = Room(left={**dict.fromkeys(cloudquota.CLOUD_RESOURCES), "cores": cores},
                                         limits={"cores": limit}, fetched_at=time.monotonic())


def env(payload: Event, project: str, cluster: str, *, cause: Envelope | None = None,
        age: timedelta = timedelta(0)) -> Envelope:
    return new_envelope(payload, project_id=project, cluster_id=cluster, causation=cause,
                        occurred_at=datetime.now(UTC) - age)


async def apply(store: Harness, h: Handlers, e: Envelope) -> list[Any]:
    async with store.pool.acquire() as conn, conn.transaction():
        out: Sequence[Outgoing] = await h.handle(e, conn)
    return [o.payload for o in out]


async def reserved(store: Harness, cluster: str) -> dict[str, tuple[int, int, int]]:
    """Each group's (node_count, reserved, growing)."""
    async with store.pool.acquire() as conn:
        recs = await conn.fetch(
            f'SELECT name, node_count, reserved, growing FROM "{store.schema}".cluster_groups WHERE cluster_id = $1',
            cluster)
    return {r["name"]: (r["node_count"], r["reserved"], r["growing"]) for r in recs}


async def vcpus_used(store: Harness, project: str) -> int:
    async with store.pool.acquire() as conn:
        return int(await conn.fetchval(
            f'SELECT vcpus FROM "{store.schema}".project_usage WHERE project_id = $1', project) or 0)


async def created(store: Harness, h: Handlers, project: str) -> str:
    """A built cluster of 1 master and 1 worker, m1.small (2 vCPUs each), created with a trust."""
    cid = str(uuid.uuid4())
    template = ClusterTemplate(uuid=str(uuid.uuid4()), project_id=project, user_id="u", image_id="img",
                               created_at=datetime.now(UTC))
    spec = resolve_cluster(template, node_count=1, flavor_id="m1.small", master_flavor_id="m1.small",
                           flavor_sizes=SIZES)
    req = ClusterCreateRequested(uuid=cid, name="c", project_id=project, user_id="u", template=template,
                                 node_count=1, flavor_id="m1.small", spec=spec, trust_id="trust-1")
    out = await apply(store, h, env(req, project, cid))
    assert [type(p).__name__ for p in out] == ["ClusterAdmitted"], out
    await apply(store, h, env(ClusterCreateCompleted(uuid=cid, project_id=project, api_address="https://x"),
                              project, cid))
    return cid


async def test_a_growth_is_checked_against_the_cloud_less_unbuilt_growth(store: Harness) -> None:
    h = handlers()
    project = f"p-{uuid.uuid4().hex[:6]}"
    cid = await created(store, h, project)
    cloud_left(h, project, cores=5, limit=10)

    refused = await apply(store, h, env(ClusterUpdateRequested(uuid=cid, project_id=project, node_count=4,
                                                               decided=True), project, cid))
    assert len(refused) == 1 and isinstance(refused[0], ClusterUpdateRejected), refused
    assert refused[0].resource == "cloud:cores"
    assert refused[0].reason == "Quota exceeded in the cloud for cores: requested 6, 5 of 10 left."
    assert (await reserved(store, cid))["default-worker"] == (1, 1, 0)  # nothing reserved

    grown = await apply(store, h, env(ClusterUpdateRequested(uuid=cid, project_id=project, node_count=3,
                                                             decided=True), project, cid))
    assert len(grown) == 1 and isinstance(grown[0], ClusterUpdateAdmitted) and grown[0].node_count == 3
    assert (await reserved(store, cid))["default-worker"] == (3, 3, 2)
    assert await vcpus_used(store, project) == 8

    # The 2 nodes being added are not in the cloud's usage yet: 5 - 4 cores left for a new nodegroup.
    ng = NodeGroup(uuid=str(uuid.uuid4()), name="more", cluster_id=cid, project_id=project, flavor_id="m1.small",
                   node_count=1)
    out = await apply(store, h, env(NodeGroupCreateRequested(nodegroup=ng, decided=True), project, cid))
    assert len(out) == 1 and isinstance(out[0], ClusterUpdateRejected) and out[0].nodegroup == "more", out
    assert out[0].reason == "Quota exceeded in the cloud for cores: requested 2, 1 of 10 left."
    assert "more" not in await reserved(store, cid)

    # A shrink is never refused: the cloud is not asked.
    shrink = await apply(store, h, env(ClusterUpdateRequested(uuid=cid, project_id=project, node_count=2,
                                                              decided=True), project, cid))
    assert len(shrink) == 1 and isinstance(shrink[0], ClusterUpdateAdmitted)

    # The update ends: its nodes are the cloud's to count (the cached answer is dropped) and no longer unbuilt. The
    # cloud cannot be asked now (nothing listens at the identity URL): the new nodegroup is not blocked.
    await apply(store, h, env(ClusterUpdateCompleted(uuid=cid, project_id=project, node_count=2,
                                                     nodegroup_counts={"default-worker": 2}), project, cid))
    assert (await reserved(store, cid))["default-worker"] == (2, 2, 0)
    out = await apply(store, h, env(NodeGroupCreateRequested(nodegroup=ng, decided=True), project, cid))
    assert len(out) == 1 and isinstance(out[0], NodeGroupCreateAdmitted), out
    assert (await reserved(store, cid))["more"] == (1, 1, 1)


async def test_the_published_decision_sets_right_what_a_replay_decided(store: Harness) -> None:
    h = handlers()
    project = f"p-{uuid.uuid4().hex[:6]}"
    cid = await created(store, h, project)
    cloud_left(h, project, cores=1, limit=4)
    before = await reserved(store, cid)

    # An old request (a replay's) is not checked against the cloud: reserved; its published refusal takes it back.
    old = env(ClusterUpdateRequested(uuid=cid, project_id=project, node_count=3, decided=True), project, cid,
              age=timedelta(hours=1))
    out = await apply(store, h, old)
    assert len(out) == 1 and isinstance(out[0], ClusterUpdateAdmitted)
    assert (await reserved(store, cid))["default-worker"] == (3, 3, 2)
    rejected = ClusterUpdateRejected(uuid=cid, project_id=project, resource="cloud:cores",
                                     reason="Quota exceeded in the cloud for cores: requested 4, 1 of 4 left.")
    await apply(store, h, env(rejected, project, cid, cause=old))
    assert await reserved(store, cid) == before
    assert await vcpus_used(store, project) == 4

    # A request the cloud refuses now that was admitted when it was published: the admission applies it.
    fresh = env(ClusterUpdateRequested(uuid=cid, project_id=project, node_count=2, decided=True), project, cid)
    out = await apply(store, h, fresh)
    assert len(out) == 1 and isinstance(out[0], ClusterUpdateRejected)
    assert await reserved(store, cid) == before
    admitted = ClusterUpdateAdmitted(uuid=cid, project_id=project, node_count=2)
    await apply(store, h, env(admitted, project, cid, cause=fresh))
    assert (await reserved(store, cid))["default-worker"] == (2, 2, 1)
    assert await vcpus_used(store, project) == 6
    # Read once: the same decision again (a redelivery's twin) changes nothing.
    await apply(store, h, env(admitted, project, cid, cause=fresh))
    assert (await reserved(store, cid))["default-worker"] == (2, 2, 1)

    # A new nodegroup refused now, admitted when published: created by its admission; and one admitted now,
    # refused when published: removed by the refusal.
    ng = NodeGroup(uuid=str(uuid.uuid4()), name="ng-a", cluster_id=cid, project_id=project, flavor_id="m1.small",
                   node_count=1)
    ask = env(NodeGroupCreateRequested(nodegroup=ng, decided=True), project, cid)
    assert isinstance((await apply(store, h, ask))[0], ClusterUpdateRejected)
    await apply(store, h, env(NodeGroupCreateAdmitted(nodegroup=ng), project, cid, cause=ask))
    assert (await reserved(store, cid))["ng-a"] == (1, 1, 1)
    ng_b = NodeGroup(uuid=str(uuid.uuid4()), name="ng-b", cluster_id=cid, project_id=project, flavor_id="m1.small",
                     node_count=1)
    ask_b = env(NodeGroupCreateRequested(nodegroup=ng_b, decided=True), project, cid, age=timedelta(hours=1))
    assert isinstance((await apply(store, h, ask_b))[0], NodeGroupCreateAdmitted)
    await apply(store, h, env(ClusterUpdateRejected(uuid=cid, project_id=project, resource="cloud:cores",
                                                    reason="refused", nodegroup="ng-b"), project, cid, cause=ask_b))
    assert "ng-b" not in await reserved(store, cid)
    assert await vcpus_used(store, project) == 8
