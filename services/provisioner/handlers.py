"""One function per event the provisioner projects into its store. The store is built only from these events.

The provisioner publishes its own events from the reconciler (it is the single writer of
``cove.evt.provisioner.cluster.<uuid>``); the projection reads them back like any other event, so a store dropped
and rebuilt from the stream is the same store. Handlers return no outgoing events.

Most events are planned (``PLANS``): their writes are decided from the event alone (``store.*_write``), so a batch
of them (a live fetch, a replay's 1,000 events) runs grouped by statement, a few round trips for the whole batch
(``services.runtime.projection.PlannedHandler``); alone they run one after another, the same statements. The
events whose effect depends on what the store holds (``HANDLERS``: a rotated CA or trust, a withdrawal, a resize
naming its group) are applied one at a time in their place.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

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
    NodeReleased,
    NodeRepaired,
    VolumeCreated,
    VolumeDeleted,
)
from services.provisioner import model, store
from services.runtime.projection import Outgoing, PlannedHandler, Write, current_sequence

log = structlog.get_logger(__name__)


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


async def on_upgrade_requested(env: Envelope, p: ClusterUpgradeRequested, tx: asyncpg.Connection) -> None:
    name = None if p.nodegroup is None else await store.find_group(tx, p.uuid, p.nodegroup)
    await store.set_group_image(tx, p.uuid, name, p.template.image_id)
    await store.bump_roll(tx, p.uuid, name)  # every node of the group is rolled, whatever its image (issue 13)
    await store.bump_update(tx, p.uuid, max_batch_size=p.max_batch_size)


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


# ------------------------------------------------------------------------------------------------ planned events


def plan_create_requested(env: Envelope, p: ClusterCreateRequested) -> list[Write]:
    resolved = clusterspec.spec_of(p)
    return [store.record_spec_write(p, env.correlation_id, resolved), *(
        store.upsert_group_write(
            p.uuid, g.name, uuid=None, role=g.role, node_count=g.node_count, flavor_id=g.flavor_id,
            image_id=g.image_id, is_default=True, docker_volume_size=g.docker_volume_size,
        )
        for g in resolved.nodegroups  # exactly the groups the API resolved: nothing re-derived here
    )]


def plan_nodegroup_create_requested(env: Envelope, p: NodeGroupCreateRequested) -> list[Write]:
    if p.decided:
        return []  # acted on at the scheduler's NodeGroupCreateAdmitted (quota, docs/adr/0008)
    ng = p.nodegroup
    built = p.spec  # resolved by the API; None in older events, whose nodegroup carries the values it had
    return [
        store.upsert_group_write(
            ng.cluster_id, ng.name, uuid=ng.uuid, role=ng.role if ng.role == model.MASTER else model.WORKER,
            node_count=ng.node_count, flavor_id=built.flavor_id if built else ng.flavor_id,
            image_id=(built.image_id or None) if built else ng.image_id, is_default=ng.is_default,
            docker_volume_size=built.docker_volume_size if built else ng.docker_volume_size,
        ),
        store.bump_update_write(ng.cluster_id),
    ]


def plan_nodegroup_create_admitted(env: Envelope, p: NodeGroupCreateAdmitted) -> list[Write]:
    return plan_nodegroup_create_requested(env, NodeGroupCreateRequested(nodegroup=p.nodegroup, spec=p.spec))


def plan_nodegroup_delete_requested(env: Envelope, p: NodeGroupDeleteRequested) -> list[Write]:
    return [store.remove_group_write(p.cluster_id, p.name), store.bump_update_write(p.cluster_id)]


def plan_update_started(env: Envelope, p: ClusterUpdateStarted) -> list[Write]:
    return [
        store.set_status_write(p.uuid, p.project_id, model.UPDATE_IN_PROGRESS, None, current_sequence()),
        store.mark_update_write(p.uuid, started=p.generation),
        store.set_operation_started_write(p.uuid, "update_started_at", env.occurred_at),
    ]


def plan_update_completed(env: Envelope, p: ClusterUpdateCompleted) -> list[Write]:
    return [
        store.set_status_write(p.uuid, p.project_id, model.UPDATE_COMPLETE, None, current_sequence()),
        store.mark_update_write(p.uuid, done=p.generation),
    ]


def plan_update_failed(env: Envelope, p: ClusterUpdateFailed) -> list[Write]:
    return [
        store.set_status_write(p.uuid, p.project_id, model.UPDATE_FAILED, p.status_reason, current_sequence()),
        store.mark_update_write(p.uuid, done=p.generation),
    ]


def plan_ca_created(env: Envelope, p: ClusterCACreated) -> list[Write]:
    return [store.record_ca_write(p.uuid, p.project_id, p.ca_cert_pem)]


def plan_ca_trust_narrowed(env: Envelope, p: ClusterCATrustNarrowed) -> list[Write]:
    """Every node runs the new CA: the masters are rolled once more, trusting it alone."""
    return [
        store.bump_seq_write(p.uuid, p.project_id, current_sequence()),
        store.set_ca_previous_write(p.uuid, None),
        store.bump_roll_write(p.uuid, None, masters_only=True),
    ]


def plan_delete_requested(env: Envelope, p: ClusterDeleteRequested) -> list[Write]:
    return [store.record_delete_requested_write(p.uuid, p.project_id)]


def plan_create_started(env: Envelope, p: ClusterCreateStarted) -> list[Write]:
    return [store.set_status_write(p.uuid, p.project_id, model.CREATE_IN_PROGRESS, None, current_sequence(),
                                   started_at=env.occurred_at)]


def plan_create_completed(env: Envelope, p: ClusterCreateCompleted) -> list[Write]:
    return [store.set_status_write(p.uuid, p.project_id, model.CREATE_COMPLETE, None, current_sequence())]


def plan_create_failed(env: Envelope, p: ClusterCreateFailed) -> list[Write]:
    return [store.set_status_write(p.uuid, p.project_id, model.CREATE_FAILED, p.status_reason, current_sequence())]


def plan_delete_started(env: Envelope, p: ClusterDeleteStarted) -> list[Write]:
    return [
        store.set_status_write(p.uuid, p.project_id, model.DELETE_IN_PROGRESS, None, current_sequence(),
                               delete_started=True),
        store.set_operation_started_write(p.uuid, "delete_started_at", env.occurred_at),
    ]


def plan_delete_completed(env: Envelope, p: ClusterDeleteCompleted) -> list[Write]:
    """Deleted; the trust it acted with is to be deleted (the trust reaper keeps one another cluster still uses)."""
    return [
        store.set_status_write(p.uuid, p.project_id, model.DELETE_COMPLETE, None, current_sequence()),
        store.delete_cluster_trust_write(p.uuid, p.project_id),
    ]


def plan_delete_failed(env: Envelope, p: ClusterDeleteFailed) -> list[Write]:
    return [store.set_status_write(p.uuid, p.project_id, model.DELETE_FAILED, p.status_reason, current_sequence())]


def plan_trust_deleted(env: Envelope, p: ClusterTrustDeleted) -> list[Write]:
    return [store.bump_seq_write(p.uuid, p.project_id, current_sequence()),
            store.remove_trust_to_delete_write(p.trust_id)]


def plan_node_created(env: Envelope, p: NodeCreated) -> list[Write]:
    return [
        store.bump_seq_write(p.cluster_id, p.project_id, current_sequence()),
        store.upsert_node_write(
            p.cluster_id, p.server_id, name=p.node_name, role=p.role, status=model.NODE_CREATED,
            flavor_id=p.flavor_id, vcpus=p.vcpus, ram_mb=p.ram_mb, disk_gb=p.disk_gb,
        ),
    ]


def plan_node_active(env: Envelope, p: NodeBecameActive) -> list[Write]:
    return [
        store.bump_seq_write(p.cluster_id, p.project_id, current_sequence()),
        store.upsert_node_write(p.cluster_id, p.server_id, name=p.node_name, role=p.role, status=model.NODE_ACTIVE,
                                addresses=p.addresses),
    ]


def plan_node_failed(env: Envelope, p: NodeFailed) -> list[Write]:
    return [
        store.bump_seq_write(p.cluster_id, p.project_id, current_sequence()),
        store.upsert_node_write(p.cluster_id, p.server_id, name=p.node_name, role=None, status=model.NODE_FAILED,
                                reason=p.reason),
    ]


def plan_node_deleted(env: Envelope, p: NodeDeleted) -> list[Write]:
    return [
        store.bump_seq_write(p.cluster_id, p.project_id, current_sequence()),
        store.upsert_node_write(p.cluster_id, p.server_id, name=p.node_name, role=p.role,
                                status=model.NODE_DELETED),
        store.set_releasing_write(p.cluster_id, [p.server_id], True),
    ]


def plan_node_released(env: Envelope, p: NodeReleased) -> list[Write]:
    return [
        store.bump_seq_write(p.cluster_id, p.project_id, current_sequence()),
        store.set_releasing_write(p.cluster_id, list(p.server_ids), False),
    ]


def plan_health_changed(env: Envelope, p: ClusterHealthChanged) -> list[Write]:
    return [store.set_health_write(p.uuid, p.project_id, p.health_status, dict(p.health_status_reason),
                                   current_sequence())]


def plan_node_lost(env: Envelope, p: NodeLost) -> list[Write]:
    """The cloud lost the node (ERROR, or gone): failed, until auto-healing deletes and replaces it."""
    return [
        store.bump_seq_write(p.cluster_id, p.project_id, current_sequence()),
        store.upsert_node_write(p.cluster_id, p.server_id, name=p.node_name, role=None, status=model.NODE_FAILED,
                                reason=p.reason),
    ]


def plan_node_repaired(env: Envelope, p: NodeRepaired) -> list[Write]:
    return [store.bump_seq_write(p.cluster_id, p.project_id, current_sequence())]


def plan_billed_resource(env: Envelope, p: VolumeCreated) -> list[Write]:
    """A volume, floating IP or load balancer reported to accounting (``billing.py``): only the subject's sequence."""
    return [store.bump_seq_write(p.cluster_id, p.project_id, current_sequence())]


