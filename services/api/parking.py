"""Events that reach the API's projection before the cluster they are about, kept until its creation is applied.

The API's copies share one durable consumer (ADR 0002): a batch held by a copy that dies is delivered again only
after the ack wait, while the other copy applies what follows it. A cluster's ``ClusterCreateRequested`` can so be
applied after its admission, start, completion (or rejection and withdrawal), which would have found no row and
been lost: make test's short chaos form showed acknowledged clusters never listed, and refused ones left
``CREATE_IN_PROGRESS``.

``arrange`` runs before a batch (or a single event) is applied, in its transaction:

* an event about a cluster the read model lacks (and the batch does not create before it) is **parked**: stored in
  ``parked_events`` (migration 0011) instead of applied;
* a batch that creates clusters takes their parked events back, and they are applied right after the creation, in
  stream order (before the batch's later events of the cluster with a higher stream sequence).

A copy parking an event and another inserting the cluster at the same moment would each miss the other's
uncommitted write: both take the cluster's transaction-scoped advisory lock (``cluster_lock_key``, one sorted
statement for all a batch needs, so two batches never wait on each other in a cycle), and the parker looks for the
row again under it. Whichever commits second sees what the first wrote.

An event about a cluster deleted before it arrived (a straggler: a health report racing the delete) is parked too
and never taken back; parking prunes what was parked more than ``RETENTION`` (stream time: the occurrence of the
event being parked) before, so a replay prunes the same rows as the live store (cove verify compares them).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import asyncpg
import structlog

from proto import events as ev
from proto.envelope import Envelope, decode, encode

log = structlog.get_logger(__name__)

RETENTION = timedelta(days=1)
"""How long a parked event waits for its cluster (a request comes back within the ack wait, a minute at most)."""

NOT_PARKED = (ev.ClusterCreateRequested, ev.ClusterQueuePositions)
"""The creation itself, and the build queue's moves (several clusters each, and only ever of queued ones)."""


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


REMOVING = (ev.ClusterDeleteCompleted, ev.ClusterWithdrawn)
"""The events after which the read model has no row for the cluster."""


async def arrange(
    envs: Sequence[Envelope], sequences: Sequence[int], tx: asyncpg.Connection, applies: set[type]
) -> tuple[list[Envelope], list[int]]:
    """The events to apply, in order, with their stream sequences: ``envs`` without those parked now, with the
    parked events of the clusters ``envs`` create. ``applies``: the event types the read model applies (others are
    never parked: they change nothing).

    A batch leaves the store as its events applied one at a time would: an event of a cluster that has no row at
    its place in the batch (never inserted, or removed earlier in the batch) is parked, one that precedes its
    cluster's creation in the batch is applied after the creation, as if parked and taken back."""
    about = [cluster_of(env.payload) if type(env.payload) in applies else None for env in envs]
    created: set[str] = set()
    referenced: set[str] = set()
    """Clusters named before (or without) their creation in the batch: whether they have a row is asked."""
    for env, cluster in zip(envs, about, strict=True):
        if isinstance(env.payload, ev.ClusterCreateRequested):
            created.add(env.payload.uuid)
        elif cluster is not None and cluster not in created:
            referenced.add(cluster)
    present = await _existing(tx, referenced) if referenced else set()
    removing = any(isinstance(env.payload, REMOVING) for env in envs)
    if not created and present == referenced and not removing:
        return list(envs), list(sequences)
    missing = referenced - present
    if created or missing:
        await tx.execute("SELECT count(pg_advisory_xact_lock(cluster_lock_key(u))) FROM unnest($1::text[]) AS u",
                         sorted(created | missing))
    if missing:
        present |= await _existing(tx, missing)  # inserted by a transaction that held the lock: seen now
    back = await _take_back(tx, created) if created else {}
    if not back and present == referenced and not removing:
        return list(envs), list(sequences)

    arranged: list[tuple[Envelope, int]] = []
    parked: list[tuple[str, Envelope, int]] = []
    held: dict[str, list[tuple[Envelope, int]]] = {}
    """Events of a cluster the batch creates later: applied after its creation, as if parked and taken back."""
    waiting: list[tuple[Envelope, int]] = []
    """Taken back and not applied yet: after their creation, before the first event of a higher sequence."""

    def emit(env: Envelope, seq: int) -> None:
        arranged.append((env, seq))
        if isinstance(env.payload, REMOVING):
            present.discard(env.payload.uuid)

    for env, seq, cluster in zip(envs, sequences, about, strict=True):
        if seq:
            while waiting and waiting[0][1] < seq:
                emit(*waiting.pop(0))
        p = env.payload
        if isinstance(p, ev.ClusterCreateRequested):
            emit(env, seq)
            present.add(p.uuid)
            created.discard(p.uuid)
            waiting = sorted([*waiting, *back.pop(p.uuid, []), *held.pop(p.uuid, [])], key=lambda item: item[1])
            if not seq:  # outside a projection (tests): no sequence to place them by, right after the creation
                while waiting:
                    emit(*waiting.pop(0))
        elif cluster is None or cluster in present:
            emit(env, seq)
        elif cluster in created:
            held.setdefault(cluster, []).append((env, seq))
        else:
            parked.append((cluster, env, seq))
    while waiting:
        emit(*waiting.pop(0))
    if parked:
        await _park(tx, parked)
    return [env for env, _ in arranged], [seq for _, seq in arranged]


async def _existing(tx: asyncpg.Connection, uuids: set[str]) -> set[str]:
    rows = await tx.fetch("SELECT uuid FROM clusters WHERE uuid = ANY($1::text[])", list(uuids))
    return {r["uuid"] for r in rows}


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


async def _take_back(tx: asyncpg.Connection, created: set[str]) -> dict[str, list[tuple[Envelope, int]]]:
    """The parked events of the clusters being created, removed from ``parked_events`` (stream order)."""
    rows = await tx.fetch(
        "DELETE FROM parked_events WHERE cluster_uuid = ANY($1::text[])"
        " RETURNING cluster_uuid, stream_seq, occurred_at, envelope",
        list(created),
    )
    back: dict[str, list[tuple[Envelope, int]]] = {}
    for r in sorted(rows, key=lambda r: (r["stream_seq"], r["occurred_at"])):
        back.setdefault(r["cluster_uuid"], []).append((decode(bytes(r["envelope"])), r["stream_seq"]))
    for cluster, taken in back.items():
        log.info("cluster_events_unparked", cluster_id=cluster, events=len(taken))
    return back
