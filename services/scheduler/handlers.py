"""One function per event type: (envelope, transaction) -> events to publish."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg
import structlog

from proto import clusterspec, subjects
from proto.envelope import Envelope
from proto.events import (
    ClusterAdmitted,
    ClusterCreateCompleted,
    ClusterCreateFailed,
    ClusterCreateRequested,
    ClusterDeleteCompleted,
    ClusterDeleteRequested,
    ClusterQueued,
    ClusterQueuePositions,
    ClusterRejected,
    ClusterUpdateAdmitted,
    ClusterUpdateCompleted,
    ClusterUpdateFailed,
    ClusterUpdateRejected,
    ClusterUpdateRequested,
    NodeGroupCreateAdmitted,
    NodeGroupCreateRequested,
    NodeGroupDeleteRequested,
    QuotaCreated,
    QuotaDeleted,
    QuotaUpdated,
)
from proto.nodegroups import DEFAULT_MASTER, DEFAULT_WORKER
from services.runtime.projection import Outgoing, Write, apply_writes
from services.scheduler import admission, cloudquota, store
from services.scheduler.admission import Demand, GroupSize
from services.scheduler.cloudquota import CloudQuota

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


ADMISSION = (ClusterCreateRequested, ClusterAdmitted, ClusterQueued, ClusterRejected)
"""The event types of an admission run (``Handlers.admission_run``): under load the stream interleaves new clusters'
requests with the scheduler's own decisions on earlier ones."""

LIFECYCLE = (ClusterCreateCompleted, ClusterCreateFailed, ClusterDeleteRequested, ClusterDeleteCompleted)
"""The events besides ``ADMISSION`` that a wide run (``Handlers.wide_run``) applies: what they change of a project's
usage is followed in memory, and their writes are decided from the event alone (with builds unbounded)."""

HANDLED = (*ADMISSION, *LIFECYCLE, ClusterUpdateRequested, NodeGroupCreateRequested, ClusterUpdateAdmitted,
           NodeGroupCreateAdmitted, ClusterUpdateRejected, ClusterUpdateFailed, NodeGroupDeleteRequested,
           ClusterUpdateCompleted, QuotaCreated, QuotaUpdated, QuotaDeleted)
"""Every event type ``Handlers.handle`` acts on; it ignores the others (most of the provisioner's)."""

_WIDE = (*ADMISSION, *LIFECYCLE)


QUEUE_POSITIONS_SHOWN = 1000
"""``ClusterQueuePositions`` names at most this many waiting clusters (the rest keep the place they were given)."""


