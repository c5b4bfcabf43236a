"""The accounting service's SQL (schema ``accounting``)."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from services.accounting.usage import NodeInterval


async def node_created(
    tx: asyncpg.Connection,
    *,
    server_id: str,
    cluster_id: str,
    project_id: str,
    node_name: str,
    role: str,
    flavor_id: str,
    vcpus: int,
    ram_mb: int,
    at: datetime,
) -> None:
    await tx.execute(
        "INSERT INTO nodes (server_id, cluster_id, project_id, node_name, role, flavor_id, vcpus, ram_mb,"
        " created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        " ON CONFLICT (server_id) DO UPDATE SET node_name = EXCLUDED.node_name, role = EXCLUDED.role,"
        " flavor_id = EXCLUDED.flavor_id, vcpus = EXCLUDED.vcpus, ram_mb = EXCLUDED.ram_mb,"
        " created_at = COALESCE(nodes.created_at, EXCLUDED.created_at)",
        server_id,
        cluster_id,
        project_id,
        node_name,
        role,
        flavor_id,
        vcpus,
        ram_mb,
        at,
    )


async def node_active(
    tx: asyncpg.Connection, *, server_id: str, cluster_id: str, project_id: str, at: datetime
) -> None:
    """The interval opens at the first NodeBecameActive (a repeated one changes nothing)."""
    await tx.execute(
        "INSERT INTO nodes (server_id, cluster_id, project_id, active_at) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (server_id) DO UPDATE SET active_at = COALESCE(nodes.active_at, EXCLUDED.active_at)",
        server_id,
        cluster_id,
        project_id,
        at,
    )


async def node_ended(
    tx: asyncpg.Connection, *, server_id: str, cluster_id: str, project_id: str, at: datetime, reason: str
) -> None:
    """The interval closes at the first end (deleted or failed)."""
    await tx.execute(
        "INSERT INTO nodes (server_id, cluster_id, project_id, ended_at, end_reason) VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (server_id) DO UPDATE SET ended_at = COALESCE(nodes.ended_at, EXCLUDED.ended_at),"
        " end_reason = COALESCE(nodes.end_reason, EXCLUDED.end_reason)",
        server_id,
        cluster_id,
        project_id,
        at,
        reason,
    )


async def cluster_deleted(tx: asyncpg.Connection, cluster_id: str, at: datetime) -> int:
    """Close every interval of the cluster still open; returns how many."""
    status = await tx.execute(
        "UPDATE nodes SET ended_at = $2, end_reason = 'cluster_deleted' WHERE cluster_id = $1 AND ended_at IS NULL",
        cluster_id,
        at,
    )
    return int(status.split()[-1])


async def intervals(
    conn: asyncpg.Connection | asyncpg.Pool,
    project_id: str,
    *,
    since: datetime | None,
    until: datetime,
    cluster_id: str | None = None,
) -> list[NodeInterval]:
    """Active intervals of the project that may overlap [since, until)."""
    rows = await conn.fetch(
        "SELECT cluster_id, server_id, vcpus, ram_mb, active_at, ended_at FROM nodes"
        " WHERE project_id = $1 AND active_at IS NOT NULL AND active_at < $3"
        " AND ($2::timestamptz IS NULL OR ended_at IS NULL OR ended_at > $2)"
        " AND ($4::text IS NULL OR cluster_id = $4)"
        " ORDER BY cluster_id, server_id",
        project_id,
        since,
        until,
        cluster_id,
    )
    return [
        NodeInterval(
            cluster_id=r["cluster_id"],
            server_id=r["server_id"],
            vcpus=r["vcpus"],
            ram_mb=r["ram_mb"],
            start=r["active_at"],
            end=r["ended_at"],
        )
        for r in rows
    ]
