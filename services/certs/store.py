"""The certs service's SQL (schema ``certs``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg


@dataclass(frozen=True)
class StoredCA:
    cluster_id: str
    project_id: str
    ca_cert_pem: str
    encrypted_ca_key: bytes | None
    key_id: str
    deleted: bool


async def get_ca(conn: asyncpg.Connection | asyncpg.Pool, cluster_id: str) -> StoredCA | None:
    row = await conn.fetchrow(
        "SELECT cluster_id, project_id, ca_cert_pem, encrypted_ca_key, key_id, deleted_at IS NOT NULL AS deleted"
        " FROM cluster_cas WHERE cluster_id = $1",
        cluster_id,
    )
    if row is None:
        return None
    return StoredCA(
        cluster_id=row["cluster_id"],
        project_id=row["project_id"],
        ca_cert_pem=row["ca_cert_pem"],
        encrypted_ca_key=row["encrypted_ca_key"],
        key_id=row["key_id"],
        deleted=row["deleted"],
    )


async def put_ca(
    tx: asyncpg.Connection,
    *,
    cluster_id: str,
    project_id: str,
    ca_cert_pem: str,
    encrypted_ca_key: bytes,
    key_id: str,
    created_at: datetime,
) -> None:
    """Record a CA; a ClusterCACreated fact overwrites what the handler stored before publishing it."""
    await tx.execute(
        "INSERT INTO cluster_cas (cluster_id, project_id, ca_cert_pem, encrypted_ca_key, key_id, created_at)"
        " VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT (cluster_id) DO UPDATE SET project_id = EXCLUDED.project_id,"
        " ca_cert_pem = EXCLUDED.ca_cert_pem, encrypted_ca_key = EXCLUDED.encrypted_ca_key,"
        " key_id = EXCLUDED.key_id, created_at = EXCLUDED.created_at"
        " WHERE cluster_cas.deleted_at IS NULL",
        cluster_id,
        project_id,
        ca_cert_pem,
        encrypted_ca_key,
        key_id,
        created_at,
    )


async def mark_deleted(tx: asyncpg.Connection, cluster_id: str, at: datetime) -> bool:
    """Tombstone the CA and forget its key; True when it was live."""
    status = await tx.execute(
        "UPDATE cluster_cas SET deleted_at = $2, encrypted_ca_key = NULL"
        " WHERE cluster_id = $1 AND deleted_at IS NULL",
        cluster_id,
        at,
    )
    return bool(status != "UPDATE 0")


async def set_deleted_at(tx: asyncpg.Connection, cluster_id: str, project_id: str, at: datetime) -> None:
    """Apply a ClusterCADeleted fact: the deletion time is the event's (same figures after a replay)."""
    await tx.execute(
        "UPDATE cluster_cas SET deleted_at = $2, encrypted_ca_key = NULL WHERE cluster_id = $1",
        cluster_id,
        at,
    )


async def replace_ca(
    conn: asyncpg.Connection,
    *,
    cluster_id: str,
    ca_cert_pem: str,
    encrypted_ca_key: bytes,
    key_id: str,
) -> None:
    """A rotated CA replaces the live one (a deleted cluster's tombstone stays as it is)."""
    await conn.execute(
        "UPDATE cluster_cas SET ca_cert_pem = $2, encrypted_ca_key = $3, key_id = $4"
        " WHERE cluster_id = $1 AND deleted_at IS NULL",
        cluster_id,
        ca_cert_pem,
        encrypted_ca_key,
        key_id,
    )
