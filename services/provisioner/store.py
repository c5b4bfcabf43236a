"""The provisioner's SQL (schema ``provisioner``), and nothing else touches it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from proto import clusterspec
from proto.clusterspec import ClusterSpec
from proto.events import ClusterCreateRequested
from services.provisioner.model import NODE_ACTIVE, NODE_CREATED, NODE_DELETED, NODE_FAILED, KnownNode
from services.provisioner.nodeplan import GroupSpec
from services.runtime.projection import Write

SCHEMA = "provisioner"

# Node states only move forward; a re-applied older event never moves one back.
_NODE_RANK = {NODE_CREATED: 0, NODE_ACTIVE: 1, NODE_FAILED: 1, NODE_DELETED: 2}


@dataclass
class ClusterRow:
    uuid: str
    project_id: str | None
    name: str | None
    spec: ClusterCreateRequested | None
    trust_id: str | None
    correlation_id: str | None
    ca_cert_pem: str | None
    desired: str
    delete_generation: int
    delete_pending: bool
    status: str | None
    status_reason: str | None
    create_started_at: datetime | None
    last_seq: int
    nodes: dict[str, KnownNode] = field(default_factory=dict)
    update_generation: int = 0
    update_started: int = 0
    update_done: int = 0
    max_batch_size: int = 1
    groups: list[GroupSpec] = field(default_factory=list)
    update_started_at: datetime | None = None
    """When the current update started (ClusterUpdateStarted's time): its deadline counts from here."""
    delete_started_at: datetime | None = None
    """When the current delete started (ClusterDeleteStarted's time): its deadline counts from here."""
    ca_previous_pem: str | None = None
    """The CA a rotation replaced, trusted beside the new one while the nodes roll onto it; None otherwise."""
    health_status: str | None = None
    """The last ``ClusterHealthChanged`` (``health.py``); None before the first."""
    health_reason: dict[str, str] | None = None

    @property
    def resolved(self) -> ClusterSpec:
        """The cluster as the API resolved it (record_spec stores every request with its spec)."""
        assert self.spec is not None and self.spec.spec is not None
        return self.spec.spec


_spec_decoder = msgspec.json.Decoder(ClusterCreateRequested)
_encoder = msgspec.json.Encoder()


def encode_spec(spec: ClusterCreateRequested) -> str:
    return _encoder.encode(spec).decode()


# ------------------------------------------------------------------------------------------------ writes
#
# Each write the projection makes is built as a ``Write`` (statement, arguments, the rows it touches: the cluster's,
# or a whole table's) by a ``*_write`` function, and run by the function of the same name without the suffix: the
# handlers plan events as lists of these writes (services/provisioner/handlers.py), which a batch runs grouped.


def cluster_key(cluster_id: str) -> tuple[str, str]:
    """The key of every row of one cluster (its ``clusters``, ``nodes`` and ``nodegroups`` rows)."""
    return ("cluster", cluster_id)


TRUSTS_KEY = "trusts_to_delete"
"""The key of the ``trusts_to_delete`` table: a trust may be shared by clusters, and a write may name it only
through a cluster's row, so every write to the table is ordered after every earlier one."""


RECORD_SPEC_SQL = (
    "INSERT INTO clusters (uuid, project_id, name, spec, trust_id, correlation_id, requested_trust_id, requested_at)"
    " VALUES ($1, $2, $3, $4::jsonb, $5, $6, $5, $7)"
    " ON CONFLICT (uuid) DO UPDATE SET project_id = EXCLUDED.project_id, name = EXCLUDED.name,"
    " spec = EXCLUDED.spec, trust_id = EXCLUDED.trust_id, correlation_id = EXCLUDED.correlation_id,"
    " requested_trust_id = EXCLUDED.requested_trust_id, requested_at = EXCLUDED.requested_at, updated_at = now()"
)
"""The request, and the trust it was made with and when (``trusts_to_delete``'s ``handed_out_at``), kept apart
from ``trust_id``, which a rotation moves."""


def record_spec_write(
    spec: ClusterCreateRequested, correlation_id: str, resolved: clusterspec.ClusterSpec | None = None
) -> Write:
    """The request, with its resolved spec (``resolved``, else resolved now for an event written before the API
    carried one)."""
    spec = msgspec.structs.replace(spec, spec=resolved or clusterspec.spec_of(spec))
    return Write(
        RECORD_SPEC_SQL,
        (spec.uuid, spec.project_id, spec.name, encode_spec(spec), spec.trust_id, correlation_id, spec.requested_at),
        (cluster_key(spec.uuid),),
    )


async def record_spec(tx: asyncpg.Connection, spec: ClusterCreateRequested, correlation_id: str) -> None:
    await run(tx, record_spec_write(spec, correlation_id))


def record_ca_write(cluster_id: str, project_id: str, ca_cert_pem: str) -> Write:
    return Write(
        "INSERT INTO clusters (uuid, project_id, ca_cert_pem) VALUES ($1, $2, $3)"
        " ON CONFLICT (uuid) DO UPDATE SET ca_cert_pem = EXCLUDED.ca_cert_pem, updated_at = now()",
        (cluster_id, project_id, ca_cert_pem), (cluster_key(cluster_id),),
    )


async def record_ca(tx: asyncpg.Connection, cluster_id: str, project_id: str, ca_cert_pem: str) -> None:
    await run(tx, record_ca_write(cluster_id, project_id, ca_cert_pem))


async def set_trust(tx: asyncpg.Connection, cluster_id: str, trust_id: str) -> None:
    """A rotated trust (ClusterTrustRotated): the reconciler acts with it from now on."""
    await tx.execute("UPDATE clusters SET trust_id = $2, updated_at = now() WHERE uuid = $1", cluster_id, trust_id)


def record_delete_requested_write(cluster_id: str, project_id: str) -> Write:
    return Write(
        "INSERT INTO clusters (uuid, project_id, desired, delete_generation, delete_pending)"
        " VALUES ($1, $2, 'absent', 1, true)"
        " ON CONFLICT (uuid) DO UPDATE SET desired = 'absent', delete_pending = true,"
        " delete_generation = clusters.delete_generation + 1, updated_at = now()",
        (cluster_id, project_id), (cluster_key(cluster_id),),
    )


async def record_delete_requested(tx: asyncpg.Connection, cluster_id: str, project_id: str) -> None:
    await run(tx, record_delete_requested_write(cluster_id, project_id))


def set_status_write(
    cluster_id: str,
    project_id: str | None,
    status: str,
    reason: str | None,
    seq: int,
    *,
    started_at: datetime | None = None,
    delete_started: bool = False,
) -> Write:
    return Write(
        "INSERT INTO clusters (uuid, project_id, status, status_reason, last_seq, create_started_at)"
        " VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT (uuid) DO UPDATE SET status = EXCLUDED.status, status_reason = EXCLUDED.status_reason,"
        " last_seq = GREATEST(clusters.last_seq, EXCLUDED.last_seq),"
        " create_started_at = COALESCE(clusters.create_started_at, EXCLUDED.create_started_at),"
        " delete_pending = CASE WHEN $7 THEN false ELSE clusters.delete_pending END,"
        " updated_at = now()",
        (cluster_id, project_id, status, reason, seq, started_at, delete_started), (cluster_key(cluster_id),),
    )


async def set_status(
    tx: asyncpg.Connection,
    cluster_id: str,
    project_id: str | None,
    status: str,
    reason: str | None,
    seq: int,
    *,
    started_at: datetime | None = None,
    delete_started: bool = False,
) -> None:
    await run(tx, set_status_write(cluster_id, project_id, status, reason, seq, started_at=started_at,
                                   delete_started=delete_started))


def set_health_write(
    cluster_id: str, project_id: str | None, status: str, reason: dict[str, str], seq: int
) -> Write:
    """The cluster's health as its last ``ClusterHealthChanged`` says (``health.py`` publishes only on a change)."""
    return Write(
        "INSERT INTO clusters (uuid, project_id, health_status, health_reason, last_seq)"
        " VALUES ($1, $2, $3, $4::jsonb, $5)"
        " ON CONFLICT (uuid) DO UPDATE SET health_status = EXCLUDED.health_status,"
        " health_reason = EXCLUDED.health_reason, last_seq = GREATEST(clusters.last_seq, EXCLUDED.last_seq)",
        (cluster_id, project_id, status, json.dumps(reason), seq), (cluster_key(cluster_id),),
    )


async def set_health(
    tx: asyncpg.Connection, cluster_id: str, project_id: str | None, status: str, reason: dict[str, str], seq: int
) -> None:
    await run(tx, set_health_write(cluster_id, project_id, status, reason, seq))


async def watched_clusters(conn: asyncpg.Connection | asyncpg.Pool, statuses: list[str]) -> list[asyncpg.Record]:
    """(uuid, status, project_id, trust_id) of the clusters that exist in one of ``statuses`` (``watch.py``)."""
    return await conn.fetch(
        "SELECT uuid, status, project_id, trust_id FROM clusters WHERE desired = 'present'"
        " AND status = ANY($1::text[])", statuses)


def bump_seq_write(cluster_id: str, project_id: str | None, seq: int) -> Write:
    return Write(
        "INSERT INTO clusters (uuid, project_id, last_seq) VALUES ($1, $2, $3)"
        " ON CONFLICT (uuid) DO UPDATE SET last_seq = GREATEST(clusters.last_seq, EXCLUDED.last_seq)",
        (cluster_id, project_id, seq), (cluster_key(cluster_id),),
    )


async def bump_seq(tx: asyncpg.Connection, cluster_id: str, project_id: str | None, seq: int) -> None:
    await run(tx, bump_seq_write(cluster_id, project_id, seq))


_RANK_SQL = "CASE {0} " + " ".join(f"WHEN '{s}' THEN {r}" for s, r in _NODE_RANK.items()) + " ELSE 0 END"


UPSERT_NODE_SQL = (
    "INSERT INTO nodes (cluster_id, server_id, name, role, status, flavor_id, vcpus, ram_mb, disk_gb,"
    " addresses, reason) VALUES ($1, $2, COALESCE(NULLIF($3, ''), $2), COALESCE(NULLIF($4, ''), 'worker'), $5,"
    " $6, $7, $8, $9,"
    " COALESCE($10::jsonb, '{}'::jsonb), $11)"
    " ON CONFLICT (cluster_id, server_id) DO UPDATE SET"
    f" status = CASE WHEN {_RANK_SQL.format('EXCLUDED.status')} >= {_RANK_SQL.format('nodes.status')}"
    " THEN EXCLUDED.status ELSE nodes.status END,"
    " name = COALESCE($3, nodes.name), role = COALESCE($4, nodes.role),"
    " flavor_id = COALESCE($6, nodes.flavor_id), vcpus = COALESCE($7, nodes.vcpus),"
    " ram_mb = COALESCE($8, nodes.ram_mb), disk_gb = COALESCE($9, nodes.disk_gb),"
    " addresses = COALESCE($10::jsonb, nodes.addresses),"
    " reason = COALESCE($11, nodes.reason), updated_at = now()"
)


def upsert_node_write(
    cluster_id: str,
    server_id: str,
    *,
    name: str | None,
    role: str | None,
    status: str,
    flavor_id: str | None = None,
    vcpus: int | None = None,
    ram_mb: int | None = None,
    disk_gb: int | None = None,
    addresses: dict[str, list[str]] | None = None,
    reason: str | None = None,
) -> Write:
    """Insert the node or move it forward; never backwards (see _NODE_RANK): one statement, the node's current
    status compared with the new one in SQL."""
    return Write(
        UPSERT_NODE_SQL,
        (cluster_id, server_id, name, role, status, flavor_id, vcpus, ram_mb, disk_gb,
         json.dumps(addresses) if addresses else None, reason),
        (cluster_key(cluster_id),),
    )


def set_releasing_write(cluster_id: str, server_ids: list[str], releasing: bool) -> Write:
    """Whether these deleted servers' volumes, floating IP and port are still to be released (``nodes.py``)."""
    return Write(
        "UPDATE nodes SET releasing = $3 WHERE cluster_id = $1 AND server_id = ANY($2::text[])",
        (cluster_id, server_ids, releasing), (cluster_key(cluster_id),),
    )


async def run(tx: asyncpg.Connection, write: Write) -> None:
    """Run one planned write now."""
    await tx.execute(write.sql, *write.args)


# ------------------------------------------------------------------------------------------------ reads


def _row(r: asyncpg.Record) -> ClusterRow:
    spec = _spec_decoder.decode(r["spec"]) if r["spec"] is not None else None
    return ClusterRow(
        uuid=r["uuid"], project_id=r["project_id"], name=r["name"], spec=spec, trust_id=r["trust_id"],
        correlation_id=r["correlation_id"], ca_cert_pem=r["ca_cert_pem"], desired=r["desired"],
        delete_generation=r["delete_generation"], delete_pending=r["delete_pending"], status=r["status"],
        status_reason=r["status_reason"], create_started_at=r["create_started_at"], last_seq=r["last_seq"],
        update_generation=r["update_generation"], update_started=r["update_started"],
        update_done=r["update_done"], max_batch_size=r["max_batch_size"],
        update_started_at=r.get("update_started_at"), delete_started_at=r.get("delete_started_at"),
        ca_previous_pem=r.get("ca_previous_pem"),
        health_status=r.get("health_status"),
        health_reason=json.loads(r["health_reason"]) if r.get("health_reason") else None,
    )


async def load_cluster(conn: asyncpg.Connection | asyncpg.Pool, cluster_id: str) -> ClusterRow | None:
    r = await conn.fetchrow("SELECT * FROM clusters WHERE uuid = $1", cluster_id)
    if r is None:
        return None
    row = _row(r)
    for n in await conn.fetch(
        "SELECT server_id, name, role, status, releasing FROM nodes WHERE cluster_id = $1", cluster_id
    ):
        row.nodes[n["server_id"]] = KnownNode(n["server_id"], n["name"], n["role"], n["status"], n["releasing"])
    for g in await conn.fetch("SELECT * FROM nodegroups WHERE cluster_id = $1 ORDER BY name", cluster_id):
        row.groups.append(GroupSpec(
            name=g["name"], role=g["role"], node_count=g["node_count"], present=g["present"],
            is_default=g["is_default"], nodes_to_remove=frozenset(json.loads(g["nodes_to_remove"])),
            flavor_id=g["flavor_id"], image_ref=g["image_id"], docker_volume_size=g["docker_volume_size"],
            roll=g.get("roll_generation") or 0,
        ))
    return row


async def clusters_needing_work(conn: asyncpg.Connection | asyncpg.Pool) -> list[str]:
    """Clusters whose desired state may not be reached yet (resumed after a restart)."""
    rows = await conn.fetch(
        "SELECT uuid FROM clusters WHERE"
        " (desired = 'present' AND spec IS NOT NULL AND ca_cert_pem IS NOT NULL"
        "   AND status IS DISTINCT FROM 'CREATE_COMPLETE' AND status IS DISTINCT FROM 'CREATE_FAILED')"
        " OR (desired = 'absent' AND (delete_pending OR status = 'DELETE_IN_PROGRESS'))"
        " OR (desired = 'present' AND update_generation > update_done"
        "   AND status IN ('CREATE_COMPLETE', 'UPDATE_COMPLETE', 'UPDATE_FAILED', 'UPDATE_IN_PROGRESS'))"
        " ORDER BY updated_at"
    )
    return [r["uuid"] for r in rows]


async def node_rows(conn: asyncpg.Connection | asyncpg.Pool, cluster_id: str) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(
        "SELECT * FROM nodes WHERE cluster_id = $1 ORDER BY name", cluster_id
    )]


