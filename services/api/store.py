"""The API's SQL, and nothing else touches schema ``api``. Writes come only from projection handlers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from proto import clusterspec
from proto.events import ClusterCreateRequested, ClusterTemplate
from services.runtime.projection import Write

PROJECTION = "api"
"""The durable consumer / checkpoint name of the API's projection."""


# --------------------------------------------------------------------------- scope and paging


@dataclass(frozen=True)
class Scope:
    """Who is reading: admin sees every project; others their own project (plus public templates)."""

    project_id: str | None
    is_admin: bool = False


@dataclass(frozen=True)
class Page:
    limit: int
    sort_key: str = "id"
    sort_dir: str = "asc"
    marker: str | None = None


# sort key (API name) -> SQL expression, never NULL so that keyset comparisons work
TEMPLATE_SORT_KEYS: dict[str, str] = {
    "id": "id",
    "uuid": "uuid",
    "name": "COALESCE(name, '')",
    "coe": "COALESCE(body->>'coe', '')",
    "image_id": "COALESCE(body->>'image_id', '')",
    "project_id": "project_id",
    "created_at": "created_at",
    "updated_at": "COALESCE(updated_at, created_at)",
}
CLUSTER_SORT_KEYS: dict[str, str] = {
    "id": "id",
    "uuid": "uuid",
    "name": "name",
    "status": "status",
    "project_id": "project_id",
    "cluster_template_id": "cluster_template_id",
    "node_count": "COALESCE((spec->>'node_count')::int, 0)",
    "master_count": "COALESCE((spec->>'master_count')::int, 0)",
    "created_at": "created_at",
    "updated_at": "COALESCE(updated_at, created_at)",
}


class MarkerNotFound(Exception):
    pass


BIGSERIAL_MAX = 2**63 - 1


def _marker_value(marker: str, column: str) -> Any:
    """The marker as the column's type: a uuid as given; an integer id (quotas, mservices) parsed and bounded."""
    if column != "id":
        return marker
    try:
        value = int(marker)
    except ValueError:
        raise MarkerNotFound(marker) from None
    if not 0 < value <= BIGSERIAL_MAX:  # ids are bigserial: no row has any other
        raise MarkerNotFound(marker)
    return value


async def keyset_page(
    conn: asyncpg.Connection | asyncpg.Pool,
    table: str,
    sort_keys: dict[str, str],
    where: str,
    args: list[Any],
    page: Page,
    *,
    marker_column: str = "uuid",
) -> list[asyncpg.Record]:
    """One page of ``table`` ordered by ``page.sort_key`` then id, after the row ``page.marker`` names (by
    ``marker_column``: Magnum's uuid, or the integer id where Magnum's objects have no uuid)."""
    expr = sort_keys[page.sort_key]
    op, direction = (">", "ASC") if page.sort_dir == "asc" else ("<", "DESC")
    args = list(args)
    if page.marker is not None:
        marker = await conn.fetchrow(f"SELECT {expr} AS k, id FROM {table} WHERE {marker_column} = $1",
                                     _marker_value(page.marker, marker_column))
        if marker is None:
            raise MarkerNotFound(page.marker)
        args += [marker["k"], marker["id"]]
        where += f" AND ({expr}, id) {op} (${len(args) - 1}, ${len(args)})"
    args.append(page.limit)
    sql = f"SELECT * FROM {table} WHERE {where} ORDER BY {expr} {direction}, id {direction} LIMIT ${len(args)}"
    return list(await conn.fetch(sql, *args))


# --------------------------------------------------------------------------- templates


def template_scope(scope: Scope, first_arg: int = 1) -> tuple[str, list[Any]]:
    if scope.is_admin:
        return "true", []
    return f"(project_id = ${first_arg} OR (public AND NOT hidden))", [scope.project_id]