PLANS: dict[type, Callable[[Envelope, Any], list[Write]]] = {
    ClusterCreateRequested: plan_create_requested,
    ClusterCACreated: plan_ca_created,
    ClusterCATrustNarrowed: plan_ca_trust_narrowed,
    ClusterDeleteRequested: plan_delete_requested,
    ClusterCreateStarted: plan_create_started,
    ClusterCreateCompleted: plan_create_completed,
    ClusterCreateFailed: plan_create_failed,
    ClusterDeleteStarted: plan_delete_started,
    ClusterDeleteCompleted: plan_delete_completed,
    ClusterDeleteFailed: plan_delete_failed,
    ClusterTrustDeleted: plan_trust_deleted,
    NodeCreated: plan_node_created,
    NodeBecameActive: plan_node_active,
    NodeFailed: plan_node_failed,
    NodeDeleted: plan_node_deleted,
    NodeReleased: plan_node_released,
    NodeLost: plan_node_lost,
    NodeRepaired: plan_node_repaired,
    ClusterHealthChanged: plan_health_changed,
    **dict.fromkeys((VolumeCreated, VolumeDeleted, FloatingIpAllocated, FloatingIpReleased, LoadBalancerCreated,
                     LoadBalancerDeleted), plan_billed_resource),
    NodeGroupCreateRequested: plan_nodegroup_create_requested,
    NodeGroupCreateAdmitted: plan_nodegroup_create_admitted,
    NodeGroupDeleteRequested: plan_nodegroup_delete_requested,
    ClusterUpdateStarted: plan_update_started,
    ClusterUpdateCompleted: plan_update_completed,
    ClusterUpdateFailed: plan_update_failed,
}
"""The events applied by writes decided from the event alone."""


