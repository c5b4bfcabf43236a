"""Where each cluster's data key lives: the storage interface (``DataKeyStore``) and its local implementation.

A cluster's CA keys (cluster, etcd, front-proxy) are wrapped by the cluster's own data key (AES-256-GCM, bound to
the cluster uuid), and only those ciphertexts travel in the event stream (``ClusterCACreated``). The data key
itself never leaves the key store: there it is kept wrapped by the key-encryption key (KEK; keys.py). Rotating the
KEK re-wraps one small data key per cluster and touches neither the CA keys nor the stream; deleting a cluster
forgets its data key, after which its CA keys in the stream can never be decrypted (docs/adr/0007).

``PostgresKeyStore`` keeps the wrapped data keys in the schema ``<certs schema>_keys``: beside, not inside, the
certs projection's schema, because a projection is dropped and rebuilt from the stream, and the stream does not
hold the data keys. A Barbican store would implement the same four calls with one Barbican secret per cluster
(``DataKeyStore`` in the ADR).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

import asyncpg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.certs.keys import NONCE_BYTES, KeyRing, KeySource, UndecryptableKey
from services.runtime import db

DATA_KEY_PREFIX = "dk-"


@dataclass(frozen=True)
class DataKey:
    cluster_id: str
    key_id: str
    """Names the data key in events' ``key_id`` (``dk-`` and 16 hex digits)."""
    key: bytes

    def wrap(self, plaintext: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + AESGCM(self.key).encrypt(nonce, plaintext, self.cluster_id.encode())

    def unwrap(self, blob: bytes) -> bytes:
        try:
            return AESGCM(self.key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], self.cluster_id.encode())
        except (InvalidTag, ValueError) as exc:
            raise UndecryptableKey(f"CA key of cluster {self.cluster_id} cannot be decrypted") from exc


class DataKeyStore(Protocol):
    """The storage interface of data keys. ``conn`` is the certs service's transaction, for a store that lives
    in the same database (the local one); a remote store (Barbican) ignores it."""

    async def get_or_create(self, conn: asyncpg.Connection, cluster_id: str) -> DataKey: ...

    async def get(self, conn: asyncpg.Connection | asyncpg.Pool, cluster_id: str, key_id: str) -> DataKey: ...

    async def forget(self, conn: asyncpg.Connection, cluster_id: str) -> None: ...

    async def rewrap_all(self, pool: asyncpg.Pool, ring: KeyRing) -> int:
        """Re-wrap every data key not under ``ring.current``; returns how many."""
        ...


class PostgresKeyStore:
    def __init__(self, schema: str, kek: KeySource | KeyRing) -> None:
        self.schema = db.ident(f"{schema}_keys")
        self.kek = kek

    async def ensure(self, pool: asyncpg.Pool) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"cove-keystore:{self.schema}")
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self.schema}.data_keys ("
                " cluster_id text PRIMARY KEY,"
                " key_id text NOT NULL,"
                " wrapped_key bytea NOT NULL,"
                " kek_id text NOT NULL,"
                " created_at timestamptz NOT NULL DEFAULT now())"
            )

    async def get_or_create(self, conn: asyncpg.Connection, cluster_id: str) -> DataKey:
        """The cluster's data key; made on first use. A replayed admission finds the one it made the first time
        (the stream's ciphertexts need exactly that key)."""
        key = os.urandom(32)
        key_id = DATA_KEY_PREFIX + os.urandom(8).hex()
        wrapped, kek_id = self.kek.encrypt(cluster_id, key)
        await conn.execute(
            f"INSERT INTO {self.schema}.data_keys (cluster_id, key_id, wrapped_key, kek_id)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (cluster_id) DO NOTHING",
            cluster_id, key_id, wrapped, kek_id,
        )
        row = await conn.fetchrow(
            f"SELECT key_id, wrapped_key, kek_id FROM {self.schema}.data_keys WHERE cluster_id = $1", cluster_id
        )
        assert row is not None
        return DataKey(cluster_id, row["key_id"], self.kek.decrypt(cluster_id, row["wrapped_key"], row["kek_id"]))

    async def get(self, conn: asyncpg.Connection | asyncpg.Pool, cluster_id: str, key_id: str) -> DataKey:
        row = await conn.fetchrow(
            f"SELECT key_id, wrapped_key, kek_id FROM {self.schema}.data_keys WHERE cluster_id = $1", cluster_id
        )
        if row is None or row["key_id"] != key_id:
            raise UndecryptableKey(f"data key {key_id} of cluster {cluster_id} is not in the key store")
        return DataKey(cluster_id, key_id, self.kek.decrypt(cluster_id, row["wrapped_key"], row["kek_id"]))

    async def forget(self, conn: asyncpg.Connection, cluster_id: str) -> None:
        await conn.execute(f"DELETE FROM {self.schema}.data_keys WHERE cluster_id = $1", cluster_id)

    async def rewrap_all(self, pool: asyncpg.Pool, ring: KeyRing) -> int:
        """Re-wrap every data key under ``ring.current``, one short transaction per key (row-locked, so a
        concurrent ``get_or_create`` or a second rotation never loses one)."""
        done = 0
        while True:
            async with pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(
                    f"SELECT cluster_id, wrapped_key, kek_id FROM {self.schema}.data_keys WHERE kek_id <> $1"
                    " ORDER BY cluster_id LIMIT 500 FOR UPDATE SKIP LOCKED",
                    ring.key_id,
                )
                if not rows:
                    return done
                for row in rows:
                    plain = ring.decrypt(row["cluster_id"], row["wrapped_key"], row["kek_id"])
                    wrapped, kek_id = ring.encrypt(row["cluster_id"], plain)
                    await conn.execute(
                        f"UPDATE {self.schema}.data_keys SET wrapped_key = $2, kek_id = $3 WHERE cluster_id = $1",
                        row["cluster_id"], wrapped, kek_id,
                    )
                done += len(rows)

    async def remaining(self, pool: asyncpg.Pool, kek_id: str) -> int:
        """How many data keys are wrapped by another KEK than ``kek_id``."""
        n = await pool.fetchval(f"SELECT count(*) FROM {self.schema}.data_keys WHERE kek_id <> $1", kek_id)
        return int(n)