# ------------------------------------------------------------------------------------------------ nodegroups


def upsert_group_write(
    cluster_id: str, name: str, *, uuid: str | None, role: str, node_count: int,
    flavor_id: str | None, image_id: str | None, is_default: bool, docker_volume_size: int | None = None,
) -> Write:
    return Write(
        "INSERT INTO nodegroups (cluster_id, name, uuid, role, is_default, node_count, flavor_id, image_id,"
        " docker_volume_size) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (cluster_id, name) DO NOTHING",
        (cluster_id, name, uuid, role, is_default, node_count, flavor_id, image_id, docker_volume_size),
        (cluster_key(cluster_id),),
    )


async def upsert_group(
    tx: asyncpg.Connection, cluster_id: str, name: str, *, uuid: str | None, role: str, node_count: int,
    flavor_id: str | None, image_id: str | None, is_default: bool, docker_volume_size: int | None = None,
) -> None:
    await run(tx, upsert_group_write(
        cluster_id, name, uuid=uuid, role=role, node_count=node_count, flavor_id=flavor_id, image_id=image_id,
        is_default=is_default, docker_volume_size=docker_volume_size,
    ))


async def find_group(tx: asyncpg.Connection, cluster_id: str, ident: str | None) -> str | None:
    """The name of the group named (or with uuid) ``ident``; None means the default worker group."""
    if ident is None:
        ident = "default-worker"
    name = await tx.fetchval(
        "SELECT name FROM nodegroups WHERE cluster_id = $1 AND (name = $2 OR uuid = $2)", cluster_id, ident
    )
    return str(name) if name is not None else None


