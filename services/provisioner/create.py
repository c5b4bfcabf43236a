"""The create path (CAPO's reconcileNormal): ClusterCreateStarted, the cluster's resources, every nodegroup from
zero, the load balancer's members and the floating IPs, then ClusterCreateCompleted with the addresses users reach,
or ClusterCreateFailed with a reason they can act on."""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from proto.events import ClusterCreateCompleted, ClusterCreateFailed, ClusterCreateStarted
from services.provisioner import nodes, store, update
from services.provisioner.state import Outcome, TaskState

if TYPE_CHECKING:
    from services.provisioner.loop import Reconciler

log = structlog.get_logger(__name__)

WAITING = "the cluster's servers to become ACTIVE"
"""What a deadline's reason names when the task (restarted since) has not seen what it waits for yet."""


async def reconcile(r: Reconciler, row: store.ClusterRow, st: TaskState) -> Outcome:
    assert row.spec is not None and row.ca_cert_pem is not None
    if row.status is None:
        await r.emit(row, ClusterCreateStarted(uuid=row.uuid, project_id=row.spec.project_id), "ClusterCreateStarted")
        return Outcome.AGAIN
    timeout = row.resolved.create_timeout
    if r.past_deadline(row.create_started_at, timeout):  # ClusterCreateStarted's time: a restart keeps it
        waiting = update.waited_for(row, st, WAITING)
        await update.never_active(r, row, timeout)
        return await failed(r, row, f"Timed out after {timeout} minutes (create_timeout) waiting for {waiting}")
    return await r.attempt(row, st, steps, failed)


async def steps(r: Reconciler, row: store.ClusterRow, st: TaskState) -> Outcome:
    result = await nodes.bring_up(r, row, st)
    if result.failure is not None:
        return await failed(r, row, result.failure)
    if not result.complete or result.exposure is None:
        st.waiting_for = st.waiting_for or "the load balancer's members and the floating IPs"
        return Outcome.POLL
    exposed, built = result.exposure, row.resolved
    await r.emit(row, ClusterCreateCompleted(
        uuid=row.uuid, project_id=row.project_id or "", api_address=exposed.api_address,
        master_addresses=exposed.master_addresses, node_addresses=exposed.node_addresses,
        coe_version=built.labels.get("kube_tag"),
    ), "ClusterCreateCompleted")
    log.info("cluster_create_complete", nodes=len(result.servers), api_address=exposed.api_address)
    return Outcome.IDLE


async def failed(r: Reconciler, row: store.ClusterRow, reason: str) -> Outcome:
    log.warning("cluster_create_failed", reason=reason)
    await r.emit(row, ClusterCreateFailed(uuid=row.uuid, project_id=row.project_id or "", status_reason=reason),
                 "ClusterCreateFailed")
    return Outcome.IDLE
