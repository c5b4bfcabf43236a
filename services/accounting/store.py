"""The accounting service's SQL (schema ``accounting``): resource and cluster intervals, built only from events."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from services.accounting.usage import Interval
from services.runtime.projection import Write

# Each write of the projection is built as a ``Write`` (statement, arguments, the rows it touches) by a ``*_write``
# function: the handler plans every event as these writes, which a batch runs grouped by statement
# (services.runtime.projection.PlannedHandler). A resource's rows are keyed by the cluster its events name (a
# cluster's delete closes every interval of its resources) and by the resource itself.


CLUSTER_DELETED = "cluster_deleted"
"""The end reason of an interval the cluster's delete closed (its resource's own end was not reported)."""


def cluster_key(cluster_id: str) -> tuple[str, str]:
    return ("cluster", cluster_id)


def resource_started_write(
    *,
    kind: str,
    resource_id: str,
    cluster_id: str,
    project_id: str,
    at: datetime,
    name: str | None = None,
    vcpus: int = 0,
    ram_mb: int = 0,
    size_gb: int = 0,
) -> Write:
    """The interval opens at the first report of the resource (a repeated one changes nothing)."""
    return Write(
        "INSERT INTO resources (kind, resource_id, cluster_id, project_id, name, vcpus, ram_mb, size_gb, started_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        " ON CONFLICT (kind, resource_id) DO UPDATE SET"
        " started_at = COALESCE(resources.started_at, EXCLUDED.started_at),"
        " name = COALESCE(resources.name, EXCLUDED.name),"
        " vcpus = CASE WHEN resources.started_at IS NULL THEN EXCLUDED.vcpus ELSE resources.vcpus END,"
        " ram_mb = CASE WHEN resources.started_at IS NULL THEN EXCLUDED.ram_mb ELSE resources.ram_mb END,"
        " size_gb = CASE WHEN resources.started_at IS NULL THEN EXCLUDED.size_gb ELSE resources.size_gb END",
        (kind, resource_id, cluster_id, project_id, name, vcpus, ram_mb, size_gb, at),
        (cluster_key(cluster_id), ("resource", kind, resource_id)),
    )


_OPEN = f"(resources.ended_at IS NULL OR resources.end_reason = '{CLUSTER_DELETED}')"
"""An interval whose end a resource's own report sets."""


def resource_ended_write(
    *, kind: str, resource_id: str, cluster_id: str, project_id: str, at: datetime, reason: str,
) -> Write:
    """The interval closes at the first end the provisioner reported. An end the cluster's delete set (its fallback
    for a resource whose end was lost) gives way to the resource's own, applied after it: the accounting copy that
    held the resource's report was killed, and the report came back after the ack wait (make chaos: a server billed
    to the cluster's delete, 12 s late)."""
    return Write(
        "INSERT INTO resources (kind, resource_id, cluster_id, project_id, ended_at, end_reason)"
        " VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT (kind, resource_id) DO UPDATE SET"
        f" ended_at = CASE WHEN {_OPEN} THEN EXCLUDED.ended_at ELSE resources.ended_at END,"
        f" end_reason = CASE WHEN {_OPEN} THEN EXCLUDED.end_reason ELSE resources.end_reason END",
        (kind, resource_id, cluster_id, project_id, at, reason),
        (cluster_key(cluster_id), ("resource", kind, resource_id)),
    )


def cluster_started_write(cluster_id: str, project_id: str, at: datetime) -> Write:
    return Write(
        "INSERT INTO clusters (cluster_id, project_id, started_at) VALUES ($1, $2, $3)"
        " ON CONFLICT (cluster_id) DO UPDATE SET started_at = COALESCE(clusters.started_at, EXCLUDED.started_at)",
        (cluster_id, project_id, at), (cluster_key(cluster_id),),
    )


def cluster_deleted_writes(cluster_id: str, project_id: str, at: datetime) -> list[Write]:
    """The cluster's interval closes, and so does every interval of its resources still open (the provisioner
    reported their ends already unless it lost track of one, e.g. across a restart)."""
    return [
        Write(
            "INSERT INTO clusters (cluster_id, project_id, ended_at) VALUES ($1, $2, $3)"
            " ON CONFLICT (cluster_id) DO UPDATE SET ended_at = COALESCE(clusters.ended_at, EXCLUDED.ended_at)",
            (cluster_id, project_id, at), (cluster_key(cluster_id),),
        ),
        Write(
            f"UPDATE resources SET ended_at = $2, end_reason = '{CLUSTER_DELETED}'"
            " WHERE cluster_id = $1 AND ended_at IS NULL AND started_at IS NOT NULL AND started_at <= $2",
            (cluster_id, at), (cluster_key(cluster_id),),
        ),
    ]


async def intervals(
    conn: asyncpg.Connection | asyncpg.Pool,
    project_id: str | None,
    *,
    since: datetime | None,
    until: datetime,
    cluster_id: str | None = None,
) -> list[Interval]:
    """Resource and cluster intervals of the project (every project when None) that may overlap [since, until)."""
    rows = await conn.fetch(
        "SELECT kind, resource_id, cluster_id, project_id, name, vcpus, ram_mb, size_gb, started_at, ended_at"
        " FROM resources"
        " WHERE ($1::text IS NULL OR project_id = $1) AND started_at IS NOT NULL AND started_at < $3"
        " AND ($2::timestamptz IS NULL OR ended_at IS NULL OR ended_at > $2)"
        " AND ($4::text IS NULL OR cluster_id = $4)"
        " UNION ALL"
        " SELECT 'cluster', cluster_id, cluster_id, project_id, NULL, 0, 0, 0, started_at, ended_at FROM clusters"
        " WHERE ($1::text IS NULL OR project_id = $1) AND started_at IS NOT NULL AND started_at < $3"
        " AND ($2::timestamptz IS NULL OR ended_at IS NULL OR ended_at > $2)"
        " AND ($4::text IS NULL OR cluster_id = $4)",
        project_id, since, until, cluster_id,
    )
    return [
        Interval(
            kind=r["kind"], resource_id=r["resource_id"], cluster_id=r["cluster_id"], project_id=r["project_id"],
            name=r["name"], vcpus=r["vcpus"], ram_mb=r["ram_mb"], size_gb=r["size_gb"], start=r["started_at"],
            end=r["ended_at"],
        )
        for r in rows
    ]


async def project_totals(conn: asyncpg.Connection | asyncpg.Pool, now: datetime) -> list[asyncpg.Record]:
    """Per project, everything up to ``now``: vCPU-, RAM-MB- and volume-GB-seconds (the /metrics counters)."""
    return await conn.fetch(
        "SELECT project_id,"
        " COALESCE(sum(vcpus * extract(epoch FROM (COALESCE(ended_at, $1) - started_at)))"
        "   FILTER (WHERE kind = 'server'), 0)::float8 AS vcpu_seconds,"
        " COALESCE(sum(ram_mb * extract(epoch FROM (COALESCE(ended_at, $1) - started_at)))"
        "   FILTER (WHERE kind = 'server'), 0)::float8 AS ram_mb_seconds,"
        " COALESCE(sum(size_gb * extract(epoch FROM (COALESCE(ended_at, $1) - started_at)))"
        "   FILTER (WHERE kind = 'volume'), 0)::float8 AS volume_gb_seconds"
        " FROM resources WHERE started_at IS NOT NULL AND started_at < $1 AND COALESCE(ended_at, $1) > started_at"
        " GROUP BY project_id ORDER BY project_id",
        now,
    )
