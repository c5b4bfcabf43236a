"""Event handlers ((envelope, transaction) -> nothing to publish) and the usage RPC of the accounting service.

Intervals are timed by the cloud's times that the provisioner's events carry (``created_at``, ``deleted_at``...),
never by when accounting handled them; an older event without them stands in with its envelope's ``occurred_at``.
A server is billed from its creation at Nova until it is gone, ERROR or not (Nova counts it against the project's
quota, and the cloud's ledger records it, from its create call to its removal), except a node the cloud lost after
it ran (``NodeLost``: its server went to ERROR or vanished under a cluster that exists), whose interval ends at the
cloud's time of the loss; the interval keeps the first end reported."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg
import structlog

from proto import subjects
from proto.envelope import Envelope
from proto.events import (
    ClusterCreateStarted,
    ClusterDeleteCompleted,
    FloatingIpAllocated,
    FloatingIpReleased,
    LoadBalancerCreated,
    LoadBalancerDeleted,
    NodeCreated,
    NodeDeleted,
    NodeLost,
    VolumeCreated,
    VolumeDeleted,
)
from proto.requests import ClusterUsage, GetUsage, Message, UsageReport, UsageRow
from services.accounting import store
from services.accounting.usage import Row, per_cluster, summarize
from services.runtime.projection import PlannedHandler, Write
from services.runtime.rpc import RpcError

log = structlog.get_logger(__name__)

FILTER_SUBJECTS = [subjects.producer_events("provisioner", "cluster")]


def plan(env: Envelope) -> list[Write]:
    """The writes applying ``env`` (every event accounting reads is applied by writes decided from it alone, so a
    batch of them runs grouped by statement: ``handle``)."""
    p = env.payload
    at = env.occurred_at
    if isinstance(p, NodeCreated):
        return [store.resource_started_write(
            kind="server", resource_id=p.server_id, cluster_id=p.cluster_id, project_id=p.project_id,
            at=p.created_at or at, name=p.node_name, vcpus=p.vcpus, ram_mb=p.ram_mb,
        )]
    if isinstance(p, NodeDeleted):
        log.info("usage_interval_closed", kind="server", resource_id=p.server_id, project_id=p.project_id)
        return [store.resource_ended_write(
            kind="server", resource_id=p.server_id, cluster_id=p.cluster_id, project_id=p.project_id,
            at=p.deleted_at or at, reason="deleted",
        )]
    if isinstance(p, NodeLost):
        # the cloud lost the node (ERROR, or gone): billing stops at the cloud's time, before Cove deletes it
        log.info("usage_interval_closed", kind="server", resource_id=p.server_id, project_id=p.project_id,
                 reason="lost")
        return [store.resource_ended_write(
            kind="server", resource_id=p.server_id, cluster_id=p.cluster_id, project_id=p.project_id,
            at=p.lost_at or at, reason="lost",
        )]
    if isinstance(p, VolumeCreated):
        return [store.resource_started_write(
            kind="volume", resource_id=p.volume_id, cluster_id=p.cluster_id, project_id=p.project_id,
            at=p.created_at, name=p.name, size_gb=p.size_gb,
        )]
    if isinstance(p, VolumeDeleted):
        return [store.resource_ended_write(
            kind="volume", resource_id=p.volume_id, cluster_id=p.cluster_id, project_id=p.project_id,
            at=p.deleted_at, reason="deleted",
        )]
    if isinstance(p, FloatingIpAllocated):
        return [store.resource_started_write(
            kind="floating_ip", resource_id=p.floating_ip_id, cluster_id=p.cluster_id,
            project_id=p.project_id, at=p.created_at, name=p.name,
        )]
    if isinstance(p, FloatingIpReleased):
        return [store.resource_ended_write(
            kind="floating_ip", resource_id=p.floating_ip_id, cluster_id=p.cluster_id,
            project_id=p.project_id, at=p.released_at, reason="deleted",
        )]
    if isinstance(p, LoadBalancerCreated):
        return [store.resource_started_write(
            kind="load_balancer", resource_id=p.load_balancer_id, cluster_id=p.cluster_id,
            project_id=p.project_id, at=p.created_at, name=p.name,
        )]
    if isinstance(p, LoadBalancerDeleted):
        return [store.resource_ended_write(
            kind="load_balancer", resource_id=p.load_balancer_id, cluster_id=p.cluster_id,
            project_id=p.project_id, at=p.deleted_at, reason="deleted",
        )]
    if isinstance(p, ClusterCreateStarted):
        return [store.cluster_started_write(p.uuid, p.project_id, at)]
    if isinstance(p, ClusterDeleteCompleted):
        log.info("usage_intervals_closed_by_cluster_delete", cluster_id=p.uuid)
        return store.cluster_deleted_writes(p.uuid, p.project_id, at)
    return []


handle = PlannedHandler(plan)
"""The projection handler: each event as its planned writes (one after another alone, grouped in a batch)."""


def _row(row: Row) -> UsageRow:
    t, i = row.totals, row.interval
    return UsageRow(
        project_id=row.project_id, cluster_id=row.cluster_id, vcpu_us=t.vcpu_us, ram_mb_us=t.ram_mb_us,
        volume_gb_us=t.volume_gb_us, floating_ip_us=t.floating_ip_us, load_balancer_us=t.load_balancer_us,
        server_us=t.server_us, cluster_us=t.cluster_us,
        resource_id=i.resource_id if i else None, resource_kind=i.kind if i else None,
        resource_name=i.name if i else None,
        vcpus=i.vcpus if i and i.kind == "server" else None, ram_mb=i.ram_mb if i and i.kind == "server" else None,
        size_gb=i.size_gb if i and i.kind == "volume" else None, started_at=i.start if i else None,
        ended_at=i.end if i else None, billed_us=row.billed_us,
    )


class UsageRpc:
    """``cove.rpc.accounting.usage``: GetUsage -> UsageReport."""

    def __init__(
        self, pool: Callable[[], asyncpg.Pool | None], clock: Callable[[], datetime] | None = None
    ) -> None:
        self._pool = pool
        self._clock = clock or (lambda: datetime.now(UTC))

    async def __call__(self, req: Message) -> Message:
        if not isinstance(req, GetUsage):
            raise RpcError(400, f"expected GetUsage, got {type(req).__name__}")
        pool = self._pool()
        if pool is None:
            raise RpcError(503, "accounting store is not ready")
        for value, name in ((req.since, "since"), (req.until, "until")):
            if value is not None and value.tzinfo is None:
                raise RpcError(400, f"{name} must carry a timezone")
        now = self._clock()
        until = req.until or now
        if req.since is not None and req.since > until:
            raise RpcError(400, "since is after until")
        found = await store.intervals(pool, req.project_id, since=req.since, until=until, cluster_id=req.cluster_id)
        total, rows = summarize(found, since=req.since, until=until, now=now, group_by=req.group_by)
        clusters = per_cluster(found, since=req.since, until=until, now=now)
        return UsageReport(
            project_id=req.project_id or "",
            since=req.since,
            until=until,
            node_seconds=total.server_us / 1_000_000,
            core_seconds=total.vcpu_us / 1_000_000,
            ram_mb_seconds=total.ram_mb_us / 1_000_000,
            clusters=[
                ClusterUsage(
                    cluster_id=cid, node_seconds=t.server_us / 1_000_000, core_seconds=t.vcpu_us / 1_000_000,
                    ram_mb_seconds=t.ram_mb_us / 1_000_000, nodes=t.servers,
                )
                for cid, t in sorted(clusters.items())
            ],
            rows=[_row(r) for r in rows],
        )
