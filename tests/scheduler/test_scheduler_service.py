"""The scheduler against a real nats-server and PostgreSQL, fed upstream events straight onto the bus."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest

from deploy.local.nats import NatsServer
from proto import subjects
from proto.events import (
    ClusterAdmitted,
    ClusterCreateFailed,
    ClusterCreateRequested,
    ClusterDeleteCompleted,
    ClusterRejected,
    ClusterTemplate,
)
from services.scheduler import store
from services.scheduler.admission import quota_exceeded_message
from services.scheduler.service import build_service
from tests.conftest import wait_for
from tests.scheduler.support import Harness, start_harness, stop_harness

pytestmark = pytest.mark.integration


@pytest.fixture
async def sched(make_nats_server: Callable[..., NatsServer], database_url: str) -> AsyncIterator[Harness]:
    server = make_nats_server()
    h = await start_harness(
        build_service, "scheduler", server.url, database_url, {"COVE_DEFAULT_CLUSTER_QUOTA": "2"}
    )
    yield h
    await stop_harness(h)


def request(project: str, name: str, cluster_id: str | None = None) -> ClusterCreateRequested:
    cid = cluster_id or str(uuid.uuid4())
    template = ClusterTemplate(
        uuid=str(uuid.uuid4()), project_id=project, user_id="u", image_id="img", created_at=datetime.now(UTC)
    )
    return ClusterCreateRequested(
        uuid=cid, name=name, project_id=project, user_id="u", template=template, master_count=1, node_count=2
    )


async def ask(h: Harness, project: str, name: str) -> tuple[str, int]:
    req = request(project, name)
    _, seq = await h.publish(
        subjects.cluster_events("api", req.uuid), req, project_id=project, cluster_id=req.uuid
    )
    return req.uuid, seq


async def decisions(h: Harness) -> list[tuple[str, str]]:
    out = await h.events(subjects.producer_events("scheduler"))
    return [(e.type, e.payload.uuid) for e in out if isinstance(e.payload, ClusterAdmitted | ClusterRejected)]


async def test_admits_up_to_quota_rejects_with_magnum_message_and_frees_on_delete(sched: Harness) -> None:
    project, other = f"p-{uuid.uuid4().hex[:6]}", f"q-{uuid.uuid4().hex[:6]}"
    c1, _ = await ask(sched, project, "one")
    c2, _ = await ask(sched, project, "two")
    c3, _ = await ask(sched, project, "three")
    o1, _ = await ask(sched, other, "elsewhere")  # another project has its own quota
    got = await wait_for(lambda: _n_decisions(sched, 4), message="four decisions")
    assert got == [
        ("ClusterAdmitted", c1),
        ("ClusterAdmitted", c2),
        ("ClusterRejected", c3),
        ("ClusterAdmitted", o1),
    ]  # build order = stream order
    events = await sched.events(subjects.producer_events("scheduler"))
    rejected = next(e for e in events if e.cluster_id == c3)
    assert isinstance(rejected.payload, ClusterRejected)
    assert rejected.payload.reason == quota_exceeded_message(2)
    assert rejected.payload.reason.startswith(
        "Resource limit exceeded: You have reached the maximum clusters"
    )
    admitted = next(e for e in events if e.cluster_id == c1)
    assert isinstance(admitted.payload, ClusterAdmitted)
    assert (admitted.payload.name, admitted.payload.node_count, admitted.cluster_id) == ("one", 2, c1)

    # A failed create still counts (as in Magnum) ...
    await sched.publish(
        subjects.cluster_events("provisioner", c2),
        ClusterCreateFailed(uuid=c2, project_id=project, status_reason="boom"),
        project_id=project,
        cluster_id=c2,
    )
    c4, _ = await ask(sched, project, "four")
    await wait_for(lambda: _n_decisions(sched, 5))
    assert (await decisions(sched))[-1] == ("ClusterRejected", c4)
    # ... until its delete completes.
    await sched.publish(
        subjects.cluster_events("provisioner", c2),
        ClusterDeleteCompleted(uuid=c2, project_id=project),
        project_id=project,
        cluster_id=c2,
    )
    c5, _ = await ask(sched, project, "five")
    await wait_for(lambda: _n_decisions(sched, 6))
    assert (await decisions(sched))[-1] == ("ClusterAdmitted", c5)


async def test_redelivered_or_repeated_request_decides_once(sched: Harness) -> None:
    project = f"p-{uuid.uuid4().hex[:6]}"
    req = request(project, "dup")
    subject = subjects.cluster_events("api", req.uuid)
    env, _ = await sched.publish(subject, req, project_id=project, cluster_id=req.uuid)
    # the same event again past JetStream's dedup (another Nats-Msg-Id): the inbox skips it
    again = await sched.bus.publish(subject, env, msg_id=f"again-{env.id}")
    # a new event for the same cluster (e.g. a client retry): the store already knows the cluster
    _, seq = await sched.publish(subject, req, project_id=project, cluster_id=req.uuid)
    assert seq > again.seq
    await wait_for(lambda: sched.applied(seq))
    # and a full redelivery of the stream to the durable consumer changes nothing either
    p = sched.projection
    before = await sched.rows("clusters", "cluster_id")
    await p.consumer.stop()
    await p.consumer.recreate(start_seq=1)
    await p.consumer.start(ensure=False)
    last = await sched.last_seq()
    await wait_for(lambda: _consumer_acked(sched, last))
    assert await sched.rows("clusters", "cluster_id") == before
    assert await decisions(sched) == [("ClusterAdmitted", req.uuid)]


async def test_rebuild_by_replay_gives_identical_store(sched: Harness) -> None:
    project = f"p-{uuid.uuid4().hex[:6]}"
    ids = [(await ask(sched, project, f"c{i}"))[0] for i in range(3)]
    await wait_for(lambda: _n_decisions(sched, 3))
    await sched.publish(
        subjects.cluster_events("provisioner", ids[0]),
        ClusterDeleteCompleted(uuid=ids[0], project_id=project),
        project_id=project,
        cluster_id=ids[0],
    )
    await ask(sched, project, "after-delete")
    await wait_for(lambda: _n_decisions(sched, 4))
    last = await sched.last_seq()
    await wait_for(lambda: sched.applied(last))
    before = await sched.rows("clusters", "cluster_id")
    assert len(before) == 4
    await sched.projection.rebuild()
    await wait_for(lambda: sched.applied(last), message="replay reached the end of the stream")
    assert await sched.rows("clusters", "cluster_id") == before
    assert await sched.last_seq() == last  # nothing re-published during the replay


async def _n_decisions(h: Harness, n: int) -> list[tuple[str, str]]:
    got = await decisions(h)
    return got if len(got) >= n else []


async def _consumer_acked(h: Harness, seq: int) -> bool:
    info = await h.projection.consumer.info()
    return info is not None and info.ack_floor is not None and info.ack_floor.stream_seq >= seq


async def test_per_project_quota_row_overrides_the_default(sched: Harness) -> None:
    project = f"p-{uuid.uuid4().hex[:6]}"
    async with sched.pool.acquire() as conn:
        await store.set_quota(conn, project, 1, datetime.now(UTC))
    c1, _ = await ask(sched, project, "one")
    c2, _ = await ask(sched, project, "two")
    got = await wait_for(lambda: _n_decisions(sched, 2))
    assert got == [("ClusterAdmitted", c1), ("ClusterRejected", c2)]
    events = await sched.events(subjects.producer_events("scheduler"))
    assert events[-1].payload == ClusterRejected(
        uuid=c2, project_id=project, reason=quota_exceeded_message(1), resource="Cluster"
    )