async def upsert_template(conn: asyncpg.Connection, t: ClusterTemplate) -> None:
    await conn.execute(
        "INSERT INTO cluster_templates (uuid, name, project_id, user_id, public, hidden, body, created_at,"
        " updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9)"
        " ON CONFLICT (uuid) DO UPDATE SET name = EXCLUDED.name, public = EXCLUDED.public,"
        " hidden = EXCLUDED.hidden, body = EXCLUDED.body, updated_at = EXCLUDED.updated_at",
        t.uuid,
        t.name,
        t.project_id,
        t.user_id,
        t.public,
        t.hidden,
        msgspec.json.encode(t).decode(),
        t.created_at,
        t.updated_at,
    )


async def delete_template(conn: asyncpg.Connection, uuid: str) -> None:
    await conn.execute("DELETE FROM cluster_templates WHERE uuid = $1", uuid)


def template_of(row: asyncpg.Record) -> ClusterTemplate:
    return msgspec.json.decode(row["body"], type=ClusterTemplate)


async def list_templates(pool: asyncpg.Pool, scope: Scope, page: Page) -> list[ClusterTemplate]:
    where, args = template_scope(scope)
    rows = await keyset_page(pool, "cluster_templates", TEMPLATE_SORT_KEYS, where, args, page)
    return [template_of(r) for r in rows]


async def find_templates(pool: asyncpg.Pool, scope: Scope, ident: str, *, include_hidden: bool = False
                         ) -> list[ClusterTemplate]:
    """Templates visible in ``scope`` whose uuid is ``ident`` or, failing that, whose name is.

    ``include_hidden``: also other projects' public hidden templates (a cluster create must find them to refuse
    them with 403, as Magnum does)."""
    where, args = template_scope(scope, 2)
    if include_hidden and not scope.is_admin:
        where = "(project_id = $2 OR public)"
    rows = await pool.fetch(f"SELECT * FROM cluster_templates WHERE uuid = $1 AND {where}", ident, *args)
    if not rows:
        rows = await pool.fetch(
            f"SELECT * FROM cluster_templates WHERE name = $1 AND {where} ORDER BY id", ident, *args
        )
    return [template_of(r) for r in rows]


async def template_in_use(pool: asyncpg.Pool, uuid: str) -> bool:
    return bool(await pool.fetchval("SELECT EXISTS (SELECT 1 FROM clusters WHERE cluster_template_id = $1)", uuid))


# --------------------------------------------------------------------------- clusters


def cluster_scope(scope: Scope, first_arg: int = 1) -> tuple[str, list[Any]]:
    if scope.is_admin:
        return "true", []
    return f"project_id = ${first_arg}", [scope.project_id]


def shown_spec(ev: ClusterCreateRequested) -> dict[str, Any]:
    """The fields ``cluster show`` takes from the cluster's resolved spec (proto/clusterspec.py: decided once by
    the API; the provisioner builds exactly this), plus the template's labels for labels_added/overridden."""
    spec = clusterspec.spec_of(ev)
    return {
        "keypair": spec.keypair,
        "node_count": spec.node_count,
        "master_count": spec.master_count,
        "docker_volume_size": spec.docker_volume_size,
        "labels": dict(spec.labels),
        "template_labels": dict(ev.template.labels),
        "master_flavor_id": spec.master_flavor_id,
        "flavor_id": spec.flavor_id,
        "create_timeout": spec.create_timeout,
        "discovery_url": spec.discovery_url,
        "fixed_network": spec.fixed_network,
        "fixed_subnet": spec.fixed_subnet,
        "floating_ip_enabled": spec.floating_ip_enabled,
        "master_lb_enabled": spec.master_lb_enabled,
        "coe": spec.coe,
        "merge_labels": bool(ev.merge_labels),
        "trustee_user_id": ev.trustee_user_id,
    }


async def insert_clusters(
    conn: asyncpg.Connection, created: Sequence[tuple[ClusterCreateRequested, datetime]], status: str
) -> None:
    """New clusters (request event, time it occurred) in one round trip (asyncpg pipelines executemany)."""
    await conn.executemany(
        "INSERT INTO clusters (uuid, name, project_id, user_id, cluster_template_id, status, spec, stack_id,"
        " created_at) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9) ON CONFLICT (uuid) DO NOTHING",
        [(ev.uuid, ev.name, ev.project_id, ev.user_id, ev.template.uuid, status, msgspec.json.encode(shown_spec(ev)).decode(),
          ev.stack_id, ev.requested_at or at) for ev, at in created],
    )