async def resize_group(
    tx: asyncpg.Connection, cluster_id: str, name: str, node_count: int, nodes_to_remove: list[str]
) -> None:
    await tx.execute(
        "UPDATE nodegroups SET node_count = $3, nodes_to_remove = $4::jsonb WHERE cluster_id = $1 AND name = $2",
        cluster_id, name, node_count, json.dumps(sorted(nodes_to_remove)),
    )


def remove_group_write(cluster_id: str, name: str) -> Write:
    return Write("UPDATE nodegroups SET present = false WHERE cluster_id = $1 AND name = $2", (cluster_id, name),
                 (cluster_key(cluster_id),))


async def remove_group(tx: asyncpg.Connection, cluster_id: str, name: str) -> None:
    await run(tx, remove_group_write(cluster_id, name))


async def set_group_image(tx: asyncpg.Connection, cluster_id: str, name: str | None, image_id: str) -> None:
    """The image of one group, or (name None) of every group."""
    await tx.execute(
        "UPDATE nodegroups SET image_id = $2 WHERE cluster_id = $1 AND ($3::text IS NULL OR name = $3)",
        cluster_id, image_id, name,
    )


def set_operation_started_write(cluster_id: str, column: str, at: datetime) -> Write:
    """When the current update (``update_started_at``) or delete (``delete_started_at``) started."""
    assert column in ("update_started_at", "delete_started_at")
    return Write(f"UPDATE clusters SET {column} = $2 WHERE uuid = $1", (cluster_id, at), (cluster_key(cluster_id),))


