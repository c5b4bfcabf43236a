"""The API's projection applies each cluster's events in the order of the stream, whatever order they arrive in.

The API's copies share one durable consumer (ADR 0002), and a handler's failure is retried after a back-off: a batch
held by a copy that dies comes back only after the ack wait, a failed one after its delay, while later events are
applied meanwhile. A cluster's ``ClusterCreateRequested`` can so be applied after its admission and completion
(which found no row and were lost: make test's short chaos form showed acknowledged clusters never listed), and a
resize's request after its completion (which left ``UPDATE_IN_PROGRESS`` for ever).

``arrange`` runs before a batch (or a single event) is applied, in its transaction, and decides each event's fate
from the clusters' rows and what the batch does to them:

* an event of a cluster the read model lacks (and the batch does not create before it) is **parked**: stored in
  ``parked_events`` (migration 0011); the creation takes it back, and it is applied after it;
* an event that moves a cluster's status (``status.rule``) and is older than the event that last moved it
  (``clusters.status_seq``, migration 0012) is **superseded**: dropped, as the stream order would have it
  overwritten;
* one that is newer but does not apply from the cluster's status (a resize's completion before its request) is
  parked, and tried again, in stream order, whenever the cluster's status moves;
* a parked event is placed by its stream sequence: after what moved its cluster, before the batch's events of a
  higher sequence.

Events without a stream sequence (0: applied outside a projection, by tests) are applied as they come, as before.

A copy deciding for a cluster and another applying its events at the same moment would each miss the other's
uncommitted write: a batch first takes the advisory lock of every cluster it decides on (``cluster_lock_key``, one
sorted statement, so two batches never wait on each other in a cycle) and reads them under it.

An event about a cluster deleted before it arrived (a health report racing the delete) is parked too and never taken
back; parking prunes what was parked more than ``RETENTION`` (stream time: the occurrence of the event being parked)
before, so a replay prunes the same rows as the live store (cove verify compares them).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import asyncpg
import structlog

from proto import events as ev
from proto.envelope import Envelope, decode, encode
from services.api import status

log = structlog.get_logger(__name__)

RETENTION = timedelta(days=1)
"""How long a parked event of a cluster that never comes waits (a request comes back within the ack wait)."""

NOT_PARKED = (ev.ClusterCreateRequested, ev.ClusterQueuePositions)
"""The creation itself, and the build queue's moves (several clusters each, and only ever of queued ones)."""

REMOVING = (ev.ClusterDeleteCompleted, ev.ClusterWithdrawn)
"""The events after which the read model has no row for the cluster (a withdrawal, whatever its status)."""

UPDATING = "NodeGroupChange"
"""The rule of a nodegroup's create or delete, or an upgrade, as ``ngprojection._cluster_to_updating`` applies it:
from a stable status, a failed update or one in progress, to ``UPDATE_IN_PROGRESS``."""

_UPDATING_RULE = (status.STABLE | {status.UPDATE_FAILED, status.UPDATE_IN_PROGRESS}, status.UPDATE_IN_PROGRESS)


def cluster_of(payload: object) -> str | None:
    """The cluster an event the read model applies is about (None: not about one cluster)."""
    if isinstance(payload, NOT_PARKED):
        return None
    if isinstance(payload, ev.NodeGroupCreateRequested | ev.NodeGroupCreateAdmitted):
        return payload.nodegroup.cluster_id
    cluster_id = getattr(payload, "cluster_id", None)
    if isinstance(cluster_id, str):
        return cluster_id
    if isinstance(payload, ev.ClusterTemplateCreated | ev.ClusterTemplateUpdated | ev.ClusterTemplateDeleted):
        return None
    uuid = getattr(payload, "uuid", None)
    return uuid if isinstance(uuid, str) else None


Rule = tuple[frozenset[str] | None, str]

_RULES: dict[type, Rule] = {
    **{t: status.rule(t.__name__) for t in (
        ev.ClusterRejected, ev.ClusterCreateCompleted, ev.ClusterCreateFailed, ev.ClusterUpdateRequested,
        ev.ClusterUpdateStarted, ev.ClusterUpdateCompleted, ev.ClusterUpdateFailed, ev.ClusterDeleteRequested,
        ev.ClusterDeleteStarted, ev.ClusterDeleteFailed, ev.ClusterDeleteCompleted)},
    ev.ClusterUpdateAdmitted: status.rule("ClusterUpdateRequested"),
    **dict.fromkeys((ev.NodeGroupCreateRequested, ev.NodeGroupCreateAdmitted, ev.NodeGroupDeleteRequested,
                     ev.ClusterUpgradeRequested), _UPDATING_RULE),
    ev.ClusterWithdrawn: (None, status.GONE),
}
"""Per event type, as its handlers apply it: the statuses it moves a cluster from (None: any) and the one it moves
it to."""


def status_rule(payload: object) -> Rule | None:
    """The event's rule (``_RULES``); None for an event that does not move the status (a node's, a health report, a
    decided request)."""
    rule = _RULES.get(type(payload))
    if rule is not None and isinstance(payload, ev.ClusterUpdateRequested | ev.NodeGroupCreateRequested) \
            and payload.decided:
        return None
    return rule


