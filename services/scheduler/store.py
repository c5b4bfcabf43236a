"""The scheduler's SQL (schema ``scheduler``; connections have it on their search_path)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg


async def lock_projects(tx: asyncpg.Connection, project_ids: Sequence[str]) -> None:
    """Serialise admissions of these projects across scheduler replicas (held until the transaction ends); one
    statement, locking in sorted order so that two replicas locking overlapping sets cannot deadlock."""
    await tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('cove-scheduler:' || p)) FROM unnest($1::text[]) AS p",
        sorted(set(project_ids)),
    )


@dataclass(frozen=True)
class RunFacts:
    """What admitting requests and confirming decisions needs (``run_facts``)."""

    decisions: dict[str, str | None]
    """Every asked-for cluster the store knows, with its decision (None: known from another event only)."""
    projects: dict[str, tuple[int, int | None]]
    """Per asked-for project: the clusters counted against its quota (admitted and not yet deleted: one row of the
    counter a trigger keeps in step with ``clusters``, migration 0002, not a count over the project's clusters), and
    its own limit if an admin set one."""


async def run_facts(
    tx: asyncpg.Connection, cluster_ids: Sequence[str], project_ids: Sequence[str], resource: str = "Cluster"
) -> RunFacts:
    """The facts for these clusters and projects, in one round trip. Run it AFTER ``lock_projects`` (in its own
    statement: a statement's snapshot is taken when it starts, so reads in the locking statement could predate the
    lock)."""
    rows = await tx.fetch(
        "SELECT true AS is_cluster, cluster_id AS key, decision, NULL::integer AS in_use, NULL::integer AS limit_"
        " FROM clusters WHERE cluster_id = ANY($1::text[])"
        " UNION ALL"
        " SELECT false, p, NULL, (SELECT clusters FROM project_usage WHERE project_id = p),"
        " (SELECT hard_limit FROM quotas WHERE project_id = p AND resource = $3) FROM unnest($2::text[]) AS p",
        list(cluster_ids),
        list(set(project_ids)),
        resource,
    )
    decisions: dict[str, str | None] = {}
    projects: dict[str, tuple[int, int | None]] = {}
    for row in rows:
        if row["is_cluster"]:
            decisions[row["key"]] = row["decision"]
        else:
            limit = row["limit_"]
            projects[row["key"]] = (int(row["in_use"] or 0), None if limit is None else int(limit))
    return RunFacts(decisions, projects)


@dataclass(frozen=True)
class Request:
    """A new cluster and the decision taken on it now (the decision event later confirms it)."""

    cluster_id: str
    project_id: str
    name: str | None
    master_count: int
    node_count: int
    requested_at: datetime
    decision: str
    reason: str | None


async def record_requests(tx: asyncpg.Connection, requests: Sequence[Request]) -> None:
    """New clusters with the decisions taken on them, in one round trip (asyncpg pipelines executemany)."""
    await tx.executemany(
        "INSERT INTO clusters (cluster_id, project_id, name, master_count, node_count, requested_at, decision,"
        " reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        [(r.cluster_id, r.project_id, r.name, r.master_count, r.node_count, r.requested_at, r.decision, r.reason)
         for r in requests],
    )


@dataclass(frozen=True)
class Decided:
    """A published decision (``ClusterAdmitted`` / ``ClusterRejected``)."""

    cluster_id: str
    project_id: str
    decision: str
    reason: str | None
    decided_at: datetime
    master_count: int | None = None
    node_count: int | None = None


async def record_decisions(tx: asyncpg.Connection, decided: Sequence[Decided]) -> None:
    """The published decision is the fact: it overrides what a replay may have re-decided differently. Several in
    one round trip."""
    await tx.executemany(
        "INSERT INTO clusters (cluster_id, project_id, decision, reason, decided_at, master_count, node_count)"
        " VALUES ($1, $2, $3, $4, $5, COALESCE($6, 1), COALESCE($7, 1))"
        " ON CONFLICT (cluster_id) DO UPDATE SET decision = EXCLUDED.decision, reason = EXCLUDED.reason,"
        " decided_at = EXCLUDED.decided_at",
        [(d.cluster_id, d.project_id, d.decision, d.reason, d.decided_at, d.master_count, d.node_count)
         for d in decided],
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