async def set_operation_started(tx: asyncpg.Connection, cluster_id: str, column: str, at: datetime) -> None:
    await run(tx, set_operation_started_write(cluster_id, column, at))


def bump_roll_write(cluster_id: str, name: str | None, *, masters_only: bool = False) -> Write:
    """Every server of one group (or, name None, of every group; of the master groups only) is to be rolled."""
    return Write(
        "UPDATE nodegroups SET roll_generation = roll_generation + 1 WHERE cluster_id = $1"
        " AND ($2::text IS NULL OR name = $2) AND (NOT $3 OR role = 'master')",
        (cluster_id, name, masters_only), (cluster_key(cluster_id),),
    )


async def bump_roll(tx: asyncpg.Connection, cluster_id: str, name: str | None, *, masters_only: bool = False) -> None:
    await run(tx, bump_roll_write(cluster_id, name, masters_only=masters_only))


def set_ca_previous_write(cluster_id: str, previous_pem: str | None) -> Write:
    return Write("UPDATE clusters SET ca_previous_pem = $2 WHERE uuid = $1", (cluster_id, previous_pem),
                 (cluster_key(cluster_id),))


async def set_ca_previous(tx: asyncpg.Connection, cluster_id: str, previous_pem: str | None) -> None:
    await run(tx, set_ca_previous_write(cluster_id, previous_pem))