HANDLERS: dict[type, Callable[[Envelope, Any, asyncpg.Connection], Awaitable[None]]] = {
    ClusterCAReplaced: on_ca_replaced,
    ClusterTrustRotated: on_trust_rotated,
    ClusterWithdrawn: on_withdrawn,
    ClusterUpdateRequested: on_update_requested,
    ClusterUpdateAdmitted: on_update_admitted,
    ClusterUpgradeRequested: on_upgrade_requested,
}
"""The events whose effect depends on what the store holds: applied one at a time, in their place in a batch."""


def plan(env: Envelope) -> list[Write] | None:
    """The writes applying ``env``; None when it is one of ``HANDLERS``'. Events of other types change nothing."""
    planner = PLANS.get(type(env.payload))
    if planner is not None:
        return planner(env, env.payload)
    if type(env.payload) in HANDLERS:
        if isinstance(env.payload, ClusterUpdateRequested) and env.payload.decided:
            return []  # applied when the scheduler admits it (ClusterUpdateAdmitted)
        return None
    return []


async def apply_reading(env: Envelope, tx: asyncpg.Connection) -> Sequence[Outgoing]:
    """Apply one of the events ``plan`` declines."""
    await HANDLERS[type(env.payload)](env, env.payload, tx)
    return []


_BUMP_SEQ = store.bump_seq_write("", None, 0).sql
_SETS_LAST_SEQ = {_BUMP_SEQ, store.set_status_write("", None, "", None, 0).sql,
                  store.set_health_write("", None, "", {}, 0).sql}
"""The statements that move a cluster's ``last_seq`` (to the greater of it and the event's sequence)."""
_UPSERTS_CLUSTER = {*_SETS_LAST_SEQ, store.RECORD_SPEC_SQL, store.record_ca_write("", "", "").sql,
                    store.record_delete_requested_write("", "").sql}
"""The statements that insert a cluster's row unless it exists (their first argument is the cluster's uuid)."""


def compact(writes: list[Write]) -> list[Write]:
    """A batch's planned writes without the ``bump_seq`` writes (a node's, a volume's... event) whose two effects a
    write around it has already: the cluster's row exists (an earlier write inserted it unless it was there) and
    a later write moves ``last_seq`` to its own, greater, sequence (a node's next event, the cluster's status).
    No statement reads ``last_seq``, so the store is the same; a cluster's row is written once per event less
    (a new row version each, with every index of ``clusters``)."""
    later: list[bool] = [False] * len(writes)
    moved: set[str] = set()
    for i in range(len(writes) - 1, -1, -1):
        w = writes[i]
        if w.sql in _SETS_LAST_SEQ:
            later[i] = w.args[0] in moved
            moved.add(w.args[0])
    kept: list[Write] = []
    exists: set[str] = set()
    for w, superseded in zip(writes, later, strict=True):
        if w.sql == _BUMP_SEQ and superseded and w.args[0] in exists:
            continue
        if w.sql in _UPSERTS_CLUSTER:
            exists.add(w.args[0])
        kept.append(w)
    return kept


project = PlannedHandler(plan, apply_reading, compact)
"""The projection handler: planned events as writes (grouped in a batch, ``compact``), the others one by one."""
