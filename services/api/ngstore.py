"""SQL of the API's nodegroup read model (tables ``nodegroups`` and ``nodes.nodegroup`` of schema ``api``).

Writes come only from ``services.api.ngprojection``; reads from the nodegroup and cluster action resources.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from proto.events import NodeGroup
from services.runtime.projection import Write

NAMESPACE = uuid.UUID("5b1f0c1e-6f1d-4b8e-a7c4-2f6c0d9e8a31")
DEFAULT_MASTER, DEFAULT_WORKER = "default-master", "default-worker"

NODEGROUP_SORT_KEYS: dict[str, str] = {
    "id": "id",
    "uuid": "uuid",
    "name": "name",
    "role": "role",
    "node_count": "node_count",
    "status": "status",
    "created_at": "created_at",
    "updated_at": "COALESCE(updated_at, created_at)",
}


def default_uuid(cluster_uuid: str, name: str) -> str:
    """Deterministic uuid of a default nodegroup (the same after a replay)."""
    return str(uuid.uuid5(NAMESPACE, f"{cluster_uuid}:{name}"))


def nodegroup_of(row: asyncpg.Record) -> NodeGroup:
    return msgspec.json.decode(row["body"], type=NodeGroup)


_INSERT = (
    "INSERT INTO nodegroups (uuid, cluster_uuid, project_id, name, role, is_default, node_count,"
    " min_node_count, max_node_count, status, body, created_at)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb, $12) ON CONFLICT DO NOTHING"
)


def _row(ng: NodeGroup, status: str, at: datetime) -> tuple[object, ...]:
    return (ng.uuid, ng.cluster_id, ng.project_id, ng.name, ng.role, ng.is_default, ng.node_count,
            ng.min_node_count, ng.max_node_count, status, msgspec.json.encode(ng).decode(), ng.created_at or at)


async def insert(conn: asyncpg.Connection, ng: NodeGroup, status: str, at: datetime) -> None:
    await conn.execute(_INSERT, *_row(ng, status, at))


def insert_write(ng: NodeGroup, status: str, at: datetime) -> Write:
    return Write(_INSERT, _row(ng, status, at), (("cluster", ng.cluster_id), "nodegroups_id_seq"))


def move_all_write(cluster_uuid: str, old: str, new: str, at: datetime, reason: str | None = None) -> Write:
    """``move_all`` of one status."""
    return Write(
        "UPDATE nodegroups SET status = $3, status_reason = $4, updated_at = $5 WHERE cluster_uuid = $1 AND status = $2",
        (cluster_uuid, old, new, reason, at), (("cluster", cluster_uuid),),
    )


def delete_cluster_groups_write(cluster_uuid: str) -> Write:
    return Write("DELETE FROM nodegroups WHERE cluster_uuid = $1", (cluster_uuid,), (("cluster", cluster_uuid),))


async def insert_many(conn: asyncpg.Connection, groups: list[tuple[NodeGroup, datetime]], status: str) -> None:
    """Several nodegroups (each with the time its event occurred) in one round trip (asyncpg pipelines
    executemany)."""
    await conn.executemany(_INSERT, [_row(ng, status, at) for ng, at in groups])


async def find(conn: asyncpg.Connection | asyncpg.Pool, cluster_uuid: str, ident: str | None) -> asyncpg.Record | None:
    """The cluster's nodegroup with uuid ``ident`` or, failing that, name ``ident`` (None: default-worker)."""
    ident = ident or DEFAULT_WORKER
    row = await conn.fetchrow(
        "SELECT * FROM nodegroups WHERE cluster_uuid = $1 AND uuid = $2", cluster_uuid, ident
    )
    if row is None:
        row = await conn.fetchrow(
            "SELECT * FROM nodegroups WHERE cluster_uuid = $1 AND name = $2", cluster_uuid, ident
        )
    return row


async def list_for(
    pool: asyncpg.Pool, cluster_uuid: str, *, role: str | None, limit: int, sort_key: str, sort_dir: str,
    marker: str | None,
) -> list[asyncpg.Record]:
    expr = NODEGROUP_SORT_KEYS[sort_key]
    op, direction = (">", "ASC") if sort_dir == "asc" else ("<", "DESC")
    where, args = "cluster_uuid = $1", list[Any]([cluster_uuid])
    if role is not None:
        args.append(role)
        where += f" AND role = ${len(args)}"
    if marker is not None:
        m = await pool.fetchrow(
            f"SELECT {expr} AS k, id FROM nodegroups WHERE uuid = $1 AND cluster_uuid = $2", marker, cluster_uuid
        )
        if m is None:
            raise LookupError(marker)
        args += [m["k"], m["id"]]
        where += f" AND ({expr}, id) {op} (${len(args) - 1}, ${len(args)})"
    args.append(limit)
    sql = f"SELECT * FROM nodegroups WHERE {where} ORDER BY {expr} {direction}, id {direction} LIMIT ${len(args)}"
    return list(await pool.fetch(sql, *args))


async def set_status(
    conn: asyncpg.Connection, ng_uuid: str, status: str, at: datetime, reason: str | None = None
) -> None:
    await conn.execute(
        "UPDATE nodegroups SET status = $2, status_reason = $3, updated_at = $4 WHERE uuid = $1",
        ng_uuid, status, reason, at,
    )


