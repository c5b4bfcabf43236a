"""The accounting service against a real nats-server and PostgreSQL: intervals of servers, volumes, floating IPs,
load balancers and clusters from the provisioner's events, timed by the cloud times the events carry; the usage
RPC (every grouping, every project); idempotency; the /metrics counters; and a store dropped and rebuilt by replay
that gives identical totals. Times are set explicitly so the expected figures are exact."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import REGISTRY

from deploy.local.nats import NatsServer
from proto import subjects
from proto.envelope import Envelope, new_envelope
from proto.events import (
    ClusterCreateStarted,
    ClusterDeleteCompleted,
    Event,
    FloatingIpAllocated,
    FloatingIpReleased,
    LoadBalancerCreated,
    LoadBalancerDeleted,
    NodeBecameActive,
    NodeCreated,
    NodeDeleted,
    NodeFailed,
    VolumeCreated,
    VolumeDeleted,
)
from proto.requests import GetUsage, UsageReport
from services.accounting.metrics import UsageMetrics
from services.accounting.service import build_service
from services.runtime import db, rpc
from services.runtime.rpc import RpcError
from services.runtime.service import ServiceConfig
from tests.conftest import wait_for
from tests.scheduler.support import Harness, start_harness, stop_harness

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
S = 1_000_000  # microseconds in a second


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
async def acct(make_nats_server: Callable[..., NatsServer], database_url: str) -> AsyncIterator[Harness]:
    server = make_nats_server()
    h = await start_harness(build_service, "accounting", server.url, database_url)
    yield h
    await stop_harness(h)


async def emit(h: Harness, cluster: str, project: str, payload: Event, when: datetime, **kw: str) -> tuple[Envelope, int]:
    env = new_envelope(payload, project_id=project, cluster_id=cluster, occurred_at=when)
    ack = await h.bus.publish(subjects.cluster_events("provisioner", cluster), env, **kw)  # type: ignore[arg-type]
    return env, ack.seq


def created(cluster: str, project: str, server: str, vcpus: int, ram_mb: int, when: float | None) -> NodeCreated:
    return NodeCreated(
        cluster_id=cluster, project_id=project, node_name=f"n-{server}", role="worker", server_id=server,
        flavor_id="f", flavor_name="m1.small", vcpus=vcpus, ram_mb=ram_mb, disk_gb=20,
        created_at=at(when) if when is not None else None,
    )


async def usage(h: Harness, project: str | None, **kw: object) -> UsageReport:
    reply = await rpc.request(h.bus.nc, subjects.ACCOUNTING_USAGE, GetUsage(project_id=project, **kw))  # type: ignore[arg-type]
    assert isinstance(reply, UsageReport)
    return reply


async def scenario(h: Harness) -> tuple[str, str, str, int]:
    """Project p, cluster c1 (started at 0, deleted at 200): s1 (2 vCPU, 4 GB) created at 1 by the cloud (event
    emitted at 9, ACTIVE at 30), gone at 100; s2 (4 vCPU, 8 GB) created at 10, closed by the cluster delete at 200;
    v1 (20 GB) 2..150; fip 40..120; lb 3..190. Cluster c2 (started 40): s3 created 40, still running; s4 created 60
    and went to ERROR at 61 (billed until gone: it still is)."""
    p = f"p-{uuid.uuid4().hex[:6]}"
    c1, c2 = str(uuid.uuid4()), str(uuid.uuid4())
    await emit(h, c1, p, ClusterCreateStarted(uuid=c1, project_id=p), at(0))
    await emit(h, c1, p, created(c1, p, "s1", 2, 4096, 1), at(9))
    await emit(h, c1, p, NodeBecameActive(cluster_id=c1, project_id=p, server_id="s1"), at(30))
    await emit(h, c1, p, created(c1, p, "s2", 4, 8192, 10), at(11))
    await emit(h, c1, p, VolumeCreated(cluster_id=c1, project_id=p, volume_id="v1", name="v", size_gb=20,
                                       created_at=at(2)), at(5))
    await emit(h, c1, p, FloatingIpAllocated(cluster_id=c1, project_id=p, floating_ip_id="f1", address="1.2.3.4",
                                             name="n-fip", created_at=at(40)), at(41))
    await emit(h, c1, p, LoadBalancerCreated(cluster_id=c1, project_id=p, load_balancer_id="l1", name="lb",
                                             created_at=at(3)), at(4))
    await emit(h, c2, p, ClusterCreateStarted(uuid=c2, project_id=p), at(40))
    await emit(h, c2, p, created(c2, p, "s3", 1, 1024, None), at(40))  # an older event: occurred_at stands in
    await emit(h, c2, p, created(c2, p, "s4", 8, 16384, 60), at(60))
    await emit(h, c2, p, NodeFailed(cluster_id=c2, project_id=p, server_id="s4", reason="no host"), at(61))
    await emit(h, c1, p, NodeDeleted(cluster_id=c1, project_id=p, server_id="s1", deleted_at=at(100)), at(101))
    await emit(h, c1, p, FloatingIpReleased(cluster_id=c1, project_id=p, floating_ip_id="f1",
                                            released_at=at(120)), at(121))
    await emit(h, c1, p, VolumeDeleted(cluster_id=c1, project_id=p, volume_id="v1", deleted_at=at(150)), at(151))
    await emit(h, c1, p, LoadBalancerDeleted(cluster_id=c1, project_id=p, load_balancer_id="l1",
                                             deleted_at=at(190)), at(191))
    _, last = await emit(h, c1, p, ClusterDeleteCompleted(uuid=c1, project_id=p), at(200))
    await wait_for(lambda: h.applied(last))
    return p, c1, c2, last


async def test_usage_of_every_resource_from_cloud_times(acct: Harness) -> None:
    p, c1, c2, _ = await scenario(acct)
    r = await usage(acct, p, since=at(0), until=at(300), group_by="resource")
    billed = {(row.resource_kind, row.resource_id): row.billed_us for row in r.rows}
    assert billed == {
        ("server", "s1"): 99 * S, ("server", "s2"): 190 * S, ("server", "s3"): 260 * S, ("server", "s4"): 240 * S,
        ("volume", "v1"): 148 * S, ("floating_ip", "f1"): 80 * S, ("load_balancer", "l1"): 187 * S,
        ("cluster", c1): 200 * S, ("cluster", c2): 260 * S,
    }
    assert r.core_seconds == 2 * 99 + 4 * 190 + 1 * 260 + 8 * 240
    assert r.node_seconds == 99 + 190 + 260 + 240
    by_cluster = {row.cluster_id: row for row in (await usage(acct, p, since=at(0), until=at(300))).rows}
    assert by_cluster[c1].volume_gb_us == 20 * 148 * S and by_cluster[c1].floating_ip_us == 80 * S
    assert by_cluster[c1].load_balancer_us == 187 * S and by_cluster[c1].cluster_us == 200 * S
    assert by_cluster[c2].ram_mb_us == (1024 * 260 + 16384 * 240) * S
    # a window in the middle, one cluster, and a project grouping
    mid = await usage(acct, p, since=at(90), until=at(110), cluster_id=c1, group_by="project")
    assert [(row.project_id, row.cluster_id) for row in mid.rows] == [(p, None)]
    assert mid.rows[0].server_us == (10 + 20) * S and mid.rows[0].volume_gb_us == 20 * 20 * S
    # an open interval counts up to now when no until is given
    before, later = await usage(acct, p), await usage(acct, p)
    assert later.until > before.until and later.core_seconds > before.core_seconds
    # every project (admin's view) holds this one; another project sees nothing; a bad window is a 400
    assert p in {row.project_id for row in (await usage(acct, None, group_by="project")).rows}
    assert (await usage(acct, "nobody", since=at(0), until=at(300))).rows == []
    with pytest.raises(RpcError) as bad:
        await usage(acct, p, since=at(10), until=at(0))
    assert bad.value.code == 400


async def test_duplicate_delivery_never_double_counts(acct: Harness) -> None:
    p, cid = f"p-{uuid.uuid4().hex[:6]}", str(uuid.uuid4())
    env, _ = await emit(acct, cid, p, created(cid, p, "sx", 2, 2048, 10), at(10))
    await acct.bus.publish(subjects.cluster_events("provisioner", cid), env, msg_id=f"again-{env.id}")
    await emit(acct, cid, p, created(cid, p, "sx", 2, 2048, 40), at(40))  # a repeated report keeps the first
    _, last = await emit(acct, cid, p, NodeDeleted(cluster_id=cid, project_id=p, server_id="sx",
                                                   deleted_at=at(70)), at(70))
    await emit(acct, cid, p, NodeDeleted(cluster_id=cid, project_id=p, server_id="sx", deleted_at=at(90)), at(90))
    await wait_for(lambda: acct.applied(last + 1))
    r = await usage(acct, p, since=at(0), until=at(1000))
    assert (r.node_seconds, r.core_seconds, r.ram_mb_seconds) == (60, 120, 2048 * 60)


async def test_a_resources_own_end_applied_after_the_clusters_delete_replaces_the_deletes_end(
        acct: Harness) -> None:
    """The cluster's delete closes what is still open at its own time (the fallback for an end the provisioner lost).
    A server's and a volume's reports applied after it (an accounting copy killed holding them: make chaos billed a
    server 12 s late) give their own, earlier ends."""
    p, cid = f"p-{uuid.uuid4().hex[:6]}", str(uuid.uuid4())
    await emit(acct, cid, p, ClusterCreateStarted(uuid=cid, project_id=p), at(0))
    await emit(acct, cid, p, created(cid, p, "sl", 2, 2048, 10), at(11))
    await emit(acct, cid, p, VolumeCreated(cluster_id=cid, project_id=p, volume_id="vl", name="v", size_gb=10,
                                           created_at=at(5)), at(6))
    await emit(acct, cid, p, ClusterDeleteCompleted(uuid=cid, project_id=p), at(200))
    await emit(acct, cid, p, NodeDeleted(cluster_id=cid, project_id=p, server_id="sl", deleted_at=at(100)), at(101))
    _, last = await emit(acct, cid, p, VolumeDeleted(cluster_id=cid, project_id=p, volume_id="vl",
                                                     deleted_at=at(150)), at(151))
    await wait_for(lambda: acct.applied(last))
    r = await usage(acct, p, since=at(0), until=at(300), group_by="resource")
    assert {(row.resource_kind, row.resource_id): row.billed_us for row in r.rows} == {
        ("server", "sl"): 90 * S, ("volume", "vl"): 145 * S, ("cluster", cid): 200 * S}


async def test_metrics_count_per_project_with_a_bounded_label_set(acct: Harness) -> None:
    p, _, _, _ = await scenario(acct)
    metrics = UsageMetrics(max_projects=1)
    metrics.labels["someone-else"] = "someone-else"  # the one label is taken: this project goes to _other
    await metrics.refresh(acct.svc)
    other = REGISTRY.get_sample_value("cove_accounting_volume_gb_seconds_total", {"project": "_other"}) or 0.0
    assert other >= 20 * 148
    assert REGISTRY.get_sample_value("cove_accounting_vcpu_seconds_total", {"project": p}) is None
    first = REGISTRY.get_sample_value("cove_accounting_vcpu_seconds_total", {"project": "_other"}) or 0.0
    await metrics.refresh(acct.svc)  # s3 and s4 still run: the counter only grows
    assert (REGISTRY.get_sample_value("cove_accounting_vcpu_seconds_total", {"project": "_other"}) or 0.0) > first


async def test_dropped_schema_rebuilt_by_replay_gives_identical_totals(
    make_nats_server: Callable[..., NatsServer], database_url: str,
) -> None:
    server = make_nats_server()
    h = await start_harness(build_service, "accounting", server.url, database_url)
    try:
        p, _, _, last = await scenario(h)
        window = {"since": at(0), "until": at(300)}
        before_rows = await h.rows("resources", "kind, resource_id")
        before_clusters = await h.rows("clusters", "cluster_id")
        before = {g: await usage(h, p, group_by=g, **window) for g in ("project", "cluster", "resource")}
        await h.svc.stop()
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(f"DROP SCHEMA {db.ident(h.schema)} CASCADE")
        finally:
            await conn.close()
        config = ServiceConfig(service="accounting", nats_url=server.url, database_url=database_url, http_port=0)
        h.svc = build_service(config, schema=h.schema, durable="accounting")
        await h.svc.start()
        await wait_for(lambda: h.applied(last), message="replay reached the end of the stream")
        assert await h.rows("resources", "kind, resource_id") == before_rows
        assert await h.rows("clusters", "cluster_id") == before_clusters
        for g, report in before.items():
            assert await usage(h, p, group_by=g, **window) == report
    finally:
        await stop_harness(h)


async def test_migration_0002_empties_the_checkpoint_so_the_store_is_replayed(database_url: str, tmp_path: Path) -> None:
    """A store made by 0001 (node intervals from ACTIVE) that already applied events: 0002 replaces its table and
    empties its checkpoint and inbox, so the runtime replays the stream into the new intervals."""
    import shutil

    from services.accounting.service import MIGRATIONS
    from services.runtime.projection import TRACKING_DDL

    schema = f"acct_mig_{uuid.uuid4().hex[:6]}"
    old = tmp_path / "migrations"
    old.mkdir()
    shutil.copy(MIGRATIONS / "0001_init.sql", old / "0001_init.sql")
    pool = await db.create_pool(database_url, schema)
    try:
        assert await db.migrate(pool, schema, old) == ["0001_init.sql"]
        async with pool.acquire() as conn:
            await conn.execute(TRACKING_DDL.format(schema=schema))
            await conn.execute(f"INSERT INTO {schema}.checkpoint VALUES ('accounting', 42)")
            await conn.execute(f"INSERT INTO {schema}.inbox (consumer, event_id, stream_seq) VALUES ('accounting', 'e', 42)")
        assert await db.migrate(pool, schema, MIGRATIONS) == ["0002_resource_intervals.sql"]
        async with pool.acquire() as conn:
            assert await conn.fetchval(f"SELECT count(*) FROM {schema}.checkpoint") == 0
            assert await conn.fetchval(f"SELECT count(*) FROM {schema}.inbox") == 0
            assert await conn.fetchval(f"SELECT to_regclass('{schema}.nodes')") is None
            assert await conn.fetchval(f"SELECT to_regclass('{schema}.resources')") is not None
    finally:
        async with pool.acquire() as conn:
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await pool.close()