async def set_admission(conn: asyncpg.Connection, uuids: Sequence[str], admission: str) -> None:
    """The scheduler's decision on these clusters, in one statement (a uuid without a row changes nothing)."""
    await conn.execute("UPDATE clusters SET admission = $2 WHERE uuid = ANY($1::text[])", list(uuids), admission)


async def admission_of(conn: asyncpg.Connection | asyncpg.Pool, uuid: str) -> str | None:
    """The scheduler's decision on the cluster as the read model knows it (None: not yet, or no such cluster)."""
    value = await conn.fetchval("SELECT admission FROM clusters WHERE uuid = $1", uuid)
    return str(value) if value is not None else None


async def cluster_exists(pool: asyncpg.Pool, uuid: str) -> bool:
    return bool(await pool.fetchval("SELECT EXISTS (SELECT 1 FROM clusters WHERE uuid = $1)", uuid))


async def cluster_status(conn: asyncpg.Connection, uuid: str) -> str | None:
    value = await conn.fetchval("SELECT status FROM clusters WHERE uuid = $1 FOR UPDATE", uuid)
    return str(value) if value is not None else None


_CLUSTER_COLUMNS = frozenset({
    "status", "status_reason", "admission", "health_status", "api_address", "master_addresses",
    "node_addresses", "stack_id", "coe_version", "container_version", "updated_at", "health_status_reason",
})
_JSON_COLUMNS = frozenset({"master_addresses", "node_addresses", "health_status_reason"})


async def update_cluster(conn: asyncpg.Connection, uuid: str, **values: Any) -> None:
    """Set the given columns (names checked against a fixed list)."""
    if not values:
        return
    sets, args = [], [uuid]
    for column, value in values.items():
        if column not in _CLUSTER_COLUMNS:
            raise ValueError(f"unknown clusters column {column!r}")
        args.append(json.dumps(value) if column in _JSON_COLUMNS else value)
        cast = "::jsonb" if column in _JSON_COLUMNS else ""
        sets.append(f"{column} = ${len(args)}{cast}")
    await conn.execute(f"UPDATE clusters SET {', '.join(sets)} WHERE uuid = $1", *args)


async def set_health(conn: asyncpg.Connection, uuid: str, health_status: str | None, reason: dict[str, str],
                     seq: int, updated_at: datetime | None = None) -> None:
    """The cluster's health from the report at stream sequence ``seq``, unless a later one is shown (``health_seq``,
    migration 0013: reports come only on a change, so an older one applied late would stay); ``seq`` 0 (not known)
    always applies."""
    await conn.execute(
        "UPDATE clusters SET health_status = $2, health_status_reason = $3::jsonb, health_seq = GREATEST(health_seq, $4),"
        " updated_at = COALESCE($5, updated_at) WHERE uuid = $1 AND ($4 = 0 OR health_seq < $4)",
        uuid, health_status, json.dumps(reason), seq, updated_at)


async def set_node_count(conn: asyncpg.Connection, uuid: str, node_count: int) -> None:
    await conn.execute(
        "UPDATE clusters SET spec = jsonb_set(spec, '{node_count}', to_jsonb($2::int)) WHERE uuid = $1",
        uuid,
        node_count,
    )


async def delete_cluster(conn: asyncpg.Connection, uuid: str) -> None:
    await conn.execute("DELETE FROM nodes WHERE cluster_uuid = $1", uuid)
    await conn.execute("DELETE FROM clusters WHERE uuid = $1", uuid)


async def list_clusters(pool: asyncpg.Pool, scope: Scope, page: Page) -> list[asyncpg.Record]:
    where, args = cluster_scope(scope)
    return await keyset_page(pool, "clusters", CLUSTER_SORT_KEYS, where, args, page)


