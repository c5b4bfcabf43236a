"""One function per event type: (envelope, transaction) -> events to publish."""

from __future__ import annotations

import itertools
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


ADMISSION = (ClusterCreateRequested, ClusterAdmitted, ClusterRejected)
"""The event types of an admission run (``Handlers.admission_run``): under load the stream interleaves new clusters'
requests with the scheduler's own decisions on earlier ones."""


class Handlers:
    """The scheduler's projection handler; ``default_quota`` applies to projects without a quota row."""

    def __init__(self, default_quota: int) -> None:
        self.default_quota = default_quota

    async def handle(self, env: Envelope, tx: asyncpg.Connection) -> Sequence[Outgoing]:
        p = env.payload
        if isinstance(p, ADMISSION):
            return (await self.admission_run([env], tx))[0]
        if isinstance(p, ClusterCreateFailed):
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

    async def handle_batch(self, envs: list[Envelope], tx: asyncpg.Connection) -> list[Sequence[Outgoing]]:
        """The scheduler's batch handler: each run of consecutive ``ADMISSION`` events at once
        (``admission_run``), every other event with ``handle``."""
        outgoing: list[Sequence[Outgoing]] = []
        for admission_events, group in itertools.groupby(envs, key=lambda env: isinstance(env.payload, ADMISSION)):
            run = list(group)
            if admission_events:
                outgoing.extend(await self.admission_run(run, tx))
            else:
                for env in run:
                    outgoing.append(await self.handle(env, tx))
        return outgoing

    async def admission_run(self, run: list[Envelope], tx: asyncpg.Connection) -> list[Sequence[Outgoing]]:
        """Admit or reject the requests of ``run`` and record its published decisions, in a few statements
        whatever its length: lock the projects, read the facts, decide in order in memory, write the requests, write
        the decisions. The result is what applying the events one by one in stream order gives, because a decision
        that merely confirms what the store holds changes no project's usage; when one does not (a replay that
        re-decided differently, a decision on a cluster never requested) the run is applied one event at a time."""
        payloads = [_admission_event(env) for env in run]
        if not any(isinstance(p, ClusterCreateRequested) for p in payloads):
            # A decision touches only its own cluster's row (and that project's usage counter, commutatively).
            await store.record_decisions(tx, [_decided(env) for env in run])
            return [()] * len(run)
        await store.lock_projects(tx, [p.project_id for p in payloads])
        facts = await store.run_facts(tx, [p.uuid for p in payloads], [p.project_id for p in payloads])
        decisions = dict(facts.decisions)
        in_use = {project: used for project, (used, _) in facts.projects.items()}
        requests: list[store.Request] = []
        confirmed: list[store.Decided] = []
        outgoing: list[Sequence[Outgoing]] = []
        for env in run:
            p = env.payload
            if isinstance(p, ClusterCreateRequested):
                outgoing.append(self._decide(env, p, decisions, in_use, facts, requests))
                continue
            decided = _decided(env)
            if decisions.get(decided.cluster_id, "unknown") != decided.decision:
                # (The run holds a request too, so it has more than one event: each alone takes another branch.)
                log.info("admission_run_applied_one_by_one", cluster_id=decided.cluster_id, events=len(run))
                return [(await self.admission_run([one], tx))[0] for one in run]
            confirmed.append(decided)
            outgoing.append(())
        if requests:
            await store.record_requests(tx, requests)
        if confirmed:
            await store.record_decisions(tx, confirmed)
        return outgoing

    def _decide(
        self,
        env: Envelope,
        p: ClusterCreateRequested,
        decisions: dict[str, str | None],
        in_use: dict[str, int],
        facts: store.RunFacts,
        requests: list[store.Request],
    ) -> Sequence[Outgoing]:
        """Decide on one request of a run given the usage so far (``in_use``, updated), queue its row in
        ``requests`` and return its decision event (nothing for a repeated request)."""
        if p.uuid in decisions:
            log.info("cluster_request_repeated", cluster_id=p.uuid, project_id=p.project_id)
            return ()
        used = in_use.get(p.project_id, 0)
        limit = admission.cluster_limit(self.default_quota, facts.projects[p.project_id][1])
        decision = admission.decide(used, limit)
        verdict = "admitted" if decision.admitted else "rejected"
        decisions[p.uuid] = verdict
        requests.append(store.Request(
            cluster_id=p.uuid,
            project_id=p.project_id,
            name=p.name,
            master_count=p.master_count,
            node_count=p.node_count,
            requested_at=p.requested_at or env.occurred_at,
            decision=verdict,
            reason=decision.reason,
        ))
        subject = subjects.cluster_events(PRODUCER, p.uuid)
        if decision.admitted:
            in_use[p.project_id] = used + 1
            log.info("cluster_admitted", cluster_id=p.uuid, project_id=p.project_id, in_use=used, limit=limit)
            event: ClusterAdmitted | ClusterRejected = ClusterAdmitted(
                uuid=p.uuid,
                project_id=p.project_id,
                master_count=p.master_count,
                node_count=p.node_count,
                name=p.name,
            )
        else:
            log.info("cluster_rejected", cluster_id=p.uuid, project_id=p.project_id, in_use=used, limit=limit)
            assert decision.reason is not None
            event = ClusterRejected(uuid=p.uuid, project_id=p.project_id, reason=decision.reason)
        return [Outgoing(subject, event, project_id=p.project_id, cluster_id=p.uuid)]


def _admission_event(env: Envelope) -> ClusterCreateRequested | ClusterAdmitted | ClusterRejected:
    p = env.payload
    assert isinstance(p, ADMISSION)
    return p


def _decided(env: Envelope) -> store.Decided:
    """The store's record of a published decision event."""
    p = env.payload
    if isinstance(p, ClusterAdmitted):
        return store.Decided(p.uuid, p.project_id, "admitted", None, env.occurred_at, p.master_count, p.node_count)
    assert isinstance(p, ClusterRejected)
    return store.Decided(p.uuid, p.project_id, "rejected", p.reason, env.occurred_at)