async def current_ca(tx: asyncpg.Connection, cluster_id: str) -> str | None:
    return await tx.fetchval("SELECT ca_cert_pem FROM clusters WHERE uuid = $1", cluster_id)  # type: ignore[no-any-return]


def bump_update_write(cluster_id: str, *, max_batch_size: int | None = None) -> Write:
    return Write(
        "UPDATE clusters SET update_generation = update_generation + 1,"
        " max_batch_size = COALESCE($2, max_batch_size), updated_at = now() WHERE uuid = $1",
        (cluster_id, max_batch_size), (cluster_key(cluster_id),),
    )


async def bump_update(tx: asyncpg.Connection, cluster_id: str, *, max_batch_size: int | None = None) -> None:
    await run(tx, bump_update_write(cluster_id, max_batch_size=max_batch_size))


def mark_update_write(cluster_id: str, *, started: int | None = None, done: int | None = None) -> Write:
    return Write(
        "UPDATE clusters SET update_started = GREATEST(update_started, COALESCE($2, 0)),"
        " update_done = GREATEST(update_done, COALESCE($3, 0)) WHERE uuid = $1",
        (cluster_id, started, done), (cluster_key(cluster_id),),
    )


async def mark_update(
    tx: asyncpg.Connection, cluster_id: str, *, started: int | None = None, done: int | None = None
) -> None:
    await run(tx, mark_update_write(cluster_id, started=started, done=done))


