"""The certs service's SQL (schema ``certs``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.runtime.projection import Write


@dataclass(frozen=True)
class StoredCA:
    cluster_id: str
    project_id: str
    ca_cert_pem: str
    encrypted_ca_key: bytes | None
    key_id: str
    deleted: bool
    etcd_ca_cert_pem: str | None = None
    etcd_encrypted_ca_key: bytes | None = None
    front_proxy_ca_cert_pem: str | None = None
    front_proxy_encrypted_ca_key: bytes | None = None
    wrapped_by: str = "kek"

    def cert_and_key(self, ca_cert_type: str) -> tuple[str | None, bytes | None]:
        """The CA certificate and its wrapped key for ``kubernetes``, ``etcd`` or ``front_proxy``."""
        if ca_cert_type == "etcd":
            return self.etcd_ca_cert_pem, self.etcd_encrypted_ca_key
        if ca_cert_type == "front_proxy":
            return self.front_proxy_ca_cert_pem, self.front_proxy_encrypted_ca_key
        return self.ca_cert_pem, self.encrypted_ca_key


_COLUMNS = (
    "cluster_id, project_id, ca_cert_pem, encrypted_ca_key, key_id, deleted_at IS NOT NULL AS deleted,"
    " etcd_ca_cert_pem, etcd_encrypted_ca_key, front_proxy_ca_cert_pem, front_proxy_encrypted_ca_key, wrapped_by"
)


def _stored(row: asyncpg.Record) -> StoredCA:
    return StoredCA(**dict(row))


async def get_ca(conn: asyncpg.Connection | asyncpg.Pool, cluster_id: str) -> StoredCA | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM cluster_cas WHERE cluster_id = $1", cluster_id)
    return None if row is None else _stored(row)


async def live_kek_wrapped(conn: asyncpg.Connection | asyncpg.Pool) -> list[StoredCA]:
    """Live CAs whose keys the KEK wraps directly (clusters from before issue 19)."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM cluster_cas WHERE wrapped_by = 'kek' AND deleted_at IS NULL ORDER BY cluster_id"
    )
    return [_stored(r) for r in rows]


async def rewrap(
    conn: asyncpg.Connection, *, cluster_id: str, old_key_id: str, encrypted_ca_key: bytes, key_id: str
) -> bool:
    """Move a pre-issue-19 CA key under the cluster's data key (if no one changed the row meanwhile)."""
    status = await conn.execute(
        "UPDATE cluster_cas SET encrypted_ca_key = $3, key_id = $4, wrapped_by = 'data_key'"
        " WHERE cluster_id = $1 AND key_id = $2 AND wrapped_by = 'kek' AND deleted_at IS NULL",
        cluster_id,
        old_key_id,
        encrypted_ca_key,
        key_id,
    )
    return bool(status != "UPDATE 0")


def cluster_key(cluster_id: str) -> tuple[str, str]:
    """The key of a planned write to one cluster's CA row."""
    return ("cluster", cluster_id)


PUT_CA_SQL = (
    "INSERT INTO cluster_cas (cluster_id, project_id, ca_cert_pem, encrypted_ca_key, key_id, created_at,"
    " etcd_ca_cert_pem, etcd_encrypted_ca_key, front_proxy_ca_cert_pem, front_proxy_encrypted_ca_key,"
    " wrapped_by)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
    " ON CONFLICT (cluster_id) DO UPDATE SET project_id = EXCLUDED.project_id,"
    " ca_cert_pem = EXCLUDED.ca_cert_pem, encrypted_ca_key = EXCLUDED.encrypted_ca_key,"
    " key_id = EXCLUDED.key_id, created_at = EXCLUDED.created_at,"
    " etcd_ca_cert_pem = EXCLUDED.etcd_ca_cert_pem, etcd_encrypted_ca_key = EXCLUDED.etcd_encrypted_ca_key,"
    " front_proxy_ca_cert_pem = EXCLUDED.front_proxy_ca_cert_pem,"
    " front_proxy_encrypted_ca_key = EXCLUDED.front_proxy_encrypted_ca_key, wrapped_by = EXCLUDED.wrapped_by"
    " WHERE cluster_cas.deleted_at IS NULL"
)


