"""One function per event the provisioner projects into its store. The store is built only from these events.

The provisioner publishes its own events from the reconciler (it is the single writer of
``cove.evt.provisioner.cluster.<uuid>``); the projection reads them back like any other event, so a store dropped
and rebuilt from the stream is the same store. Handlers return no outgoing events.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import asyncpg
import structlog

from proto import clusterspec
from proto.envelope import Envelope
from proto.events import (
    ClusterCACreated,
    ClusterCAReplaced,
    ClusterCATrustNarrowed,
    ClusterCreateCompleted,
    ClusterCreateFailed,
    ClusterCreateRequested,
    ClusterCreateStarted,
    ClusterDeleteCompleted,
    ClusterDeleteFailed,
    ClusterDeleteRequested,
    ClusterDeleteStarted,
    ClusterHealthChanged,
    ClusterTrustDeleted,
    ClusterTrustRotated,
    ClusterUpdateAdmitted,
    ClusterUpdateCompleted,
    ClusterUpdateFailed,
    ClusterUpdateRequested,
    ClusterUpdateStarted,
    ClusterUpgradeRequested,
    ClusterWithdrawn,
    FloatingIpAllocated,
    FloatingIpReleased,
    LoadBalancerCreated,
    LoadBalancerDeleted,
    NodeBecameActive,
    NodeCreated,
    NodeDeleted,
    NodeFailed,
    NodeGroupCreateAdmitted,
    NodeGroupCreateRequested,
    NodeGroupDeleteRequested,
    NodeLost,
    NodeRepaired,
    VolumeCreated,
    VolumeDeleted,
)
from services.provisioner import model, store
from services.runtime.projection import Outgoing, current_sequence

log = structlog.get_logger(__name__)


async def on_create_requested(env: Envelope, p: ClusterCreateRequested, tx: asyncpg.Connection) -> None:
    await store.record_spec(tx, p, env.correlation_id)
    for g in clusterspec.spec_of(p).nodegroups:  # exactly the groups the API resolved: nothing re-derived here
        await store.upsert_group(
            tx, p.uuid, g.name, uuid=None, role=g.role, node_count=g.node_count, flavor_id=g.flavor_id,
            image_id=g.image_id, is_default=True, docker_volume_size=g.docker_volume_size,
        )


async def on_update_requested(env: Envelope, p: ClusterUpdateRequested, tx: asyncpg.Connection) -> None:
    """A resize (or node_count PATCH) of one worker group; an unknown group is logged and ignored. A ``decided``
    one waits for the scheduler's ``ClusterUpdateAdmitted`` (quota, docs/adr/0008)."""
    if p.decided:
        return
    name = await store.find_group(tx, p.uuid, p.nodegroup)
    if name is None:
        log.warning("resize_of_unknown_nodegroup", cluster_id=p.uuid, nodegroup=p.nodegroup)
        return
    await store.resize_group(tx, p.uuid, name, p.node_count, p.nodes_to_remove)
    await store.bump_update(tx, p.uuid)


async def on_update_admitted(env: Envelope, p: ClusterUpdateAdmitted, tx: asyncpg.Connection) -> None:
    """The scheduler admitted a ``decided`` resize: act on it as on the request it admits."""
    await on_update_requested(env, ClusterUpdateRequested(
        uuid=p.uuid, project_id=p.project_id, node_count=p.node_count, previous_node_count=p.previous_node_count,
        nodes_to_remove=list(p.nodes_to_remove), nodegroup=p.nodegroup, rollback=p.rollback,
    ), tx)


async def on_nodegroup_create_requested(
    env: Envelope, p: NodeGroupCreateRequested, tx: asyncpg.Connection
) -> None:
    if p.decided:
        return  # acted on at the scheduler's NodeGroupCreateAdmitted (quota, docs/adr/0008)
    ng = p.nodegroup
    built = p.spec  # resolved by the API; None in older events, whose nodegroup carries the values it had
    await store.upsert_group(
        tx, ng.cluster_id, ng.name, uuid=ng.uuid, role=ng.role if ng.role == model.MASTER else model.WORKER,
        node_count=ng.node_count, flavor_id=built.flavor_id if built else ng.flavor_id,
        image_id=(built.image_id or None) if built else ng.image_id, is_default=ng.is_default,
        docker_volume_size=built.docker_volume_size if built else ng.docker_volume_size,
    )
    await store.bump_update(tx, ng.cluster_id)


async def on_nodegroup_create_admitted(env: Envelope, p: NodeGroupCreateAdmitted, tx: asyncpg.Connection) -> None:
    await on_nodegroup_create_requested(env, NodeGroupCreateRequested(nodegroup=p.nodegroup, spec=p.spec), tx)


