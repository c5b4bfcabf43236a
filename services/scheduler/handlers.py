"""One function per event type: (envelope, transaction) -> events to publish."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import structlog

from proto import subjects
from proto.envelope import Envelope
from proto.events import (
    ClusterAdmitted,
    ClusterCreateFailed,
    ClusterCreateRequested,
    ClusterDeleteCompleted,
    ClusterDeleteRequested,
    ClusterRejected,
    QuotaCreated,
    QuotaDeleted,
    QuotaUpdated,
)
from services.runtime.projection import Outgoing
from services.scheduler import admission, store

log = structlog.get_logger(__name__)

PRODUCER = "scheduler"

FILTER_SUBJECTS = [
    subjects.producer_events("api", "cluster"),
    subjects.producer_events(PRODUCER, "cluster"),
    subjects.producer_events("provisioner", "cluster"),
    subjects.producer_events("api", "quota"),
]
"""Cluster requests from the API, the scheduler's own decisions (the facts its store is rebuilt from), the
provisioner's outcomes (failed / deleted) and the admins' per-project quotas (from the API)."""


class Handlers:
    """The scheduler's projection handler; ``default_quota`` applies to projects without a quota row."""

    def __init__(self, default_quota: int) -> None:
        self.default_quota = default_quota

    async def handle(self, env: Envelope, tx: asyncpg.Connection) -> Sequence[Outgoing]:
        p = env.payload
        if isinstance(p, ClusterCreateRequested):
            return await self.cluster_create_requested(env, p, tx)
        if isinstance(p, ClusterAdmitted):
            await store.record_decision(
                tx,
                cluster_id=p.uuid,
                project_id=p.project_id,
                decision="admitted",
                reason=None,
                decided_at=env.occurred_at,
                master_count=p.master_count,
                node_count=p.node_count,
            )
        elif isinstance(p, ClusterRejected):
            await store.record_decision(
                tx,
                cluster_id=p.uuid,
                project_id=p.project_id,
                decision="rejected",
                reason=p.reason,
                decided_at=env.occurred_at,
            )
        elif isinstance(p, ClusterCreateFailed):
            await store.mark(tx, p.uuid, p.project_id, "create_failed", env.occurred_at)
        elif isinstance(p, ClusterDeleteRequested):
            await store.mark(tx, p.uuid, p.project_id, "delete_requested", env.occurred_at)
        elif isinstance(p, QuotaCreated | QuotaUpdated):
            await store.set_quota(tx, p.project_id, p.hard_limit, env.occurred_at, p.resource)
            log.info("quota_set", project_id=p.project_id, resource=p.resource, hard_limit=p.hard_limit)
        elif isinstance(p, QuotaDeleted):
            await store.delete_quota(tx, p.project_id, p.resource)
            log.info("quota_deleted", project_id=p.project_id, resource=p.resource)
        elif isinstance(p, ClusterDeleteCompleted):
            await store.mark(tx, p.uuid, p.project_id, "delete_completed", env.occurred_at)
            log.info("cluster_quota_released", cluster_id=p.uuid, project_id=p.project_id)
        return ()

    async def cluster_create_requested(
        self, env: Envelope, p: ClusterCreateRequested, tx: asyncpg.Connection
    ) -> Sequence[Outgoing]:
        await store.lock_project(tx, p.project_id)
        facts = await store.admission_facts(tx, p.uuid, p.project_id)
        if facts.known:
            log.info("cluster_request_repeated", cluster_id=p.uuid, project_id=p.project_id)
            return ()
        in_use = facts.in_use
        limit = admission.cluster_limit(self.default_quota, facts.quota_override)
        decision = admission.decide(in_use, limit)
        await store.record_request(
            tx,
            cluster_id=p.uuid,
            project_id=p.project_id,
            name=p.name,
            master_count=p.master_count,
            node_count=p.node_count,
            requested_at=p.requested_at or env.occurred_at,
            decision="admitted" if decision.admitted else "rejected",
            reason=decision.reason,
        )
        subject = subjects.cluster_events(PRODUCER, p.uuid)
        if decision.admitted:
            log.info(
                "cluster_admitted", cluster_id=p.uuid, project_id=p.project_id, in_use=in_use, limit=limit
            )
            event: ClusterAdmitted | ClusterRejected = ClusterAdmitted(
                uuid=p.uuid,
                project_id=p.project_id,
                master_count=p.master_count,
                node_count=p.node_count,
                name=p.name,
            )
        else:
            log.info(
                "cluster_rejected", cluster_id=p.uuid, project_id=p.project_id, in_use=in_use, limit=limit
            )
            assert decision.reason is not None
            event = ClusterRejected(uuid=p.uuid, project_id=p.project_id, reason=decision.reason)
        return [Outgoing(subject, event, project_id=p.project_id, cluster_id=p.uuid)]