class Handlers:
    """The scheduler's projection handler. ``default_quota`` (clusters) and ``limits`` (every resource, -1 for
    unlimited) apply to projects without a quota row; ``max_builds`` / ``max_builds_per_cloud`` bound the clusters
    being built at once (-1 / absent: no bound), and ``cloud`` is the cloud new clusters are built in."""

    def __init__(
        self,
        default_quota: int,
        limits: dict[str, int] | None = None,
        max_builds: int = admission.UNLIMITED,
        max_builds_per_cloud: dict[str, int] | None = None,
        cloud: str = "default",
        cloud_quota: CloudQuota | None = None,
    ) -> None:
        self.default_quota = default_quota
        self.cloud_quota = cloud_quota
        self.limits = {**{r: admission.UNLIMITED for r in admission.RESOURCES}, **(limits or {}),
                       admission.CLUSTER: default_quota}
        self.max_builds = max_builds
        self.max_builds_per_cloud = dict(max_builds_per_cloud or {})
        self.cloud = cloud

    @property
    def queueing(self) -> bool:
        """Whether builds are bounded (else every admitted cluster is built at once, and no queue is kept)."""
        return self.max_builds >= 0 or any(v >= 0 for v in self.max_builds_per_cloud.values())

    async def handle(self, env: Envelope, tx: asyncpg.Connection) -> Sequence[Outgoing]:
        p = env.payload
        if isinstance(p, ADMISSION):
            return (await self.admission_run([env], tx))[0]
        if isinstance(p, ClusterCreateFailed | ClusterCreateCompleted | ClusterUpdateCompleted | ClusterUpdateFailed) \
                and self.cloud_quota is not None:
            self.cloud_quota.forget(p.project_id)  # the cloud's usage now holds what was built
        if isinstance(p, ClusterCreateFailed):
            await store.mark(tx, p.uuid, p.project_id, "create_failed", env.occurred_at)
            return await self._slot_freed(env, tx, p.uuid)
        if isinstance(p, ClusterCreateCompleted):
            return await self._slot_freed(env, tx, p.uuid)
        if isinstance(p, ClusterUpdateRequested):
            return await self._resize(env, p, tx)
        if isinstance(p, NodeGroupCreateRequested):
            return await self._nodegroup_created(env, p, tx)
        if isinstance(p, ClusterUpdateAdmitted | NodeGroupCreateAdmitted | ClusterUpdateRejected):
            await self._change_decided(env, p, tx)
        elif isinstance(p, ClusterUpdateFailed):
            await store.update_ended(tx, p.uuid)
        elif isinstance(p, NodeGroupDeleteRequested):
            await self._nodegroup_deleted(p, tx)
        elif isinstance(p, ClusterUpdateCompleted):
            await store.settle_groups(tx, p.uuid, dict(p.nodegroup_counts))
            await store.sum_groups(tx, p.uuid)
        elif isinstance(p, ClusterDeleteRequested):
            await store.mark(tx, p.uuid, p.project_id, "delete_requested", env.occurred_at)
            if self.queueing:  # a waiting cluster deleted before it was built leaves the queue
                await store.lock_builds(tx)
                if await store.finish_build(tx, p.uuid, queued_too=True):
                    return await self._fill_slots(env, tx)
        elif isinstance(p, QuotaCreated | QuotaUpdated):
            await store.set_quota(tx, p.project_id, p.hard_limit, env.occurred_at, p.resource)
            log.info("quota_set", project_id=p.project_id, resource=p.resource, hard_limit=p.hard_limit)
        elif isinstance(p, QuotaDeleted):
            await store.delete_quota(tx, p.project_id, p.resource)
            log.info("quota_deleted", project_id=p.project_id, resource=p.resource)
        elif isinstance(p, ClusterDeleteCompleted):
            await store.mark(tx, p.uuid, p.project_id, "delete_completed", env.occurred_at)
            log.info("cluster_quota_released", cluster_id=p.uuid, project_id=p.project_id)
            return await self._slot_freed(env, tx, p.uuid)
        return ()

    async def handle_batch(self, envs: list[Envelope], tx: asyncpg.Connection) -> list[Sequence[Outgoing]]:
        """The scheduler's batch handler. With builds unbounded and no request the cloud is asked about (a replay,
        a backlog older than the cloud check's ``max_age``, no check): each run of consecutive ``ADMISSION``,
        ``LIFECYCLE`` and ignored events at once (``wide_run``), every other event with ``handle``. Else each run of
        consecutive ``ADMISSION`` events at once (``admission_run``), every other event with ``handle``."""
        if self.queueing or self._asks_cloud(envs):
            return await self._admission_runs(envs, tx)
        outgoing: list[Sequence[Outgoing]] = []
        run: list[Envelope] = []
        for env in envs:
            if isinstance(env.payload, _WIDE) or not isinstance(env.payload, HANDLED):
                run.append(env)
                continue
            outgoing.extend(await self.wide_run(run, tx))
            run = []
            outgoing.append(await self.handle(env, tx))
        outgoing.extend(await self.wide_run(run, tx))
        return outgoing

    def _asks_cloud(self, envs: list[Envelope]) -> bool:
        """Whether a request among ``envs`` would have the project's cloud quota checked (``_cloud_rooms``)."""
        return self.cloud_quota is not None and any(
            isinstance(env.payload, ClusterCreateRequested) and self._fresh(env) for env in envs)

    async def wide_run(self, run: list[Envelope], tx: asyncpg.Connection) -> list[Sequence[Outgoing]]:
        """Apply ``run`` (``ADMISSION``, ``LIFECYCLE`` and ignored events, builds unbounded, no cloud check) in a
        few statements whatever its length: lock the projects and read the facts of its clusters and projects
        (when it holds a request), decide the requests in stream order in memory, following what every event of
        the run changes of a project's usage as the ``project_usage`` trigger does (a published decision is the
        fact, whatever the request's was; a completed delete frees its cluster's reservation), then run every
        event's writes as planned writes (``apply_writes``: grouped by statement, each cluster's in stream
        order). The store and the decisions are what applying the events one by one in stream order gives."""
        if not run:
            return []
        admissions = [env.payload for env in run if isinstance(env.payload, ADMISSION)]
        facts: store.RunFacts | None = None
        if any(isinstance(p, ClusterCreateRequested) for p in admissions):
            await store.lock_projects(tx, [p.project_id for p in admissions])
            ids = list({env.payload.uuid for env in run if isinstance(env.payload, _WIDE)})
            facts = await store.run_facts(tx, ids, [p.project_id for p in admissions])
        decisions = dict(facts.decisions) if facts else {}
        in_use = dict(facts.usage) if facts else {}
        rows = dict(facts.rows) if facts else {}

        def row_of(cluster_id: str, project_id: str) -> store.Counted:
            """The cluster's row, made as a statement that inserts it would (no reservation) when unknown."""
            if cluster_id not in rows:
                rows[cluster_id] = store.Counted(project_id, None, False, Demand(clusters=1))
                decisions.setdefault(cluster_id, None)
            return rows[cluster_id]

        def moved(row: store.Counted, counted_before: bool) -> None:
            """What the trigger does to the row's project's usage after a change of the row."""
            if row.counts != counted_before and row.project_id in in_use:
                change = row.reserved if row.counts else Demand() - row.reserved
                in_use[row.project_id] = in_use[row.project_id] + change

        writes: list[Write] = []
        outgoing: list[Sequence[Outgoing]] = []
        for env in run:
            p = env.payload
            out: Sequence[Outgoing] = ()
            if isinstance(p, ClusterCreateRequested):
                assert facts is not None
                request = self._decide(env, p, decisions, in_use, facts, 0, {}, {})
                if request is not None:
                    d = request.demand
                    rows[p.uuid] = store.Counted(p.project_id, request.decision, False,
                                                 Demand(1, d.nodes, d.vcpus, d.ram_mb, d.volume_gb))
                    writes.extend(store.request_writes(request))
                    out = self._verdict(request)
            elif isinstance(p, ADMISSION):
                decided = _decided(env)
                writes.append(store.decision_write(decided))
                if facts is not None:
                    row = row_of(decided.cluster_id, decided.project_id)
                    before = row.counts
                    if row.decision != decided.decision:
                        log.info("admission_decision_overrides_store", cluster_id=decided.cluster_id,
                                 stored=row.decision, published=decided.decision)
                    row.decision = decisions[decided.cluster_id] = decided.decision
                    moved(row, before)
            elif isinstance(p, LIFECYCLE):
                if self.cloud_quota is not None and isinstance(p, ClusterCreateFailed | ClusterCreateCompleted):
                    self.cloud_quota.forget(p.project_id)
                if isinstance(p, ClusterCreateFailed | ClusterDeleteRequested | ClusterDeleteCompleted):
                    column = {ClusterCreateFailed: "create_failed", ClusterDeleteRequested: "delete_requested",
                              ClusterDeleteCompleted: "delete_completed"}[type(p)]
                    writes.append(store.mark_write(p.uuid, p.project_id, column, env.occurred_at))
                    if facts is not None:
                        row = row_of(p.uuid, p.project_id)
                        before = row.counts
                        row.delete_completed = row.delete_completed or isinstance(p, ClusterDeleteCompleted)
                        moved(row, before)
                if isinstance(p, ClusterDeleteCompleted):
                    log.info("cluster_quota_released", cluster_id=p.uuid, project_id=p.project_id)
                if not isinstance(p, ClusterDeleteRequested):
                    writes.append(store.finish_build_write(p.uuid))
            outgoing.append(out)
        await apply_writes(tx, writes)
        return outgoing

    async def _admission_runs(self, envs: list[Envelope], tx: asyncpg.Connection) -> list[Sequence[Outgoing]]:
        """Each run of consecutive ``ADMISSION`` events at once (``admission_run``), every other event with
        ``handle``."""
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
        re-decided differently, a decision on a cluster never requested) the run is applied one event at a time.
        With bounded builds, admitted requests join the queue and the free build slots are filled from it in fair
        order (``_fill_slots``): a request that gets a slot at once is told ``ClusterAdmitted`` only."""
        payloads = [_admission_event(env) for env in run]
        if not any(isinstance(p, ClusterCreateRequested) for p in payloads):
            # A decision touches only its own cluster's row (and that project's usage counter, commutatively).
            await store.record_decisions(tx, [_decided(env) for env in run])
            return [()] * len(run)
        await store.lock_projects(tx, [p.project_id for p in payloads])
        if self.queueing:
            await store.lock_builds(tx)
        facts = await store.run_facts(tx, [p.uuid for p in payloads], [p.project_id for p in payloads])
        decisions = dict(facts.decisions)
        in_use = dict(facts.usage)
        requests: list[store.Request] = []
        confirmed: list[store.Decided] = []
        outgoing: list[list[Outgoing]] = []
        queued_seq = await store.next_queued_seq(tx) if self.queueing else 0
        rooms, pending = await self._cloud_rooms(run, decisions, tx)
        for env in run:
            p = env.payload
            if isinstance(p, ClusterCreateRequested):
                request = self._decide(env, p, decisions, in_use, facts, queued_seq, rooms, pending)
                if request is None:
                    outgoing.append([])
                    continue
                requests.append(request)
                queued_seq += 1 if request.build == "queued" else 0
                outgoing.append(self._verdict(request) if request.build != "queued" else [])
                continue
            decided = _decided(env)
            if decisions.get(decided.cluster_id, "unknown") != decided.decision:
                # (The run holds a request too, so it has more than one event: each alone takes another branch.)
                log.info("admission_run_applied_one_by_one", cluster_id=decided.cluster_id, events=len(run))
                return [(await self.admission_run([one], tx))[0] for one in run]
            confirmed.append(decided)
            outgoing.append([])
        if requests:
            await store.record_requests(tx, requests)
        if self.queueing and requests:
            # (before the run's confirmations: in stream order a request is queued before any decision on it)
            await self._queue_run(run, requests, outgoing, tx)
        if confirmed:
            await store.record_decisions(tx, confirmed)
        return list(outgoing)

    async def _queue_run(
        self, run: list[Envelope], requests: list[store.Request], outgoing: list[list[Outgoing]],
        tx: asyncpg.Connection,
    ) -> None:
        """After a run's requests were recorded as waiting: each joins the queue in turn, in stream order, and the
        free slots are filled in fair order after each (``_fill``, in memory), exactly as applying the requests one
        by one would. A request that gets a slot is told ``ClusterAdmitted``, one that waits ``ClusterQueued`` with
        its place; a waiting cluster admitted meanwhile is told ``ClusterAdmitted`` as a consequence of the request
        whose turn it was."""
        new = [r for r in requests if r.build == "queued"]
        new_ids = {r.cluster_id for r in new}
        state = await store.build_state(tx)
        waiting = [w for w in state.waiting if w.cluster_id not in new_ids]
        building = dict(state.building)
        by_request = {env.payload.uuid: i for i, env in enumerate(run)
                      if isinstance(env.payload, ClusterCreateRequested)}
        started: list[str] = []
        for r in new:
            waiting.append(admission.Waiting(r.cluster_id, r.project_id, r.cloud, r.queued_seq or 0))
            admitted, positions = self._fill(waiting, building, state.rows)
            out = outgoing[by_request[r.cluster_id]]
            out.extend(_out(a) for a in admitted)
            started.extend(a.uuid for a in admitted)
            if r.cluster_id in positions:
                out.append(Outgoing(
                    subjects.cluster_events(PRODUCER, r.cluster_id),
                    ClusterQueued(uuid=r.cluster_id, project_id=r.project_id, position=positions[r.cluster_id],
                                  cloud=r.cloud),
                    project_id=r.project_id, cluster_id=r.cluster_id))
            if any(a.uuid != r.cluster_id for a in admitted):
                out.extend(self._positions_events(positions))
        if started:
            await store.set_build(tx, started, "building")

    def _decide(
        self,
        env: Envelope,
        p: ClusterCreateRequested,
        decisions: dict[str, str | None],
        in_use: dict[str, Demand],
        facts: store.RunFacts,
        queued_seq: int,
        rooms: dict[str, cloudquota.Room],
        pending: dict[str, dict[str, int]],
    ) -> store.Request | None:
        """Decide on one request of a run given the usage so far (``in_use``, updated) and, where known, the
        project's cloud quota left (``rooms``) less what Cove reserved there but has not built (``pending``,
        updated); None for a repeated request."""
        if p.uuid in decisions:
            log.info("cluster_request_repeated", cluster_id=p.uuid, project_id=p.project_id)
            return None
        spec = clusterspec.spec_of(p)
        groups = admission.group_sizes(spec)
        asked = admission.cluster_demand(groups)
        used = in_use.get(p.project_id, Demand())
        limits = {**self.limits, **facts.overrides.get(p.project_id, {})}
        verdict = admission.decide_all(used, asked, limits)
        room = rooms.get(p.project_id)
        if verdict.admitted and room is not None:
            cloud_asked = cloudquota.cloud_demand(spec)
            refusal = cloudquota.check(room, pending.get(p.project_id, {}), cloud_asked)
            if refusal is not None:
                verdict = admission.Verdict(False, f"cloud:{refusal[0]}", refusal[1])
            else:
                pending[p.project_id] = cloudquota.add(pending.get(p.project_id, {}), cloud_asked)
        decisions[p.uuid] = "admitted" if verdict.admitted else "rejected"
        build: str | None = None
        if verdict.admitted:
            in_use[p.project_id] = used + asked
            build = "queued" if self.queueing else "building"
            log.info("cluster_admitted", cluster_id=p.uuid, project_id=p.project_id, in_use=used.clusters,
                     limit=limits[admission.CLUSTER], build=build)
        else:
            log.info("cluster_rejected", cluster_id=p.uuid, project_id=p.project_id, resource=verdict.resource,
                     reason=verdict.reason)
        return store.Request(
            cluster_id=p.uuid,
            project_id=p.project_id,
            name=p.name,
            master_count=p.master_count,
            node_count=p.node_count,
            requested_at=p.requested_at or env.occurred_at,
            decision=decisions[p.uuid] or "rejected",
            reason=verdict.reason,
            demand=asked,
            groups=tuple(groups),
            cloud=self.cloud,
            build=build,
            queued_seq=queued_seq if build == "queued" else None,
            resource=verdict.resource,
            trust_id=p.trust_id,
            floating_ips=bool(spec.floating_ip_enabled),
        )

    async def _cloud_rooms(
        self, run: list[Envelope], decisions: dict[str, str | None], tx: asyncpg.Connection
    ) -> tuple[dict[str, cloudquota.Room], dict[str, dict[str, int]]]:
        """The cloud quota left in each project of the run's fresh requests (cached; none without a cloud check,
        for a request older than ``max_age``, or where the cloud's quota is unlimited), and what Cove reserved in
        those projects but has not built yet."""
        if self.cloud_quota is None:
            return {}, {}
        trusts: dict[str, str | None] = {}
        for env in run:
            p = env.payload
            if isinstance(p, ClusterCreateRequested) and p.uuid not in decisions and self._fresh(env):
                trusts.setdefault(p.project_id, p.trust_id)
        rooms: dict[str, cloudquota.Room] = {}
        for project, trust in trusts.items():
            room = await self.cloud_quota.room(project, trust)
            if room is not None and not room.unlimited:
                rooms[project] = room
        pending = await store.unbuilt(tx, list(rooms)) if rooms else {}
        return rooms, pending

    def _fresh(self, env: Envelope) -> bool:
        """Whether the cloud is asked about this request: not when it is older than ``max_age`` (a replay, whose
        published decision is the fact, or a request that waited in a backlog)."""
        assert self.cloud_quota is not None
        return (datetime.now(UTC) - env.occurred_at).total_seconds() < self.cloud_quota.settings.max_age

    async def _cloud_refusal(
        self, env: Envelope, project_id: str, cluster_id: str, per_node: GroupSize, count: int,
        tx: asyncpg.Connection,
    ) -> admission.Verdict | None:
        """The refusal of ``count`` more nodes sized as ``per_node`` in the cluster when the project's cloud quota
        left (through the cluster's trust), less what Cove reserved there but has not built, cannot hold them; None
        when it can or cannot be known (no check, an old request, no trust, the cloud not answering, unlimited)."""
        if self.cloud_quota is None or not self._fresh(env):
            return None
        trust_id, floating_ips = await store.cloud_identity(tx, cluster_id)
        room = await self.cloud_quota.room(project_id, trust_id)
        if room is None or room.unlimited:
            return None
        pending = (await store.unbuilt(tx, [project_id])).get(project_id, {})
        refusal = cloudquota.check(room, pending, cloudquota.growth_demand(per_node, count, floating_ips))
        return None if refusal is None else admission.Verdict(False, f"cloud:{refusal[0]}", refusal[1])

    def _verdict(self, r: store.Request) -> list[Outgoing]:
        """The decision event of a request decided without the queue (admitted at once, or rejected)."""
        if r.decision == "admitted":
            return [_out(ClusterAdmitted(uuid=r.cluster_id, project_id=r.project_id, master_count=r.master_count,
                                         node_count=r.node_count, name=r.name))]
        assert r.reason is not None
        return [_out(ClusterRejected(uuid=r.cluster_id, project_id=r.project_id, reason=r.reason,
                                     resource=r.resource))]

    # ------------------------------------------------------------------------------------ build order

    def _fill(
        self,
        waiting: list[admission.Waiting],
        building: dict[tuple[str, str], int],
        rows: dict[str, tuple[str | None, int, int]],
    ) -> tuple[list[ClusterAdmitted], dict[str, int]]:
        """Fill the free build slots from ``waiting`` in fair order (both updated in place): the clusters admitted
        now and the places of those still waiting. Strictly in order: nobody overtakes a cluster still waiting."""
        order = admission.fair_order(waiting, _per_project(building))
        per_cloud: dict[str, int] = {}
        for (cloud, _), n in building.items():
            per_cloud[cloud] = per_cloud.get(cloud, 0) + n
        total = sum(per_cloud.values())
        admitted: list[ClusterAdmitted] = []
        positions: dict[str, int] = {}
        for w in order:
            cloud_limit = self.max_builds_per_cloud.get(w.cloud, admission.UNLIMITED)
            free = (self.max_builds < 0 or total < self.max_builds) and (
                cloud_limit < 0 or per_cloud.get(w.cloud, 0) < cloud_limit)
            if free and not positions:
                total += 1
                per_cloud[w.cloud] = per_cloud.get(w.cloud, 0) + 1
                building[(w.cloud, w.project_id)] = building.get((w.cloud, w.project_id), 0) + 1
                name, masters, nodes = rows[w.cluster_id]
                admitted.append(ClusterAdmitted(uuid=w.cluster_id, project_id=w.project_id, master_count=masters,
                                                node_count=nodes, name=name))
                log.info("cluster_build_started", cluster_id=w.cluster_id, project_id=w.project_id)
            else:
                positions[w.cluster_id] = len(positions) + 1
        if admitted:
            gone = {a.uuid for a in admitted}
            waiting[:] = [w for w in waiting if w.cluster_id not in gone]
        return admitted, positions

    async def _schedule(self, tx: asyncpg.Connection) -> tuple[list[ClusterAdmitted], dict[str, int]]:
        """Fill the free build slots from the stored queue (the builds lock held) and mark them building."""
        state = await store.build_state(tx)
        admitted, positions = self._fill(list(state.waiting), dict(state.building), state.rows)
        if admitted:
            await store.set_build(tx, [a.uuid for a in admitted], "building")
        return admitted, positions

    def _positions_events(self, positions: dict[str, int]) -> list[Outgoing]:
        if not positions:
            return []
        shown = dict(sorted(positions.items(), key=lambda kv: kv[1])[:QUEUE_POSITIONS_SHOWN])
        return [Outgoing(subjects.event_subject(PRODUCER, "queue", self.cloud),
                         ClusterQueuePositions(cloud=self.cloud, positions=shown), project_id=None, cluster_id=None)]

    async def _fill_slots(self, env: Envelope, tx: asyncpg.Connection) -> Sequence[Outgoing]:
        admitted, positions = await self._schedule(tx)
        if not admitted:
            return ()
        return [*(_out(a) for a in admitted), *self._positions_events(positions)]

    async def _slot_freed(self, env: Envelope, tx: asyncpg.Connection, cluster_id: str) -> Sequence[Outgoing]:
        """A build ended (completed, failed, or the cluster is gone): the next waiting cluster may start."""
        if not self.queueing:
            await store.finish_build(tx, cluster_id)
            return ()
        await store.lock_builds(tx)
        if not await store.finish_build(tx, cluster_id):
            return ()
        return await self._fill_slots(env, tx)

    # ------------------------------------------------------------------------------------ resizes, nodegroups

    async def _resize(self, env: Envelope, p: ClusterUpdateRequested, tx: asyncpg.Connection) -> Sequence[Outgoing]:
        """A worker group's new count: growing reserves before anything is built (and, for a ``decided``
        request, is refused over Cove's quota or the cloud's); shrinking frees at ``ClusterUpdateCompleted``. A
        decided growth is kept aside until its published decision is read (``_change_decided``)."""
        await store.lock_projects(tx, [p.project_id])
        groups = await self._groups(tx, p.uuid)
        name = p.nodegroup or DEFAULT_WORKER
        group = groups.get(name) or next((g for g in groups.values() if p.nodegroup and g.name == p.nodegroup), None)
        subject = subjects.cluster_events(PRODUCER, p.uuid)
        admitted = ClusterUpdateAdmitted(
            uuid=p.uuid, project_id=p.project_id, node_count=p.node_count, previous_node_count=p.previous_node_count,
            nodes_to_remove=list(p.nodes_to_remove), nodegroup=p.nodegroup, rollback=p.rollback)
        if group is None:  # a group the scheduler never saw: nothing to size it by
            return [Outgoing(subject, admitted)] if p.decided else ()
        grow = max(0, p.node_count - group.count)
        if grow and p.decided:
            used, overrides = await store.usage_of(tx, p.project_id)
            verdict = admission.decide_all(used, group.demand(grow), {**self.limits, **overrides,
                                                                      admission.CLUSTER: admission.UNLIMITED})
            if verdict.admitted:
                verdict = await self._cloud_refusal(env, p.project_id, p.uuid, group, grow, tx) or verdict
            before = await store.group_node_count(tx, p.uuid, group.name)
            await store.record_change(tx, store.Change(env.id, p.uuid, group, verdict.admitted, before, p.node_count,
                                                       grow))
            if not verdict.admitted:
                assert verdict.reason is not None and verdict.resource is not None
                log.info("cluster_resize_rejected", cluster_id=p.uuid, project_id=p.project_id,
                         resource=verdict.resource, reason=verdict.reason)
                return [Outgoing(subject, ClusterUpdateRejected(uuid=p.uuid, project_id=p.project_id,
                                                                reason=verdict.reason, resource=verdict.resource,
                                                                nodegroup=p.nodegroup))]
        await store.grow_group(tx, p.uuid, group, p.node_count, grow)
        await store.sum_groups(tx, p.uuid)
        log.info("cluster_resize_reserved", cluster_id=p.uuid, nodegroup=group.name, node_count=p.node_count)
        return [Outgoing(subject, admitted)] if p.decided else ()

    async def _groups(self, tx: asyncpg.Connection, cluster_id: str) -> dict[str, GroupSize]:
        """The cluster's nodegroups; for a cluster admitted before sizes were kept, its two default groups sized
        by nothing but their counts."""
        groups = await store.groups_of(tx, cluster_id)
        if groups:
            return groups
        row = await store.cluster_row(tx, cluster_id)
        if row is None or row["decision"] != "admitted" or row["delete_completed"]:
            return {}
        for name, count in ((DEFAULT_MASTER, int(row["master_count"])), (DEFAULT_WORKER, int(row["node_count"]))):
            await store.put_group(tx, cluster_id, GroupSize(name, count, 0, 0, 0), count, count)
        return await store.groups_of(tx, cluster_id)

    async def _nodegroup_created(
        self, env: Envelope, p: NodeGroupCreateRequested, tx: asyncpg.Connection
    ) -> Sequence[Outgoing]:
        """A new nodegroup reserves its nodes (sized from its spec, else like the cluster's default worker); a
        ``decided`` one over Cove's quota or the cloud's is refused (``ClusterUpdateRejected`` naming it) and
        reserves nothing."""
        ng, built = p.nodegroup, p.spec
        await store.lock_projects(tx, [ng.project_id])
        groups = await self._groups(tx, ng.cluster_id)
        like = groups.get(DEFAULT_WORKER)
        vcpus = (built.vcpus if built and built.vcpus is not None else (like.vcpus if like else 0))
        ram = (built.ram_mb if built and built.ram_mb is not None else (like.ram_mb if like else 0))
        volume = (built.docker_volume_size if built else ng.docker_volume_size) or 0
        size = GroupSize(ng.name, ng.node_count, vcpus or 0, ram or 0, volume)
        subject = subjects.cluster_events(PRODUCER, ng.cluster_id)
        new = ng.name not in groups
        if p.decided and new:
            used, overrides = await store.usage_of(tx, ng.project_id)
            verdict = admission.decide_all(used, size.demand(), {**self.limits, **overrides,
                                                                 admission.CLUSTER: admission.UNLIMITED})
            if verdict.admitted and ng.node_count > 0:
                verdict = await self._cloud_refusal(env, ng.project_id, ng.cluster_id, size, ng.node_count,
                                                    tx) or verdict
            await store.record_change(tx, store.Change(env.id, ng.cluster_id, size, verdict.admitted, None,
                                                       ng.node_count, ng.node_count))
            if not verdict.admitted:
                assert verdict.reason is not None and verdict.resource is not None
                log.info("nodegroup_create_rejected", cluster_id=ng.cluster_id, nodegroup=ng.name,
                         resource=verdict.resource, reason=verdict.reason)
                return [Outgoing(subject, ClusterUpdateRejected(
                    uuid=ng.cluster_id, project_id=ng.project_id, reason=verdict.reason, resource=verdict.resource,
                    nodegroup=ng.name))]
        if new:
            await store.grow_group(tx, ng.cluster_id, size, ng.node_count, ng.node_count)
        else:
            await store.put_group(tx, ng.cluster_id, size, ng.node_count, ng.node_count)
        await store.sum_groups(tx, ng.cluster_id)
        return [Outgoing(subject, NodeGroupCreateAdmitted(nodegroup=ng, spec=built))] if p.decided else ()

    async def _change_decided(
        self, env: Envelope, p: ClusterUpdateAdmitted | NodeGroupCreateAdmitted | ClusterUpdateRejected,
        tx: asyncpg.Connection,
    ) -> None:
        """The scheduler's published decision on a decided growth is the fact: when the store holds otherwise (a
        replay did not ask the cloud about an old request, or decided a later one on usage a refusal it did not
        repeat had left), the growth is applied or taken back now. Live, the store already agrees: one row
        deleted."""
        change = await store.take_change(tx, env.causation_id)
        if change is None:
            return
        admitted = not isinstance(p, ClusterUpdateRejected)
        if admitted == change.applied:
            return
        if admitted:
            await store.grow_group(tx, change.cluster_id, change.group, change.node_count, change.delta)
        else:
            await store.undo_growth(tx, change)
        await store.sum_groups(tx, change.cluster_id)
        log.info("cluster_change_set_right", cluster_id=change.cluster_id, nodegroup=change.group.name,
                 admitted=admitted)

    async def _nodegroup_deleted(self, p: NodeGroupDeleteRequested, tx: asyncpg.Connection) -> None:
        """Its nodes are freed when the update completes (``settle_groups``)."""
        groups = await store.groups_of(tx, p.cluster_id)
        group = groups.get(p.name)
        if group is not None:
            await store.put_group(tx, p.cluster_id, group, 0, group.count)


def _per_project(building: dict[tuple[str, str], int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for (_, project), n in building.items():
        out[project] = out.get(project, 0) + n
    return out


def _out(event: ClusterAdmitted | ClusterQueued | ClusterRejected) -> Outgoing:
    return Outgoing(subjects.cluster_events(PRODUCER, event.uuid), event, project_id=event.project_id,
                    cluster_id=event.uuid)


def _admission_event(env: Envelope) -> ClusterCreateRequested | ClusterAdmitted | ClusterQueued | ClusterRejected:
    p = env.payload
    assert isinstance(p, ADMISSION)
    return p


def _decided(env: Envelope) -> store.Decided:
    """The store's record of a published decision event."""
    p = env.payload
    if isinstance(p, ClusterAdmitted):
        return store.Decided(p.uuid, p.project_id, "admitted", None, env.occurred_at, p.master_count, p.node_count,
                             "building")
    if isinstance(p, ClusterQueued):
        return store.Decided(p.uuid, p.project_id, "admitted", None, env.occurred_at, build="queued")
    assert isinstance(p, ClusterRejected)
    return store.Decided(p.uuid, p.project_id, "rejected", p.reason, env.occurred_at)