async def on_nodegroup_delete_requested(
    env: Envelope, p: NodeGroupDeleteRequested, tx: asyncpg.Connection
) -> None:
    await store.remove_group(tx, p.cluster_id, p.name)
    await store.bump_update(tx, p.cluster_id)


async def on_upgrade_requested(env: Envelope, p: ClusterUpgradeRequested, tx: asyncpg.Connection) -> None:
    name = None if p.nodegroup is None else await store.find_group(tx, p.uuid, p.nodegroup)
    await store.set_group_image(tx, p.uuid, name, p.template.image_id)
    await store.bump_roll(tx, p.uuid, name)  # every node of the group is rolled, whatever its image (issue 13)
    await store.bump_update(tx, p.uuid, max_batch_size=p.max_batch_size)


async def on_update_started(env: Envelope, p: ClusterUpdateStarted, tx: asyncpg.Connection) -> None:
    await store.set_status(tx, p.uuid, p.project_id, model.UPDATE_IN_PROGRESS, None, current_sequence())
    await store.mark_update(tx, p.uuid, started=p.generation)
    await store.set_operation_started(tx, p.uuid, "update_started_at", env.occurred_at)


async def on_update_completed(env: Envelope, p: ClusterUpdateCompleted, tx: asyncpg.Connection) -> None:
    await store.set_status(tx, p.uuid, p.project_id, model.UPDATE_COMPLETE, None, current_sequence())
    await store.mark_update(tx, p.uuid, done=p.generation)


async def on_update_failed(env: Envelope, p: ClusterUpdateFailed, tx: asyncpg.Connection) -> None:
    await store.set_status(tx, p.uuid, p.project_id, model.UPDATE_FAILED, p.status_reason, current_sequence())
    await store.mark_update(tx, p.uuid, done=p.generation)


async def on_ca_created(env: Envelope, p: ClusterCACreated, tx: asyncpg.Connection) -> None:
    await store.record_ca(tx, p.uuid, p.project_id, p.ca_cert_pem)


async def on_ca_replaced(env: Envelope, p: ClusterCAReplaced, tx: asyncpg.Connection) -> None:
    """A rotated CA: every node is rolled onto it (an update), the masters trusting the old CA beside the new one
    until every node runs the new one (then ClusterCATrustNarrowed); a cluster not built yet just uses it."""
    previous = await store.current_ca(tx, p.uuid)
    await store.record_ca(tx, p.uuid, p.project_id, p.ca_cert_pem)
    _, status = await store.current_trust(tx, p.uuid)
    if previous and previous.strip() != p.ca_cert_pem.strip() and status in model.UPDATABLE:
        await store.set_ca_previous(tx, p.uuid, previous)
        await store.bump_roll(tx, p.uuid, None)
        await store.bump_update(tx, p.uuid)


async def on_ca_trust_narrowed(env: Envelope, p: ClusterCATrustNarrowed, tx: asyncpg.Connection) -> None:
    """Every node runs the new CA: the masters are rolled once more, trusting it alone."""
    await store.bump_seq(tx, p.uuid, p.project_id, current_sequence())
    await store.set_ca_previous(tx, p.uuid, None)
    await store.bump_roll(tx, p.uuid, None, masters_only=True)


async def on_trust_rotated(env: Envelope, p: ClusterTrustRotated, tx: asyncpg.Connection) -> None:
    """Act with the new trust from now on; the trust it replaces is to be deleted (the trust reaper waits until no
    reconcile pass still holds it). A rotation that lands after the cluster was deleted leaves nothing to act for:
    the new trust is deleted too."""
    old, status = await store.current_trust(tx, p.uuid)
    await store.set_trust(tx, p.uuid, p.trust_id)
    for previous in (old, p.previous_trust_id):
        if previous and previous != p.trust_id:
            await store.add_trust_to_delete(tx, previous, p.uuid, p.project_id, "rotated")
    if status == model.DELETE_COMPLETE:
        await store.add_trust_to_delete(tx, p.trust_id, p.uuid, p.project_id, "cluster_deleted")
    log.info("cluster_trust_rotated", cluster_id=p.uuid, trust_id=p.trust_id, previous_trust_id=old)


async def on_delete_requested(env: Envelope, p: ClusterDeleteRequested, tx: asyncpg.Connection) -> None:
    await store.record_delete_requested(tx, p.uuid, p.project_id)