@dataclass
class _Cluster:
    status: str
    status_seq: int


@dataclass(order=True)
class _Parked:
    seq: int
    order: int
    env: Envelope = field(compare=False)
    cluster: str = field(compare=False)
    stored: bool = field(compare=False)
    """In ``parked_events`` already (taken back from there, not parked by this batch)."""


@dataclass
class Arrangement:
    """What ``arrange`` decided for a batch: the events to apply, in order, with their sequences, and the clusters
    whose ``status_seq`` the batch moves (``settle`` writes them once the events are applied)."""

    envs: list[Envelope]
    sequences: list[int]
    status_seqs: dict[str, int] = field(default_factory=dict)
    superseded: set[int] = field(default_factory=set)
    """Positions in ``envs`` of superseded events with effects beside the status (a nodegroup's create or delete, an
    upgrade): applied in their place as the update that superseded them left the cluster
    (``ngprojection.superseded``), not by their handlers."""


async def arrange(
    envs: Sequence[Envelope], sequences: Sequence[int], tx: asyncpg.Connection, applies: set[type]
) -> Arrangement:
    """The events to apply, in order, with their stream sequences. ``applies``: the event types the read model
    applies (others are never parked: they change nothing).

    A batch leaves the store as its events applied one at a time would: an event of a cluster that has no row at its
    place in the batch (never inserted, or removed earlier in the batch) is parked, one that precedes its cluster's
    creation in the batch is applied after the creation, as if parked and taken back."""
    about = [cluster_of(env.payload) if type(env.payload) in applies else None for env in envs]
    created: set[str] = set()
    referenced: set[str] = set()
    """Clusters named before (or without) their creation in the batch: their rows are read."""
    ordered = False
    """Whether any event moves a status with a known sequence (else existence alone decides)."""
    for env, seq, cluster in zip(envs, sequences, about, strict=True):
        if isinstance(env.payload, ev.ClusterCreateRequested):
            created.add(env.payload.uuid)
        elif cluster is not None:
            if cluster not in created:
                referenced.add(cluster)
            ordered = ordered or (seq > 0 and status_rule(env.payload) is not None)
    if not created and not referenced:
        return Arrangement(list(envs), list(sequences))
    if not created and not ordered and not any(isinstance(env.payload, REMOVING) for env in envs):
        present = await _existing(tx, referenced)
        if present == referenced:
            return Arrangement(list(envs), list(sequences))  # node reports and the like, of known clusters
    deciding = created | referenced
    await tx.execute("SELECT count(pg_advisory_xact_lock(cluster_lock_key(u))) FROM unnest($1::text[]) AS u",
                     sorted(deciding))
    rows = await tx.fetch("SELECT uuid, status, status_seq FROM clusters WHERE uuid = ANY($1::text[])",
                          list(deciding))
    known: dict[str, _Cluster | None] = {r["uuid"]: _Cluster(r["status"], r["status_seq"]) for r in rows}
    stored = await _stored(tx, deciding)
    return await _Run(known, stored, created).apply(tx, envs, sequences, about)


