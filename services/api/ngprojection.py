"""The nodegroup side of the API's projection: applied after ``services.api.projection`` for every event.

Default groups (``default-master``, ``default-worker``) appear with the cluster; each group's status follows
Magnum's rules (create/update/delete of a group moves the cluster to UPDATE_IN_PROGRESS; the provisioner's
ClusterUpdateCompleted/Failed settles every group in progress). The cluster's node_count is the sum of its
worker groups.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import asyncpg
import structlog

from proto import clusterspec
from proto import events as ev
from proto.envelope import Envelope
from services.api import ngstore, status, store, versions

log = structlog.get_logger(__name__)

CREATE_IN_PROGRESS, CREATE_COMPLETE, CREATE_FAILED = "CREATE_IN_PROGRESS", "CREATE_COMPLETE", "CREATE_FAILED"
UPDATE_IN_PROGRESS, UPDATE_COMPLETE, UPDATE_FAILED = "UPDATE_IN_PROGRESS", "UPDATE_COMPLETE", "UPDATE_FAILED"
DELETE_IN_PROGRESS, DELETE_FAILED = "DELETE_IN_PROGRESS", "DELETE_FAILED"


async def _cluster_to_updating(tx: asyncpg.Connection, cluster_uuid: str, at: datetime) -> bool:
    """Move the cluster to UPDATE_IN_PROGRESS as a resize would; False when it is not in a state that allows it."""
    current = await store.cluster_status(tx, cluster_uuid)
    if current is None:
        return False
    new = status.transition(current, "ClusterUpdateRequested")
    if new != UPDATE_IN_PROGRESS and current != UPDATE_IN_PROGRESS:
        log.info("nodegroup_event_ignored", cluster_id=cluster_uuid, status=current)
        return False
    await store.update_cluster(tx, cluster_uuid, status=UPDATE_IN_PROGRESS, status_reason=None, updated_at=at)
    return True


async def _sync_node_count(tx: asyncpg.Connection, cluster_uuid: str) -> None:
    total = await ngstore.worker_total(tx, cluster_uuid)
    if total is not None:
        await store.set_node_count(tx, cluster_uuid, total)


def _default_groups(e: ev.ClusterCreateRequested, at: datetime) -> list[ev.NodeGroup]:
    """The cluster's default groups exactly as its resolved spec says they are built."""
    return [ev.NodeGroup(
        uuid=ngstore.default_uuid(e.uuid, g.name), name=g.name, cluster_id=e.uuid, project_id=e.project_id,
        role=g.role, node_count=g.node_count, min_node_count=0, max_node_count=None, flavor_id=g.flavor_id,
        image_id=g.image_id, labels=dict(g.labels), is_default=True, created_at=e.requested_at or at,
        docker_volume_size=g.docker_volume_size,
    ) for g in clusterspec.spec_of(e).nodegroups]


async def create_requested_many(
    requested: list[tuple[ev.ClusterCreateRequested, datetime]], tx: asyncpg.Connection
) -> None:
    """The default master and worker groups of several new clusters (request, time it occurred; their rows were
    inserted just before, by projection.py), in one round trip."""
    groups = [(ng, at) for e, at in requested for ng in _default_groups(e, at)]
    await ngstore.insert_many(tx, groups, CREATE_IN_PROGRESS)


async def create_requested(e: ev.ClusterCreateRequested, env: Envelope, tx: asyncpg.Connection) -> None:
    await create_requested_many([(e, env.occurred_at)], tx)


async def create_completed(e: ev.ClusterCreateCompleted, env: Envelope, tx: asyncpg.Connection) -> None:
    await ngstore.move_all(tx, e.uuid, {CREATE_IN_PROGRESS: CREATE_COMPLETE}, env.occurred_at)


async def create_failed(e: ev.ClusterCreateFailed | ev.ClusterRejected, env: Envelope, tx: asyncpg.Connection) -> None:
    reason = e.status_reason if isinstance(e, ev.ClusterCreateFailed) else e.reason
    await ngstore.move_all(tx, e.uuid, {CREATE_IN_PROGRESS: CREATE_FAILED}, env.occurred_at, reason)


async def update_requested(e: ev.ClusterUpdateRequested, env: Envelope, tx: asyncpg.Connection) -> None:
    row = await ngstore.find(tx, e.uuid, e.nodegroup)
    if row is None or await store.cluster_status(tx, e.uuid) != UPDATE_IN_PROGRESS:
        return
    await ngstore.set_count(tx, row["uuid"], e.node_count)
    await ngstore.set_status(tx, row["uuid"], UPDATE_IN_PROGRESS, env.occurred_at)
    await _sync_node_count(tx, e.uuid)


