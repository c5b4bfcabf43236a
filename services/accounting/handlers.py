"""Event handlers ((envelope, transaction) -> nothing to publish) and the usage RPC of the accounting service."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import asyncpg
import structlog

from proto import subjects
from proto.envelope import Envelope
from proto.events import ClusterDeleteCompleted, NodeBecameActive, NodeCreated, NodeDeleted, NodeFailed
from proto.requests import ClusterUsage, GetUsage, Message, UsageReport
from services.accounting import store
from services.accounting.usage import usage
from services.runtime.projection import Outgoing
from services.runtime.rpc import RpcError

log = structlog.get_logger(__name__)

FILTER_SUBJECTS = [subjects.producer_events("provisioner", "cluster")]


async def handle(env: Envelope, tx: asyncpg.Connection) -> Sequence[Outgoing]:
    p = env.payload
    at = env.occurred_at
    if isinstance(p, NodeCreated):
        await store.node_created(
            tx,
            server_id=p.server_id,
            cluster_id=p.cluster_id,
            project_id=p.project_id,
            node_name=p.node_name,
            role=p.role,
            flavor_id=p.flavor_id,
            vcpus=p.vcpus,
            ram_mb=p.ram_mb,
            at=at,
        )
    elif isinstance(p, NodeBecameActive):
        await store.node_active(
            tx, server_id=p.server_id, cluster_id=p.cluster_id, project_id=p.project_id, at=at
        )
        log.info("usage_interval_opened", server_id=p.server_id, project_id=p.project_id)
    elif isinstance(p, NodeDeleted):
        await store.node_ended(
            tx,
            server_id=p.server_id,
            cluster_id=p.cluster_id,
            project_id=p.project_id,
            at=at,
            reason="deleted",
        )
        log.info("usage_interval_closed", server_id=p.server_id, project_id=p.project_id, reason="deleted")
    elif isinstance(p, NodeFailed):
        await store.node_ended(
            tx,
            server_id=p.server_id,
            cluster_id=p.cluster_id,
            project_id=p.project_id,
            at=at,
            reason="failed",
        )
    elif isinstance(p, ClusterDeleteCompleted):
        closed = await store.cluster_deleted(tx, p.uuid, at)
        if closed:
            log.info("usage_intervals_closed_by_cluster_delete", cluster_id=p.uuid, nodes=closed)
    return ()


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
        found = await store.intervals(
            pool, req.project_id, since=req.since, until=until, cluster_id=req.cluster_id
        )
        result = usage(found, since=req.since, until=until, now=now)
        return UsageReport(
            project_id=req.project_id,
            since=req.since,
            until=until,
            node_seconds=result.total.node_seconds,
            core_seconds=result.total.core_seconds,
            ram_mb_seconds=result.total.ram_mb_seconds,
            clusters=[
                ClusterUsage(
                    cluster_id=cid,
                    node_seconds=t.node_seconds,
                    core_seconds=t.core_seconds,
                    ram_mb_seconds=t.ram_mb_seconds,
                    nodes=t.nodes,
                )
                for cid, t in sorted(result.clusters.items())
            ],
        )
