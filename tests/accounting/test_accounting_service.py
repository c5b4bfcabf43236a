"""The accounting service against a real nats-server and PostgreSQL: usage from node events, the usage RPC,
idempotency and rebuild by replay. Event times are set explicitly so the expected figures are exact."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import pytest

from deploy.local.nats import NatsServer
from proto import subjects
from proto.envelope import Envelope, new_envelope
from proto.events import ClusterDeleteCompleted, Event, NodeBecameActive, NodeCreated, NodeDeleted, NodeFailed
from proto.requests import GetUsage, UsageReport
from services.accounting.service import build_service
from services.runtime import rpc
from services.runtime.rpc import RpcError
from tests.conftest import wait_for
from tests.scheduler.support import Harness, start_harness, stop_harness

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
async def acct(make_nats_server: Callable[..., NatsServer], database_url: str) -> AsyncIterator[Harness]:
    server = make_nats_server()
    h = await start_harness(build_service, "accounting", server.url, database_url)
    yield h
    await stop_harness(h)


async def emit(
    h: Harness, cluster: str, project: str, payload: Event, when: datetime
) -> tuple[Envelope, int]:
    env = new_envelope(payload, project_id=project, cluster_id=cluster, occurred_at=when)
    ack = await h.bus.publish(subjects.cluster_events("provisioner", cluster), env)
    return env, ack.seq


async def node(
    h: Harness,
    cluster: str,
    project: str,
    server: str,
    *,
    vcpus: int,
    ram_mb: int,
    created: float,
    active: float,
) -> int:
    await emit(
        h,
        cluster,
        project,
        NodeCreated(
            cluster_id=cluster,
            project_id=project,
            node_name=f"n-{server}",
            role="worker",
            server_id=server,
            flavor_id="f",
            flavor_name="m1.small",
            vcpus=vcpus,
            ram_mb=ram_mb,
            disk_gb=20,
        ),
        at(created),
    )
    _, seq = await emit(
        h,
        cluster,
        project,
        NodeBecameActive(cluster_id=cluster, project_id=project, server_id=server),
        at(active),
    )
    return seq


async def usage(h: Harness, project: str, **kw: object) -> UsageReport:
    reply = await rpc.request(h.bus.nc, subjects.ACCOUNTING_USAGE, GetUsage(project_id=project, **kw))  # type: ignore[arg-type]
    assert isinstance(reply, UsageReport)
    return reply


async def scenario(h: Harness) -> tuple[str, str, str, int]:
    """Cluster c1: s1 (2 vCPU, 4 GB) active 0..100 deleted; s2 (4 vCPU, 8 GB) active 10.. closed by cluster delete
    at 200. Cluster c2: s3 (1 vCPU, 1 GB) active 50.. still running; s4 fails before becoming active."""
    project = f"p-{uuid.uuid4().hex[:6]}"
    c1, c2 = str(uuid.uuid4()), str(uuid.uuid4())
    await node(h, c1, project, "s1", vcpus=2, ram_mb=4096, created=-5, active=0)
    await node(h, c1, project, "s2", vcpus=4, ram_mb=8192, created=-5, active=10)
    await node(h, c2, project, "s3", vcpus=1, ram_mb=1024, created=40, active=50)
    await emit(h, c1, project, NodeDeleted(cluster_id=c1, project_id=project, server_id="s1"), at(100))
    await emit(
        h,
        c2,
        project,
        NodeCreated(
            cluster_id=c2,
            project_id=project,
            node_name="n-s4",
            role="worker",
            server_id="s4",
            flavor_id="f",
            flavor_name="m1.small",
            vcpus=8,
            ram_mb=16384,
            disk_gb=20,
        ),
        at(60),
    )
    await emit(
        h,
        c2,
        project,
        NodeFailed(cluster_id=c2, project_id=project, server_id="s4", reason="no host"),
        at(61),
    )
    _, last = await emit(h, c1, project, ClusterDeleteCompleted(uuid=c1, project_id=project), at(200))
    await wait_for(lambda: h.applied(last))
    return project, c1, c2, last


async def test_usage_after_active_and_deleted_events(acct: Harness) -> None:
    project, c1, c2, _ = await scenario(acct)
    # closed window [0, 300): s1 100 s, s2 190 s, s3 250 s
    r = await usage(acct, project, since=at(0), until=at(300))
    assert r.node_seconds == 100 + 190 + 250
    assert r.core_seconds == 2 * 100 + 4 * 190 + 1 * 250
    assert r.ram_mb_seconds == 4096 * 100 + 8192 * 190 + 1024 * 250
    by_cluster = {c.cluster_id: c for c in r.clusters}
    assert by_cluster[c1].node_seconds == 290 and by_cluster[c1].nodes == 2
    assert by_cluster[c2].core_seconds == 250 and by_cluster[c2].nodes == 1  # the failed node never ran
    # a window in the middle
    mid = await usage(acct, project, since=at(90), until=at(110))
    assert mid.node_seconds == 10 + 20 + 20
    # one cluster only
    only = await usage(acct, project, since=at(0), until=at(300), cluster_id=c2)
    assert [c.cluster_id for c in only.clusters] == [c2] and only.node_seconds == 250
    # open interval (s3) counts up to now when no until is given
    before = await usage(acct, project)
    later = await usage(acct, project)
    assert later.until > before.until
    expected_s3 = (before.until - at(50)).total_seconds()
    assert before.node_seconds == pytest.approx(290 + expected_s3, abs=1e-6)
    assert later.node_seconds > before.node_seconds
    # other projects see nothing; a bad window is a 400
    assert (await usage(acct, "nobody", since=at(0), until=at(300))).node_seconds == 0
    with pytest.raises(RpcError) as bad:
        await usage(acct, project, since=at(10), until=at(0))
    assert bad.value.code == 400


async def test_duplicate_delivery_never_double_counts(acct: Harness) -> None:
    project = f"p-{uuid.uuid4().hex[:6]}"
    cid = str(uuid.uuid4())
    await node(acct, cid, project, "sx", vcpus=2, ram_mb=2048, created=0, active=10)
    # the NodeBecameActive envelope again under another Nats-Msg-Id, and a second NodeBecameActive (new id) later
    events = await acct.events(subjects.producer_events("provisioner"))
    active = next(e for e in events if isinstance(e.payload, NodeBecameActive))
    await acct.bus.publish(subjects.cluster_events("provisioner", cid), active, msg_id=f"again-{active.id}")
    await emit(
        acct, cid, project, NodeBecameActive(cluster_id=cid, project_id=project, server_id="sx"), at(40)
    )
    _, last = await emit(
        acct, cid, project, NodeDeleted(cluster_id=cid, project_id=project, server_id="sx"), at(70)
    )
    await emit(acct, cid, project, NodeDeleted(cluster_id=cid, project_id=project, server_id="sx"), at(90))
    await wait_for(lambda: acct.applied(last + 1))
    r = await usage(acct, project, since=at(0), until=at(1000))
    assert (r.node_seconds, r.core_seconds, r.ram_mb_seconds) == (60, 120, 2048 * 60)


async def test_rebuild_by_replay_gives_the_same_figures(acct: Harness) -> None:
    project, _, _, last = await scenario(acct)
    window = {"since": at(0), "until": at(300)}
    before_rows = await acct.rows("nodes", "server_id")
    before = await usage(acct, project, **window)
    await acct.projection.rebuild()
    await wait_for(lambda: acct.applied(last), message="replay reached the end of the stream")
    assert await acct.rows("nodes", "server_id") == before_rows
    assert await usage(acct, project, **window) == before
