"""The delete path (CAPO's reconcileDelete), from any state: a create still running or failed half-way, an update,
a failed delete. ClusterDeleteStarted; the servers deleted and each NodeDeleted once it is gone (servers a crash
left unrecorded included); then every other resource of the cluster in order (``cloud.delete_cluster_resources``:
load balancer, floating IPs, volumes, ports, server group, router, subnet, network, security groups), tolerant of
what is already gone; then ClusterDeleteCompleted, or ClusterDeleteFailed with the cloud's reason."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog

from proto.events import ClusterDeleteCompleted, ClusterDeleteFailed, ClusterDeleteStarted, NodeDeleted
from services.provisioner import billing, model, store
from services.provisioner.cloud import Seen
from services.provisioner.state import Outcome, TaskState

if TYPE_CHECKING:
    from services.provisioner.loop import Reconciler

log = structlog.get_logger(__name__)

WAITING = "the cluster's resources to be deleted"
"""What a deadline's reason names when the task (restarted since) has not seen what it waits for yet."""


async def reconcile(r: Reconciler, row: store.ClusterRow, st: TaskState) -> Outcome:
    if row.status == model.DELETE_COMPLETE:
        return Outcome.IDLE
    if row.status == model.DELETE_FAILED and not row.delete_pending:
        return Outcome.IDLE
    if row.delete_pending or row.status != model.DELETE_IN_PROGRESS:
        await r.emit(row, ClusterDeleteStarted(uuid=row.uuid, project_id=row.project_id or ""),
                     f"ClusterDeleteStarted:{row.delete_generation}")
        return Outcome.AGAIN
    if row.create_started_at is None and not row.nodes:
        # Nothing was ever built (every cloud call follows ClusterCreateStarted, and we caught up).
        return await completed(r, row)
    timeout = r.settings.delete_timeout
    if r.past_deadline(row.delete_started_at, timeout):  # ClusterDeleteStarted's time: a restart keeps it
        return await failed(r, row, f"Timed out after {timeout:g} minutes (COVE_PROVISIONER_DELETE_TIMEOUT) waiting "
                                    f"for {st.waiting_for or WAITING}")
    return await r.attempt(row, st, steps, failed)


async def steps(r: Reconciler, row: store.ClusterRow, st: TaskState) -> Outcome:
    spec = row.spec
    assert spec is not None and row.trust_id is not None
    trust = row.trust_id
    prefix = model.cluster_prefix(spec.name, row.uuid)
    servers = await r.cloud.call(trust, lambda c: c.list_servers(prefix, row.uuid))
    listed_at = billing.now()  # a server this listing no longer shows is billed until here
    for s in servers:
        if s.id not in row.nodes:
            st.unrecorded[s.id] = s
    known = dict(row.nodes)
    for sid, s in st.unrecorded.items():
        known.setdefault(sid, model.KnownNode(sid, s.name, s.role, model.NODE_CREATED))
    plan = model.plan_delete(servers, known, st.delete_requested)
    if servers:
        st.waiting_for = "servers " + ", ".join(sorted(s.name for s in servers)) + " to be deleted"
    await asyncio.gather(*(r.cloud.call(trust, lambda c, sid=server.id: c.delete_server(sid))  # type: ignore[misc]
                           for server in plan.to_delete))  # the cloud thread pool bounds how many at once
    st.delete_requested.update(server.id for server in plan.to_delete)
    ends = await billing.server_ends(r, row, [node.server_id for node in plan.gone], listed_at)
    await r.emit_many(row, [(NodeDeleted(
        cluster_id=row.uuid, project_id=spec.project_id, server_id=node.server_id, node_name=node.name,
        role=node.role, deleted_at=ends[node.server_id],  # type: ignore[arg-type]
    ), f"NodeDeleted:{node.server_id}") for node in plan.gone])
    for node in plan.gone:
        st.unrecorded.pop(node.server_id, None)
    if plan.servers_left:
        return Outcome.POLL
    st.waiting_for = "the load balancer, volumes and network to be deleted"
    seen = Seen(before_delete=billing.noting_deletes(r, row, st))
    await billing.recall(r, row, st)  # what an earlier task saw go (a copy killed since)
    # What the call's listings no longer show went before they looked, so before the call's end, which comes
    # after the deletes of every port, router and network (a cloud slow to answer would bill it seconds late);
    # the volumes and load balancer the call deletes are looked at while it goes on.
    listed_at = billing.now()
    await billing.note_going(r, row, st, listed_at)
    teardown = asyncio.ensure_future(r.cloud.call(trust, lambda c: c.delete_cluster_resources(prefix, row.uuid, seen)))
    try:
        vanished = await billing.watch_going(r, row, st, teardown, seen)
        cleared = await teardown
    finally:
        teardown.cancel()  # the task was cancelled (its lease lost): the call's thread finishes on its own
    # the billed resources still there are noted for a copy resuming the delete if this one is killed (billing.py)
    await billing.noting(r, row, st, seen.present, seen.deleted, listed_at, vanished)
    if not cleared:
        return Outcome.POLL  # a load balancer or volume still goes away
    outcome = await completed(r, row)
    r.cloud.forget(trust)
    return outcome


async def completed(r: Reconciler, row: store.ClusterRow) -> Outcome:
    await r.emit(row, ClusterDeleteCompleted(uuid=row.uuid, project_id=row.project_id or ""),
                 "ClusterDeleteCompleted")
    log.info("cluster_delete_complete")
    return Outcome.IDLE


async def failed(r: Reconciler, row: store.ClusterRow, reason: str) -> Outcome:
    log.warning("cluster_delete_failed", reason=reason)
    await r.emit(row, ClusterDeleteFailed(uuid=row.uuid, project_id=row.project_id or "", status_reason=reason),
                 f"ClusterDeleteFailed:{row.delete_generation}")
    return Outcome.IDLE