async def on_create_started(env: Envelope, p: ClusterCreateStarted, tx: asyncpg.Connection) -> None:
    await store.set_status(
        tx, p.uuid, p.project_id, model.CREATE_IN_PROGRESS, None, current_sequence(), started_at=env.occurred_at
    )


async def on_create_completed(env: Envelope, p: ClusterCreateCompleted, tx: asyncpg.Connection) -> None:
    await store.set_status(tx, p.uuid, p.project_id, model.CREATE_COMPLETE, None, current_sequence())


async def on_create_failed(env: Envelope, p: ClusterCreateFailed, tx: asyncpg.Connection) -> None:
    await store.set_status(tx, p.uuid, p.project_id, model.CREATE_FAILED, p.status_reason, current_sequence())


async def on_delete_started(env: Envelope, p: ClusterDeleteStarted, tx: asyncpg.Connection) -> None:
    await store.set_status(
        tx, p.uuid, p.project_id, model.DELETE_IN_PROGRESS, None, current_sequence(), delete_started=True
    )
    await store.set_operation_started(tx, p.uuid, "delete_started_at", env.occurred_at)


async def on_delete_completed(env: Envelope, p: ClusterDeleteCompleted, tx: asyncpg.Connection) -> None:
    await store.set_status(tx, p.uuid, p.project_id, model.DELETE_COMPLETE, None, current_sequence())
    trust_id, _ = await store.current_trust(tx, p.uuid)
    if trust_id:
        await store.add_trust_to_delete(tx, trust_id, p.uuid, p.project_id, "cluster_deleted")


async def on_withdrawn(env: Envelope, p: ClusterWithdrawn, tx: asyncpg.Connection) -> None:
    """A refused create whose requester was answered 403: never admitted, so never built; for everyone it is gone.
    Its trust is to be deleted (the trust reaper keeps a trust another cluster still acts with, ADR 0005)."""
    trust_id, status = await store.current_trust(tx, p.uuid)
    if status == model.DELETE_COMPLETE:
        return
    if status is not None:
        # Only a rejected cluster is withdrawn, and a rejected one is never started: keep what the store says.
        log.warning("withdrawn_cluster_was_started", cluster_id=p.uuid, status=status)
        return
    # (last_seq is of the provisioner's own events on the cluster, none here: the trust reaper publishes the first.)
    await store.set_status(tx, p.uuid, p.project_id, model.DELETE_COMPLETE, "withdrawn", 0)
    if trust_id:  # (as a deleted cluster's: due at once, ClusterTrustDeleted says cluster_deleted)
        await store.add_trust_to_delete(tx, trust_id, p.uuid, p.project_id, "cluster_deleted")
    log.info("cluster_withdrawn", cluster_id=p.uuid, trust_id=trust_id)


async def on_trust_deleted(env: Envelope, p: ClusterTrustDeleted, tx: asyncpg.Connection) -> None:
    await store.bump_seq(tx, p.uuid, p.project_id, current_sequence())
    await store.remove_trust_to_delete(tx, p.trust_id)


async def on_delete_failed(env: Envelope, p: ClusterDeleteFailed, tx: asyncpg.Connection) -> None:
    await store.set_status(tx, p.uuid, p.project_id, model.DELETE_FAILED, p.status_reason, current_sequence())


async def on_node_created(env: Envelope, p: NodeCreated, tx: asyncpg.Connection) -> None:
    await store.bump_seq(tx, p.cluster_id, p.project_id, current_sequence())
    await store.upsert_node(
        tx, p.cluster_id, p.server_id, name=p.node_name, role=p.role, status=model.NODE_CREATED,
        flavor_id=p.flavor_id, vcpus=p.vcpus, ram_mb=p.ram_mb, disk_gb=p.disk_gb,
    )


async def on_node_active(env: Envelope, p: NodeBecameActive, tx: asyncpg.Connection) -> None:
    await store.bump_seq(tx, p.cluster_id, p.project_id, current_sequence())
    await store.upsert_node(
        tx, p.cluster_id, p.server_id, name=p.node_name, role=p.role, status=model.NODE_ACTIVE,
        addresses=p.addresses,
    )


async def on_node_failed(env: Envelope, p: NodeFailed, tx: asyncpg.Connection) -> None:
    await store.bump_seq(tx, p.cluster_id, p.project_id, current_sequence())
    await store.upsert_node(
        tx, p.cluster_id, p.server_id, name=p.node_name, role=None, status=model.NODE_FAILED, reason=p.reason
    )


async def on_node_deleted(env: Envelope, p: NodeDeleted, tx: asyncpg.Connection) -> None:
    await store.bump_seq(tx, p.cluster_id, p.project_id, current_sequence())
    await store.upsert_node(
        tx, p.cluster_id, p.server_id, name=p.node_name, role=p.role, status=model.NODE_DELETED
    )


