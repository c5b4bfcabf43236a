"""The API's projection: one function per event type, each applying that event to schema ``api``.

Every event of ``COVE_EVENTS`` passes through ``handle`` (the API's reads need everyone's facts); types the
read model does not show are ignored. The API publishes nothing from here: its writes happen in requests.

The most frequent events are planned (``plan``): their statements are decided from the event alone (a node's, a
started create's, and every event the read model ignores), so that ``handle_batch`` runs a batch's planned writes
grouped by statement (``services.runtime.projection.apply_writes``) and ``handle`` runs the same statements one
after another. The others read the read model (the status machine, ``_move``) and are applied one at a time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import asyncpg
import msgspec
import structlog

from proto import events as ev
from proto.envelope import Envelope
from proto.quotas import ordinal, waiting_reason
from services.api import ngprojection, ngstore, parking, status, store, versions
from services.api.resources import quotas
from services.runtime.projection import Outgoing, PlannedHandler, Write, batch_sequences, current_sequence

log = structlog.get_logger(__name__)

Apply = Callable[[Any, Envelope, asyncpg.Connection], Awaitable[None]]


async def template_created(e: ev.ClusterTemplateCreated, env: Envelope, tx: asyncpg.Connection) -> None:
    if await versions.newer(tx, "template", e.template.uuid):
        await store.upsert_template(tx, e.template)


async def template_updated(e: ev.ClusterTemplateUpdated, env: Envelope, tx: asyncpg.Connection) -> None:
    if await versions.newer(tx, "template", e.template.uuid):  # (applied after the delete, it would bring it back)
        await store.upsert_template(tx, e.template)


async def template_deleted(e: ev.ClusterTemplateDeleted, env: Envelope, tx: asyncpg.Connection) -> None:
    if await versions.newer(tx, "template", e.uuid):
        await store.delete_template(tx, e.uuid)


async def _move(tx: asyncpg.Connection, uuid: str, event_type: str, at: datetime, **values: Any) -> str | None:
    """Apply the status machine; set ``values`` only when the event moved (or kept) the cluster in a state
    the event is about. Returns the new status (None: no such cluster)."""
    current = await store.cluster_status(tx, uuid)
    if current is None:
        log.info("cluster_event_for_unknown_cluster", cluster_id=uuid, type=event_type)
        return None
    new = status.transition(current, event_type)
    if new == status.GONE:
        await store.delete_cluster(tx, uuid)
        return new
    if new != current:
        values["status"] = new
    elif values:
        # The event does not apply from here (e.g. a late create result while deleting): keep the row as is.
        log.info("cluster_event_ignored", cluster_id=uuid, type=event_type, status=current)
        return current
    await store.update_cluster(tx, uuid, updated_at=at, **values)
    return new


async def create_requested(e: ev.ClusterCreateRequested, env: Envelope, tx: asyncpg.Connection) -> None:
    await store.insert_clusters(tx, [(e, env.occurred_at)], status.CREATE_IN_PROGRESS)


async def admitted(e: ev.ClusterAdmitted, env: Envelope, tx: asyncpg.Connection) -> None:
    await set_admitted(tx, [e.uuid])  # no row (deleted since): changes nothing


async def set_admitted(tx: asyncpg.Connection, uuids: list[str]) -> None:
    """The scheduler's admission of these clusters, in one statement; one that waited in the build queue no longer
    says where it waited."""
    await tx.execute(
        "UPDATE clusters SET admission = 'admitted', status_reason = CASE WHEN admission = 'queued' THEN NULL"
        " ELSE status_reason END WHERE uuid = ANY($1::text[])",
        uuids,
    )


async def queued(e: ev.ClusterQueued, env: Envelope, tx: asyncpg.Connection) -> None:
    """Within quota, waiting for a build slot: accepted (the create answers 202), its place in ``status_reason``."""
    await tx.execute(
        "UPDATE clusters SET admission = 'queued', status_reason = $2 WHERE uuid = $1 AND admission IS NULL",
        e.uuid, waiting_reason(e.position),
    )


async def queue_positions(e: ev.ClusterQueuePositions, env: Envelope, tx: asyncpg.Connection) -> None:
    """The build queue moved: every waiting cluster it names gets its new place, in one statement (one event per
    move of the queue, not one per waiting cluster: ADR 0008)."""
    if not e.positions:
        return
    await tx.execute(
        "UPDATE clusters c SET status_reason = 'Waiting to be built: ' || q.place || ' in line'"
        " FROM unnest($1::text[], $2::text[]) AS q (uuid, place)"
        " WHERE c.uuid = q.uuid AND c.admission = 'queued'",
        list(e.positions), [ordinal(n) for n in e.positions.values()],
    )


async def update_admitted(e: ev.ClusterUpdateAdmitted, env: Envelope, tx: asyncpg.Connection) -> None:
    """A ``decided`` resize the scheduler admitted: applied now as the request it admits (the read model and its
    nodegroups), as an undecided request is applied when it arrives."""
    request = ev.ClusterUpdateRequested(
        uuid=e.uuid, project_id=e.project_id, node_count=e.node_count, previous_node_count=e.previous_node_count,
        nodes_to_remove=list(e.nodes_to_remove), nodegroup=e.nodegroup, rollback=e.rollback,
    )
    as_request = msgspec.structs.replace(env, payload=request, type="ClusterUpdateRequested")
    await update_requested(request, as_request, tx)
    await ngprojection.apply(as_request, tx)


async def rejected(e: ev.ClusterRejected, env: Envelope, tx: asyncpg.Connection) -> None:
    """The scheduler refused the create (applied before the request itself, it was parked: services/api/parking.py)."""
    await store.update_cluster(tx, e.uuid, admission="rejected")
    await _move(tx, e.uuid, "ClusterRejected", env.occurred_at, status_reason=e.reason)


async def withdrawn(e: ev.ClusterWithdrawn, env: Envelope, tx: asyncpg.Connection) -> None:
    """The requester was answered 403 (the API withdraws only a create the scheduler rejected): the refused cluster
    leaves the read model, whatever state its other events left it in."""
    await store.delete_cluster(tx, e.uuid)


async def create_started(e: ev.ClusterCreateStarted, env: Envelope, tx: asyncpg.Connection) -> None:
    if e.stack_id and await store.cluster_status(tx, e.uuid) is not None:
        await store.update_cluster(tx, e.uuid, stack_id=e.stack_id)


async def create_completed(e: ev.ClusterCreateCompleted, env: Envelope, tx: asyncpg.Connection) -> None:
    masters, workers = await store.node_addresses(tx, e.uuid)
    await _move(
        tx,
        e.uuid,
        "ClusterCreateCompleted",
        env.occurred_at,
        status_reason="Cluster create complete",
        api_address=e.api_address,
        master_addresses=e.master_addresses or masters,
        node_addresses=e.node_addresses or workers,
        coe_version=e.coe_version,
        container_version=e.container_version,
    )


async def create_failed(e: ev.ClusterCreateFailed, env: Envelope, tx: asyncpg.Connection) -> None:
    await _move(tx, e.uuid, "ClusterCreateFailed", env.occurred_at, status_reason=e.status_reason)


async def delete_requested(e: ev.ClusterDeleteRequested, env: Envelope, tx: asyncpg.Connection) -> None:
    await _move(tx, e.uuid, "ClusterDeleteRequested", env.occurred_at, status_reason=None)


async def delete_started(e: ev.ClusterDeleteStarted, env: Envelope, tx: asyncpg.Connection) -> None:
    await _move(tx, e.uuid, "ClusterDeleteStarted", env.occurred_at)


async def delete_completed(e: ev.ClusterDeleteCompleted, env: Envelope, tx: asyncpg.Connection) -> None:
    await _move(tx, e.uuid, "ClusterDeleteCompleted", env.occurred_at)


async def delete_failed(e: ev.ClusterDeleteFailed, env: Envelope, tx: asyncpg.Connection) -> None:
    await _move(tx, e.uuid, "ClusterDeleteFailed", env.occurred_at, status_reason=e.status_reason)


async def update_requested(e: ev.ClusterUpdateRequested, env: Envelope, tx: asyncpg.Connection) -> None:
    if e.decided:
        return  # applied when the scheduler admits it (update_admitted); a refused one changes nothing
    if await _move(tx, e.uuid, "ClusterUpdateRequested", env.occurred_at) == status.UPDATE_IN_PROGRESS:
        await store.set_node_count(tx, e.uuid, e.node_count)


async def health_updated(e: ev.ClusterHealthUpdated, env: Envelope, tx: asyncpg.Connection) -> None:
    """Magnum saves a health-only PATCH without a status change."""
    await store.set_health(tx, e.uuid, e.health_status, dict(e.health_status_reason), current_sequence(),
                           updated_at=env.occurred_at)


async def health_changed(e: ev.ClusterHealthChanged, env: Envelope, tx: asyncpg.Connection) -> None:
    """The provisioner's health, computed from the cluster's nodes at the cloud (services/provisioner/health.py)."""
    await store.set_health(tx, e.uuid, e.health_status, dict(e.health_status_reason), current_sequence())


async def update_started(e: ev.ClusterUpdateStarted, env: Envelope, tx: asyncpg.Connection) -> None:
    await _move(tx, e.uuid, "ClusterUpdateStarted", env.occurred_at)


async def update_completed(e: ev.ClusterUpdateCompleted, env: Envelope, tx: asyncpg.Connection) -> None:
    moved = await _move(
        tx, e.uuid, "ClusterUpdateCompleted", env.occurred_at, status_reason="Cluster update complete"
    )
    if moved == status.UPDATE_COMPLETE:
        await store.set_node_count(tx, e.uuid, e.node_count)
        if e.node_addresses:
            await store.update_cluster(tx, e.uuid, node_addresses=e.node_addresses)


async def update_failed(e: ev.ClusterUpdateFailed, env: Envelope, tx: asyncpg.Connection) -> None:
    await _move(tx, e.uuid, "ClusterUpdateFailed", env.occurred_at, status_reason=e.status_reason)


async def node_created(e: ev.NodeCreated, env: Envelope, tx: asyncpg.Connection) -> None:
    if await store.cluster_status(tx, e.cluster_id) is not None:
        await store.upsert_node(tx, e.cluster_id, e.server_id, status="BUILD", node_name=e.node_name, role=e.role)


async def node_active(e: ev.NodeBecameActive, env: Envelope, tx: asyncpg.Connection) -> None:
    if await store.cluster_status(tx, e.cluster_id) is None:
        return
    await store.upsert_node(
        tx, e.cluster_id, e.server_id, status="ACTIVE", node_name=e.node_name, role=e.role, addresses=e.addresses
    )
    masters, workers = await store.node_addresses(tx, e.cluster_id)
    await store.update_cluster(tx, e.cluster_id, master_addresses=masters, node_addresses=workers)


async def node_failed(e: ev.NodeFailed, env: Envelope, tx: asyncpg.Connection) -> None:
    if await store.cluster_status(tx, e.cluster_id) is not None:
        await store.upsert_node(
            tx, e.cluster_id, e.server_id, status="ERROR", node_name=e.node_name, reason=e.reason
        )


async def node_deleted(e: ev.NodeDeleted, env: Envelope, tx: asyncpg.Connection) -> None:
    if await store.cluster_status(tx, e.cluster_id) is None:
        return
    await store.delete_node(tx, e.cluster_id, e.server_id, e.node_name)
    masters, workers = await store.node_addresses(tx, e.cluster_id)
    await store.update_cluster(tx, e.cluster_id, master_addresses=masters, node_addresses=workers)


HANDLERS: dict[type, Apply] = {
    ev.ClusterTemplateCreated: template_created,
    ev.ClusterTemplateUpdated: template_updated,
    ev.ClusterTemplateDeleted: template_deleted,
    ev.ClusterCreateRequested: create_requested,
    ev.ClusterAdmitted: admitted,
    ev.ClusterRejected: rejected,
    ev.ClusterWithdrawn: withdrawn,
    ev.ClusterQueued: queued,
    ev.ClusterQueuePositions: queue_positions,
    ev.ClusterUpdateAdmitted: update_admitted,
    ev.ClusterCreateStarted: create_started,
    ev.ClusterCreateCompleted: create_completed,
    ev.ClusterCreateFailed: create_failed,
    ev.ClusterDeleteRequested: delete_requested,
    ev.ClusterDeleteStarted: delete_started,
    ev.ClusterDeleteCompleted: delete_completed,
    ev.ClusterDeleteFailed: delete_failed,
    ev.ClusterUpdateRequested: update_requested,
    ev.ClusterHealthUpdated: health_updated,
    ev.ClusterHealthChanged: health_changed,
    ev.ClusterUpdateStarted: update_started,
    ev.ClusterUpdateCompleted: update_completed,
    ev.ClusterUpdateFailed: update_failed,
    ev.NodeCreated: node_created,
    ev.NodeBecameActive: node_active,
    ev.NodeFailed: node_failed,
    ev.NodeDeleted: node_deleted,
}
HANDLERS.update(quotas.PROJECTION)


async def apply_reading(env: Envelope, tx: asyncpg.Connection) -> None:
    """Apply an event ``plan`` declines: its handlers read the read model."""
    apply = HANDLERS.get(type(env.payload))
    if apply is not None:
        await apply(env.payload, env, tx)
    if isinstance(env.payload, ev.NodeGroupCreateAdmitted):
        # a decided nodegroup create, admitted: applied now as the request it admits
        request = ev.NodeGroupCreateRequested(nodegroup=env.payload.nodegroup, spec=env.payload.spec)
        await ngprojection.apply(msgspec.structs.replace(env, payload=request, type="NodeGroupCreateRequested"), tx)
    elif not (isinstance(env.payload, ev.ClusterUpdateRequested | ev.NodeGroupCreateRequested)
              and env.payload.decided):
        await ngprojection.apply(env, tx)


def _move_write(uuid: str, event_type: str, at: datetime, **values: Any) -> Write:
    """``_move`` (to a status other than GONE) as one statement (``store.move_write``)."""
    sources, target = status.rule(event_type)
    assert target != status.GONE
    return store.move_write(uuid, sources, target, at, values)


def _created(p: ev.ClusterCreateRequested, at: datetime) -> list[Write]:
    return [store.insert_cluster_write(p, at, status.CREATE_IN_PROGRESS), *(
        ngstore.insert_write(ng, status.CREATE_IN_PROGRESS, at) for ng in ngprojection._default_groups(p, at))]


def _create_completed(p: ev.ClusterCreateCompleted, at: datetime) -> list[Write]:
    return [
        _move_write(p.uuid, "ClusterCreateCompleted", at, status_reason="Cluster create complete",
                    api_address=p.api_address,
                    master_addresses=p.master_addresses or store.MASTER_ADDRESSES,
                    node_addresses=p.node_addresses or store.WORKER_ADDRESSES,
                    coe_version=p.coe_version, container_version=p.container_version),
        ngstore.move_all_write(p.uuid, status.CREATE_IN_PROGRESS, status.CREATE_COMPLETE, at),
    ]


def _create_failed(p: ev.ClusterCreateFailed, at: datetime) -> list[Write]:
    return [
        _move_write(p.uuid, "ClusterCreateFailed", at, status_reason=p.status_reason),
        ngstore.move_all_write(p.uuid, status.CREATE_IN_PROGRESS, status.CREATE_FAILED, at, p.status_reason),
    ]


def _delete_completed(p: ev.ClusterDeleteCompleted, _at: datetime) -> list[Write]:
    assert status.rule("ClusterDeleteCompleted") == (None, status.GONE)
    return [*store.delete_cluster_writes(p.uuid), ngstore.delete_cluster_groups_write(p.uuid)]


def _node_created(p: ev.NodeCreated, _at: datetime) -> list[Write]:
    group = p.nodegroup or (ngstore.DEFAULT_MASTER if p.role == "master" else ngstore.DEFAULT_WORKER)
    return [
        store.upsert_node_of_known_cluster_write(p.cluster_id, p.server_id, status="BUILD",
                                                 node_name=p.node_name, role=p.role),
        ngstore.set_node_group_write(p.cluster_id, p.server_id, group),
    ]


def _node_active(p: ev.NodeBecameActive, _at: datetime) -> list[Write]:
    return [
        store.upsert_node_of_known_cluster_write(p.cluster_id, p.server_id, status="ACTIVE",
                                                 node_name=p.node_name, role=p.role, addresses=p.addresses),
        store.refresh_addresses_write(p.cluster_id),
    ]


def _node_deleted(p: ev.NodeDeleted, _at: datetime) -> list[Write]:
    return [store.delete_node_of_known_cluster_write(p.cluster_id, p.server_id, p.node_name),
            store.refresh_addresses_write(p.cluster_id)]


_PLANNERS: dict[type, Callable[[Any, datetime], list[Write]]] = {
    ev.ClusterCreateRequested: _created,
    ev.ClusterAdmitted: lambda p, _at: [store.set_admitted_write(p.uuid)],
    ev.ClusterCreateStarted: lambda p, _at: [store.set_stack_id_write(p.uuid, p.stack_id)] if p.stack_id else [],
    ev.ClusterCreateCompleted: _create_completed,
    ev.ClusterCreateFailed: _create_failed,
    ev.ClusterDeleteRequested: lambda p, at: [_move_write(p.uuid, "ClusterDeleteRequested", at, status_reason=None)],
    ev.ClusterDeleteStarted: lambda p, at: [_move_write(p.uuid, "ClusterDeleteStarted", at)],
    ev.ClusterDeleteFailed: lambda p, at: [
        _move_write(p.uuid, "ClusterDeleteFailed", at, status_reason=p.status_reason)],
    ev.ClusterDeleteCompleted: _delete_completed,
    ev.NodeCreated: _node_created,
    ev.NodeBecameActive: _node_active,
    ev.NodeDeleted: _node_deleted,
}
"""Per event type, the statements applying it, from the event alone."""


def plan(env: Envelope) -> list[Write] | None:
    """The statements applying ``env`` when they follow from the event alone (``_PLANNERS``): what the handlers of
    the lifecycle's events (and the nodegroup projection's) do, the cluster's status, existence and addresses read
    by the statements themselves; [] for an event the read model does not show; None for the other events
    (updates, rejections, quotas, failures...), whose handlers read first."""
    planner = _PLANNERS.get(type(env.payload))
    if planner is not None:
        return planner(env.payload, env.occurred_at)
    return None if type(env.payload) in APPLIED_TYPES else []


def compact(writes: list[Write]) -> list[Write]:
    """A run of planned writes without the address refreshes of a cluster that a later refresh of the same cluster
    in the run supersedes: each sets both address columns from the nodes table alone, and no planned write reads
    them, so the last one leaves them as all of them would (a cluster's nodes becoming ACTIVE and going: one
    statement per cluster and batch instead of one per node, a quarter of a replay's time in PostgreSQL)."""
    last = {w.args[0]: i for i, w in enumerate(writes) if w.sql == store.REFRESH_ADDRESSES_SQL}
    return [w for i, w in enumerate(writes) if w.sql != store.REFRESH_ADDRESSES_SQL or last[w.args[0]] == i]


PLANNED = PlannedHandler(plan, apply_reading, compact)


APPLIED_TYPES: set[type] = {*HANDLERS, *ngprojection.HANDLERS, ev.NodeGroupCreateAdmitted}
"""The event types the read model applies (the others change nothing, and are never parked)."""


async def handle(env: Envelope, tx: asyncpg.Connection) -> Sequence[Outgoing] | None:
    """The projection handler registered for the API (``cove.evt.>``): each cluster's events in stream order
    (services/api/parking.py: an event of a cluster the read model lacks, or that does not apply yet, is parked and
    applied after what it waits for; one older than the cluster's status is superseded), then a planned event's
    statements one after another, another event with its handlers."""
    arranged = await parking.arrange([env], [current_sequence()], tx, APPLIED_TYPES)
    if len(arranged.envs) == 1 and arranged.envs[0] is env and not arranged.superseded:
        out = await PLANNED(env, tx)
        await parking.settle(tx, arranged.status_seqs)
        return out
    await _apply(arranged, tx)
    return ()


async def _apply(arranged: parking.Arrangement, tx: asyncpg.Connection) -> None:
    """The arranged events (``PlannedHandler.batch`` between the superseded ones, whose other effects are applied in
    their place), then the clusters' ``status_seq``."""
    start = 0
    for i in [*sorted(arranged.superseded), len(arranged.envs)]:
        if i > start:
            await PLANNED.batch(arranged.envs[start:i], tx, arranged.sequences[start:i])
        if i < len(arranged.envs):
            await ngprojection.superseded(arranged.envs[i], tx)
        start = i + 1
    await parking.settle(tx, arranged.status_seqs)


async def handle_batch(envs: list[Envelope], tx: asyncpg.Connection) -> list[Sequence[Outgoing]]:
    """The API's batch handler: arranged as ``handle``, then the planned events' statements grouped by statement
    (new clusters, their default nodegroups and admissions, node reports, status moves: a few round trips for the
    batch), the others with their handlers in their place (``PlannedHandler.batch``). The result is what
    ``handle`` gives one event at a time (tests/api/test_batch_projection.py, tests/ops/test_replay_batched.py).
    The API publishes nothing from its projection: no event has outgoing events."""
    arranged = await parking.arrange(envs, batch_sequences() or [0] * len(envs), tx, APPLIED_TYPES)
    await _apply(arranged, tx)
    return [()] * len(envs)