class _Run:
    """One batch's decisions (``arrange``), event by event, with the parked events they bring back."""

    def __init__(self, known: dict[str, _Cluster | None], stored: dict[str, list[_Parked]], created: set[str]) -> None:
        self.known = known
        self.stored = stored
        """Cluster -> its parked events not yet brought back by this batch."""
        self.later = set(created)
        """Clusters the batch creates further on."""
        self.out: list[tuple[Envelope, int]] = []
        self.waiting: list[_Parked] = []
        """Brought back, to be decided again before the batch's next event of a higher sequence (a heap)."""
        self.held: dict[str, list[_Parked]] = {}
        self.park: list[tuple[str, Envelope, int]] = []
        self.unpark: list[tuple[str, str]] = []
        """(cluster, event id) of stored events applied or superseded: removed from ``parked_events``."""
        self.moved: dict[str, int] = {}
        self.superseded: set[int] = set()
        self._order = 0

    async def apply(self, tx: asyncpg.Connection, envs: Sequence[Envelope], sequences: Sequence[int],
                    about: Sequence[str | None]) -> Arrangement:
        for env, seq, cluster in zip(envs, sequences, about, strict=True):
            if seq:
                self._drain(below=seq)
            self._decide(env, seq, cluster, None)
        self._drain(below=None)
        if self.unpark:
            await tx.execute(
                "DELETE FROM parked_events p USING unnest($1::text[], $2::text[]) AS u (cluster_uuid, event_id)"
                " WHERE p.cluster_uuid = u.cluster_uuid AND p.event_id = u.event_id",
                [c for c, _ in self.unpark], [e for _, e in self.unpark])
        if self.park:
            await _park(tx, self.park)
        return Arrangement([env for env, _ in self.out], [seq for _, seq in self.out], dict(self.moved),
                           self.superseded)

    def _bring_back(self, cluster: str) -> None:
        for item in self.stored.pop(cluster, []):
            heapq.heappush(self.waiting, item)
        for item in self.held.pop(cluster, []):
            heapq.heappush(self.waiting, item)

    def _drain(self, below: int | None) -> None:
        while self.waiting and (below is None or self.waiting[0].seq < below):
            item = heapq.heappop(self.waiting)
            self._decide(item.env, item.seq, item.cluster, item)

    def _emit(self, env: Envelope, seq: int, item: _Parked | None) -> None:
        self.out.append((env, seq))
        if item is not None and item.stored:
            self.unpark.append((item.cluster, env.id))
            log.info("cluster_event_unparked", cluster_id=item.cluster, type=env.type, seq=seq)

    def _keep_parked(self, cluster: str, env: Envelope, seq: int, item: _Parked | None) -> None:
        if item is None or not item.stored:
            self.park.append((cluster, env, seq))

    def _decide(self, env: Envelope, seq: int, cluster: str | None, item: _Parked | None) -> None:
        p = env.payload
        if isinstance(p, ev.ClusterCreateRequested):
            self._emit(env, seq, item)
            self.later.discard(p.uuid)
            if self.known.get(p.uuid) is None:
                self.known[p.uuid] = _Cluster(status.CREATE_IN_PROGRESS, seq)
                if seq:
                    self.moved[p.uuid] = seq
            self._bring_back(p.uuid)
            if not seq:  # outside a projection (tests): no sequence to place them by, right after the creation
                self._drain(below=None)
            return
        if cluster is None:
            self._emit(env, seq, item)
            return
        current = self.known.get(cluster)
        if current is None:
            if cluster in self.later:  # created further on in the batch: applied after it
                self._order += 1
                self.held.setdefault(cluster, []).append(_Parked(seq, self._order, env, cluster, stored=False))
            else:
                self._keep_parked(cluster, env, seq, item)
            return
        rule = status_rule(p)
        if rule is None:
            self._emit(env, seq, item)
            return
        sources, target = rule
        if seq and seq < current.status_seq:
            log.info("cluster_event_superseded", cluster_id=cluster, type=env.type, seq=seq,
                     status_seq=current.status_seq)
            if item is not None and item.stored:
                self.unpark.append((cluster, env.id))
            if rule is _UPDATING_RULE:
                self.superseded.add(len(self.out))
                self.out.append((env, seq))
            return
        if seq and sources is not None and current.status not in sources:
            self._keep_parked(cluster, env, seq, item)  # may apply once an older event arrives
            return
        self._emit(env, seq, item)
        was = current.status
        if target == status.GONE:
            self.known[cluster] = None
            self.moved.pop(cluster, None)
            # what was parked for it will never apply: it goes with the cluster
            left = [*self.stored.pop(cluster, []), *(w for w in self.waiting if w.cluster == cluster)]
            self.unpark.extend((cluster, w.env.id) for w in left if w.stored)
            self.waiting = [w for w in self.waiting if w.cluster != cluster]
            heapq.heapify(self.waiting)
            return
        if sources is None or was in sources:  # (without a sequence, a move that does not apply changes nothing)
            current.status = target
        if seq:
            current.status_seq = seq
            self.moved[cluster] = seq
            if current.status != was:
                self._bring_back(cluster)


async def settle(tx: asyncpg.Connection, status_seqs: dict[str, int]) -> None:
    """After the batch's events were applied: each moved cluster's ``status_seq`` (one round trip)."""
    if status_seqs:
        await tx.execute(
            "UPDATE clusters c SET status_seq = u.seq FROM unnest($1::text[], $2::bigint[]) AS u (uuid, seq)"
            " WHERE c.uuid = u.uuid",
            list(status_seqs), list(status_seqs.values()))


async def _existing(tx: asyncpg.Connection, uuids: set[str]) -> set[str]:
    rows = await tx.fetch("SELECT uuid FROM clusters WHERE uuid = ANY($1::text[])", list(uuids))
    return {r["uuid"] for r in rows}


async def _stored(tx: asyncpg.Connection, clusters: set[str]) -> dict[str, list[_Parked]]:
    """The parked events of these clusters, in stream order."""
    rows = await tx.fetch(
        "SELECT cluster_uuid, stream_seq, envelope FROM parked_events WHERE cluster_uuid = ANY($1::text[])"
        " ORDER BY stream_seq, occurred_at", list(clusters))
    stored: dict[str, list[_Parked]] = {}
    for i, r in enumerate(rows):
        stored.setdefault(r["cluster_uuid"], []).append(
            _Parked(r["stream_seq"], -len(rows) + i, decode(bytes(r["envelope"])), r["cluster_uuid"], stored=True))
    return stored


async def _park(tx: asyncpg.Connection, events: list[tuple[str, Envelope, int]]) -> None:
    for cluster, env, seq in events:
        log.info("cluster_event_parked", cluster_id=cluster, type=env.type, seq=seq)
    await tx.executemany(
        "INSERT INTO parked_events (cluster_uuid, event_id, stream_seq, occurred_at, envelope)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        [(cluster, env.id, seq, env.occurred_at, encode(env)) for cluster, env, seq in events],
    )
    latest = max(env.occurred_at for _, env, _ in events)
    await tx.execute("DELETE FROM parked_events WHERE occurred_at < $1", latest - RETENTION)