async def find_clusters(pool: asyncpg.Pool, scope: Scope, ident: str) -> list[asyncpg.Record]:
    where, args = cluster_scope(scope, 2)
    rows = await pool.fetch(f"SELECT * FROM clusters WHERE uuid = $1 AND {where}", ident, *args)
    if not rows:
        rows = await pool.fetch(f"SELECT * FROM clusters WHERE name = $1 AND {where} ORDER BY id", ident, *args)
    return list(rows)


async def get_cluster(pool: asyncpg.Pool, uuid: str) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT * FROM clusters WHERE uuid = $1", uuid)


# --------------------------------------------------------------------------- nodes


async def upsert_node(
    conn: asyncpg.Connection,
    cluster_uuid: str,
    server_id: str,
    *,
    status: str,
    node_name: str | None = None,
    role: str | None = None,
    reason: str | None = None,
    addresses: dict[str, list[str]] | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO nodes (cluster_uuid, server_id, node_name, role, status, reason, addresses)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb) ON CONFLICT (cluster_uuid, server_id) DO UPDATE SET"
        " node_name = COALESCE(EXCLUDED.node_name, nodes.node_name), role = COALESCE(EXCLUDED.role, nodes.role),"
        " status = EXCLUDED.status, reason = COALESCE(EXCLUDED.reason, nodes.reason),"
        " addresses = CASE WHEN EXCLUDED.addresses = '{}'::jsonb THEN nodes.addresses ELSE EXCLUDED.addresses END"
        f" WHERE {FORWARD}",
        cluster_uuid,
        server_id,
        node_name,
        role,
        status,
        reason,
        json.dumps(addresses or {}),
    )


def _node_rank(column: str) -> str:
    return f"(CASE {column} WHEN 'BUILD' THEN 0 WHEN 'DELETED' THEN 2 ELSE 1 END)"


FORWARD = f"{_node_rank('EXCLUDED.status')} >= {_node_rank('nodes.status')}"
"""A node's row moves forward only: BUILD, then ACTIVE or ERROR, then DELETED (a row kept, its addresses gone, so
that a report the API's copies apply late, a NodeCreated after its NodeBecameActive or either after the NodeDeleted,
changes nothing: services/api/parking.py orders a cluster's status events, not its nodes'). Every read of nodes
asks for ACTIVE or ERROR ones; the cluster's delete removes them all. As the provisioner's own store does
(services/provisioner/store.py ``_NODE_RANK``)."""


# Writes the projection plans (services/api/projection.py ``plan``): statements decided from the event alone, each
# touching one cluster's rows, which a batch runs grouped by statement (services.runtime.projection.apply_writes).


def cluster_key(uuid: str) -> tuple[str, str]:
    """The key of a cluster's rows (``clusters``, ``nodes``)."""
    return ("cluster", uuid)


def upsert_node_of_known_cluster_write(
    cluster_uuid: str,
    server_id: str,
    *,
    status: str,
    node_name: str | None = None,
    role: str | None = None,
    addresses: dict[str, list[str]] | None = None,
) -> Write:
    """``upsert_node``, only when the cluster is in the read model (a node event of a deleted cluster adds none)."""
    return Write(
        "INSERT INTO nodes (cluster_uuid, server_id, node_name, role, status, reason, addresses)"
        " SELECT $1, $2, $3, $4, $5, NULL, $6::jsonb WHERE EXISTS (SELECT 1 FROM clusters WHERE uuid = $1)"
        " ON CONFLICT (cluster_uuid, server_id) DO UPDATE SET"
        " node_name = COALESCE(EXCLUDED.node_name, nodes.node_name), role = COALESCE(EXCLUDED.role, nodes.role),"
        " status = EXCLUDED.status, reason = COALESCE(EXCLUDED.reason, nodes.reason),"
        " addresses = CASE WHEN EXCLUDED.addresses = '{}'::jsonb THEN nodes.addresses ELSE EXCLUDED.addresses END"
        f" WHERE {FORWARD}",
        (cluster_uuid, server_id, node_name, role, status, json.dumps(addresses or {})),
        (cluster_key(cluster_uuid),),
    )