# ------------------------------------------------------------------------------------------------ trusts to delete


@dataclass(frozen=True)
class PendingTrust:
    """A Keystone trust the provisioner must delete (a row of ``trusts_to_delete``)."""

    trust_id: str
    cluster_id: str
    project_id: str | None
    reason: str
    """``cluster_deleted`` or ``rotated``."""
    recorded_at: datetime
    handed_out_at: datetime | None = None
    """When the newest cluster created with this trust was requested (the API may hand a trust to several clusters
    of one user: proto/trusts.py); None when no cluster in the store was created with it."""


async def current_trust(tx: asyncpg.Connection, cluster_id: str) -> tuple[str | None, str | None]:
    """(trust id, status) of the cluster as the store has them now; (None, None) for an unknown cluster."""
    r = await tx.fetchrow("SELECT trust_id, status FROM clusters WHERE uuid = $1", cluster_id)
    return (None, None) if r is None else (r["trust_id"], r["status"])


async def add_trust_to_delete(
    tx: asyncpg.Connection, trust_id: str, cluster_id: str, project_id: str | None, reason: str
) -> None:
    await tx.execute(
        "INSERT INTO trusts_to_delete (trust_id, cluster_id, project_id, reason) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (trust_id) DO NOTHING",
        trust_id, cluster_id, project_id, reason,
    )


def delete_cluster_trust_write(cluster_id: str, project_id: str | None) -> Write:
    """The trust the cluster acts with, if any, is to be deleted (reason ``cluster_deleted``): the trust read from
    the cluster's row by the statement itself."""
    return Write(
        "INSERT INTO trusts_to_delete (trust_id, cluster_id, project_id, reason)"
        " SELECT trust_id, uuid, $2, 'cluster_deleted' FROM clusters"
        " WHERE uuid = $1 AND trust_id IS NOT NULL AND trust_id <> ''"
        " ON CONFLICT (trust_id) DO NOTHING",
        (cluster_id, project_id), (cluster_key(cluster_id), TRUSTS_KEY),
    )


def remove_trust_to_delete_write(trust_id: str) -> Write:
    return Write("DELETE FROM trusts_to_delete WHERE trust_id = $1", (trust_id,), (TRUSTS_KEY,))


async def remove_trust_to_delete(tx: asyncpg.Connection, trust_id: str) -> None:
    await run(tx, remove_trust_to_delete_write(trust_id))


async def trusts_to_delete(conn: asyncpg.Connection | asyncpg.Pool, limit: int = 500) -> list[PendingTrust]:
    """The recorded trusts that no cluster acts with any more: a trust another cluster still acts with (the API
    shares one among a user's clusters, proto/trusts.py) stays recorded, and comes back here once that cluster's
    ``ClusterDeleteCompleted`` (or a rotation away from it) was applied."""
    rows = await conn.fetch(
        "SELECT t.trust_id, t.cluster_id, t.project_id, t.reason, t.recorded_at,"
        " (SELECT max(c.requested_at) FROM clusters c WHERE c.requested_trust_id = t.trust_id) AS handed_out_at"
        " FROM trusts_to_delete t"
        " WHERE NOT EXISTS (SELECT 1 FROM clusters c WHERE c.trust_id = t.trust_id"
        "   AND c.status IS DISTINCT FROM 'DELETE_COMPLETE')"
        " ORDER BY t.recorded_at LIMIT $1", limit,
    )
    return [PendingTrust(r["trust_id"], r["cluster_id"], r["project_id"], r["reason"], r["recorded_at"],
                         r["handed_out_at"]) for r in rows]


async def last_seq(conn: asyncpg.Connection | asyncpg.Pool, cluster_id: str) -> int:
    """The stream sequence of the last provisioner event the store applied for the cluster (0: none)."""
    return int(await conn.fetchval("SELECT last_seq FROM clusters WHERE uuid = $1", cluster_id) or 0)