async def move_all(
    conn: asyncpg.Connection, cluster_uuid: str, moves: dict[str, str], at: datetime, reason: str | None = None
) -> None:
    """Every group of the cluster whose status is a key of ``moves`` takes the mapped status."""
    for old, new in moves.items():
        await conn.execute(
            "UPDATE nodegroups SET status = $3, status_reason = $4, updated_at = $5"
            " WHERE cluster_uuid = $1 AND status = $2",
            cluster_uuid, old, new, reason, at,
        )


async def drop_deleting(conn: asyncpg.Connection, cluster_uuid: str) -> None:
    await conn.execute(
        "DELETE FROM nodegroups WHERE cluster_uuid = $1 AND status = 'DELETE_IN_PROGRESS'", cluster_uuid
    )


async def delete_cluster_groups(conn: asyncpg.Connection, cluster_uuid: str) -> None:
    await conn.execute("DELETE FROM nodegroups WHERE cluster_uuid = $1", cluster_uuid)


async def set_count(conn: asyncpg.Connection, ng_uuid: str, node_count: int) -> None:
    await conn.execute("UPDATE nodegroups SET node_count = $2 WHERE uuid = $1", ng_uuid, node_count)


async def set_count_by_name(conn: asyncpg.Connection, cluster_uuid: str, name: str, node_count: int) -> None:
    """The count an update reached. A stable group whose count it changes was resized by a request the read model
    did not apply (superseded: applied after its completion, services/api/parking.py): it is in progress, to be
    settled with the others by the completion, as if the request had come first."""
    await conn.execute(
        "UPDATE nodegroups SET node_count = $3, status = CASE WHEN node_count <> $3 AND status = ANY($4::text[])"
        " THEN 'UPDATE_IN_PROGRESS' ELSE status END WHERE cluster_uuid = $1 AND name = $2",
        cluster_uuid, name, node_count, ["CREATE_COMPLETE", "UPDATE_COMPLETE"],
    )


async def update_fields(conn: asyncpg.Connection, ng_uuid: str, at: datetime, **fields: Any) -> None:
    """Set mutable fields both in the columns (min/max) and in the JSON body."""
    row = await conn.fetchrow("SELECT body FROM nodegroups WHERE uuid = $1 FOR UPDATE", ng_uuid)
    if row is None:
        return
    body = json.loads(row["body"])
    body.update(fields)
    await conn.execute(
        "UPDATE nodegroups SET body = $2::jsonb, min_node_count = $3, max_node_count = $4, updated_at = $5"
        " WHERE uuid = $1",
        ng_uuid, json.dumps(body), body.get("min_node_count", 0), body.get("max_node_count"), at,
    )


async def set_image(conn: asyncpg.Connection, cluster_uuid: str, ng_uuid: str | None, image_id: str) -> None:
    await conn.execute(
        "UPDATE nodegroups SET body = jsonb_set(body, '{image_id}', to_jsonb($3::text))"
        " WHERE cluster_uuid = $1 AND ($2::text IS NULL OR uuid = $2)",
        cluster_uuid, ng_uuid, image_id,
    )


async def worker_total(conn: asyncpg.Connection, cluster_uuid: str) -> int | None:
    """Sum of node_count over the cluster's non-master groups (None: the cluster has no groups recorded)."""
    row = await conn.fetchrow(
        "SELECT count(*) AS n, COALESCE(sum(node_count) FILTER (WHERE role <> 'master'"
        " AND status <> 'DELETE_IN_PROGRESS'), 0) AS total FROM nodegroups WHERE cluster_uuid = $1",
        cluster_uuid,
    )
    assert row is not None
    return int(row["total"]) if row["n"] else None


async def set_cluster_template(conn: asyncpg.Connection, cluster_uuid: str, template_uuid: str) -> None:
    await conn.execute("UPDATE clusters SET cluster_template_id = $2 WHERE uuid = $1", cluster_uuid, template_uuid)


def set_node_group_write(cluster_uuid: str, server_id: str, nodegroup: str) -> Write:
    """(A write the API's projection plans: services/api/projection.py.)"""
    return Write("UPDATE nodes SET nodegroup = $3 WHERE cluster_uuid = $1 AND server_id = $2",
                 (cluster_uuid, server_id, nodegroup), (("cluster", cluster_uuid),))


async def set_node_group(conn: asyncpg.Connection, cluster_uuid: str, server_id: str, nodegroup: str) -> None:
    w = set_node_group_write(cluster_uuid, server_id, nodegroup)
    await conn.execute(w.sql, *w.args)


async def addresses(pool: asyncpg.Pool, cluster_uuid: str, name: str) -> list[str]:
    """First address of each ACTIVE node of the group (nodes without a group count for their role's default)."""
    rows = await pool.fetch(
        "SELECT addresses FROM nodes WHERE cluster_uuid = $1 AND status = 'ACTIVE'"
        " AND COALESCE(nodegroup, CASE WHEN role = 'master' THEN $3 ELSE $4 END) = $2 ORDER BY node_name",
        cluster_uuid, name, DEFAULT_MASTER, DEFAULT_WORKER,
    )
    out: list[str] = []
    for r in rows:
        ips = [a for net in json.loads(r["addresses"]).values() for a in net]
        if ips:
            out.append(ips[0])
    return out