DELETE_NODE_SQL = (
    "INSERT INTO nodes (cluster_uuid, server_id, node_name, status)"
    " SELECT $1, $2, $3, 'DELETED' WHERE EXISTS (SELECT 1 FROM clusters WHERE uuid = $1)"
    " ON CONFLICT (cluster_uuid, server_id) DO UPDATE SET status = 'DELETED', addresses = '{}'::jsonb,"
    " node_name = COALESCE(EXCLUDED.node_name, nodes.node_name)"
)
"""A node gone: its row kept as DELETED (``FORWARD``), of a cluster in the read model."""


def delete_node_of_known_cluster_write(cluster_uuid: str, server_id: str, node_name: str | None) -> Write:
    return Write(DELETE_NODE_SQL, (cluster_uuid, server_id, node_name), (cluster_key(cluster_uuid),))


_FIRST_ADDRESS = (
    "(SELECT net.value -> 0 FROM jsonb_each(n.addresses) WITH ORDINALITY AS net (name, value, i)"
    " WHERE jsonb_array_length(net.value) > 0 ORDER BY net.i LIMIT 1)"
)


REFRESH_ADDRESSES_SQL = (
    "UPDATE clusters SET"
    " master_addresses = COALESCE(f.masters, '[]'::jsonb), node_addresses = COALESCE(f.workers, '[]'::jsonb)"
    " FROM (SELECT"
    "   jsonb_agg(first ORDER BY node_name, server_id) FILTER (WHERE role = 'master') AS masters,"
    "   jsonb_agg(first ORDER BY node_name, server_id) FILTER (WHERE role IS DISTINCT FROM 'master') AS workers"
    f"   FROM (SELECT n.node_name, n.server_id, n.role, {_FIRST_ADDRESS} AS first"
    "     FROM nodes n WHERE n.cluster_uuid = $1 AND n.status = 'ACTIVE') AS active"
    "   WHERE first IS NOT NULL) AS f"
    " WHERE uuid = $1"
)


def refresh_addresses_write(cluster_uuid: str) -> Write:
    """The cluster's ``master_addresses`` and ``node_addresses`` as ``node_addresses`` computes them (the first
    address of each ACTIVE node, by name), computed by the statement itself."""
    return Write(REFRESH_ADDRESSES_SQL, (cluster_uuid,), (cluster_key(cluster_uuid),))


def insert_cluster_write(e: ClusterCreateRequested, at: datetime, status: str) -> Write:
    """``insert_clusters`` of one cluster."""
    return Write(
        "INSERT INTO clusters (uuid, name, project_id, user_id, cluster_template_id, status, spec, stack_id,"
        " created_at) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9) ON CONFLICT (uuid) DO NOTHING",
        (e.uuid, e.name, e.project_id, e.user_id, e.template.uuid, status, msgspec.json.encode(shown_spec(e)).decode(),
         e.stack_id, e.requested_at or at),
        (cluster_key(e.uuid), "clusters_id_seq"),
    )


def set_admitted_write(uuid: str) -> Write:
    """The scheduler admitted the cluster; one that waited in the build queue no longer says where it waited."""
    return Write(
        "UPDATE clusters SET admission = 'admitted', status_reason = CASE WHEN admission = 'queued' THEN NULL"
        " ELSE status_reason END WHERE uuid = $1",
        (uuid,), (cluster_key(uuid),),
    )


def _addresses_sql(masters: bool) -> str:
    """``node_addresses``' masters (or workers) of the cluster ``$1``, as the JSON list it stores."""
    role = "role = 'master'" if masters else "role IS DISTINCT FROM 'master'"
    return (
        f"COALESCE((SELECT jsonb_agg(first ORDER BY node_name, server_id) FROM (SELECT n.node_name, n.server_id,"
        f" n.role, {_FIRST_ADDRESS} AS first FROM nodes n WHERE n.cluster_uuid = $1 AND n.status = 'ACTIVE')"
        f" AS active WHERE first IS NOT NULL AND {role}), '[]'::jsonb)"
    )


MASTER_ADDRESSES = object()
"""A value of ``move_write``: the cluster's masters' addresses as the nodes say (``node_addresses``)."""
WORKER_ADDRESSES = object()