async def nodegroup_create_requested(
    e: ev.NodeGroupCreateRequested, env: Envelope, tx: asyncpg.Connection
) -> None:
    ng = e.nodegroup
    if not await _cluster_to_updating(tx, ng.cluster_id, env.occurred_at):
        return
    await ngstore.insert(tx, ng, CREATE_IN_PROGRESS, env.occurred_at)
    await _sync_node_count(tx, ng.cluster_id)


async def nodegroup_update_requested(
    e: ev.NodeGroupUpdateRequested, env: Envelope, tx: asyncpg.Connection
) -> None:
    """Counts bounds and node labels/taints need no server change: applied as they arrive (the newest: an older one
    applied late changes nothing, services/api/versions.py)."""
    if not await versions.newer(tx, "nodegroup", e.uuid):
        return
    await ngstore.update_fields(
        tx, e.uuid, env.occurred_at, min_node_count=e.min_node_count, max_node_count=e.max_node_count,
        node_labels=dict(e.node_labels),
        node_taints=[{"key": t.key, "value": t.value, "effect": t.effect} for t in e.node_taints],
    )


async def nodegroup_delete_requested(
    e: ev.NodeGroupDeleteRequested, env: Envelope, tx: asyncpg.Connection
) -> None:
    if not await _cluster_to_updating(tx, e.cluster_id, env.occurred_at):
        return
    await ngstore.set_status(tx, e.uuid, DELETE_IN_PROGRESS, env.occurred_at)
    await _sync_node_count(tx, e.cluster_id)


async def upgrade_requested(e: ev.ClusterUpgradeRequested, env: Envelope, tx: asyncpg.Connection) -> None:
    if not await _cluster_to_updating(tx, e.uuid, env.occurred_at):
        return
    target = await ngstore.find(tx, e.uuid, e.nodegroup) if e.nodegroup else None
    if e.nodegroup is None:
        await ngstore.set_cluster_template(tx, e.uuid, e.template.uuid)
        await ngstore.set_image(tx, e.uuid, None, e.template.image_id)
        await ngstore.move_all(
            tx, e.uuid, {s: UPDATE_IN_PROGRESS for s in (CREATE_COMPLETE, UPDATE_COMPLETE, UPDATE_FAILED)},
            env.occurred_at,
        )
    elif target is not None:
        await ngstore.set_image(tx, e.uuid, target["uuid"], e.template.image_id)
        await ngstore.set_status(tx, target["uuid"], UPDATE_IN_PROGRESS, env.occurred_at)


async def update_completed(e: ev.ClusterUpdateCompleted, env: Envelope, tx: asyncpg.Connection) -> None:
    if await store.cluster_status(tx, e.uuid) != status.UPDATE_COMPLETE:
        return
    for name, count in e.nodegroup_counts.items():
        await ngstore.set_count_by_name(tx, e.uuid, name, count)
    await ngstore.drop_deleting(tx, e.uuid)
    await ngstore.move_all(
        tx, e.uuid, {CREATE_IN_PROGRESS: CREATE_COMPLETE, UPDATE_IN_PROGRESS: UPDATE_COMPLETE}, env.occurred_at
    )
    await _sync_node_count(tx, e.uuid)


async def update_failed(e: ev.ClusterUpdateFailed, env: Envelope, tx: asyncpg.Connection) -> None:
    await ngstore.move_all(
        tx, e.uuid,
        {CREATE_IN_PROGRESS: CREATE_FAILED, UPDATE_IN_PROGRESS: UPDATE_FAILED, DELETE_IN_PROGRESS: DELETE_FAILED},
        env.occurred_at, e.status_reason,
    )


async def delete_completed(e: ev.ClusterDeleteCompleted, env: Envelope, tx: asyncpg.Connection) -> None:
    await ngstore.delete_cluster_groups(tx, e.uuid)


async def withdrawn(e: ev.ClusterWithdrawn, env: Envelope, tx: asyncpg.Connection) -> None:
    """(Applied after the cluster's own handler: its groups go only if the cluster row went.)"""
    if await store.cluster_status(tx, e.uuid) is None:
        await ngstore.delete_cluster_groups(tx, e.uuid)