def put_ca_write(
    *,
    cluster_id: str,
    project_id: str,
    ca_cert_pem: str,
    encrypted_ca_key: bytes,
    key_id: str,
    created_at: datetime,
    etcd_ca_cert_pem: str | None = None,
    etcd_encrypted_ca_key: bytes | None = None,
    front_proxy_ca_cert_pem: str | None = None,
    front_proxy_encrypted_ca_key: bytes | None = None,
    wrapped_by: str = "kek",
) -> Write:
    """Record a CA; a ClusterCACreated fact overwrites what the handler stored before publishing it."""
    return Write(PUT_CA_SQL, (
        cluster_id, project_id, ca_cert_pem, encrypted_ca_key, key_id, created_at, etcd_ca_cert_pem,
        etcd_encrypted_ca_key, front_proxy_ca_cert_pem, front_proxy_encrypted_ca_key, wrapped_by,
    ), (cluster_key(cluster_id),))


async def run(tx: asyncpg.Connection, write: Write) -> None:
    """Run one planned write now."""
    await tx.execute(write.sql, *write.args)


_FORGET_KEYS = "encrypted_ca_key = NULL, etcd_encrypted_ca_key = NULL, front_proxy_encrypted_ca_key = NULL"
MARK_DELETED_SQL = (
    "UPDATE cluster_cas SET deleted_at = $2, " + _FORGET_KEYS + " WHERE cluster_id = $1 AND deleted_at IS NULL"
)


async def mark_deleted(tx: asyncpg.Connection, cluster_id: str, at: datetime) -> bool:
    """Tombstone the CA and forget its keys; True when it was live."""
    status = await tx.execute(MARK_DELETED_SQL, cluster_id, at)
    return bool(status != "UPDATE 0")


def mark_deleted_write(cluster_id: str, at: datetime) -> Write:
    """``mark_deleted`` as a planned write (for a replay, which need not know whether the CA was live)."""
    return Write(MARK_DELETED_SQL, (cluster_id, at), (cluster_key(cluster_id),))


def set_deleted_at_write(cluster_id: str, at: datetime) -> Write:
    """Apply a ClusterCADeleted fact: the deletion time is the event's (same figures after a replay)."""
    return Write("UPDATE cluster_cas SET deleted_at = $2, " + _FORGET_KEYS + " WHERE cluster_id = $1",
                 (cluster_id, at), (cluster_key(cluster_id),))


async def set_deleted_at(tx: asyncpg.Connection, cluster_id: str, project_id: str, at: datetime) -> None:
    """Apply a ClusterCADeleted fact: the deletion time is the event's (same figures after a replay)."""
    await run(tx, set_deleted_at_write(cluster_id, at))


def replace_ca_write(
    *,
    cluster_id: str,
    ca_cert_pem: str,
    encrypted_ca_key: bytes,
    key_id: str,
    wrapped_by: str = "kek",
) -> Write:
    """A rotated cluster CA replaces the live one (a deleted cluster's tombstone stays as it is). The etcd and
    front-proxy CAs stay; a rotation to a data key needs them under that key already (``wrapped_by`` is one
    value per row)."""
    return Write(
        "UPDATE cluster_cas SET ca_cert_pem = $2, encrypted_ca_key = $3, key_id = $4, wrapped_by = $5"
        " WHERE cluster_id = $1 AND deleted_at IS NULL",
        (cluster_id, ca_cert_pem, encrypted_ca_key, key_id, wrapped_by),
        (cluster_key(cluster_id),),
    )


async def replace_ca(
    conn: asyncpg.Connection,
    *,
    cluster_id: str,
    ca_cert_pem: str,
    encrypted_ca_key: bytes,
    key_id: str,
    wrapped_by: str = "kek",
) -> None:
    """``replace_ca_write``, run now."""
    await run(conn, replace_ca_write(cluster_id=cluster_id, ca_cert_pem=ca_cert_pem,
                                     encrypted_ca_key=encrypted_ca_key, key_id=key_id, wrapped_by=wrapped_by))