def move_write(
    uuid: str, sources: frozenset[str] | None, target: str, at: datetime, values: dict[str, Any]
) -> Write:
    """The API projection's ``_move`` to a status other than GONE, decided by the statement: when the cluster's
    status is one of ``sources`` (None: any) and not ``target`` already, it moves to ``target`` and takes
    ``values``; when it does not move, it is left alone if there are ``values`` (the event does not apply from
    there), else only its ``updated_at`` is set. Always ``updated_at`` = ``at``; no row, no change."""
    args: list[Any] = [uuid, at, target]
    source = "TRUE"
    if sources is not None:
        args.append(sorted(sources))
        source = f"status = ANY(${len(args)}::text[])"
    moved = f"({source} AND status <> $3)"
    sets = [f"status = CASE WHEN {moved} THEN $3 ELSE status END", "updated_at = $2"]
    for column, value in values.items():
        if column not in _CLUSTER_COLUMNS:
            raise ValueError(f"unknown clusters column {column!r}")
        if value is MASTER_ADDRESSES or value is WORKER_ADDRESSES:
            expr = _addresses_sql(value is MASTER_ADDRESSES)
        else:
            args.append(json.dumps(value) if column in _JSON_COLUMNS else value)
            expr = f"${len(args)}::jsonb" if column in _JSON_COLUMNS else f"${len(args)}"
        sets.append(f"{column} = CASE WHEN {moved} THEN {expr} ELSE {column} END")
    where = moved if values else "TRUE"
    return Write(f"UPDATE clusters SET {', '.join(sets)} WHERE uuid = $1 AND {where}", tuple(args),
                 (cluster_key(uuid),))


def delete_cluster_writes(uuid: str) -> list[Write]:
    """``delete_cluster``, of a cluster in the read model (no row, no change)."""
    return [
        Write("DELETE FROM nodes WHERE cluster_uuid = $1 AND EXISTS (SELECT 1 FROM clusters WHERE uuid = $1)",
              (uuid,), (cluster_key(uuid),)),
        Write("DELETE FROM clusters WHERE uuid = $1", (uuid,), (cluster_key(uuid),)),
    ]


def set_stack_id_write(uuid: str, stack_id: str) -> Write:
    return Write("UPDATE clusters SET stack_id = $2 WHERE uuid = $1", (uuid, stack_id), (cluster_key(uuid),))


async def delete_node(conn: asyncpg.Connection, cluster_uuid: str, server_id: str, node_name: str | None) -> None:
    await conn.execute(DELETE_NODE_SQL, cluster_uuid, server_id, node_name)


async def node_addresses(conn: asyncpg.Connection, cluster_uuid: str) -> tuple[list[str], list[str]]:
    """(master addresses, worker addresses) of the cluster's ACTIVE nodes, first address of each, by name."""
    rows = await conn.fetch(
        "SELECT role, addresses FROM nodes WHERE cluster_uuid = $1 AND status = 'ACTIVE'"
        " ORDER BY node_name, server_id",
        cluster_uuid,
    )
    masters: list[str] = []
    workers: list[str] = []
    for row in rows:
        addrs = [a for net in json.loads(row["addresses"]).values() for a in net]
        if addrs:
            (masters if row["role"] == "master" else workers).append(addrs[0])
    return masters, workers


async def node_failures(pool: asyncpg.Pool, cluster_uuid: str) -> list[asyncpg.Record]:
    return list(
        await pool.fetch(
            "SELECT node_name, role, reason FROM nodes WHERE cluster_uuid = $1 AND status = 'ERROR'", cluster_uuid
        )
    )


# --------------------------------------------------------------------------- projection position


async def checkpoint(pool: asyncpg.Pool) -> int:
    """The stream sequence the API's projection has applied up to (0 before the first event)."""
    try:
        value = await pool.fetchval("SELECT stream_seq FROM checkpoint WHERE consumer = $1", PROJECTION)
    except asyncpg.UndefinedTableError:
        return 0
    return int(value or 0)
