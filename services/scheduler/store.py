"""The scheduler's SQL (schema ``scheduler``; connections have it on their search_path)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg


async def lock_project(tx: asyncpg.Connection, project_id: str) -> None:
    """Serialise admissions of one project across scheduler replicas (held until the transaction ends)."""
    await tx.execute("SELECT pg_advisory_xact_lock(hashtext('cove-scheduler:' || $1))", project_id)


@dataclass(frozen=True)
class AdmissionFacts:
    known: bool
    """The cluster was seen before (a repeated request)."""
    in_use: int
    """Clusters counted against the project's quota (admitted and not yet deleted): one row of the counter a
    trigger keeps in step with ``clusters`` (migration 0002), not a count over the project's clusters."""
    quota_override: int | None
    """The project's own limit, if an admin set one."""


async def admission_facts(
    tx: asyncpg.Connection, cluster_id: str, project_id: str, resource: str = "Cluster"
) -> AdmissionFacts:
    """What an admission decision needs, in one round trip. Run it AFTER ``lock_project`` (in its own statement:
    a statement's snapshot is taken when it starts, so reads in the locking statement could predate the lock)."""
    row = await tx.fetchrow(
        "SELECT EXISTS (SELECT 1 FROM clusters WHERE cluster_id = $1) AS known,"
        " (SELECT clusters FROM project_usage WHERE project_id = $2) AS in_use,"
        " (SELECT hard_limit FROM quotas WHERE project_id = $2 AND resource = $3) AS quota_override",
        cluster_id,
        project_id,
        resource,
    )
    override = row["quota_override"]
    return AdmissionFacts(bool(row["known"]), int(row["in_use"] or 0), None if override is None else int(override))


async def record_request(
    tx: asyncpg.Connection,
    *,
    cluster_id: str,
    project_id: str,
    name: str | None,
    master_count: int,
    node_count: int,
    requested_at: datetime,
    decision: str,
    reason: str | None,
) -> None:
    """A new cluster and the decision taken on it now (the decision event later confirms it)."""
    await tx.execute(
        "INSERT INTO clusters (cluster_id, project_id, name, master_count, node_count, requested_at, decision,"
        " reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        cluster_id,
        project_id,
        name,
        master_count,
        node_count,
        requested_at,
        decision,
        reason,
    )


async def record_decision(
    tx: asyncpg.Connection,
    *,
    cluster_id: str,
    project_id: str,
    decision: str,
    reason: str | None,
    decided_at: datetime,
    master_count: int | None = None,
    node_count: int | None = None,
) -> None:
    """The published decision is the fact: it overrides what a replay may have re-decided differently."""
    await tx.execute(
        "INSERT INTO clusters (cluster_id, project_id, decision, reason, decided_at, master_count, node_count)"
        " VALUES ($1, $2, $3, $4, $5, COALESCE($6, 1), COALESCE($7, 1))"
        " ON CONFLICT (cluster_id) DO UPDATE SET decision = EXCLUDED.decision, reason = EXCLUDED.reason,"
        " decided_at = EXCLUDED.decided_at",
        cluster_id,
        project_id,
        decision,
        reason,
        decided_at,
        master_count,
        node_count,
    )


async def mark(tx: asyncpg.Connection, cluster_id: str, project_id: str, column: str, at: datetime) -> None:
    """Set one lifecycle flag (create_failed, delete_requested, delete_completed), creating the row if unknown."""
    if column not in ("create_failed", "delete_requested", "delete_completed"):
        raise ValueError(column)
    ended = (
        ", ended_at = COALESCE(clusters.ended_at, EXCLUDED.ended_at)" if column == "delete_completed" else ""
    )
    await tx.execute(
        f"INSERT INTO clusters (cluster_id, project_id, {column}, ended_at) VALUES ($1, $2, true, $3)"
        f" ON CONFLICT (cluster_id) DO UPDATE SET {column} = true{ended}",
        cluster_id,
        project_id,
        at if column == "delete_completed" else None,
    )


async def set_quota(
    tx: asyncpg.Connection, project_id: str, hard_limit: int, at: datetime, resource: str = "Cluster"
) -> None:
    """Create or change a per-project limit (for the quota events of issue 4)."""
    await tx.execute(
        "INSERT INTO quotas (project_id, resource, hard_limit, created_at) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (project_id, resource) DO UPDATE SET hard_limit = EXCLUDED.hard_limit,"
        " updated_at = EXCLUDED.created_at",
        project_id,
        resource,
        hard_limit,
        at,
    )


async def delete_quota(tx: asyncpg.Connection, project_id: str, resource: str = "Cluster") -> None:
    await tx.execute("DELETE FROM quotas WHERE project_id = $1 AND resource = $2", project_id, resource)