async def on_health_changed(env: Envelope, p: ClusterHealthChanged, tx: asyncpg.Connection) -> None:
    await store.set_health(tx, p.uuid, p.project_id, p.health_status, dict(p.health_status_reason),
                           current_sequence())


async def on_node_lost(env: Envelope, p: NodeLost, tx: asyncpg.Connection) -> None:
    """The cloud lost the node (ERROR, or gone): failed, until auto-healing deletes and replaces it."""
    await store.bump_seq(tx, p.cluster_id, p.project_id, current_sequence())
    await store.upsert_node(tx, p.cluster_id, p.server_id, name=p.node_name, role=None, status=model.NODE_FAILED,
                            reason=p.reason)


async def on_node_repaired(env: Envelope, p: NodeRepaired, tx: asyncpg.Connection) -> None:
    await store.bump_seq(tx, p.cluster_id, p.project_id, current_sequence())


async def on_billed_resource(env: Envelope, p: VolumeCreated, tx: asyncpg.Connection) -> None:
    """A volume, floating IP or load balancer reported to accounting (``billing.py``): only the subject's sequence."""
    await store.bump_seq(tx, p.cluster_id, p.project_id, current_sequence())


HANDLERS: dict[type, Callable[[Envelope, object, asyncpg.Connection], Awaitable[None]]] = {
    ClusterCreateRequested: on_create_requested,  # type: ignore[dict-item]
    ClusterCACreated: on_ca_created,  # type: ignore[dict-item]
    ClusterCAReplaced: on_ca_replaced,  # type: ignore[dict-item]
    ClusterCATrustNarrowed: on_ca_trust_narrowed,  # type: ignore[dict-item]
    ClusterTrustRotated: on_trust_rotated,  # type: ignore[dict-item]
    ClusterDeleteRequested: on_delete_requested,  # type: ignore[dict-item]
    ClusterCreateStarted: on_create_started,  # type: ignore[dict-item]
    ClusterCreateCompleted: on_create_completed,  # type: ignore[dict-item]
    ClusterCreateFailed: on_create_failed,  # type: ignore[dict-item]
    ClusterDeleteStarted: on_delete_started,  # type: ignore[dict-item]
    ClusterDeleteCompleted: on_delete_completed,  # type: ignore[dict-item]
    ClusterDeleteFailed: on_delete_failed,  # type: ignore[dict-item]
    ClusterTrustDeleted: on_trust_deleted,  # type: ignore[dict-item]
    ClusterWithdrawn: on_withdrawn,  # type: ignore[dict-item]
    NodeCreated: on_node_created,  # type: ignore[dict-item]
    NodeBecameActive: on_node_active,  # type: ignore[dict-item]
    NodeFailed: on_node_failed,  # type: ignore[dict-item]
    NodeDeleted: on_node_deleted,  # type: ignore[dict-item]
    NodeLost: on_node_lost,  # type: ignore[dict-item]
    NodeRepaired: on_node_repaired,  # type: ignore[dict-item]
    ClusterHealthChanged: on_health_changed,  # type: ignore[dict-item]
    **dict.fromkeys((VolumeCreated, VolumeDeleted, FloatingIpAllocated, FloatingIpReleased, LoadBalancerCreated,
                     LoadBalancerDeleted), on_billed_resource),  # type: ignore[dict-item, arg-type]
    ClusterUpdateRequested: on_update_requested,  # type: ignore[dict-item]
    ClusterUpdateAdmitted: on_update_admitted,  # type: ignore[dict-item]
    NodeGroupCreateRequested: on_nodegroup_create_requested,  # type: ignore[dict-item]
    NodeGroupCreateAdmitted: on_nodegroup_create_admitted,  # type: ignore[dict-item]
    NodeGroupDeleteRequested: on_nodegroup_delete_requested,  # type: ignore[dict-item]
    ClusterUpgradeRequested: on_upgrade_requested,  # type: ignore[dict-item]
    ClusterUpdateStarted: on_update_started,  # type: ignore[dict-item]
    ClusterUpdateCompleted: on_update_completed,  # type: ignore[dict-item]
    ClusterUpdateFailed: on_update_failed,  # type: ignore[dict-item]
}


async def project(env: Envelope, tx: asyncpg.Connection) -> Sequence[Outgoing]:
    """The projection handler: apply one event to the store; events of other types are ignored."""
    handler = HANDLERS.get(type(env.payload))
    if handler is not None:
        await handler(env, env.payload, tx)
    return []
