"""The update path: a resize, a nodegroup created or deleted, an upgrade. Each request bumps the cluster's update
generation; ClusterUpdateStarted, then every nodegroup converged (``nodes.py``, the same code path as a create),
the load balancer's members and floating IPs brought up to date, then ClusterUpdateCompleted or Failed."""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from proto.events import (
    ClusterCATrustNarrowed,
    ClusterUpdateCompleted,
    ClusterUpdateFailed,
    ClusterUpdateStarted,
    NodeFailed,
)
from services.provisioner import model, nodeplan, nodes, store
from services.provisioner.state import Outcome, TaskState

if TYPE_CHECKING:
    from services.provisioner.loop import Reconciler

log = structlog.get_logger(__name__)


async def reconcile(r: Reconciler, row: store.ClusterRow, st: TaskState) -> Outcome:
    gen = row.update_generation
    if row.update_started < gen:
        await r.emit(row, ClusterUpdateStarted(
            uuid=row.uuid, project_id=row.project_id or "", node_count=nodeplan.worker_count(row.groups), generation=gen,
        ), f"ClusterUpdateStarted:{gen}")
        return Outcome.AGAIN
    timeout = r.settings.update_timeout
    if r.past_deadline(row.update_started_at, timeout):  # ClusterUpdateStarted's time: a restart keeps it
        waiting = waited_for(row, st, "the nodegroups to converge")
        await never_active(r, row, timeout)
        return await failed(r, row, f"Timed out after {timeout:g} minutes (COVE_PROVISIONER_UPDATE_TIMEOUT) waiting "
                                    f"for {waiting}")
    return await r.attempt(row, st, steps, failed)


async def steps(r: Reconciler, row: store.ClusterRow, st: TaskState) -> Outcome:
    gen = row.update_generation
    result = await nodes.bring_up(r, row, st)
    if result.failure is not None:
        return await failed(r, row, result.failure)
    if not result.complete or result.exposure is None:
        st.waiting_for = st.waiting_for or "the load balancer's members and the floating IPs"
        return Outcome.POLL
    if row.ca_previous_pem is not None:
        # every node runs the rotated CA: roll the masters once more, trusting it alone (ADR 0010)
        await r.emit(row, ClusterCATrustNarrowed(uuid=row.uuid, project_id=row.project_id or "", generation=gen),
                     f"ClusterCATrustNarrowed:{gen}")
        return Outcome.AGAIN
    exposed = result.exposure
    counts = {g.name: g.node_count for g in row.groups if g.present}
    await r.emit(row, ClusterUpdateCompleted(
        uuid=row.uuid, project_id=row.project_id or "", node_count=nodeplan.worker_count(row.groups),
        node_addresses=exposed.node_addresses, generation=gen, nodegroup_counts=counts,
    ), f"ClusterUpdateCompleted:{gen}")
    log.info("cluster_update_complete", generation=gen, node_count=nodeplan.worker_count(row.groups))
    return Outcome.IDLE


def waited_for(row: store.ClusterRow, st: TaskState, otherwise: str) -> str:
    """What a task past its deadline waited for: what its last pass saw, or, in a process restarted since (which
    has seen nothing yet), the nodes created and never ACTIVE by the cluster's own events."""
    if st.waiting_for:
        return st.waiting_for
    booting = sorted(node.name for node in row.nodes.values() if node.status == model.NODE_CREATED)
    return f"servers {', '.join(booting)} to become ACTIVE" if booting else otherwise


async def never_active(r: Reconciler, row: store.ClusterRow, minutes: float) -> None:
    """At a deadline: NodeFailed for every node created and never ACTIVE, so that a retry replaces it (the
    planner replaces a failed node that is not ACTIVE) instead of waiting for it again."""
    await r.emit_many(row, [(NodeFailed(
        cluster_id=row.uuid, project_id=row.project_id or "", server_id=node.server_id, node_name=node.name,
        reason=f"The server did not become ACTIVE within the operation's {minutes:g} minutes",
    ), f"NodeFailed:{node.server_id}") for node in sorted(row.nodes.values(), key=lambda n: n.name)
        if node.status == model.NODE_CREATED])


async def failed(r: Reconciler, row: store.ClusterRow, reason: str) -> Outcome:
    gen = row.update_generation
    log.warning("cluster_update_failed", reason=reason, generation=gen)
    await r.emit(row, ClusterUpdateFailed(
        uuid=row.uuid, project_id=row.project_id or "", status_reason=reason, generation=gen,
    ), f"ClusterUpdateFailed:{gen}")
    return Outcome.IDLE