async def node_created(e: ev.NodeCreated, env: Envelope, tx: asyncpg.Connection) -> None:
    group = e.nodegroup or (ngstore.DEFAULT_MASTER if e.role == "master" else ngstore.DEFAULT_WORKER)
    await ngstore.set_node_group(tx, e.cluster_id, e.server_id, group)


async def superseded(env: Envelope, tx: asyncpg.Connection) -> None:
    """A nodegroup's create or delete, or an upgrade, applied after the update it asked for had moved the cluster on
    (a copy killed holding it: services/api/parking.py supersedes its status move). Its groups are left as that
    update left the others: settled with the cluster's status (``UPDATE_COMPLETE`` or ``UPDATE_FAILED``, at its
    time), or in progress while it is."""
    p = env.payload
    if isinstance(p, ev.NodeGroupCreateRequested | ev.NodeGroupCreateAdmitted):
        if isinstance(p, ev.NodeGroupCreateRequested) and p.decided:
            return
        cluster = p.nodegroup.cluster_id
    elif isinstance(p, ev.NodeGroupDeleteRequested):
        cluster = p.cluster_id
    elif isinstance(p, ev.ClusterUpgradeRequested):
        cluster = p.uuid
    else:
        return
    row = await tx.fetchrow("SELECT status, status_reason, updated_at FROM clusters WHERE uuid = $1", cluster)
    if row is None:
        return
    now = row["status"]
    settled = now in (UPDATE_COMPLETE, UPDATE_FAILED)
    at = row["updated_at"] if settled else env.occurred_at
    reason = row["status_reason"] if now == UPDATE_FAILED else None
    if isinstance(p, ev.NodeGroupCreateRequested | ev.NodeGroupCreateAdmitted):
        await ngstore.insert(tx, p.nodegroup, CREATE_IN_PROGRESS, env.occurred_at)
        if settled:
            await ngstore.set_status(tx, p.nodegroup.uuid, CREATE_COMPLETE if now == UPDATE_COMPLETE else CREATE_FAILED,
                                     at, reason)
    elif isinstance(p, ev.NodeGroupDeleteRequested):
        if now == UPDATE_COMPLETE:
            await tx.execute("DELETE FROM nodegroups WHERE uuid = $1", p.uuid)
        else:
            await ngstore.set_status(tx, p.uuid, DELETE_FAILED if now == UPDATE_FAILED else DELETE_IN_PROGRESS, at,
                                     reason)
    else:
        target = await ngstore.find(tx, p.uuid, p.nodegroup) if p.nodegroup else None
        if p.nodegroup is None:
            await ngstore.set_cluster_template(tx, p.uuid, p.template.uuid)
        if p.nodegroup is None or target is not None:
            await ngstore.set_image(tx, p.uuid, target["uuid"] if target is not None else None, p.template.image_id)
        if settled:
            moved = UPDATE_COMPLETE if now == UPDATE_COMPLETE else UPDATE_FAILED
            if target is not None:
                await ngstore.set_status(tx, target["uuid"], moved, at, reason)
            elif p.nodegroup is None:
                await ngstore.move_all(tx, p.uuid, {s: moved for s in (CREATE_COMPLETE, UPDATE_COMPLETE, UPDATE_FAILED)},
                                       at, reason)
    await _sync_node_count(tx, cluster)


HANDLERS: dict[type, Callable[[Any, Envelope, asyncpg.Connection], Awaitable[None]]] = {
    ev.ClusterCreateRequested: create_requested,
    ev.ClusterCreateCompleted: create_completed,
    ev.ClusterCreateFailed: create_failed,
    ev.ClusterRejected: create_failed,
    ev.ClusterUpdateRequested: update_requested,
    ev.NodeGroupCreateRequested: nodegroup_create_requested,
    ev.NodeGroupUpdateRequested: nodegroup_update_requested,
    ev.NodeGroupDeleteRequested: nodegroup_delete_requested,
    ev.ClusterUpgradeRequested: upgrade_requested,
    ev.ClusterUpdateCompleted: update_completed,
    ev.ClusterUpdateFailed: update_failed,
    ev.ClusterDeleteCompleted: delete_completed,
    ev.ClusterWithdrawn: withdrawn,
    ev.NodeCreated: node_created,
}


async def apply(env: Envelope, tx: asyncpg.Connection) -> None:
    """Apply one event to the nodegroup read model (types it does not concern are ignored)."""
    handler = HANDLERS.get(type(env.payload))
    if handler is not None:
        await handler(env.payload, env, tx)
